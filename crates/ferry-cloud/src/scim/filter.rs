//! SCIM filters (RFC 7644 §3.4.2.2): parsing, and evaluation against a
//! resource's JSON representation.
//!
//! Grammar, loosest binding first: `or`, `and`, `not (…)`, then atoms:
//! `attrPath pr`, `attrPath op value`, `attrPath[filter]`, `(filter)`.
//!
//! Filters come from anyone holding a token, so parsing has a budget: the
//! input's size, its nesting depth and its number of comparisons are bounded
//! before anything is built. A chain of `and`/`or` terms is one n-ary node,
//! so the tree is only as deep as the input's brackets, and every recursive
//! walk of it (evaluation, drop, clone) is bounded by [`MAX_FILTER_DEPTH`].

use serde_json::Value;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
/// The deepest nesting of `(…)`, `not (…)` and `attr[…]` accepted.
pub const MAX_FILTER_DEPTH: usize = 16;
/// The most comparisons (`attr op value`, `attr pr`) in one filter.
pub const MAX_FILTER_TERMS: usize = 200;
/// The longest string value in a filter, in bytes (no stored value is longer).
pub const MAX_FILTER_VALUE_BYTES: usize = 4096;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every term holds (two or more terms).
    And(Vec<Filter>),
    /// Some term holds (two or more terms).
    Or(Vec<Filter>),
    /// Negation.
    Not(Box<Filter>),
    /// The attribute has a non-empty value.
    Present(AttrPath),
    /// A comparison.
    Compare(AttrPath, Op, Value),
    /// `emails[type eq "work" and value co "@x"]`: some value of a
    /// multi-valued attribute satisfies the inner filter.
    ValuePath(AttrPath, Box<Filter>),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// equal
    Eq,
    /// not equal
    Ne,
    /// contains
    Co,
    /// starts with
    Sw,
    /// ends with
    Ew,
    /// greater than
    Gt,
    /// greater or equal
    Ge,
    /// less than
    Lt,
    /// less or equal
    Le,
}

/// `[urn:]attr[.sub]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// Schema URN prefix, if written.
    pub urn: Option<String>,
    /// Attribute name as written.
    pub attr: String,
    /// Sub-attribute name as written.
    pub sub: Option<String>,
}

impl AttrPath {
    /// Parses `urn:…:attr.sub`, `attr.sub`, `attr`.
    pub fn parse(s: &str) -> Result<AttrPath, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an attribute name is missing".into());
        }
        let (urn, rest) = split_urn(s);
        let (attr, sub) = match rest.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        let valid = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (c == '$' && i == 0))
        };
        if !valid(attr) || !sub.is_none_or(valid) {
            return Err(format!("{s:?} is not a valid attribute path"));
        }
        Ok(AttrPath {
            urn: urn.map(str::to_owned),
            attr: attr.to_owned(),
            sub: sub.map(str::to_owned),
        })
    }
}

/// Splits a leading schema URN off an attribute path: the URN is everything
/// up to the last `:` (attribute names contain no colon).
pub fn split_urn(s: &str) -> (Option<&str>, &str) {
    // `get`, not slicing: byte 4 need not be a character boundary.
    if s.len() > 4 && s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) {
        if let Some(i) = s.rfind(':') {
            return (Some(&s[..i]), &s[i + 1..]);
        }
    }
    (None, s)
}

/// Parses a filter expression, within the budget above.
pub fn parse(input: &str) -> Result<Filter, String> {
    if input.len() > MAX_FILTER_BYTES {
        return Err(format!(
            "the filter is {} bytes long; at most {MAX_FILTER_BYTES} are accepted",
            input.len()
        ));
    }
    let tokens = tokenize(input)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        terms: 0,
    };
    let f = p.or()?;
    if p.pos != p.tokens.len() {
        return Err(format!("unexpected {:?} in filter", p.tokens[p.pos]));
    }
    Ok(f)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '[' => {
                out.push(Tok::LBracket);
                i += 1
            }
            ']' => {
                out.push(Tok::RBracket);
                i += 1
            }
            '"' => {
                // A JSON string: reuse serde_json for escapes.
                let start = i;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err("a quoted string in the filter is not closed".into());
                }
                i += 1;
                let raw: String = chars[start..i].iter().collect();
                let v: String = serde_json::from_str(&raw).map_err(|e| format!("bad string in the filter: {e}"))?;
                if v.len() > MAX_FILTER_VALUE_BYTES {
                    return Err(format!(
                        "a value in the filter is {} bytes long; at most {MAX_FILTER_VALUE_BYTES} are accepted",
                        v.len()
                    ));
                }
                if v.chars().any(|c| crate::http::refused_control(u32::from(c))) {
                    return Err("a value in the filter holds a control character (such as U+0000)".into());
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"()[]\"".contains(chars[i]) {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    /// Brackets open now.
    depth: usize,
    /// Comparisons so far.
    terms: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.and()?];
        while self.peek_word("or") {
            self.pos += 1;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Filter::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.unary()?];
        while self.peek_word("and") {
            self.pos += 1;
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Filter::And(terms)
        })
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.pos += 1;
            self.expect(Tok::LParen)?;
            let f = self.nested(Tok::RParen)?;
            return Ok(Filter::Not(Box::new(f)));
        }
        if self.tokens.get(self.pos) == Some(&Tok::LParen) {
            self.pos += 1;
            return self.nested(Tok::RParen);
        }
        self.atom()
    }

    /// A filter inside brackets just opened, up to `close`: one level
    /// deeper, refused past [`MAX_FILTER_DEPTH`].
    fn nested(&mut self, close: Tok) -> Result<Filter, String> {
        self.depth += 1;
        if self.depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "the filter nests deeper than {MAX_FILTER_DEPTH} levels of brackets"
            ));
        }
        let f = self.or()?;
        self.expect(close)?;
        self.depth -= 1;
        Ok(f)
    }

    fn expect(&mut self, t: Tok) -> Result<(), String> {
        if self.tokens.get(self.pos) == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {t:?} in filter"))
        }
    }

    fn atom(&mut self) -> Result<Filter, String> {
        let Some(Tok::Word(path)) = self.tokens.get(self.pos).cloned() else {
            return Err("expected an attribute name in filter".into());
        };
        self.pos += 1;
        self.terms += 1;
        if self.terms > MAX_FILTER_TERMS {
            return Err(format!("the filter has more than {MAX_FILTER_TERMS} comparisons"));
        }
        if self.tokens.get(self.pos) == Some(&Tok::LBracket) {
            self.pos += 1;
            let inner = self.nested(Tok::RBracket)?;
            let mut ap = AttrPath::parse(&path)?;
            // `emails[type eq "work"].value` is a PATCH path, not a filter.
            if ap.sub.is_some() {
                return Err(format!("{path:?} cannot be followed by a value filter"));
            }
            ap.sub = None;
            return Ok(Filter::ValuePath(ap, Box::new(inner)));
        }
        let ap = AttrPath::parse(&path)?;
        let Some(Tok::Word(op)) = self.tokens.get(self.pos).cloned() else {
            return Err(format!("expected an operator after {path:?}"));
        };
        self.pos += 1;
        let op = match op.to_ascii_lowercase().as_str() {
            "pr" => return Ok(Filter::Present(ap)),
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => return Err(format!("unknown operator {other:?}")),
        };
        let value = match self.tokens.get(self.pos).cloned() {
            Some(Tok::Str(s)) => Value::String(s),
            Some(Tok::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                _ => serde_json::from_str::<serde_json::Number>(&w)
                    .map(Value::Number)
                    .map_err(|_| format!("{w:?} is not a value: quote strings"))?,
            },
            _ => return Err(format!("expected a value after {path:?} {op:?}")),
        };
        self.pos += 1;
        Ok(Filter::Compare(ap, op, value))
    }
}

/// Tells the evaluator which attributes compare case-sensitively and which
/// hold timestamps.
pub trait AttrInfo {
    /// Whether `path` compares case-sensitively.
    fn case_exact(&self, path: &AttrPath) -> bool;
    /// Whether `path` is a dateTime.
    fn is_datetime(&self, path: &AttrPath) -> bool;
}

/// Whether `resource` (a full SCIM representation) matches `f`.
pub fn matches(f: &Filter, resource: &Value, info: &dyn AttrInfo) -> bool {
    match f {
        // Recursion here is bounded by the parser's depth budget.
        Filter::And(terms) => terms.iter().all(|t| matches(t, resource, info)),
        Filter::Or(terms) => terms.iter().any(|t| matches(t, resource, info)),
        Filter::Not(a) => !matches(a, resource, info),
        Filter::Present(p) => values_at(resource, p).iter().any(|v| !is_empty(v)),
        Filter::Compare(p, op, want) => {
            let exact = info.case_exact(p);
            let date = info.is_datetime(p);
            let have = values_at(resource, p);
            if *op == Op::Ne {
                return !have.iter().any(|v| compare(v, Op::Eq, want, exact, date));
            }
            if want.is_null() && *op == Op::Eq {
                return have.iter().all(|v| is_empty(v));
            }
            have.iter().any(|v| compare(v, *op, want, exact, date))
        }
        Filter::ValuePath(p, inner) => {
            let container = lookup(resource, p.urn.as_deref(), &p.attr);
            let items: Vec<&Value> = match container {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(v @ Value::Object(_)) => vec![v],
                _ => vec![],
            };
            let sub_info = SubInfo { parent: p, info };
            items.iter().any(|item| matches(inner, item, &sub_info))
        }
    }
}

/// Attribute info for filters inside `attr[…]`: names refer to sub-attributes.
struct SubInfo<'a> {
    parent: &'a AttrPath,
    info: &'a dyn AttrInfo,
}

impl SubInfo<'_> {
    fn full(&self, p: &AttrPath) -> AttrPath {
        AttrPath {
            urn: self.parent.urn.clone(),
            attr: self.parent.attr.clone(),
            sub: Some(p.attr.clone()),
        }
    }
}

impl AttrInfo for SubInfo<'_> {
    fn case_exact(&self, p: &AttrPath) -> bool {
        self.info.case_exact(&self.full(p))
    }
    fn is_datetime(&self, p: &AttrPath) -> bool {
        self.info.is_datetime(&self.full(p))
    }
}

/// Whether a value holds nothing: null, `""`, `[]`, `{}`.
pub fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Case-insensitive key lookup, with an optional schema-URN level.
pub fn lookup<'a>(v: &'a Value, urn: Option<&str>, key: &str) -> Option<&'a Value> {
    let base = match urn {
        Some(u) => match get_ci(v, u) {
            Some(ext) => ext,
            // The core schema URN prefixes top-level attributes.
            None => v,
        },
        None => v,
    };
    get_ci(base, key)
}

fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key)
        .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// The leaf values a path selects; multi-valued attributes fan out, and a
/// complex value without a sub-attribute stands for its `value`.
fn values_at<'a>(resource: &'a Value, p: &AttrPath) -> Vec<&'a Value> {
    let Some(top) = lookup(resource, p.urn.as_deref(), &p.attr) else {
        return vec![];
    };
    let items: Vec<&Value> = match top {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    items
        .into_iter()
        .filter_map(|item| match (&p.sub, item) {
            (Some(sub), _) => get_ci(item, sub),
            (None, Value::Object(_)) => get_ci(item, "value"),
            (None, v) => Some(v),
        })
        .collect()
}

fn compare(have: &Value, op: Op, want: &Value, case_exact: bool, datetime: bool) -> bool {
    match (have, want) {
        (Value::String(h), Value::String(w)) => {
            if datetime {
                if let (Some(h), Some(w)) = (parse_time(h), parse_time(w)) {
                    return ordered(h.cmp(&w), op);
                }
            }
            let (h, w) = if case_exact {
                (h.clone(), w.clone())
            } else {
                (h.to_lowercase(), w.to_lowercase())
            };
            match op {
                Op::Eq => h == w,
                Op::Ne => h != w,
                Op::Co => h.contains(&w),
                Op::Sw => h.starts_with(&w),
                Op::Ew => h.ends_with(&w),
                _ => ordered(h.cmp(&w), op),
            }
        }
        (Value::Bool(h), Value::Bool(w)) => match op {
            Op::Eq => h == w,
            Op::Ne => h != w,
            _ => false,
        },
        (Value::Number(h), Value::Number(w)) => match (h.as_f64(), w.as_f64()) {
            (Some(h), Some(w)) => match h.partial_cmp(&w) {
                Some(ord) => match op {
                    Op::Eq => h == w,
                    Op::Ne => h != w,
                    Op::Co | Op::Sw | Op::Ew => false,
                    _ => ordered(ord, op),
                },
                None => false,
            },
            _ => false,
        },
        _ => false,
    }
}

fn ordered(ord: std::cmp::Ordering, op: Op) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ord == Equal,
        Op::Ne => ord != Equal,
        Op::Gt => ord == Greater,
        Op::Ge => ord != Less,
        Op::Lt => ord == Less,
        Op::Le => ord != Greater,
        Op::Co | Op::Sw | Op::Ew => false,
    }
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Plain;
    impl AttrInfo for Plain {
        fn case_exact(&self, p: &AttrPath) -> bool {
            p.attr == "id"
        }
        fn is_datetime(&self, p: &AttrPath) -> bool {
            p.sub.as_deref() == Some("lastModified")
        }
    }

    fn user() -> Value {
        json!({
            "id": "AbC",
            "userName": "BJensen",
            "active": true,
            "name": {"familyName": "Jensen", "givenName": "Barbara"},
            "emails": [{"value": "bjensen@example.com", "type": "work"}, {"value": "babs@jensen.org", "type": "home"}],
            "meta": {"lastModified": "2024-05-13T04:42:34.500Z"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Tour Operations"}
        })
    }

    fn check(f: &str) -> bool {
        matches(&parse(f).expect("filter parses"), &user(), &Plain)
    }

    #[test]
    fn rfc_examples_match() {
        assert!(check(r#"userName eq "bjensen""#));
        assert!(!check(r#"userName eq "other""#));
        assert!(check(r#"name.familyName co "ens""#));
        assert!(check(r#"userName sw "B""#));
        assert!(check(r#"userName ew "SEN""#));
        assert!(check("name.givenName pr"));
        assert!(!check("title pr"));
        assert!(check(r#"meta.lastModified gt "2024-05-13T04:42:34Z""#));
        assert!(!check(r#"meta.lastModified lt "2024-05-13T04:42:34Z""#));
        assert!(check(r#"emails[type eq "work" and value co "@example.com"]"#));
        assert!(!check(r#"emails[type eq "work" and value co "@jensen.org"]"#));
        assert!(check(r#"emails co "jensen.org""#));
        assert!(check(r#"userName eq "x" or active eq true"#));
        assert!(!check(r#"userName eq "x" or active eq false"#));
        assert!(check(r#"not (userName eq "x")"#));
        assert!(check(
            r#"(userName eq "x" or userName eq "bjensen") and active eq true"#
        ));
        assert!(check(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour operations""#
        ));
        assert!(check(r#"id eq "AbC""#));
        assert!(!check(r#"id eq "abc""#));
        assert!(check(r#"userName ne "x""#));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let f = parse(r#"a eq "1" or b eq "2" and c eq "3""#).expect("parses");
        assert!(matches!(f, Filter::Or(ref t) if t.len() == 2 && matches!(t[1], Filter::And(ref u) if u.len() == 2)));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        assert!(parse("userName").unwrap_err().contains("operator"));
        assert!(parse(r#"userName zz "x""#).unwrap_err().contains("unknown operator"));
        assert!(parse(r#"userName eq "x"#).unwrap_err().contains("not closed"));
        assert!(parse(r#"userName eq bare"#).unwrap_err().contains("quote"));
        assert!(parse(r#"(userName eq "x""#).is_err());
        assert!(parse(r#"userName eq "x" extra"#).is_err());
    }

    #[test]
    fn escaped_quotes_in_values() {
        let f = parse(r#"displayName eq "a \"quoted\" name""#).expect("parses");
        assert_eq!(
            f,
            Filter::Compare(
                AttrPath {
                    urn: None,
                    attr: "displayName".into(),
                    sub: None
                },
                Op::Eq,
                json!("a \"quoted\" name")
            )
        );
    }

    #[test]
    fn budgets_refuse_deep_long_and_wide_filters() {
        let deep = format!("{}userName eq \"x\"{}", "(".repeat(1000), ")".repeat(1000));
        assert!(parse(&deep).unwrap_err().contains("deeper"));
        let nots = format!("{}userName eq \"x\"{}", "not (".repeat(1000), ")".repeat(1000));
        assert!(parse(&nots).unwrap_err().contains("deeper"));
        let brackets = format!("emails[{}value eq \"x\"{}]", "(".repeat(40), ")".repeat(40));
        assert!(parse(&brackets).unwrap_err().contains("deeper"));
        let chain = vec![r#"userName eq "x""#; 20_000].join(" and ");
        assert!(parse(&chain).unwrap_err().contains("at most"));
        let wide = vec![r#"a eq "x""#; MAX_FILTER_TERMS + 1].join(" or ");
        assert!(parse(&wide).unwrap_err().contains("comparisons"));
        let long = format!("userName co \"{}\"", "a".repeat(MAX_FILTER_VALUE_BYTES + 1));
        assert!(parse(&long).unwrap_err().contains("bytes"));
        assert!(parse("userName eq \"a\\u0000b\"").unwrap_err().contains("control"));
        // Just inside the budget: parses, and evaluates without trouble.
        let ok_depth = format!(
            "{}userName eq \"bjensen\"{}",
            "(".repeat(MAX_FILTER_DEPTH),
            ")".repeat(MAX_FILTER_DEPTH)
        );
        assert!(check(&ok_depth));
        let ok_wide = vec![r#"userName eq "x""#; MAX_FILTER_TERMS].join(" or ");
        assert!(!check(&ok_wide));
    }

    #[test]
    fn a_chain_of_terms_is_one_flat_node() {
        let f = parse(r#"a eq "1" and b eq "2" and c eq "3" and d eq "4""#).expect("parses");
        assert!(matches!(f, Filter::And(ref t) if t.len() == 4));
    }

    #[test]
    fn non_ascii_attribute_names_are_refused_not_a_panic() {
        for s in ["ab€x pr", "urn€:x pr", "€€€€€ eq \"x\"", "urn:ab€c:€ pr", "ur€ pr"] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert_eq!(split_urn("ab€x"), (None, "ab€x"));
        assert!(AttrPath::parse("urn:€").is_err());
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary input never panics the parser, and whatever parses stays
    //! within the budget (so evaluating it cannot overflow the stack).
    use super::*;
    use proptest::prelude::*;

    fn depth(f: &Filter) -> usize {
        match f {
            Filter::And(t) | Filter::Or(t) => 1 + t.iter().map(depth).max().unwrap_or(0),
            Filter::Not(f) | Filter::ValuePath(_, f) => 1 + depth(f),
            Filter::Present(_) | Filter::Compare(..) => 1,
        }
    }

    /// Fragments of filters, so random input often gets deep into the grammar.
    fn fragments() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("(".to_owned()),
                Just(")".to_owned()),
                Just("[".to_owned()),
                Just("]".to_owned()),
                Just(" and ".to_owned()),
                Just(" or ".to_owned()),
                Just("not ".to_owned()),
                Just(" eq ".to_owned()),
                Just(" pr".to_owned()),
                Just("\"".to_owned()),
                Just("\\".to_owned()),
                Just("emails".to_owned()),
                Just("urn:".to_owned()),
                Just("€".to_owned()),
                Just(".".to_owned()),
                Just(":".to_owned()),
                Just("\"v\"".to_owned()),
                "[a-zA-Z0-9$_-]{1,8}",
                any::<String>(),
            ],
            0..60,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = parse(&s);
            let _ = AttrPath::parse(&s);
            let _ = split_urn(&s);
        }

        #[test]
        fn filter_shaped_input_never_panics_and_stays_in_budget(s in fragments()) {
            if let Ok(f) = parse(&s) {
                prop_assert!(depth(&f) <= 3 * MAX_FILTER_DEPTH + 3);
                let user = serde_json::json!({"userName": "u", "emails": [{"value": "v"}]});
                let _ = matches(&f, &user, &tests_info::Any);
            }
        }

        #[test]
        fn deep_nesting_is_refused_at_any_depth(n in 0usize..5000, open in prop::sample::select(vec!["(", "not (", "emails["])) {
            let close = if open == "emails[" { "]" } else { ")" };
            let s = format!("{}v eq \"x\"{}", open.repeat(n), close.repeat(n));
            let r = parse(&s);
            prop_assert_eq!(r.is_ok(), n <= MAX_FILTER_DEPTH, "{:?}", r.err());
        }
    }

    mod tests_info {
        pub struct Any;
        impl super::AttrInfo for Any {
            fn case_exact(&self, _: &super::AttrPath) -> bool {
                false
            }
            fn is_datetime(&self, _: &super::AttrPath) -> bool {
                false
            }
        }
    }
}
