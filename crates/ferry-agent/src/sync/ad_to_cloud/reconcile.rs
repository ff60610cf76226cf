//! Reconciliation: a delegated account sees no tombstones, so deletes and
//! moves out of scope are found by comparing the in-scope objectGUID set
//! with the cloud's links.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use ferry_proto::agent::AdChange;
use ferry_proto::record::ObjectKind;
use uuid::Uuid;

use super::root;
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// Linked objects no longer in scope in AD were deleted (or moved out):
/// their deletes, read on a connection of its own.
/// `protection` says what is in scope (containers, and a group scope's members).
pub(super) async fn gone_from_ad(shared: &Shared, protection: &Protection) -> Result<Vec<AdChange>, String> {
    let _timer = crate::metrics::ReconciliationTimer::start();
    let root = root(shared).await;
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    // Links first: a link is recorded only after its AD object exists, so
    // every link read here has its object in the set read next.
    let linked = linked_guids(shared).await?;
    let present = conn
        .in_scope_guids(&root, |dn| protection.admits(dn))
        .await
        .map_err(|e| e.to_string())?;
    conn.close().await;
    Ok(gone(shared, linked, &present)
        .into_iter()
        .map(|guid| AdChange::Delete { guid })
        .collect())
}

/// The objectGUID of every user and group linked in the cloud (read by
/// page; of each link only its objectGUID is kept).
pub(super) async fn linked_guids(shared: &Shared) -> Result<Vec<Uuid>, String> {
    let mut linked = Vec::new();
    shared
        .cloud
        .each_link(|l| {
            if matches!(l.kind, ObjectKind::User | ObjectKind::Group) {
                linked.push(l.guid);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(linked)
}

/// Of `linked` (read before `present`), those not in scope in AD now.
pub(super) fn gone(shared: &Shared, linked: Vec<Uuid>, present: &HashSet<Uuid>) -> Vec<Uuid> {
    shared.ad_objects.store(present.len() as u64, Ordering::SeqCst);
    linked.into_iter().filter(|g| !present.contains(g)).collect()
}
