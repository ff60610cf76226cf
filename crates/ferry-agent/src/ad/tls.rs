//! TLS to the domain controller: the trust the admin chose (a CA file, the
//! system's trust store, or one pinned certificate), what the DC's
//! certificate says when it is not trusted, and why it was refused.
//!
//! Real domains have AD CS certificates (a CA file or the Windows store
//! works), Samba's own, or self-signed ones made with `openssl req -x509`.
//! The last carry `CA:TRUE`, which webpki refuses as a server's certificate
//! (`CaUsedAsEndEntity`) even when given as the CA file; for those the admin
//! pins the one certificate by its SHA-256 (`--tls-fingerprint`), after
//! comparing it with the one on the DC.

use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::{AdError, AdSettings};
use crate::tls_rule::{config_with_rule, CertificateRule};

/// The rustls configuration for these settings.
pub(super) fn client_config(s: &AdSettings) -> Result<Arc<rustls::ClientConfig>, AdError> {
    let tls_err = |detail: String| AdError::Tls {
        url: s.url.clone(),
        detail,
    };
    if let Some(pin) = &s.tls_fingerprint {
        let sha256 = parse_fingerprint(pin).map_err(tls_err)?;
        let (config, _) = config_with_rule(Trust::Pinned(sha256)).map_err(|e| tls_err(e.to_string()))?;
        return Ok(Arc::new(config));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let roots = match &s.ca_file {
        Some(path) => roots_from_pem(path).map_err(tls_err)?,
        None => system_roots().map_err(tls_err)?,
    };
    Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
}

/// A SHA-256 fingerprint as admins write it (`AB:CD:…`, `abcd…`, with or
/// without a `SHA256:` or `sha256=` prefix), as 32 bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim();
    let t = t
        .strip_prefix("SHA256:")
        .or_else(|| t.strip_prefix("sha256:"))
        .or_else(|| t.strip_prefix("SHA256 Fingerprint="))
        .or_else(|| t.strip_prefix("sha256 Fingerprint="))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| !matches!(c, ':' | ' ' | '-')).collect();
    let bytes = hex::decode(&hex).ok().filter(|b| b.len() == 32);
    bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
        format!(
            "{s:?} is not a SHA-256 fingerprint: give the 64 hex digits the wizard or `openssl x509 -noout -fingerprint -sha256` shows (colons allowed)"
        )
    })
}

/// A fingerprint written as `AB:CD:…` (what `openssl` and the wizard show).
pub fn format_fingerprint(sha256: &[u8]) -> String {
    sha256.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The two cases where no CA decides.
#[derive(Debug)]
enum Trust {
    /// Exactly one certificate, by the SHA-256 of its DER: the name and the
    /// chain are not checked (the pin is the identity).
    Pinned([u8; 32]),
    /// None: the certificate presented is recorded and refused, so the
    /// handshake never completes and nothing is sent to an untrusted server.
    RecordOnly(Mutex<Option<Vec<u8>>>),
}

impl CertificateRule for Trust {
    fn accept(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let sha256 = Sha256::digest(end_entity.as_ref());
        match self {
            Trust::Pinned(pin) if sha256.as_slice() == pin => Ok(()),
            Trust::Pinned(pin) => Err(rustls::Error::General(format!(
                "the DC's certificate changed: its SHA-256 is {}, the pinned one {}",
                format_fingerprint(&sha256),
                format_fingerprint(pin)
            ))),
            Trust::RecordOnly(seen) => {
                if let Ok(mut seen) = seen.lock() {
                    *seen = Some(end_entity.as_ref().to_vec());
                }
                Err(rustls::Error::General("certificate recorded, not trusted".into()))
            }
        }
    }
}

/// What the DC's certificate says, for the admin to compare with the DC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcCertificate {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// The names it is valid for (`DNS:…`, `IP:…`).
    pub names: Vec<String>,
    /// `CA:TRUE` in its basic constraints.
    pub is_ca: bool,
    /// Last day it is valid.
    pub not_after: String,
    /// SHA-256 of the DER, `AB:CD:…`.
    pub sha256: String,
}

impl DcCertificate {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<DcCertificate, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("the DC sent a certificate that cannot be read: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(ip) => names.push(format!("IP:{}", ip_text(ip))),
                    _ => {}
                }
            }
        }
        Ok(DcCertificate {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            is_ca: matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca),
            not_after: cert.validity().not_after.to_string(),
            sha256: format_fingerprint(&Sha256::digest(der)),
        })
    }

    /// Whether it signed itself.
    pub fn self_signed(&self) -> bool {
        self.subject == self.issuer
    }

    /// The certificate's details, one per line, indented.
    pub fn describe(&self) -> String {
        let issuer = if self.self_signed() {
            format!("{} (self-signed)", self.issuer)
        } else {
            self.issuer.clone()
        };
        let names = if self.names.is_empty() {
            "none (only the subject)".to_owned()
        } else {
            self.names.join(", ")
        };
        format!(
            "    Subject:  {}\n    Issuer:   {issuer}\n    Names:    {names}\n    CA:       {}\n    Expires:  {}\n    SHA-256:  {}",
            self.subject,
            if self.is_ca { "yes (CA:TRUE)" } else { "no" },
            self.not_after,
            self.sha256
        )
    }
}

fn ip_text(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => hex::encode(b),
    }
}

/// Connects to the DC only to read the certificate it presents (the
/// handshake is then refused, so nothing else is sent).
pub async fn dc_certificate(s: &AdSettings) -> Result<DcCertificate, AdError> {
    let (config, recorder) = config_with_rule(Trust::RecordOnly(Mutex::new(None))).map_err(|e| AdError::Tls {
        url: s.url.clone(),
        detail: e.to_string(),
    })?;
    let settings = ldap3::LdapConnSettings::new()
        .set_conn_timeout(s.timeout)
        .set_starttls(s.url.starts_with("ldap://"))
        .set_config(Arc::new(config));
    let connected = ldap3::LdapConnAsync::with_settings(settings, &s.url).await;
    let seen = match recorder.rule() {
        Trust::RecordOnly(seen) => seen.lock().ok().and_then(|mut g| g.take()),
        Trust::Pinned(_) => None,
    };
    match (seen, connected) {
        (Some(der), _) => DcCertificate::from_der(&der).map_err(|detail| AdError::Tls {
            url: s.url.clone(),
            detail,
        }),
        (None, Err(e)) => Err(super::classify_connect_error(&s.url, e)),
        (None, Ok(_)) => Err(AdError::Tls {
            url: s.url.clone(),
            detail: "the domain controller presented no certificate".into(),
        }),
    }
}

/// Why a DC's certificate was refused, in words, and what to do. `flags`:
/// the advice names command-line flags (else the wizard's own choices).
pub fn refusal_advice(detail: &str, flags: bool) -> String {
    let pin = if flags {
        "trust this one certificate with --tls-fingerprint <its SHA-256> (`ferry-agent check` or the wizard shows it; on the DC: `openssl x509 -in cert.pem -noout -fingerprint -sha256`)"
    } else {
        "trust this one certificate by its SHA-256 fingerprint (below)"
    };
    let ca = if flags {
        "give the CA certificate that signed the DC's certificate (--ca-file)"
    } else {
        "give the CA certificate that signed it (a PEM file)"
    };
    let advice = if detail.contains("CaUsedAsEndEntity") {
        format!(
            "the DC's certificate is a CA certificate (CA:TRUE) used as the server's own, as `openssl req -x509` makes a self-signed one; it cannot be trusted through a CA file. Either {pin}, or give the DC a certificate issued for its name by a CA (AD CS) and {ca}"
        )
    } else if detail.contains("NotValidForName") {
        "the DC's certificate does not name the host you connected to: connect by a name or address the certificate carries (its Subject Alternative Names)".into()
    } else if detail.contains("Expired") {
        "the DC's certificate has expired: renew it on the DC".into()
    } else if detail.contains("certificate changed") {
        "the DC's certificate is not the pinned one: if the DC's certificate was renewed, compare the new fingerprint with the DC's and pin it again; otherwise something is intercepting the connection".into()
    } else {
        format!("{ca}, and connect by the name or address the certificate carries; or {pin}")
    };
    capitalize(&advice) + "."
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The CA certificates in a PEM file.
fn roots_from_pem(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate in {} is not usable: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// The operating system's trusted roots: the Windows certificate store
/// (where an enterprise CA such as AD CS is already trusted), the macOS
/// keychain, or the Linux CA bundle (`SSL_CERT_FILE` overrides it).
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "it is empty".to_owned(), |e| e.to_string());
        return Err(format!(
            "cannot use the system's trust store ({why}): give the DC's CA certificate, or pin the DC's certificate"
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_as_admins_write_them() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_fingerprint(&format!("sha256 Fingerprint={colons}")).unwrap(),
            [0xab; 32]
        );
        assert_eq!(parse_fingerprint(&format!("SHA256:{hex}")).unwrap(), [0xab; 32]);
        assert_eq!(format_fingerprint(&[0xab; 32]), colons);
        let e = parse_fingerprint("abcd").unwrap_err();
        assert!(e.contains("is not a SHA-256 fingerprint"), "{e}");
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn each_refusal_is_explained_for_what_it_is() {
        let ca_leaf = refusal_advice("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))", true);
        assert!(
            ca_leaf.contains("CA certificate (CA:TRUE) used as the server's own")
                && ca_leaf.contains("--tls-fingerprint")
                && !ca_leaf.contains("name the host"),
            "{ca_leaf}"
        );
        let wizard = refusal_advice("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))", false);
        assert!(!wizard.contains("--"), "the wizard names no flags: {wizard}");
        let unknown = refusal_advice("invalid peer certificate: UnknownIssuer", true);
        assert!(unknown.starts_with("Give the CA certificate"), "{unknown}");
        assert!(!refusal_advice("invalid peer certificate: UnknownIssuer", false).contains("--ca-file"));
        assert!(refusal_advice("invalid peer certificate: NotValidForName", true).contains("does not name the host"));
    }
}
