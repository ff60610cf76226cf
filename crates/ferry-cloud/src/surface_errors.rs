//! The router's own answers in each JSON surface's error form: a path no
//! route serves, and axum's rejections (a path that does not decode, a
//! method a route does not serve, an unreadable body), which are plain text
//! otherwise. It sits above the surfaces (SCIM errors, API errors), so
//! `http` below them imports neither.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;
use crate::scim::ScimError;

/// The answer for paths no route serves.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/scim/") {
        return ScimError::not_found(format!("{} is not a SCIM endpoint", uri.path())).into_response();
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{} is not an endpoint", uri.path()),
    )
    .into_response()
}

/// Answers every error of the JSON surfaces in their JSON form.
pub async fn json_errors(req: Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    let surface = ["/scim/", "/api/", "/agent/", "/downloads/", "/healthz"]
        .iter()
        .any(|p| path.starts_with(p));
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !surface || is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    let mut out = if path.starts_with("/scim/") {
        ScimError::status(status, message).into_response()
    } else {
        let code = match status {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            s if s.is_server_error() => "internal_error",
            _ => "invalid_request",
        };
        ApiError::new(status, code, message).into_response()
    };
    if let Some(v) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, v);
    }
    out
}
