//! The admin console: server-rendered pages over the public API.
//!
//! Every read and write a page makes is a request to this service's own
//! `/api/v1` or `/scim/v2`, made in process with the admin's session token.
//! So the console can do nothing the API cannot, and everything it does is
//! validated, audited and explained exactly as the API does it; an API
//! error's message is what the form shows.
//!
//! Sessions: the sign-in form trades e-mail and password for a session
//! token (`POST /api/v1/sessions`), kept in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` behind https). Every form carries a CSRF token derived
//! from the session token (SHA-256), checked on every POST.

// A page that cannot go on answers with the page (or redirect) to show:
// `Result<_, Response>` is the natural shape, and pages are not hot paths.
#![allow(clippy::result_large_err)]

mod pages;
mod scope;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::app::AppState;
use crate::http::{cookie, SESSION_COOKIE};

/// The console's routes (mounted at `/`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/setup", get(pages::setup_form).post(pages::setup))
        .route("/signin", get(pages::signin_form).post(pages::signin))
        .route("/signout", axum::routing::post(pages::signout))
        .route("/directories", get(pages::directories).post(pages::add_domain))
        .route("/directories/{id}", get(pages::domain).post(pages::save_domain))
        .route("/directories/{id}/install", axum::routing::post(pages::install_agent))
        .route(
            "/directories/{id}/agents/{agent}/revoke",
            axum::routing::post(pages::revoke_agent),
        )
        .route(
            "/directories/{id}/quarantine/{qid}/{decision}",
            axum::routing::post(pages::decide_quarantine),
        )
        .route("/directories/{id}/resync", axum::routing::post(pages::resync_domain))
        .route("/directories/{id}/audit", axum::routing::post(pages::audit_domain))
        .route(
            "/directories/{id}/held-deletes/{decision}",
            axum::routing::post(pages::decide_held_deletes),
        )
        .route("/directories/{id}/scope-preview", axum::routing::post(scope::preview))
        .route(
            "/directories/{id}/sync-errors/{eid}/{action}",
            axum::routing::post(pages::sync_error_action),
        )
        .route("/users", get(pages::users).post(pages::create_user))
        .route("/users/{id}", get(pages::user).post(pages::update_user))
        .route("/users/{id}/delete", axum::routing::post(pages::delete_user))
        .route("/groups", get(pages::groups).post(pages::create_group))
        .route("/groups/{id}", get(pages::group).post(pages::update_group))
        .route("/groups/{id}/delete", axum::routing::post(pages::delete_group))
        .route("/audit", get(pages::audit))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .method_not_allowed_fallback(method_not_allowed)
}

/// The fallback of the whole service: a console page for a person, the
/// API's JSON for a path under an API.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let api = ["/api/", "/agent/", "/scim/", "/downloads/", "/healthz"];
    if api.iter().any(|p| path.starts_with(p)) {
        return crate::surface_errors::not_found(uri).await;
    }
    page(
        StatusCode::NOT_FOUND,
        layout(
            "Not found",
            "",
            None,
            html! {
                h1 { "There is no such page" }
                p.error role="alert" { "Nothing is at " code { (path) } "." }
                p { a href="/" { "Back to the console" } }
            },
        ),
    )
}

/// A console address visited with a method it does not take: an action
/// (a form's button) opened as a link, or a page posted to.
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let page_of = path
        .rsplit_once('/')
        .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
    let (what, back) = if method == Method::GET {
        (
            "is an action, done with a button on its page, not a page to open",
            page_of,
        )
    } else {
        ("is a page to open, not a form to send", path)
    };
    page(
        StatusCode::METHOD_NOT_ALLOWED,
        layout(
            "Not here",
            "",
            None,
            html! {
                h1 { "Not here" }
                p.error role="alert" { code { (path) } " " (what) "." }
                p { a href=(back) { "Go to the page" } " · " a href="/" { "Back to the console" } }
            },
        ),
    )
}

async fn css() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("console.css")).into_response()
}

async fn js() -> Response {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

/// The CSRF token of a session: only a holder of the session cookie can
/// compute it.
fn csrf_of(session: &str) -> String {
    hex::encode(Sha256::digest(format!("ferry-console-csrf:{session}").as_bytes()))
}

/// A signed-in admin, as far as the cookie says; the API decides whether
/// the session is still good (a 401 sends the admin to the sign-in page).
pub struct Session {
    token: String,
    /// The CSRF token forms carry.
    pub csrf: String,
    ip: Option<ConnectInfo<std::net::SocketAddr>>,
    host: Option<HeaderValue>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(|| redirect("/signin"))?;
        Ok(Session {
            csrf: csrf_of(&token),
            token,
            ip: client(parts, state),
            host: parts.headers.get(HOST).cloned(),
        })
    }
}

/// The client's address (through trusted proxies), as the connection
/// address of the API requests the console makes in process for it.
fn client(parts: &Parts, state: &AppState) -> Option<ConnectInfo<std::net::SocketAddr>> {
    crate::http::client_ip(parts, &state.config.trusted_proxies).map(|ip| ConnectInfo(std::net::SocketAddr::new(ip, 0)))
}

/// A request's client address and host, for API calls made before sign-in.
pub struct Caller {
    ip: Option<ConnectInfo<std::net::SocketAddr>>,
    host: Option<HeaderValue>,
    secure: bool,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            ip: client(parts, state),
            host: parts.headers.get(HOST).cloned(),
            secure: parts
                .headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes() == b"https"),
        })
    }
}

/// An answer from the API: status and JSON body.
pub struct ApiAnswer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body (`Null` when empty).
    pub body: Value,
}

impl ApiAnswer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The error's message, for a form (API and SCIM errors alike).
    pub fn message(&self) -> String {
        self.body["message"]
            .as_str()
            .or_else(|| self.body["detail"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the request failed ({})", self.status))
    }
}

/// Calls this service's own API in process.
async fn call(
    state: &AppState,
    token: Option<&str>,
    ip: Option<ConnectInfo<std::net::SocketAddr>>,
    host: Option<HeaderValue>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> ApiAnswer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(h) = host {
        req = req.header(HOST, h);
    }
    let req = match &body {
        Some(b) => req
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    let Ok(mut req) = req else {
        return ApiAnswer {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({"message": "the request could not be built"}),
        };
    };
    if let Some(ip) = ip {
        req.extensions_mut().insert(ip);
    }
    let resp = match crate::app::api_router(state.clone()).oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    ApiAnswer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

impl Session {
    /// Calls the API as this admin.
    pub async fn api(&self, state: &AppState, method: Method, uri: &str, body: Option<Value>) -> ApiAnswer {
        call(state, Some(&self.token), self.ip, self.host.clone(), method, uri, body).await
    }

    /// A read the page cannot do without: a 401 means sign in again.
    pub async fn get(&self, state: &AppState, uri: &str) -> Result<Value, Response> {
        let a = self.api(state, Method::GET, uri, None).await;
        match a.status {
            s if s.is_success() => Ok(a.body),
            StatusCode::UNAUTHORIZED => Err(redirect("/signin")),
            StatusCode::NOT_FOUND => Err(page_error(StatusCode::NOT_FOUND, &a.message())),
            _ => Err(page_error(a.status, &a.message())),
        }
    }

    /// Checks a form's CSRF token.
    pub fn check(&self, form_csrf: &str) -> Result<(), Response> {
        if form_csrf.len() == self.csrf.len()
            && form_csrf
                .bytes()
                .zip(self.csrf.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        {
            Ok(())
        } else {
            Err(page_error(
                StatusCode::FORBIDDEN,
                "this form has expired or did not come from this console: reload the page and try again",
            ))
        }
    }
}

/// `303 See Other` to `to`.
pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn session_cookie(token: &str, secure: bool, max_age: i64) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(SET_COOKIE, v);
    }
    r
}

tokio::task_local! {
    /// Whether this request's pages warn that the console travels in clear
    /// text (set for each console request by [`notices`]).
    static CLEAR_TEXT: bool;
}

/// Middleware around the console: pages rendered for the request show the
/// service's notices (the clear-text warning of `--insecure-http`).
pub async fn notices(State(state): State<AppState>, req: Request<Body>, next: axum::middleware::Next) -> Response {
    CLEAR_TEXT.scope(state.config.insecure_http, next.run(req)).await
}

/// A page in the console's frame. `nav`: which section is current.
pub fn layout(title: &str, nav: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Ferry" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Ferry" }
                    @if let Some(c) = csrf {
                        nav {
                            @for (href, label) in [("/directories", "Directories"), ("/users", "Users"), ("/groups", "Groups"), ("/audit", "Audit log")] {
                                a href=(href) aria-current=[(nav == label).then_some("page")] { (label) }
                            }
                        }
                        form.signout method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(c);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                @if CLEAR_TEXT.try_with(|w| *w).unwrap_or(false) {
                    div.banner role="alert" {
                        strong { "Not encrypted. " }
                        "This service speaks plain HTTP on a network address (--insecure-http). Unless a TLS proxy in front of it is the only way in, passwords, tokens and directory data cross the network readable by anyone on the path. Serve TLS with --tls-cert and --tls-key, or put an HTTPS proxy in front and remove --insecure-http."
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A whole page as a response.
pub fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::REFERRER_POLICY, "same-origin"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// An error page that says what is wrong.
pub fn page_error(status: StatusCode, message: &str) -> Response {
    page(
        status,
        layout(
            "Error",
            "",
            None,
            html! {
                h1 { "Something is not right" }
                p.error role="alert" { (message) }
                p { a href="/" { "Back to the console" } }
            },
        ),
    )
}

/// Whether the service has an organization yet (first run otherwise).
async fn has_org(state: &AppState) -> bool {
    match state.store.begin().await {
        Ok(mut tx) => tx.list_orgs().await.is_ok_and(|o| !o.is_empty()),
        Err(_) => true,
    }
}

/// Redirect target of `/`.
async fn start_page(state: &AppState, headers: &HeaderMap) -> &'static str {
    if !has_org(state).await {
        "/setup"
    } else if cookie(headers, SESSION_COOKIE).is_some() {
        "/directories"
    } else {
        "/signin"
    }
}

/// Signs in through the API; the response sets the session cookie.
/// Signs in through the API; a refusal keeps the API's status (401 for a
/// wrong password, 429 while the address and account wait).
async fn sign_in(
    state: &AppState,
    caller: Caller,
    email: &str,
    password: &str,
    to: &str,
) -> Result<Response, (StatusCode, String)> {
    let a = call(
        state,
        None,
        caller.ip,
        caller.host,
        Method::POST,
        "/api/v1/sessions",
        Some(serde_json::json!({"email": email, "password": password})),
    )
    .await;
    if !a.ok() {
        return Err((a.status, a.message()));
    }
    let token = a.body["token"].as_str().unwrap_or_default().to_owned();
    let max_age = state.config.session_ttl_ms / 1000;
    let secure = caller.secure || state.config.https();
    Ok(with_cookie(
        redirect(to),
        // Secure over https: served by us, a TLS proxy in front, or an https public URL.
        &session_cookie(&token, secure, max_age),
    ))
}

/// A form field, trimmed.
pub fn field<'a>(form: &'a std::collections::HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |v| v.trim())
}

/// `State` re-exported for the pages.
pub type St = State<AppState>;
