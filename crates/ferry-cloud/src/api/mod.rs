//! The admin REST API, `/api/v1`: JSON in and out, bearer-token auth,
//! errors as `{"code", "message"}`. Described by `openapi.json`.

mod audit;
mod domains;
mod homes;
pub use domains::agent_status;
mod sessions;
pub mod sync_errors;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::app::AppState;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/sessions", post(sessions::sign_in))
        .route("/sessions/current", delete(sessions::sign_out))
        .route("/tokens", post(sessions::create_token))
        .route("/domains", post(domains::create).get(domains::list))
        .route(
            "/domains/{id}",
            get(domains::get_one).patch(domains::update).delete(domains::remove),
        )
        .route("/domains/{id}/connect-keys", post(domains::create_connect_key))
        .route("/domains/{id}/agents", get(domains::list_agents))
        .route("/domains/{id}/agents/{agent_id}", delete(domains::revoke_agent))
        .route("/domains/{id}/quarantine", get(domains::list_quarantine))
        .route("/domains/{id}/held-deletes", get(domains::list_held_deletes))
        .route(
            "/domains/{id}/held-deletes/approve",
            post(domains::approve_held_deletes),
        )
        .route("/domains/{id}/held-deletes/reject", post(domains::reject_held_deletes))
        .route(
            "/domains/{id}/quarantine/{qid}/approve",
            post(domains::approve_quarantine),
        )
        .route(
            "/domains/{id}/quarantine/{qid}/reject",
            post(domains::reject_quarantine),
        )
        .route(
            "/domains/{id}/sync-errors",
            get(sync_errors::list).delete(sync_errors::dismiss_all),
        )
        .route("/domains/{id}/sync-errors/retry", post(sync_errors::retry_all))
        .route("/domains/{id}/resync", post(sync_errors::resync))
        .route("/domains/{id}/audit", post(sync_errors::audit_now))
        .route("/domains/{id}/objects", post(homes::place))
        .route("/domains/{id}/scope-preview", post(domains::scope_preview))
        .route("/domains/{id}/sync-errors/{error_id}", delete(sync_errors::dismiss_one))
        .route(
            "/domains/{id}/sync-errors/{error_id}/retry",
            post(sync_errors::retry_one),
        )
        .route("/audit", get(audit::list))
        .route("/objects/{id}/links", get(object_links))
}

/// `GET /api/v1/objects/{id}/links`: where a user or group comes from — the
/// AD objects (domain, DN) it is linked to and when each last synced.
async fn object_links(
    axum::extract::State(state): axum::extract::State<AppState>,
    auth: crate::http::auth::AdminAuth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<serde_json::Value>, crate::http::ApiError> {
    let id = parse_id(&id, "object")?;
    let mut tx = state.store.begin().await?;
    if tx.object_kind(auth.org_id, id).await?.is_none() {
        return Err(crate::http::ApiError::not_found("object"));
    }
    let kind = tx
        .object_kind(auth.org_id, id)
        .await?
        .unwrap_or(ferry_proto::record::ObjectKind::User);
    let home = match tx.home_of(auth.org_id, kind, id).await? {
        Some(h) => Some((h, tx.get_domain(auth.org_id, h).await?.settings.name)),
        None => None,
    };
    let mut out = Vec::new();
    for l in tx.links_of(auth.org_id, id).await? {
        let domain = tx.get_domain(auth.org_id, l.domain_id).await?;
        out.push(serde_json::json!({
            "domain_id": l.domain_id,
            "domain": domain.settings.name,
            "dn": l.ad_dn,
            "synced_at": l.synced_at,
        }));
    }
    Ok(axum::Json(serde_json::json!({
        "home_domain": home.as_ref().map(|h| h.0),
        "home_domain_name": home.map(|h| h.1),
        "links": out,
    })))
}

async fn openapi() -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Parses a path id; a malformed id is as unknown as a missing one.
pub(crate) fn parse_id(s: &str, what: &str) -> Result<uuid::Uuid, crate::http::ApiError> {
    uuid::Uuid::parse_str(s).map_err(|_| crate::http::ApiError::not_found(what))
}
