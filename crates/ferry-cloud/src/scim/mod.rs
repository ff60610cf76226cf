//! SCIM 2.0 (RFC 7643/7644) at `/scim/v2`: discovery, Users and Groups.
//! Authenticated with the same bearer tokens as the admin API.

mod error;
pub mod filter;
pub mod patch;
pub mod resource;
pub mod schema;
mod search;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ferry_proto::record::ObjectKind;
use serde_json::{json, Value};
use uuid::Uuid;

pub use error::ScimError;

use self::resource::{normalize, parse_attr_list, project, split_group, split_user};
use self::schema::{GROUPS, RESOURCE_TYPES, USERS};
use crate::app::AppState;
use crate::directory::{self, WriteCtx, ORIGIN_CLOUD};
use crate::http::auth::AdminAuth;
use crate::http::base_url;
use crate::secrets::hash_password;
use crate::store::{GroupRow, Member, NewGroup, NewUser, StoreError, Tx, UserRow};

/// The SCIM media type.
pub const SCIM_MEDIA_TYPE: &str = "application/scim+json";
const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Routes under `/scim/v2`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema_by_id))
        .route("/Users", get(search::users).post(create_user))
        .route("/Users/.search", post(search::users))
        .route(
            "/Users/{id}",
            get(get_user).put(replace_user).patch(patch_user).delete(delete_user),
        )
        .route("/Groups", get(search::groups).post(create_group))
        .route("/Groups/.search", post(search::groups))
        .route(
            "/Groups/{id}",
            get(get_group)
                .put(replace_group)
                .patch(patch_group)
                .delete(delete_group),
        )
        .route("/.search", post(search::search_root))
}

/// A JSON response with the SCIM media type.
pub fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_MEDIA_TYPE));
    r
}

/// An admin, authenticated for SCIM (errors in SCIM form).
pub struct ScimAuth(AdminAuth);

impl FromRequestParts<AppState> for ScimAuth {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ScimError> {
        AdminAuth::from_request_parts(parts, state)
            .await
            .map(ScimAuth)
            .map_err(|e| ScimError::status(e.status, e.message))
    }
}

/// A SCIM request body.
pub struct ScimBody(Value);

impl FromRequest<AppState> for ScimBody {
    type Rejection = ScimError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ScimError> {
        let bytes = crate::http::read_body(req, state)
            .await
            .map_err(|e| ScimError::status(e.status, e.message))?;
        if let Some(c) = crate::http::control_character(&bytes, true) {
            return Err(ScimError::invalid_value(crate::http::control_message(c)));
        }
        serde_json::from_slice(&bytes)
            .map(ScimBody)
            .map_err(|e| ScimError::bad("invalidSyntax", format!("the body is not valid JSON: {e}")))
    }
}

fn ctx(state: &AppState, auth: &AdminAuth) -> WriteCtx {
    WriteCtx {
        org_id: auth.org_id,
        origin: ORIGIN_CLOUD.to_owned(),
        actor: auth.actor.clone(),
        now: state.now(),
    }
}

fn base(state: &AppState, headers: &HeaderMap) -> String {
    format!("{}/scim/v2", base_url(&state.config, headers))
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, ScimError> {
    Uuid::parse_str(id).map_err(|_| ScimError::not_found(format!("no {what} with id {id:?}")))
}

/// 412 unless `If-Match` (when sent) names the current version.
fn check_if_match(headers: &HeaderMap, version: i64) -> Result<(), ScimError> {
    let Some(v) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let current = format!("W/\"{version}\"");
    if v.trim() == "*" || v.split(',').any(|t| t.trim() == current) {
        Ok(())
    } else {
        Err(ScimError::status(
            StatusCode::PRECONDITION_FAILED,
            format!("the resource changed (now version {current}); read it again"),
        ))
    }
}

fn with_etag(mut r: Response, resource: &Value) -> Response {
    if let Some(v) = resource["meta"]["version"]
        .as_str()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn created(resource: Value) -> Response {
    let location = resource["meta"]["location"].as_str().map(str::to_owned);
    let mut r = with_etag(scim_json(StatusCode::CREATED, &resource), &resource);
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LOCATION, l);
    }
    r
}

// ---- discovery -------------------------------------------------------------

async fn service_provider_config(State(state): State<AppState>, headers: HeaderMap) -> Response {
    scim_json(
        StatusCode::OK,
        &schema::service_provider_config(&base(&state, &headers)),
    )
}

fn list_of(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_RESPONSE],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

async fn resource_types(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let b = base(&state, &headers);
    scim_json(
        StatusCode::OK,
        &list_of(RESOURCE_TYPES.iter().map(|r| r.to_json(&b)).collect()),
    )
}

async fn resource_type(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    match RESOURCE_TYPES.iter().find(|r| r.name == id) {
        Some(r) => scim_json(StatusCode::OK, &r.to_json(&base(&state, &headers))),
        None => ScimError::not_found(format!("no resource type {id:?}")).into_response(),
    }
}

async fn schemas(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let b = base(&state, &headers);
    scim_json(
        StatusCode::OK,
        &list_of(schema::all_schemas().iter().map(|s| s.to_json(&b)).collect()),
    )
}

async fn schema_by_id(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    match schema::all_schemas().into_iter().find(|s| s.id == id) {
        Some(s) => scim_json(StatusCode::OK, &s.to_json(&base(&state, &headers))),
        None => ScimError::not_found(format!("no schema {id:?}")).into_response(),
    }
}

// ---- users -----------------------------------------------------------------

async fn hash(password: Option<String>) -> Result<Option<String>, ScimError> {
    let Some(p) = password else { return Ok(None) };
    let h = tokio::task::spawn_blocking(move || hash_password(&p))
        .await
        .map_err(|_| ScimError::status(StatusCode::INTERNAL_SERVER_ERROR, "password hashing failed"))?
        .map_err(|_| ScimError::status(StatusCode::INTERNAL_SERVER_ERROR, "password hashing failed"))?;
    Ok(Some(h))
}

/// A user from a SCIM body, and the plaintext password it set (to be sealed
/// for the agents, then dropped).
async fn new_user_from(body: &Value) -> Result<(NewUser, Option<String>), ScimError> {
    let u = split_user(normalize(&USERS, body)?)?;
    let user = NewUser {
        username: u.username,
        external_id: u.external_id,
        active: u.active,
        doc: u.doc,
        password_hash: hash(u.password.clone()).await?,
    };
    Ok((user, u.password))
}

async fn create_user(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let (new, password) = new_user_from(&body).await?;
    let ctx = ctx(&state, &auth);
    let mut tx = state.store.begin().await?;
    let row = directory::create_user(&mut tx, &ctx, new, password.as_deref()).await?;
    state.commit(tx).await?;
    Ok(created(resource::render_user(&row, &[], &base(&state, &headers))))
}

async fn load_user(tx: &mut Tx, auth: &AdminAuth, id: &str) -> Result<UserRow, ScimError> {
    let uid = parse_id(id, "user")?;
    tx.get_user(auth.org_id, uid)
        .await?
        .ok_or_else(|| ScimError::not_found(format!("no user with id {id:?}")))
}

async fn respond_user(
    tx: &mut Tx,
    auth: &AdminAuth,
    row: &UserRow,
    base: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    let groups = tx.groups_of(auth.org_id, row.id).await?;
    let full = resource::render_user(row, &groups, base);
    let p = search::ListParams::from_query(q)?;
    let include = parse_attr_list(p.attributes.as_deref())?;
    let exclude = parse_attr_list(p.excluded.as_deref())?;
    let shown = project(&USERS, full.clone(), &include, &exclude);
    Ok(with_etag(scim_json(StatusCode::OK, &shown), &full))
}

async fn get_user(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let mut tx = state.store.begin().await?;
    let row = load_user(&mut tx, &auth, &id).await?;
    respond_user(&mut tx, &auth, &row, &base(&state, &headers), &q).await
}

async fn replace_user(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let (next, password) = new_user_from(&body).await?;
    let ctx = ctx(&state, &auth);
    let mut tx = state.store.begin().await?;
    let current = load_user(&mut tx, &auth, &id).await?;
    check_if_match(&headers, current.version)?;
    let (row, _) = directory::update_user(&mut tx, &ctx, &current, next, password.as_deref()).await?;
    let resp = respond_user(&mut tx, &auth, &row, &base(&state, &headers), &HashMap::new()).await?;
    state.commit(tx).await?;
    Ok(resp)
}

async fn patch_user(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let ctx = ctx(&state, &auth);
    let body = Arc::new(body);
    let mut hashed: Option<(String, String)> = None;
    for _ in 0..WRITE_ATTEMPTS {
        // Read, and let the store go (SQLite has one connection): the PATCH
        // is applied and checked, and a password hashed, with none held.
        let current = load_user(&mut state.store.begin().await?, &auth, &id).await?;
        check_if_match(&headers, current.version)?;
        let (patch_body, read) = (body.clone(), current.clone());
        let u = off_workers(move || {
            let mut working = resource::user_working(&read);
            patch::apply_patch(&USERS, &mut working, &patch_body)?;
            // The working copy never holds the stored password, so one present now was set by this PATCH.
            split_user(normalize(&USERS, &Value::Object(working))?)
        })
        .await?;
        let password_hash = match (&u.password, &hashed) {
            (None, _) => None,
            (Some(p), Some((plain, h))) if p == plain => Some(h.clone()),
            (Some(p), _) => {
                let h = hash(Some(p.clone())).await?.unwrap_or_default();
                hashed = Some((p.clone(), h.clone()));
                Some(h)
            }
        };
        let mut tx = state.store.begin().await?;
        let current = match load_user(&mut tx, &auth, &id).await? {
            // Changed meanwhile: apply the PATCH to the new state.
            now if now.version != current.version => continue,
            now => now,
        };
        let next = NewUser {
            username: u.username,
            external_id: u.external_id,
            active: u.active,
            doc: u.doc,
            password_hash,
        };
        let (row, _) = directory::update_user(&mut tx, &ctx, &current, next, u.password.as_deref()).await?;
        let resp = respond_user(&mut tx, &auth, &row, &base(&state, &headers), &HashMap::new()).await?;
        state.commit(tx).await?;
        return Ok(resp);
    }
    Err(changed_meanwhile())
}

/// Reads before a write that found the object changed since, at most.
const WRITE_ATTEMPTS: usize = 3;

fn changed_meanwhile() -> ScimError {
    ScimError::status(
        StatusCode::CONFLICT,
        "the resource kept changing while this request was applied; send it again",
    )
}

/// Runs CPU-heavy work (a big document patched and validated) on the
/// blocking pool, so the async workers keep answering other requests.
async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ScimError> + Send + 'static,
) -> Result<T, ScimError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ScimError::status(StatusCode::INTERNAL_SERVER_ERROR, "the request could not be processed"))?
}

async fn delete_user(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ScimError> {
    let ctx = ctx(&state, &auth);
    let mut tx = state.store.begin().await?;
    let current = load_user(&mut tx, &auth, &id).await?;
    check_if_match(&headers, current.version)?;
    directory::delete_user(&mut tx, &ctx, current.id).await?;
    state.commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- groups ----------------------------------------------------------------

/// Checks that each member exists in the org (and is of the declared type).
async fn resolve_members(
    tx: &mut Tx,
    auth: &AdminAuth,
    given: &[(Uuid, Option<ObjectKind>)],
) -> Result<Vec<Member>, ScimError> {
    let ids: Vec<Uuid> = given.iter().map(|(id, _)| *id).collect();
    let kinds = tx.object_kinds(auth.org_id, &ids).await?;
    let mut out = Vec::with_capacity(given.len());
    for (id, declared) in given {
        let kind = kinds.get(id).copied().ok_or_else(|| {
            ScimError::invalid_value(format!("member {id} is not a user or group of this organization"))
        })?;
        if declared.is_some_and(|d| d != kind) {
            return Err(ScimError::invalid_value(format!(
                "member {id} is a {}, not a {}",
                kind.as_str(),
                declared.map(ObjectKind::as_str).unwrap_or_default()
            )));
        }
        out.push(Member { id: *id, kind });
    }
    Ok(out)
}

async fn create_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let g = split_group(normalize(&GROUPS, &body)?)?;
    let ctx = ctx(&state, &auth);
    let mut tx = state.store.begin().await?;
    let members = resolve_members(&mut tx, &auth, &g.members).await?;
    let new = NewGroup {
        name: g.name,
        external_id: g.external_id,
        doc: g.doc,
    };
    let row = directory::create_group(&mut tx, &ctx, new, &members)
        .await
        .map_err(self_member)?;
    let members = tx.group_members(auth.org_id, row.id).await?;
    state.commit(tx).await?;
    Ok(created(resource::render_group(&row, &members, &base(&state, &headers))))
}

fn self_member(e: StoreError) -> ScimError {
    match e {
        StoreError::Conflict(m) if m.contains("member of itself") => ScimError::invalid_value(m),
        other => other.into(),
    }
}

async fn load_group(tx: &mut Tx, auth: &AdminAuth, id: &str) -> Result<GroupRow, ScimError> {
    let gid = parse_id(id, "group")?;
    tx.get_group(auth.org_id, gid)
        .await?
        .ok_or_else(|| ScimError::not_found(format!("no group with id {id:?}")))
}

async fn respond_group(
    tx: &mut Tx,
    auth: &AdminAuth,
    row: &GroupRow,
    base: &str,
    q: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    let members = tx.group_members(auth.org_id, row.id).await?;
    let full = resource::render_group(row, &members, base);
    let p = search::ListParams::from_query(q)?;
    let include = parse_attr_list(p.attributes.as_deref())?;
    let exclude = parse_attr_list(p.excluded.as_deref())?;
    let shown = project(&GROUPS, full.clone(), &include, &exclude);
    Ok(with_etag(scim_json(StatusCode::OK, &shown), &full))
}

async fn get_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let mut tx = state.store.begin().await?;
    let row = load_group(&mut tx, &auth, &id).await?;
    respond_group(&mut tx, &auth, &row, &base(&state, &headers), &q).await
}

async fn write_group(
    state: &AppState,
    auth: &AdminAuth,
    headers: &HeaderMap,
    id: &str,
    body: Value,
    is_patch: bool,
) -> Result<Response, ScimError> {
    let b = base(state, headers);
    let ctx = ctx(state, auth);
    let body = Arc::new(body);
    for _ in 0..WRITE_ATTEMPTS {
        // Read, let the store go, work out the new state with no connection
        // held, then write if nothing changed meanwhile.
        let mut tx = state.store.begin().await?;
        let current = load_group(&mut tx, auth, id).await?;
        check_if_match(headers, current.version)?;
        let members = match is_patch {
            true => tx.group_members(auth.org_id, current.id).await?,
            false => Vec::new(),
        };
        drop(tx);
        let (input, read, base_url) = (body.clone(), current.clone(), b.clone());
        let g = off_workers(move || {
            let input = if is_patch {
                let mut working = resource::group_working(&read, &members, &base_url);
                patch::apply_patch(&GROUPS, &mut working, &input)?;
                Value::Object(working)
            } else {
                Value::clone(&input)
            };
            split_group(normalize(&GROUPS, &input)?)
        })
        .await?;
        let mut tx = state.store.begin().await?;
        let current = match load_group(&mut tx, auth, id).await? {
            now if now.version != current.version => continue,
            now => now,
        };
        let members = resolve_members(&mut tx, auth, &g.members).await?;
        let next = NewGroup {
            name: g.name,
            external_id: g.external_id,
            doc: g.doc,
        };
        let (row, _) = directory::update_group(&mut tx, &ctx, &current, next, Some(&members))
            .await
            .map_err(self_member)?;
        let resp = respond_group(&mut tx, auth, &row, &b, &HashMap::new()).await?;
        state.commit(tx).await?;
        return Ok(resp);
    }
    Err(changed_meanwhile())
}

async fn replace_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    write_group(&state, &auth, &headers, &id, body, false).await
}

async fn patch_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    write_group(&state, &auth, &headers, &id, body, true).await
}

async fn delete_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ScimError> {
    let ctx = ctx(&state, &auth);
    let mut tx = state.store.begin().await?;
    let current = load_group(&mut tx, &auth, &id).await?;
    check_if_match(&headers, current.version)?;
    directory::delete_group(&mut tx, &ctx, current.id).await?;
    state.commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
