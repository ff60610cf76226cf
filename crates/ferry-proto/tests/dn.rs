//! Property tests of the DN functions (what AD and admins send): arbitrary
//! strings never panic them, and any escaped value parses back.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

use ferry_proto::dn::{dn_within, dns_name_of, escape_value, same_dn, Dn};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn dn_functions_never_panic(s in any::<String>(), t in "[a-zA-Z=,+\\\\ #\"<>;0-9.€]{0,40}") {
        for x in [&s, &t] {
            let _ = Dn::parse(x);
            let _ = same_dn(x, "DC=example,DC=com");
            let _ = dn_within(x, "DC=example,DC=com");
            let _ = dns_name_of(x);
        }
    }

    #[test]
    fn escaped_values_parse_back(value in any::<String>().prop_filter("a value", |v| !v.is_empty())) {
        let dn = format!("CN={},OU=Staff,DC=example,DC=com", escape_value(&value));
        let parsed = Dn::parse(&dn).unwrap();
        prop_assert_eq!(&parsed.0[0].value, &value);
        prop_assert_eq!(parsed.0.len(), 4);
    }
}
