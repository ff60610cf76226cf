//! SCIM 2.0 (RFC 7643/7644) at `/scim/v2`: discovery, Users and Groups.
//! Authenticated with the same bearer tokens as the admin API.

mod error;
pub mod filter;
pub mod patch;
pub mod resource;
pub mod schema;

use std::collections::HashMap;

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

use self::filter::{Filter, Op};
use self::resource::{normalize, parse_attr_list, project, split_group, split_user, Info};
use self::schema::{ResourceType, GROUPS, MAX_RESULTS, RESOURCE_TYPES, USERS};
use crate::app::AppState;
use crate::directory::{self, WriteCtx, ORIGIN_CLOUD};
use crate::http::auth::AdminAuth;
use crate::http::base_url;
use crate::secrets::hash_password;
use crate::store::{GroupRow, Member, NewGroup, NewUser, StoreError, Tx, UserQuery, UserRow};

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
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/.search", post(search_users))
        .route(
            "/Users/{id}",
            get(get_user).put(replace_user).patch(patch_user).delete(delete_user),
        )
        .route("/Groups", get(list_groups).post(create_group))
        .route("/Groups/.search", post(search_groups))
        .route(
            "/Groups/{id}",
            get(get_group)
                .put(replace_group)
                .patch(patch_group)
                .delete(delete_group),
        )
        .route("/.search", post(search_root))
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

/// `POST /.search`: one query over Users and Groups (users first).
async fn search_root(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let p = ListParams::from_body(&body)?;
    let b = base(&state, &headers);
    let f = p.parsed_filter()?;
    let include = parse_attr_list(p.attributes.as_deref())?;
    let exclude = parse_attr_list(p.excluded.as_deref())?;
    let mut tx = state.store.begin().await?;
    let all = UserQuery {
        offset: 0,
        limit: i64::MAX,
        ..Default::default()
    };
    let (users, _) = tx.list_users(auth.org_id, &all).await?;
    let (groups, _) = tx.list_groups(auth.org_id, 0, i64::MAX).await?;
    let mut matched = Vec::new();
    for (rt, resources) in [
        (&USERS, render_users(&mut tx, &auth, &users, &b).await?),
        (&GROUPS, render_groups(&mut tx, &auth, &groups, &b).await?),
    ] {
        for r in resources {
            if f.as_ref().is_none_or(|f| filter::matches(f, &r, &Info(rt))) {
                matched.push(project(rt, r, &include, &exclude));
            }
        }
    }
    let total = matched.len();
    let page: Vec<Value> = matched.into_iter().skip(p.start_index - 1).take(p.count).collect();
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_RESPONSE],
            "totalResults": total,
            "startIndex": p.start_index,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
    ))
}

// ---- list and search -------------------------------------------------------

/// Query parameters of a list (from the URL or a `.search` body).
#[derive(Debug, Default)]
struct ListParams {
    filter: Option<String>,
    start_index: usize,
    count: usize,
    attributes: Option<String>,
    excluded: Option<String>,
}

impl ListParams {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, ScimError> {
        let num = |k: &str| -> Result<Option<i64>, ScimError> {
            q.get(k)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| ScimError::invalid_value(format!("{k} must be an integer")))
                })
                .transpose()
        };
        Self::new(
            q.get("filter").cloned(),
            num("startIndex")?,
            num("count")?,
            q.get("attributes").cloned(),
            q.get("excludedAttributes").cloned(),
        )
    }

    fn from_body(v: &Value) -> Result<Self, ScimError> {
        if !v.is_object() {
            return Err(ScimError::bad("invalidSyntax", "a search request is a JSON object"));
        }
        if v.get("filter").is_some_and(|f| !f.is_string() && !f.is_null()) {
            return Err(ScimError::bad("invalidFilter", "filter must be a string"));
        }
        let list = |k: &str| -> Option<String> {
            match &v[k] {
                Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
                Value::String(s) => Some(s.clone()),
                _ => None,
            }
        };
        Self::new(
            v["filter"].as_str().map(str::to_owned),
            v["startIndex"].as_i64(),
            v["count"].as_i64(),
            list("attributes"),
            list("excludedAttributes"),
        )
    }

    fn new(
        filter: Option<String>,
        start: Option<i64>,
        count: Option<i64>,
        attributes: Option<String>,
        excluded: Option<String>,
    ) -> Result<Self, ScimError> {
        if attributes.is_some() && excluded.is_some() {
            return Err(ScimError::invalid_value(
                "attributes and excludedAttributes cannot be used together",
            ));
        }
        Ok(ListParams {
            filter: filter.filter(|f| !f.trim().is_empty()),
            // RFC 7644 §3.4.2.4: startIndex < 1 means 1; count < 0 means 0.
            start_index: start.unwrap_or(1).max(1) as usize,
            count: (count.unwrap_or(MAX_RESULTS as i64).clamp(0, MAX_RESULTS as i64)) as usize,
            attributes,
            excluded,
        })
    }

    fn parsed_filter(&self) -> Result<Option<Filter>, ScimError> {
        self.filter
            .as_deref()
            .map(|f| filter::parse(f).map_err(|e| ScimError::bad("invalidFilter", e)))
            .transpose()
    }
}

/// `attr eq "value"` on a top-level attribute: something an index answers.
fn eq_on<'a>(f: &'a Filter, attr: &str) -> Option<&'a str> {
    match f {
        Filter::Compare(p, Op::Eq, Value::String(v))
            if p.sub.is_none() && p.attr.eq_ignore_ascii_case(attr) && p.urn.is_none() =>
        {
            Some(v)
        }
        _ => None,
    }
}

/// `attr sw|co|ew "v"` as a LIKE pattern, when that is the whole filter.
fn like_on(f: &Filter, attr: &str) -> Option<String> {
    let Filter::Compare(p, op, Value::String(v)) = f else {
        return None;
    };
    if p.sub.is_some() || p.urn.is_some() || !p.attr.eq_ignore_ascii_case(attr) {
        return None;
    }
    let esc: String = v
        .to_lowercase()
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    match op {
        Op::Sw => Some(format!("{esc}%")),
        Op::Co => Some(format!("%{esc}%")),
        Op::Ew => Some(format!("%{esc}")),
        _ => None,
    }
}

fn list_response(rt: &ResourceType, p: &ListParams, total: usize, page: Vec<Value>) -> Result<Response, ScimError> {
    let include = parse_attr_list(p.attributes.as_deref())?;
    let exclude = parse_attr_list(p.excluded.as_deref())?;
    let resources: Vec<Value> = page.into_iter().map(|r| project(rt, r, &include, &exclude)).collect();
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_RESPONSE],
            "totalResults": total,
            "startIndex": p.start_index,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    ))
}

async fn list_users(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let p = ListParams::from_query(&q)?;
    query_users(&state, &auth, &headers, p).await
}

async fn search_users(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let p = ListParams::from_body(&body)?;
    query_users(&state, &auth, &headers, p).await
}

async fn query_users(
    state: &AppState,
    auth: &AdminAuth,
    headers: &HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    let b = base(state, headers);
    let f = p.parsed_filter()?;
    let mut tx = state.store.begin().await?;
    let offset = (p.start_index - 1) as i64;
    // No filter, or one the store answers exactly (`userName sw/co/ew`):
    // the store pages it (a search box over 100,000 users must not render
    // them all).
    let username_like = f.as_ref().and_then(|f| like_on(f, "userName"));
    let Some(f) = f.filter(|_| username_like.is_none()) else {
        let (rows, total) = tx
            .list_users(
                auth.org_id,
                &UserQuery {
                    username_like,
                    offset,
                    limit: p.count as i64,
                    ..Default::default()
                },
            )
            .await?;
        let page = render_users(&mut tx, auth, &rows, &b).await?;
        return list_response(&USERS, &p, total as usize, page);
    };
    // Index-answerable equality narrows the candidates; the filter decides.
    let q = UserQuery {
        username_eq: eq_on(&f, "userName").map(str::to_owned),
        external_id_eq: eq_on(&f, "externalId").map(str::to_owned),
        username_like: None,
        offset: 0,
        limit: i64::MAX,
    };
    let (rows, _) = tx.list_users(auth.org_id, &q).await?;
    let candidates = render_users(&mut tx, auth, &rows, &b).await?;
    let matched: Vec<Value> = candidates
        .into_iter()
        .filter(|r| filter::matches(&f, r, &Info(&USERS)))
        .collect();
    let total = matched.len();
    let page = matched.into_iter().skip(offset as usize).take(p.count).collect();
    list_response(&USERS, &p, total, page)
}

async fn render_users(tx: &mut Tx, auth: &AdminAuth, rows: &[UserRow], base: &str) -> Result<Vec<Value>, ScimError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut groups = tx.groups_of_many(auth.org_id, &ids).await?;
    Ok(rows
        .iter()
        .map(|row| resource::render_user(row, &groups.remove(&row.id).unwrap_or_default(), base))
        .collect())
}

async fn list_groups(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ScimError> {
    let p = ListParams::from_query(&q)?;
    query_groups(&state, &auth, &headers, p).await
}

async fn search_groups(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    let p = ListParams::from_body(&body)?;
    query_groups(&state, &auth, &headers, p).await
}

async fn query_groups(
    state: &AppState,
    auth: &AdminAuth,
    headers: &HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    let b = base(state, headers);
    let f = p.parsed_filter()?;
    let mut tx = state.store.begin().await?;
    let offset = (p.start_index - 1) as i64;
    let Some(f) = f else {
        let (rows, total) = tx.list_groups(auth.org_id, offset, p.count as i64).await?;
        let page = render_groups(&mut tx, auth, &rows, &b).await?;
        return list_response(&GROUPS, &p, total as usize, page);
    };
    let rows = match eq_on(&f, "displayName") {
        Some(name) => tx.find_group_by_name(auth.org_id, name).await?.into_iter().collect(),
        None => tx.list_groups(auth.org_id, 0, i64::MAX).await?.0,
    };
    let candidates = render_groups(&mut tx, auth, &rows, &b).await?;
    let matched: Vec<Value> = candidates
        .into_iter()
        .filter(|r| filter::matches(&f, r, &Info(&GROUPS)))
        .collect();
    let total = matched.len();
    let page = matched.into_iter().skip(offset as usize).take(p.count).collect();
    list_response(&GROUPS, &p, total, page)
}

async fn render_groups(tx: &mut Tx, auth: &AdminAuth, rows: &[GroupRow], base: &str) -> Result<Vec<Value>, ScimError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let members = tx.group_members(auth.org_id, row.id).await?;
        out.push(resource::render_group(row, &members, base));
    }
    Ok(out)
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
    let p = ListParams::from_query(q)?;
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
    // A PATCH that sets a password is read, hashed with no store connection
    // held (argon2 takes tens of milliseconds; SQLite has one connection),
    // then written if the user did not change meanwhile.
    let mut hashed: Option<(String, String)> = None;
    for _ in 0..3 {
        let mut tx = state.store.begin().await?;
        let current = load_user(&mut tx, &auth, &id).await?;
        check_if_match(&headers, current.version)?;
        let mut working = resource::user_working(&current);
        patch::apply_patch(&USERS, &mut working, &body)?;
        // The working copy never holds the stored password, so one present now was set by this PATCH.
        let u = split_user(normalize(&USERS, &Value::Object(working))?)?;
        let password_hash = match (&u.password, &hashed) {
            (None, _) => None,
            (Some(p), Some((plain, h))) if p == plain => Some(h.clone()),
            (Some(p), _) => {
                drop(tx);
                let h = hash(Some(p.clone())).await?.unwrap_or_default();
                hashed = Some((p.clone(), h));
                continue;
            }
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
    Err(ScimError::status(
        StatusCode::CONFLICT,
        "the user kept changing while this PATCH was applied; send it again",
    ))
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
    let mut out = Vec::with_capacity(given.len());
    for (id, declared) in given {
        let kind = tx.object_kind(auth.org_id, *id).await?.ok_or_else(|| {
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
    let p = ListParams::from_query(q)?;
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
    body: &Value,
    is_patch: bool,
) -> Result<Response, ScimError> {
    let b = base(state, headers);
    let ctx = ctx(state, auth);
    let mut tx = state.store.begin().await?;
    let current = load_group(&mut tx, auth, id).await?;
    check_if_match(headers, current.version)?;
    let input = if is_patch {
        let members = tx.group_members(auth.org_id, current.id).await?;
        let mut working = resource::group_working(&current, &members, &b);
        patch::apply_patch(&GROUPS, &mut working, body)?;
        Value::Object(working)
    } else {
        body.clone()
    };
    let g = split_group(normalize(&GROUPS, &input)?)?;
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
    Ok(resp)
}

async fn replace_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    write_group(&state, &auth, &headers, &id, &body, false).await
}

async fn patch_group(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ScimError> {
    write_group(&state, &auth, &headers, &id, &body, true).await
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
