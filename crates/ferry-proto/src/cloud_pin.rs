//! The cloud's key pin: the SHA-256 of its TLS certificate's public key
//! (the DER SubjectPublicKeyInfo, as HPKP and kanidm pin), which a Connect
//! Key carries and the agent keeps; and the statement by which the cloud's
//! old key vouches for its next one.
//!
//! The pin names the key, not the certificate, so a certificate renewed on
//! the same key (most ACME clients can, certbot with `--reuse-key`) needs
//! nothing. A new key is trusted when the old key signed a [`KeyVouch`]
//! for it: the cloud makes one when it reloads its certificate while the
//! old key is still in memory, and serves them at [`VOUCHES_PATH`]. The
//! statement authenticates itself (the agent checks the signature against
//! the key it pinned), so it may be fetched over a connection that is not
//! yet trusted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the cloud serves its [`KeyVouches`] (no authentication: they are public).
pub const VOUCHES_PATH: &str = "/.well-known/ferry/key-vouches";

/// What the old key signs: this prefix, then the old pin, then the new pin.
const VOUCH_CONTEXT: &[u8] = b"ferry cloud key vouch v1\0";

/// A problem with a pin or a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The text is not a pin.
    #[error("{0:?} is not a key pin: give the 64 hex digits (colons allowed) or the 43 base64url characters `ferry-agent trust` shows")]
    NotAPin(String),
    /// The certificate could not be read.
    #[error("the certificate cannot be read: {0}")]
    BadCertificate(String),
}

/// SHA-256 of a public key (its DER SubjectPublicKeyInfo).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// The pin of a public key, given as its DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Pin {
        Pin(Sha256::digest(spki_der).into())
    }

    /// The pin of a certificate's public key (DER certificate).
    pub fn of_certificate(cert_der: &[u8]) -> Result<Pin, PinError> {
        spki_of_certificate(cert_der).map(|spki| Pin::of_spki(&spki))
    }

    /// The compact form Connect Keys carry: 43 base64url characters.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// As people compare it: `AB:CD:…` (what `openssl dgst -sha256 -c` prints
    /// of the public key, upper-cased).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// Reads a pin written either way: hex (colons, spaces or a `sha256:`
    /// prefix allowed) or base64url.
    pub fn parse(s: &str) -> Result<Pin, PinError> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .or_else(|| t.strip_prefix("sha256/"))
            .unwrap_or(t);
        let hex_digits: String = t.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        let bytes = if hex_digits.len() == 64 {
            hex_decode(&hex_digits)
        } else {
            URL_SAFE_NO_PAD.decode(t).ok()
        };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Pin)
            .ok_or_else(|| PinError::NotAPin(s.trim().chars().take(100).collect()))
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", self.to_hex())
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The DER SubjectPublicKeyInfo of a DER certificate.
pub fn spki_of_certificate(cert_der: &[u8]) -> Result<Vec<u8>, PinError> {
    let der = pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| PinError::BadCertificate(format!("{e:?}")))?;
    Ok(cert.subject_public_key_info().as_ref().to_vec())
}

/// The old key's word that the new key is the cloud's: a signature by the
/// old key over [`vouch_message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVouch {
    /// The old key's SubjectPublicKeyInfo, DER, base64url (its pin is its SHA-256).
    pub old_key: String,
    /// The new key's pin, base64url.
    pub new_pin: String,
    /// The TLS SignatureScheme of the signature (a TLS 1.3 scheme).
    pub scheme: u16,
    /// The signature, base64url.
    pub signature: String,
    /// When the cloud made it (unix ms).
    pub made_at: i64,
}

/// What the cloud serves at [`VOUCHES_PATH`]: its recent key changes, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVouches {
    /// The statements.
    pub vouches: Vec<KeyVouch>,
}

/// The bytes an old key signs to vouch for a new one.
pub fn vouch_message(old: &Pin, new: &Pin) -> Vec<u8> {
    let mut m = VOUCH_CONTEXT.to_vec();
    m.extend_from_slice(&old.0);
    m.extend_from_slice(&new.0);
    m
}

impl KeyVouch {
    /// The old key's SPKI and pin, and the new pin, decoded (the signature
    /// is not checked here: that needs a crypto provider, the agent's).
    pub fn decode(&self) -> Option<(Vec<u8>, Pin, Pin, Vec<u8>)> {
        let old_key = URL_SAFE_NO_PAD.decode(&self.old_key).ok()?;
        let new_pin = Pin::parse(&self.new_pin).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(&self.signature).ok()?;
        let old_pin = Pin::of_spki(&old_key);
        Some((old_key, old_pin, new_pin, signature))
    }
}

/// Base64url without padding, as the statements carry their bytes.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pin_reads_back_in_either_form() {
        let p = Pin::of_spki(b"some key");
        assert_eq!(Pin::parse(&p.to_base64()).unwrap(), p);
        assert_eq!(Pin::parse(&p.to_hex()).unwrap(), p);
        assert_eq!(Pin::parse(&p.to_hex().replace(':', "").to_lowercase()).unwrap(), p);
        assert_eq!(Pin::parse(&format!("sha256:{}", p.to_hex())).unwrap(), p);
        assert_eq!(p.to_base64().len(), 43);
        assert!(matches!(Pin::parse("abcd"), Err(PinError::NotAPin(_))));
        assert!(Pin::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn the_vouched_message_binds_both_keys() {
        let (a, b) = (Pin::of_spki(b"a"), Pin::of_spki(b"b"));
        assert_ne!(vouch_message(&a, &b), vouch_message(&b, &a));
        assert!(vouch_message(&a, &b).starts_with(VOUCH_CONTEXT));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            Pin::of_certificate(b"not a certificate"),
            Err(PinError::BadCertificate(_))
        ));
    }
}
