//! What the comparison of both sides whole (anti-entropy) reads: a domain's
//! links with their digests, its groups' synced members, and the linked
//! users with the record AD last agreed on.

use sqlx::Row;
use uuid::Uuid;

use super::directory::{link_from_row, user_from_row, USER_COLS};
use super::{get_uuid, Link, StoreResult, Tx, UserRow};

impl Tx {
    /// Every link of a domain, with its AD digest (and a group's base).
    pub async fn audit_links(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Vec<Link>> {
        let rows = sqlx::query(
            "SELECT domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, CASE WHEN object_kind = 'group' THEN base END AS base, ad_digest FROM links
             WHERE org_id = $1 AND domain_id = $2",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter().map(link_from_row).collect()
    }

    /// `(group objectGUID, member objectGUID)` of every membership between
    /// two objects linked in the domain: the members the sync keeps.
    pub async fn linked_memberships(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Vec<(Uuid, Uuid)>> {
        let rows = sqlx::query(
            "SELECT g.ad_guid AS group_guid, m.ad_guid AS member_guid
             FROM links g
             JOIN memberships ms ON ms.group_id = g.object_id AND ms.org_id = g.org_id
             JOIN links m ON m.object_id = ms.member_id AND m.domain_id = g.domain_id
             WHERE g.org_id = $1 AND g.domain_id = $2 AND g.object_kind = 'group'",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter()
            .map(|r| Ok((get_uuid(r, "group_guid")?, get_uuid(r, "member_guid")?)))
            .collect()
    }

    /// The users linked in a domain, each with its link (base included).
    pub async fn linked_users(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Vec<(Link, UserRow)>> {
        let cols: String = USER_COLS
            .split(',')
            .map(|c| format!("u.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT l.domain_id, l.object_kind, l.object_id, l.ad_guid, l.ad_dn, l.synced_at, l.base, l.ad_digest, {cols}
             FROM links l JOIN dir_users u ON u.id = l.object_id AND u.org_id = l.org_id
             WHERE l.org_id = $1 AND l.domain_id = $2 AND l.object_kind = 'user'"
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter()
            .map(|r| Ok((link_from_row(r)?, user_from_row(r)?)))
            .collect()
    }

    /// Whether a cloud change to an object is still on its way to the
    /// domain's AD: a feed entry about it after the domain's cursor, not
    /// from the domain itself.
    pub async fn change_on_its_way(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        cursor: i64,
        object_id: Uuid,
    ) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM feed WHERE org_id = $1 AND seq > $2 AND object_id = $3 AND origin <> $4",
        )
        .bind(org_id.to_string())
        .bind(cursor)
        .bind(object_id.to_string())
        .bind(domain_id.to_string())
        .fetch_one(self.conn())
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok(n > 0)
    }

    /// The objects (cloud ids) with a change on its way to the domain's AD.
    pub async fn objects_on_their_way(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        cursor: i64,
    ) -> StoreResult<std::collections::HashSet<Uuid>> {
        let rows = sqlx::query("SELECT DISTINCT object_id FROM feed WHERE org_id = $1 AND seq > $2 AND origin <> $3")
            .bind(org_id.to_string())
            .bind(cursor)
            .bind(domain_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(|r| get_uuid(r, "object_id")).collect()
    }

    /// Asks the domain's agent to compare both sides whole now.
    pub async fn request_audit(&mut self, org_id: Uuid, domain_id: Uuid, now: i64) -> StoreResult<()> {
        let done = sqlx::query("UPDATE domains SET audit_requested_at = $1 WHERE id = $2 AND org_id = $3")
            .bind(now)
            .bind(domain_id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(super::StoreError::NotFound);
        }
        Ok(())
    }

    /// When an admin last asked for a comparison of both sides now.
    pub async fn audit_requested_at(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT audit_requested_at FROM domains WHERE id = $1 AND org_id = $2")
            .bind(domain_id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?;
        Ok(match row {
            Some(r) => r.try_get("audit_requested_at")?,
            None => None,
        })
    }

    /// Notes what AD holds of an account whose cloud user was deleted.
    pub async fn note_cloud_deleted_digest(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        guid: Uuid,
        digest: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE cloud_deleted SET ad_digest = $1 WHERE org_id = $2 AND domain_id = $3 AND ad_guid = $4")
            .bind(digest)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(guid.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// `(objectGUID, AD digest)` of the accounts kept after their cloud
    /// user was deleted: part of the comparison, as AD holds them.
    pub async fn cloud_deleted_digests(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
    ) -> StoreResult<Vec<(Uuid, Option<String>)>> {
        let rows = sqlx::query("SELECT ad_guid, ad_digest FROM cloud_deleted WHERE org_id = $1 AND domain_id = $2")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter()
            .map(|r| Ok((get_uuid(r, "ad_guid")?, r.try_get("ad_digest")?)))
            .collect()
    }
}
