//! HTTPS served by `ferry-cloud` itself, as an operator runs it: `curl
//! --cacert` reaches the console and the APIs, HSTS is sent, Connect Keys
//! pin the key, a new certificate is taken on SIGHUP (and vouched for by
//! the old key), plain HTTP is refused off loopback unless `--insecure-http`
//! (then the console warns), and a client that never finishes its TLS
//! handshake is let go.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs;
use ferry_proto::cloud_pin::{KeyVouches, Pin};
use ferry_proto::connect_key::parse_connect_key;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry-cloud");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ferry-cloud init` into `dir/data`; returns the admin token.
fn init(dir: &Path) -> String {
    let token_file = dir.join("admin.token");
    let out = Command::new(BIN)
        .args(["init", "--org", "Acme", "--admin-email", "admin@acme.test"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--token-out")
        .arg(&token_file)
        .env("FERRY_ADMIN_PASSWORD", "Adm1n-Passw0rd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(&token_file).unwrap().trim().to_owned()
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl ARGS…`: (exit status, stdout+headers).
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_console_and_the_apis_over_https_and_a_new_key_is_vouched_for() {
    let dir = tempfile::tempdir().unwrap();
    let token = init(dir.path());
    let ca = certs::ca(dir.path());
    let first = certs::signed(dir.path(), "first");
    // The files the service is given; replaced later, as certbot would.
    let (cert, key) = (dir.path().join("cloud.pem"), dir.path().join("cloud-key.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let port = free_port();
    let base = format!("https://localhost:{port}");
    let served = Served(
        Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--public-url", &base])
            .env("FERRY_TLS_CERT", &cert)
            .env("FERRY_TLS_KEY", &key)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let ca_arg = ca.to_str().unwrap().to_owned();
    let healthz = format!("{base}/healthz");
    wait_until("the service answers over HTTPS", || {
        curl(&["--cacert", &ca_arg, &healthz]).0
    })
    .await;

    // The console and the APIs, with the CA only; HSTS on every answer.
    let (ok, signin) = curl(&["--cacert", &ca_arg, "-i", &format!("{base}/signin")]);
    assert!(ok && signin.contains("200") && signin.contains("Sign in"), "{signin}");
    assert!(
        signin.to_lowercase().contains("strict-transport-security: max-age="),
        "{signin}"
    );
    assert!(
        !signin.contains("Not encrypted"),
        "no clear-text warning over TLS: {signin}"
    );
    let auth = format!("Authorization: Bearer {token}");
    let (ok, domains) = curl(&[
        "--cacert",
        &ca_arg,
        "-i",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name": "example.test", "netbios_name": "EXAMPLE"}"#,
        &format!("{base}/api/v1/domains"),
    ]);
    assert!(ok && domains.contains("201"), "{domains}");
    assert!(
        domains.to_lowercase().contains("strict-transport-security"),
        "{domains}"
    );
    let domain: Value = serde_json::from_str(domains.rsplit("\r\n\r\n").next().unwrap()).unwrap();
    let (ok, scim) = curl(&["--cacert", &ca_arg, "-H", &auth, &format!("{base}/scim/v2/Users")]);
    assert!(ok && scim.contains("ListResponse"), "{scim}");
    // Without the CA, curl refuses the certificate: TLS is real.
    let (ok, _) = curl(&[&healthz]);
    assert!(!ok, "curl must not trust a test CA it was not given");
    // Plain HTTP on the TLS port is not served.
    let (ok, _) = curl(&[&format!("http://localhost:{port}/healthz")]);
    assert!(!ok);

    // A Connect Key pins the key the service presents.
    let key_url = format!("{base}/api/v1/domains/{}/connect-keys", domain["id"].as_str().unwrap());
    let connect_key = |url: &str| {
        let (ok, out) = curl(&["--cacert", &ca_arg, "-H", &auth, "-X", "POST", url]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        parse_connect_key(v["connect_key"].as_str().unwrap()).unwrap()
    };
    let k = connect_key(&key_url);
    assert_eq!(k.cloud_url, base);
    assert_eq!(k.pin, Some(first.pin()));
    let vouches_url = format!("{base}/.well-known/ferry/key-vouches");
    let vouches = || -> KeyVouches {
        let (ok, out) = curl(&["--cacert", &ca_arg, &vouches_url]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).unwrap()
    };
    assert!(vouches().vouches.is_empty());

    // A new certificate on a new key, then SIGHUP: the service presents it,
    // the old key vouches for the new, and new Connect Keys pin it.
    let second = certs::signed(dir.path(), "second");
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &served.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until("the old key vouches for the new one", || !vouches().vouches.is_empty()).await;
    let v = vouches();
    assert_eq!(v.vouches.len(), 1);
    let (old_key, old_pin, new_pin, _) = v.vouches[0].decode().unwrap();
    assert_eq!(Pin::of_spki(&old_key), first.pin());
    assert_eq!((old_pin, new_pin), (first.pin(), second.pin()));
    assert_eq!(connect_key(&key_url).pin, Some(second.pin()));
    // The vouch is kept in the data directory for a restart.
    let kept = std::fs::read_to_string(dir.path().join("data/tls-key-vouches.json")).unwrap();
    assert!(kept.contains(&second.pin().to_base64()), "{kept}");
    // The log names the pin, never a key.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains(&first.pin().to_string()) && log.contains(&second.pin().to_string()),
        "{log}"
    );
    let key_pem = std::fs::read_to_string(&second.key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!log.contains(key_body));
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_stays_on_loopback_unless_told_and_then_the_console_warns() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    // Binding the wildcard address contacts nothing; it is refused before serving.
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve plain HTTP") && err.contains("--tls-cert") && err.contains("--insecure-http"),
        "{err}"
    );

    let port = free_port();
    let _served = Served(
        Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("0.0.0.0:{port}"), "--insecure-http"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Reached over loopback only.
    let signin = format!("http://127.0.0.1:{port}/signin");
    wait_until("the service answers", || curl(&[&signin]).0).await;
    let (_, page) = curl(&["-i", &signin]);
    assert!(
        page.contains("Not encrypted") && page.contains("--insecure-http"),
        "{page}"
    );
    assert!(!page.to_lowercase().contains("strict-transport-security"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_let_go() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    certs::ca(dir.path());
    let files = certs::signed(dir.path(), "server");
    let tls = ferry_cloud::tls::ServerTls::load(&files.cert, &files.key, None).unwrap();
    let config = ferry_cloud::app::Config {
        tls: Some(tls),
        tls_handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let db = common::TestDb::new(common::Engine::Sqlite).await;
    let state = ferry_cloud::app::AppState::new(db.open().await, Arc::new(ferry_cloud::clock::SystemClock), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ferry_cloud::app::serve(listener, state, std::future::pending()));
    // Connect and say nothing: the service closes the connection.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf))
        .await
        .expect("the silent connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
}
