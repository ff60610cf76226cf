//! Connect Keys: `fck1.<base64url(cloud URL)>.<base64url(256 random bits)>`.
//! The key carries the cloud's URL, so the install wizard needs one thing
//! pasted instead of two. Only the cloud makes keys; both sides read them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// Prefix of Connect Keys (version 1).
pub const CONNECT_KEY_PREFIX: &str = "fck1";

/// A new Connect Key for the cloud at `cloud_url`.
pub fn new_connect_key(cloud_url: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{CONNECT_KEY_PREFIX}.{}.{}",
        URL_SAFE_NO_PAD.encode(cloud_url.as_bytes()),
        URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The cloud URL a Connect Key carries, if the key is well formed.
pub fn connect_key_url(key: &str) -> Option<String> {
    let mut parts = key.trim().split('.');
    if parts.next()? != CONNECT_KEY_PREFIX {
        return None;
    }
    let url = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    let secret = parts.next()?;
    if secret.len() != 43 || parts.next().is_some() {
        return None;
    }
    String::from_utf8(url).ok()
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
    }
}
