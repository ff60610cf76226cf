//! Property tests of the agent's BER parsers (the control values a domain
//! controller sends): arbitrary input never panics, and what the agent
//! encodes parses back to what it meant. (DNs: ferry-proto's tests/dn.rs.)
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

use ferry_agent::ad::ber;
use proptest::prelude::*;

/// BER-shaped bytes: TLVs with plausible tags and (possibly lying) lengths.
fn ber_like() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(vec![0x30]),
            Just(vec![0x02]),
            Just(vec![0x04]),
            Just(vec![0x1f]),
            Just(vec![0x80]),
            Just(vec![0x81, 0xff]),
            Just(vec![0x84, 0xff, 0xff, 0xff, 0xff]),
            Just(vec![0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn ber_parsers_never_panic(bytes in prop_oneof![ber_like(), prop::collection::vec(any::<u8>(), 0..200)]) {
        let _ = ber::parse_tlv(&bytes);
        let _ = ber::parse_all(&bytes);
        let _ = ber::parse_integer(&bytes);
        let _ = ber::parse_dirsync_response(&bytes);
        let _ = ber::parse_paged_response(&bytes);
    }

    #[test]
    fn integers_and_paged_values_round_trip(v in any::<i64>(), size in any::<i32>(), cookie in prop::collection::vec(any::<u8>(), 0..300)) {
        let enc = ber::integer(v);
        let (tlv, rest) = ber::parse_tlv(&enc).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(ber::parse_integer(tlv.content), Some(v));
        prop_assert_eq!(ber::parse_paged_response(&ber::paged_request(size, &cookie)), Some(cookie));
    }
}
