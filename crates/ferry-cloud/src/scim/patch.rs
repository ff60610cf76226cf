//! SCIM PATCH (RFC 7644 §3.5.2) on a resource's working representation.
//! The result is validated again by [`super::resource::normalize`], exactly
//! like a PUT body, so PATCH cannot store anything PUT could not.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::{self, split_urn, AttrInfo, AttrPath, Filter};
use super::resource::{check_attr, check_single};
use super::schema::{Attr, Mutability, ResourceType, Ty};

/// The PatchOp message schema.
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Applies a PatchOp body to `working`.
pub fn apply_patch(rt: &ResourceType, working: &mut Map<String, Value>, body: &Value) -> Result<(), ScimError> {
    let schemas_ok = body["schemas"].as_array().is_some_and(|s| {
        s.iter()
            .any(|x| x.as_str().is_some_and(|x| x.eq_ignore_ascii_case(PATCH_OP)))
    });
    if !schemas_ok {
        return Err(ScimError::bad(
            "invalidSyntax",
            format!("a PATCH body must list the schema {PATCH_OP}"),
        ));
    }
    let ops = body
        .get("Operations")
        .or_else(|| body.get("operations"))
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::bad("invalidSyntax", "a PATCH body needs an Operations list"))?;
    if ops.is_empty() {
        return Err(ScimError::bad("invalidSyntax", "the Operations list is empty"));
    }
    for (i, op) in ops.iter().enumerate() {
        let name = op["op"]
            .as_str()
            .ok_or_else(|| ScimError::bad("invalidSyntax", format!("operation {i} has no op")))?
            .to_ascii_lowercase();
        let kind = match name.as_str() {
            "add" => OpKind::Add,
            "replace" => OpKind::Replace,
            "remove" => OpKind::Remove,
            other => {
                return Err(ScimError::bad(
                    "invalidSyntax",
                    format!("operation {i}: op {other:?} is not add, replace or remove"),
                ))
            }
        };
        let path = op["path"].as_str().map(str::trim).filter(|p| !p.is_empty());
        let value = op.get("value").filter(|v| !v.is_null());
        apply_op(rt, working, kind, path, value)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Add,
    Replace,
    Remove,
}

/// A resolved PATCH path.
struct Target {
    /// Extension URN holding the attribute; `None` for core.
    ext: Option<&'static str>,
    /// The attribute; `None` when the path is a bare extension URN.
    attr: Option<&'static Attr>,
    /// `attr[filter]`.
    filter: Option<Filter>,
    /// `.sub`.
    sub: Option<&'static Attr>,
}

fn invalid_path(path: &str, why: &str) -> ScimError {
    ScimError::bad("invalidPath", format!("path {path:?}: {why}"))
}

/// Finds an attribute by name in one schema.
type AttrLookup<'a> = Box<dyn Fn(&str) -> Option<&'static Attr> + 'a>;

fn resolve(rt: &ResourceType, path: &str) -> Result<Target, ScimError> {
    // A path is an attribute name plus at most one value filter.
    if path.len() > filter::MAX_FILTER_BYTES + 1024 {
        return Err(invalid_path(
            &path.chars().take(64).collect::<String>(),
            "the path is too long",
        ));
    }
    // Split `head[filter]tail`.
    let (head, filter, tail) = match path.find('[') {
        Some(open) => {
            let close = path
                .rfind(']')
                .ok_or_else(|| invalid_path(path, "a '[' is not closed"))?;
            if close < open {
                return Err(invalid_path(path, "brackets are out of order"));
            }
            let f = filter::parse(&path[open + 1..close]).map_err(|e| invalid_path(path, &e))?;
            (&path[..open], Some(f), &path[close + 1..])
        }
        None => (path, None, ""),
    };
    if let Some(ext) = rt.extension(head) {
        if filter.is_some() || !tail.is_empty() {
            return Err(invalid_path(path, "an extension URN cannot take a filter"));
        }
        return Ok(Target {
            ext: Some(ext.id),
            attr: None,
            filter: None,
            sub: None,
        });
    }
    let (urn, rest) = split_urn(head);
    let (ext, schema_attr): (Option<&'static str>, AttrLookup) = match urn {
        None => (None, Box::new(|n: &str| rt.core_attr(n))),
        Some(u) if u.eq_ignore_ascii_case(rt.core.id) => (None, Box::new(|n: &str| rt.core_attr(n))),
        Some(u) => {
            let ext = rt.extension(u).ok_or_else(|| invalid_path(path, "unknown schema"))?;
            (Some(ext.id), Box::new(move |n: &str| ext.attr(n)))
        }
    };
    let (attr_name, sub_name) = match (filter.is_some(), rest.split_once('.')) {
        (false, Some((a, s))) => (a, Some(s)),
        _ => (rest, None),
    };
    let sub_name = match (sub_name, tail) {
        (s, "") => s,
        (None, t) => Some(
            t.strip_prefix('.')
                .ok_or_else(|| invalid_path(path, "expected '.sub' after ']'"))?,
        ),
        (Some(_), _) => return Err(invalid_path(path, "too many sub-attributes")),
    };
    let attr = schema_attr(attr_name).ok_or_else(|| invalid_path(path, "no such attribute"))?;
    let sub = match sub_name {
        Some(s) => Some(
            attr.sub_attr(s)
                .ok_or_else(|| invalid_path(path, "no such sub-attribute"))?,
        ),
        None => None,
    };
    if filter.is_some() && !attr.multi {
        return Err(invalid_path(path, "a filter needs a multi-valued attribute"));
    }
    Ok(Target {
        ext,
        attr: Some(attr),
        filter,
        sub,
    })
}

fn apply_op(
    rt: &ResourceType,
    working: &mut Map<String, Value>,
    kind: OpKind,
    path: Option<&str>,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let Some(path) = path else {
        if kind == OpKind::Remove {
            return Err(ScimError::bad("noTarget", "a remove operation needs a path"));
        }
        let obj = value
            .and_then(Value::as_object)
            .ok_or_else(|| ScimError::invalid_value("without a path, the value must be an object of attributes"))?;
        for (k, v) in obj {
            if let Some(ext) = rt.extension(k) {
                let inner = v
                    .as_object()
                    .ok_or_else(|| ScimError::invalid_value(format!("{k} must be an object")))?;
                for (ek, ev) in inner.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("schemas")) {
                    apply_op(rt, working, kind, Some(&format!("{}:{ek}", ext.id)), Some(ev))?;
                }
            } else if !ignored_without_path(rt, k) {
                apply_op(rt, working, kind, Some(k), Some(v))?;
            }
        }
        return Ok(());
    };
    let t = resolve(rt, path)?;
    let Some(attr) = t.attr else {
        // A bare extension URN.
        let urn = t.ext.unwrap_or_default();
        if kind == OpKind::Remove {
            working.remove(urn);
            return Ok(());
        }
        let obj = value
            .and_then(Value::as_object)
            .ok_or_else(|| ScimError::invalid_value(format!("{urn} takes an object")))?;
        for (k, v) in obj.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("schemas")) {
            apply_op(rt, working, kind, Some(&format!("{urn}:{k}")), Some(v))?;
        }
        return Ok(());
    };
    if attr.mutability == Mutability::ReadOnly {
        return Err(ScimError::bad("mutability", format!("{} is read-only", attr.name)));
    }
    if attr.required && kind == OpKind::Remove && t.sub.is_none() {
        return Err(ScimError::bad(
            "mutability",
            format!("{} is required and cannot be removed", attr.name),
        ));
    }
    let container: &mut Map<String, Value> = match t.ext {
        Some(urn) => {
            let slot = working
                .entry(urn.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            slot.as_object_mut()
                .ok_or_else(|| ScimError::invalid_value("bad extension"))?
        }
        None => working,
    };
    let result = apply_to_attr(container, attr, &t, kind, value, path);
    if let Some(urn) = t.ext {
        if working.get(urn).and_then(Value::as_object).is_some_and(Map::is_empty) {
            working.remove(urn);
        }
    }
    result
}

/// In a path-less add/replace, the value is a partial resource, read as a
/// PUT body is: `schemas` and read-only attributes (`id`, `meta`, a user's
/// `groups`) are ignored, so a client echoing them back (Okta sends the
/// group's `id`) is not refused.
fn ignored_without_path(rt: &ResourceType, key: &str) -> bool {
    ["schemas", "id", "meta"].iter().any(|k| k.eq_ignore_ascii_case(key))
        || rt.core_attr(key).is_some_and(|a| a.mutability == Mutability::ReadOnly)
}

fn needs_value(value: Option<&Value>, path: &str) -> Result<Value, ScimError> {
    value
        .cloned()
        .ok_or_else(|| ScimError::invalid_value(format!("the operation on {path:?} needs a value")))
}

fn apply_to_attr(
    c: &mut Map<String, Value>,
    attr: &'static Attr,
    t: &Target,
    kind: OpKind,
    value: Option<&Value>,
    path: &str,
) -> Result<(), ScimError> {
    let name = attr.name;
    match (&t.filter, t.sub, attr.multi) {
        // attr (no filter, no sub)
        (None, None, multi) => match kind {
            OpKind::Remove => {
                if let (true, Some(v)) = (multi, value) {
                    // Remove the listed values (how Entra ID removes members).
                    let drop = check_attr(attr, v, name)?.unwrap_or(Value::Array(vec![]));
                    let drop: HashSet<String> = drop.as_array().into_iter().flatten().map(value_key).collect();
                    if let Some(Value::Array(items)) = c.get_mut(name) {
                        items.retain(|i| !drop.contains(&value_key(i)));
                    }
                    drop_if_empty(c, name);
                } else {
                    c.remove(name);
                }
            }
            OpKind::Add | OpKind::Replace => {
                let v = check_attr(attr, &needs_value(value, path)?, name)?;
                match (v, multi, attr.ty) {
                    (None, _, _) => {
                        if kind == OpKind::Replace {
                            c.remove(name);
                        }
                    }
                    (Some(Value::Array(new)), true, _) if kind == OpKind::Add => {
                        let items = c.entry(name.to_owned()).or_insert_with(|| Value::Array(vec![]));
                        if let Value::Array(items) = items {
                            let mut seen: HashSet<String> = items.iter().map(value_key).collect();
                            for n in new {
                                if seen.insert(value_key(&n)) {
                                    items.push(n);
                                }
                            }
                        }
                    }
                    (Some(Value::Object(new)), false, Ty::Complex) => {
                        // Both add and replace merge sub-attributes (§3.5.2.1, §3.5.2.3).
                        let slot = c.entry(name.to_owned()).or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(o) = slot {
                            o.extend(new);
                        } else {
                            *slot = Value::Object(new);
                        }
                    }
                    (Some(v), _, _) => {
                        c.insert(name.to_owned(), v);
                    }
                }
            }
        },
        // attr.sub on a single complex attribute
        (None, Some(sub), false) => {
            if kind == OpKind::Remove {
                if let Some(Value::Object(o)) = c.get_mut(name) {
                    o.remove(sub.name);
                }
                drop_if_empty(c, name);
                return Ok(());
            }
            let v = check_single_attr(sub, &needs_value(value, path)?, path)?;
            let slot = c.entry(name.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(o) = slot {
                match v {
                    Some(v) => {
                        o.insert(sub.name.to_owned(), v);
                    }
                    None => {
                        o.remove(sub.name);
                    }
                }
            }
            drop_if_empty(c, name);
        }
        // attr.sub on every value of a multi-valued attribute
        (None, Some(sub), true) => {
            let v = match kind {
                OpKind::Remove => None,
                _ => check_single_attr(sub, &needs_value(value, path)?, path)?,
            };
            if let Some(Value::Array(items)) = c.get_mut(name) {
                for i in items.iter_mut() {
                    set_sub(i, sub.name, v.clone());
                }
            }
        }
        // attr[filter] and attr[filter].sub
        (Some(f), sub, _) => {
            let info = ElementInfo(attr);
            let items = match c.get_mut(name) {
                Some(Value::Array(items)) => items,
                _ => {
                    return filtered_create(c, attr, f, sub, kind, value, path);
                }
            };
            let hits: Vec<usize> = (0..items.len())
                .filter(|i| filter::matches(f, &items[*i], &info))
                .collect();
            if hits.is_empty() {
                return filtered_create(c, attr, f, sub, kind, value, path);
            }
            match (kind, sub) {
                (OpKind::Remove, None) => {
                    let mut hit = hits.iter().peekable();
                    let mut idx = 0;
                    items.retain(|_| {
                        // `hits` is ascending, so one pass removes them all.
                        let drop = hit.next_if_eq(&&idx).is_some();
                        idx += 1;
                        !drop
                    });
                }
                (OpKind::Remove, Some(sub)) => {
                    for i in &hits {
                        set_sub(&mut items[*i], sub.name, None);
                    }
                }
                (_, Some(sub)) => {
                    let v = check_single_attr(sub, &needs_value(value, path)?, path)?;
                    for i in &hits {
                        set_sub(&mut items[*i], sub.name, v.clone());
                    }
                }
                (_, None) => {
                    let v = check_single(attr, &needs_value(value, path)?, path)?;
                    for i in &hits {
                        match (&v, kind) {
                            (Some(Value::Object(new)), OpKind::Add) => {
                                if let Value::Object(o) = &mut items[*i] {
                                    o.extend(new.clone());
                                }
                            }
                            (Some(new), _) => items[*i] = new.clone(),
                            (None, _) => {}
                        }
                    }
                }
            }
            drop_if_empty(c, name);
        }
    }
    Ok(())
}

/// `emails[type eq "work"].value` with no work e-mail yet: add/replace create
/// the value when the filter is a plain `sub eq "x"` (what Entra ID sends);
/// anything else has no target.
fn filtered_create(
    c: &mut Map<String, Value>,
    attr: &'static Attr,
    f: &Filter,
    sub: Option<&'static Attr>,
    kind: OpKind,
    value: Option<&Value>,
    path: &str,
) -> Result<(), ScimError> {
    if kind == OpKind::Remove {
        // Removing what is not there leaves the resource as asked.
        return Ok(());
    }
    let (
        Filter::Compare(
            AttrPath {
                attr: key,
                sub: None,
                urn: None,
            },
            filter::Op::Eq,
            Value::String(eq),
        ),
        Some(sub),
    ) = (f, sub)
    else {
        return Err(ScimError::bad("noTarget", format!("path {path:?} matches no value")));
    };
    let key_attr = attr
        .sub_attr(key)
        .ok_or_else(|| invalid_path(path, "no such sub-attribute in the filter"))?;
    let v = check_single_attr(sub, &needs_value(value, path)?, path)?;
    let mut item = Map::new();
    item.insert(key_attr.name.to_owned(), Value::String(eq.clone()));
    if let Some(v) = v {
        item.insert(sub.name.to_owned(), v);
    }
    let items = c.entry(attr.name.to_owned()).or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(items) = items {
        items.push(Value::Object(item));
    }
    Ok(())
}

fn check_single_attr(sub: &Attr, v: &Value, path: &str) -> Result<Option<Value>, ScimError> {
    if sub.mutability == Mutability::ReadOnly {
        return Err(ScimError::bad("mutability", format!("{path} is read-only")));
    }
    check_single(sub, v, path)
}

fn set_sub(item: &mut Value, sub: &str, v: Option<Value>) {
    if let Value::Object(o) = item {
        match v {
            Some(v) => {
                o.insert(sub.to_owned(), v);
            }
            None => {
                o.remove(sub);
            }
        }
    }
}

fn drop_if_empty(c: &mut Map<String, Value>, name: &str) {
    let empty = match c.get(name) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty {
        c.remove(name);
    }
}

/// Two values of a multi-valued attribute are the same value when their
/// `value` sub-attributes are equal (or, without one, when equal whole):
/// equal values have equal keys, so de-duplication is one pass with a set.
fn value_key(v: &Value) -> String {
    match v.get("value") {
        Some(x) => format!("v{x}"),
        None => format!("w{v}"),
    }
}

/// Filter facts inside `attr[…]`: names are the attribute's sub-attributes.
struct ElementInfo(&'static Attr);

impl AttrInfo for ElementInfo {
    fn case_exact(&self, p: &AttrPath) -> bool {
        self.0
            .sub_attr(&p.attr)
            .is_some_and(|s| s.case_exact || s.ty == Ty::Reference)
    }
    fn is_datetime(&self, p: &AttrPath) -> bool {
        self.0.sub_attr(&p.attr).is_some_and(|s| s.ty == Ty::DateTime)
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::{GROUPS, USERS};
    use super::*;
    use serde_json::json;

    fn patch(rt: &ResourceType, start: Value, ops: Value) -> Result<Value, ScimError> {
        let mut w = start.as_object().cloned().unwrap_or_default();
        apply_patch(rt, &mut w, &json!({"schemas": [PATCH_OP], "Operations": ops}))?;
        Ok(Value::Object(w))
    }

    #[test]
    fn add_replace_remove_simple_and_complex() {
        let out = patch(
            &USERS,
            json!({"userName": "u"}),
            json!([
                {"op": "add", "path": "title", "value": "Eng"},
                {"op": "Replace", "path": "name.givenName", "value": "Ann"},
                {"op": "add", "path": "name", "value": {"familyName": "Lee"}},
                {"op": "add", "value": {"nickName": "A", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Ops"}}},
            ]),
        )
        .expect("applies");
        assert_eq!(
            out,
            json!({"userName": "u", "title": "Eng", "name": {"givenName": "Ann", "familyName": "Lee"}, "nickName": "A",
                   "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Ops"}})
        );
        let out = patch(
            &USERS,
            out,
            json!([
                {"op": "remove", "path": "name.givenName"},
                {"op": "remove", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"},
                {"op": "replace", "path": "active", "value": "False"},
            ]),
        )
        .expect("applies");
        assert_eq!(
            out,
            json!({"userName": "u", "title": "Eng", "name": {"familyName": "Lee"}, "nickName": "A", "active": false})
        );
    }

    #[test]
    fn value_filters_select_entries() {
        let start =
            json!({"userName": "u", "emails": [{"value": "a@x", "type": "work"}, {"value": "b@x", "type": "home"}]});
        let out = patch(
            &USERS,
            start.clone(),
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "c@x"}]),
        )
        .expect("applies");
        assert_eq!(
            out["emails"],
            json!([{"value": "c@x", "type": "work"}, {"value": "b@x", "type": "home"}])
        );
        let out = patch(
            &USERS,
            start.clone(),
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
        )
        .expect("applies");
        assert_eq!(out["emails"], json!([{"value": "a@x", "type": "work"}]));
        // Entra ID's way of setting a value that does not exist yet.
        let out = patch(
            &USERS,
            json!({"userName": "u"}),
            json!([{"op": "add", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1"}]),
        )
        .expect("applies");
        assert_eq!(out["phoneNumbers"], json!([{"type": "mobile", "value": "+1"}]));
        let e = patch(
            &USERS,
            start,
            json!([{"op": "replace", "path": "emails[type eq \"other\" or value eq \"z\"]", "value": {"value": "q"}}]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some("noTarget"));
    }

    #[test]
    fn members_add_and_remove() {
        let a = "2819c223-7f76-453a-919d-413861904646";
        let b = "902c246b-6245-4190-8e05-00816be7344a";
        let out = patch(
            &GROUPS,
            json!({"displayName": "g"}),
            json!([{"op": "add", "path": "members", "value": [{"value": a}, {"value": b, "display": "ignored"}]}]),
        )
        .expect("applies");
        assert_eq!(out["members"], json!([{"value": a}, {"value": b}]));
        let out = patch(
            &GROUPS,
            out.clone(),
            json!([{"op": "remove", "path": format!("members[value eq \"{a}\"]")}]),
        )
        .expect("applies");
        assert_eq!(out["members"], json!([{"value": b}]));
        let out = patch(
            &GROUPS,
            out,
            json!([{"op": "remove", "path": "members", "value": [{"value": b}]}]),
        )
        .expect("applies");
        assert_eq!(out.get("members"), None);
    }

    #[test]
    fn bad_patches_are_refused_with_a_reason() {
        let u = json!({"userName": "u"});
        assert_eq!(
            patch(&USERS, u.clone(), json!([{"op": "remove", "path": "userName"}]))
                .unwrap_err()
                .scim_type,
            Some("mutability")
        );
        assert_eq!(
            patch(&USERS, u.clone(), json!([{"op": "add", "path": "shoe", "value": 1}]))
                .unwrap_err()
                .scim_type,
            Some("invalidPath")
        );
        assert_eq!(
            patch(&USERS, u.clone(), json!([{"op": "move", "path": "title"}]))
                .unwrap_err()
                .scim_type,
            Some("invalidSyntax")
        );
        assert_eq!(
            patch(&USERS, u.clone(), json!([{"op": "remove"}]))
                .unwrap_err()
                .scim_type,
            Some("noTarget")
        );
        assert_eq!(
            patch(&USERS, u.clone(), json!([{"op": "add", "path": "groups", "value": []}]))
                .unwrap_err()
                .scim_type,
            Some("mutability")
        );
        assert_eq!(
            patch(
                &USERS,
                u.clone(),
                json!([{"op": "add", "path": "emails[type eq", "value": "x"}])
            )
            .unwrap_err()
            .scim_type,
            Some("invalidPath")
        );
        let mut w = Map::new();
        assert!(apply_patch(&USERS, &mut w, &json!({"Operations": []})).is_err());
    }

    #[test]
    fn deep_or_long_paths_are_invalid_paths_not_a_crash() {
        let u = json!({"userName": "u", "emails": [{"value": "a@x"}]});
        for path in [
            format!("emails[{}value eq \"a@x\"{}]", "(".repeat(1000), ")".repeat(1000)),
            format!("emails[{}value eq \"a@x\"{}]", "not (".repeat(1000), ")".repeat(1000)),
            format!("emails[{}]", vec![r#"value eq "a@x""#; 20_000].join(" and ")),
            "ab€c".to_owned(),
            "urn:€:x".to_owned(),
            "emails[ty€pe eq \"x\"].value".to_owned(),
            "x".repeat(100_000),
        ] {
            let e = patch(
                &USERS,
                u.clone(),
                json!([{"op": "replace", "path": path, "value": "x"}]),
            )
            .unwrap_err();
            assert_eq!(e.scim_type, Some("invalidPath"), "{}", e.detail);
        }
    }

    #[test]
    fn many_values_are_de_duplicated_in_one_pass() {
        let emails: Vec<Value> = (0..20_000)
            .map(|i| json!({"value": format!("{}@x", i % 10_000)}))
            .collect();
        let out = patch(
            &USERS,
            json!({"userName": "u", "emails": [{"value": "0@x", "type": "work"}]}),
            json!([{"op": "add", "path": "emails", "value": emails}]),
        )
        .expect("applies");
        let got = out["emails"].as_array().expect("emails");
        assert_eq!(got.len(), 10_000);
        // The value already there keeps its other sub-attributes.
        assert_eq!(got[0], json!({"value": "0@x", "type": "work"}));
        let drop: Vec<Value> = (0..9_999).map(|i| json!({"value": format!("{i}@x")})).collect();
        let out = patch(&USERS, out, json!([{"op": "remove", "path": "emails", "value": drop}])).expect("applies");
        assert_eq!(out["emails"], json!([{"value": "9999@x"}]));
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary PATCH paths and operations never panic: they apply or are
    //! refused with a SCIM error.
    use super::super::schema::{GROUPS, USERS};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn paths() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("emails".to_owned()),
                Just("members".to_owned()),
                Just("name".to_owned()),
                Just("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User".to_owned()),
                Just(":".to_owned()),
                Just(".".to_owned()),
                Just("[".to_owned()),
                Just("]".to_owned()),
                Just("(".to_owned()),
                Just(")".to_owned()),
                Just("value".to_owned()),
                Just("type".to_owned()),
                Just(" eq ".to_owned()),
                Just(" and ".to_owned()),
                Just("not ".to_owned()),
                Just("\"work\"".to_owned()),
                Just("€".to_owned()),
                "[a-zA-Z]{1,10}",
                any::<String>(),
            ],
            0..30,
        )
        .prop_map(|v| v.concat())
    }

    fn values() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!("x")),
            Just(json!(true)),
            Just(json!([{"value": "a@x", "type": "work"}])),
            Just(json!({"value": "b"})),
            Just(json!({"givenName": "g"})),
            any::<String>().prop_map(Value::String),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_patches_never_panic(
            path in paths(),
            value in values(),
            op in prop::sample::select(vec!["add", "replace", "remove"]),
            group in any::<bool>(),
        ) {
            let rt = if group { &GROUPS } else { &USERS };
            let mut w = json!({"userName": "u", "displayName": "g", "emails": [{"value": "a@x", "type": "work"}],
                               "members": [{"value": "2819c223-7f76-453a-919d-413861904646"}]})
                .as_object()
                .cloned()
                .unwrap_or_default();
            let body = json!({"schemas": [PATCH_OP], "Operations": [{"op": op, "path": path, "value": value}]});
            let _ = apply_patch(rt, &mut w, &body);
        }
    }
}
