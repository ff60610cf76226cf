//! Search result entries, parsed fallibly from the BER `ldap3` hands us,
//! and read with case-insensitive attribute names.

use std::collections::BTreeMap;

use ldap3::asn1::{StructureTag, PL};
use uuid::Uuid;

use super::guid::guid_from_bytes;

/// One entry: its DN and attribute values (raw bytes), keyed by the
/// lowercased attribute description (`member;range=0-1499` included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdEntry {
    /// Distinguished name.
    pub dn: String,
    /// Values by lowercased attribute description.
    pub attrs: BTreeMap<String, Vec<Vec<u8>>>,
}

impl AdEntry {
    /// Raw values of an attribute.
    pub fn values(&self, name: &str) -> &[Vec<u8>] {
        self.attrs.get(&name.to_ascii_lowercase()).map_or(&[], Vec::as_slice)
    }

    /// Values as UTF-8 text (non-UTF-8 values skipped).
    pub fn strs(&self, name: &str) -> Vec<String> {
        self.values(name)
            .iter()
            .filter_map(|v| String::from_utf8(v.clone()).ok())
            .collect()
    }

    /// The first value as text.
    pub fn str(&self, name: &str) -> Option<String> {
        self.values(name)
            .first()
            .and_then(|v| String::from_utf8(v.clone()).ok())
    }

    /// The first value as an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.str(name).and_then(|s| s.trim().parse().ok())
    }

    /// `TRUE`/`FALSE` attributes.
    pub fn flag(&self, name: &str) -> bool {
        self.str(name).is_some_and(|s| s.eq_ignore_ascii_case("TRUE"))
    }

    /// `objectGUID`.
    pub fn guid(&self) -> Option<Uuid> {
        self.values("objectGUID").first().and_then(|v| guid_from_bytes(v))
    }

    /// Whether `objectClass` includes `class`.
    pub fn has_class(&self, class: &str) -> bool {
        self.strs("objectClass").iter().any(|c| c.eq_ignore_ascii_case(class))
    }

    /// Attribute descriptions starting with `name;` (ranged values).
    pub fn ranged(&self, name: &str) -> Vec<(&str, &[Vec<u8>])> {
        let prefix = format!("{};", name.to_ascii_lowercase());
        self.attrs
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }
}

/// Parses a SearchResultEntry (`[APPLICATION 4] SEQUENCE { objectName,
/// attributes SEQUENCE OF SEQUENCE { type, vals SET OF value } }`);
/// `None` when it is anything else or malformed.
pub fn parse_entry(tag: &StructureTag) -> Option<AdEntry> {
    if tag.id != 4 {
        return None;
    }
    let PL::C(parts) = &tag.payload else { return None };
    let [dn, attrs] = parts.as_slice() else { return None };
    let PL::P(dn) = &dn.payload else { return None };
    let dn = String::from_utf8(dn.clone()).ok()?;
    let PL::C(attrs) = &attrs.payload else { return None };
    let mut out = BTreeMap::new();
    for a in attrs {
        let PL::C(pair) = &a.payload else { return None };
        let [name, vals] = pair.as_slice() else { return None };
        let PL::P(name) = &name.payload else { return None };
        let name = String::from_utf8(name.clone()).ok()?.to_ascii_lowercase();
        let PL::C(vals) = &vals.payload else { return None };
        let mut values = Vec::with_capacity(vals.len());
        for v in vals {
            let PL::P(bytes) = &v.payload else { return None };
            values.push(bytes.clone());
        }
        out.entry(name).or_insert_with(Vec::new).extend(values);
    }
    Some(AdEntry { dn, attrs: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::TagClass;

    fn prim(id: u64, bytes: &[u8]) -> StructureTag {
        StructureTag {
            class: TagClass::Universal,
            id,
            payload: PL::P(bytes.to_vec()),
        }
    }

    fn cons(class: TagClass, id: u64, parts: Vec<StructureTag>) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::C(parts),
        }
    }

    #[test]
    fn entries_parse_with_binary_and_ranged_values() {
        let guid = [1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let attr = |n: &str, vals: Vec<&[u8]>| {
            cons(
                TagClass::Universal,
                16,
                vec![
                    prim(4, n.as_bytes()),
                    cons(TagClass::Universal, 17, vals.into_iter().map(|v| prim(4, v)).collect()),
                ],
            )
        };
        let t = cons(
            TagClass::Application,
            4,
            vec![
                prim(4, b"CN=Smith\\, John,DC=example,DC=test"),
                cons(
                    TagClass::Universal,
                    16,
                    vec![
                        attr("objectGUID", vec![&guid]),
                        attr("objectClass", vec![b"top", b"person", b"user"]),
                        attr("member;range=0-1499", vec![b"CN=a", b"CN=b"]),
                        attr("displayName", vec!["Jöhn".as_bytes()]),
                    ],
                ),
            ],
        );
        let e = parse_entry(&t).unwrap();
        assert_eq!(e.dn, "CN=Smith\\, John,DC=example,DC=test");
        assert_eq!(e.guid().unwrap().to_string(), "00000001-0000-0000-0000-000000000002");
        assert!(e.has_class("USER"));
        assert_eq!(e.str("DISPLAYNAME").as_deref(), Some("Jöhn"));
        assert_eq!(e.ranged("member").len(), 1);
        assert!(e.values("member").is_empty());
    }

    #[test]
    fn anything_else_is_none_not_a_panic() {
        assert_eq!(parse_entry(&prim(4, b"x")), None);
        assert_eq!(parse_entry(&cons(TagClass::Application, 4, vec![])), None);
        assert_eq!(
            parse_entry(&cons(TagClass::Application, 19, vec![prim(4, b"ldap://ref")])),
            None
        );
        let bad = cons(
            TagClass::Application,
            4,
            vec![prim(4, b"dn"), cons(TagClass::Universal, 16, vec![prim(4, b"x")])],
        );
        assert_eq!(parse_entry(&bad), None);
        let bad_utf8 = cons(
            TagClass::Application,
            4,
            vec![prim(4, &[0xff]), cons(TagClass::Universal, 16, vec![])],
        );
        assert_eq!(parse_entry(&bad_utf8), None);
    }
}
