//! Organizations, their admins, and the bearer tokens admins use
//! (API tokens for scripts and SCIM clients, sessions for the console).

use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{get_uuid, StoreError, StoreResult, Tx};

/// An organization: the tenant every other row belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    /// Org id.
    pub id: Uuid,
    /// Display name, unique.
    pub name: String,
    /// Creation time (unix ms).
    pub created_at: i64,
}

/// An administrator of one org.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Admin id.
    pub id: Uuid,
    /// The org administered.
    pub org_id: Uuid,
    /// Login e-mail, unique across the service.
    pub email: String,
    /// PHC-format argon2 hash.
    pub password_hash: String,
}

/// Kinds of bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Long-lived API token for scripts and SCIM clients.
    Api,
    /// Short-lived console session.
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Session => "session",
        }
    }
}

/// A stored token (its hash only).
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Token id.
    pub id: Uuid,
    /// Org the token acts in.
    pub org_id: Uuid,
    /// Admin the token acts as.
    pub admin_id: Uuid,
    /// That admin's e-mail.
    pub admin_email: String,
    /// API token or session.
    pub kind: TokenKind,
    /// Expiry (unix ms), if any.
    pub expires_at: Option<i64>,
    /// Revoked (signed out).
    pub revoked: bool,
}

impl Tx {
    /// Creates an org; fails with a conflict when the name is taken.
    pub async fn insert_org(&mut self, name: &str, now: i64) -> StoreResult<Org> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(name)
            .bind(now)
            .execute(self.conn())
            .await
            .map_err(|e| conflict_as(e, format!("an organization named {name:?} exists")))?;
        Ok(Org {
            id,
            name: name.to_owned(),
            created_at: now,
        })
    }

    /// Every org (for the first-run check and operators).
    pub async fn list_orgs(&mut self) -> StoreResult<Vec<Org>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM orgs ORDER BY created_at")
            .fetch_all(self.conn())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Org {
                    id: get_uuid(r, "id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Creates an admin; fails with a conflict when the e-mail is taken.
    pub async fn insert_admin(
        &mut self,
        org_id: Uuid,
        email: &str,
        password_hash: &str,
        now: i64,
    ) -> StoreResult<Admin> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO admins (id, org_id, email, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id.to_string())
            .bind(org_id.to_string())
            .bind(email)
            .bind(password_hash)
            .bind(now)
            .execute(self.conn())
            .await
            .map_err(|e| conflict_as(e, format!("an admin with e-mail {email:?} exists")))?;
        Ok(Admin {
            id,
            org_id,
            email: email.to_owned(),
            password_hash: password_hash.to_owned(),
        })
    }

    /// Finds an admin by login e-mail (case-insensitive).
    pub async fn find_admin_by_email(&mut self, email: &str) -> StoreResult<Option<Admin>> {
        let row = sqlx::query("SELECT id, org_id, email, password_hash FROM admins WHERE lower(email) = lower($1)")
            .bind(email)
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| admin_from_row(&r)).transpose()
    }

    /// Stores the hash of a new token.
    pub async fn insert_token(
        &mut self,
        org_id: Uuid,
        admin_id: Uuid,
        kind: TokenKind,
        name: &str,
        token_hash: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> StoreResult<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO api_tokens (id, org_id, admin_id, kind, name, token_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(admin_id.to_string())
        .bind(kind.as_str())
        .bind(name)
        .bind(token_hash)
        .bind(now)
        .bind(expires_at)
        .execute(self.conn())
        .await?;
        Ok(id)
    }

    /// Looks a token up by its hash.
    pub async fn find_token(&mut self, token_hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT t.id, t.org_id, t.admin_id, a.email, t.kind, t.expires_at, t.revoked_at
             FROM api_tokens t JOIN admins a ON a.id = t.admin_id AND a.org_id = t.org_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.conn())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let kind: String = r.try_get("kind")?;
        let revoked_at: Option<i64> = r.try_get("revoked_at")?;
        Ok(Some(TokenRow {
            id: get_uuid(&r, "id")?,
            org_id: get_uuid(&r, "org_id")?,
            admin_id: get_uuid(&r, "admin_id")?,
            admin_email: r.try_get("email")?,
            kind: if kind == "session" {
                TokenKind::Session
            } else {
                TokenKind::Api
            },
            expires_at: r.try_get("expires_at")?,
            revoked: revoked_at.is_some(),
        }))
    }

    /// Revokes a token of the org (sign-out).
    pub async fn revoke_token(&mut self, org_id: Uuid, id: Uuid, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND org_id = $3")
            .bind(now)
            .bind(id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

fn admin_from_row(r: &AnyRow) -> StoreResult<Admin> {
    Ok(Admin {
        id: get_uuid(r, "id")?,
        org_id: get_uuid(r, "org_id")?,
        email: r.try_get("email")?,
        password_hash: r.try_get("password_hash")?,
    })
}

/// Maps a unique violation to a conflict with a specific message.
pub(super) fn conflict_as(e: sqlx::Error, message: String) -> StoreError {
    match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(message),
        other => other,
    }
}
