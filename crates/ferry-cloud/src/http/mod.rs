//! HTTP plumbing shared by the admin and agent APIs: the JSON error form,
//! a JSON body extractor whose failures say what is wrong, client addresses.

pub mod auth;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_proto::agent::ApiErrorBody;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::ratelimit::Limited;
use crate::store::StoreError;

/// An error of `/api/v1` or `/agent/v1`: a status, a stable code, a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// For 429: seconds to wait.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 invalid_request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 not_found.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    /// 401 unauthorized.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 429 rate_limited.
    pub fn limited(l: Limited, what: &str) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("too many failed {what}; try again in {} s", l.retry_after_secs),
            retry_after: Some(l.retry_after_secs),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("object"),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_unavailable",
                    "the directory store failed; nothing was changed, retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A JSON request body. Unlike axum's `Json`, any content type is read as
/// JSON (SCIM clients send `application/scim+json`) and every failure is an
/// [`ApiError`] naming the problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Values from AD (the agent API) are mirrored as they are, except
        // U+0000, which no engine stores alike (PostgreSQL refuses it).
        let path = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_owned())
            .unwrap_or_else(|| req.uri().path().to_owned());
        let strict = !path.starts_with("/agent/");
        let bytes = read_body(req, state).await?;
        if let Some(c) = control_character(&bytes, strict) {
            return Err(ApiError::bad_request(control_message(c)));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
    }
}

/// The first refused control character in a JSON text's strings, if any:
/// U+0000 always, and when `strict` every other control character (C0, DEL,
/// C1) but tab, line feed and carriage return. One pass over the bytes:
/// C0 characters can only come as escapes (`\u0000`), DEL and C1 raw too.
pub fn control_character(json: &[u8], strict: bool) -> Option<u32> {
    let refused = |c: u32| if strict { refused_control(c) } else { c == 0 };
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'\\' if json.get(i + 1) == Some(&b'u') => {
                let code = json
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
                if let Some(c) = code.filter(|c| refused(*c)) {
                    return Some(c);
                }
                i += 6;
            }
            // `\"`, `\\`, `\n`…: skip the escaped character.
            b'\\' => i += 2,
            0x7f if refused(0x7f) => return Some(0x7f),
            // U+0080..U+009F in UTF-8.
            0xc2 if json.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => {
                let c = 0x80 + u32::from(json[i + 1] & 0x1f);
                if refused(c) {
                    return Some(c);
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether a stored string may not hold character `c`: the control
/// characters, except tab, line feed and carriage return.
pub fn refused_control(c: u32) -> bool {
    (c < 0x20 && !matches!(c, 0x09 | 0x0a | 0x0d)) || (0x7f..=0x9f).contains(&c)
}

/// What to tell a client that sent control character `c`.
pub fn control_message(c: u32) -> String {
    format!("the request holds the control character U+{c:04X}, which is not accepted in any value")
}

/// Reads a body, answering 413 when it exceeds the limit (declared or,
/// for a chunked body, found while reading).
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE || caused_by::<http_body_util::LengthLimitError>(&e) {
            body_too_large()
        } else if caused_by::<tower_http::timeout::TimeoutError>(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body did not arrive in time; send it again",
            )
        } else {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        }
    })
}

fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is larger than this service accepts",
    )
}

/// Whether an error is, or was caused by, an `E` (body errors come wrapped).
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the address the proxies forwarded (`unknown` when there is none).
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            client_ip(parts, &state.config.trusted_proxies)
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ))
    }
}

/// The client's address of a request. The TCP peer unless it is one of the
/// `trusted` proxies; then the forwarded chain (`Forwarded: for=`, else
/// `X-Forwarded-For`) is read from the right, skipping trusted proxies, and
/// the first other address is the client's. Anyone can write those headers,
/// so they are believed only as far as trusted proxies vouch for them.
pub fn client_ip(parts: &Parts, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<Option<IpAddr>> = if parts.headers.contains_key(header::FORWARDED) {
        parts
            .headers
            .get_all(header::FORWARDED)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| forwarded_node(v))
                })
            })
            .collect()
    } else {
        parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(forwarded_node)
            .collect()
    };
    let mut client = peer;
    for hop in forwarded.into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            // An unreadable or hidden hop: the last proxy we trust is all we know.
            None => return Some(client),
        }
    }
    Some(client)
}

/// One forwarded address: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:80"`, `2001:db8::1`.
fn forwarded_node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The base URL clients reach us at.
pub fn base_url(config: &crate::app::Config, headers: &axum::http::HeaderMap) -> String {
    if let Some(u) = &config.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)))
        .unwrap_or("localhost");
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// Query parameters whose parse failures are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(format!("bad query parameters: {}", e.body_text())))
    }
}

/// The console's session cookie: it holds the session token the console
/// sends to the API as a bearer token.
pub const SESSION_COOKIE: &str = "ferry_session";

/// A cookie's value (bounded: a session token is far shorter).
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() < 200)
}
