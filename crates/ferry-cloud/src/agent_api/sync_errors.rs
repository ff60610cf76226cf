//! `/agent/v1/sync-errors`: the agent reports a change the other side
//! refused for good (and goes on with everything else), and reports when a
//! later try of the object succeeded.

use axum::extract::State;
use axum::Json;
use ferry_proto::agent::{OpenSyncErrors, SyncDirection, SyncErrorReport, SyncErrorsResolved};
use serde_json::json;

use crate::app::AppState;
use crate::http::auth::AgentAuth;
use crate::http::{ApiError, JsonBody};
use crate::store::retry_due;

/// Longest stored code, name, operation and message: an agent's report is
/// for an admin to read, not a place for megabytes.
const MAX_TEXT: usize = 2000;

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// `POST /agent/v1/sync-errors`.
pub async fn report(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(mut req): JsonBody<SyncErrorReport>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.object_key.trim().is_empty() || req.object_key.len() > 200 {
        return Err(ApiError::bad_request(
            "object_key must name the object (1 to 200 characters)",
        ));
    }
    for field in [
        &mut req.object_name,
        &mut req.operation,
        &mut req.code,
        &mut req.message,
    ] {
        *field = clip(field);
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let row = tx.record_sync_error(agent.org_id, agent.domain_id, &req, now).await?;
    if row.attempts == 1 {
        tx.append_audit(
            agent.org_id,
            &format!("agent:{}", agent.id),
            "sync.error",
            &format!("domain:{}", agent.domain_id),
            &json!({
                "direction": req.direction.as_str(), "object": req.object_name, "operation": req.operation,
                "code": req.code, "message": req.message,
            }),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(domain = %agent.domain_id, direction = req.direction.as_str(), object = %req.object_name, code = %req.code, "sync error recorded");
    Ok(Json(json!({ "id": row.id, "attempts": row.attempts })))
}

/// `POST /agent/v1/sync-errors/resolved`.
pub async fn resolved(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<SyncErrorsResolved>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.object_keys.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10,000 objects at a time"));
    }
    let mut tx = state.store.begin().await?;
    let gone = tx
        .resolve_sync_errors(agent.org_id, agent.domain_id, req.direction, &req.object_keys)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "resolved": gone })))
}

/// `GET /agent/v1/sync-errors`: the objects with an open error.
pub async fn open(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
) -> Result<Json<OpenSyncErrors>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let mut out = OpenSyncErrors::default();
    for (direction, key, last_seen, attempts) in tx.open_sync_errors(agent.org_id, agent.domain_id).await? {
        match direction {
            SyncDirection::CloudToAd => out.cloud_to_ad.push(key),
            SyncDirection::AdToCloud => {
                if retry_due(last_seen, attempts, now) {
                    out.ad_to_cloud_due.push(key.clone());
                }
                out.ad_to_cloud.push(key);
            }
        }
    }
    Ok(Json(out))
}
