//! One DirSync round: what changed since the cookie, read whole and pushed.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ferry_proto::agent::AdChange;
use uuid::Uuid;

use super::push::push;
use super::root;
use crate::ad::dn::dn_within;
use crate::ad::guid::guid_filter;
use crate::ad::mapping::{group_record, is_tombstone, user_record, when_changed, READ_ATTRS};
use crate::ad::read::member_delta;
use crate::ad::{AdConnection, AdEntry, AdError, DirSyncBatch};
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// What one DirSync round did.
pub(super) struct Round {
    /// The next cookie.
    pub cookie: String,
    /// The round hints at a deletion or a move out of scope that only
    /// reconciliation can confirm: the USN moved but nothing readable
    /// changed, an object left the scope, or a group lost members.
    pub suspect: bool,
    /// Some group's members changed (a group scope may have grown).
    pub groups_changed: bool,
    /// Objects DirSync showed deleted (where the DC shows tombstones):
    /// not pushed here, but with the other deletes of their burst.
    pub deleted: Vec<Uuid>,
}

/// The slow half of a round: what DirSync reports since `cookie`. On Samba
/// this is a pass over every user and group (its DirSync adds
/// `uSNChanged>=N` to the filter, and ldb indexes no ranges), so it runs on
/// a connection of its own beside the change loop.
pub(super) async fn scan(shared: &Shared, cookie: Option<String>) -> Result<Scanned, String> {
    let root = root(shared).await;
    let raw = B64
        .decode(cookie.unwrap_or_default())
        .map_err(|_| "the stored DirSync cookie is not base64".to_owned())?;
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let batch = conn.dirsync_all(&root, &raw, READ_ATTRS).await;
    let took = started.elapsed();
    conn.close().await;
    match batch {
        Ok(b) => Ok(Scanned { batch: Some(b), took }),
        Err(e) if cookie_refused(&e) => {
            tracing::warn!(error = %e, "the DC no longer honours the DirSync cookie (another DC behind the name, or too old)");
            Ok(Scanned { batch: None, took })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A DirSync round's pass over AD.
pub(super) struct Scanned {
    /// What it found; `None`: the DC refused the cookie (read everything again).
    pub batch: Option<DirSyncBatch>,
    /// How long the DC took over it.
    pub took: std::time::Duration,
}

/// The quick half of a round: each object DirSync named, read whole now
/// (by objectGUID, indexed) and pushed with its member changes, moving the
/// cookie to the batch's. An object the quick path already pushed as it is
/// now (`quick`: objectGUID → `uSNChanged` pushed) is not pushed again.
pub(super) async fn apply(
    shared: &Shared,
    conn: &mut AdConnection,
    cookie: Option<String>,
    batch: DirSyncBatch,
    protection: &Protection,
    quick: &mut HashMap<Uuid, i64>,
) -> Result<Round, String> {
    let root = root(shared).await;
    let current = cookie.clone().unwrap_or_default();
    let next = B64.encode(&batch.cookie);
    if batch.entries.is_empty() && next == current {
        return Ok(Round {
            cookie: current,
            suspect: true,
            groups_changed: false,
            deleted: Vec::new(),
        });
    }
    let mut suspect = batch.entries.is_empty();
    let groups_changed = batch.entries.iter().any(|e| {
        let (added, removed) = member_delta(e);
        !added.is_empty() || !removed.is_empty()
    });
    // Objects first, then memberships: a member must be linked before it is added.
    let mut changes = Vec::new();
    let mut memberships = Vec::new();
    let mut deleted = Vec::new();
    for e in &batch.entries {
        let Some(guid) = e.guid() else { continue };
        let pushed = quick.remove(&guid);
        if is_tombstone(e) {
            deleted.push(guid);
            continue;
        }
        // DirSync sends only what changed: read the whole object.
        let Some(full) = read_in_scope(conn, &root, protection, guid).await? else {
            suspect = true;
            continue;
        };
        if pushed.is_none() || pushed != full.int("uSNChanged") {
            changes.push(upsert_of(conn, &root, &full, guid).await?);
        }
        if full.has_class("group") {
            let (added, removed) = member_delta(e);
            suspect |= !removed.is_empty();
            let added = guids_of(conn, &root, &added).await?;
            let removed = guids_of(conn, &root, &removed).await?;
            if !added.is_empty() {
                memberships.push(AdChange::AddMembers {
                    group: guid,
                    members: added,
                });
            }
            if !removed.is_empty() {
                memberships.push(AdChange::RemoveMembers {
                    group: guid,
                    members: removed,
                });
            }
        }
    }
    changes.extend(memberships);
    let mut c = cookie;
    push(shared, &mut c, next.clone(), changes).await?;
    Ok(Round {
        cookie: next,
        suspect,
        groups_changed,
        deleted,
    })
}

/// Whether a DirSync failure means the DC will not take this cookie (one
/// from another DC, or one it no longer keeps): Samba answers 12 with
/// `0000202C … cookie`, AD unwillingToPerform or a protocol error naming it.
fn cookie_refused(e: &AdError) -> bool {
    match e {
        AdError::Ldap { rc: 12, .. } => true,
        AdError::Ldap { rc: 2 | 53, text, .. } => text.to_lowercase().contains("cookie"),
        _ => false,
    }
}

/// The objectGUIDs of DNs in scope. A DN that no longer exists is left out
/// (its object is gone); a failed read is an error, never "no members".
pub(super) async fn guids_of(conn: &mut AdConnection, root: &str, dns: &[String]) -> Result<Vec<Uuid>, String> {
    let mut out = Vec::new();
    for dn in dns {
        if !dn_within(dn, root) {
            continue;
        }
        if let Some(e) = conn.read_entry(dn, &["objectGUID"]).await.map_err(|e| e.to_string())? {
            out.extend(e.guid());
        }
    }
    Ok(out)
}

/// The whole object with this GUID, if it is in scope and not excluded.
pub(super) async fn read_in_scope(
    conn: &mut AdConnection,
    root: &str,
    protection: &Protection,
    guid: Uuid,
) -> Result<Option<AdEntry>, String> {
    let found = conn
        .search_paged(root, ldap3::Scope::Subtree, &guid_filter(guid), READ_ATTRS)
        .await
        .map_err(|e| e.to_string())?;
    Ok(found.into_iter().next().filter(|full| in_reach(root, protection, full)))
}

/// Whether an entry is Ferry's to sync: under the root, in the sync scope,
/// and not protected or excluded.
pub(super) fn in_reach(root: &str, protection: &Protection, e: &AdEntry) -> bool {
    dn_within(&e.dn, root) && protection.admits(&e.dn) && protection.why(e).is_none()
}

/// The upsert of a whole object (a user's manager resolved to its GUID).
pub(super) async fn upsert_of(
    conn: &mut AdConnection,
    root: &str,
    full: &AdEntry,
    guid: Uuid,
) -> Result<AdChange, String> {
    if full.has_class("group") {
        return Ok(AdChange::UpsertGroup {
            guid,
            dn: full.dn.clone(),
            record: group_record(full),
        });
    }
    let (mut rec, manager) = user_record(full);
    if let Some(m) = manager {
        rec.manager = guids_of(conn, root, &[m]).await?.first().map(Uuid::to_string);
    }
    Ok(AdChange::UpsertUser {
        guid,
        dn: full.dn.clone(),
        record: Box::new(rec),
        changed_at: when_changed(full),
    })
}
