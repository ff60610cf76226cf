//! The agent API, `/agent/v1`. Agents call out to the cloud; this is the
//! whole conversation: register with a Connect Key, heartbeat for the
//! primary lease, push AD changes, long-poll and acknowledge the cloud feed.

mod audit;
mod sync_errors;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_proto::agent::{
    AckRequest, AgentSelf, ConnectKeyCheckRequest, ConnectKeyCheckResponse, DomainInfo, FeedEntry, FeedResponse,
    HeartbeatRequest, HeartbeatResponse, LinkInfo, LinkRefusal, LinksBatch, LinksBatchResponse, LinksResponse,
    PushChangesRequest, PushChangesResponse, RegisterRequest, RegisterResponse, ScopePreviewAnswer, SyncState,
};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::directory::ad_apply::{apply_ad_changes, ApplyError, Isolation};
use crate::directory::WriteCtx;
use crate::http::auth::AgentAuth;
use crate::http::{ApiError, ApiQuery, ClientIp, JsonBody};
use crate::secrets::{new_token, token_hash, AGENT_TOKEN_PREFIX};
use crate::store::{Agent, ConnectKeyProblem, Domain, Statistics};

/// Routes under `/agent/v1`; `push_limit` bounds the body of an AD push.
pub fn router(push_limit: usize) -> Router<AppState> {
    Router::new()
        .route("/register", post(register))
        .route("/connect-key", post(check_connect_key))
        .route("/me", get(me))
        .route("/deregister", post(deregister))
        .route("/heartbeat", post(heartbeat))
        .route("/release", post(release))
        .route("/state", get(sync_state))
        // AD pushes are bounded by the agent (2 MiB, 500 changes) and get a
        // limit of their own (16 MiB by default): a big group's members travel here.
        .route("/changes", post(push_changes).layer(DefaultBodyLimit::max(push_limit)))
        .route("/feed", get(feed))
        .route("/ack", post(ack))
        .route("/links", get(list_links).post(put_link))
        .route("/links/batch", post(put_links))
        .route("/links/of", post(links_of_objects))
        .route("/secrets/{seq}", get(sealed_secret))
        .route("/sync-errors", get(sync_errors::open).post(sync_errors::report))
        .route("/sync-errors/resolved", post(sync_errors::resolved))
        .route("/scope-preview/{id}", post(answer_scope_preview))
        .route("/audit", post(audit::digests))
        .route("/audit/objects", post(audit::objects))
}

fn domain_info(d: &Domain) -> DomainInfo {
    DomainInfo {
        id: d.id,
        name: d.settings.name.clone(),
        netbios_name: d.settings.netbios_name.clone(),
        root_dn: d.settings.root_dn.clone(),
        user_ou: d.settings.user_ou.clone(),
        policies: d.settings.policies.clone(),
        service_accounts: Vec::new(),
    }
}

/// `POST /agent/v1/register`.
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let now = state.now();
    for (field, value, max) in [
        ("hostname", &req.hostname, 255),
        ("version", &req.version, 64),
        ("public_key", &req.public_key, 64),
    ] {
        if value.trim().is_empty() || value.len() > max {
            return Err(ApiError::bad_request(format!("{field} must be 1 to {max} characters")));
        }
    }
    let key_ok = base64_32(&req.public_key);
    if !key_ok {
        return Err(ApiError::bad_request(
            "public_key must be a base64 X25519 public key (32 bytes)",
        ));
    }
    let mut tx = state.store.begin().await?;
    let key = match tx.consume_connect_key(&token_hash(&req.connect_key), now).await? {
        Ok(k) => k,
        Err(problem) => return Err(connect_key_failed(&state, &ip, now, problem)),
    };
    let token = new_token(AGENT_TOKEN_PREFIX);
    let agent = tx
        .insert_agent(
            key.org_id,
            key.domain_id,
            req.hostname.trim(),
            req.version.trim(),
            req.public_key.trim(),
            &token_hash(&token),
            now,
        )
        .await?;
    let domain = tx.get_domain(key.org_id, key.domain_id).await?;
    let details =
        json!({"hostname": agent.hostname, "version": agent.version, "domain": domain.settings.name, "ip": ip});
    tx.append_audit(
        key.org_id,
        &format!("agent:{}", agent.id),
        "agent.register",
        &format!("agent:{}", agent.id),
        &details,
        now,
    )
    .await?;
    tx.commit().await?;
    state.connect_key_limiter.reset(&ip);
    tracing::info!(agent = %agent.id, hostname = %agent.hostname, domain = %domain.settings.name, "agent registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            agent_id: agent.id,
            agent_token: token,
            domain: domain_info(&domain),
        }),
    ))
}

/// Why a Connect Key cannot register an agent, in words the wizard shows.
fn connect_key_refused(problem: ConnectKeyProblem) -> ApiError {
    let (code, msg) = match problem {
        ConnectKeyProblem::Unknown => (
            "connect_key_invalid",
            "the Connect Key is not valid: check it was copied whole, or create a new one in the console",
        ),
        ConnectKeyProblem::Expired => (
            "connect_key_expired",
            "the Connect Key has expired (keys last 7 days): create a new one in the console",
        ),
        ConnectKeyProblem::Used => (
            "connect_key_used",
            "the Connect Key was already used to register an agent: each key works once; create a new one in the console",
        ),
    };
    ApiError::unauthorized(code, msg)
}

/// The answer to a Connect Key that does not work: why, or 429 while this
/// address waits after too many. A valid key is never refused: it is
/// looked up first, and a key is a 256-bit secret no one guesses.
fn connect_key_failed(state: &AppState, ip: &str, now: i64, problem: ConnectKeyProblem) -> ApiError {
    match state.connect_key_limiter.refuse(ip, now) {
        Some(l) => ApiError::limited(l, "Connect Key attempts"),
        None => connect_key_refused(problem),
    }
}

/// `POST /agent/v1/connect-key`: the domain a Connect Key would register an
/// agent for, without using the key. Counted against the same guess limit
/// as registration.
async fn check_connect_key(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<ConnectKeyCheckRequest>,
) -> Result<Json<ConnectKeyCheckResponse>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let key = match tx.find_connect_key(&token_hash(&req.connect_key), now).await? {
        Ok(k) => k,
        Err(problem) => return Err(connect_key_failed(&state, &ip, now, problem)),
    };
    let domain = tx.get_domain(key.org_id, key.domain_id).await?;
    Ok(Json(ConnectKeyCheckResponse {
        domain: domain_info(&domain),
        expires_at: key.expires_at,
    }))
}

/// `GET /agent/v1/me`: the cloud's view of the calling agent.
async fn me(State(state): State<AppState>, AgentAuth(agent): AgentAuth) -> Result<Json<AgentSelf>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(agent.org_id, agent.domain_id).await?;
    let sync_errors = open_errors(&mut tx, &agent).await?;
    Ok(Json(AgentSelf {
        agent_id: agent.id,
        hostname: agent.hostname.clone(),
        version: agent.version.clone(),
        status: crate::api::agent_status(agent.last_seen_at, now).to_owned(),
        primary: d.lease_agent_id == Some(agent.id) && d.lease_expires_at > now,
        last_seen: agent.last_seen_at,
        registered_at: agent.created_at,
        report: serde_json::from_value(agent.report.clone()).unwrap_or_default(),
        domain: domain_info(&d),
        sync_errors,
    }))
}

/// The agent's domain's open sync errors.
async fn open_errors(tx: &mut crate::store::Tx, agent: &Agent) -> Result<u64, ApiError> {
    let n = tx.count_sync_errors(agent.org_id, agent.domain_id).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// `POST /agent/v1/deregister`: the agent is being uninstalled; its token
/// stops working and its lease is freed, as when an admin revokes it.
async fn deregister(State(state): State<AppState>, AgentAuth(agent): AgentAuth) -> Result<StatusCode, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    tx.revoke_agent(agent.org_id, agent.domain_id, agent.id, now).await?;
    tx.append_audit(
        agent.org_id,
        &format!("agent:{}", agent.id),
        "agent.uninstall",
        &format!("agent:{}", agent.id),
        &json!({"hostname": agent.hostname}),
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(agent = %agent.id, hostname = %agent.hostname, "agent uninstalled itself");
    Ok(StatusCode::NO_CONTENT)
}

fn base64_32(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .is_ok_and(|b| b.len() == 32)
}

/// `POST /agent/v1/heartbeat`.
async fn heartbeat(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let now = state.now();
    let report = serde_json::to_value(&req).unwrap_or_default();
    let mut tx = state.store.begin().await?;
    tx.touch_agent(&agent, &report, now).await?;
    let lease = tx.acquire_lease(&agent, now, state.config.lease_ttl_ms).await?;
    let domain = tx.get_domain(agent.org_id, agent.domain_id).await?;
    let sync_errors = open_errors(&mut tx, &agent).await?;
    let mut info = domain_info(&domain);
    info.service_accounts = tx
        .list_agents(agent.org_id, agent.domain_id)
        .await?
        .iter()
        .filter(|a| a.revoked_at.is_none())
        .filter_map(|a| a.report.get("service_account")?.as_str().map(str::to_owned))
        .collect();
    tx.commit().await?;
    Ok(Json(HeartbeatResponse {
        primary: lease.primary,
        lease_expires_at: lease.expires_at,
        domain: info,
        sync_errors,
    }))
}

/// `POST /agent/v1/release`: the agent is stopping; free its lease now.
async fn release(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut tx = state.store.begin().await?;
    let released = tx.release_lease(&agent).await?;
    tx.commit().await?;
    if released {
        tracing::info!(agent = %agent.id, "primary lease released");
    }
    Ok(Json(json!({ "released": released })))
}

/// `GET /agent/v1/state`.
async fn sync_state(State(state): State<AppState>, AgentAuth(agent): AgentAuth) -> Result<Json<SyncState>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(agent.org_id, agent.domain_id).await?;
    let scope_preview = tx.pending_scope_preview(agent.domain_id, now).await?;
    let audit_requested_at = tx.audit_requested_at(agent.org_id, agent.domain_id).await?;
    Ok(Json(SyncState {
        ad_cookie: d.ad_cookie,
        feed_cursor: d.feed_cursor,
        scope_preview,
        audit_requested_at,
    }))
}

/// `POST /agent/v1/scope-preview/{id}`: the agent's count of what a
/// previewed scope would take in and leave out. Only the lease holder
/// answers (its reading of AD is the one the sync would follow).
async fn answer_scope_preview(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    axum::extract::Path(id): axum::extract::Path<String>,
    JsonBody(answer): JsonBody<ScopePreviewAnswer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = crate::api::parse_id(&id, "scope preview")?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let d = tx.get_domain(agent.org_id, agent.domain_id).await?;
    require_primary(&agent, &d, now)?;
    if !tx.answer_scope_preview(agent.domain_id, id, &answer).await? {
        return Err(ApiError::not_found("pending scope preview"));
    }
    state.commit(tx).await?;
    Ok(Json(json!({ "answered": id })))
}

/// Only the lease holder writes: two agents applying the same stream would
/// race each other.
pub(super) fn require_primary(agent: &Agent, d: &Domain, now: i64) -> Result<(), ApiError> {
    if d.lease_agent_id == Some(agent.id) && d.lease_expires_at > now {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_primary",
            "this agent does not hold the domain's primary lease; it stands by (send a heartbeat to take a free lease)",
        ))
    }
}

/// `POST /agent/v1/changes`: apply an AD batch, all or nothing.
async fn push_changes(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<PushChangesRequest>,
) -> Result<Json<PushChangesResponse>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(agent.org_id, agent.domain_id).await?;
    require_primary(&agent, &domain, now)?;
    let ctx = WriteCtx {
        org_id: agent.org_id,
        origin: domain.id.to_string(),
        actor: format!("agent:{}", agent.id),
        now,
    };
    // The fast path applies the batch whole; when the cloud refuses a change
    // in it, the batch is applied again change by change, the refused ones
    // recorded as sync errors, so one object never holds back the rest.
    let mut result = apply_ad_changes(&mut tx, &ctx, &domain, &req, Isolation::Batch).await;
    if matches!(result, Err(ApplyError::Refused(_))) {
        drop(tx);
        tx = state.store.begin().await?;
        result = apply_ad_changes(&mut tx, &ctx, &domain, &req, Isolation::PerChange).await;
    }
    let result = match result {
        Ok(r) => r,
        Err(ApplyError::CookieMismatch { .. }) => return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cookie_mismatch",
            "the batch was read from a DirSync cookie other than the stored one; GET /agent/v1/state and read again",
        )),
        Err(ApplyError::Refused(why)) => return Err(ApiError::new(StatusCode::CONFLICT, "conflict", why)),
        Err(ApplyError::Store(e)) => return Err(e.into()),
    };
    state.commit(tx).await?;
    if result.applied > 0 {
        tracing::info!(agent = %agent.id, applied = result.applied, quarantined = result.quarantined, refused = result.refused, "applied AD changes");
    }
    // Only the push that moves the cookie (a split batch's other parts, or
    // a retry, carry the same), and one refresh at a time in this process:
    // one asked for during an import is skipped while another runs; the
    // import's last waits for it, so the statistics it leaves are full.
    static ANALYZING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if req.from_cookie != req.to_cookie {
        if let Some(depth) = analyze_after(req.from_cookie.as_deref(), req.to_cookie.as_deref()) {
            let store = state.store.clone();
            let turn = ANALYZING.try_lock().ok();
            if turn.is_some() || depth == Statistics::Full {
                tokio::spawn(async move {
                    let _turn = match turn {
                        Some(turn) => turn,
                        None => ANALYZING.lock().await,
                    };
                    let started = std::time::Instant::now();
                    match store.analyze(depth).await {
                        Ok(()) => tracing::debug!(
                            secs = started.elapsed().as_secs_f64(),
                            ?depth,
                            "statistics refreshed during an import"
                        ),
                        Err(e) => tracing::warn!(error = %e, "refreshing the statistics during an import failed"),
                    }
                });
            }
        }
    }
    Ok(Json(result))
}

/// Whether the batch that moved the cookie from `from` to `to` is an
/// import's whose tables have about doubled since the last refresh of
/// their statistics, and how closely to sample them. The agent's import
/// batches carry `import:N` (N its pushes so far), so at pushes 4, 8, 16,
/// 32… (a handful per import, whatever its size) the planner learns the
/// tables' new sizes ([`Statistics::Sizes`]); at the import's end, the push
/// that moves the cookie from `import:N` to a DirSync cookie, when the
/// first changes and SCIM reads follow, it gets [`Statistics::Full`].
fn analyze_after(from: Option<&str>, to: Option<&str>) -> Option<Statistics> {
    fn import(c: Option<&str>) -> Option<&str> {
        c.and_then(|c| c.strip_prefix(ferry_proto::agent::IMPORT_COOKIE_PREFIX))
    }
    match (import(from), import(to)) {
        (_, Some(n)) => n
            .parse::<u64>()
            .is_ok_and(|n| n >= 4 && n.is_power_of_two())
            .then_some(Statistics::Sizes),
        (Some(_), None) => to.is_some().then_some(Statistics::Full),
        (None, None) => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    after: i64,
    wait: Option<u64>,
    limit: Option<i64>,
    /// `grouped`: membership entries of many members as they are stored.
    /// Without it (an agent of before), one entry per member, with the
    /// entry's `seq`: such an agent acknowledges a page whole, once applied.
    members: Option<String>,
}

/// `GET /agent/v1/feed?after=N&wait=SECS`: cloud changes after `after`,
/// waiting up to `wait` seconds for one to happen.
async fn feed(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Json<FeedResponse>, ApiError> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) || q.after < 0 {
        return Err(ApiError::bad_request("after must be ≥ 0 and limit between 1 and 5000"));
    }
    let grouped = match q.members.as_deref() {
        Some("grouped") => true,
        None => false,
        Some(_) => return Err(ApiError::bad_request("members must be \"grouped\" or absent")),
    };
    let wait = Duration::from_millis(q.wait.unwrap_or(0).saturating_mul(1000).min(state.config.max_poll_ms));
    let deadline = tokio::time::Instant::now() + wait;
    let own_origin = agent.domain_id.to_string();
    loop {
        // Register interest before reading, so a commit in between wakes us.
        let grew = state.feed_grew.notified();
        tokio::pin!(grew);
        grew.as_mut().enable();
        let mut tx = state.store.begin().await?;
        // The agent's own entries are passed over in the database.
        let (mut rows, mut next_cursor) = tx.read_feed_for(agent.org_id, q.after, limit, &own_origin).await?;
        let keep = page_len(rows.iter().map(|r| &r.change));
        if keep < rows.len() {
            rows.truncate(keep);
            next_cursor = rows.last().map_or(next_cursor, |r| r.seq);
        }
        let mut current = Vec::with_capacity(rows.len());
        let mut homes = HashMap::new();
        for r in rows {
            if let Some(r) = for_domain(&mut tx, &agent, &mut homes, r).await? {
                let base = match &r.change {
                    ferry_proto::agent::CloudChange::UpsertUser { id, .. }
                    | ferry_proto::agent::CloudChange::PasswordSet { user: id } => tx
                        .link_by_object(agent.org_id, agent.domain_id, *id)
                        .await?
                        .and_then(|l| l.base)
                        .and_then(|b| serde_json::from_value(b).ok())
                        .map(Box::new),
                    _ => None,
                };
                current.push((r, base));
            }
        }
        drop(tx);
        let entries: Vec<FeedEntry> = current
            .into_iter()
            .map(|(r, base)| FeedEntry {
                base,
                seq: r.seq,
                origin: r.origin,
                change: r.change,
                at: r.at,
                ad_guids: r
                    .links
                    .iter()
                    .filter(|l| l.domain_id == agent.domain_id)
                    .map(|l| (l.object_id, l.ad_guid))
                    .collect::<BTreeMap<_, _>>(),
            })
            .flat_map(|e| if grouped { vec![e] } else { e.per_member() })
            .collect();
        if next_cursor > q.after || tokio::time::Instant::now() >= deadline {
            return Ok(Json(FeedResponse { entries, next_cursor }));
        }
        // Woken by a commit here or, on PostgreSQL, another instance's
        // (feed_wakeup.rs); the periodic re-read covers a missed wake-up.
        let _waiting = PollGauge::enter();
        tokio::select! {
            _ = grew => {}
            _ = tokio::time::sleep(state.config.feed_reread) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The most members the membership entries of one feed page name: 500
/// entries of [`ferry_proto::agent::FEED_MEMBERS_MAX`] members each would be
/// 250,000 members (tens of MB) in one answer.
const FEED_PAGE_MEMBERS: usize = 5_000;

/// How many of a page's entries (in order) fit [`FEED_PAGE_MEMBERS`]: at
/// least one, so a page always moves the cursor.
fn page_len<'a>(changes: impl Iterator<Item = &'a ferry_proto::agent::CloudChange>) -> usize {
    use ferry_proto::agent::CloudChange;
    let mut members = 0;
    let mut n = 0;
    for c in changes {
        members += match c {
            CloudChange::AddMembers { members, .. } | CloudChange::RemoveMembers { members, .. } => members.len(),
            _ => 1,
        };
        if n > 0 && members > FEED_PAGE_MEMBERS {
            break;
        }
        n += 1;
    }
    n
}

/// Counts a waiting long-poll in `ferry_feed_polls_waiting` while it lives.
struct PollGauge;

impl PollGauge {
    fn enter() -> PollGauge {
        crate::metrics::global()
            .feed_polls_waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PollGauge
    }
}

impl Drop for PollGauge {
    fn drop(&mut self) {
        crate::metrics::global()
            .feed_polls_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An upsert entry carries the object's state *now*, not when the entry was
/// written: applying an old snapshot after a newer change (say, a conflict
/// AD won meanwhile) would undo it. Upserts of objects deleted since are
/// dropped (their delete entry follows).
///
/// An entry goes only to the domain its object belongs to (a membership
/// change: the group's; a delete: the domains it was linked in), so one
/// domain's users are never created in another's AD.
async fn for_domain(
    tx: &mut crate::store::Tx,
    agent: &Agent,
    homes: &mut HashMap<uuid::Uuid, Option<uuid::Uuid>>,
    mut row: crate::store::FeedRow,
) -> Result<Option<crate::store::FeedRow>, ApiError> {
    use crate::directory::record::{group_record, user_record};
    use ferry_proto::agent::CloudChange;
    use ferry_proto::record::ObjectKind;
    let org_id = agent.org_id;
    let home = match &mut row.change {
        CloudChange::UpsertUser { id, record } => match tx.get_user(org_id, *id).await? {
            Some(u) => {
                **record = user_record(&u);
                u.home_domain
            }
            None => return Ok(None),
        },
        CloudChange::UpsertGroup { id, record } => match tx.get_group(org_id, *id).await? {
            Some(g) => {
                *record = group_record(&g);
                g.home_domain
            }
            None => return Ok(None),
        },
        CloudChange::AddMember { group, .. }
        | CloudChange::RemoveMember { group, .. }
        | CloudChange::AddMembers { group, .. }
        | CloudChange::RemoveMembers { group, .. } => match homes.get(group) {
            Some(h) => *h,
            None => {
                let h = tx.home_of(org_id, ObjectKind::Group, *group).await?;
                homes.insert(*group, h);
                h
            }
        },
        CloudChange::PasswordSet { user } => tx.home_of(org_id, ObjectKind::User, *user).await?,
        CloudChange::Delete { .. } => row
            .links
            .iter()
            .any(|l| l.object_id == row.object_id && l.domain_id == agent.domain_id)
            .then_some(agent.domain_id),
    };
    if home != Some(agent.domain_id) {
        return Ok(None);
    }
    Ok(Some(row))
}

/// `POST /agent/v1/ack`: everything up to `cursor` is in AD.
async fn ack(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<AckRequest>,
) -> Result<Json<SyncState>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(agent.org_id, agent.domain_id).await?;
    require_primary(&agent, &domain, now)?;
    let head = tx.feed_head(agent.org_id).await?;
    if req.cursor < 0 || req.cursor > head {
        return Err(ApiError::bad_request(format!(
            "cursor {} is outside the feed (0..={head})",
            req.cursor
        )));
    }
    let cursor = tx
        .advance_feed_cursor(agent.org_id, agent.domain_id, req.cursor)
        .await?;
    let d = tx.get_domain(agent.org_id, agent.domain_id).await?;
    tx.commit().await?;
    Ok(Json(SyncState {
        ad_cookie: d.ad_cookie,
        feed_cursor: cursor,
        scope_preview: None,
        audit_requested_at: None,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksQuery {
    after: Option<uuid::Uuid>,
    limit: Option<i64>,
}

/// `GET /agent/v1/links[?after=GUID&limit=N]`: the domain's links (what
/// reconciliation compares with AD), by objectGUID; with `limit` a page of
/// them and `next`, the `after` of the next page (so an agent's memory does
/// not grow with the domain). Without, all of them.
async fn list_links(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    ApiQuery(q): ApiQuery<LinksQuery>,
) -> Result<Json<LinksResponse>, ApiError> {
    let mut tx = state.store.begin().await?;
    let (links, next) = match q.limit {
        None if q.after.is_none() => (tx.links_of_domain(agent.org_id, agent.domain_id).await?, None),
        limit => {
            let limit = limit.unwrap_or(LINKS_PAGE);
            if !(1..=LINKS_PAGE_MAX).contains(&limit) {
                return Err(ApiError::bad_request(format!(
                    "limit must be between 1 and {LINKS_PAGE_MAX}"
                )));
            }
            let page = tx
                .links_of_domain_page(agent.org_id, agent.domain_id, q.after, limit)
                .await?;
            let next = (page.len() as i64 == limit)
                .then(|| page.last().map(|l| l.ad_guid))
                .flatten();
            (page, next)
        }
    };
    Ok(Json(LinksResponse {
        next,
        links: links.into_iter().map(link_info).collect(),
    }))
}

/// `POST /agent/v1/links/of`: the links of the cloud objects named (those
/// linked in the agent's domain): how the agent finds the AD object of a
/// feed entry written before its link, without reading every link.
async fn links_of_objects(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<ferry_proto::agent::LinksOfRequest>,
) -> Result<Json<LinksResponse>, ApiError> {
    if req.objects.len() > MAX_LINKS_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LINKS_BATCH} objects a request"
        )));
    }
    let mut tx = state.store.begin().await?;
    let links = tx.links_by_objects(agent.org_id, agent.domain_id, &req.objects).await?;
    Ok(Json(LinksResponse {
        next: None,
        links: links.into_iter().map(link_info).collect(),
    }))
}

fn link_info(l: crate::store::Link) -> LinkInfo {
    LinkInfo {
        object_id: l.object_id,
        kind: l.kind,
        guid: l.ad_guid,
        dn: l.ad_dn,
        base: None,
    }
}

/// A page of links when the agent names no limit, and the most it may ask.
const LINKS_PAGE: i64 = 5_000;
const LINKS_PAGE_MAX: i64 = 20_000;

/// `POST /agent/v1/links`: the agent created (or found) the AD object of a
/// cloud object; remember the pair.
async fn put_link(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<LinkInfo>,
) -> Result<Json<LinkInfo>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(agent.org_id, agent.domain_id).await?;
    require_primary(&agent, &domain, now)?;
    match link_one(&mut tx, &domain, &req, now).await? {
        LinkOutcome::Linked => {}
        // What the refusal recorded (the AD object remembered as deleted
        // in the cloud) stays.
        LinkOutcome::Refused { error, keep: true } => {
            tx.commit().await?;
            return Err(error);
        }
        LinkOutcome::Refused { error, keep: false } => return Err(error),
    }
    tx.commit().await?;
    Ok(Json(req))
}

/// `POST /agent/v1/links/batch`: several links (a page of base moves after
/// the agent's writes) in one transaction, each judged as `POST /links`
/// judges one, behind a savepoint of its own: a refused link is answered
/// in its place and the others are kept.
async fn put_links(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<LinksBatch>,
) -> Result<Json<LinksBatchResponse>, ApiError> {
    if req.links.len() > MAX_LINKS_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LINKS_BATCH} links a request"
        )));
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(agent.org_id, agent.domain_id).await?;
    require_primary(&agent, &domain, now)?;
    let mut refused = Vec::new();
    for link in &req.links {
        tx.savepoint().await?;
        let error = match link_one(&mut tx, &domain, link, now).await? {
            LinkOutcome::Linked => {
                tx.release_savepoint().await?;
                continue;
            }
            LinkOutcome::Refused { error, keep: true } => {
                tx.release_savepoint().await?;
                error
            }
            LinkOutcome::Refused { error, keep: false } => {
                tx.rollback_to_savepoint().await?;
                error
            }
        };
        refused.push(LinkRefusal {
            object_id: link.object_id,
            status: error.status.as_u16(),
            code: error.code.to_owned(),
            message: error.message,
        });
    }
    tx.commit().await?;
    Ok(Json(LinksBatchResponse { refused }))
}

/// Most links in one `POST /agent/v1/links/batch`.
const MAX_LINKS_BATCH: usize = 1000;

/// What became of one link.
enum LinkOutcome {
    Linked,
    /// Refused; `keep`: what the refusal recorded stays (it is committed).
    Refused {
        error: ApiError,
        keep: bool,
    },
}

fn refuse(error: ApiError) -> LinkOutcome {
    LinkOutcome::Refused { error, keep: false }
}

/// Judges and records one link of the agent's domain (its lease checked by
/// the caller). A store failure is the `Err`; a refusal is an outcome.
async fn link_one(
    tx: &mut crate::store::Tx,
    domain: &Domain,
    req: &LinkInfo,
    now: i64,
) -> Result<LinkOutcome, ApiError> {
    match tx.object_kind(domain.org_id, req.object_id).await? {
        Some(k) if k == req.kind => {}
        Some(_) => {
            return Ok(refuse(ApiError::not_found(
                "user or group with that object_id and kind",
            )))
        }
        None => {
            // Deleted in the cloud while the agent created its AD object:
            // that object must never come back as a new cloud object.
            tx.mark_cloud_deleted(domain.org_id, domain.id, req.guid, req.kind, now)
                .await?;
            return Ok(LinkOutcome::Refused {
                error: ApiError::new(
                    StatusCode::GONE,
                    "object_deleted",
                    "the cloud object was deleted meanwhile: remove the AD object made for it",
                ),
                keep: true,
            });
        }
    }
    // Only an object of this domain (or of none yet) may be linked here, and
    // an AD object linked to one cloud object is not taken over by another.
    let home = tx.claim_home(domain.org_id, req.kind, req.object_id, domain.id).await?;
    if let Some(h) = home.filter(|h| *h != domain.id) {
        let other = tx.get_domain(domain.org_id, h).await?.settings.name;
        return Ok(refuse(ApiError::new(
            StatusCode::CONFLICT,
            "other_domain",
            format!(
                "the cloud object belongs to domain {other}; {} may not link it",
                domain.settings.name
            ),
        )));
    }
    if let Some(l) = tx.link_by_guid(domain.org_id, domain.id, req.guid).await? {
        if l.object_id != req.object_id {
            return Ok(refuse(ApiError::new(
                StatusCode::CONFLICT,
                "already_linked",
                format!("the AD object {} is linked to another cloud object", l.ad_dn),
            )));
        }
    }
    // The base is AD's record in the terms both sides agree on (an account
    // Ferry created is disabled in AD until it has a password), as an AD
    // change's merge records it: the comparison of both sides holds the
    // cloud's record against it.
    let base = match &req.base {
        Some(b) => {
            let mut b = (**b).clone();
            if b.awaiting_password {
                let active = tx.get_user(domain.org_id, req.object_id).await?.map(|u| u.active);
                crate::directory::ad_apply::as_agreed(&mut b, active);
            }
            serde_json::to_value(&b).ok()
        }
        None => None,
    };
    let link = crate::store::Link {
        domain_id: domain.id,
        kind: req.kind,
        object_id: req.object_id,
        ad_guid: req.guid,
        ad_dn: req.dn.clone(),
        synced_at: now,
        ad_digest: None,
        base,
    };
    tx.put_link(domain.org_id, &link).await?;
    Ok(LinkOutcome::Linked)
}

/// `GET /agent/v1/secrets/{seq}`: the password of feed entry `seq`, sealed
/// to this agent's key.
async fn sealed_secret(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    axum::extract::Path(seq): axum::extract::Path<i64>,
) -> Result<Json<ferry_proto::seal::Sealed>, ApiError> {
    let mut tx = state.store.begin().await?;
    let sealed = tx
        .get_sealed(agent.org_id, agent.id, seq)
        .await?
        .ok_or_else(|| ApiError::not_found("sealed secret for this agent and entry"))?;
    serde_json::from_str(&sealed)
        .map(Json)
        .map_err(|_| ApiError::from(crate::store::StoreError::Corrupt("sealed secret".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::agent::{CloudChange, FeedMember};
    use ferry_proto::record::ObjectKind;
    use uuid::Uuid;

    fn members(n: usize) -> CloudChange {
        CloudChange::AddMembers {
            group: Uuid::new_v4(),
            members: (0..n)
                .map(|_| FeedMember {
                    id: Uuid::new_v4(),
                    kind: ObjectKind::User,
                })
                .collect(),
        }
    }

    #[test]
    fn statistics_are_refreshed_as_an_import_doubles() {
        let at: Vec<u64> = (1..=1000)
            .filter(|n| {
                analyze_after(Some(&format!("import:{}", n - 1)), Some(&format!("import:{n}")))
                    == Some(Statistics::Sizes)
            })
            .collect();
        assert_eq!(at, [4, 8, 16, 32, 64, 128, 256, 512]);
        // The import's end: its last push moves the cookie to DirSync's,
        // and the statistics it leaves are sampled fully.
        assert_eq!(
            analyze_after(Some("import:241"), Some("dirsync-cookie")),
            Some(Statistics::Full)
        );
        // Changes after it do not.
        assert_eq!(analyze_after(Some("dirsync-cookie"), Some("dirsync-cookie-2")), None);
        assert_eq!(analyze_after(None, Some("dirsync-cookie")), None);
        assert_eq!(analyze_after(Some("import:3"), Some("import:x")), None);
        assert_eq!(analyze_after(Some("import:3"), None), None);
        assert_eq!(analyze_after(None, None), None);
    }

    #[test]
    fn a_feed_page_holds_at_most_its_members_but_always_one_entry() {
        let delete = CloudChange::Delete {
            id: Uuid::new_v4(),
            kind: ObjectKind::User,
        };
        // Ten entries of 500: exactly the budget.
        let ten: Vec<CloudChange> = (0..10).map(|_| members(500)).collect();
        assert_eq!(page_len(ten.iter()), 10);
        // One more member and the eleventh entry waits for the next page.
        let mut over = ten.clone();
        over.push(delete.clone());
        assert_eq!(page_len(over.iter()), 10);
        // Entries of one member (or no membership) count one each.
        let small: Vec<CloudChange> = (0..500).map(|_| delete.clone()).collect();
        assert_eq!(page_len(small.iter()), 500);
        // An entry bigger than the budget still goes, alone.
        let big = [members(FEED_PAGE_MEMBERS + 1), delete];
        assert_eq!(page_len(big.iter()), 1);
        assert_eq!(page_len(std::iter::empty()), 0);
    }
}
