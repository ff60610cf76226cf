//! `GET /downloads/ferry-agent`: the agent binary for this platform, for
//! signed-in admins, with its SHA-256 so the download can be checked
//! (`GET /downloads/ferry-agent.sha256`, in `sha256sum` form).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::app::AppState;
use crate::http::auth::AdminAuth;
use crate::http::ApiError;

/// Routes under `/downloads`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ferry-agent", get(agent_binary))
        .route("/ferry-agent.sha256", get(agent_checksum))
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "agent_binary_unavailable",
        "this server has no ferry-agent binary to offer: start ferry-cloud with --agent-binary PATH",
    )
}

/// The binary's path, and its SHA-256 (hex) and size, computed once.
async fn checksum(state: &AppState) -> Result<(std::path::PathBuf, String, u64), ApiError> {
    let path = state.config.agent_binary.clone().ok_or_else(unavailable)?;
    let (sum, len) = state
        .agent_checksum
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
            tracing::error!(path = %path.display(), error = %e, "cannot read the agent binary");
            unavailable()
        })?
        .clone();
    Ok((path, sum, len))
}

async fn agent_binary(State(state): State<AppState>, _auth: AdminAuth) -> Result<Response, ApiError> {
    let (path, sum, len) = checksum(&state).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| unavailable())?;
    let mut resp = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"ferry-agent\""),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&sum) {
        h.insert("x-checksum-sha256", v);
    }
    Ok(resp)
}

async fn agent_checksum(State(state): State<AppState>, _auth: AdminAuth) -> Result<Response, ApiError> {
    let (_, sum, _) = checksum(&state).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{sum}  ferry-agent\n"),
    )
        .into_response())
}
