//! Sealed boxes: how a password set in the cloud reaches one agent and no
//! one else. X25519 with a fresh ephemeral key per box, HKDF-SHA256 over the
//! shared secret and both public keys, ChaCha20-Poly1305 with a context
//! string as associated data (so a box for one user cannot be replayed as
//! another's). The cloud keeps only boxes; the agent keeps its secret key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// A sealed box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The ephemeral public key, base64.
    pub epk: String,
    /// The nonce, base64.
    pub nonce: String,
    /// Ciphertext with tag, base64.
    pub ct: String,
}

/// Why a box could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// A key or field is not valid base64 of the right length.
    Malformed,
    /// The box was not made for this key and context, or was altered.
    Forged,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::Malformed => "the sealed secret or key is malformed",
            SealError::Forged => "the sealed secret was not made for this agent, or was altered",
        })
    }
}

impl std::error::Error for SealError {}

/// A new key pair: (secret key, public key), both base64.
pub fn generate_keypair() -> (String, String) {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(seed.as_mut());
    let secret = StaticSecret::from(*seed);
    let public = PublicKey::from(&secret);
    (B64.encode(secret.to_bytes()), B64.encode(public.as_bytes()))
}

/// The public key (base64) of a secret key (base64).
pub fn public_key(secret: &str) -> Result<String, SealError> {
    let sk = StaticSecret::from(*Zeroizing::new(key32(secret)?));
    Ok(B64.encode(PublicKey::from(&sk).as_bytes()))
}

fn key32(b64: &str) -> Result<[u8; 32], SealError> {
    let v = B64.decode(b64.trim()).map_err(|_| SealError::Malformed)?;
    v.try_into().map_err(|_| SealError::Malformed)
}

fn derive(shared: &[u8; 32], epk: &[u8; 32], rpk: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(b"ferry-seal-v1"), shared);
    let mut info = Vec::with_capacity(64);
    info.extend_from_slice(epk);
    info.extend_from_slice(rpk);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(&info, key.as_mut());
    key
}

/// Seals `plaintext` to the holder of `recipient_public` (base64) for `context`.
pub fn seal(recipient_public: &str, context: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
    let rpk = key32(recipient_public)?;
    let mut eseed = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(eseed.as_mut());
    let esk = StaticSecret::from(*eseed);
    let epk = PublicKey::from(&esk);
    let shared = Zeroizing::new(esk.diffie_hellman(&PublicKey::from(rpk)).to_bytes());
    let key = derive(&shared, epk.as_bytes(), &rpk);
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ct = ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: context.as_bytes(),
            },
        )
        .map_err(|_| SealError::Malformed)?;
    Ok(Sealed {
        epk: B64.encode(epk.as_bytes()),
        nonce: B64.encode(nonce),
        ct: B64.encode(ct),
    })
}

/// Opens a box with the recipient's secret key (base64).
pub fn open(recipient_secret: &str, context: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let sk = StaticSecret::from(*Zeroizing::new(key32(recipient_secret)?));
    let rpk = PublicKey::from(&sk);
    let epk = key32(&sealed.epk)?;
    let nonce: [u8; 12] = B64
        .decode(&sealed.nonce)
        .map_err(|_| SealError::Malformed)?
        .try_into()
        .map_err(|_| SealError::Malformed)?;
    let ct = B64.decode(&sealed.ct).map_err(|_| SealError::Malformed)?;
    let shared = Zeroizing::new(sk.diffie_hellman(&PublicKey::from(epk)).to_bytes());
    let key = derive(&shared, &epk, rpk.as_bytes());
    ChaCha20Poly1305::new(Key::from_slice(key.as_ref()))
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &ct,
                aad: context.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Forged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_and_only_for_the_same_context() {
        let (sk, pk) = generate_keypair();
        let (other_sk, _) = generate_keypair();
        assert_eq!(public_key(&sk).unwrap(), pk);
        let s = seal(&pk, "user:1", b"Pa55-w0rd").unwrap();
        assert_eq!(open(&sk, "user:1", &s).unwrap().as_slice(), b"Pa55-w0rd");
        assert_eq!(open(&other_sk, "user:1", &s), Err(SealError::Forged));
        assert_eq!(open(&sk, "user:2", &s), Err(SealError::Forged));
        let mut tampered = s.clone();
        tampered.ct = B64.encode([0u8; 25]);
        assert_eq!(open(&sk, "user:1", &tampered), Err(SealError::Forged));
        assert_ne!(
            seal(&pk, "user:1", b"Pa55-w0rd").unwrap(),
            s,
            "fresh ephemeral key and nonce"
        );
        assert_eq!(seal("bm9wZQ==", "x", b"y"), Err(SealError::Malformed));
    }
}
