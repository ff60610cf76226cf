//! Home domains: the one AD domain each cloud user and group belongs to,
//! and the org's default domain for objects created in the cloud.

use ferry_proto::record::ObjectKind;
use sqlx::Row;
use uuid::Uuid;

use super::{get_opt_uuid, StoreResult, Tx};

fn table(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::User => "dir_users",
        ObjectKind::Group => "dir_groups",
    }
}

impl Tx {
    /// Places an object in `domain` if it has no home yet; returns its home
    /// afterwards (`None` when the object does not exist or has none).
    pub async fn claim_home(
        &mut self,
        org_id: Uuid,
        kind: ObjectKind,
        id: Uuid,
        domain: Uuid,
    ) -> StoreResult<Option<Uuid>> {
        let t = table(kind);
        sqlx::query(&format!(
            "UPDATE {t} SET home_domain = $1 WHERE org_id = $2 AND id = $3 AND home_domain IS NULL"
        ))
        .bind(domain.to_string())
        .bind(org_id.to_string())
        .bind(id.to_string())
        .execute(self.conn())
        .await?;
        self.home_of(org_id, kind, id).await
    }

    /// An object's home domain.
    pub async fn home_of(&mut self, org_id: Uuid, kind: ObjectKind, id: Uuid) -> StoreResult<Option<Uuid>> {
        let t = table(kind);
        let row = sqlx::query(&format!("SELECT home_domain FROM {t} WHERE org_id = $1 AND id = $2"))
            .bind(org_id.to_string())
            .bind(id.to_string())
            .fetch_optional(self.conn())
            .await?;
        Ok(match row {
            Some(r) => get_opt_uuid(&r, "home_domain")?,
            None => None,
        })
    }

    /// The home domains of many objects of one kind ([`Tx::rows_in`]); objects
    /// that do not exist are left out.
    pub async fn homes_of_many(
        &mut self,
        org_id: Uuid,
        kind: ObjectKind,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, Option<Uuid>>> {
        let sql = format!(
            "SELECT id, home_domain FROM {} WHERE org_id = $1 AND id IN ({{in}})",
            table(kind)
        );
        let rows = self
            .rows_in(&sql, &[&org_id.to_string()], &super::bulk::texts(ids))
            .await?;
        rows.iter()
            .map(|r| Ok((super::get_uuid(r, "id")?, get_opt_uuid(r, "home_domain")?)))
            .collect()
    }

    /// Sets (or clears) an object's home, whatever it was.
    pub async fn set_home(&mut self, org_id: Uuid, kind: ObjectKind, id: Uuid, home: Option<Uuid>) -> StoreResult<()> {
        let t = table(kind);
        sqlx::query(&format!(
            "UPDATE {t} SET home_domain = $1 WHERE org_id = $2 AND id = $3"
        ))
        .bind(home.map(|d| d.to_string()))
        .bind(org_id.to_string())
        .bind(id.to_string())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Users and groups without a home.
    pub async fn unhomed_objects(&mut self, org_id: Uuid) -> StoreResult<Vec<Uuid>> {
        let mut ids = Vec::new();
        for t in ["dir_users", "dir_groups"] {
            let rows = sqlx::query(&format!(
                "SELECT id FROM {t} WHERE org_id = $1 AND home_domain IS NULL ORDER BY id"
            ))
            .bind(org_id.to_string())
            .fetch_all(self.conn())
            .await?;
            for r in &rows {
                ids.push(super::get_uuid(r, "id")?);
            }
        }
        Ok(ids)
    }

    /// Places every object without a home in `domain`.
    pub async fn adopt_unhomed(&mut self, org_id: Uuid, domain: Uuid) -> StoreResult<()> {
        for t in ["dir_users", "dir_groups"] {
            sqlx::query(&format!(
                "UPDATE {t} SET home_domain = $1 WHERE org_id = $2 AND home_domain IS NULL"
            ))
            .bind(domain.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Objects homed in a domain that goes away lose their home (and the
    /// org its default domain, if it was that one).
    pub async fn forget_home(&mut self, org_id: Uuid, domain: Uuid) -> StoreResult<()> {
        for t in ["dir_users", "dir_groups"] {
            sqlx::query(&format!(
                "UPDATE {t} SET home_domain = NULL WHERE org_id = $1 AND home_domain = $2"
            ))
            .bind(org_id.to_string())
            .bind(domain.to_string())
            .execute(self.conn())
            .await?;
        }
        sqlx::query("UPDATE orgs SET default_domain = NULL WHERE id = $1 AND default_domain = $2")
            .bind(org_id.to_string())
            .bind(domain.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Where objects created in the cloud are placed, if anywhere.
    pub async fn default_domain(&mut self, org_id: Uuid) -> StoreResult<Option<Uuid>> {
        let row = sqlx::query("SELECT default_domain FROM orgs WHERE id = $1")
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?;
        Ok(match row {
            Some(r) => get_opt_uuid(&r, "default_domain")?,
            None => None,
        })
    }

    /// Sets the org's default domain.
    pub async fn set_default_domain(&mut self, org_id: Uuid, domain: Option<Uuid>) -> StoreResult<()> {
        sqlx::query("UPDATE orgs SET default_domain = $1 WHERE id = $2")
            .bind(domain.map(|d| d.to_string()))
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Remembers that the cloud object linked to an AD object was deleted
    /// in the cloud while the AD object stays.
    pub async fn mark_cloud_deleted(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        guid: Uuid,
        kind: ObjectKind,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO cloud_deleted (org_id, domain_id, ad_guid, object_kind, deleted_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (domain_id, ad_guid) DO UPDATE SET deleted_at = $5",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(guid.to_string())
        .bind(kind.as_str())
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Whether an AD object's cloud object was deleted in the cloud.
    pub async fn is_cloud_deleted(&mut self, org_id: Uuid, domain_id: Uuid, guid: Uuid) -> StoreResult<bool> {
        let row = sqlx::query("SELECT 1 FROM cloud_deleted WHERE org_id = $1 AND domain_id = $2 AND ad_guid = $3")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(guid.to_string())
            .fetch_optional(self.conn())
            .await?;
        Ok(row.is_some())
    }

    /// Which of many AD objects' cloud objects were deleted in the cloud
    /// ([`Tx::rows_in`]).
    pub async fn cloud_deleted_among(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        guids: &[Uuid],
    ) -> StoreResult<std::collections::HashSet<Uuid>> {
        let sql = "SELECT ad_guid FROM cloud_deleted WHERE org_id = $1 AND domain_id = $2 AND ad_guid IN ({in})";
        let head = [org_id.to_string(), domain_id.to_string()];
        let rows = self
            .rows_in(sql, &[&head[0], &head[1]], &super::bulk::texts(guids))
            .await?;
        rows.iter().map(|r| super::get_uuid(r, "ad_guid")).collect()
    }

    /// Forgets a cloud delete (the AD object is gone too).
    pub async fn forget_cloud_deleted(&mut self, org_id: Uuid, domain_id: Uuid, guid: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM cloud_deleted WHERE org_id = $1 AND domain_id = $2 AND ad_guid = $3")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(guid.to_string())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes applied in a domain since `since` (unix ms).
    pub async fn recent_deletes(&mut self, org_id: Uuid, domain_id: Uuid, since: i64) -> StoreResult<i64> {
        self.recent_in(RECENT_AD, org_id, domain_id, since).await
    }

    /// The cloud deletes sent to a domain's AD since `since`.
    pub async fn recent_cloud_deletes(&mut self, org_id: Uuid, domain_id: Uuid, since: i64) -> StoreResult<i64> {
        self.recent_in(RECENT_CLOUD, org_id, domain_id, since).await
    }

    async fn recent_in(&mut self, table: &str, org_id: Uuid, domain_id: Uuid, since: i64) -> StoreResult<i64> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM {table} WHERE org_id = $1 AND domain_id = $2 AND at > $3"
        );
        let r = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(since)
            .fetch_one(self.conn())
            .await?;
        Ok(r.try_get::<i64, _>(0)?)
    }

    /// Records `n` deletes applied now, and forgets those older than `keep_since`.
    pub async fn note_deletes(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        n: i64,
        now: i64,
        keep_since: i64,
    ) -> StoreResult<()> {
        self.note_in(RECENT_AD, org_id, domain_id, n, now, keep_since).await
    }

    /// Records `n` cloud deletes sent to a domain's AD now.
    pub async fn note_cloud_deletes(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        n: i64,
        now: i64,
        keep_since: i64,
    ) -> StoreResult<()> {
        self.note_in(RECENT_CLOUD, org_id, domain_id, n, now, keep_since).await
    }

    async fn note_in(
        &mut self,
        table: &str,
        org_id: Uuid,
        domain_id: Uuid,
        n: i64,
        now: i64,
        keep_since: i64,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE org_id = $1 AND domain_id = $2 AND at <= $3"
        ))
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(keep_since)
        .execute(self.conn())
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {table} (org_id, domain_id, at, n) VALUES ($1, $2, $3, $4)"
        ))
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(now)
        .bind(n)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

/// The sliding-window counts of deletes: from AD, and from the cloud.
const RECENT_AD: &str = "recent_deletes";
const RECENT_CLOUD: &str = "recent_cloud_deletes";
