//! MaxValRange: AD returns at most N values of one attribute in one answer.
//! More come back under `attr;range=low-high` and the client asks for the
//! next window (`attr;range=high+1-*`), as MS-ADTS 3.1.1.3.1.3.3 describes.

use ldap3_proto::proto::LdapSearchResultEntry;

/// Constructed attributes are computed for each request (effective rights,
/// token groups); the double leaves them whole.
const CONSTRUCTED: &[&str] = &[
    "allowedattributes",
    "allowedattributeseffective",
    "allowedchildclasses",
    "allowedchildclasseseffective",
    "tokengroups",
    "tokengroupsglobalanduniversal",
    "tokengroupsnogcacceptable",
    "sdrightseffective",
];

/// The attribute's name and, if the description carries one, the range it
/// asked for or was answered with (`member;range=7-*` → `("member", Some(7))`).
/// Other options (`;binary`) stay part of the name.
pub fn split_range(desc: &str) -> (String, Option<usize>) {
    let mut name = Vec::new();
    let mut low = None;
    for part in desc.split(';') {
        match part.to_ascii_lowercase().strip_prefix("range=") {
            Some(r) => low = r.split_once('-').and_then(|(l, _)| l.parse().ok()),
            None => name.push(part),
        }
    }
    (name.join(";"), low)
}

/// Whether MaxValRange applies to an attribute (every stored one; not the
/// constructed ones).
pub fn is_ranged(desc: &str) -> bool {
    let (name, _) = split_range(desc);
    !CONSTRUCTED.contains(&name.to_ascii_lowercase().as_str())
}

/// Caps every attribute of `entry` at `max` values: the rest is left for the
/// client to ask for by range. Returns whether anything was cut.
pub fn cap_entry(entry: &mut LdapSearchResultEntry, max: usize) -> bool {
    let max = max.max(1);
    let mut cut = false;
    for attr in &mut entry.attributes {
        if attr.vals.len() <= max {
            continue;
        }
        if !is_ranged(&attr.atype) {
            continue;
        }
        let (name, low) = split_range(&attr.atype);
        let low = low.unwrap_or(0);
        attr.vals.truncate(max);
        attr.atype = format!("{name};range={low}-{}", low + max - 1);
        cut = true;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3_proto::proto::LdapPartialAttribute;

    fn entry(atype: &str, n: usize) -> LdapSearchResultEntry {
        LdapSearchResultEntry {
            dn: "CN=g,DC=x".into(),
            attributes: vec![LdapPartialAttribute {
                atype: atype.into(),
                vals: (0..n).map(|i| format!("CN=m{i}").into_bytes()).collect(),
            }],
        }
    }

    #[test]
    fn a_plain_attribute_over_the_range_becomes_its_first_window() {
        let mut e = entry("member", 30);
        assert!(cap_entry(&mut e, 7));
        assert_eq!(e.attributes[0].atype, "member;range=0-6");
        assert_eq!(e.attributes[0].vals.len(), 7);
        assert_eq!(e.attributes[0].vals[6], b"CN=m6");
    }

    #[test]
    fn a_ranged_answer_is_cut_from_where_it_starts() {
        let mut e = entry("member;range=7-*", 23);
        assert!(cap_entry(&mut e, 7));
        assert_eq!(e.attributes[0].atype, "member;range=7-13");
        let mut last = entry("member;range=28-*", 2);
        assert!(!cap_entry(&mut last, 7), "the last window passes as the DC sent it");
        assert_eq!(last.attributes[0].atype, "member;range=28-*");
    }

    #[test]
    fn small_and_constructed_attributes_stay_whole() {
        let mut e = entry("member", 7);
        assert!(!cap_entry(&mut e, 7));
        let mut c = entry("allowedAttributesEffective", 300);
        assert!(!cap_entry(&mut c, 7));
        assert_eq!(c.attributes[0].vals.len(), 300);
    }

    #[test]
    fn ranges_are_parsed_beside_other_options() {
        assert_eq!(split_range("member"), ("member".into(), None));
        assert_eq!(split_range("Member;Range=1500-*"), ("Member".into(), Some(1500)));
        assert_eq!(
            split_range("userCertificate;binary"),
            ("userCertificate;binary".into(), None)
        );
    }
}
