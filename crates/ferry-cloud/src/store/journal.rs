//! The two append-only logs: the change feed agents read, and the audit log
//! admins read. Both number their entries with a per-org sequence taken by
//! an `UPDATE … RETURNING` on the org row, which also serializes concurrent
//! writers of one org so sequence order is commit order.

use super::bulk::{int, text};
use ferry_proto::agent::CloudChange;
use sqlx::Row;
use uuid::Uuid;

use super::{get_json, to_json, StoreResult, Tx};

/// One feed row.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    /// Per-org sequence number.
    pub seq: i64,
    /// `cloud` or the domain id the change came from.
    pub origin: String,
    /// The object the change is about.
    pub object_id: Uuid,
    /// The change.
    pub change: CloudChange,
    /// When (unix ms).
    pub at: i64,
    /// Links of the objects named, when the change was made.
    pub links: Vec<FeedLink>,
}

/// A link snapshot kept with a feed entry: deletes and membership changes
/// must still name the AD objects after the cloud object or link is gone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeedLink {
    /// Cloud id.
    pub object_id: Uuid,
    /// Domain.
    pub domain_id: Uuid,
    /// AD objectGUID in that domain.
    pub ad_guid: Uuid,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// Per-org sequence number.
    pub seq: i64,
    /// When (unix ms).
    pub at: i64,
    /// Who: `admin:<email>`, `token:<id>`, `agent:<id>`, `system`.
    pub actor: String,
    /// What, e.g. `user.create`.
    pub action: String,
    /// On what, e.g. `user:<id>`.
    pub target: String,
    /// Details (never a secret).
    pub details: serde_json::Value,
}

impl Tx {
    /// Appends a change to the org's feed; returns its sequence number.
    pub async fn append_feed(
        &mut self,
        org_id: Uuid,
        origin: &str,
        object_id: Uuid,
        change: &CloudChange,
        now: i64,
    ) -> StoreResult<i64> {
        let seqs = self
            .append_feed_many(org_id, origin, &[(object_id, change.clone())], now)
            .await?;
        Ok(seqs.first().copied().unwrap_or_default())
    }

    /// Appends changes in order with consecutive sequence numbers: one
    /// sequence update, one link lookup and one INSERT (a group's 500 new
    /// members during an import are not 2,000 statements).
    pub async fn append_feed_many(
        &mut self,
        org_id: Uuid,
        origin: &str,
        entries: &[(Uuid, CloudChange)],
        now: i64,
    ) -> StoreResult<Vec<i64>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // An entry from a domain's agent is read only by the other domains'
        // agents (`read_feed_for` leaves out an agent's own domain), and each
        // takes its own domain's links from it: the origin's links are left
        // out (an import's membership entry carried 50, 4 MB of feed a push),
        // and with no other domain in the org none is looked up.
        let origin_domain = Uuid::parse_str(origin).ok();
        let others = match origin_domain {
            Some(d) => sqlx::query("SELECT 1 FROM domains WHERE org_id = $1 AND id <> $2 LIMIT 1")
                .bind(org_id.to_string())
                .bind(d.to_string())
                .fetch_optional(self.conn())
                .await?
                .is_some(),
            None => true,
        };
        let links = if others {
            let mut named: Vec<Uuid> = entries.iter().flat_map(|(_, c)| c.objects()).collect();
            named.sort();
            named.dedup();
            self.link_guids_of_many(org_id, &named).await?
        } else {
            std::collections::HashMap::new()
        };
        let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
        let last: i64 = sqlx::query("UPDATE orgs SET feed_seq = feed_seq + $2 WHERE id = $1 RETURNING feed_seq")
            .bind(org_id.to_string())
            .bind(n)
            .fetch_one(self.conn())
            .await?
            .try_get(0)?;
        let first = last - n + 1;
        let seqs: Vec<i64> = (first..=last).collect();
        let mut rows = Vec::with_capacity(entries.len());
        for ((object_id, change), seq) in entries.iter().zip(&seqs) {
            let feed_links: Vec<FeedLink> = change
                .objects()
                .into_iter()
                .flat_map(|id| {
                    links
                        .get(&id)
                        .into_iter()
                        .flatten()
                        .filter(|(domain_id, _)| Some(*domain_id) != origin_domain)
                        .map(move |(domain_id, ad_guid)| FeedLink {
                            object_id: id,
                            domain_id: *domain_id,
                            ad_guid: *ad_guid,
                        })
                })
                .collect();
            rows.push(vec![
                int(*seq),
                text(object_id.to_string()),
                text(to_json(change)?),
                text(to_json(&feed_links)?),
            ]);
        }
        self.write_rows(
            "INSERT INTO feed (org_id, seq, origin, object_id, change, links, created_at) {rows}",
            "$1, ?n, $2, ?, ?, ?, $3",
            vec![text(org_id.to_string()), text(origin), int(now)],
            &rows,
        )
        .await?;
        if self.dialect() == super::Dialect::Postgres {
            // Delivered at commit, to every instance (and only if it commits);
            // notifications of one transaction with one payload fold into one.
            sqlx::query(&format!("NOTIFY {}", super::FEED_CHANNEL))
                .execute(self.conn())
                .await?;
        }
        Ok(seqs)
    }

    /// Feed entries after `after`, at most `limit`, in order.
    pub async fn read_feed(&mut self, org_id: Uuid, after: i64, limit: i64) -> StoreResult<Vec<FeedRow>> {
        let sql = format!(
            "SELECT seq, origin, object_id, change, links, created_at FROM feed WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT {}",
            limit.max(0)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(after)
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(feed_row).collect()
    }

    /// The entries after `after` that did not come from `origin` (an agent's
    /// own domain), at most `limit`, and the cursor after them: the last
    /// one's, or the head's when fewer were found — so a stretch of the
    /// agent's own entries (an import's hundreds of thousands) is passed in
    /// one read, in the database, not page by page. Sequence numbers are
    /// taken under the org row's lock until commit, so every entry up to
    /// the head read first is committed and seen by the second read.
    pub async fn read_feed_for(
        &mut self,
        org_id: Uuid,
        after: i64,
        limit: i64,
        origin: &str,
    ) -> StoreResult<(Vec<FeedRow>, i64)> {
        let head = self.feed_head(org_id).await?;
        let sql = format!(
            "SELECT seq, origin, object_id, change, links, created_at FROM feed
             WHERE org_id = $1 AND seq > $2 AND seq <= $3 AND origin <> $4 ORDER BY seq LIMIT {}",
            limit.max(0)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(after)
            .bind(head)
            .bind(origin)
            .fetch_all(self.conn())
            .await?;
        let rows = rows.iter().map(feed_row).collect::<StoreResult<Vec<FeedRow>>>()?;
        let next = match rows.last() {
            Some(r) if rows.len() as i64 >= limit => r.seq,
            _ => head.max(after),
        };
        Ok((rows, next))
    }

    /// The org's latest feed sequence number.
    pub async fn feed_head(&mut self, org_id: Uuid) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT feed_seq FROM orgs WHERE id = $1")
            .bind(org_id.to_string())
            .fetch_one(self.conn())
            .await?
            .try_get(0)?)
    }

    /// Appends an audit entry.
    pub async fn append_audit(
        &mut self,
        org_id: Uuid,
        actor: &str,
        action: &str,
        target: &str,
        details: &serde_json::Value,
        now: i64,
    ) -> StoreResult<i64> {
        let seqs = self
            .append_audit_many(org_id, actor, &[(action, target.to_owned(), details.clone())], now)
            .await?;
        Ok(seqs.first().copied().unwrap_or_default())
    }

    /// Appends audit entries `(action, target, details)` of one actor in
    /// order, with consecutive sequence numbers: one sequence update and one
    /// INSERT.
    pub async fn append_audit_many(
        &mut self,
        org_id: Uuid,
        actor: &str,
        entries: &[(&str, String, serde_json::Value)],
        now: i64,
    ) -> StoreResult<Vec<i64>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let n = i64::try_from(entries.len()).unwrap_or(i64::MAX);
        let last: i64 = sqlx::query("UPDATE orgs SET audit_seq = audit_seq + $2 WHERE id = $1 RETURNING audit_seq")
            .bind(org_id.to_string())
            .bind(n)
            .fetch_one(self.conn())
            .await?
            .try_get(0)?;
        let seqs: Vec<i64> = (last - n + 1..=last).collect();
        let rows = entries
            .iter()
            .zip(&seqs)
            .map(|((action, target, details), seq)| {
                Ok(vec![
                    int(*seq),
                    text(*action),
                    text(target.as_str()),
                    text(to_json(details)?),
                ])
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.write_rows(
            "INSERT INTO audit (org_id, seq, at, actor, action, target, details) {rows}",
            "$1, ?n, $2, $3, ?, ?, ?",
            vec![text(org_id.to_string()), int(now), text(actor)],
            &rows,
        )
        .await?;
        Ok(seqs)
    }

    /// Audit entries newest first, those before `before` (exclusive) when given.
    pub async fn list_audit(&mut self, org_id: Uuid, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT seq, at, actor, action, target, details FROM audit WHERE org_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT {}",
            limit.max(0)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(before.unwrap_or(i64::MAX))
            .fetch_all(self.conn())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    details: get_json(r, "details")?,
                })
            })
            .collect()
    }
}

fn feed_row(r: &sqlx::any::AnyRow) -> StoreResult<FeedRow> {
    Ok(FeedRow {
        seq: r.try_get("seq")?,
        origin: r.try_get("origin")?,
        object_id: super::get_uuid(r, "object_id")?,
        change: get_json(r, "change")?,
        at: r.try_get("created_at")?,
        links: get_json(r, "links")?,
    })
}
