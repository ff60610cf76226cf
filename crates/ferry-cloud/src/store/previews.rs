//! Scope previews: asked for by an admin, answered by the domain's agent
//! from AD as it is (see `0007_scope_previews.sql`).

use ferry_proto::agent::{ScopePreviewAnswer, ScopePreviewRequest, SyncScope};
use sqlx::Row;
use uuid::Uuid;

use super::{get_uuid, StoreError, StoreResult, Tx};

/// How long a preview request waits for its agent before it is dropped (ms).
pub const PREVIEW_TTL_MS: i64 = 60_000;

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("scope preview: {e}"))
}

impl Tx {
    /// Asks the domain's agent for a preview of `scope`; returns its id.
    /// Requests older than [`PREVIEW_TTL_MS`] are forgotten on the way.
    pub async fn ask_scope_preview(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        scope: &SyncScope,
        now: i64,
    ) -> StoreResult<Uuid> {
        sqlx::query("DELETE FROM scope_previews WHERE domain_id = $1 AND created_at < $2")
            .bind(domain_id.to_string())
            .bind(now - PREVIEW_TTL_MS)
            .execute(self.conn())
            .await?;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO scope_previews (id, org_id, domain_id, scope, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(serde_json::to_string(scope).map_err(corrupt)?)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(id)
    }

    /// The oldest unanswered, unexpired preview request of a domain.
    pub async fn pending_scope_preview(
        &mut self,
        domain_id: Uuid,
        now: i64,
    ) -> StoreResult<Option<ScopePreviewRequest>> {
        let row = sqlx::query(
            "SELECT id, scope FROM scope_previews WHERE domain_id = $1 AND answer IS NULL AND created_at >= $2
             ORDER BY created_at LIMIT 1",
        )
        .bind(domain_id.to_string())
        .bind(now - PREVIEW_TTL_MS)
        .fetch_optional(self.conn())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let scope: String = row.try_get("scope")?;
        Ok(Some(ScopePreviewRequest {
            id: get_uuid(&row, "id")?,
            scope: serde_json::from_str(&scope).map_err(corrupt)?,
        }))
    }

    /// Records the agent's answer; `false` when no such request is pending.
    pub async fn answer_scope_preview(
        &mut self,
        domain_id: Uuid,
        id: Uuid,
        answer: &ScopePreviewAnswer,
    ) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE scope_previews SET answer = $1 WHERE id = $2 AND domain_id = $3 AND answer IS NULL")
                .bind(serde_json::to_string(answer).map_err(corrupt)?)
                .bind(id.to_string())
                .bind(domain_id.to_string())
                .execute(self.conn())
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The answer to a preview request, once there is one.
    pub async fn scope_preview_answer(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Option<ScopePreviewAnswer>> {
        let row = sqlx::query("SELECT answer FROM scope_previews WHERE id = $1 AND org_id = $2")
            .bind(id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?;
        let answer: Option<String> = match row {
            Some(r) => r.try_get("answer")?,
            None => None,
        };
        answer.map(|a| serde_json::from_str(&a).map_err(corrupt)).transpose()
    }
}
