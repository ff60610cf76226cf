//! The delete threshold for deletes made in the cloud: a SCIM client or a
//! script deleting many users must not disable or delete as many AD
//! accounts before an admin has looked.
//!
//! A cloud delete of an object linked in a domain counts against that
//! domain's `delete_threshold` over the same sliding window as AD deletes
//! (`ad_apply::DELETE_WINDOW_MS`). Over it — and while a burst is held, for
//! every delete after it — the delete is held for that domain: the link
//! goes before the feed entry is written (so the domain's agent never sees
//! the delete) and the AD object is remembered as deleted in the cloud (so
//! it does not come back as a new cloud object meanwhile). The admin then
//! approves (the deletes go down to AD, per the domain's
//! `cloud_delete_action`) or rejects (AD keeps the objects; the next
//! comparison of both sides brings them back to the cloud as new objects).

use ferry_proto::agent::CloudChange;
use ferry_proto::record::ObjectKind;
use serde_json::json;
use uuid::Uuid;

use super::ad_apply::DELETE_WINDOW_MS;
use super::{audit, WriteCtx, ORIGIN_CLOUD};
use crate::store::{Domain, HeldDelete, Link, StoreResult, Tx};

/// Counts a cloud delete of `id` against the threshold of each domain it
/// is linked in (but the one it came from), and holds it where that is
/// over. Call before the feed entry is written.
pub async fn count_or_hold(tx: &mut Tx, ctx: &WriteCtx, id: Uuid, kind: ObjectKind, name: &str) -> StoreResult<()> {
    let since = ctx.now - DELETE_WINDOW_MS;
    for l in tx.links_of(ctx.org_id, id).await? {
        if ctx.origin == l.domain_id.to_string() {
            continue;
        }
        let d = tx.get_domain(ctx.org_id, l.domain_id).await?;
        let threshold = i64::from(d.settings.policies.delete_threshold);
        let holding = tx.count_held_cloud_deletes(ctx.org_id, d.id).await?;
        let recent = tx.recent_cloud_deletes(ctx.org_id, d.id, since).await?;
        if holding == 0 && recent < threshold {
            tx.note_cloud_deletes(ctx.org_id, d.id, 1, ctx.now, since).await?;
            continue;
        }
        let held = HeldDelete {
            ad_guid: l.ad_guid,
            object_id: id,
            kind,
            name: name.to_owned(),
            ad_dn: l.ad_dn.clone(),
            held_at: ctx.now,
        };
        tx.hold_cloud_delete(ctx.org_id, d.id, &held).await?;
        tx.mark_cloud_deleted(ctx.org_id, d.id, l.ad_guid, kind, ctx.now)
            .await?;
        tx.delete_link(ctx.org_id, d.id, l.ad_guid).await?;
        if holding == 0 {
            let details = json!({
                "threshold": threshold,
                "deleted_in_window": recent,
                "window_secs": DELETE_WINDOW_MS / 1000,
                "direction": "cloud_to_ad",
            });
            audit(tx, ctx, "sync.cloud_deletes_held", &format!("domain:{}", d.id), details).await?;
        }
    }
    Ok(())
}

/// Carries out (`approve`) or drops a domain's held cloud deletes; returns
/// how many there were.
pub async fn decide(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, approve: bool) -> StoreResult<usize> {
    let held = tx.held_cloud_deletes(ctx.org_id, domain.id).await?;
    for h in &held {
        if approve {
            // The feed entry names the AD object through the link it had.
            let link = Link {
                domain_id: domain.id,
                kind: h.kind,
                object_id: h.object_id,
                ad_guid: h.ad_guid,
                ad_dn: h.ad_dn.clone(),
                synced_at: ctx.now,
                base: None,
                ad_digest: None,
            };
            tx.put_link(ctx.org_id, &link).await?;
            let change = CloudChange::Delete {
                id: h.object_id,
                kind: h.kind,
            };
            tx.append_feed(ctx.org_id, ORIGIN_CLOUD, h.object_id, &change, ctx.now)
                .await?;
            tx.delete_link(ctx.org_id, domain.id, h.ad_guid).await?;
        } else {
            // AD keeps it: no longer deleted in the cloud's eyes, the next
            // comparison of both sides brings it back.
            tx.forget_cloud_deleted(ctx.org_id, domain.id, h.ad_guid).await?;
        }
    }
    tx.clear_held_cloud_deletes(ctx.org_id, domain.id).await?;
    let action = if approve {
        "sync.cloud_deletes_approve"
    } else {
        "sync.cloud_deletes_reject"
    };
    let names: Vec<&str> = held.iter().map(|h| h.name.as_str()).collect();
    let details = json!({ "deletes": held.len(), "objects": names });
    audit(tx, ctx, action, &format!("domain:{}", domain.id), details).await?;
    Ok(held.len())
}
