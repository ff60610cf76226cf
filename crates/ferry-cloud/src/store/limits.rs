//! Failure counters that every instance shares (admin sign-ins).

use sqlx::Row;

use super::{StoreResult, Tx};

/// One key's failures, as the limiter keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount {
    /// Failures since the key last started afresh.
    pub failures: u32,
    /// The last failure (unix ms).
    pub last_failure: i64,
    /// No attempt before this time (unix ms).
    pub until: i64,
}

impl Tx {
    /// The counters of `key_hash`, if any.
    pub async fn sign_in_failures(&mut self, key_hash: &str) -> StoreResult<Option<FailureCount>> {
        let row = sqlx::query("SELECT failures, last_failure, until_at FROM sign_in_failures WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| {
            Ok(FailureCount {
                failures: u32::try_from(r.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX),
                last_failure: r.try_get("last_failure")?,
                until: r.try_get("until_at")?,
            })
        })
        .transpose()
    }

    /// Stores the counters of `key_hash`.
    pub async fn put_sign_in_failures(&mut self, key_hash: &str, c: FailureCount) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sign_in_failures (key_hash, failures, last_failure, until_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_hash) DO UPDATE SET failures = $2, last_failure = $3, until_at = $4",
        )
        .bind(key_hash)
        .bind(i64::from(c.failures))
        .bind(c.last_failure)
        .bind(c.until)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Forgets `key_hash` (after a success).
    pub async fn clear_sign_in_failures(&mut self, key_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM sign_in_failures WHERE key_hash = $1")
            .bind(key_hash)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
