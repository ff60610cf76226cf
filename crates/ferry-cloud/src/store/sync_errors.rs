//! Sync errors: changes the other side refused for good, one row per object
//! and direction, kept until a later try of the object succeeds or an admin
//! dismisses it.

use ferry_proto::agent::{SyncDirection, SyncErrorReport};
use ferry_proto::record::ObjectKind;
use sqlx::Row;
use uuid::Uuid;

use super::{get_uuid, StoreError, StoreResult, Tx};

/// One sync error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncErrorRow {
    /// Its id.
    pub id: Uuid,
    /// The domain.
    pub domain_id: Uuid,
    /// Which way the change was going.
    pub direction: SyncDirection,
    /// The object: cloud id (cloud → AD) or AD objectGUID (AD → cloud).
    pub object_key: String,
    /// User or group.
    pub object_kind: ObjectKind,
    /// A name an admin recognizes.
    pub object_name: String,
    /// What was tried.
    pub operation: String,
    /// The refusing side's code.
    pub code: String,
    /// The refusing side's message.
    pub message: String,
    /// First refusal (unix ms).
    pub first_seen: i64,
    /// Latest refusal (unix ms).
    pub last_seen: i64,
    /// Tries so far.
    pub attempts: i64,
}

/// When an AD → cloud error is next tried: 15 s after the last try,
/// doubling with each attempt up to 15 minutes.
pub fn retry_due(last_seen: i64, attempts: i64, now: i64) -> bool {
    let wait = 15_000i64
        .saturating_mul(1 << attempts.clamp(1, 7).saturating_sub(1))
        .min(900_000);
    now >= last_seen.saturating_add(wait)
}

const COLUMNS: &str = "id, domain_id, direction, object_key, object_kind, object_name, operation, code, message, first_seen, last_seen, attempts";

fn row_to_error(r: &sqlx::any::AnyRow) -> StoreResult<SyncErrorRow> {
    let direction: String = r.try_get("direction")?;
    let kind: String = r.try_get("object_kind")?;
    Ok(SyncErrorRow {
        id: get_uuid(r, "id")?,
        domain_id: get_uuid(r, "domain_id")?,
        direction: SyncDirection::parse(&direction)
            .ok_or_else(|| StoreError::Corrupt(format!("sync error direction {direction:?}")))?,
        object_key: r.try_get("object_key")?,
        object_kind: ObjectKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("object kind {kind:?}")))?,
        object_name: r.try_get("object_name")?,
        operation: r.try_get("operation")?,
        code: r.try_get("code")?,
        message: r.try_get("message")?,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
        attempts: r.try_get("attempts")?,
    })
}

impl Tx {
    /// Records a refusal: a new error, or one more attempt of an open one
    /// (with the latest code and message).
    pub async fn record_sync_error(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        e: &SyncErrorReport,
        now: i64,
    ) -> StoreResult<SyncErrorRow> {
        let sql = format!(
            "INSERT INTO sync_errors (id, org_id, domain_id, direction, object_key, object_kind, object_name, operation, code, message, first_seen, last_seen, attempts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 1) \
             ON CONFLICT (domain_id, direction, object_key) DO UPDATE SET object_name = $7, operation = $8, code = $9, message = $10, \
             last_seen = $11, attempts = sync_errors.attempts + 1 RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::new_v4().to_string())
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(e.direction.as_str())
            .bind(&e.object_key)
            .bind(e.object_kind.as_str())
            .bind(&e.object_name)
            .bind(&e.operation)
            .bind(&e.code)
            .bind(&e.message)
            .bind(now)
            .fetch_one(self.conn())
            .await?;
        row_to_error(&row)
    }

    /// Removes the errors of these objects (a later try succeeded); how many went.
    pub async fn resolve_sync_errors(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        direction: SyncDirection,
        keys: &[String],
    ) -> StoreResult<u64> {
        let mut gone = 0;
        for key in keys {
            gone += sqlx::query(
                "DELETE FROM sync_errors WHERE org_id = $1 AND domain_id = $2 AND direction = $3 AND object_key = $4",
            )
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(direction.as_str())
            .bind(key)
            .execute(self.conn())
            .await?
            .rows_affected();
        }
        Ok(gone)
    }

    /// A page of a domain's errors, newest first, after `before` (a
    /// `last_seen`, `id` pair from the previous page).
    pub async fn list_sync_errors(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        limit: i64,
        before: Option<(i64, Uuid)>,
    ) -> StoreResult<Vec<SyncErrorRow>> {
        let (at, id) = before.map_or((i64::MAX, String::new()), |(a, i)| (a, i.to_string()));
        let sql = format!(
            "SELECT {COLUMNS} FROM sync_errors WHERE org_id = $1 AND domain_id = $2 \
             AND (last_seen < $3 OR (last_seen = $3 AND id < $4) OR $5 = '') ORDER BY last_seen DESC, id DESC LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(at)
            .bind(&id)
            .bind(&id)
            .bind(limit)
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(row_to_error).collect()
    }

    /// One error of a domain.
    pub async fn get_sync_error(&mut self, org_id: Uuid, domain_id: Uuid, id: Uuid) -> StoreResult<SyncErrorRow> {
        let sql = format!("SELECT {COLUMNS} FROM sync_errors WHERE org_id = $1 AND domain_id = $2 AND id = $3");
        let row = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.conn())
            .await?
            .ok_or(StoreError::NotFound)?;
        row_to_error(&row)
    }

    /// How many errors a domain has open.
    pub async fn count_sync_errors(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM sync_errors WHERE org_id = $1 AND domain_id = $2")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .fetch_one(self.conn())
            .await?;
        Ok(row.try_get("n")?)
    }

    /// The object keys with an open error in a domain, per direction.
    pub async fn open_sync_error_keys(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
    ) -> StoreResult<Vec<(SyncDirection, String)>> {
        Ok(self
            .open_sync_errors(org_id, domain_id)
            .await?
            .into_iter()
            .map(|(d, k, _, _)| (d, k))
            .collect())
    }

    /// Direction, object key, last try and attempts of a domain's open errors.
    pub async fn open_sync_errors(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
    ) -> StoreResult<Vec<(SyncDirection, String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT direction, object_key, last_seen, attempts FROM sync_errors WHERE org_id = $1 AND domain_id = $2",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .fetch_all(self.conn())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let d: String = r.try_get("direction")?;
            if let Some(d) = SyncDirection::parse(&d) {
                out.push((
                    d,
                    r.try_get("object_key")?,
                    r.try_get("last_seen")?,
                    r.try_get("attempts")?,
                ));
            }
        }
        Ok(out)
    }

    /// Makes errors due for another try now (an admin's retry).
    pub async fn retry_sync_errors_now(&mut self, org_id: Uuid, domain_id: Uuid, ids: &[Uuid]) -> StoreResult<()> {
        for id in ids {
            sqlx::query("UPDATE sync_errors SET last_seen = 0 WHERE org_id = $1 AND domain_id = $2 AND id = $3")
                .bind(org_id.to_string())
                .bind(domain_id.to_string())
                .bind(id.to_string())
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    /// Dismisses one error (`Some(id)`) or all of a domain's; how many went.
    pub async fn dismiss_sync_errors(&mut self, org_id: Uuid, domain_id: Uuid, id: Option<Uuid>) -> StoreResult<u64> {
        let id = id.map(|i| i.to_string()).unwrap_or_default();
        let done = sqlx::query("DELETE FROM sync_errors WHERE org_id = $1 AND domain_id = $2 AND ($3 = '' OR id = $4)")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(&id)
            .bind(&id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected())
    }
}
