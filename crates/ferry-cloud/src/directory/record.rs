//! Mapping between the cloud's SCIM documents and the neutral records of
//! `ferry-proto` that travel to and from AD.

use ferry_proto::record::{GroupRecord, UserRecord};
use serde_json::{json, Map, Value};

use crate::store::{GroupRow, UserRow};

/// The SCIM enterprise user extension.
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// Ferry's own extension for AD attributes SCIM has no home for.
pub const FERRY_USER: &str = "urn:ietf:params:scim:schemas:extension:ferry:2.0:User";
/// Ferry's group extension (description).
pub const FERRY_GROUP: &str = "urn:ietf:params:scim:schemas:extension:ferry:2.0:Group";

/// The neutral record of a stored user.
pub fn user_record(row: &UserRow) -> UserRecord {
    let d = &row.doc;
    let ent = &d[ENTERPRISE_USER];
    UserRecord {
        username: row.username.clone(),
        given_name: text(&d["name"]["givenName"]),
        family_name: text(&d["name"]["familyName"]),
        display_name: text(&d["displayName"]),
        email: pick_multi(&d["emails"], None),
        phone: pick_multi(&d["phoneNumbers"], Some("work")),
        mobile: typed_multi(&d["phoneNumbers"], "mobile"),
        title: text(&d["title"]),
        department: text(&ent["department"]),
        company: text(&ent["organization"]),
        description: text(&d[FERRY_USER]["description"]),
        employee_number: text(&ent["employeeNumber"]),
        manager: text(&ent["manager"]["value"]),
        active: row.active,
        awaiting_password: false,
    }
}

/// The neutral record of a stored group.
pub fn group_record(row: &GroupRow) -> GroupRecord {
    GroupRecord {
        name: row.name.clone(),
        description: text(&row.doc[FERRY_GROUP]["description"]),
    }
}

/// Writes a record's values into a user document, touching only the mapped
/// attributes (a SCIM client's other attributes survive an AD update).
/// `manager` must already be translated to a cloud user id.
pub fn apply_user_record(doc: &Value, rec: &UserRecord) -> Value {
    let mut doc = doc.as_object().cloned().unwrap_or_default();
    let mut name = doc.get("name").and_then(Value::as_object).cloned().unwrap_or_default();
    set_opt(&mut name, "givenName", &rec.given_name);
    set_opt(&mut name, "familyName", &rec.family_name);
    put_object(&mut doc, "name", name);
    set_opt(&mut doc, "displayName", &rec.display_name);
    doc.insert("active".into(), Value::Bool(rec.active));
    set_opt(&mut doc, "title", &rec.title);
    set_multi(&mut doc, "emails", None, &rec.email);
    set_multi(&mut doc, "phoneNumbers", Some("work"), &rec.phone);
    set_multi(&mut doc, "phoneNumbers", Some("mobile"), &rec.mobile);
    let mut ent = doc
        .get(ENTERPRISE_USER)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    set_opt(&mut ent, "department", &rec.department);
    set_opt(&mut ent, "organization", &rec.company);
    set_opt(&mut ent, "employeeNumber", &rec.employee_number);
    match &rec.manager {
        Some(m) => {
            ent.insert("manager".into(), json!({ "value": m }));
        }
        None => {
            ent.remove("manager");
        }
    }
    put_object(&mut doc, ENTERPRISE_USER, ent);
    let mut ferry = doc
        .get(FERRY_USER)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    set_opt(&mut ferry, "description", &rec.description);
    put_object(&mut doc, FERRY_USER, ferry);
    Value::Object(doc)
}

/// Writes a group record's description into a group document.
pub fn apply_group_record(doc: &Value, rec: &GroupRecord) -> Value {
    let mut doc = doc.as_object().cloned().unwrap_or_default();
    let mut ferry = doc
        .get(FERRY_GROUP)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    set_opt(&mut ferry, "description", &rec.description);
    put_object(&mut doc, FERRY_GROUP, ferry);
    Value::Object(doc)
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The primary value of a multi-valued attribute, else the first of
/// `prefer_type`, else the first value whose type is not mobile.
fn pick_multi(v: &Value, prefer_type: Option<&str>) -> Option<String> {
    let items = v.as_array()?;
    let primary = items
        .iter()
        .find(|i| i["primary"] == Value::Bool(true) && i["type"] != "mobile");
    let preferred = prefer_type.and_then(|t| items.iter().find(|i| i["type"] == t));
    let any = items.iter().find(|i| i["type"] != "mobile");
    primary.or(preferred).or(any).and_then(|i| text(&i["value"]))
}

fn typed_multi(v: &Value, ty: &str) -> Option<String> {
    v.as_array()?
        .iter()
        .find(|i| i["type"] == ty)
        .and_then(|i| text(&i["value"]))
}

fn set_opt(obj: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    match value {
        Some(s) => {
            obj.insert(key.into(), Value::String(s.clone()));
        }
        None => {
            obj.remove(key);
        }
    }
}

fn put_object(doc: &mut Map<String, Value>, key: &str, obj: Map<String, Value>) {
    if obj.is_empty() {
        doc.remove(key);
    } else {
        doc.insert(key.into(), Value::Object(obj));
    }
}

/// Sets the value of the entry the record field maps to: the entry of type
/// `ty` (or, for `None`, the primary/first entry), leaving other entries be.
fn set_multi(doc: &mut Map<String, Value>, key: &str, ty: Option<&str>, value: &Option<String>) {
    let mut items = doc.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    let pos = match ty {
        Some(t) => items.iter().position(|i| i["type"] == t),
        None => items
            .iter()
            .position(|i| i["primary"] == Value::Bool(true))
            .or(if items.is_empty() { None } else { Some(0) }),
    };
    match (pos, value) {
        (Some(p), Some(v)) => {
            if items[p]["value"] != Value::String(v.clone()) {
                items[p]["value"] = Value::String(v.clone());
            }
        }
        (Some(p), None) => {
            items.remove(p);
        }
        (None, Some(v)) => {
            let mut entry = json!({ "value": v });
            entry["type"] = json!(ty.unwrap_or("work"));
            if ty.is_none() {
                entry["primary"] = json!(true);
            }
            items.push(entry);
        }
        (None, None) => {}
    }
    if items.is_empty() {
        doc.remove(key);
    } else {
        doc.insert(key.into(), Value::Array(items));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(doc: Value) -> UserRow {
        UserRow {
            id: Uuid::nil(),
            username: "jsmith".into(),
            external_id: None,
            active: true,
            doc,
            has_password: false,
            version: 1,
            created_at: 0,
            updated_at: 0,
            home_domain: None,
        }
    }

    #[test]
    fn scim_document_maps_to_the_neutral_record() {
        let r = user_record(&row(json!({
            "name": {"givenName": "John", "familyName": "Smith"},
            "displayName": "Smith, John",
            "emails": [{"value": "home@x.test", "type": "home"}, {"value": "john@x.test", "type": "work", "primary": true}],
            "phoneNumbers": [{"value": "+1 555 0100", "type": "work"}, {"value": "+1 555 0199", "type": "mobile"}],
            "title": "Engineer",
            ENTERPRISE_USER: {"department": "R&D", "organization": "Example", "manager": {"value": "m-1"}},
            FERRY_USER: {"description": "test account"}
        })));
        assert_eq!(r.given_name.as_deref(), Some("John"));
        assert_eq!(r.email.as_deref(), Some("john@x.test"));
        assert_eq!(r.phone.as_deref(), Some("+1 555 0100"));
        assert_eq!(r.mobile.as_deref(), Some("+1 555 0199"));
        assert_eq!(r.department.as_deref(), Some("R&D"));
        assert_eq!(r.company.as_deref(), Some("Example"));
        assert_eq!(r.manager.as_deref(), Some("m-1"));
        assert_eq!(r.description.as_deref(), Some("test account"));
        assert!(r.active);
    }

    #[test]
    fn applying_a_record_round_trips_and_keeps_other_attributes() {
        let doc = json!({"nickName": "Johnny", "emails": [{"value": "old@x.test", "type": "work", "primary": true}]});
        let rec = UserRecord {
            username: "jsmith".into(),
            given_name: Some("John".into()),
            email: Some("new@x.test".into()),
            mobile: Some("+1 555 0199".into()),
            department: Some("Ops".into()),
            active: true,
            ..Default::default()
        };
        let out = apply_user_record(&doc, &rec);
        assert_eq!(out["nickName"], "Johnny");
        assert_eq!(
            out["emails"],
            json!([{"value": "new@x.test", "type": "work", "primary": true}])
        );
        assert_eq!(user_record(&row(out.clone())), rec);
        // Applying the same record again changes nothing: no echo.
        assert_eq!(apply_user_record(&out, &rec), out);
    }

    #[test]
    fn clearing_a_field_removes_it() {
        let doc = json!({"title": "Boss", ENTERPRISE_USER: {"department": "X"}});
        let out = apply_user_record(
            &doc,
            &UserRecord {
                username: "u".into(),
                active: true,
                ..Default::default()
            },
        );
        assert_eq!(out, json!({"active": true}));
    }
}
