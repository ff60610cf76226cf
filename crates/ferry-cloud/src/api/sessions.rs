//! Admin sign-in (console sessions) and API tokens.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::http::auth::AdminAuth;
use crate::http::{ApiError, ClientIp, JsonBody};
use crate::secrets::{hash_password, new_token, token_hash, verify_password, API_TOKEN_PREFIX, SESSION_PREFIX};
use crate::store::TokenKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignIn {
    email: String,
    password: String,
}

/// `POST /api/v1/sessions`: trade an admin's e-mail and password for a session token.
pub(super) async fn sign_in(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<SignIn>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = state.now();
    let email = body.email.trim().to_lowercase();
    // Failures count per (address, account): a guesser waits, but neither
    // the account's owner at another address nor another account does.
    let limiter_key = format!("{ip} {email}");
    // In the store: every instance counts the same failures.
    state
        .login_limiter
        .check_shared(&state.store, &limiter_key, now)
        .await?
        .map_err(|l| ApiError::limited(l, "sign-ins"))?;
    // Read the account and let the store go before hashing: argon2 takes
    // tens of milliseconds, and SQLite has a single connection.
    let admin = state.store.begin().await?.find_admin_by_email(&email).await?;
    // Verify against a real hash even for unknown accounts, so timing does
    // not tell which e-mails exist.
    let phc = match &admin {
        Some(a) => a.password_hash.clone(),
        None => dummy_hash().await,
    };
    let password = body.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .unwrap_or(false);
    // The counters take a transaction of their own, before this one (SQLite
    // has one connection).
    let admin = admin.filter(|_| ok);
    match admin {
        Some(_) => state.login_limiter.reset_shared(&state.store, &limiter_key).await?,
        None => state.login_limiter.fail_shared(&state.store, &limiter_key, now).await?,
    }
    let mut tx = state.store.begin().await?;
    let Some(admin) = admin else {
        if let Some(a) = tx.find_admin_by_email(&email).await? {
            tx.append_audit(
                a.org_id,
                &format!("admin:{email}"),
                "admin.sign_in_failed",
                &format!("admin:{}", a.id),
                &json!({"ip": ip}),
                now,
            )
            .await?;
            tx.commit().await?;
        }
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "the e-mail or password is wrong",
        ));
    };
    let token = new_token(SESSION_PREFIX);
    let expires_at = now + state.config.session_ttl_ms;
    tx.insert_token(
        admin.org_id,
        admin.id,
        TokenKind::Session,
        "console session",
        &token_hash(&token),
        now,
        Some(expires_at),
    )
    .await?;
    tx.append_audit(
        admin.org_id,
        &format!("admin:{}", admin.email),
        "admin.sign_in",
        &format!("admin:{}", admin.id),
        &json!({"ip": ip}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "expires_at": expires_at })),
    ))
}

/// A hash of nothing, made once (off the async workers).
async fn dummy_hash() -> String {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| hash_password("not a real password").unwrap_or_default())
                .await
                .unwrap_or_default()
        })
        .await
        .clone()
}

/// `DELETE /api/v1/sessions/current`: sign out (revokes the token used).
pub(super) async fn sign_out(State(state): State<AppState>, auth: AdminAuth) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin().await?;
    tx.revoke_token(auth.org_id, auth.token_id, state.now()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
}

/// `POST /api/v1/tokens`: a new API token (for a script or a SCIM client).
pub(super) async fn create_token(
    State(state): State<AppState>,
    auth: AdminAuth,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::bad_request("name must be 1 to 100 characters"));
    }
    let now = state.now();
    let token = new_token(API_TOKEN_PREFIX);
    let mut tx = state.store.begin().await?;
    let id = tx
        .insert_token(
            auth.org_id,
            auth.admin_id,
            TokenKind::Api,
            name,
            &token_hash(&token),
            now,
            None,
        )
        .await?;
    tx.append_audit(
        auth.org_id,
        &auth.actor,
        "token.create",
        &format!("token:{id}"),
        &json!({"name": name}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "token": token })),
    ))
}
