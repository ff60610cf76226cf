//! Distinguished names (RFC 4514): escaping values, parsing DNs into RDNs,
//! and comparing them the way AD does (attribute types and values
//! case-insensitively).

/// Escapes an attribute value for use in a DN: `,` `+` `"` `\` `<` `>` `;`
/// `=`, a leading `#` or space, a trailing space, and NUL.
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// One relative distinguished name (single-valued; AD uses no multi-valued RDNs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rdn {
    /// Attribute type, e.g. `CN`.
    pub attr: String,
    /// Unescaped value.
    pub value: String,
}

impl Rdn {
    /// `TYPE=escaped value`.
    pub fn to_dn_string(&self) -> String {
        format!("{}={}", self.attr, escape_value(&self.value))
    }
}

/// Why a DN did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dn:?} is not a distinguished name: {why} (expected e.g. \"OU=Staff,DC=example,DC=com\")")]
pub struct DnError {
    /// The input.
    pub dn: String,
    /// What is wrong.
    pub why: String,
}

/// A parsed DN, most specific RDN first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn(pub Vec<Rdn>);

impl Dn {
    /// Parses a string DN.
    pub fn parse(s: &str) -> Result<Dn, DnError> {
        let err = |why: &str| DnError {
            dn: s.to_owned(),
            why: why.to_owned(),
        };
        if s.trim().is_empty() {
            return Err(err("it is empty"));
        }
        let mut rdns = Vec::new();
        let bytes: Vec<char> = s.chars().collect();
        let mut i = 0;
        loop {
            // attribute type
            let start = i;
            while i < bytes.len() && bytes[i] != '=' {
                if bytes[i] == ',' || bytes[i] == '+' {
                    return Err(err("an RDN has no '='"));
                }
                i += 1;
            }
            if i >= bytes.len() {
                return Err(err("an RDN has no '='"));
            }
            let attr: String = bytes[start..i].iter().collect::<String>().trim().to_owned();
            let valid_attr = !attr.is_empty()
                && (attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    || attr.chars().all(|c| c.is_ascii_digit() || c == '.'));
            if !valid_attr {
                return Err(err(&format!("{attr:?} is not an attribute type")));
            }
            i += 1; // '='
                    // value
            let mut value = Vec::<u8>::new();
            let mut trailing_plain_spaces = 0usize;
            while i < bytes.len() && bytes[i] == ' ' {
                i += 1; // leading unescaped spaces are not part of the value
            }
            while i < bytes.len() && bytes[i] != ',' {
                let c = bytes[i];
                if c == '+' {
                    return Err(err("multi-valued RDNs are not supported"));
                }
                if c == '\\' {
                    let next = *bytes.get(i + 1).ok_or_else(|| err("it ends with '\\'"))?;
                    if next.is_ascii_hexdigit() {
                        let hi = next.to_digit(16).unwrap_or(0);
                        let lo = bytes
                            .get(i + 2)
                            .and_then(|c| c.to_digit(16))
                            .ok_or_else(|| err("a '\\' escape needs two hex digits"))?;
                        value.push((hi * 16 + lo) as u8);
                        i += 3;
                    } else {
                        let mut buf = [0u8; 4];
                        value.extend_from_slice(next.encode_utf8(&mut buf).as_bytes());
                        i += 2;
                    }
                    trailing_plain_spaces = 0;
                    continue;
                }
                if "\"<>;".contains(c) {
                    return Err(err(&format!("{c:?} must be escaped")));
                }
                let mut buf = [0u8; 4];
                value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                trailing_plain_spaces = if c == ' ' { trailing_plain_spaces + 1 } else { 0 };
                i += 1;
            }
            value.truncate(value.len() - trailing_plain_spaces);
            let value = String::from_utf8(value).map_err(|_| err("an escaped value is not UTF-8"))?;
            if value.is_empty() {
                return Err(err(&format!("{attr}= has no value")));
            }
            rdns.push(Rdn { attr, value });
            if i >= bytes.len() {
                break;
            }
            i += 1; // ','
        }
        Ok(Dn(rdns))
    }

    /// The DN as a string, values escaped.
    pub fn to_dn_string(&self) -> String {
        self.0.iter().map(Rdn::to_dn_string).collect::<Vec<_>>().join(",")
    }

    /// The first RDN.
    pub fn rdn(&self) -> Option<&Rdn> {
        self.0.first()
    }

    /// The parent DN.
    pub fn parent(&self) -> Option<Dn> {
        (self.0.len() > 1).then(|| Dn(self.0[1..].to_vec()))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &Dn) -> bool {
        let (a, b) = (normalized(self), normalized(other));
        a.len() >= b.len() && a[a.len() - b.len()..] == b[..]
    }
}

/// DN equality the AD way: types and values case-insensitively.
pub fn same_dn(a: &str, b: &str) -> bool {
    match (Dn::parse(a), Dn::parse(b)) {
        (Ok(a), Ok(b)) => normalized(&a) == normalized(&b),
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn normalized(d: &Dn) -> Vec<(String, String)> {
    d.0.iter()
        .map(|r| (r.attr.to_ascii_uppercase(), r.value.to_lowercase()))
        .collect()
}

/// Whether DN `a` is `b` or lies below it, case-insensitively.
pub fn dn_within(a: &str, b: &str) -> bool {
    match (Dn::parse(a), Dn::parse(b)) {
        (Ok(a), Ok(b)) => a.is_within(&b),
        _ => false,
    }
}

/// `DC=example,DC=com` → `example.com`, when the DN is only DC components.
pub fn dns_name_of(root_dn: &str) -> Option<String> {
    let dn = Dn::parse(root_dn).ok()?;
    dn.0.iter()
        .map(|r| r.attr.eq_ignore_ascii_case("DC").then(|| r.value.to_lowercase()))
        .collect::<Option<Vec<_>>>()
        .map(|labels| labels.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_rfc_4514() {
        assert_eq!(escape_value("Smith, John"), "Smith\\, John");
        assert_eq!(escape_value("#1 fan"), "\\#1 fan");
        assert_eq!(escape_value(" lead and trail "), "\\ lead and trail\\ ");
        assert_eq!(escape_value("a+b\"c\\d<e>f;g=h"), "a\\+b\\\"c\\\\d\\<e\\>f\\;g\\=h");
        assert_eq!(escape_value("Zoë Ångström"), "Zoë Ångström");
        assert_eq!(escape_value("nul\0"), "nul\\00");
    }

    #[test]
    fn parsing_unescapes_and_round_trips() {
        let d = Dn::parse("CN=Smith\\, John,OU=R\\+D,DC=example,DC=test").unwrap();
        assert_eq!(
            d.0[0],
            Rdn {
                attr: "CN".into(),
                value: "Smith, John".into()
            }
        );
        assert_eq!(d.0[1].value, "R+D");
        assert_eq!(d.to_dn_string(), "CN=Smith\\, John,OU=R\\+D,DC=example,DC=test");
        let hex = Dn::parse("CN=Zo\\C3\\AB,DC=x").unwrap();
        assert_eq!(hex.0[0].value, "Zoë");
        let spaced = Dn::parse("CN=a\\ ,DC=x").unwrap();
        assert_eq!(spaced.0[0].value, "a ");
        assert_eq!(Dn::parse("cn = Ann , dc=x").unwrap().0[0].value, "Ann");
        for v in ["Smith, John", "#x", " y ", "a=b;c<d>\"e\"\\f+g", "Ünïcødé 名前"] {
            let dn = format!("CN={},DC=example,DC=test", escape_value(v));
            assert_eq!(Dn::parse(&dn).unwrap().0[0].value, v, "{dn}");
        }
    }

    #[test]
    fn bad_dns_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("example.test", "no '='"),
            ("CN=,DC=x", "has no value"),
            ("CN=a+OU=b,DC=x", "multi-valued"),
            ("CN=a\\", "ends with"),
            ("CN=a;b,DC=x", "must be escaped"),
            ("C N=a", "not an attribute type"),
            ("CN=a\\4", "two hex digits"),
        ] {
            let e = Dn::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn comparisons_are_case_insensitive() {
        assert!(same_dn("CN=Ann,DC=Example,DC=TEST", "cn=ann,dc=example,dc=test"));
        assert!(!same_dn("CN=Ann,DC=example,DC=test", "CN=Bob,DC=example,DC=test"));
        assert!(dn_within("CN=Ann,OU=Staff,DC=example,DC=test", "dc=EXAMPLE,dc=test"));
        assert!(dn_within("DC=example,DC=test", "DC=example,DC=test"));
        assert!(!dn_within("DC=test", "DC=example,DC=test"));
        assert!(!dn_within("CN=x,DC=other,DC=test", "DC=example,DC=test"));
        assert_eq!(dns_name_of("DC=Example,DC=test").as_deref(), Some("example.test"));
        assert_eq!(dns_name_of("OU=x,DC=example,DC=test"), None);
        let d = Dn::parse("CN=a,OU=b,DC=c").unwrap();
        assert_eq!(d.parent().unwrap().to_dn_string(), "OU=b,DC=c");
        assert!(d.is_within(&Dn::parse("OU=b,DC=c").unwrap()));
    }
}
