//! The audit log, newest first, paged by sequence number.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::http::auth::AdminAuth;
use crate::http::{ApiError, ApiQuery};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    limit: Option<i64>,
    before: Option<i64>,
}

/// `GET /api/v1/audit?limit=N&before=SEQ`.
pub(super) async fn list(
    State(state): State<AppState>,
    auth: AdminAuth,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let mut tx = state.store.begin().await?;
    let entries = tx.list_audit(auth.org_id, page.before, limit).await?;
    let next = if entries.len() as i64 == limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(json!({ "entries": entries, "next_before": next })))
}
