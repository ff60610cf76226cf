//! Bearer-token authentication: admins (API tokens and console sessions)
//! and agents. A token is looked up by its SHA-256; the token itself is
//! never stored or logged.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use super::{ApiError, ClientIp};
use crate::app::AppState;
use crate::secrets::{token_hash, AGENT_TOKEN_PREFIX, API_TOKEN_PREFIX, SESSION_PREFIX};
use crate::store::{Agent, TokenKind};

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// The org acted in.
    pub org_id: Uuid,
    /// The admin.
    pub admin_id: Uuid,
    /// The token used.
    pub token_id: Uuid,
    /// API token or session.
    pub kind: TokenKind,
    /// Audit actor label.
    pub actor: String,
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = checked_bearer(
            parts,
            state,
            None,
            "send an admin API token as 'Authorization: Bearer <token>' (create one with ferry-cloud init or the console)",
        )
        .await?;
        let mut tx = state.store.begin().await?;
        let row = tx.find_token(&token_hash(&token.value)).await?;
        drop(tx);
        let Some(row) = row else {
            return Err(token.unknown(
                state,
                ApiError::unauthorized("invalid_token", "the bearer token is not valid"),
            ));
        };
        if row.revoked {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "the token was revoked (signed out); sign in again",
            ));
        }
        if row.expires_at.is_some_and(|e| e <= token.now) {
            return Err(ApiError::unauthorized(
                "token_expired",
                "the session expired; sign in again",
            ));
        }
        Ok(AdminAuth {
            org_id: row.org_id,
            admin_id: row.admin_id,
            token_id: row.id,
            kind: row.kind,
            actor: format!("admin:{}", row.admin_email),
        })
    }
}

/// An authenticated, non-revoked agent.
#[derive(Debug, Clone)]
pub struct AgentAuth(pub Agent);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = checked_bearer(
            parts,
            state,
            Some(AGENT_TOKEN_PREFIX),
            "send the agent token from registration as 'Authorization: Bearer <token>'",
        )
        .await?;
        let mut tx = state.store.begin().await?;
        let agent = tx.find_agent_by_token(&token_hash(&token.value)).await?;
        drop(tx);
        let Some(agent) = agent else {
            return Err(token.unknown(
                state,
                ApiError::unauthorized("invalid_token", "the agent token is not valid"),
            ));
        };
        if agent.revoked_at.is_some() {
            return Err(ApiError::unauthorized(
                "agent_revoked",
                "this agent was revoked in the console; install it again with a new Connect Key",
            ));
        }
        Ok(AgentAuth(agent))
    }
}

/// A request's bearer token, and whom to count it against if unknown.
struct Bearer {
    value: String,
    /// The client's address and the kind of token it sent.
    limiter_key: String,
    now: i64,
}

impl Bearer {
    /// The answer to an unknown token: `refused`, or 429 while this client
    /// waits after too many unknown tokens of this kind. A valid token is
    /// never refused: it is looked up before this is asked.
    fn unknown(&self, state: &AppState, refused: ApiError) -> ApiError {
        match state.token_limiter.refuse(&self.limiter_key, self.now) {
            Some(l) => ApiError::limited(l, "authentications with unknown tokens"),
            None => refused,
        }
    }
}

/// The request's bearer token (with `prefix`, when given).
async fn checked_bearer(
    parts: &mut Parts,
    state: &AppState,
    prefix: Option<&str>,
    missing: &str,
) -> Result<Bearer, ApiError> {
    let ClientIp(ip) = ClientIp::from_request_parts(parts, state)
        .await
        .unwrap_or(ClientIp("unknown".into()));
    let Some(value) = bearer(parts).filter(|t| prefix.is_none_or(|p| t.starts_with(p))) else {
        return Err(ApiError::unauthorized("unauthorized", missing));
    };
    let kind = [API_TOKEN_PREFIX, SESSION_PREFIX, AGENT_TOKEN_PREFIX]
        .into_iter()
        .find(|p| value.starts_with(p))
        .unwrap_or("other");
    Ok(Bearer {
        value: value.to_owned(),
        limiter_key: format!("{ip} {kind}"),
        now: state.now(),
    })
}
