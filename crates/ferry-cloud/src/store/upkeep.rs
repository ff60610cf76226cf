//! What operators need from the store beyond the directory: retention
//! (pruning what no one will read again) and the figures `/metrics` shows
//! (feed lag and open sync errors per domain). These queries cross orgs on
//! purpose: they run for the service, never for a request.

use sqlx::Row;
use uuid::Uuid;

use super::{get_uuid, Store, StoreResult};

/// What the retention task keeps.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Audit entries older than this go; `None` keeps them forever.
    pub audit_max_age_ms: Option<i64>,
    /// Feed entries every domain of the org has acknowledged go, except the
    /// newest this many acknowledged ones (a margin for an agent that
    /// re-reads a little behind its cursor)…
    pub feed_keep_acknowledged: i64,
    /// …and except those younger than this.
    pub feed_keep_ms: i64,
    /// Connect Keys used or expired longer ago than this go (the console
    /// shows recent ones).
    pub connect_keys_keep_ms: i64,
    /// Quiet sign-in failure counters go after this long (the limiter's
    /// longest wait: a key quiet that long starts afresh anyway).
    pub sign_in_failures_keep_ms: i64,
    /// Rows deleted per transaction: the store is never held for long.
    pub batch: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        const DAY: i64 = 24 * 3600 * 1000;
        RetentionPolicy {
            audit_max_age_ms: Some(365 * DAY),
            feed_keep_acknowledged: 1_000,
            feed_keep_ms: DAY,
            connect_keys_keep_ms: 30 * DAY,
            sign_in_failures_keep_ms: 15 * 60 * 1000,
            batch: 1_000,
        }
    }
}

/// How many rows one pruning pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Acknowledged feed entries.
    pub feed: u64,
    /// Audit entries past their age.
    pub audit: u64,
    /// Expired or revoked console sessions.
    pub sessions: u64,
    /// Used or expired Connect Keys.
    pub connect_keys: u64,
    /// Quiet sign-in failure counters.
    pub sign_in_failures: u64,
}

/// A domain's place in its org's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainLag {
    /// The org.
    pub org_id: Uuid,
    /// The domain.
    pub domain_id: Uuid,
    /// The org's newest feed sequence number.
    pub head: i64,
    /// What the domain's agent acknowledged.
    pub cursor: i64,
    /// When the oldest entry it has not acknowledged was written (unix ms).
    pub oldest_unacknowledged_at: Option<i64>,
}

impl Store {
    /// One pruning pass over every org, in batches of `policy.batch` rows,
    /// each its own transaction. Safe to run on several instances at once:
    /// every delete names rows by a condition that stays true.
    pub async fn prune(&self, policy: &RetentionPolicy, now: i64) -> StoreResult<Pruned> {
        let batch = policy.batch.max(1);
        let mut pruned = Pruned::default();
        // The feed: only below every domain's acknowledged cursor. An org
        // without domains keeps its feed: a first domain will read it.
        let floors = {
            let mut tx = self.begin().await?;
            let rows = sqlx::query("SELECT org_id, MIN(feed_cursor) AS floor FROM domains GROUP BY org_id")
                .fetch_all(tx.conn())
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>("org_id")?, r.try_get::<i64, _>("floor")?)))
                .collect::<StoreResult<Vec<_>>>()?
        };
        for (org, floor) in floors {
            let through = floor - policy.feed_keep_acknowledged.max(0);
            if through <= 0 {
                continue;
            }
            pruned.feed += self
                .delete_in_batches(
                    "DELETE FROM feed WHERE org_id = $1 AND seq IN \
                     (SELECT seq FROM feed WHERE org_id = $1 AND seq <= $2 AND created_at < $3 ORDER BY seq LIMIT {batch})",
                    batch,
                    &[Bind::Text(&org), Bind::Int(through), Bind::Int(now - policy.feed_keep_ms)],
                )
                .await?;
        }
        if let Some(age) = policy.audit_max_age_ms {
            let orgs: Vec<String> = {
                let mut tx = self.begin().await?;
                sqlx::query("SELECT id FROM orgs")
                    .fetch_all(tx.conn())
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?
            };
            for org in orgs {
                pruned.audit += self
                    .delete_in_batches(
                        "DELETE FROM audit WHERE org_id = $1 AND seq IN \
                         (SELECT seq FROM audit WHERE org_id = $1 AND at < $2 ORDER BY seq LIMIT {batch})",
                        batch,
                        &[Bind::Text(&org), Bind::Int(now - age)],
                    )
                    .await?;
            }
        }
        pruned.sessions = self
            .delete_in_batches(
                "DELETE FROM api_tokens WHERE id IN (SELECT id FROM api_tokens WHERE kind = 'session' \
                 AND (expires_at < $1 OR revoked_at IS NOT NULL) LIMIT {batch})",
                batch,
                &[Bind::Int(now)],
            )
            .await?;
        let keys_before = now - policy.connect_keys_keep_ms;
        pruned.connect_keys = self
            .delete_in_batches(
                "DELETE FROM connect_keys WHERE id IN (SELECT id FROM connect_keys \
                 WHERE used_at < $1 OR expires_at < $1 LIMIT {batch})",
                batch,
                &[Bind::Int(keys_before)],
            )
            .await?;
        pruned.sign_in_failures = self
            .delete_in_batches(
                "DELETE FROM sign_in_failures WHERE key_hash IN (SELECT key_hash FROM sign_in_failures \
                 WHERE last_failure < $1 AND until_at < $1 LIMIT {batch})",
                batch,
                &[Bind::Int(now - policy.sign_in_failures_keep_ms)],
            )
            .await?;
        Ok(pruned)
    }

    /// Runs `sql` (with `{batch}` in its sub-select) until it deletes fewer
    /// than `batch` rows; a transaction per batch.
    async fn delete_in_batches(&self, sql: &str, batch: i64, binds: &[Bind<'_>]) -> StoreResult<u64> {
        let sql = sql.replace("{batch}", &batch.to_string());
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = match b {
                    Bind::Text(s) => q.bind(s.to_string()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            let n = q.execute(tx.conn()).await?.rows_affected();
            tx.commit().await?;
            total += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
            // Let waiting requests have the store between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Every domain's feed lag.
    pub async fn domain_lags(&self) -> StoreResult<Vec<DomainLag>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT d.org_id, d.id, d.feed_cursor, o.feed_seq, \
             (SELECT f.created_at FROM feed f WHERE f.org_id = d.org_id AND f.seq > d.feed_cursor ORDER BY f.seq LIMIT 1) AS oldest \
             FROM domains d JOIN orgs o ON o.id = d.org_id ORDER BY d.org_id, d.id",
        )
        .fetch_all(tx.conn())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DomainLag {
                    org_id: get_uuid(r, "org_id")?,
                    domain_id: get_uuid(r, "id")?,
                    head: r.try_get("feed_seq")?,
                    cursor: r.try_get("feed_cursor")?,
                    oldest_unacknowledged_at: r.try_get("oldest")?,
                })
            })
            .collect()
    }

    /// Open sync errors per (domain, direction).
    pub async fn open_sync_errors_by_domain(&self) -> StoreResult<Vec<(Uuid, String, i64)>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT domain_id, direction, COUNT(*) AS n FROM sync_errors GROUP BY domain_id, direction ORDER BY domain_id, direction",
        )
        .fetch_all(tx.conn())
        .await?;
        rows.iter()
            .map(|r| Ok((get_uuid(r, "domain_id")?, r.try_get("direction")?, r.try_get("n")?)))
            .collect()
    }

    /// Whether the org's feed lost entries to retention (its first entry is
    /// not number 1): a domain that starts reading from 0 cannot rely on it.
    pub async fn feed_was_pruned(&self, org_id: Uuid) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        tx.feed_was_pruned(org_id).await
    }
}

impl super::Tx {
    /// See [`Store::feed_was_pruned`].
    pub async fn feed_was_pruned(&mut self, org_id: Uuid) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT o.feed_seq, (SELECT MIN(seq) FROM feed WHERE org_id = o.id) AS first FROM orgs o WHERE o.id = $1",
        )
        .bind(org_id.to_string())
        .fetch_one(self.conn())
        .await?;
        let head: i64 = row.try_get("feed_seq")?;
        let first: Option<i64> = row.try_get("first")?;
        Ok(match first {
            Some(f) => f > 1,
            None => head > 0,
        })
    }
}

enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}
