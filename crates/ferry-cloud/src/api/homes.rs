//! Placing cloud objects in a domain: each user and group belongs to at
//! most one AD domain (its home), and only that domain's agent writes it.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::domains::not_found_as;
use super::parse_id;
use crate::app::AppState;
use crate::directory::{self, WriteCtx, ORIGIN_CLOUD};
use crate::http::auth::AdminAuth;
use crate::http::{ApiError, JsonBody};
use crate::store::StoreError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Place {
    /// Users and groups to place in the domain.
    ids: Vec<Uuid>,
}

/// `POST /api/v1/domains/{id}/objects`: place users and groups that belong
/// to no domain yet in this one; its agent then creates them in AD (or
/// links the same-named AD objects, as the domain's matching policy says).
/// Objects that belong to another domain stay there and are listed.
pub(super) async fn place(
    State(state): State<AppState>,
    auth: AdminAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Place>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "domain")?;
    if body.ids.len() > 10_000 {
        return Err(ApiError::bad_request("place at most 10,000 objects a request"));
    }
    let now = state.now();
    let mut tx = state.store.begin().await?;
    tx.get_domain(auth.org_id, id).await.map_err(not_found_as("domain"))?;
    let ctx = WriteCtx {
        org_id: auth.org_id,
        origin: ORIGIN_CLOUD.into(),
        actor: auth.actor.clone(),
        now,
    };
    let elsewhere = directory::place(&mut tx, &ctx, id, &body.ids)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("user or group"),
            other => other.into(),
        })?;
    let mut refused = Vec::new();
    for (object, home) in &elsewhere {
        let name = tx.get_domain(auth.org_id, *home).await?.settings.name;
        refused.push(json!({ "id": object, "domain_id": home, "domain": name }));
    }
    state.commit(tx).await?;
    Ok(Json(json!({
        "placed": body.ids.len() - elsewhere.len(),
        "elsewhere": refused,
    })))
}
