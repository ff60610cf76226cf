//! Deletes made in the cloud that a domain's delete threshold holds back
//! from its AD until an admin decides.

use ferry_proto::record::ObjectKind;
use sqlx::Row;
use uuid::Uuid;

use super::{get_uuid, StoreError, StoreResult, Tx};

/// One held delete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldDelete {
    /// The AD object's objectGUID.
    pub ad_guid: Uuid,
    /// The deleted cloud object's id.
    pub object_id: Uuid,
    /// User or group.
    pub kind: ObjectKind,
    /// Its userName or displayName.
    pub name: String,
    /// The AD object's DN.
    pub ad_dn: String,
    /// When it was held (unix ms).
    pub held_at: i64,
}

impl Tx {
    /// Holds a cloud delete back from a domain's AD.
    pub async fn hold_cloud_delete(&mut self, org_id: Uuid, domain_id: Uuid, h: &HeldDelete) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO held_cloud_deletes (org_id, domain_id, ad_guid, object_id, object_kind, name, ad_dn, held_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (domain_id, ad_guid) DO NOTHING",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(h.ad_guid.to_string())
        .bind(h.object_id.to_string())
        .bind(h.kind.as_str())
        .bind(&h.name)
        .bind(&h.ad_dn)
        .bind(h.held_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The cloud deletes held back from a domain's AD, oldest first.
    pub async fn held_cloud_deletes(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Vec<HeldDelete>> {
        let rows = sqlx::query(
            "SELECT ad_guid, object_id, object_kind, name, ad_dn, held_at FROM held_cloud_deletes
             WHERE org_id = $1 AND domain_id = $2 ORDER BY held_at, ad_guid",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("object_kind")?;
                Ok(HeldDelete {
                    ad_guid: get_uuid(r, "ad_guid")?,
                    object_id: get_uuid(r, "object_id")?,
                    kind: ObjectKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("object_kind {kind:?}")))?,
                    name: r.try_get("name")?,
                    ad_dn: r.try_get("ad_dn")?,
                    held_at: r.try_get("held_at")?,
                })
            })
            .collect()
    }

    /// Forgets a domain's held cloud deletes (decided).
    pub async fn clear_held_cloud_deletes(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM held_cloud_deletes WHERE org_id = $1 AND domain_id = $2")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// How many cloud deletes are held back from a domain's AD.
    pub async fn count_held_cloud_deletes(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<i64> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM held_cloud_deletes WHERE org_id = $1 AND domain_id = $2")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .fetch_one(self.conn())
            .await?;
        Ok(r.try_get("n")?)
    }
}
