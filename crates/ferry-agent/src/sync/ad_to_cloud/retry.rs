//! Another try of AD objects the cloud refused (a name clash, say): once
//! their errors are due (backing off per object, or retried by an admin),
//! each is read whole from AD and pushed again; a group with its members.
//! An object no longer in AD (or in scope) has nothing left to retry.

use ferry_proto::agent::{AdChange, SyncDirection};
use uuid::Uuid;

use super::increment::{guids_of, read_in_scope, upsert_of};
use super::push::push;
use super::root;
use crate::ad::AdConnection;
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// Retries the due AD → cloud errors; the cookie does not move.
pub(super) async fn retry_refused(
    shared: &Shared,
    conn: &mut AdConnection,
    cookie: &Option<String>,
    protection: &Protection,
) -> Result<(), String> {
    let open = shared.cloud.open_sync_errors().await.map_err(|e| e.to_string())?;
    if open.ad_to_cloud_due.is_empty() {
        return Ok(());
    }
    let root = root(shared).await;
    let mut objects = Vec::new();
    let mut memberships = Vec::new();
    let mut gone = Vec::new();
    for key in &open.ad_to_cloud_due {
        let Ok(guid) = key.parse::<Uuid>() else { continue };
        let Some(mut full) = read_in_scope(conn, &root, protection, guid).await? else {
            gone.push(key.clone());
            continue;
        };
        objects.push(upsert_of(conn, &root, &full, guid).await?);
        if full.has_class("group") {
            conn.complete_ranged(std::slice::from_mut(&mut full))
                .await
                .map_err(|e| e.to_string())?;
            let members = guids_of(conn, &root, &full.strs("member")).await?;
            memberships.push(AdChange::SetMembers { group: guid, members });
        }
    }
    if !gone.is_empty() {
        shared
            .cloud
            .resolve_sync_errors(SyncDirection::AdToCloud, gone)
            .await
            .map_err(|e| e.to_string())?;
    }
    if objects.is_empty() {
        return Ok(());
    }
    tracing::info!(count = objects.len(), "AD → cloud: trying refused objects again");
    objects.extend(memberships);
    let to = cookie.clone().unwrap_or_default();
    let mut from = cookie.clone();
    push(shared, &mut from, to, objects).await
}
