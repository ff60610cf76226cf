//! TLS certificates for tests, made with `openssl` (as `scripts/samba-dc`
//! and `scripts/demo` make theirs): a CA and server certificates it signs
//! for `localhost` and 127.0.0.1, or a self-signed one.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its key, PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        let pem = std::fs::read(&self.cert).unwrap();
        let first = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
        first.as_ref().to_vec()
    }

    /// The pin of its key.
    pub fn pin(&self) -> ferry_proto::cloud_pin::Pin {
        ferry_proto::cloud_pin::Pin::of_certificate(&self.der()).unwrap()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req -x509` on a new P-256 key: a self-signed certificate.
fn self_signed_as(dir: &Path, subject: &str, key: &str, cert: &str, extensions: &[&str]) {
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "30",
        "-subj",
        subject,
        "-keyout",
        key,
        "-out",
        cert,
    ];
    for e in extensions {
        args.extend(["-addext", e]);
    }
    openssl(dir, &args);
}

/// A test CA in `dir` (`ca.pem`, `ca-key.pem`).
pub fn ca(dir: &Path) -> PathBuf {
    self_signed_as(
        dir,
        "/CN=Ferry test CA",
        "ca-key.pem",
        "ca.pem",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join("ca.pem")
}

/// A server certificate `NAME.pem` (key `NAME-key.pem`) for localhost and
/// 127.0.0.1, signed by the CA in `dir`, on a fresh key.
pub fn signed(dir: &Path, name: &str) -> CertFiles {
    let key = format!("{name}-key.pem");
    let req = format!("{name}-req.pem");
    let cert = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &req,
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &req,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            &cert,
        ],
    );
    CertFiles {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A self-signed certificate `NAME.pem` (key `NAME-key.pem`), as
/// `openssl req -x509` makes one: no CA anyone trusts.
pub fn self_signed(dir: &Path, name: &str) -> CertFiles {
    let key = format!("{name}-key.pem");
    let cert = format!("{name}.pem");
    self_signed_as(
        dir,
        "/CN=ferry.internal",
        &key,
        &cert,
        &["subjectAltName=DNS:ferry.internal"],
    );
    CertFiles {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}
