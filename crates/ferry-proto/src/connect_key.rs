//! Connect Keys: `fck1.<base64url(cloud URL)>.<base64url(256 random bits)>`,
//! or, from a cloud serving TLS itself,
//! `fck2.<base64url(cloud URL)>.<base64url(key pin)>.<base64url(256 random bits)>`.
//! The key carries the cloud's URL, so the install wizard needs one thing
//! pasted instead of two, and (`fck2`) the SHA-256 of the cloud's TLS public
//! key ([`Pin`]), so the agent trusts exactly that key on first contact,
//! whoever signed its certificate. Only the cloud makes keys; both sides
//! read them. The cloud stores a key's hash, whole, so both forms are used
//! alike.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use crate::cloud_pin::Pin;

/// Prefix of Connect Keys without a pin (version 1: a cloud behind a TLS proxy).
pub const CONNECT_KEY_PREFIX: &str = "fck1";
/// Prefix of Connect Keys that pin the cloud's TLS key (version 2).
pub const PINNED_CONNECT_KEY_PREFIX: &str = "fck2";

/// A new Connect Key for the cloud at `cloud_url` (no pin: the agent
/// trusts the cloud's certificate through its OS trust store).
pub fn new_connect_key(cloud_url: &str) -> String {
    format!(
        "{CONNECT_KEY_PREFIX}.{}.{}",
        URL_SAFE_NO_PAD.encode(cloud_url.as_bytes()),
        random_secret()
    )
}

/// A new Connect Key for the cloud at `cloud_url` whose TLS key is `pin`.
pub fn new_pinned_connect_key(cloud_url: &str, pin: &Pin) -> String {
    format!(
        "{PINNED_CONNECT_KEY_PREFIX}.{}.{}.{}",
        URL_SAFE_NO_PAD.encode(cloud_url.as_bytes()),
        pin.to_base64(),
        random_secret()
    )
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What a well-formed Connect Key says about the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectKeyInfo {
    /// The cloud's URL.
    pub cloud_url: String,
    /// Its TLS key (`fck2` keys).
    pub pin: Option<Pin>,
}

/// Reads a Connect Key of either version.
pub fn parse_connect_key(key: &str) -> Option<ConnectKeyInfo> {
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (url, pin, secret) = match parts.as_slice() {
        [CONNECT_KEY_PREFIX, url, secret] => (url, None, secret),
        [PINNED_CONNECT_KEY_PREFIX, url, pin, secret] => (url, Some(Pin::parse(pin).ok()?), secret),
        _ => return None,
    };
    if secret.len() != 43 {
        return None;
    }
    let url = String::from_utf8(URL_SAFE_NO_PAD.decode(url).ok()?).ok()?;
    Some(ConnectKeyInfo { cloud_url: url, pin })
}

/// The cloud URL a Connect Key carries, if the key is well formed.
pub fn connect_key_url(key: &str) -> Option<String> {
    parse_connect_key(key).map(|k| k.cloud_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_key_carries_the_url() {
        let k = new_connect_key("https://ferry.example.test:8443");
        assert!(k.starts_with("fck1."));
        assert_eq!(connect_key_url(&k).as_deref(), Some("https://ferry.example.test:8443"));
        assert_eq!(
            connect_key_url(&format!(" {k}\n")).as_deref(),
            Some("https://ferry.example.test:8443")
        );
        assert_ne!(new_connect_key("x"), new_connect_key("x"));
        assert_eq!(connect_key_url("fck1.bm9wZQ.short"), None);
        assert_eq!(connect_key_url(&k[..k.len() - 1]), None);
        assert_eq!(connect_key_url("garbage"), None);
        assert_eq!(parse_connect_key(&k).and_then(|i| i.pin), None);
    }

    #[test]
    fn a_pinned_key_carries_the_url_and_the_pin() {
        let pin = Pin::of_spki(b"the cloud's key");
        let k = new_pinned_connect_key("https://10.1.2.3:8443", &pin);
        assert!(k.starts_with("fck2."));
        let info = parse_connect_key(&format!("{k}\n")).unwrap_or_else(|| panic!("{k}"));
        assert_eq!(info.cloud_url, "https://10.1.2.3:8443");
        assert_eq!(info.pin, Some(pin));
        // A damaged pin or a missing part is not a key.
        let parts: Vec<&str> = k.split('.').collect();
        assert_eq!(parse_connect_key(&format!("fck2.{}.{}", parts[1], parts[3])), None);
        assert_eq!(parse_connect_key(&format!("fck2.{}.AAAA.{}", parts[1], parts[3])), None);
        assert_eq!(
            parse_connect_key(&format!("fck1.{}.{}.{}", parts[1], parts[2], parts[3])),
            None
        );
    }
}
