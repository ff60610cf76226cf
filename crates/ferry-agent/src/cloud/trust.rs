//! How the agent trusts the cloud.
//!
//! - Never in clear text across a network: an `http://` URL is refused
//!   before any connection unless its host is loopback ([`clear_text_refusal`]).
//! - A cloud that serves TLS itself gave its key's pin in the Connect Key
//!   (`fck2`); the agent then trusts exactly that key ([`Pins`]), whoever
//!   signed the certificate and whatever name it carries, and keeps the pin
//!   in `agent.json`. A key without a pin (`fck1`, a cloud behind a TLS
//!   proxy) leaves the decision to the OS trust store.
//! - When the cloud presents another key, the agent reads the cloud's key
//!   vouches (public, self-authenticating: see `ferry_proto::cloud_pin`)
//!   and moves to the new key if a chain of signatures leads to it from a
//!   pinned key. Otherwise it refuses, and `ferry-agent trust` re-pins.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use ferry_proto::cloud_pin::{vouch_message, KeyVouches, Pin};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::SignatureScheme;

use crate::tls_rule::{config_with_rule, CertificateRule};

/// Why a cloud URL may not be used, if it may not: clear text (`http://`)
/// is allowed to loopback only (`localhost`, `127.x.y.z`, `[::1]`). Decided
/// from the text alone, before any connection.
pub fn clear_text_refusal(url: &str) -> Option<String> {
    let u = url.trim();
    let scheme_len = u.find("://")?;
    if !u[..scheme_len].eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = &u[scheme_len + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if is_loopback_host(host) {
        return None;
    }
    let https = format!("https://{}", &u[scheme_len + 3..]);
    Some(format!(
        "{u:?} would send the agent's token and the domain's users and groups across the network in clear text: \
         use the cloud's https:// URL ({https}); plain http:// is allowed only to this host (localhost, 127.0.0.1)"
    ))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The cloud keys this agent trusts (by pin), shared by every connection
/// of one client; changed when a vouched rotation is followed.
pub struct Pins {
    pins: RwLock<Vec<Pin>>,
    /// The key a cloud presented that no pin matched (the last refusal).
    refused: Mutex<Option<Pin>>,
    /// Where the pins are kept (`agent.json`), when an installed agent uses them.
    config_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("pins", &self.current()).finish()
    }
}

impl Pins {
    /// Trust these keys; `config_dir`: where a rotation is recorded.
    pub fn new(pins: Vec<Pin>, config_dir: Option<PathBuf>) -> Arc<Pins> {
        Arc::new(Pins {
            pins: RwLock::new(pins),
            refused: Mutex::new(None),
            config_dir,
        })
    }

    /// The keys trusted now.
    pub fn current(&self) -> Vec<Pin> {
        self.pins.read().map(|p| p.clone()).unwrap_or_default()
    }

    fn trusts(&self, pin: &Pin) -> bool {
        self.pins.read().is_ok_and(|p| p.contains(pin))
    }

    /// The key last refused, taken.
    pub(super) fn take_refused(&self) -> Option<Pin> {
        self.refused.lock().ok().and_then(|mut r| r.take())
    }

    fn record_refused(&self, pin: Pin) {
        if let Ok(mut r) = self.refused.lock() {
            *r = Some(pin);
        }
    }

    /// Trusts `pin` from now on (instead of the keys before it), and
    /// records it in the config when there is one.
    pub(super) fn adopt(&self, pin: Pin) {
        if let Ok(mut p) = self.pins.write() {
            *p = vec![pin];
        }
        if let Some(dir) = &self.config_dir {
            if let Err(e) = crate::config::save_cloud_pins(dir, &[pin]) {
                tracing::warn!(error = %format!("{e:#}"), "cannot record the cloud's new key in the config; it is trusted until the agent stops");
            }
        }
    }

    /// The pins the config holds now (an admin may have run `ferry-agent trust`).
    pub(super) fn pins_in_config(&self) -> Vec<Pin> {
        let Some(dir) = &self.config_dir else {
            return Vec::new();
        };
        crate::config::AgentConfig::load(dir)
            .map(|c| c.cloud_pins())
            .unwrap_or_default()
    }
}

/// A TLS configuration that trusts exactly the pinned keys (for a reqwest
/// client: `use_preconfigured_tls`).
pub fn pinned_config(pins: Arc<Pins>) -> Result<rustls::ClientConfig, String> {
    config_with_rule(Check::Pinned(pins))
        .map(|(config, _)| config)
        .map_err(|e| e.to_string())
}

/// A TLS configuration that accepts any certificate and records the one
/// presented: for reading self-authenticating statements (the vouches) and
/// for showing the admin the cloud's certificate (`trust`). Nothing secret
/// is sent over it.
pub(super) fn recording_config() -> Result<(rustls::ClientConfig, Presented), String> {
    let seen = Presented::default();
    let (config, _) = config_with_rule(Check::Record(seen.clone())).map_err(|e| e.to_string())?;
    Ok((config, seen))
}

/// Where a recording configuration puts the certificate presented (DER).
pub(super) type Presented = Arc<Mutex<Option<Vec<u8>>>>;

/// What the cloud's certificate must be.
#[derive(Debug)]
enum Check {
    /// Its key is one of these.
    Pinned(Arc<Pins>),
    /// Anything; it is recorded.
    Record(Presented),
}

impl CertificateRule for Check {
    fn accept(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self {
            Check::Record(seen) => {
                if let Ok(mut s) = seen.lock() {
                    *s = Some(end_entity.as_ref().to_vec());
                }
                Ok(())
            }
            Check::Pinned(pins) => {
                let pin = Pin::of_certificate(end_entity.as_ref())
                    .map_err(|e| rustls::Error::General(format!("the cloud's certificate: {e}")))?;
                if pins.trusts(&pin) {
                    return Ok(());
                }
                pins.record_refused(pin);
                Err(rustls::Error::General(format!(
                    "the cloud presents the TLS key {pin}, which is not the pinned one"
                )))
            }
        }
    }
}

/// The keys a chain of valid vouches leads to from `trusted` (each vouch
/// signed by a key already reached), `trusted` included.
pub fn follow_vouches(trusted: &[Pin], vouches: &KeyVouches) -> Vec<Pin> {
    let provider = rustls::crypto::ring::default_provider();
    let mut reached: Vec<Pin> = trusted.to_vec();
    // Each pass adds at least one key or ends; a chain is at most as long as the list.
    for _ in 0..=vouches.vouches.len() {
        let before = reached.len();
        for v in &vouches.vouches {
            let Some((old_key, old_pin, new_pin, signature)) = v.decode() else {
                continue;
            };
            if !reached.contains(&old_pin) || reached.contains(&new_pin) {
                continue;
            }
            let message = vouch_message(&old_pin, &new_pin);
            if signed_by(
                &provider,
                &old_key,
                SignatureScheme::from(v.scheme),
                &message,
                &signature,
            ) {
                reached.push(new_pin);
            }
        }
        if reached.len() == before {
            break;
        }
    }
    reached
}

/// Whether `signature` over `message` was made by the key `spki` with `scheme`
/// (TLS 1.3 schemes only: the key alone decides, as in a handshake).
fn signed_by(
    provider: &CryptoProvider,
    spki: &[u8],
    scheme: SignatureScheme,
    message: &[u8],
    signature: &[u8],
) -> bool {
    const TLS13: [SignatureScheme; 5] = [
        SignatureScheme::ED25519,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PSS_SHA512,
    ];
    if !TLS13.contains(&scheme) {
        return false;
    }
    let spki_der = SubjectPublicKeyInfoDer::from(spki);
    let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki_der) else {
        return false;
    };
    provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, algs)| algs.iter())
        .any(|alg| key.verify_signature(*alg, message, signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule is decided from the text: no socket is opened here.
    #[test]
    fn clear_text_goes_to_loopback_only() {
        for ok in [
            "https://ferry.example.com",
            "https://10.0.0.5:8443",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://127.0.0.1:8080/",
            "http://127.88.18.1",
            "http://[::1]:8080",
            "http://user@127.0.0.1:80/x",
            "http://agent.localhost:8080",
        ] {
            assert_eq!(clear_text_refusal(ok), None, "{ok}");
        }
        for refused in [
            "http://10.0.0.5:8080",
            "http://ferry.example.com",
            "HTTP://ferry.example.com/",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
            "http://[2001:db8::1]:8080",
            "http://127.0.0.1@evil.example",
            "http://0.0.0.0:8080",
        ] {
            let m = clear_text_refusal(refused).unwrap_or_default();
            assert!(m.contains("clear text") && m.contains("https://"), "{refused}: {m}");
        }
        assert!(clear_text_refusal("http://10.0.0.5:8080/").is_some_and(|m| m.contains("https://10.0.0.5:8080/")));
    }

    #[test]
    fn no_vouch_no_new_key() {
        let a = Pin::of_spki(b"a");
        let forged = ferry_proto::cloud_pin::KeyVouch {
            old_key: ferry_proto::cloud_pin::b64(b"a"),
            new_pin: Pin::of_spki(b"b").to_base64(),
            scheme: u16::from(SignatureScheme::ED25519),
            signature: ferry_proto::cloud_pin::b64(&[0; 64]),
            made_at: 0,
        };
        let reached = follow_vouches(&[a], &KeyVouches { vouches: vec![forged] });
        assert_eq!(reached, vec![a]);
    }
}
