//! `GET /downloads/ferry-agent` (the Linux binary) and
//! `GET /downloads/ferry-agent.msi` (the Windows installer): the agent, for
//! signed-in admins, each with its SHA-256 so the download can be checked
//! (`GET /downloads/ferry-agent.sha256`, `…/ferry-agent.msi.sha256`, in
//! `sha256sum` form).
//!
//! The install dialog downloads these in the admin's browser, so the
//! console's session cookie is accepted here as well as a bearer token.
//! That is safe for these routes only: they are reads with no effect, and
//! the cookie is `SameSite=Strict`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::app::AppState;
use crate::http::auth::AdminAuth;
use crate::http::{cookie, ApiError, SESSION_COOKIE};

/// Routes under `/downloads`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/ferry-agent",
            get(|s: State<AppState>, a: AdminAuth| download(s, a, Artifact::LinuxBinary)),
        )
        .route(
            "/ferry-agent.sha256",
            get(|s: State<AppState>, a: AdminAuth| checksum_file(s, a, Artifact::LinuxBinary)),
        )
        .route(
            "/ferry-agent.msi",
            get(|s: State<AppState>, a: AdminAuth| download(s, a, Artifact::WindowsMsi)),
        )
        .route(
            "/ferry-agent.msi.sha256",
            get(|s: State<AppState>, a: AdminAuth| checksum_file(s, a, Artifact::WindowsMsi)),
        )
        .layer(axum::middleware::map_request(session_cookie_as_bearer))
        .layer(axum::middleware::map_response(explain_unauthorized))
}

/// A browser sends the console's session cookie, not a bearer token: the
/// cookie's token is checked exactly as a bearer token would be.
async fn session_cookie_as_bearer(mut req: Request) -> Request {
    if req.headers().contains_key(header::AUTHORIZATION) {
        return req;
    }
    if let Some(token) = cookie(req.headers(), SESSION_COOKIE) {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
    }
    req
}

/// A refused download says how to get it: from the console, signed in.
async fn explain_unauthorized(resp: Response) -> Response {
    if resp.status() != StatusCode::UNAUTHORIZED {
        return resp;
    }
    ApiError::unauthorized(
        "sign_in_required",
        "sign in to the console, then download the agent there (Directories → your domain → Install a new Sync Agent); \
         a script sends the admin API token that ferry-cloud init wrote (--token-out) as 'Authorization: Bearer <token>'",
    )
    .into_response()
}

/// What the server can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// `ferry-agent` for Linux x86-64 (`--agent-binary`).
    LinuxBinary,
    /// `ferry-agent.msi` for Windows x64 (`--agent-msi`).
    WindowsMsi,
}

impl Artifact {
    /// Both, in the order the install dialog lists them (the DC is Windows first).
    pub const ALL: [Artifact; 2] = [Artifact::WindowsMsi, Artifact::LinuxBinary];

    /// The file name (and the path under `/downloads/`).
    pub fn file_name(self) -> &'static str {
        match self {
            Artifact::LinuxBinary => "ferry-agent",
            Artifact::WindowsMsi => "ferry-agent.msi",
        }
    }

    fn path(self, state: &AppState) -> Option<std::path::PathBuf> {
        match self {
            Artifact::LinuxBinary => state.config.agent_binary.clone(),
            Artifact::WindowsMsi => state.config.agent_msi.clone(),
        }
    }

    fn cell(self, state: &AppState) -> &tokio::sync::OnceCell<(String, u64)> {
        match self {
            Artifact::LinuxBinary => &state.agent_checksum,
            Artifact::WindowsMsi => &state.agent_msi_checksum,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Artifact::LinuxBinary => "application/octet-stream",
            Artifact::WindowsMsi => "application/x-msi",
        }
    }

    fn unavailable(self) -> ApiError {
        match self {
            Artifact::LinuxBinary => ApiError::new(
                StatusCode::NOT_FOUND,
                "agent_binary_unavailable",
                "this server has no ferry-agent binary to offer: start ferry-cloud with --agent-binary PATH",
            ),
            Artifact::WindowsMsi => ApiError::new(
                StatusCode::NOT_FOUND,
                "agent_msi_unavailable",
                "this server has no ferry-agent.msi to offer: start ferry-cloud with --agent-msi PATH (scripts/build-msi builds it)",
            ),
        }
    }
}

/// The downloads this server offers, for the install dialog: platform,
/// file, URL and SHA-256 (hex), the ones it has no file for left out.
pub async fn offers(state: &AppState, base: &str) -> Value {
    let mut list = Vec::new();
    for a in Artifact::ALL {
        if let Ok((_, sum, len)) = checksum(state, a).await {
            list.push(json!({
                "platform": match a { Artifact::WindowsMsi => "windows", Artifact::LinuxBinary => "linux" },
                "file": a.file_name(),
                "url": format!("{base}/downloads/{}", a.file_name()),
                "sha256": sum,
                "size": len,
            }));
        }
    }
    Value::Array(list)
}

/// The file's path, and its SHA-256 (hex) and size, computed once.
async fn checksum(state: &AppState, a: Artifact) -> Result<(std::path::PathBuf, String, u64), ApiError> {
    let path = a.path(state).ok_or_else(|| a.unavailable())?;
    let (sum, len) = a
        .cell(state)
        .get_or_try_init(|| async {
            let mut f = tokio::fs::File::open(&path).await?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut len = 0u64;
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Ok::<_, std::io::Error>((hex::encode(hasher.finalize()), len))
        })
        .await
        .map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot read the agent download");
            a.unavailable()
        })?
        .clone();
    Ok((path, sum, len))
}

async fn download(State(state): State<AppState>, _auth: AdminAuth, a: Artifact) -> Result<Response, ApiError> {
    let (path, sum, len) = checksum(&state, a).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| a.unavailable())?;
    let mut resp = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type()));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", a.file_name())) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&sum) {
        h.insert("x-checksum-sha256", v);
    }
    Ok(resp)
}

async fn checksum_file(State(state): State<AppState>, _auth: AdminAuth, a: Artifact) -> Result<Response, ApiError> {
    let (_, sum, _) = checksum(&state, a).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{sum}  {}\n", a.file_name()),
    )
        .into_response())
}
