//! The "What syncs" section's Preview: the Details form's scope is sent to
//! the scope-preview API (the agent reads AD with it), and the page comes
//! back with the values entered, unsaved, and what they would do.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde_json::Value;

use super::pages::{domain_page, enc, load_domain, settings_body};
use super::{field, redirect, Session, St};
use crate::app::AppState;

/// Cloud groups named by name, as ids; or which name matches no group.
pub(super) async fn group_ids(state: &AppState, s: &Session, names: &[String]) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for name in names {
        // An id (a group whose name is gone) stays as it is.
        if uuid::Uuid::parse_str(name).is_ok() {
            ids.push(name.clone());
            continue;
        }
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("displayName eq \"{quoted}\"");
        let uri = format!("/scim/v2/Groups?attributes=displayName&filter={}", enc(&filter));
        let a = s.api(state, Method::GET, &uri, None).await;
        match a.body["Resources"][0]["id"].as_str().filter(|_| a.ok()) {
            Some(id) => ids.push(id.to_owned()),
            None => return Err(format!("There is no cloud group named {name:?}.")),
        }
    }
    Ok(ids)
}

/// `POST /directories/{id}/scope-preview`.
pub(super) async fn preview(
    State(state): St,
    s: Session,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check(field(&form, "csrf")) {
        return r;
    }
    let mut v = match load_domain(&state, &s, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = match settings_body(&state, &s, &form).await {
        Ok(b) => b,
        Err(m) => return domain_page(&s, &v, "details", Some(&m), None, &HashMap::new()),
    };
    // The form comes back as entered, not saved.
    for key in ["netbios_name", "user_ou", "default_for_cloud_objects"] {
        v.domain[key] = body[key].clone();
    }
    if let Some(p) = body["policies"].as_object() {
        for (k, val) in p {
            v.domain["policies"][k] = val.clone();
        }
    }
    let a = s
        .api(
            &state,
            Method::POST,
            &format!("/api/v1/domains/{id}/scope-preview"),
            Some(body["policies"]["scope"].clone()),
        )
        .await;
    if a.status == StatusCode::UNAUTHORIZED {
        return redirect("/signin");
    }
    if !a.ok() {
        let msg = a.message();
        return domain_page(&s, &v, "details", Some(&msg), None, &HashMap::new());
    }
    v.preview = Some(a.body);
    domain_page(&s, &v, "details", None, None, &HashMap::new())
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// What a previewed scope would do, on each side.
pub(super) fn preview_box(p: &Value) -> Markup {
    let entering = &p["entering"];
    let leaving = &p["leaving"];
    let to_ad = &p["cloud_to_ad"];
    let sample = |v: &Value| -> Vec<String> {
        v["sample"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    html! {
        section.preview id="scope-preview" role="status" {
            h3 { "Preview: not saved yet" }
            @if entering.is_null() {
                p { "What would come in from AD is not known: no agent of this domain answered. Once one is connected, preview again." }
            } @else {
                p.entering { "From AD into the cloud: " strong { (n(&entering["users"])) " users and " (n(&entering["groups"])) " groups" } " would be created (or linked to a same-named cloud object)." }
                @for dn in sample(entering) { code.small { (dn) } br; }
            }
            p.leaving { "Leaving the scope: " strong { (n(&leaving["users"])) " users and " (n(&leaving["groups"])) " groups" } ", " (leaving["action"].as_str().unwrap_or("")) "."
                @if leaving["held_in_quarantine"] == true { " That is more than the delete threshold: they would be held for your approval." } }
            @for dn in sample(leaving) { code.small { (dn) } br; }
            @if n(&to_ad["entering"]["users"]) + n(&to_ad["entering"]["groups"]) > 0 || n(&to_ad["elsewhere"]) > 0 {
                p.to-ad { "From the cloud into AD: " strong { (n(&to_ad["entering"]["users"])) " users and " (n(&to_ad["entering"]["groups"])) " groups" } " of the bound groups would be created in this domain."
                    @if n(&to_ad["elsewhere"]) > 0 { " " (n(&to_ad["elsewhere"])) " belong to another domain and stay there." } }
                @for name in sample(&to_ad["entering"]) { code.small { (name) } br; }
            }
            @for g in p["missing_groups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                p.error { "No AD group " code { (g) } ": it takes no one in." }
            }
            p.hint { "Save to apply it, or change the fields and preview again." }
        }
    }
}
