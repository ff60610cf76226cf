//! AD domains, their Connect Keys and their agents.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use ferry_proto::agent::{AdDeleteAction, Authority, CloudDeleteAction, DomainPolicies, SyncScope};
use serde::Deserialize;
use serde_json::{json, Value};

use super::parse_id;
use crate::app::AppState;
use crate::http::auth::AdminAuth;
use crate::http::{base_url, ApiError, JsonBody};
use crate::secrets::{new_connect_key, token_hash};
use crate::store::{Agent, Domain, DomainSettings};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDomain {
    name: String,
    netbios_name: Option<String>,
    user_ou: Option<String>,
    policies: Option<PolicyPatch>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyPatch {
    authority: Option<Authority>,
    ad_delete_action: Option<AdDeleteAction>,
    cloud_delete_action: Option<CloudDeleteAction>,
    delete_threshold: Option<u32>,
    match_existing_users: Option<bool>,
    scope: Option<SyncScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DomainPatch {
    /// Objects created in the cloud are placed in this domain (one per org).
    default_for_cloud_objects: Option<bool>,
    netbios_name: Option<String>,
    user_ou: Option<String>,
    policies: Option<PolicyPatch>,
}

/// `POST /api/v1/domains`.
pub(super) async fn create(
    State(state): State<AppState>,
    auth: AdminAuth,
    JsonBody(body): JsonBody<NewDomain>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = validate_dns_name(&body.name)?;
    let root_dn = root_dn_of(&name);
    let netbios = match body.netbios_name {
        Some(n) => validate_netbios(&n)?,
        None => default_netbios(&name),
    };
    let user_ou = match body.user_ou {
        Some(ou) => validate_user_ou(&ou, &root_dn)?,
        None => format!("CN=Users,{root_dn}"),
    };
    let policies = apply_policy_patch(DomainPolicies::default(), body.policies.unwrap_or_default())?;
    validate_scope(&policies.scope, &root_dn, &user_ou)?;
    let settings = DomainSettings {
        name,
        netbios_name: netbios,
        root_dn,
        user_ou,
        policies,
    };
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.insert_domain(auth.org_id, &settings, now).await?;
    // The org's first domain is where objects made in the cloud go, those
    // made before it included (the single-domain case needs no choice).
    if tx.default_domain(auth.org_id).await?.is_none() {
        // The new domain's agent reads the feed from its start; if retention
        // has pruned the entries that made these objects, they are written
        // to the feed again so the agent still sees every one.
        let redeliver = if tx.feed_was_pruned(auth.org_id).await? {
            tx.unhomed_objects(auth.org_id).await?
        } else {
            Vec::new()
        };
        tx.set_default_domain(auth.org_id, Some(domain.id)).await?;
        tx.adopt_unhomed(auth.org_id, domain.id).await?;
        let ctx = crate::directory::WriteCtx {
            org_id: auth.org_id,
            origin: crate::directory::ORIGIN_CLOUD.into(),
            actor: auth.actor.clone(),
            now,
        };
        for id in redeliver {
            crate::directory::redeliver(&mut tx, &ctx, id).await?;
        }
    }
    let default = tx.default_domain(auth.org_id).await?;
    let bound = &settings.policies.scope.cloud_groups;
    if !bound.is_empty() {
        validate_bound_groups(&mut tx, auth.org_id, domain.id, &settings.policies.scope).await?;
        let ctx = crate::directory::WriteCtx {
            org_id: auth.org_id,
            origin: crate::directory::ORIGIN_CLOUD.into(),
            actor: auth.actor.clone(),
            now,
        };
        crate::directory::binding::bind(&mut tx, &ctx, domain.id, bound).await?;
    }
    tx.append_audit(
        auth.org_id,
        &auth.actor,
        "domain.create",
        &format!("domain:{}", domain.id),
        &json!({"name": settings.name}),
        now,
    )
    .await?;
    state.commit(tx).await?;
    Ok((StatusCode::CREATED, Json(domain_json(&domain, default))))
}

/// `GET /api/v1/domains`.
pub(super) async fn list(State(state): State<AppState>, auth: AdminAuth) -> Result<Json<Value>, ApiError> {
    let mut tx = state.store.begin().await?;
    let domains = tx.list_domains(auth.org_id).await?;
    let default = tx.default_domain(auth.org_id).await?;
    Ok(Json(
        json!({ "domains": domains.iter().map(|d| domain_json(d, default)).collect::<Vec<_>>() }),
    ))
}

/// `GET /api/v1/domains/{id}`.
pub(super) async fn get_one(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let default = tx.default_domain(auth.org_id).await?;
    Ok(Json(domain_json(&d, default)))
}

/// `PATCH /api/v1/domains/{id}`.
pub(super) async fn update(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DomainPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let current = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let mut s = current.settings.clone();
    if let Some(n) = body.netbios_name {
        s.netbios_name = validate_netbios(&n)?;
    }
    if let Some(ou) = body.user_ou {
        s.user_ou = validate_user_ou(&ou, &s.root_dn)?;
    }
    if let Some(p) = body.policies {
        s.policies = apply_policy_patch(s.policies, p)?;
    }
    validate_scope(&s.policies.scope, &s.root_dn, &s.user_ou)?;
    validate_bound_groups(&mut tx, auth.org_id, id, &s.policies.scope).await?;
    // A new scope is read whole: objects it brings in are imported, those
    // it leaves out are found gone by reconciliation (the AD delete policy
    // and threshold apply).
    if !s.policies.scope.same_in_ad(&current.settings.policies.scope) {
        tx.reset_ad_cookie(auth.org_id, id).await?;
    }
    let newly_bound: Vec<uuid::Uuid> = s
        .policies
        .scope
        .cloud_groups
        .iter()
        .filter(|g| !current.settings.policies.scope.cloud_groups.contains(g))
        .copied()
        .collect();
    let before = tx.default_domain(auth.org_id).await?;
    let was_default = before == Some(id);
    let default = match body.default_for_cloud_objects {
        Some(true) => Some(id),
        Some(false) if was_default => None,
        _ => before,
    };
    if s == current.settings && (default == Some(id)) == was_default {
        return Ok(Json(domain_json(&current, default)));
    }
    if (default == Some(id)) != was_default {
        tx.set_default_domain(auth.org_id, default).await?;
    }
    let d = tx.update_domain(auth.org_id, id, &s, now).await?;
    if !newly_bound.is_empty() {
        let ctx = crate::directory::WriteCtx {
            org_id: auth.org_id,
            origin: crate::directory::ORIGIN_CLOUD.into(),
            actor: auth.actor.clone(),
            now,
        };
        crate::directory::binding::bind(&mut tx, &ctx, id, &newly_bound).await?;
    }
    let details = json!({
        "netbios_name": s.netbios_name,
        "user_ou": s.user_ou,
        "policies": s.policies,
        "default_for_cloud_objects": default == Some(id),
    });
    tx.append_audit(
        auth.org_id,
        &auth.actor,
        "domain.update",
        &format!("domain:{id}"),
        &details,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(domain_json(&d, default)))
}

/// `DELETE /api/v1/domains/{id}`.
pub(super) async fn remove(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "domain")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    tx.delete_domain(auth.org_id, id).await?;
    tx.append_audit(
        auth.org_id,
        &auth.actor,
        "domain.delete",
        &format!("domain:{id}"),
        &json!({"name": d.settings.name}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/domains/{id}/connect-keys`: a new single-use key, shown once.
pub(super) async fn create_connect_key(
    State(state): State<AppState>,
    auth: AdminAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id, "domain")?;
    let now = state.now();
    let base = base_url(&state.config, &headers);
    // A cloud serving TLS itself pins its key in the Connect Key, so the
    // agent trusts exactly that key, whoever signed the certificate.
    let key = match &state.config.tls {
        Some(tls) => ferry_proto::connect_key::new_pinned_connect_key(&base, &tls.pin()),
        None => new_connect_key(&base),
    };
    let expires_at = now + state.config.connect_key_ttl_ms;
    let mut tx = state.store.begin().await?;
    tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let key_id = tx
        .insert_connect_key(auth.org_id, id, &token_hash(&key), now, expires_at)
        .await?;
    tx.append_audit(
        auth.org_id,
        &auth.actor,
        "connect_key.create",
        &format!("domain:{id}"),
        &json!({"key_id": key_id, "expires_at": expires_at}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": key_id,
            "connect_key": key,
            "expires_at": expires_at,
            "cloud_url": base,
            "download_url": format!("{base}/downloads/ferry-agent"),
            "downloads": crate::downloads::offers(&state, &base).await,
        })),
    ))
}

/// `GET /api/v1/domains/{id}/agents`.
pub(super) async fn list_agents(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let agents = tx.list_agents(auth.org_id, id).await?;
    // Feed entries after the domain's cursor: an upper bound of what waits
    // to go into AD (some are other domains' or the domain's own echoes).
    let backlog = (tx.feed_head(auth.org_id).await? - d.feed_cursor).max(0);
    let list: Vec<Value> = agents.iter().map(|a| agent_json(a, &d, now, backlog)).collect();
    Ok(Json(json!({ "agents": list })))
}

/// `DELETE /api/v1/domains/{id}/agents/{agent_id}`: revoke an agent.
pub(super) async fn revoke_agent(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path((id, agent_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "domain")?;
    let agent_id = parse_id(&agent_id, "agent")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    tx.revoke_agent(auth.org_id, id, agent_id, now)
        .await
        .map_err(not_found_as("agent"))?;
    tx.append_audit(
        auth.org_id,
        &auth.actor,
        "agent.revoke",
        &format!("agent:{agent_id}"),
        &json!({"domain": id}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Agent status as the console shows it: seen < 30 s, < 5 min, older.
pub fn agent_status(last_seen_at: i64, now: i64) -> &'static str {
    match now - last_seen_at {
        d if d < 30_000 => "active",
        d if d < 300_000 => "stale",
        _ => "offline",
    }
}

/// An agent's state for the admin: `waiting` from registration until its
/// first heartbeat (the install registered it; it has not run yet: the
/// report is still the empty one registration stores, as a heartbeat always
/// reports every field), then [`agent_status`] by its last heartbeat.
pub fn agent_state(a: &Agent, now: i64) -> &'static str {
    if a.report.as_object().is_none_or(serde_json::Map::is_empty) {
        "waiting"
    } else {
        agent_status(a.last_seen_at, now)
    }
}

fn agent_json(a: &Agent, d: &Domain, now: i64, backlog: i64) -> Value {
    let primary = d.lease_agent_id == Some(a.id) && d.lease_expires_at > now;
    // Each direction's health as of its last heartbeat: red ("failing")
    // once it has failed for a minute, until it succeeds.
    let health: Vec<Value> = serde_json::from_value::<Vec<ferry_proto::agent::DirectionHealth>>(
        a.report.get("directions").cloned().unwrap_or(Value::Null),
    )
    .unwrap_or_default()
    .iter()
    .map(|h| {
        let waiting = primary && h.direction == ferry_proto::agent::SyncDirection::CloudToAd;
        json!({
            "direction": h.direction,
            "status": h.status(now),
            "last_success_at": h.last_success_at,
            "error": h.error,
            "failing_since": h.failing_since,
            "backlog": waiting.then_some(backlog),
        })
    })
    .collect();
    json!({
        "health": health,
        // The last comparison of both sides whole: objects compared, found
        // different, repaired, cloud changes sent down again.
        "audit": a.report.get("audit").cloned().unwrap_or(Value::Null),
        "id": a.id,
        "hostname": a.hostname,
        "version": a.version,
        "status": agent_state(a, now),
        "primary": primary,
        "last_seen": a.last_seen_at,
        "registered_at": a.created_at,
        "report": a.report,
    })
}

/// The JSON form of a domain (`default`: the org's default domain).
pub fn domain_json(d: &Domain, default: Option<uuid::Uuid>) -> Value {
    json!({
        "default_for_cloud_objects": default == Some(d.id),
        "id": d.id,
        "name": d.settings.name,
        "netbios_name": d.settings.netbios_name,
        "root_dn": d.settings.root_dn,
        "user_ou": d.settings.user_ou,
        "policies": d.settings.policies,
        "sync": { "initial_import_done": d.ad_cookie.is_some(), "feed_cursor": d.feed_cursor },
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    })
}

/// Maps the store's "not found" to a 404 naming `what`.
pub(super) fn not_found_as(what: &'static str) -> impl Fn(crate::store::StoreError) -> ApiError {
    move |e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

/// A DNS domain name, lowercased: at least two labels of letters, digits
/// and inner hyphens.
pub fn validate_dns_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = || {
        ApiError::bad_request(format!(
            "name {name:?} is not a DNS domain name like \"example.com\" (the AD domain's DNS name)"
        ))
    };
    if n.len() > 253 {
        return Err(bad());
    }
    let labels: Vec<&str> = n.split('.').collect();
    if labels.len() < 2 {
        return Err(bad());
    }
    for l in &labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(n)
}

/// `DC=example,DC=com` for `example.com`.
pub fn root_dn_of(dns: &str) -> String {
    dns.split('.').map(|l| format!("DC={l}")).collect::<Vec<_>>().join(",")
}

fn default_netbios(dns: &str) -> String {
    dns.split('.')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(15)
        .collect()
}

fn validate_netbios(n: &str) -> Result<String, ApiError> {
    let up = n.trim().to_ascii_uppercase();
    let ok = !up.is_empty() && up.len() <= 15 && up.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(up)
    } else {
        Err(ApiError::bad_request(format!(
            "netbios_name {n:?} must be 1 to 15 letters, digits, '-' or '_' (the pre-Windows 2000 domain name)"
        )))
    }
}

fn validate_user_ou(ou: &str, root_dn: &str) -> Result<String, ApiError> {
    let ou = ou.trim();
    let inside = ou.len() > root_dn.len()
        && ou
            .to_ascii_lowercase()
            .ends_with(&format!(",{}", root_dn.to_ascii_lowercase()))
        && ou.split(',').all(|rdn| rdn.contains('='));
    if inside {
        Ok(ou.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "user_ou {ou:?} must be a DN inside {root_dn}, e.g. \"OU=Staff,{root_dn}\""
        )))
    }
}

fn apply_policy_patch(mut p: DomainPolicies, patch: PolicyPatch) -> Result<DomainPolicies, ApiError> {
    if let Some(a) = patch.authority {
        p.authority = a;
    }
    if let Some(a) = patch.ad_delete_action {
        p.ad_delete_action = a;
    }
    if let Some(a) = patch.cloud_delete_action {
        p.cloud_delete_action = a;
    }
    if let Some(t) = patch.delete_threshold {
        if t == 0 || t > 1_000_000 {
            return Err(ApiError::bad_request("delete_threshold must be between 1 and 1000000"));
        }
        p.delete_threshold = t;
    }
    if let Some(m) = patch.match_existing_users {
        p.match_existing_users = m;
    }
    if let Some(scope) = patch.scope {
        p.scope = scope;
    }
    Ok(p)
}

/// A scope's containers are DNs inside the domain, and it keeps the OU
/// where users made in the cloud land.
fn validate_scope(scope: &SyncScope, root_dn: &str, user_ou: &str) -> Result<(), ApiError> {
    use ferry_proto::dn::{dn_within, Dn};
    if scope.include.len() + scope.exclude.len() + scope.groups.len() + scope.cloud_groups.len() > 200 {
        return Err(ApiError::bad_request("a scope names at most 200 containers and groups"));
    }
    for dn in scope.include.iter().chain(&scope.exclude) {
        if Dn::parse(dn).is_err() || !dn_within(dn, root_dn) {
            return Err(ApiError::bad_request(format!(
                "scope container {dn:?} must be a DN inside {root_dn}, e.g. \"OU=Staff,{root_dn}\""
            )));
        }
    }
    for g in &scope.groups {
        if Dn::parse(g).is_err() || !dn_within(g, root_dn) {
            return Err(ApiError::bad_request(format!(
                "scope group {g:?} must be the DN of an AD group inside {root_dn}, e.g. \"CN=Staff,OU=Groups,{root_dn}\""
            )));
        }
    }
    if !scope.admits(user_ou) {
        return Err(ApiError::bad_request(format!(
            "the scope leaves out {user_ou}, where users made in the cloud land: include it, or change user_ou"
        )));
    }
    Ok(())
}

/// Cloud groups bound to a domain exist, and belong to no other domain.
async fn validate_bound_groups(
    tx: &mut crate::store::Tx,
    org_id: uuid::Uuid,
    domain: uuid::Uuid,
    scope: &SyncScope,
) -> Result<(), ApiError> {
    for g in &scope.cloud_groups {
        let Some(row) = tx.get_group(org_id, *g).await? else {
            return Err(ApiError::bad_request(format!("cloud group {g} does not exist")));
        };
        if let Some(home) = row.home_domain.filter(|h| *h != domain) {
            let other = tx.get_domain(org_id, home).await?.settings.name;
            return Err(ApiError::bad_request(format!(
                "cloud group {:?} belongs to domain {other}: it can be bound to that domain only",
                row.name
            )));
        }
    }
    Ok(())
}

/// `POST /api/v1/domains/{id}/scope-preview`: what a scope would change,
/// before it is saved, on each side.
///
/// - AD → cloud: the domain's agent reads AD with the proposed scope and
///   counts the objects it would take in (created in the cloud, or linked
///   to a same-named cloud object) and the linked objects it would leave
///   out; the AD delete policy and threshold say what then happens to
///   those. Without an agent answering within [`PREVIEW_WAIT`], what
///   leaves is counted from the DNs the cloud last saw (`"source":
///   "links"`), and what enters is unknown (`null`).
/// - Cloud → AD: the cloud objects that binding new cloud groups would
///   place in this domain (created in its AD), and those that stay in
///   other domains.
pub(super) async fn scope_preview(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(scope): JsonBody<SyncScope>,
) -> Result<Json<Value>, ApiError> {
    use ferry_proto::record::ObjectKind;
    let id = parse_id(&id, "domain")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    validate_scope(&scope, &d.settings.root_dn, &d.settings.user_ou)?;
    validate_bound_groups(&mut tx, auth.org_id, id, &scope).await?;
    let newly_bound: Vec<uuid::Uuid> = scope
        .cloud_groups
        .iter()
        .filter(|g| !d.settings.policies.scope.cloud_groups.contains(g))
        .copied()
        .collect();
    let binding = crate::directory::binding::preview(&mut tx, auth.org_id, id, &newly_bound).await?;
    let live_agent = d.lease_agent_id.is_some() && d.lease_expires_at > now;
    let asked = if live_agent {
        let ask = tx.ask_scope_preview(auth.org_id, id, &scope, now).await?;
        state.commit(tx).await?;
        Some(ask)
    } else {
        None
    };
    // The agent picks the request up with its next look at the sync state
    // (every few seconds) and answers once it has read AD.
    let mut answer = None;
    if let Some(ask) = asked {
        let until = std::time::Instant::now() + PREVIEW_WAIT;
        while answer.is_none() && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let mut tx = state.store.begin().await?;
            answer = tx.scope_preview_answer(auth.org_id, ask).await?;
        }
    }
    let threshold = d.settings.policies.delete_threshold as usize;
    let action = match d.settings.policies.ad_delete_action {
        AdDeleteAction::Remove => "deleted in the cloud",
        AdDeleteAction::Unlink => "unlinked (kept in the cloud)",
    };
    let (leaving, staying, entering, source) = match &answer {
        Some(a) => (
            json!({"users": a.leaving.users, "groups": a.leaving.groups, "sample": a.leaving.sample}),
            a.staying,
            json!({"users": a.entering.users, "groups": a.entering.groups, "sample": a.entering.sample}),
            "agent",
        ),
        None => {
            // What the cloud knows: linked objects and the DNs it last saw.
            let mut tx = state.store.begin().await?;
            let links = tx.links_of_domain(auth.org_id, id).await?;
            let mut out: Vec<&crate::store::Link> = links.iter().filter(|l| !scope.admits(&l.ad_dn)).collect();
            out.sort_by(|a, b| a.ad_dn.cmp(&b.ad_dn));
            let count = |kind: ObjectKind| out.iter().filter(|l| l.kind == kind).count();
            let leaving = json!({
                "users": count(ObjectKind::User),
                "groups": count(ObjectKind::Group),
                "sample": out.iter().take(20).map(|l| &l.ad_dn).collect::<Vec<_>>(),
            });
            ((leaving), (links.len() - out.len()) as u64, Value::Null, "links")
        }
    };
    let leaving_n = leaving["users"].as_u64().unwrap_or(0) + leaving["groups"].as_u64().unwrap_or(0);
    let mut leaving = leaving;
    leaving["action"] = json!(action);
    leaving["held_in_quarantine"] = json!(leaving_n as usize > threshold);
    let kind_count = |k: ObjectKind| binding.entering.iter().filter(|(m, _)| m.kind == k).count();
    let mut names: Vec<&str> = binding.entering.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    names.truncate(20);
    let missing_groups = answer.as_ref().map(|a| a.missing_groups.clone()).unwrap_or_default();
    Ok(Json(json!({
        "source": source,
        "missing_groups": missing_groups,
        "entering": entering,
        "leaving": leaving,
        "staying": staying,
        "threshold": threshold,
        "cloud_to_ad": {
            "entering": {
                "users": kind_count(ObjectKind::User),
                "groups": kind_count(ObjectKind::Group),
                "sample": names,
            },
            "elsewhere": binding.elsewhere,
        },
    })))
}

/// How long a scope preview waits for the domain's agent to read AD.
const PREVIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `GET /api/v1/domains/{id}/quarantine`: deletes held for a decision.
pub(super) async fn list_quarantine(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let mut tx = state.store.begin().await?;
    tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let list = tx.list_quarantine(auth.org_id, id, false).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|q| json!({"id": q.id, "created_at": q.created_at, "status": q.status, "deletes": q.changes.len(), "changes": q.changes}))
        .collect();
    Ok(Json(json!({ "quarantine": items })))
}

async fn decide(
    state: AppState,
    auth: AdminAuth,
    id: String,
    qid: String,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    use crate::directory::{self, ad_apply, WriteCtx};
    let id = parse_id(&id, "domain")?;
    let qid = parse_id(&qid, "quarantine entry")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let entry = tx
        .list_quarantine(auth.org_id, id, true)
        .await?
        .into_iter()
        .find(|q| q.id == qid)
        .ok_or_else(|| ApiError::not_found("pending quarantine entry"))?;
    if !tx
        .decide_quarantine(auth.org_id, id, qid, if approve { "approved" } else { "rejected" })
        .await?
    {
        return Err(ApiError::not_found("pending quarantine entry"));
    }
    let ctx = WriteCtx {
        org_id: auth.org_id,
        origin: domain.id.to_string(),
        actor: auth.actor.clone(),
        now,
    };
    let mut applied = 0u64;
    for change in &entry.changes {
        let ferry_proto::agent::AdChange::Delete { guid } = change else {
            continue;
        };
        if approve {
            if ad_apply::apply_one(&mut tx, &ctx, &domain, change).await? {
                applied += 1;
            }
        } else {
            // Keep the cloud objects: they are no longer tied to AD.
            tx.delete_link(auth.org_id, domain.id, *guid).await?;
        }
    }
    let action = if approve {
        "sync.quarantine_approve"
    } else {
        "sync.quarantine_reject"
    };
    directory::audit(
        &mut tx,
        &ctx,
        action,
        &format!("domain:{id}"),
        json!({"entry": qid, "deletes": entry.changes.len()}),
    )
    .await?;
    state.commit(tx).await?;
    Ok(Json(
        json!({"id": qid, "status": if approve { "approved" } else { "rejected" }, "applied": applied}),
    ))
}

/// `POST /api/v1/domains/{id}/quarantine/{qid}/approve`: carry out the held deletes.
pub(super) async fn approve_quarantine(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path((id, qid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    decide(state, auth, id, qid, true).await
}

/// `POST /api/v1/domains/{id}/quarantine/{qid}/reject`: keep the cloud objects, unlinked from AD.
pub(super) async fn reject_quarantine(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path((id, qid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    decide(state, auth, id, qid, false).await
}

/// `GET /api/v1/domains/{id}/held-deletes`: deletes made in the cloud that
/// the domain's delete threshold holds back from its AD.
pub(super) async fn list_held_deletes(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let held = tx.held_cloud_deletes(auth.org_id, id).await?;
    Ok(Json(json!({
        "held": held,
        "threshold": d.settings.policies.delete_threshold,
        "window_secs": crate::directory::ad_apply::DELETE_WINDOW_MS / 1000,
    })))
}

/// `POST /api/v1/domains/{id}/held-deletes/approve`: the held cloud deletes
/// go down to AD (disabled or deleted, per the domain's policy).
pub(super) async fn approve_held_deletes(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    decide_held(state, auth, id, true).await
}

/// `POST /api/v1/domains/{id}/held-deletes/reject`: AD keeps the objects;
/// the next comparison of both sides brings them back to the cloud.
pub(super) async fn reject_held_deletes(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    decide_held(state, auth, id, false).await
}

async fn decide_held(state: AppState, auth: AdminAuth, id: String, approve: bool) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let ctx = crate::directory::WriteCtx {
        org_id: auth.org_id,
        origin: crate::directory::ORIGIN_CLOUD.to_owned(),
        actor: auth.actor.clone(),
        now: state.now(),
    };
    let n = crate::directory::held::decide(&mut tx, &ctx, &domain, approve).await?;
    state.commit(tx).await?;
    Ok(Json(
        json!({ "decided": n, "status": if approve { "approved" } else { "rejected" } }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_and_root_dns() {
        assert_eq!(validate_dns_name("Example.TEST.").ok().as_deref(), Some("example.test"));
        assert!(validate_dns_name("example").is_err());
        assert!(validate_dns_name("-bad.test").is_err());
        assert!(validate_dns_name("a..test").is_err());
        assert!(validate_dns_name("DC=example,DC=test").is_err());
        assert_eq!(root_dn_of("corp.example.test"), "DC=corp,DC=example,DC=test");
        assert_eq!(default_netbios("averyveryverylongname.test"), "AVERYVERYVERYLO");
    }

    #[test]
    fn user_ou_must_be_inside_the_domain() {
        let root = "DC=example,DC=test";
        assert!(validate_user_ou("OU=Staff,DC=example,DC=test", root).is_ok());
        assert!(validate_user_ou("ou=staff,dc=EXAMPLE,dc=test", root).is_ok());
        assert!(validate_user_ou("OU=Staff,DC=other,DC=test", root).is_err());
        assert!(validate_user_ou("DC=example,DC=test", root).is_err());
        assert!(validate_user_ou("Staff,DC=example,DC=test", root).is_err());
    }

    #[test]
    fn status_thresholds() {
        assert_eq!(agent_status(0, 29_999), "active");
        assert_eq!(agent_status(0, 30_000), "stale");
        assert_eq!(agent_status(0, 299_999), "stale");
        assert_eq!(agent_status(0, 300_000), "offline");
    }

    #[test]
    fn an_agent_is_waiting_until_its_first_heartbeat() {
        let mut a = Agent {
            id: uuid::Uuid::nil(),
            org_id: uuid::Uuid::nil(),
            domain_id: uuid::Uuid::nil(),
            hostname: "dc1".into(),
            version: "0.1.0".into(),
            public_key: String::new(),
            created_at: 1_000,
            last_seen_at: 1_000,
            revoked_at: None,
            report: json!({}),
        };
        assert_eq!(agent_state(&a, 1_000), "waiting");
        assert_eq!(agent_state(&a, 10_000_000), "waiting", "not offline: it never ran");
        // A heartbeat at once (a test clock that stands still) is a contact all the same.
        a.report = serde_json::to_value(ferry_proto::agent::HeartbeatRequest::default()).unwrap();
        assert_eq!(agent_state(&a, 1_000), "active");
        a.last_seen_at = 2_000;
        assert_eq!(agent_state(&a, 2_000), "active");
        assert_eq!(agent_state(&a, 2_000 + 300_000), "offline");
    }
}
