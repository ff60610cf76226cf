//! The few BER shapes Ferry speaks beyond what `ldap3` does for it: the
//! DirSync and paged-results control values, the SD-flags control, and
//! fallible parsing of search result entries and control values. Every
//! parser here returns `None` on malformed input; none panics.

/// An encoded TLV.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// INTEGER, minimal two's complement (so 0x80000001 as i32 is `02 04 80 00 00 01`).
pub fn integer(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    tlv(0x02, &bytes[start..])
}

/// OCTET STRING.
pub fn octet_string(v: &[u8]) -> Vec<u8> {
    tlv(0x04, v)
}

/// SEQUENCE of already-encoded elements.
pub fn sequence(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A parsed TLV: tag byte and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The identifier octet (single-byte tags only).
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
}

/// Parses one TLV from the front of `input`; returns it and the rest.
pub fn parse_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags are not used by anything we parse
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite or absurd lengths
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | *b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((
        Tlv {
            tag,
            content: &rest[..len],
        },
        &rest[len..],
    ))
}

/// All TLVs in `input`, in order.
pub fn parse_all(mut input: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (t, rest) = parse_tlv(input)?;
        out.push(t);
        input = rest;
    }
    Some(out)
}

/// Decodes an INTEGER's content (at most 8 bytes).
pub fn parse_integer(content: &[u8]) -> Option<i64> {
    if content.is_empty() || content.len() > 8 {
        return None;
    }
    let mut v: i64 = if content[0] & 0x80 != 0 { -1 } else { 0 };
    for b in content {
        v = (v << 8) | i64::from(*b);
    }
    Some(v)
}

/// OID of the DirSync control.
pub const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";
/// OID of the paged-results control (RFC 2696).
pub const PAGED_OID: &str = "1.2.840.113556.1.4.319";
/// OID of the SD-flags control.
pub const SD_FLAGS_OID: &str = "1.2.840.113556.1.4.801";

/// DirSync flag: return only what the caller may read (no replication right needed).
pub const DIRSYNC_OBJECT_SECURITY: u32 = 0x0000_0001;
/// DirSync flag: linked values (member) as deltas.
pub const DIRSYNC_INCREMENTAL_VALUES: u32 = 0x8000_0000;

/// The DirSync request value: `SEQUENCE { flags INTEGER, maxBytes INTEGER, cookie OCTET STRING }`.
/// Flags are a 32-bit field sent as a signed INTEGER: AD mishandles the
/// 5-byte positive form of values with the top bit set.
pub fn dirsync_request(flags: u32, max_bytes: i32, cookie: &[u8]) -> Vec<u8> {
    sequence(&[
        integer(i64::from(flags as i32)),
        integer(i64::from(max_bytes)),
        octet_string(cookie),
    ])
}

/// The DirSync response value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSyncResponse {
    /// More changes wait: ask again with the new cookie.
    pub more_results: bool,
    /// The cookie to resume from.
    pub cookie: Vec<u8>,
}

/// Parses `SEQUENCE { moreResults INTEGER, unused INTEGER, cookie OCTET STRING }`.
pub fn parse_dirsync_response(value: &[u8]) -> Option<DirSyncResponse> {
    let (seq, _) = parse_tlv(value)?;
    if seq.tag != 0x30 {
        return None;
    }
    let parts = parse_all(seq.content)?;
    match parts.as_slice() {
        [more, unused, cookie] if more.tag == 0x02 && unused.tag == 0x02 && cookie.tag == 0x04 => {
            Some(DirSyncResponse {
                more_results: parse_integer(more.content)? != 0,
                cookie: cookie.content.to_vec(),
            })
        }
        _ => None,
    }
}

/// The paged-results value: `SEQUENCE { size INTEGER, cookie OCTET STRING }`.
pub fn paged_request(size: i32, cookie: &[u8]) -> Vec<u8> {
    sequence(&[integer(i64::from(size)), octet_string(cookie)])
}

/// Parses a paged-results response value; returns the cookie (empty = last page).
pub fn parse_paged_response(value: &[u8]) -> Option<Vec<u8>> {
    let (seq, _) = parse_tlv(value)?;
    if seq.tag != 0x30 {
        return None;
    }
    let parts = parse_all(seq.content)?;
    match parts.as_slice() {
        [size, cookie] if size.tag == 0x02 && cookie.tag == 0x04 => Some(cookie.content.to_vec()),
        _ => None,
    }
}

/// The SD-flags value: `SEQUENCE { flags INTEGER }` (4 = DACL only).
pub fn sd_flags_request(flags: i32) -> Vec<u8> {
    sequence(&[integer(i64::from(flags))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirsync_flags_are_the_four_byte_negative_integer() {
        let v = dirsync_request(DIRSYNC_OBJECT_SECURITY | DIRSYNC_INCREMENTAL_VALUES, 1_048_576, b"");
        assert_eq!(
            v,
            vec![0x30, 0x0d, 0x02, 0x04, 0x80, 0x00, 0x00, 0x01, 0x02, 0x03, 0x10, 0x00, 0x00, 0x04, 0x00]
        );
        let plain = dirsync_request(DIRSYNC_INCREMENTAL_VALUES, 0, b"ck");
        assert_eq!(&plain[2..8], &[0x02, 0x04, 0x80, 0x00, 0x00, 0x00]);
        assert_eq!(&plain[8..11], &[0x02, 0x01, 0x00]);
        assert_eq!(&plain[11..], &[0x04, 0x02, b'c', b'k']);
    }

    #[test]
    fn integers_are_minimal() {
        assert_eq!(integer(0), vec![0x02, 0x01, 0x00]);
        assert_eq!(integer(127), vec![0x02, 0x01, 0x7f]);
        assert_eq!(integer(128), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(-1), vec![0x02, 0x01, 0xff]);
        assert_eq!(integer(-129), vec![0x02, 0x02, 0xff, 0x7f]);
        assert_eq!(integer(1000), vec![0x02, 0x02, 0x03, 0xe8]);
        for v in [0, 1, -1, 127, 128, -128, -129, 1 << 31, -(1 << 31), i64::MAX, i64::MIN] {
            let e = integer(v);
            let (t, rest) = parse_tlv(&e).unwrap();
            assert!(rest.is_empty());
            assert_eq!(parse_integer(t.content), Some(v));
        }
    }

    #[test]
    fn dirsync_response_round_trips_and_long_cookies_use_long_lengths() {
        let cookie = vec![0xab; 300];
        let v = sequence(&[integer(1), integer(0), octet_string(&cookie)]);
        assert_eq!(&v[..4], &[0x30, 0x82, 0x01, 0x36]);
        let r = parse_dirsync_response(&v).unwrap();
        assert!(r.more_results);
        assert_eq!(r.cookie, cookie);
    }

    #[test]
    fn malformed_control_values_are_rejected_not_panicked_on() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x02, 0x01],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x04, 0x00],
            &[0x30, 0x03, 0x02, 0x01, 0x01],
            &[0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00],
            &[0x1f, 0x81, 0x01],
        ] {
            assert_eq!(parse_dirsync_response(bad), None, "{bad:?}");
            assert_eq!(parse_paged_response(bad), None, "{bad:?}");
        }
        assert_eq!(parse_integer(&[0; 9]), None);
    }

    #[test]
    fn paged_cookie() {
        let resp = sequence(&[integer(0), octet_string(b"next")]);
        assert_eq!(parse_paged_response(&resp), Some(b"next".to_vec()));
        assert_eq!(
            paged_request(1000, b""),
            vec![0x30, 0x06, 0x02, 0x02, 0x03, 0xe8, 0x04, 0x00]
        );
    }
}
