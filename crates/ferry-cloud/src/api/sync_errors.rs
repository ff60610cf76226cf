//! A domain's sync errors: changes the other side refused for good. The
//! agent records them and goes on; an admin reads them here, fixes the
//! cause, and retries (or dismisses) them.

use axum::extract::{Path, State};
use axum::Json;
use ferry_proto::agent::{ErrorKey, SyncDirection};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::domains::not_found_as;
use super::parse_id;
use crate::app::AppState;
use crate::directory::{self, WriteCtx, ORIGIN_CLOUD};
use crate::http::auth::AdminAuth;
use crate::http::{ApiError, ApiQuery};
use crate::store::{SyncErrorRow, Tx};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    limit: Option<i64>,
    /// The `next` of the previous page.
    before: Option<String>,
}

/// An admin's write in the cloud itself.
fn admin_ctx(auth: &AdminAuth, now: i64) -> WriteCtx {
    WriteCtx {
        org_id: auth.org_id,
        origin: ORIGIN_CLOUD.into(),
        actor: auth.actor.clone(),
        now,
    }
}

/// Opens a transaction on a domain of the admin's org (404 when it has none such).
async fn domain_tx(state: &AppState, auth: &AdminAuth, id: Uuid) -> Result<Tx, ApiError> {
    let mut tx = state.store.begin().await?;
    tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    Ok(tx)
}

/// What an admin can do about an error, in words.
pub fn advice(e: &SyncErrorRow) -> &'static str {
    let code = e.code.as_str();
    if code == "protected" {
        "Ferry never writes to AD's protected objects (built-in, privileged or critical accounts, members of protected groups, agents' service accounts). Rename the cloud object so it does not land on one, or dismiss this error."
    } else if code.contains("other_domain") || code.contains("already_linked") {
        "The object belongs to another domain (or its AD object to another cloud object): each object syncs with one domain. Rename one of them, or dismiss this error."
    } else if code.contains("entryAlreadyExists") || code.contains(" 68") {
        "An object with the same name exists in AD. Rename one of them (or link them), then retry."
    } else if code.contains("insufficientAccessRights") || code.contains(" 50") {
        "The service account may not write this object (a protected or privileged account, or a right missing): check `ferry-agent check`, then retry."
    } else if code.contains("constraintViolation") || code.contains(" 19") {
        "AD refused a value (a password policy, a name rule, or a duplicate UPN): change it in the cloud, then retry."
    } else {
        "Fix what the message names, then retry."
    }
}

fn to_json(e: &SyncErrorRow) -> Value {
    json!({
        "id": e.id, "direction": e.direction.as_str(), "object_key": e.object_key, "object_kind": e.object_kind.as_str(),
        "object_name": e.object_name, "operation": e.operation, "code": e.code, "message": e.message,
        "first_seen": e.first_seen, "last_seen": e.last_seen, "attempts": e.attempts, "advice": advice(e),
    })
}

/// `GET /api/v1/domains/{id}/sync-errors`: newest first, paged.
pub(super) async fn list(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let before = match page.before.as_deref() {
        None | Some("") => None,
        Some(c) => Some(parse_cursor(c)?),
    };
    let mut tx = domain_tx(&state, &auth, id).await?;
    let rows = tx.list_sync_errors(auth.org_id, id, limit, before).await?;
    let total = tx.count_sync_errors(auth.org_id, id).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| format!("{}.{}", r.last_seen, r.id)))
        .flatten();
    let items: Vec<Value> = rows.iter().map(to_json).collect();
    Ok(Json(json!({ "sync_errors": items, "total": total, "next": next })))
}

fn parse_cursor(c: &str) -> Result<(i64, Uuid), ApiError> {
    let bad = || ApiError::bad_request("before must be the `next` of the previous page");
    let (at, id) = c.split_once('.').ok_or_else(bad)?;
    Ok((at.parse().map_err(|_| bad())?, id.parse().map_err(|_| bad())?))
}

/// `POST /api/v1/domains/{id}/sync-errors/{error_id}/retry`.
pub(super) async fn retry_one(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path((id, eid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let eid = parse_id(&eid, "sync error")?;
    let mut tx = domain_tx(&state, &auth, id).await?;
    let e = tx
        .get_sync_error(auth.org_id, id, eid)
        .await
        .map_err(not_found_as("sync error"))?;
    let retried = retry(&mut tx, &auth, state.now(), &[e]).await?;
    tx.commit().await?;
    Ok(Json(json!({ "retried": retried })))
}

/// `POST /api/v1/domains/{id}/sync-errors/retry`: every open error.
pub(super) async fn retry_all(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let mut tx = domain_tx(&state, &auth, id).await?;
    // Read them all first: a retry changes the order they page in.
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = tx.list_sync_errors(auth.org_id, id, 500, before).await?;
        let last = page.last().map(|l| (l.last_seen, l.id));
        let full = page.len() == 500;
        all.extend(page);
        match last {
            Some(l) if full => before = Some(l),
            _ => break,
        }
    }
    let retried = retry(&mut tx, &auth, state.now(), &all).await?;
    tx.commit().await?;
    Ok(Json(json!({ "retried": retried })))
}

/// Retries errors: a cloud → AD change goes to the agent again as the
/// object is now (the error clears when the agent applies it); an AD →
/// cloud change becomes due at once: the agent reads the object from AD
/// again and pushes it within seconds.
async fn retry(tx: &mut Tx, auth: &AdminAuth, now: i64, errors: &[SyncErrorRow]) -> Result<u64, ApiError> {
    let ctx = admin_ctx(auth, now);
    let mut retried = 0;
    for e in errors {
        match e.direction {
            SyncDirection::CloudToAd => {
                let again = match ErrorKey::parse(&e.object_key) {
                    Some(ErrorKey::Object(object)) => directory::redeliver(tx, &ctx, object).await?,
                    Some(ErrorKey::Membership { group, member }) => {
                        directory::redeliver_membership(tx, &ctx, group, member).await?
                    }
                    None => continue,
                };
                if again {
                    retried += 1;
                } else {
                    // The object is gone from the cloud: nothing is left to retry.
                    tx.dismiss_sync_errors(auth.org_id, e.domain_id, Some(e.id)).await?;
                }
            }
            SyncDirection::AdToCloud => {
                tx.retry_sync_errors_now(auth.org_id, e.domain_id, &[e.id]).await?;
                retried += 1;
            }
        }
    }
    if retried > 0 {
        let details = json!({ "errors": retried });
        directory::audit(
            tx,
            &ctx,
            "sync.retry",
            &format!("domain:{}", errors[0].domain_id),
            details,
        )
        .await?;
    }
    Ok(retried)
}

/// `DELETE /api/v1/domains/{id}/sync-errors/{error_id}`.
pub(super) async fn dismiss_one(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path((id, eid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    let eid = parse_id(&eid, "sync error")?;
    dismiss(state, auth, id, Some(eid)).await
}

/// `DELETE /api/v1/domains/{id}/sync-errors`: every open error.
pub(super) async fn dismiss_all(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    dismiss(state, auth, id, None).await
}

async fn dismiss(state: AppState, auth: AdminAuth, id: Uuid, eid: Option<Uuid>) -> Result<Json<Value>, ApiError> {
    let mut tx = domain_tx(&state, &auth, id).await?;
    let gone = tx.dismiss_sync_errors(auth.org_id, id, eid).await?;
    if eid.is_some() && gone == 0 {
        return Err(ApiError::not_found("sync error"));
    }
    let ctx = admin_ctx(&auth, state.now());
    directory::audit(
        &mut tx,
        &ctx,
        "sync.dismiss",
        &format!("domain:{id}"),
        json!({ "errors": gone }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({ "dismissed": gone })))
}

/// `POST /api/v1/domains/{id}/resync`: the agent reads the whole domain
/// again (links by objectGUID keep it free of duplicates), then compares
/// both sides whole: what a re-read cannot see (a cloud change that never
/// reached AD) is repaired too.
pub(super) async fn resync(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ask_agent(&state, &auth, &id, true).await
}

/// `POST /api/v1/domains/{id}/audit`: the agent compares both sides whole
/// now (it does every 15 minutes anyway) and repairs what differs; the
/// result shows on the domain's agents (`audit`) and in the audit log
/// (`sync.drift_repaired`).
pub(super) async fn audit_now(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ask_agent(&state, &auth, &id, false).await
}

/// Asks the domain's agent to compare both sides whole, after reading the
/// domain again (`reread`) or not.
async fn ask_agent(state: &AppState, auth: &AdminAuth, id: &str, reread: bool) -> Result<Json<Value>, ApiError> {
    let id = parse_id(id, "domain")?;
    let mut tx = state.store.begin().await?;
    if reread {
        tx.reset_ad_cookie(auth.org_id, id)
            .await
            .map_err(not_found_as("domain"))?;
    }
    tx.request_audit(auth.org_id, id, state.now())
        .await
        .map_err(not_found_as("domain"))?;
    let (action, answer) = if reread {
        (
            "sync.resync",
            json!({ "resync": "requested: the agent reads the domain again within seconds" }),
        )
    } else {
        (
            "sync.audit_requested",
            json!({ "audit": "requested: the agent compares both sides whole within seconds" }),
        )
    };
    let ctx = admin_ctx(auth, state.now());
    directory::audit(&mut tx, &ctx, action, &format!("domain:{id}"), json!({})).await?;
    tx.commit().await?;
    Ok(Json(answer))
}
