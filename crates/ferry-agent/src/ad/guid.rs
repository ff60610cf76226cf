//! `objectGUID`: 16 bytes on the wire, the first three fields little-endian.

use uuid::Uuid;

/// The UUID of an `objectGUID` value, or `None` when it is not 16 bytes.
pub fn guid_from_bytes(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice_le(bytes).ok()
}

/// The wire bytes of a GUID.
pub fn guid_to_bytes(guid: Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// An LDAP filter matching one objectGUID: `(objectGUID=\xx\xx…)`.
pub fn guid_filter(guid: Uuid) -> String {
    bytes_filter("objectGUID", &guid_to_bytes(guid))
}

/// An LDAP equality filter on a binary attribute, every byte escaped:
/// `(attr=\xx\xx…)` (an objectGUID, an objectSid).
pub fn bytes_filter(attr: &str, value: &[u8]) -> String {
    let mut f = format!("({attr}=");
    for b in value {
        f.push_str(&format!("\\{b:02x}"));
    }
    f.push(')');
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_matches_windows() {
        // What AD shows as {12345678-9abc-def0-1234-56789abcdef0} is stored as:
        let wire = [
            0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
        ];
        let g = guid_from_bytes(&wire).unwrap();
        assert_eq!(g.to_string(), "12345678-9abc-def0-1234-56789abcdef0");
        assert_eq!(guid_to_bytes(g), wire);
        assert_eq!(
            guid_filter(g),
            "(objectGUID=\\78\\56\\34\\12\\bc\\9a\\f0\\de\\12\\34\\56\\78\\9a\\bc\\de\\f0)"
        );
        assert_eq!(guid_from_bytes(&wire[..15]), None);
    }
}
