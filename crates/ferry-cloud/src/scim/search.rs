//! Lists and searches (RFC 7644 §3.4.2, §3.4.3): `GET /Users?filter=…`,
//! `POST /Users/.search`, the same for Groups, and `POST /.search` over both.
//!
//! The store pages what it can answer: no filter, `userName sw/co/ew`
//! (a LIKE on the indexed key), `userName eq`, `displayName eq`. Any other
//! filter is evaluated on rendered resources while the org is walked in
//! batches of [`SCAN_BATCH`] (keyset paging), each in a transaction of its
//! own, so other requests (an agent's heartbeat, `/healthz`) get the store
//! between two batches, and only the page asked for is kept: memory is
//! bounded by a batch and a page, never by the org. Time still grows with
//! the org for such filters; compiling them to SQL is what would remove that.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use uuid::Uuid;

use super::filter::{self, AttrPath, Filter, Op};
use super::resource::{self, parse_attr_list, project, Info};
use super::schema::{ResourceType, GROUPS, MAX_RESULTS, USERS};
use super::{base, scim_json, ScimAuth, ScimBody, ScimError, LIST_RESPONSE};
use crate::app::AppState;
use crate::http::auth::AdminAuth;
use crate::store::{GroupRow, Member, Tx, UserQuery, UserRow};

/// Resources rendered and evaluated per transaction when the store cannot
/// answer a filter.
const SCAN_BATCH: i64 = 200;

/// `GET /Users` and `POST /Users/.search`.
pub(super) async fn users(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    query_users(&state, &auth, &headers, p).await
}

/// `GET /Groups` and `POST /Groups/.search`.
pub(super) async fn groups(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    query_groups(&state, &auth, &headers, p).await
}

/// `POST /.search`: one query over Users and Groups (users first).
pub(super) async fn search_root(
    State(state): State<AppState>,
    ScimAuth(auth): ScimAuth,
    headers: HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    let b = base(&state, &headers);
    let mut w = Window::new(&p)?;
    match p.parsed_filter()? {
        Some(f) => {
            scan(&state, &auth, &f, Scan::Users(None), &b, &mut w).await?;
            scan(&state, &auth, &f, Scan::Groups, &b, &mut w).await?;
        }
        None => {
            // The store pages and counts both; the page may span them.
            let mut tx = state.store.begin().await?;
            let (users, total_users) = tx
                .list_users(
                    auth.org_id,
                    &UserQuery {
                        offset: w.skip as i64,
                        limit: w.take as i64,
                        ..Default::default()
                    },
                )
                .await?;
            for r in render_users(&mut tx, &auth, &users, &b).await? {
                w.page(&USERS, r);
            }
            let groups_skip = w.skip.saturating_sub(total_users as usize) as i64;
            let groups_take = w.take.saturating_sub(w.page.len()) as i64;
            let (groups, total_groups) = tx.list_groups(auth.org_id, groups_skip, groups_take).await?;
            for r in render_groups(&mut tx, &auth, &groups, &b).await? {
                w.page(&GROUPS, r);
            }
            w.total = (total_users + total_groups) as usize;
        }
    }
    Ok(w.respond(&p))
}

async fn query_users(
    state: &AppState,
    auth: &AdminAuth,
    headers: &HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    let b = base(state, headers);
    let f = p.parsed_filter()?;
    let mut w = Window::new(&p)?;
    // No filter, or one the store answers exactly (`userName sw/co/ew`):
    // the store pages and counts.
    let username_like = f.as_ref().and_then(|f| like_on(f, "userName"));
    let Some(f) = f.filter(|_| username_like.is_none()) else {
        let mut tx = state.store.begin().await?;
        let (rows, total) = tx
            .list_users(
                auth.org_id,
                &UserQuery {
                    username_like,
                    offset: w.skip as i64,
                    limit: w.take as i64,
                    ..Default::default()
                },
            )
            .await?;
        for r in render_users(&mut tx, auth, &rows, &b).await? {
            w.page(&USERS, r);
        }
        w.total = total as usize;
        return Ok(w.respond(&p));
    };
    if let Some(name) = eq_on(&f, "userName") {
        // At most one user has the name: the filter decides on it.
        let mut tx = state.store.begin().await?;
        let q = UserQuery {
            username_eq: Some(name.to_owned()),
            limit: 1,
            ..Default::default()
        };
        let (rows, _) = tx.list_users(auth.org_id, &q).await?;
        for r in render_users(&mut tx, auth, &rows, &b).await? {
            w.offer(&USERS, &f, r);
        }
        return Ok(w.respond(&p));
    }
    scan(state, auth, &f, Scan::Users(eq_on(&f, "externalId")), &b, &mut w).await?;
    Ok(w.respond(&p))
}

async fn query_groups(
    state: &AppState,
    auth: &AdminAuth,
    headers: &HeaderMap,
    p: ListParams,
) -> Result<Response, ScimError> {
    let b = base(state, headers);
    let f = p.parsed_filter()?;
    let mut w = Window::new(&p)?;
    let Some(f) = f else {
        let mut tx = state.store.begin().await?;
        let (rows, total) = tx.list_groups(auth.org_id, w.skip as i64, w.take as i64).await?;
        for r in render_groups(&mut tx, auth, &rows, &b).await? {
            w.page(&GROUPS, r);
        }
        w.total = total as usize;
        return Ok(w.respond(&p));
    };
    if let Some(name) = eq_on(&f, "displayName") {
        let mut tx = state.store.begin().await?;
        let rows: Vec<GroupRow> = tx.find_group_by_name(auth.org_id, name).await?.into_iter().collect();
        for r in render_groups(&mut tx, auth, &rows, &b).await? {
            w.offer(&GROUPS, &f, r);
        }
        return Ok(w.respond(&p));
    }
    scan(state, auth, &f, Scan::Groups, &b, &mut w).await?;
    Ok(w.respond(&p))
}

/// What a walk of the org reads.
#[derive(Clone, Copy)]
enum Scan<'a> {
    /// Users (with this `externalId`, when given).
    Users(Option<&'a str>),
    Groups,
}

/// Walks the org, a batch per transaction, keeping the matches in `w`.
/// Each batch is read, the store let go, then rendered and evaluated on the
/// blocking pool, so neither the connection nor the async workers are held
/// by the CPU work.
async fn scan(
    state: &AppState,
    auth: &AdminAuth,
    f: &Filter,
    what: Scan<'_>,
    base: &str,
    w: &mut Window,
) -> Result<(), ScimError> {
    let mut after: Option<String> = None;
    loop {
        let mut tx = state.store.begin().await?;
        let batch = match what {
            Scan::Users(external_id) => {
                let rows = tx
                    .scan_users(auth.org_id, after.as_deref(), external_id, SCAN_BATCH)
                    .await?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                let groups = tx.groups_of_many(auth.org_id, &ids).await?;
                Batch::Users(rows, groups)
            }
            Scan::Groups => {
                let rows = tx.scan_groups(auth.org_id, after.as_deref(), SCAN_BATCH).await?;
                let mut members = Vec::with_capacity(rows.len());
                for row in &rows {
                    members.push(tx.group_members(auth.org_id, row.id).await?);
                }
                Batch::Groups(rows, members)
            }
        };
        drop(tx);
        let (full, last) = (batch.len() as i64 == SCAN_BATCH, batch.last_key());
        let (rt, f, base) = (batch.resource_type(), f.clone(), base.to_owned());
        let matched = super::off_workers(move || {
            Ok(batch
                .render(&base)
                .into_iter()
                .filter(|r| filter::matches(&f, r, &Info(rt)))
                .collect::<Vec<_>>())
        })
        .await?;
        for r in matched {
            w.keep(rt, r);
        }
        match last {
            Some(key) if full => after = Some(key),
            _ => return Ok(()),
        }
    }
}

/// One batch of a walk, as read.
enum Batch {
    Users(Vec<UserRow>, HashMap<Uuid, Vec<(Uuid, String)>>),
    Groups(Vec<GroupRow>, Vec<Vec<Member>>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Users(rows, _) => rows.len(),
            Batch::Groups(rows, _) => rows.len(),
        }
    }

    /// The key the next batch starts after.
    fn last_key(&self) -> Option<String> {
        match self {
            Batch::Users(rows, _) => rows.last().map(|r| r.username.to_lowercase()),
            Batch::Groups(rows, _) => rows.last().map(|r| r.name.to_lowercase()),
        }
    }

    fn resource_type(&self) -> &'static ResourceType {
        match self {
            Batch::Users(..) => &USERS,
            Batch::Groups(..) => &GROUPS,
        }
    }

    fn render(self, base: &str) -> Vec<Value> {
        match self {
            Batch::Users(rows, mut groups) => rows
                .iter()
                .map(|row| resource::render_user(row, &groups.remove(&row.id).unwrap_or_default(), base))
                .collect(),
            Batch::Groups(rows, members) => rows
                .iter()
                .zip(members)
                .map(|(row, m)| resource::render_group(row, &m, base))
                .collect(),
        }
    }
}

/// The page a list asks for (`startIndex`, `count`), projected as asked,
/// and the number of matches.
struct Window {
    skip: usize,
    take: usize,
    include: Vec<AttrPath>,
    exclude: Vec<AttrPath>,
    total: usize,
    page: Vec<Value>,
}

impl Window {
    fn new(p: &ListParams) -> Result<Window, ScimError> {
        Ok(Window {
            skip: p.start_index - 1,
            take: p.count,
            include: parse_attr_list(p.attributes.as_deref())?,
            exclude: parse_attr_list(p.excluded.as_deref())?,
            total: 0,
            page: Vec::new(),
        })
    }

    /// A resource of a page the store already cut.
    fn page(&mut self, rt: &ResourceType, r: Value) {
        self.page.push(project(rt, r, &self.include, &self.exclude));
    }

    /// A candidate: counted and kept (when in the window) if it matches.
    fn offer(&mut self, rt: &ResourceType, f: &Filter, r: Value) {
        if filter::matches(f, &r, &Info(rt)) {
            self.keep(rt, r);
        }
    }

    /// A match: counted, and kept when in the window.
    fn keep(&mut self, rt: &ResourceType, r: Value) {
        if self.total >= self.skip && self.page.len() < self.take {
            self.page(rt, r);
        }
        self.total += 1;
    }

    fn respond(self, p: &ListParams) -> Response {
        scim_json(
            StatusCode::OK,
            &json!({
                "schemas": [LIST_RESPONSE],
                "totalResults": self.total,
                "startIndex": p.start_index,
                "itemsPerPage": self.page.len(),
                "Resources": self.page,
            }),
        )
    }
}

async fn render_users(tx: &mut Tx, auth: &AdminAuth, rows: &[UserRow], base: &str) -> Result<Vec<Value>, ScimError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut groups = tx.groups_of_many(auth.org_id, &ids).await?;
    Ok(rows
        .iter()
        .map(|row| resource::render_user(row, &groups.remove(&row.id).unwrap_or_default(), base))
        .collect())
}

async fn render_groups(tx: &mut Tx, auth: &AdminAuth, rows: &[GroupRow], base: &str) -> Result<Vec<Value>, ScimError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let members = tx.group_members(auth.org_id, row.id).await?;
        out.push(resource::render_group(row, &members, base));
    }
    Ok(out)
}

/// Query parameters of a list (from the URL or a `.search` body).
#[derive(Debug, Default)]
pub(super) struct ListParams {
    filter: Option<String>,
    start_index: usize,
    count: usize,
    pub(super) attributes: Option<String>,
    pub(super) excluded: Option<String>,
}

/// A list's parameters: from the query string of a `GET`, from the
/// `SearchRequest` body of a `POST …/.search`.
impl FromRequest<AppState> for ListParams {
    type Rejection = ScimError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ScimError> {
        if req.method() == Method::GET {
            let (mut parts, _) = req.into_parts();
            let Query(q) = Query::<HashMap<String, String>>::from_request_parts(&mut parts, state)
                .await
                .map_err(|e| ScimError::invalid_value(format!("bad query parameters: {}", e.body_text())))?;
            return ListParams::from_query(&q);
        }
        let ScimBody(body) = ScimBody::from_request(req, state).await?;
        ListParams::from_body(&body)
    }
}

impl ListParams {
    pub(super) fn from_query(q: &HashMap<String, String>) -> Result<Self, ScimError> {
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

/// `attr eq "value"` on a top-level attribute, as the whole filter or as
/// one term of a top-level `and`: every match has that value, so an index
/// narrows the candidates and the filter decides on them.
fn eq_on<'a>(f: &'a Filter, attr: &str) -> Option<&'a str> {
    match f {
        Filter::Compare(p, Op::Eq, Value::String(v))
            if p.sub.is_none() && p.attr.eq_ignore_ascii_case(attr) && p.urn.is_none() =>
        {
            Some(v)
        }
        Filter::And(terms) => terms.iter().find_map(|t| match t {
            Filter::And(_) => None,
            t => eq_on(t, attr),
        }),
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
