//! SCIM resources in and out: validating a client's JSON against the schema
//! (canonical names, types, read-only attributes dropped), rendering a
//! stored object, and `attributes`/`excludedAttributes` projection.

use std::collections::HashSet;

use ferry_proto::record::ObjectKind;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::ScimError;
use super::filter::{split_urn, AttrInfo, AttrPath};
use super::schema::{Attr, Mutability, ResourceType, Returned, Ty, CORE_GROUP, CORE_USER};
use crate::clock::rfc3339;
use crate::store::{GroupRow, Member, UserRow};

/// Validates a client document: returns it with canonical attribute names,
/// checked types, and read-only attributes dropped. Extension attributes
/// stay under their schema URN.
pub fn normalize(rt: &ResourceType, input: &Value) -> Result<Map<String, Value>, ScimError> {
    let obj = input
        .as_object()
        .ok_or_else(|| ScimError::bad("invalidSyntax", "the body must be a JSON object"))?;
    let mut out = Map::new();
    for (key, value) in obj {
        if ["schemas", "id", "meta"].iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        if let Some(ext) = rt.extension(key) {
            let Some(ext_obj) = value.as_object() else {
                if value.is_null() {
                    continue;
                }
                return Err(ScimError::invalid_value(format!("{key} must be an object")));
            };
            let mut ext_out = Map::new();
            for (k, v) in ext_obj {
                if k.eq_ignore_ascii_case("schemas") {
                    continue;
                }
                let attr = ext
                    .attr(k)
                    .ok_or_else(|| ScimError::invalid_value(format!("{key} has no attribute {k:?}")))?;
                if let Some(v) = check_attr(attr, v, &format!("{}:{}", ext.id, attr.name))? {
                    ext_out.insert(attr.name.to_owned(), v);
                }
            }
            if !ext_out.is_empty() {
                out.insert(ext.id.to_owned(), Value::Object(ext_out));
            }
            continue;
        }
        // `urn:…:core:2.0:User:userName` is the same as `userName`.
        let name = match split_urn(key) {
            (Some(urn), rest) if urn.eq_ignore_ascii_case(rt.core.id) => rest,
            (Some(urn), rest) if rt.extension(urn).is_some() => {
                let ext = rt
                    .extension(urn)
                    .ok_or_else(|| ScimError::invalid_value("unknown schema"))?;
                let attr = ext
                    .attr(rest)
                    .ok_or_else(|| ScimError::invalid_value(format!("{urn} has no attribute {rest:?}")))?;
                if let Some(v) = check_attr(attr, value, key)? {
                    let slot = out.entry(ext.id.to_owned()).or_insert_with(|| json!({}));
                    slot[attr.name] = v;
                }
                continue;
            }
            _ => key.as_str(),
        };
        if rt.core_attr(name).is_none() && super::filter::is_empty(value) {
            // RFC 7643 attributes Ferry does not keep, sent empty (Entra ID
            // sends `"roles": []`): they ask to store nothing, so nothing is
            // refused. A value in one is still refused below.
            continue;
        }
        let attr = rt.core_attr(name).ok_or_else(|| {
            ScimError::invalid_value(format!(
                "{key:?} is not an attribute of {}; see /Schemas/{}",
                rt.name, rt.core.id
            ))
        })?;
        if let Some(v) = check_attr(attr, value, attr.name)? {
            out.insert(attr.name.to_owned(), v);
        }
    }
    for attr in rt.core.attrs.iter().filter(|a| a.required) {
        let ok = out
            .get(attr.name)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !ok {
            return Err(ScimError::invalid_value(format!(
                "{} is required and must be a non-empty string",
                attr.name
            )));
        }
    }
    Ok(out)
}

/// Checks one attribute's value. `Ok(None)` means "no value" (null, empty,
/// or read-only and so ignored).
pub fn check_attr(attr: &Attr, v: &Value, path: &str) -> Result<Option<Value>, ScimError> {
    if attr.mutability == Mutability::ReadOnly || v.is_null() {
        return Ok(None);
    }
    if attr.multi {
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let mut out = Vec::with_capacity(items.len());
        // Equal values serialize equally (serde_json keeps object keys
        // sorted), so a set of their texts de-duplicates in one pass.
        let mut seen = HashSet::with_capacity(items.len());
        for item in items {
            if let Some(x) = check_single(attr, item, path)? {
                if seen.insert(x.to_string()) {
                    out.push(x);
                }
            }
        }
        return Ok(if out.is_empty() { None } else { Some(Value::Array(out)) });
    }
    if v.is_array() {
        return Err(ScimError::invalid_value(format!(
            "{path} takes a single value, not a list"
        )));
    }
    check_single(attr, v, path)
}

/// Checks one (non-list) value of an attribute.
pub fn check_single(attr: &Attr, v: &Value, path: &str) -> Result<Option<Value>, ScimError> {
    let wrong = |what: &str| ScimError::invalid_value(format!("{path} must be {what}"));
    match (attr.ty, v) {
        (_, Value::Null) => Ok(None),
        (Ty::String | Ty::Reference, Value::String(s)) => {
            if s.len() > 4096 {
                return Err(wrong("at most 4096 bytes long"));
            }
            Ok(Some(v.clone()))
        }
        (Ty::String | Ty::Reference, _) => Err(wrong("a string")),
        (Ty::Boolean, Value::Bool(_)) => Ok(Some(v.clone())),
        // Some clients (Entra ID) send "True"/"False".
        (Ty::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(Value::Bool(true))),
        (Ty::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(Value::Bool(false))),
        (Ty::Boolean, _) => Err(wrong("true or false")),
        (Ty::Integer, Value::Number(n)) if n.is_i64() => Ok(Some(v.clone())),
        (Ty::Integer, _) => Err(wrong("an integer")),
        (Ty::DateTime, Value::String(s)) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| wrong("an RFC 3339 date-time"))?;
            Ok(Some(v.clone()))
        }
        (Ty::DateTime, _) => Err(wrong("an RFC 3339 date-time")),
        // A bare value for a complex attribute with a `value` (Entra ID sends
        // the manager's id as a string) stands for `{"value": …}`.
        (Ty::Complex, Value::String(_)) if attr.sub_attr("value").is_some() => {
            check_single(attr, &json!({ "value": v }), path)
        }
        (Ty::Complex, Value::Object(o)) => {
            let mut out = Map::new();
            for (k, sv) in o {
                let sub = attr
                    .sub_attr(k)
                    .ok_or_else(|| ScimError::invalid_value(format!("{path} has no sub-attribute {k:?}")))?;
                if let Some(x) = check_attr(sub, sv, &format!("{path}.{}", sub.name))? {
                    out.insert(sub.name.to_owned(), x);
                }
            }
            Ok(if out.is_empty() { None } else { Some(Value::Object(out)) })
        }
        (Ty::Complex, _) => Err(wrong("an object")),
    }
}

/// A validated user, split into what the store keeps in columns and the document.
pub struct UserInput {
    /// `userName`.
    pub username: String,
    /// `externalId`.
    pub external_id: Option<String>,
    /// `active` (default true).
    pub active: bool,
    /// `password`, to be hashed.
    pub password: Option<String>,
    /// The other attributes.
    pub doc: Value,
}

/// Splits a normalized user.
pub fn split_user(mut m: Map<String, Value>) -> Result<UserInput, ScimError> {
    let username = take_string(&mut m, "userName").unwrap_or_default();
    let username = username.trim().to_owned();
    if username.chars().count() > 256 {
        return Err(ScimError::invalid_value("userName must be at most 256 characters"));
    }
    if username.chars().any(|c| c.is_control()) {
        return Err(ScimError::invalid_value("userName must not contain control characters"));
    }
    let external_id = take_string(&mut m, "externalId");
    // `active` stays in the document too: a client that never set it (or
    // removed it) gets no `active` back, while the account counts as active.
    let active = m.get("active").and_then(Value::as_bool).unwrap_or(true);
    let password = take_string(&mut m, "password");
    if let Some(p) = &password {
        if p.is_empty() || p.len() > 256 {
            return Err(ScimError::bad("invalidValue", "password must be 1 to 256 characters"));
        }
    }
    Ok(UserInput {
        username,
        external_id,
        active,
        password,
        doc: Value::Object(m),
    })
}

/// A validated group.
pub struct GroupInput {
    /// `displayName`.
    pub name: String,
    /// `externalId`.
    pub external_id: Option<String>,
    /// `members` as given: (id, declared type).
    pub members: Vec<(Uuid, Option<ObjectKind>)>,
    /// The other attributes.
    pub doc: Value,
}

/// Splits a normalized group.
pub fn split_group(mut m: Map<String, Value>) -> Result<GroupInput, ScimError> {
    let name = take_string(&mut m, "displayName").unwrap_or_default().trim().to_owned();
    if name.chars().count() > 256 {
        return Err(ScimError::invalid_value("displayName must be at most 256 characters"));
    }
    let external_id = take_string(&mut m, "externalId");
    let mut members = Vec::new();
    if let Some(Value::Array(items)) = m.remove("members") {
        for item in items {
            let value = item["value"]
                .as_str()
                .ok_or_else(|| ScimError::invalid_value("each member needs a value (the member's id)"))?;
            let id = Uuid::parse_str(value)
                .map_err(|_| ScimError::invalid_value(format!("member {value:?} is not the id of a user or group")))?;
            let kind = match item["type"].as_str() {
                Some(t) if t.eq_ignore_ascii_case("user") => Some(ObjectKind::User),
                Some(t) if t.eq_ignore_ascii_case("group") => Some(ObjectKind::Group),
                Some(t) => {
                    return Err(ScimError::invalid_value(format!(
                        "member type {t:?} is neither User nor Group"
                    )))
                }
                None => None,
            };
            if !members.iter().any(|(m, _)| *m == id) {
                members.push((id, kind));
            }
        }
    }
    Ok(GroupInput {
        name,
        external_id,
        members,
        doc: Value::Object(m),
    })
}

fn take_string(m: &mut Map<String, Value>, key: &str) -> Option<String> {
    match m.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn meta(resource_type: &str, location: String, created: i64, updated: i64, version: i64) -> Value {
    json!({
        "resourceType": resource_type,
        "created": rfc3339(created),
        "lastModified": rfc3339(updated),
        "location": location,
        "version": format!("W/\"{version}\""),
    })
}

fn schemas_for(core: &str, doc: &Map<String, Value>) -> Value {
    let mut s = vec![Value::String(core.to_owned())];
    for k in doc.keys().filter(|k| k.starts_with("urn:")) {
        s.push(Value::String(k.clone()));
    }
    Value::Array(s)
}

/// The working representation of a user: every client-writable attribute,
/// as PATCH sees it.
pub fn user_working(row: &UserRow) -> Map<String, Value> {
    let mut m = row.doc.as_object().cloned().unwrap_or_default();
    m.insert("userName".into(), json!(row.username));
    if let Some(x) = &row.external_id {
        m.insert("externalId".into(), json!(x));
    }
    m
}

/// The full SCIM representation of a user.
pub fn render_user(row: &UserRow, groups: &[(Uuid, String)], base: &str) -> Value {
    let mut m = user_working(row);
    let schemas = schemas_for(CORE_USER, &m);
    m.insert("schemas".into(), schemas);
    m.insert("id".into(), json!(row.id.to_string()));
    if !groups.is_empty() {
        let g: Vec<Value> = groups
            .iter()
            .map(|(id, name)| {
                json!({"value": id.to_string(), "$ref": format!("{base}/Groups/{id}"), "display": name, "type": "direct"})
            })
            .collect();
        m.insert("groups".into(), Value::Array(g));
    }
    let location = format!("{base}/Users/{}", row.id);
    m.insert(
        "meta".into(),
        meta("User", location, row.created_at, row.updated_at, row.version),
    );
    Value::Object(m)
}

/// The working representation of a group.
pub fn group_working(row: &GroupRow, members: &[Member], base: &str) -> Map<String, Value> {
    let mut m = row.doc.as_object().cloned().unwrap_or_default();
    m.insert("displayName".into(), json!(row.name));
    if let Some(x) = &row.external_id {
        m.insert("externalId".into(), json!(x));
    }
    if !members.is_empty() {
        let list: Vec<Value> = members
            .iter()
            .map(|mb| {
                let (ty, ep) = match mb.kind {
                    ObjectKind::User => ("User", "Users"),
                    ObjectKind::Group => ("Group", "Groups"),
                };
                json!({"value": mb.id.to_string(), "$ref": format!("{base}/{ep}/{}", mb.id), "type": ty})
            })
            .collect();
        m.insert("members".into(), Value::Array(list));
    }
    m
}

/// The full SCIM representation of a group.
pub fn render_group(row: &GroupRow, members: &[Member], base: &str) -> Value {
    let mut m = group_working(row, members, base);
    let schemas = schemas_for(CORE_GROUP, &m);
    m.insert("schemas".into(), schemas);
    m.insert("id".into(), json!(row.id.to_string()));
    let location = format!("{base}/Groups/{}", row.id);
    m.insert(
        "meta".into(),
        meta("Group", location, row.created_at, row.updated_at, row.version),
    );
    Value::Object(m)
}

/// Parses a comma-separated `attributes`/`excludedAttributes` list.
pub fn parse_attr_list(s: Option<&str>) -> Result<Vec<AttrPath>, ScimError> {
    let Some(s) = s else { return Ok(vec![]) };
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| AttrPath::parse(p).map_err(|e| ScimError::bad("invalidValue", e)))
        .collect()
}

/// Applies `attributes` (keep only these, plus always-returned ones) and
/// `excludedAttributes` (drop these, unless always returned).
pub fn project(rt: &ResourceType, resource: Value, include: &[AttrPath], exclude: &[AttrPath]) -> Value {
    let Value::Object(full) = resource else { return resource };
    let mut out = if include.is_empty() {
        full.clone()
    } else {
        let mut out = Map::new();
        for key in ["schemas", "id"] {
            if let Some(v) = full.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        for p in include {
            copy_path(rt, &full, &mut out, p);
        }
        out
    };
    for p in exclude {
        remove_path(rt, &mut out, p);
    }
    Value::Object(out)
}

/// Where a path lives in the representation: `(extension URN, attribute, sub)`.
fn locate(rt: &ResourceType, p: &AttrPath) -> Option<(Option<&'static str>, &'static Attr, Option<&'static Attr>)> {
    let (ext, attr) = match &p.urn {
        Some(u) if u.eq_ignore_ascii_case(rt.core.id) => (None, rt.core_attr(&p.attr)?),
        Some(u) => {
            let ext = rt.extension(u)?;
            (Some(ext.id), ext.attr(&p.attr)?)
        }
        None => match rt.core_attr(&p.attr) {
            Some(a) => (None, a),
            None if p.attr.eq_ignore_ascii_case("meta") => return None,
            None => return None,
        },
    };
    let sub = match &p.sub {
        Some(s) => Some(attr.sub_attr(s)?),
        None => None,
    };
    Some((ext, attr, sub))
}

fn copy_path(rt: &ResourceType, full: &Map<String, Value>, out: &mut Map<String, Value>, p: &AttrPath) {
    // A bare extension URN selects the whole extension.
    if p.sub.is_none() && p.urn.is_none() {
        if let Some(ext) = rt.extension(&p.attr) {
            if let Some(v) = full.get(ext.id) {
                out.insert(ext.id.into(), v.clone());
            }
            return;
        }
        if p.attr.eq_ignore_ascii_case("meta") {
            if let Some(v) = full.get("meta") {
                out.insert("meta".into(), v.clone());
            }
            return;
        }
    }
    let Some((ext, attr, sub)) = locate(rt, p) else { return };
    let (src, dst) = match ext {
        Some(urn) => {
            let Some(Value::Object(src)) = full.get(urn) else {
                return;
            };
            let dst = out.entry(urn.to_owned()).or_insert_with(|| json!({}));
            let Value::Object(dst) = dst else { return };
            (src, dst)
        }
        None => (full, &mut *out),
    };
    let Some(v) = src.get(attr.name) else { return };
    match sub {
        None => {
            dst.insert(attr.name.into(), v.clone());
        }
        Some(sub) => {
            let picked = match v {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .filter_map(|i| i.get(sub.name).map(|x| json!({ sub.name: x })))
                        .collect(),
                ),
                Value::Object(o) => match o.get(sub.name) {
                    Some(x) => {
                        let mut existing = dst.get(attr.name).cloned().unwrap_or_else(|| json!({}));
                        existing[sub.name] = x.clone();
                        existing
                    }
                    None => return,
                },
                _ => return,
            };
            dst.insert(attr.name.into(), picked);
        }
    }
}

fn remove_path(rt: &ResourceType, out: &mut Map<String, Value>, p: &AttrPath) {
    if p.sub.is_none() && p.urn.is_none() {
        if let Some(ext) = rt.extension(&p.attr) {
            out.remove(ext.id);
            return;
        }
    }
    let Some((ext, attr, sub)) = locate(rt, p) else { return };
    if attr.returned == Returned::Always {
        return;
    }
    let target = match ext {
        Some(urn) => match out.get_mut(urn) {
            Some(Value::Object(o)) => o,
            _ => return,
        },
        None => out,
    };
    match sub {
        None => {
            target.remove(attr.name);
        }
        Some(sub) => match target.get_mut(attr.name) {
            Some(Value::Array(items)) => {
                for i in items.iter_mut() {
                    if let Value::Object(o) = i {
                        o.remove(sub.name);
                    }
                }
            }
            Some(Value::Object(o)) => {
                o.remove(sub.name);
            }
            _ => {}
        },
    }
}

/// Attribute facts for filters on this resource type.
pub struct Info<'a>(pub &'a ResourceType);

impl AttrInfo for Info<'_> {
    fn case_exact(&self, p: &AttrPath) -> bool {
        if p.attr.eq_ignore_ascii_case("meta") {
            return true;
        }
        match locate(self.0, p) {
            Some((_, _, Some(sub))) => sub.case_exact || sub.ty == Ty::Reference,
            Some((_, attr, None)) => attr.case_exact,
            None => false,
        }
    }

    fn is_datetime(&self, p: &AttrPath) -> bool {
        p.attr.eq_ignore_ascii_case("meta")
            && p.sub
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("created") || s.eq_ignore_ascii_case("lastModified"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::{GROUPS, USERS};
    use super::*;

    #[test]
    fn normalize_canonicalizes_names_and_drops_read_only() {
        let m = normalize(
            &USERS,
            &json!({
                "schemas": [CORE_USER],
                "USERNAME": "bjensen",
                "id": "ignored",
                "groups": [{"value": "x"}],
                "Name": {"GivenName": "Barbara"},
                "active": "False",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"Department": "Ops"}
            }),
        )
        .expect("valid");
        assert_eq!(
            Value::Object(m),
            json!({
                "userName": "bjensen",
                "name": {"givenName": "Barbara"},
                "active": false,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Ops"}
            })
        );
    }

    #[test]
    fn normalize_refuses_bad_input_with_the_reason() {
        let e = normalize(&USERS, &json!({"displayName": "x"})).unwrap_err();
        assert!(e.detail.contains("userName is required"), "{}", e.detail);
        let e = normalize(&USERS, &json!({"userName": "x", "shoeSize": 9})).unwrap_err();
        assert!(e.detail.contains("shoeSize"), "{}", e.detail);
        let e = normalize(&USERS, &json!({"userName": "x", "active": 3})).unwrap_err();
        assert!(e.detail.contains("active must be true or false"), "{}", e.detail);
        let e = normalize(&USERS, &json!({"userName": "x", "emails": [{"value": 5}]})).unwrap_err();
        assert!(e.detail.contains("emails.value must be a string"), "{}", e.detail);
        let e = normalize(&GROUPS, &json!({"displayName": ""})).unwrap_err();
        assert!(e.detail.contains("displayName is required"), "{}", e.detail);
        assert!(normalize(&USERS, &json!([1])).is_err());
    }

    #[test]
    fn projection_keeps_requested_and_always_returned() {
        let full = json!({"schemas": [CORE_USER], "id": "1", "userName": "u", "title": "t",
                          "name": {"givenName": "g", "familyName": "f"}, "meta": {"version": "W/\"1\""}});
        let p = project(
            &USERS,
            full.clone(),
            &parse_attr_list(Some("name.givenName")).expect("ok"),
            &[],
        );
        assert_eq!(
            p,
            json!({"schemas": [CORE_USER], "id": "1", "name": {"givenName": "g"}})
        );
        let p = project(&USERS, full, &[], &parse_attr_list(Some("title,id,name")).expect("ok"));
        assert_eq!(
            p,
            json!({"schemas": [CORE_USER], "id": "1", "userName": "u", "meta": {"version": "W/\"1\""}})
        );
    }
}
