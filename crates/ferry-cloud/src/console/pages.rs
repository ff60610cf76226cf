//! The console's pages. Each reads and writes through the API (see the
//! module above) and renders HTML; a refused write re-renders its form with
//! the API's message and the values entered.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::{
    field, layout, page, page_error, redirect, sign_in, start_page, with_cookie, Caller, Session, St, SESSION_COOKIE,
};
use crate::app::AppState;

type F = Form<HashMap<String, String>>;
type Q = Query<HashMap<String, String>>;

/// 422 when the page shows a refused form, else 200.
fn form_status(msg: Option<&str>) -> StatusCode {
    if msg.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    }
}

/// A POST's CSRF token and the ids in its URL, checked before anything else.
fn guard(s: &Session, form: &HashMap<String, String>, ids: &[&str]) -> Result<(), Response> {
    s.check(field(form, "csrf"))?;
    ids.iter().try_for_each(|id| id_ok(id))
}

fn csrf_input(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

fn error_box(msg: Option<&str>) -> Markup {
    html! { @if let Some(m) = msg { p.error role="alert" { (m) } } }
}

fn notice(q: &HashMap<String, String>) -> Markup {
    let text = match q.get("done").map(String::as_str) {
        Some("saved") => "Saved.",
        Some("created") => "Created.",
        Some("deleted") => "Deleted.",
        Some("revoked") => "The agent was revoked.",
        Some("decided") => "Done.",
        Some("retried") => "Sent again: the error clears by itself once the other side takes the change.",
        Some("dismissed") => "Dismissed.",
        Some("resync") => "Resync asked for: the agent reads the whole domain again within seconds.",
        Some("audit") => {
            "Asked for: the agent compares both sides whole within seconds; the result shows on Domain Agents."
        }
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

fn when(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    ferry_proto::time::utc(ms)
}

/// `s` as a URL query value: unreserved characters as they are, every other byte `%XX`.
pub(super) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An id from a URL, checked before it reaches a query string.
fn id_ok(id: &str) -> Result<(), Response> {
    if uuid::Uuid::parse_str(id).is_ok() {
        Ok(())
    } else {
        Err(page_error(StatusCode::NOT_FOUND, &format!("no such object: {id:?}")))
    }
}

// ---- first run, sign-in, sign-out -------------------------------------------

pub(super) async fn home(State(state): St, headers: HeaderMap) -> Response {
    redirect(start_page(&state, &headers).await)
}

fn setup_page(msg: Option<&str>, form: &HashMap<String, String>) -> Response {
    page(
        form_status(msg),
        layout(
            "Set up Ferry",
            "",
            None,
            html! {
                section.narrow {
                    h1 { "Set up Ferry" }
                    p { "No organization exists yet. Create yours and its first admin." }
                    (error_box(msg))
                    form method="post" action="/setup" {
                        label { "Organization" input name="org" required maxlength="200" value=(field(form, "org")); }
                        label { "Admin e-mail" input name="email" type="email" required maxlength="254" autocomplete="username" value=(field(form, "email")); }
                        label { "Password (8 characters or more)" input name="password" type="password" required minlength="8" maxlength="200" autocomplete="new-password"; }
                        button type="submit" { "Create and sign in" }
                    }
                }
            },
        ),
    )
}

pub(super) async fn setup_form(State(state): St) -> Response {
    if super::has_org(&state).await {
        return redirect("/signin");
    }
    setup_page(None, &HashMap::new())
}

pub(super) async fn setup(State(state): St, caller: Caller, Form(form): F) -> Response {
    if super::has_org(&state).await {
        return redirect("/signin");
    }
    let org = field(&form, "org");
    let email = field(&form, "email").to_lowercase();
    let password = form.get("password").cloned().unwrap_or_default();
    let has_control = |v: &str| v.chars().any(|c| crate::http::refused_control(u32::from(c)));
    let problem = if org.is_empty() || org.len() > 200 || has_control(org) {
        Some("Enter the organization's name (up to 200 characters).")
    } else if !email.contains('@') || email.len() > 254 || email.contains(char::is_whitespace) || has_control(&email) {
        Some("Enter a valid e-mail address for the admin.")
    } else if password.chars().count() < 8 || password.len() > 200 {
        Some("The password needs 8 to 200 characters.")
    } else {
        None
    };
    if let Some(p) = problem {
        return setup_page(Some(p), &form);
    }
    let pw = password.clone();
    let Ok(Ok(phc)) = tokio::task::spawn_blocking(move || crate::secrets::hash_password(&pw)).await else {
        return page_error(StatusCode::INTERNAL_SERVER_ERROR, "the password could not be hashed");
    };
    let now = state.now();
    let created = async {
        let mut tx = state.store.begin().await?;
        if !tx.list_orgs().await?.is_empty() {
            return Ok::<bool, crate::store::StoreError>(false);
        }
        let o = tx.insert_org(org, now).await?;
        let a = tx.insert_admin(o.id, &email, &phc, now).await?;
        tx.append_audit(
            o.id,
            &format!("admin:{email}"),
            "org.create",
            &format!("admin:{}", a.id),
            &json!({"org": org, "via": "console first run"}),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
    .await;
    match created {
        Ok(true) => match sign_in(&state, caller, &email, &password, "/directories").await {
            Ok(r) => r,
            Err((status, m)) => page_error(status, &m),
        },
        Ok(false) => redirect("/signin"),
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn signin_page(status: StatusCode, msg: Option<&str>, email: &str) -> Response {
    page(
        status,
        layout(
            "Sign in",
            "",
            None,
            html! {
                section.narrow {
                    h1 { "Sign in to Ferry" }
                    (error_box(msg))
                    form method="post" action="/signin" {
                        label { "E-mail" input name="email" type="email" required autofocus autocomplete="username" maxlength="254" value=(email); }
                        label { "Password" input name="password" type="password" required autocomplete="current-password" maxlength="200"; }
                        button type="submit" { "Sign in" }
                    }
                }
            },
        ),
    )
}

pub(super) async fn signin_form(State(state): St) -> Response {
    if !super::has_org(&state).await {
        return redirect("/setup");
    }
    signin_page(StatusCode::OK, None, "")
}

pub(super) async fn signin(State(state): St, caller: Caller, Form(form): F) -> Response {
    let email = field(&form, "email").to_owned();
    let password = form.get("password").cloned().unwrap_or_default();
    if email.is_empty() || password.is_empty() {
        return signin_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Enter your e-mail and password."),
            &email,
        );
    }
    match sign_in(&state, caller, &email, &password, "/directories").await {
        Ok(r) => r,
        // 401 for a wrong password, 429 (not 401) while this address waits.
        Err((status, m)) => signin_page(status, Some(&m), &email),
    }
}

pub(super) async fn signout(State(state): St, s: Session, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[]) {
        return r;
    }
    s.api(&state, Method::DELETE, "/api/v1/sessions/current", None).await;
    with_cookie(
        redirect("/signin"),
        &format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    )
}

// ---- directories ------------------------------------------------------------

fn health(agents: &[Value]) -> (&'static str, String) {
    let primary = agents.iter().find(|a| a["primary"] == true);
    match primary {
        Some(a) if a["status"] == "active" && a["report"]["last_error"].is_null() => {
            ("green", format!("syncing ({})", a["hostname"].as_str().unwrap_or("")))
        }
        Some(a) if a["status"] == "active" => (
            "yellow",
            format!("error: {}", a["report"]["last_error"].as_str().unwrap_or("")),
        ),
        Some(_) => ("yellow", "the primary agent is not reporting".into()),
        None if agents.is_empty() => ("red", "no agent installed".into()),
        None if agents.iter().all(|a| a["status"] == "waiting") => {
            ("yellow", "agent installed, waiting for its first contact".into())
        }
        None => ("red", "no agent is syncing".into()),
    }
}

fn directories_page(
    s: &Session,
    domains: &[DomainRow],
    msg: Option<&str>,
    form: &HashMap<String, String>,
    q: &HashMap<String, String>,
) -> Response {
    page(
        form_status(msg),
        layout(
            "Directories",
            "Directories",
            Some(&s.csrf),
            html! {
                h1 { "Directories" }
                (notice(q))
                @if domains.is_empty() {
                    p { "No Active Directory domain yet: add one below, then install its sync agent." }
                } @else {
                    table {
                        thead { tr { th { "Domain" } th { "Root DN" } th { "Sync" } } }
                        tbody {
                            @for (d, agents, errors) in domains {
                                @let (color, text) = health(agents);
                                @let id = d["id"].as_str().unwrap_or("");
                                tr {
                                    td { a href={ "/directories/" (id) } { (d["name"].as_str().unwrap_or("")) } }
                                    td { code { (d["root_dn"].as_str().unwrap_or("")) } }
                                    td {
                                        span class={ "dot " (color) } aria-hidden="true" {} " " (text)
                                        @if *errors > 0 {
                                            " · " a.sync-errors href={ "/directories/" (id) "?tab=activity" } { (errors) " sync " (if *errors == 1 { "error" } else { "errors" }) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Add a domain" }
                (error_box(msg))
                form.inline method="post" action="/directories" {
                    (csrf_input(s))
                    label { "DNS name" input name="name" required maxlength="253" placeholder="example.com" value=(field(form, "name")); }
                    label { "NetBIOS name (optional)" input name="netbios_name" maxlength="15" placeholder="EXAMPLE" value=(field(form, "netbios_name")); }
                    button type="submit" { "Add domain" }
                }
            },
        ),
    )
}

/// A domain on the Directories page: itself, its agents, its open sync errors.
type DomainRow = (Value, Vec<Value>, i64);

async fn load_domains(state: &AppState, s: &Session) -> Result<Vec<DomainRow>, Response> {
    let list = s.get(state, "/api/v1/domains").await?;
    let mut out = Vec::new();
    for d in list["domains"].as_array().cloned().unwrap_or_default() {
        let id = d["id"].as_str().unwrap_or_default().to_owned();
        let agents = s.get(state, &format!("/api/v1/domains/{id}/agents")).await?;
        let errors = s
            .get(state, &format!("/api/v1/domains/{id}/sync-errors?limit=1"))
            .await?;
        out.push((
            d,
            agents["agents"].as_array().cloned().unwrap_or_default(),
            errors["total"].as_i64().unwrap_or(0),
        ));
    }
    Ok(out)
}

pub(super) async fn directories(State(state): St, s: Session, Query(q): Q) -> Response {
    match load_domains(&state, &s).await {
        Ok(d) => directories_page(&s, &d, None, &HashMap::new(), &q),
        Err(r) => r,
    }
}

pub(super) async fn add_domain(State(state): St, s: Session, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[]) {
        return r;
    }
    let mut body = json!({ "name": field(&form, "name") });
    if !field(&form, "netbios_name").is_empty() {
        body["netbios_name"] = json!(field(&form, "netbios_name"));
    }
    let a = s.api(&state, Method::POST, "/api/v1/domains", Some(body)).await;
    if a.ok() {
        return redirect(&format!("/directories/{}", a.body["id"].as_str().unwrap_or("")));
    }
    match load_domains(&state, &s).await {
        Ok(d) => directories_page(&s, &d, Some(&a.message()), &form, &HashMap::new()),
        Err(r) => r,
    }
}

pub(super) struct DomainView {
    pub(super) domain: Value,
    agents: Vec<Value>,
    quarantine: Vec<Value>,
    /// Deletes made in the cloud held back from AD.
    held: Vec<Value>,
    sync_errors: Vec<Value>,
    sync_error_total: i64,
    activity: Vec<Value>,
    /// Names of the objects the activity names by id (and of the cloud
    /// groups bound to the domain).
    names: ObjectNames,
    /// A scope preview the admin asked for (the form shows the unsaved values).
    pub(super) preview: Option<Value>,
}

pub(super) async fn load_domain(state: &AppState, s: &Session, id: &str) -> Result<DomainView, Response> {
    id_ok(id)?;
    let domain = s.get(state, &format!("/api/v1/domains/{id}")).await?;
    let agents = s.get(state, &format!("/api/v1/domains/{id}/agents")).await?;
    let quarantine = s.get(state, &format!("/api/v1/domains/{id}/quarantine")).await?;
    let held = s.get(state, &format!("/api/v1/domains/{id}/held-deletes")).await?;
    let errors = s
        .get(state, &format!("/api/v1/domains/{id}/sync-errors?limit=100"))
        .await?;
    let audit = s.get(state, "/api/v1/audit?limit=200").await?;
    let activity = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["details"]["origin"] == id || e["target"] == format!("domain:{id}").as_str())
        .take(50)
        .cloned()
        .collect::<Vec<_>>();
    let bound: Vec<String> = domain["policies"]["scope"]["cloud_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|g| format!("group:{g}"))
        .collect();
    let targets = activity
        .iter()
        .filter_map(|e| e["target"].as_str())
        .chain(bound.iter().map(String::as_str));
    let names = object_names(state, s, targets).await;
    Ok(DomainView {
        domain,
        agents: agents["agents"].as_array().cloned().unwrap_or_default(),
        quarantine: quarantine["quarantine"].as_array().cloned().unwrap_or_default(),
        held: held["held"].as_array().cloned().unwrap_or_default(),
        sync_errors: errors["sync_errors"].as_array().cloned().unwrap_or_default(),
        sync_error_total: errors["total"].as_i64().unwrap_or(0),
        activity,
        names,
        preview: None,
    })
}

/// Names of objects the API names by id, keyed by the audit log's
/// `user:ID` / `group:ID`: the console shows names, never bare ids.
type ObjectNames = HashMap<String, String>;

/// The names of these objects, one read each (an object deleted since is
/// left out; its id is shown).
async fn object_names<'a>(state: &AppState, s: &Session, targets: impl Iterator<Item = &'a str>) -> ObjectNames {
    let mut names = ObjectNames::new();
    for target in targets {
        if names.contains_key(target) {
            continue;
        }
        let (path, attr) = match target.split_once(':') {
            Some(("user", id)) if id_ok(id).is_ok() => (format!("/scim/v2/Users/{id}?attributes=userName"), "userName"),
            Some(("group", id)) if id_ok(id).is_ok() => {
                (format!("/scim/v2/Groups/{id}?attributes=displayName"), "displayName")
            }
            _ => continue,
        };
        let a = s.api(state, Method::GET, &path, None).await;
        if let Some(name) = a.body[attr].as_str().filter(|_| a.ok()) {
            names.insert(target.to_owned(), name.to_owned());
        }
    }
    names
}

/// An object named by `kind:id`: its name, linked to its page, or the id
/// when it is gone.
fn object_link(target: &str, names: &ObjectNames) -> Markup {
    let page = match target.split_once(':') {
        Some(("user", id)) => Some(format!("/users/{id}")),
        Some(("group", id)) => Some(format!("/groups/{id}")),
        _ => None,
    };
    match (names.get(target), page) {
        (Some(name), Some(href)) => html! { a href=(href) { (name) } },
        _ => html! { code { (target) } },
    }
}

fn select(name: &str, current: &str, options: &[(&str, &str)]) -> Markup {
    html! {
        select name=(name) {
            @for (v, label) in options {
                option value=(v) selected[*v == current] { (label) }
            }
        }
    }
}

pub(super) fn domain_page(
    s: &Session,
    v: &DomainView,
    tab: &str,
    msg: Option<&str>,
    install: Option<&Value>,
    q: &HashMap<String, String>,
) -> Response {
    let d = &v.domain;
    let id = d["id"].as_str().unwrap_or_default();
    let p = &d["policies"];
    let activity = if v.sync_error_total > 0 {
        format!("Sync activity ({} errors)", v.sync_error_total)
    } else {
        "Sync activity".to_owned()
    };
    let tabs = [
        ("details", "Details"),
        ("agents", "Domain Agents"),
        ("activity", activity.as_str()),
    ];
    page(
        form_status(msg),
        layout(
            d["name"].as_str().unwrap_or("Domain"),
            "Directories",
            Some(&s.csrf),
            html! {
                p.crumbs { a href="/directories" { "Directories" } " › " (d["name"].as_str().unwrap_or("")) }
                div.titlebar {
                    h1 { (d["name"].as_str().unwrap_or("")) }
                    form method="post" action={ "/directories/" (id) "/install" } {
                        (csrf_input(s))
                        button.primary type="submit" id="install-agent" { "Install a new Sync Agent" }
                    }
                }
                (notice(q))
                @if let Some(k) = install {
                    dialog open id="install-dialog" aria-labelledby="install-title" {
                        h2 id="install-title" { "Install a new Sync Agent" }
                        (install_steps(k))
                        (prepare_account(d))
                        div.copy {
                            input id="connect-key" readonly value=(k["connect_key"].as_str().unwrap_or("")) aria-label="Connect Key";
                            button type="button" data-copy="connect-key" { "Copy" }
                        }
                        p.small { "The key works once and expires " (when(k["expires_at"].as_i64().unwrap_or(0))) ". It carries this console's address: " code { (k["cloud_url"].as_str().unwrap_or("")) } }
                        form method="get" action={ "/directories/" (id) } {
                            input type="hidden" name="tab" value="agents";
                            button type="submit" { "Close" }
                        }
                    }
                }
                nav.tabs role="tablist" {
                    @for (t, label) in tabs {
                        a role="tab" href={ "/directories/" (id) "?tab=" (t) } aria-selected=(if t == tab { "true" } else { "false" }) { (label) }
                    }
                }
                @if tab != "details" {
                    // Save on every tab (install guide step 20): it keeps the settings as
                    // they are on Details, and comes back here.
                    form.save-domain method="post" action={ "/directories/" (id) } {
                        (csrf_input(s))
                        input type="hidden" name="tab" value=(tab);
                        button.primary type="submit" { "Save" }
                        span.small { " the domain's settings (change them on Details)" }
                    }
                }
                @if tab == "agents" {
                    section id="agents" data-refresh="5" {
                        @if v.agents.is_empty() {
                            p { "No agent yet. Use “Install a new Sync Agent”." }
                        } @else {
                            table {
                                thead { tr { th { "Status" } th { "Host" } th { "Version" } th { "Role" } th { "Last seen" } th { "AD → cloud" } th { "cloud → AD" } th { "Both sides compared" } th {} } }
                                tbody {
                                    @for a in &v.agents {
                                        @let status = a["status"].as_str().unwrap_or("offline");
                                        @let (color, label) = match status {
                                            "active" => ("green", "active"),
                                            "stale" => ("yellow", "stale"),
                                            "waiting" => ("grey", "waiting for first contact"),
                                            _ => ("red", "offline"),
                                        };
                                        tr.agent data-status=(status) {
                                            td { span class={ "dot " (color) } aria-hidden="true" {} " " (label) }
                                            td { (a["hostname"].as_str().unwrap_or("")) }
                                            td { (a["version"].as_str().unwrap_or("")) }
                                            td { @if a["primary"] == true { "primary" } @else { "standby" } }
                                            td { @if status == "waiting" { "never" } @else { (when(a["last_seen"].as_i64().unwrap_or(0))) } }
                                            @for dir in ["ad_to_cloud", "cloud_to_ad"] { (direction_cell(a, dir)) }
                                            (audit_cell(a))
                                            td {
                                                form method="post" action={ "/directories/" (id) "/agents/" (a["id"].as_str().unwrap_or("")) "/revoke" } {
                                                    (csrf_input(s))
                                                    button.danger type="submit" data-confirm="Revoke this agent? It stops syncing at once." { "Revoke" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } @else if tab == "activity" {
                    h2 { "Sync errors" }
                    @if v.sync_errors.is_empty() {
                        p { "None: every change reached the other side." }
                    } @else {
                        p {
                            (v.sync_error_total) " " (if v.sync_error_total == 1 { "change" } else { "changes" })
                            " the other side refused. Everything else keeps flowing; fix the cause, then retry. A retry that succeeds clears the error."
                        }
                        form.inline method="post" action={ "/directories/" (id) "/sync-errors/all/retry" } {
                            (csrf_input(s))
                            button type="submit" { "Retry all" }
                        }
                        table.sync-errors {
                            thead { tr { th { "Object" } th { "Direction" } th { "What was refused" } th { "What to do" } th { "Tries" } th { "Last" } th {} } }
                            tbody {
                                @for e in &v.sync_errors {
                                    tr.sync-error {
                                        td { (e["object_name"].as_str().unwrap_or("")) }
                                        td { (if e["direction"] == "cloud_to_ad" { "cloud → AD" } else { "AD → cloud" }) }
                                        td { (e["operation"].as_str().unwrap_or("")) ": " code { (e["code"].as_str().unwrap_or("")) } br; span.small { (e["message"].as_str().unwrap_or("")) } }
                                        td { (e["advice"].as_str().unwrap_or("")) }
                                        td { (e["attempts"]) }
                                        td { (when(e["last_seen"].as_i64().unwrap_or(0))) }
                                        td {
                                            @for (action, label) in [("retry", "Retry"), ("dismiss", "Dismiss")] {
                                                form.inline method="post" action={ "/directories/" (id) "/sync-errors/" (e["id"].as_str().unwrap_or("")) "/" (action) } {
                                                    (csrf_input(s))
                                                    button type="submit" { (label) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    h2 { "Deletes waiting for approval" }
                    @if v.quarantine.iter().all(|q| q["status"] != "pending") && v.held.is_empty() {
                        p { "None." }
                    }
                    @if !v.held.is_empty() {
                        div.card id="held-cloud-deletes" {
                            p { (v.held.len()) " deletes made in the cloud, held back from AD (more than the domain's delete threshold in 10 minutes): "
                                @for (i, h) in v.held.iter().take(20).enumerate() { @if i > 0 { ", " } (h["name"].as_str().unwrap_or("")) }
                                @if v.held.len() > 20 { ", …" } "." }
                            p.hint { "Approve: AD's accounts are disabled or deleted, per the domain's policy. Reject: AD keeps them, and they come back to the cloud as new objects at the next comparison of both sides." }
                            @for decision in ["approve", "reject"] {
                                form.inline method="post" action={ "/directories/" (id) "/held-deletes/" (decision) } {
                                    (csrf_input(s))
                                    button type="submit" class=(if decision == "approve" { "danger" } else { "" }) { (if decision == "approve" { "Carry them out in AD" } else { "Keep them in AD" }) }
                                }
                            }
                        }
                    }
                    @for item in v.quarantine.iter().filter(|q| q["status"] == "pending") {
                        div.card {
                            p { (item["deletes"]) " deletes from AD, held " (when(item["created_at"].as_i64().unwrap_or(0))) " (more than the domain's delete threshold)." }
                            @for decision in ["approve", "reject"] {
                                form.inline method="post" action={ "/directories/" (id) "/quarantine/" (item["id"]) "/" (decision) } {
                                    (csrf_input(s))
                                    button type="submit" class=(if decision == "approve" { "danger" } else { "" }) { (if decision == "approve" { "Approve the deletes" } else { "Reject" }) }
                                }
                            }
                        }
                    }
                    h2 { "Recent changes" }
                    table {
                        thead { tr { th { "When" } th { "What" } th { "On" } th { "By" } } }
                        tbody {
                            @for e in &v.activity {
                                tr { td { (when(e["at"].as_i64().unwrap_or(0))) } td { (e["action"].as_str().unwrap_or("")) } td { (object_link(e["target"].as_str().unwrap_or(""), &v.names)) } td { (e["actor"].as_str().unwrap_or("")) } }
                            }
                        }
                    }
                } @else {
                    (error_box(msg))
                    form.details method="post" action={ "/directories/" (id) } {
                        (csrf_input(s))
                        dl {
                            dt { "Root DN" } dd { code { (d["root_dn"].as_str().unwrap_or("")) } }
                        }
                        label { "NetBIOS name" input name="netbios_name" maxlength="15" required value=(d["netbios_name"].as_str().unwrap_or("")); }
                        label { "Where users created in the cloud go (OU)" input name="user_ou" maxlength="1000" required value=(d["user_ou"].as_str().unwrap_or("")); }
                        label { "When both sides changed the same attribute"
                            (select("authority", p["authority"].as_str().unwrap_or(""), &[("latest", "the latest change wins"), ("ad", "AD wins"), ("cloud", "the cloud wins")])) }
                        label { "A user deleted in AD"
                            (select("ad_delete_action", p["ad_delete_action"].as_str().unwrap_or(""), &[("remove", "is deleted in the cloud"), ("unlink", "stays in the cloud, unlinked")])) }
                        label { "A user deleted in the cloud"
                            (select("cloud_delete_action", p["cloud_delete_action"].as_str().unwrap_or(""), &[("disable", "is disabled in AD"), ("delete", "is deleted in AD")])) }
                        label { "Hold more deletes than this at once for approval" input name="delete_threshold" type="number" min="0" max="1000000" required value=(p["delete_threshold"]); }
                        label.check { input type="checkbox" name="match_existing_users" value="on" checked[p["match_existing_users"] == true]; " Link existing cloud users and groups with the same name" }
                        h2 { "What syncs" }
                        p.hint { "Each user and group belongs to one domain: the one it came from, or the one it was placed in. Only that domain's agent writes it; a same-named object in another domain is listed as a conflict, never merged. AD's built-in and privileged accounts, members of protected groups and the agents' service accounts are never synced nor written." }
                        label.check { input type="checkbox" name="default_for_cloud_objects" value="on" checked[d["default_for_cloud_objects"] == true]; " Users and groups made in the cloud go to this domain" }
                        label { "Sync only these containers (one DN a line; empty: the whole domain)"
                            textarea name="scope_include" rows="3" maxlength="20000" { (lines(&p["scope"]["include"])) } }
                        label { "Never sync these containers (one DN a line)"
                            textarea name="scope_exclude" rows="3" maxlength="20000" { (lines(&p["scope"]["exclude"])) } }
                        label { "Only members of these AD groups, nested groups included (one group DN a line; empty: no group limit). Objects in the OU where cloud users go always sync."
                            textarea name="scope_groups" rows="2" maxlength="20000" { (lines(&p["scope"]["groups"])) } }
                        label { "Cloud groups bound to this domain: they and their members go to it (one group name a line)"
                            textarea name="scope_cloud_groups" rows="2" maxlength="20000" { (bound_names(&p["scope"]["cloud_groups"], &v.names)) } }
                        p.hint { "A new scope reads the domain again. Objects it leaves out are handled as deleted in AD (the policy above and the delete threshold apply). Preview says beforehand what would come in and go out on each side, without saving." }
                        @if let Some(pv) = &v.preview { (super::scope::preview_box(pv)) }
                        button.primary type="submit" { "Save" }
                        " "
                        button type="submit" id="preview-scope" formaction={ "/directories/" (id) "/scope-preview" } { "Preview the scope" }
                    }
                    form.inline method="post" action={ "/directories/" (id) "/resync" } {
                        (csrf_input(s))
                        button type="submit" id="resync" data-confirm="Read the whole domain again? Nothing is duplicated; a big domain takes a while." { "Resync this domain" }
                        " "
                        button type="submit" id="audit-now" formaction={ "/directories/" (id) "/audit" } { "Compare both sides now" }
                    }
                    p.hint { "The agent compares both sides whole every 15 minutes (every object, attribute and membership) and repairs what differs; each repair is in the audit log. Its last result is on the Domain Agents tab." }
                }
            },
        ),
    )
}

pub(super) async fn domain(State(state): St, s: Session, Path(id): Path<String>, Query(q): Q) -> Response {
    let tab = q.get("tab").map_or("details", String::as_str);
    match load_domain(&state, &s, &id).await {
        Ok(v) => domain_page(&s, &v, tab, None, None, &q),
        Err(r) => r,
    }
}

pub(super) async fn save_domain(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[&id]) {
        return r;
    }
    let back = match field(&form, "tab") {
        t @ ("agents" | "activity") => t,
        _ => "details",
    };
    // The Save of the other tabs sends no settings: they stay as they are.
    let body = if !form.contains_key("delete_threshold") {
        Ok(json!({}))
    } else {
        settings_body(&state, &s, &form).await
    };
    let msg = match body {
        Err(m) => m,
        Ok(b) => {
            let a = s
                .api(&state, Method::PATCH, &format!("/api/v1/domains/{id}"), Some(b))
                .await;
            if a.ok() {
                return redirect(&format!("/directories/{id}?tab={back}&done=saved"));
            }
            if a.status == StatusCode::UNAUTHORIZED {
                return redirect("/signin");
            }
            a.message()
        }
    };
    match load_domain(&state, &s, &id).await {
        Ok(v) => domain_page(&s, &v, "details", Some(&msg), None, &HashMap::new()),
        Err(r) => r,
    }
}

/// The agent's last comparison of both sides whole: when, how many
/// objects, and what it found different and repaired.
fn audit_cell(agent: &Value) -> Markup {
    let r = &agent["audit"];
    let Some(at) = r["at"].as_i64() else {
        return html! { td.audit { "not yet" } };
    };
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let drift = n("differed") + n("resent");
    html! {
        td.audit data-differed=(n("differed")) data-repaired=(n("repaired")) data-resent=(n("resent")) {
            @if drift == 0 {
                span class="dot green" aria-hidden="true" {} " equal"
            } @else {
                span class="dot yellow" aria-hidden="true" {} " "
                (n("differed")) " different in AD, " (n("repaired")) " repaired; "
                (n("resent")) " cloud changes sent again"
            }
            span.small { " · " (n("compared")) " objects (" (when(at)) ")" }
        }
    }
}

/// One direction's health in the Domain Agents table: green when it works,
/// yellow while it retries, red once it has failed for a minute (until it
/// succeeds), with the error and since when.
fn direction_cell(agent: &Value, direction: &str) -> Markup {
    let h = agent["health"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["direction"] == direction);
    let Some(h) = h else {
        return html! { td.health data-direction=(direction) { "—" } };
    };
    let status = h["status"].as_str().unwrap_or("ok");
    let color = match status {
        "ok" => "green",
        "retrying" => "yellow",
        _ => "red",
    };
    html! {
        td.health data-direction=(direction) data-status=(status) {
            span class={ "dot " (color) } aria-hidden="true" {} " "
            @if status == "ok" {
                "ok" @if let Some(t) = h["last_success_at"].as_i64() { span.small { " (" (when(t)) ")" } }
                @if let Some(n) = h["backlog"].as_i64().filter(|n| *n > 0) { span.small { " · up to " (n) " changes waiting" } }
            } @else {
                (if status == "failing" { "failing since " } else { "retrying since " })
                (when(h["failing_since"].as_i64().unwrap_or(0))) ": " (h["error"].as_str().unwrap_or(""))
            }
        }
    }
}

/// The Details form as the API's domain PATCH body, bound cloud groups
/// named by name turned into ids; or what is wrong with it.
pub(super) async fn settings_body(
    state: &AppState,
    s: &Session,
    form: &HashMap<String, String>,
) -> Result<Value, String> {
    let threshold = field(form, "delete_threshold");
    let t = threshold
        .parse::<u32>()
        .map_err(|_| format!("The delete threshold must be a whole number from 0 up, not {threshold:?}."))?;
    let bound = super::scope::group_ids(state, s, &dn_lines(field(form, "scope_cloud_groups"))).await?;
    Ok(json!({
        "netbios_name": field(form, "netbios_name"),
        "user_ou": field(form, "user_ou"),
        "policies": {
            "authority": field(form, "authority"),
            "ad_delete_action": field(form, "ad_delete_action"),
            "cloud_delete_action": field(form, "cloud_delete_action"),
            "delete_threshold": t,
            "match_existing_users": field(form, "match_existing_users") == "on",
            "scope": {
                "include": dn_lines(field(form, "scope_include")),
                "exclude": dn_lines(field(form, "scope_exclude")),
                "groups": dn_lines(field(form, "scope_groups")),
                "cloud_groups": bound,
            },
        },
        "default_for_cloud_objects": field(form, "default_for_cloud_objects") == "on",
    }))
}

/// The names of bound cloud groups, one a line (an id when the group is gone).
fn bound_names(ids: &Value, names: &ObjectNames) -> String {
    ids.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|id| {
            names
                .get(&format!("group:{id}"))
                .cloned()
                .unwrap_or_else(|| id.to_owned())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON list of strings as text, one a line.
fn lines(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// One DN a line, blank lines dropped.
pub(super) fn dn_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The install dialog's steps: the agent for Windows (the MSI) and for
/// Linux (the binary), each with its checksum and the commands to run as
/// printed. The download for the browser's platform starts by itself
/// (console.js clicks the `data-autodownload` link); the link is the fallback.
fn install_steps(k: &Value) -> Markup {
    let downloads = k["downloads"].as_array().cloned().unwrap_or_default();
    let offer = |platform: &str| downloads.iter().find(|d| d["platform"] == platform).cloned();
    let link = |d: &Value, platform: &str, default_file: &str| {
        let url = d["url"].as_str().unwrap_or("");
        // Only a file the server has starts by itself (else the browser shows a failed download).
        let auto = d["sha256"].is_string().then_some(platform);
        html! { a href=(url) download data-autodownload=[auto] { (d["file"].as_str().unwrap_or(default_file)) } }
    };
    let checksum = |d: &Value| {
        html! {
            br; span.small { "SHA-256: " code.sha256 { (d["sha256"].as_str().unwrap_or("")) }
                " (also at " a href={ (d["url"].as_str().unwrap_or("")) ".sha256" } { (d["file"].as_str().unwrap_or("")) ".sha256" } ")" }
        }
    };
    html! {
        @if let Some(d) = offer("windows") {
            h3 { "On the Windows domain controller" }
            ol.windows {
                li { "Download " (link(&d, "windows", "ferry-agent.msi")) " (Windows, x64; it starts by itself on Windows)." (checksum(&d)) }
                li { "Check it in PowerShell, in the folder it downloaded to (it prints " code { "True" } "):"
                    pre.commands.windows { code { (windows_commands(&d)) } } }
                li { "Open it and click through the installer; the setup wizard opens at the end (later: " code { "ferry-agent install" } " in an administrator prompt)." }
                li { "The wizard asks for the service account (see “Prepare the service account” below) and this Connect Key." }
            }
        }
        @if let Some(d) = offer("linux").or_else(|| (downloads.is_empty()).then(|| json!({"url": k["download_url"], "file": "ferry-agent"}))) {
            h3 { "On a Linux host next to the domain controller" }
            ol.linux {
                li { "Download " (link(&d, "linux", "ferry-agent")) " (Linux, x86-64; it starts by itself on other systems)."
                    @if d["sha256"].is_string() { (checksum(&d)) } }
                li { "In the folder it downloaded to, check it, make it executable and start the setup:"
                    pre.commands.linux { code { (linux_commands(&d)) } } }
                li { "The wizard asks for the service account (see “Prepare the service account” below) and this Connect Key." }
            }
        }
    }
}

/// "Prepare the service account" (guide steps 6–14): the scripts for this
/// domain, the same `ferry-agent prepare` prints.
fn prepare_account(d: &Value) -> Markup {
    let plan = ferry_proto::delegation::ServiceAccountPlan::for_domain(
        d["root_dn"].as_str().unwrap_or(""),
        d["netbios_name"].as_str().unwrap_or(""),
    );
    html! {
        h3 { "Prepare the service account" }
        p.small { "The agent signs in as an ordinary account, " code { (plan.trustee()) } ", delegated the six tasks on " code { (plan.scope) } ". Run one of these on the domain controller; the setup's checks then pass with nothing else to do." }
        details.prepare.windows {
            summary { "Windows: PowerShell (as an administrator)" }
            pre.script { code { (plan.powershell()) } }
        }
        details.prepare.samba {
            summary { "Samba: samba-tool (as root)" }
            pre.script { code { (plan.samba()) } }
        }
    }
}

/// PowerShell that checks the MSI against its SHA-256 (`-eq` ignores case).
fn windows_commands(d: &Value) -> String {
    let file = d["file"].as_str().unwrap_or("ferry-agent.msi");
    format!(
        "(Get-FileHash .\\{file}).Hash -eq '{}'",
        d["sha256"].as_str().unwrap_or("")
    )
}

/// The shell lines for the Linux binary: checksum, executable bit, install.
fn linux_commands(d: &Value) -> String {
    let file = d["file"].as_str().unwrap_or("ferry-agent");
    let mut lines = Vec::new();
    if let Some(sum) = d["sha256"].as_str() {
        lines.push(format!("echo '{sum}  {file}' | sha256sum -c"));
    }
    lines.push(format!("chmod +x {file}"));
    lines.push(format!("sudo ./{file} install"));
    lines.join("\n")
}

pub(super) async fn install_agent(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[&id]) {
        return r;
    }
    let a = s
        .api(
            &state,
            Method::POST,
            &format!("/api/v1/domains/{id}/connect-keys"),
            None,
        )
        .await;
    if !a.ok() {
        return page_error(a.status, &a.message());
    }
    match load_domain(&state, &s, &id).await {
        Ok(v) => {
            let mut r = domain_page(&s, &v, "agents", None, Some(&a.body), &HashMap::new());
            // The key is shown once: never cache this page.
            r.headers_mut()
                .insert("cache-control", axum::http::HeaderValue::from_static("no-store"));
            r
        }
        Err(r) => r,
    }
}

pub(super) async fn revoke_agent(
    State(state): St,
    s: Session,
    Path((id, agent)): Path<(String, String)>,
    Form(form): F,
) -> Response {
    if let Err(r) = guard(&s, &form, &[&id, &agent]) {
        return r;
    }
    let a = s
        .api(
            &state,
            Method::DELETE,
            &format!("/api/v1/domains/{id}/agents/{agent}"),
            None,
        )
        .await;
    if !a.ok() {
        return page_error(a.status, &a.message());
    }
    redirect(&format!("/directories/{id}?tab=agents&done=revoked"))
}

pub(super) async fn decide_quarantine(
    State(state): St,
    s: Session,
    Path((id, qid, decision)): Path<(String, String, String)>,
    Form(form): F,
) -> Response {
    if let Err(r) = guard(&s, &form, &[&id, &qid]) {
        return r;
    }
    if decision != "approve" && decision != "reject" {
        return page_error(StatusCode::NOT_FOUND, "unknown decision");
    }
    let a = s
        .api(
            &state,
            Method::POST,
            &format!("/api/v1/domains/{id}/quarantine/{qid}/{decision}"),
            None,
        )
        .await;
    if !a.ok() {
        return page_error(a.status, &a.message());
    }
    redirect(&format!("/directories/{id}?tab=activity&done=decided"))
}

/// Approve or reject the cloud deletes held back from AD.
pub(super) async fn decide_held_deletes(
    State(state): St,
    s: Session,
    Path((id, decision)): Path<(String, String)>,
    Form(form): F,
) -> Response {
    if decision != "approve" && decision != "reject" {
        return page_error(StatusCode::NOT_FOUND, "unknown decision");
    }
    let what = format!("held-deletes/{decision}");
    domain_action(&state, &s, &id, &form, &what).await
}

/// "Resync this domain".
pub(super) async fn resync_domain(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    domain_action(&state, &s, &id, &form, "resync").await
}

/// "Compare both sides now".
pub(super) async fn audit_domain(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    domain_action(&state, &s, &id, &form, "audit").await
}

async fn domain_action(
    state: &AppState,
    s: &Session,
    id: &str,
    form: &HashMap<String, String>,
    what: &str,
) -> Response {
    if let Err(r) = guard(s, form, &[id]) {
        return r;
    }
    let a = s
        .api(state, Method::POST, &format!("/api/v1/domains/{id}/{what}"), None)
        .await;
    if !a.ok() {
        return page_error(a.status, &a.message());
    }
    match what.split_once('/') {
        Some((_, _decided)) => redirect(&format!("/directories/{id}?tab=activity&done=decided")),
        None => redirect(&format!("/directories/{id}?done={what}")),
    }
}

/// Retry or dismiss one sync error, or (`eid` = `all`) retry them all.
pub(super) async fn sync_error_action(
    State(state): St,
    s: Session,
    Path((id, eid, action)): Path<(String, String, String)>,
    Form(form): F,
) -> Response {
    let ids: Vec<&str> = if eid == "all" {
        vec![id.as_str()]
    } else {
        vec![id.as_str(), eid.as_str()]
    };
    if let Err(r) = guard(&s, &form, &ids) {
        return r;
    }
    let (method, path) = match (eid.as_str(), action.as_str()) {
        ("all", "retry") => (Method::POST, format!("/api/v1/domains/{id}/sync-errors/retry")),
        (_, "retry") => (Method::POST, format!("/api/v1/domains/{id}/sync-errors/{eid}/retry")),
        (_, "dismiss") if eid != "all" => (Method::DELETE, format!("/api/v1/domains/{id}/sync-errors/{eid}")),
        _ => return page_error(StatusCode::NOT_FOUND, "unknown action"),
    };
    let a = s.api(&state, method, &path, None).await;
    if !a.ok() {
        return page_error(a.status, &a.message());
    }
    let done = if action == "retry" { "retried" } else { "dismissed" };
    redirect(&format!("/directories/{id}?tab=activity&done={done}"))
}

// ---- users ------------------------------------------------------------------

const PAGE: usize = 50;

fn pager(base: &str, q: &str, start: usize, total: usize) -> Markup {
    let prev = start.saturating_sub(PAGE).max(1);
    html! {
        nav.pager aria-label="pages" {
            @if start > 1 { a href={ (base) "?q=" (enc(q)) "&start=" (prev) } { "‹ Previous" } }
            span { (start.min(total)) "–" ((start + PAGE - 1).min(total)) " of " (total) }
            @if start + PAGE <= total { a href={ (base) "?q=" (enc(q)) "&start=" (start + PAGE) } { "Next ›" } }
        }
    }
}

fn list_query(resource: &str, attr: &str, q: &HashMap<String, String>) -> (String, String, usize) {
    let search = q.get("q").map_or("", |s| s.trim()).to_owned();
    let start = q.get("start").and_then(|s| s.parse::<usize>().ok()).unwrap_or(1).max(1);
    let mut uri = format!("/scim/v2/{resource}?startIndex={start}&count={PAGE}");
    if !search.is_empty() {
        let v = search.replace('\\', "\\\\").replace('"', "\\\"");
        uri.push_str(&format!("&filter={}", enc(&format!("{attr} co \"{v}\""))));
    }
    (uri, search, start)
}

fn user_form_fields(u: &Value, form: Option<&HashMap<String, String>>) -> Markup {
    let get = |name: &str, from_user: &str| -> String {
        match form {
            Some(f) => field(f, name).to_owned(),
            None => from_user.to_owned(),
        }
    };
    html! {
        label { "First name" input name="given_name" maxlength="256" value=(get("given_name", u["name"]["givenName"].as_str().unwrap_or(""))); }
        label { "Last name" input name="family_name" maxlength="256" value=(get("family_name", u["name"]["familyName"].as_str().unwrap_or(""))); }
        label { "E-mail" input name="email" type="email" maxlength="254" value=(get("email", u["emails"][0]["value"].as_str().unwrap_or(""))); }
        label { "Title" input name="title" maxlength="256" value=(get("title", u["title"].as_str().unwrap_or(""))); }
    }
}

fn users_page(
    s: &Session,
    list: &Value,
    search: &str,
    start: usize,
    msg: Option<&str>,
    form: &HashMap<String, String>,
    q: &HashMap<String, String>,
) -> Response {
    let total = list["totalResults"].as_u64().unwrap_or(0) as usize;
    page(
        form_status(msg),
        layout(
            "Users",
            "Users",
            Some(&s.csrf),
            html! {
                h1 { "Users" }
                (notice(q))
                form.search method="get" action="/users" role="search" {
                    label { "Search by username" input type="search" name="q" value=(search) maxlength="256"; }
                    button type="submit" { "Search" }
                }
                table {
                    thead { tr { th { "Username" } th { "Name" } th { "E-mail" } th { "Status" } } }
                    tbody {
                        @for u in list["Resources"].as_array().into_iter().flatten() {
                            tr {
                                td { a href={ "/users/" (u["id"].as_str().unwrap_or("")) } { (u["userName"].as_str().unwrap_or("")) } }
                                td { (u["name"]["formatted"].as_str().or(u["displayName"].as_str()).unwrap_or("")) }
                                td { (u["emails"][0]["value"].as_str().unwrap_or("")) }
                                td { @if u["active"] == false { "suspended" } @else { "active" } }
                            }
                        }
                    }
                }
                (pager("/users", search, start, total))
                h2 id="new" { "New user" }
                (error_box(msg))
                form.grid id="new-user" method="post" action="/users" {
                    (csrf_input(s))
                    label { "Username" input name="username" required maxlength="256" value=(field(form, "username")); }
                    (user_form_fields(&Value::Null, Some(form)))
                    label { "Password (optional; synced to AD)" input name="password" type="password" maxlength="256" autocomplete="new-password"; }
                    button.primary type="submit" { "Create user" }
                }
            },
        ),
    )
}

pub(super) async fn users(State(state): St, s: Session, Query(q): Q) -> Response {
    let (uri, search, start) = list_query("Users", "userName", &q);
    match s.get(&state, &uri).await {
        Ok(list) => users_page(&s, &list, &search, start, None, &HashMap::new(), &q),
        Err(r) => r,
    }
}

fn user_doc(form: &HashMap<String, String>) -> Value {
    let mut doc = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "name": {"givenName": field(form, "given_name"), "familyName": field(form, "family_name")},
    });
    if !field(form, "email").is_empty() {
        doc["emails"] = json!([{"value": field(form, "email"), "type": "work", "primary": true}]);
    }
    if !field(form, "title").is_empty() {
        doc["title"] = json!(field(form, "title"));
    }
    doc
}

/// What the console checks before the API: an e-mail must look like one
/// (the API stores any string the directory may hold).
fn user_form_problem(form: &HashMap<String, String>) -> Option<String> {
    let email = field(form, "email");
    if !email.is_empty() {
        let ok = email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
            && !email.contains(char::is_whitespace);
        if !ok {
            return Some(format!("{email:?} is not a valid e-mail address."));
        }
    }
    None
}

pub(super) async fn create_user(State(state): St, s: Session, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[]) {
        return r;
    }
    let mut doc = user_doc(&form);
    doc["userName"] = json!(field(&form, "username"));
    if let Some(p) = form.get("password").filter(|p| !p.is_empty()) {
        doc["password"] = json!(p);
    }
    let msg = if field(&form, "username").is_empty() {
        "Enter a username.".to_owned()
    } else if let Some(m) = user_form_problem(&form) {
        m
    } else {
        let a = s.api(&state, Method::POST, "/scim/v2/Users", Some(doc)).await;
        if a.ok() {
            return redirect(&format!("/users/{}?done=created", a.body["id"].as_str().unwrap_or("")));
        }
        a.message()
    };
    let (uri, search, start) = list_query("Users", "userName", &HashMap::new());
    match s.get(&state, &uri).await {
        Ok(list) => users_page(&s, &list, &search, start, Some(&msg), &form, &HashMap::new()),
        Err(r) => r,
    }
}

fn source(links: &Value) -> Markup {
    html! {
        @match links["links"].as_array().filter(|l| !l.is_empty()) {
            None => p.source { "Source: the cloud (not linked to AD)." },
            Some(ls) => {
                @for l in ls {
                    p.source { "Source: AD domain " strong { (l["domain"].as_str().unwrap_or("")) } ", " code { (l["dn"].as_str().unwrap_or("")) } "; last synced " (when(l["synced_at"].as_i64().unwrap_or(0))) "." }
                }
            }
        }
    }
}

fn user_page(
    s: &Session,
    u: &Value,
    links: &Value,
    msg: Option<&str>,
    form: Option<&HashMap<String, String>>,
    q: &HashMap<String, String>,
) -> Response {
    let id = u["id"].as_str().unwrap_or_default();
    let active = u["active"] != false;
    page(
        form_status(msg),
        layout(
            u["userName"].as_str().unwrap_or("User"),
            "Users",
            Some(&s.csrf),
            html! {
                p.crumbs { a href="/users" { "Users" } " › " (u["userName"].as_str().unwrap_or("")) }
                h1 { (u["userName"].as_str().unwrap_or("")) @if !active { " " span.badge { "suspended" } } }
                (notice(q))
                (source(links))
                (error_box(msg))
                form.grid method="post" action={ "/users/" (id) } {
                    (csrf_input(s))
                    (user_form_fields(u, form))
                    label { "Reset password (leave empty to keep it)" input name="password" type="password" maxlength="256" autocomplete="new-password"; }
                    label.check { input type="checkbox" name="active" value="on" checked[active]; " Active (untick to suspend)" }
                    button.primary type="submit" { "Save" }
                }
                h2 { "Groups" }
                ul {
                    @for g in u["groups"].as_array().into_iter().flatten() {
                        li { a href={ "/groups/" (g["value"].as_str().unwrap_or("")) } { (g["display"].as_str().unwrap_or("")) } }
                    }
                }
                form method="post" action={ "/users/" (id) "/delete" } {
                    (csrf_input(s))
                    button.danger type="submit" data-confirm="Delete this user? In AD it is disabled or deleted, as the domain's policy says." { "Delete user" }
                }
            },
        ),
    )
}

async fn object_links(state: &AppState, s: &Session, id: &str) -> Value {
    let a = s
        .api(state, Method::GET, &format!("/api/v1/objects/{id}/links"), None)
        .await;
    if a.ok() {
        a.body
    } else {
        Value::Null
    }
}

pub(super) async fn user(State(state): St, s: Session, Path(id): Path<String>, Query(q): Q) -> Response {
    if let Err(r) = id_ok(&id) {
        return r;
    }
    let u = match s.get(&state, &format!("/scim/v2/Users/{id}")).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let links = object_links(&state, &s, &id).await;
    user_page(&s, &u, &links, None, None, &q)
}

pub(super) async fn update_user(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[&id]) {
        return r;
    }
    let msg = match user_form_problem(&form) {
        Some(m) => m,
        None => {
            let doc = user_doc(&form);
            let mut ops = vec![
                json!({"op": "replace", "path": "name.givenName", "value": doc["name"]["givenName"]}),
                json!({"op": "replace", "path": "name.familyName", "value": doc["name"]["familyName"]}),
                json!({"op": "replace", "path": "active", "value": field(&form, "active") == "on"}),
            ];
            for (path, key) in [("title", "title"), ("emails", "emails")] {
                ops.push(if doc[key].is_null() {
                    json!({"op": "remove", "path": path})
                } else {
                    json!({"op": "replace", "path": path, "value": doc[key]})
                });
            }
            if let Some(p) = form.get("password").filter(|p| !p.is_empty()) {
                ops.push(json!({"op": "replace", "path": "password", "value": p}));
            }
            match patch_object(&state, &s, "Users", &id, ops).await {
                Ok(done) => return done,
                Err(m) => m,
            }
        }
    };
    let u = match s.get(&state, &format!("/scim/v2/Users/{id}")).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let links = object_links(&state, &s, &id).await;
    user_page(&s, &u, &links, Some(&msg), Some(&form), &HashMap::new())
}

pub(super) async fn delete_user(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    delete_object(&state, &s, &form, "Users", &id).await
}

/// A SCIM PATCH of a user or group: on success the redirect to its page,
/// else the API's message for the form.
async fn patch_object(
    state: &AppState,
    s: &Session,
    resource: &str,
    id: &str,
    ops: Vec<Value>,
) -> Result<Response, String> {
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let a = s
        .api(state, Method::PATCH, &format!("/scim/v2/{resource}/{id}"), Some(body))
        .await;
    if a.ok() {
        Ok(redirect(&format!("/{}/{id}?done=saved", resource.to_lowercase())))
    } else {
        Err(a.message())
    }
}

/// Deletes a SCIM user or group (after the form's checks) and goes back to
/// its list.
async fn delete_object(
    state: &AppState,
    s: &Session,
    form: &HashMap<String, String>,
    resource: &str,
    id: &str,
) -> Response {
    if let Err(r) = guard(s, form, &[id]) {
        return r;
    }
    let a = s
        .api(state, Method::DELETE, &format!("/scim/v2/{resource}/{id}"), None)
        .await;
    if !a.ok() {
        return page_error(a.status, &a.message());
    }
    redirect(&format!("/{}?done=deleted", resource.to_lowercase()))
}

// ---- groups -----------------------------------------------------------------

fn groups_page(
    s: &Session,
    list: &Value,
    search: &str,
    start: usize,
    msg: Option<&str>,
    form: &HashMap<String, String>,
    q: &HashMap<String, String>,
) -> Response {
    let total = list["totalResults"].as_u64().unwrap_or(0) as usize;
    page(
        form_status(msg),
        layout(
            "Groups",
            "Groups",
            Some(&s.csrf),
            html! {
                h1 { "Groups" }
                (notice(q))
                form.search method="get" action="/groups" role="search" {
                    label { "Search by name" input type="search" name="q" value=(search) maxlength="256"; }
                    button type="submit" { "Search" }
                }
                table {
                    thead { tr { th { "Name" } th { "Members" } } }
                    tbody {
                        @for g in list["Resources"].as_array().into_iter().flatten() {
                            tr {
                                td { a href={ "/groups/" (g["id"].as_str().unwrap_or("")) } { (g["displayName"].as_str().unwrap_or("")) } }
                                td { (g["members"].as_array().map_or(0, Vec::len)) }
                            }
                        }
                    }
                }
                (pager("/groups", search, start, total))
                h2 { "New group" }
                (error_box(msg))
                form.inline id="new-group" method="post" action="/groups" {
                    (csrf_input(s))
                    label { "Name" input name="name" required maxlength="256" value=(field(form, "name")); }
                    button.primary type="submit" { "Create group" }
                }
            },
        ),
    )
}

pub(super) async fn groups(State(state): St, s: Session, Query(q): Q) -> Response {
    let (uri, search, start) = list_query("Groups", "displayName", &q);
    match s.get(&state, &uri).await {
        Ok(list) => groups_page(&s, &list, &search, start, None, &HashMap::new(), &q),
        Err(r) => r,
    }
}

pub(super) async fn create_group(State(state): St, s: Session, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[]) {
        return r;
    }
    let msg = if field(&form, "name").is_empty() {
        "Enter the group's name.".to_owned()
    } else {
        let doc =
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": field(&form, "name")});
        let a = s.api(&state, Method::POST, "/scim/v2/Groups", Some(doc)).await;
        if a.ok() {
            return redirect(&format!("/groups/{}?done=created", a.body["id"].as_str().unwrap_or("")));
        }
        a.message()
    };
    let (uri, search, start) = list_query("Groups", "displayName", &HashMap::new());
    match s.get(&state, &uri).await {
        Ok(list) => groups_page(&s, &list, &search, start, Some(&msg), &form, &HashMap::new()),
        Err(r) => r,
    }
}

fn group_page(
    s: &Session,
    g: &Value,
    names: &ObjectNames,
    links: &Value,
    msg: Option<&str>,
    q: &HashMap<String, String>,
) -> Response {
    let id = g["id"].as_str().unwrap_or_default();
    page(
        form_status(msg),
        layout(
            g["displayName"].as_str().unwrap_or("Group"),
            "Groups",
            Some(&s.csrf),
            html! {
                p.crumbs { a href="/groups" { "Groups" } " › " (g["displayName"].as_str().unwrap_or("")) }
                h1 { (g["displayName"].as_str().unwrap_or("")) }
                (notice(q))
                (source(links))
                (error_box(msg))
                h2 { "Members" }
                table {
                    tbody {
                        @for m in g["members"].as_array().into_iter().flatten() {
                            tr.member {
                                td { (object_link(&member_target(m), names)) }
                                td { (m["type"].as_str().unwrap_or("User")) }
                                td {
                                    form method="post" action={ "/groups/" (id) } {
                                        (csrf_input(s))
                                        input type="hidden" name="remove" value=(m["value"].as_str().unwrap_or(""));
                                        button type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
                form.inline id="add-member" method="post" action={ "/groups/" (id) } {
                    (csrf_input(s))
                    label { "Add a member (username, or group name)" input name="add" required maxlength="256"; }
                    button.primary type="submit" { "Add member" }
                }
                form method="post" action={ "/groups/" (id) "/delete" } {
                    (csrf_input(s))
                    button.danger type="submit" data-confirm="Delete this group?" { "Delete group" }
                }
            },
        ),
    )
}

pub(super) async fn group(State(state): St, s: Session, Path(id): Path<String>, Query(q): Q) -> Response {
    if let Err(r) = id_ok(&id) {
        return r;
    }
    let g = match s.get(&state, &format!("/scim/v2/Groups/{id}")).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let links = object_links(&state, &s, &id).await;
    let names = member_names(&state, &s, &g).await;
    group_page(&s, &g, &names, &links, None, &q)
}

/// A member as the audit log names objects: `user:ID` or `group:ID`.
fn member_target(m: &Value) -> String {
    let kind = if m["type"] == "Group" { "group" } else { "user" };
    format!("{kind}:{}", m["value"].as_str().unwrap_or(""))
}

/// The names of a group's members (SCIM members carry only ids). A very
/// big group shows the first thousand by name, the rest by id.
async fn member_names(state: &AppState, s: &Session, g: &Value) -> ObjectNames {
    let targets: Vec<String> = g["members"]
        .as_array()
        .into_iter()
        .flatten()
        .take(1000)
        .map(member_target)
        .collect();
    object_names(state, s, targets.iter().map(String::as_str)).await
}

/// The id of the user (by username) or else group (by name) called `name`.
async fn find_member(state: &AppState, s: &Session, name: &str) -> Option<String> {
    let v = name.replace('\\', "\\\\").replace('"', "\\\"");
    for (resource, attr) in [("Users", "userName"), ("Groups", "displayName")] {
        let uri = format!("/scim/v2/{resource}?filter={}", enc(&format!("{attr} eq \"{v}\"")));
        let a = s.api(state, Method::GET, &uri, None).await;
        if let Some(id) = a.body["Resources"][0]["id"].as_str() {
            return Some(id.to_owned());
        }
    }
    None
}

pub(super) async fn update_group(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    if let Err(r) = guard(&s, &form, &[&id]) {
        return r;
    }
    let op = if !field(&form, "remove").is_empty() {
        let m = field(&form, "remove");
        if let Err(r) = id_ok(m) {
            return r;
        }
        Ok(json!({"op": "remove", "path": format!("members[value eq \"{m}\"]")}))
    } else {
        let name = field(&form, "add");
        match find_member(&state, &s, name).await {
            _ if name.is_empty() => Err("Enter the username or group name to add.".to_owned()),
            Some(m) => Ok(json!({"op": "add", "path": "members", "value": [{"value": m}]})),
            None => Err(format!("No user or group is called {name:?}.")),
        }
    };
    let msg = match op {
        Err(m) => m,
        Ok(op) => match patch_object(&state, &s, "Groups", &id, vec![op]).await {
            Ok(done) => return done,
            Err(m) => m,
        },
    };
    let g = match s.get(&state, &format!("/scim/v2/Groups/{id}")).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let links = object_links(&state, &s, &id).await;
    let names = member_names(&state, &s, &g).await;
    group_page(&s, &g, &names, &links, Some(&msg), &HashMap::new())
}

pub(super) async fn delete_group(State(state): St, s: Session, Path(id): Path<String>, Form(form): F) -> Response {
    delete_object(&state, &s, &form, "Groups", &id).await
}

// ---- audit ------------------------------------------------------------------

pub(super) async fn audit(State(state): St, s: Session, Query(q): Q) -> Response {
    let before = q.get("before").and_then(|b| b.parse::<i64>().ok());
    let uri = match before {
        Some(b) => format!("/api/v1/audit?limit=100&before={b}"),
        None => "/api/v1/audit?limit=100".to_owned(),
    };
    let list = match s.get(&state, &uri).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let entries = list["entries"].as_array().cloned().unwrap_or_default();
    let names = object_names(&state, &s, entries.iter().filter_map(|e| e["target"].as_str())).await;
    page(
        StatusCode::OK,
        layout(
            "Audit log",
            "Audit log",
            Some(&s.csrf),
            html! {
                h1 { "Audit log" }
                table {
                    thead { tr { th { "When" } th { "Who" } th { "What" } th { "On" } th { "Details" } } }
                    tbody {
                        @for e in &entries {
                            tr {
                                td { (when(e["at"].as_i64().unwrap_or(0))) }
                                td { (e["actor"].as_str().unwrap_or("")) }
                                td { (e["action"].as_str().unwrap_or("")) }
                                td { (object_link(e["target"].as_str().unwrap_or(""), &names)) }
                                td.details { code { (e["details"].to_string()) } }
                            }
                        }
                    }
                }
                @if let Some(n) = list["next_before"].as_i64() {
                    p { a href={ "/audit?before=" (n) } { "Older entries ›" } }
                }
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_dialog_offers_windows_and_linux_each_with_its_checksum_and_commands() {
        let k = json!({
            "download_url": "https://f.example/downloads/ferry-agent",
            "downloads": [
                {"platform": "windows", "file": "ferry-agent.msi", "url": "https://f.example/downloads/ferry-agent.msi", "sha256": "aa11"},
                {"platform": "linux", "file": "ferry-agent", "url": "https://f.example/downloads/ferry-agent", "sha256": "bb22"},
            ]
        });
        let html = install_steps(&k).into_string();
        let win = html.find("ol class=\"windows\"").unwrap_or(usize::MAX);
        let lin = html.find("ol class=\"linux\"").unwrap_or(usize::MAX);
        assert!(win < lin && lin < usize::MAX, "Windows first, then Linux: {html}");
        assert!(
            html.contains("href=\"https://f.example/downloads/ferry-agent.msi\" download"),
            "{html}"
        );
        assert!(
            html.contains("SHA-256: <code class=\"sha256\">aa11</code>")
                && html.contains("(Get-FileHash .\\ferry-agent.msi).Hash -eq 'aa11'"),
            "{html}"
        );
        assert!(
            html.contains("SHA-256: <code class=\"sha256\">bb22</code>")
                && html.contains(
                    "echo 'bb22  ferry-agent' | sha256sum -c\nchmod +x ferry-agent\nsudo ./ferry-agent install"
                ),
            "{html}"
        );
        assert!(
            html.contains("data-autodownload=\"windows\"") && html.contains("data-autodownload=\"linux\""),
            "each download starts by itself on its platform: {html}"
        );

        // A server with no file to offer still links the Linux download (which then says how to offer it).
        let bare = install_steps(&json!({"download_url": "https://f.example/downloads/ferry-agent"})).into_string();
        assert!(
            bare.contains("href=\"https://f.example/downloads/ferry-agent\" download")
                && !bare.contains("windows")
                && !bare.contains("data-autodownload"),
            "{bare}"
        );
    }
}
