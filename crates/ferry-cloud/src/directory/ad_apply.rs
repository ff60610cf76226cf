//! Where a batch of AD changes becomes cloud records: applied in one
//! transaction, guarded by a compare-and-swap on the domain's DirSync cookie.
//!
//! Identity is the AD `objectGUID` (through the domain's links), never a DN
//! or a name, so renames and moves keep the cloud object.

use ferry_proto::agent::{
    AdChange, AdDeleteAction, Authority, PushChangesRequest, PushChangesResponse, SyncDirection, SyncErrorReport,
};
use ferry_proto::names;
use ferry_proto::record::{GroupRecord, ObjectKind, UserRecord};
use serde_json::json;
use uuid::Uuid;

use super::record::{apply_group_record, apply_user_record};
use super::{audit, target, WriteCtx};
use crate::store::{Domain, Link, Member, NewGroup, NewUser, StoreError, StoreResult, Tx};

mod memberships;
mod new_objects;

/// The delete threshold's sliding window: more deletes than the threshold
/// within it (those applied and those of the batch) are held in quarantine.
pub const DELETE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Why a batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The batch was read from another cookie than the stored one.
    #[error("the batch starts from a DirSync cookie that is not the stored one; read the sync state again")]
    CookieMismatch {
        /// The stored cookie.
        current: Option<String>,
    },
    /// A change in the batch was refused (applied as a whole, the batch
    /// stopped there): apply it again with [`Isolation::PerChange`].
    #[error("a change was refused: {0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a batch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// All in one go: the fast path. A refused change fails the batch with
    /// [`ApplyError::Refused`] (the caller rolls back and tries per change).
    Batch,
    /// Each change behind a savepoint: a refused change is rolled back alone,
    /// recorded as a sync error of its object, and the rest applies.
    PerChange,
}

/// Applies a pushed batch for `domain` within `tx`.
pub async fn apply_ad_changes(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    batch: &PushChangesRequest,
    isolation: Isolation,
) -> Result<PushChangesResponse, ApplyError> {
    let swapped = tx
        .swap_ad_cookie(
            ctx.org_id,
            domain.id,
            batch.from_cookie.as_deref(),
            batch.to_cookie.as_deref(),
        )
        .await?;
    if !swapped {
        let current = tx.get_domain(ctx.org_id, domain.id).await?.ad_cookie;
        return Err(ApplyError::CookieMismatch { current });
    }
    // Only deletes of linked objects count: the others change nothing.
    let mut deletes = 0usize;
    for c in &batch.changes {
        if let AdChange::Delete { guid } = c {
            if tx.link_by_guid(ctx.org_id, domain.id, *guid).await?.is_some() {
                deletes += 1;
            }
        }
    }
    // The threshold counts over a sliding window, so deletes that come one
    // by one add up as a mass delete does.
    let since = ctx.now - DELETE_WINDOW_MS;
    let recent = if deletes > 0 {
        usize::try_from(tx.recent_deletes(ctx.org_id, domain.id, since).await?).unwrap_or(0)
    } else {
        0
    };
    let quarantine = recent + deletes > domain.settings.policies.delete_threshold as usize;
    if deletes > 0 && !quarantine {
        let n = i64::try_from(deletes).unwrap_or(i64::MAX);
        tx.note_deletes(ctx.org_id, domain.id, n, ctx.now, since).await?;
    }
    let mut applied = 0u64;
    let mut refused = std::collections::HashSet::new();
    let mut held = Vec::new();
    // The fast path creates objects the cloud has never seen together, in
    // runs between the changes that take the ordinary path.
    // Repairs go one by one: each is audited, and a member list is judged
    // against changes on their way.
    let fresh = match isolation {
        Isolation::Batch if !batch.repair => new_objects::find(tx, ctx, domain, &batch.changes).await?,
        _ => vec![false; batch.changes.len()],
    };
    let mut run: Vec<&AdChange> = Vec::new();
    let mut run_of = Run::Ordinary;
    for (change, fresh) in batch.changes.iter().zip(fresh) {
        let of = if fresh {
            Run::NewObjects
        } else if isolation == Isolation::Batch && !batch.repair && memberships::is_membership(ctx, change) {
            Run::Memberships
        } else {
            Run::Ordinary
        };
        if of != run_of {
            applied += apply_run(tx, ctx, domain, run_of, &mut run).await?;
            run_of = of;
        }
        if of != Run::Ordinary {
            run.push(change);
            continue;
        }
        if let (true, AdChange::Delete { guid }) = (quarantine, change) {
            if tx.link_by_guid(ctx.org_id, domain.id, *guid).await?.is_some() {
                held.push(change.clone());
            }
            continue;
        }
        match isolation {
            Isolation::Batch => match apply(tx, ctx, domain, change, batch.repair).await {
                Ok(changed) => applied += u64::from(changed),
                Err(StoreError::Conflict(why)) => return Err(ApplyError::Refused(why)),
                Err(e) => return Err(e.into()),
            },
            Isolation::PerChange => {
                tx.savepoint().await?;
                match apply(tx, ctx, domain, change, batch.repair).await {
                    Ok(changed) => {
                        tx.release_savepoint().await?;
                        applied += u64::from(changed);
                    }
                    Err(StoreError::Conflict(why)) => {
                        tx.rollback_to_savepoint().await?;
                        let report = refusal(domain, change, &why);
                        tx.record_sync_error(ctx.org_id, domain.id, &report, ctx.now).await?;
                        refused.insert(report.object_key);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    applied += apply_run(tx, ctx, domain, run_of, &mut run).await?;
    resolve_applied(tx, ctx, domain, &batch.changes, &refused).await?;
    // A delete already held (reconciliation re-sends it every round) is not held twice.
    let already: std::collections::HashSet<Uuid> = tx
        .list_quarantine(ctx.org_id, domain.id, true)
        .await?
        .iter()
        .flat_map(|q| q.changes.iter())
        .filter_map(|c| match c {
            AdChange::Delete { guid } => Some(*guid),
            _ => None,
        })
        .collect();
    held.retain(|c| !matches!(c, AdChange::Delete { guid } if already.contains(guid)));
    if !held.is_empty() {
        tx.insert_quarantine(ctx.org_id, domain.id, &held, ctx.now).await?;
        let details = json!({
            "deletes": held.len(),
            "threshold": domain.settings.policies.delete_threshold,
            "deleted_in_window": recent,
            "window_secs": DELETE_WINDOW_MS / 1000,
        });
        audit(
            tx,
            ctx,
            "sync.deletes_quarantined",
            &format!("domain:{}", domain.id),
            details,
        )
        .await?;
    }
    Ok(PushChangesResponse {
        applied,
        cookie: batch.to_cookie.clone(),
        quarantined: held.len() as u64,
        refused: refused.len() as u64,
    })
}

/// Consecutive changes of a batch applied together (the fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// None: each change on its own.
    Ordinary,
    /// Objects the cloud has never seen (see [`new_objects`]).
    NewObjects,
    /// Membership changes (see [`memberships`]).
    Memberships,
}

/// Applies a run of changes together and empties it.
async fn apply_run(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    of: Run,
    run: &mut Vec<&AdChange>,
) -> Result<u64, ApplyError> {
    let done = match of {
        Run::Ordinary => Ok(0),
        Run::NewObjects => new_objects::create(tx, ctx, domain, run).await,
        Run::Memberships => memberships::apply(tx, ctx, domain, run).await,
    };
    run.clear();
    match done {
        Ok(n) => Ok(n),
        // Refused (a name taken meanwhile by another writer, a group made a
        // member of itself): the batch is tried again change by change.
        Err(StoreError::Conflict(why)) => Err(ApplyError::Refused(why)),
        Err(e) => Err(e.into()),
    }
}

/// The object a change is about (a membership change is the group's).
fn subject(change: &AdChange) -> Uuid {
    match change {
        AdChange::UpsertUser { guid, .. } | AdChange::UpsertGroup { guid, .. } | AdChange::Delete { guid } => *guid,
        AdChange::SetMembers { group, .. }
        | AdChange::AddMembers { group, .. }
        | AdChange::RemoveMembers { group, .. } => *group,
    }
}

/// A refused change as a sync error of its object, with what to do.
fn refusal(domain: &Domain, change: &AdChange, why: &str) -> SyncErrorReport {
    let (kind, name, operation) = match change {
        AdChange::UpsertUser { record, dn, .. } => (
            ObjectKind::User,
            format!("{} ({dn})", record.username),
            "create or update user",
        ),
        AdChange::UpsertGroup { record, dn, .. } => (
            ObjectKind::Group,
            format!("{} ({dn})", record.name),
            "create or update group",
        ),
        AdChange::Delete { guid } => (ObjectKind::User, guid.to_string(), "delete"),
        AdChange::SetMembers { group, .. }
        | AdChange::AddMembers { group, .. }
        | AdChange::RemoveMembers { group, .. } => (ObjectKind::Group, group.to_string(), "change members"),
    };
    // The store's own "a user named … exists" needs the fix said; the
    // matching rules' refusals say theirs.
    let fix = if !why.starts_with("a user named") && !why.starts_with("a group named") {
        ""
    } else if domain.settings.policies.match_existing_users {
        ": rename one of them, or link them"
    } else {
        ": rename one of them, or turn on matching existing users for this domain"
    };
    SyncErrorReport {
        direction: SyncDirection::AdToCloud,
        object_key: subject(change).to_string(),
        object_kind: kind,
        object_name: name,
        operation: operation.to_owned(),
        code: "conflict".into(),
        message: format!("{why}{fix}"),
    }
}

/// Clears the AD → cloud errors of objects this batch applied. One read of
/// the domain's open errors (almost always none) rather than a delete per change.
async fn resolve_applied(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    changes: &[AdChange],
    refused_now: &std::collections::HashSet<String>,
) -> StoreResult<()> {
    let open: std::collections::HashSet<String> = tx
        .open_sync_error_keys(ctx.org_id, domain.id)
        .await?
        .into_iter()
        .filter(|(d, _)| *d == SyncDirection::AdToCloud)
        .map(|(_, k)| k)
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let done: Vec<String> = changes
        .iter()
        .map(|c| subject(c).to_string())
        .filter(|k| open.contains(k) && !refused_now.contains(k))
        .collect();
    if !done.is_empty() {
        tx.resolve_sync_errors(ctx.org_id, domain.id, SyncDirection::AdToCloud, &done)
            .await?;
    }
    Ok(())
}

/// Applies one change, as a repair found by the comparison of both sides
/// (`super::repair`) or not; `true` when the cloud changed.
async fn apply(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, change: &AdChange, repair: bool) -> StoreResult<bool> {
    if repair {
        super::repair::apply(tx, ctx, domain, change).await
    } else {
        apply_one(tx, ctx, domain, change).await
    }
}

/// Applies one change; `true` when the cloud changed.
pub async fn apply_one(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, change: &AdChange) -> StoreResult<bool> {
    match change {
        AdChange::UpsertUser {
            guid,
            dn,
            record,
            changed_at,
        } => upsert_user(tx, ctx, domain, *guid, dn, record, *changed_at).await,
        AdChange::UpsertGroup { guid, dn, record } => upsert_group(tx, ctx, domain, *guid, dn, record).await,
        AdChange::Delete { guid } => delete(tx, ctx, domain, *guid).await,
        AdChange::SetMembers { group, members } => {
            let Some(gid) = linked(tx, ctx, domain, *group, ObjectKind::Group).await? else {
                return Ok(false);
            };
            let members = resolve_members(tx, ctx, domain, members).await?;
            super::set_members(tx, ctx, gid, &members).await
        }
        AdChange::AddMembers { group, members } => {
            let Some(gid) = linked(tx, ctx, domain, *group, ObjectKind::Group).await? else {
                return Ok(false);
            };
            let members = resolve_members(tx, ctx, domain, members).await?;
            super::add_members(tx, ctx, gid, &members).await
        }
        AdChange::RemoveMembers { group, members } => {
            let Some(gid) = linked(tx, ctx, domain, *group, ObjectKind::Group).await? else {
                return Ok(false);
            };
            let members = resolve_members(tx, ctx, domain, members).await?;
            super::remove_members(tx, ctx, gid, &members).await
        }
    }
}

async fn upsert_user(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    guid: Uuid,
    dn: &str,
    record: &UserRecord,
    changed_at: Option<i64>,
) -> StoreResult<bool> {
    let mut record = record.clone();
    let manager_guid = record.manager.as_deref().and_then(|m| Uuid::parse_str(m).ok());
    let manager_id = match manager_guid {
        Some(g) => linked(tx, ctx, domain, g, ObjectKind::User).await?,
        None => None,
    };
    // What AD holds, as the comparison of both sides reads it: the manager
    // by objectGUID when it is synced.
    let ad_digest = {
        let mut seen = record.clone();
        seen.manager = manager_id.and(manager_guid).map(|g| g.to_string());
        ferry_proto::audit::user_digest(dn, &seen)
    };
    record.manager = manager_id.map(|id| id.to_string());
    let link = tx.link_by_guid(ctx.org_id, domain.id, guid).await?;
    if link.is_none() && tx.is_cloud_deleted(ctx.org_id, domain.id, guid).await? {
        // Deleted in the cloud, kept (disabled) in AD by policy: it stays
        // deleted. What AD holds of it is noted for the comparison of both sides.
        tx.note_cloud_deleted_digest(ctx.org_id, domain.id, guid, &ad_digest)
            .await?;
        return Ok(false);
    }
    let base: Option<UserRecord> = link
        .as_ref()
        .and_then(|l| l.base.clone())
        .and_then(|b| serde_json::from_value(b).ok());
    let existing = match &link {
        Some(link) => match tx.get_user(ctx.org_id, link.object_id).await? {
            Some(u) => {
                at_home(tx, ctx, domain, "user", &u.username, u.home_domain).await?;
                Some(u)
            }
            None => None,
        },
        None => match tx.find_user_by_username(ctx.org_id, &record.username).await? {
            Some(u) => {
                may_match(tx, ctx, domain, ObjectKind::User, u.id, &u.username, u.home_domain).await?;
                let details = json!({ "userName": u.username, "dn": dn });
                audit(tx, ctx, "sync.user_matched", &target(ObjectKind::User, u.id), details).await?;
                Some(u)
            }
            None => None,
        },
    };
    // An account name the agent derived from the cloud's userName (cut to
    // AD's 20 characters, made unique) is the cloud's name, not a rename.
    if let Some(current) = &existing {
        let derived = names::user_sam(&current.username);
        if record.username != current.username && names::is_sam_for(&record.username, &derived, names::MAX_USER_SAM) {
            record.username = current.username.clone();
        }
    }
    as_agreed(&mut record, existing.as_ref().map(|u| u.active));
    // The base kept on the link is AD's record as seen now: where the cloud
    // keeps a value of its own below, AD does not have it yet, and cloud →
    // AD writes exactly the fields where the cloud differs from this base.
    let seen_in_ad = record.clone();
    // Three-way merge against the last agreed record: a field only the
    // cloud changed keeps the cloud's value (AD's is merely stale), a field
    // only AD changed takes AD's, a field both changed is a conflict the
    // domain's authority policy settles.
    let mut cloud_wins_somewhere = false;
    if let (Some(base), Some(current)) = (&base, &existing) {
        let cloud = super::record::user_record(current);
        let (merged, conflicts, cloud_kept) = merge_user(
            base,
            &cloud,
            &record,
            domain.settings.policies.authority,
            changed_at,
            current.updated_at,
        );
        for c in &conflicts {
            audit(
                tx,
                ctx,
                "sync.conflict",
                &target(ObjectKind::User, current.id),
                c.clone(),
            )
            .await?;
        }
        cloud_wins_somewhere = cloud_kept;
        record = merged;
    }
    let (id, changed) = match existing {
        Some(current) => {
            let next = NewUser {
                username: record.username.clone(),
                external_id: current.external_id.clone(),
                active: record.active,
                doc: apply_user_record(&current.doc, &record),
                password_hash: None,
            };
            let (row, changed) = super::update_user(tx, ctx, &current, next, None).await?;
            (row.id, changed)
        }
        None => {
            let new = NewUser {
                username: record.username.clone(),
                external_id: None,
                active: record.active,
                doc: apply_user_record(&json!({}), &record),
                password_hash: None,
            };
            (super::create_user(tx, ctx, new, None).await?.id, true)
        }
    };
    if cloud_wins_somewhere {
        // AD still holds other values than the cloud kept: send the cloud's
        // record back down (the agent writes only the differences).
        if let Some(row) = tx.get_user(ctx.org_id, id).await? {
            let change = ferry_proto::agent::CloudChange::UpsertUser {
                id,
                record: Box::new(super::record::user_record(&row)),
            };
            tx.append_feed(ctx.org_id, super::ORIGIN_CLOUD, id, &change, ctx.now)
                .await?;
        }
    }
    let agreed = serde_json::to_value(&seen_in_ad).ok();
    put_link(tx, ctx, domain, ObjectKind::User, id, guid, dn, agreed, Some(ad_digest)).await?;
    Ok(changed)
}

/// A user's record as AD holds it, in the terms both sides agree on: AD
/// says "disabled" only because the account has no password yet, so the
/// cloud's state stands (`cloud_active`; a new user counts as active).
pub fn as_agreed(record: &mut UserRecord, cloud_active: Option<bool>) {
    if record.awaiting_password {
        record.active = cloud_active.unwrap_or(true);
        record.awaiting_password = false;
    }
}

/// One field's three-way merge: `(value, conflict, cloud kept a value AD lacks)`.
fn merge_field<T: Clone + PartialEq + serde::Serialize>(
    name: &str,
    base: &T,
    cloud: &T,
    ad: &T,
    ad_wins_conflict: bool,
    conflicts: &mut Vec<serde_json::Value>,
) -> (T, bool) {
    if ad == cloud || cloud == base {
        return (ad.clone(), false);
    }
    if ad == base {
        return (cloud.clone(), true);
    }
    let winner = if ad_wins_conflict { "ad" } else { "cloud" };
    conflicts.push(json!({ "attribute": name, "ad": ad, "cloud": cloud, "base": base, "winner": winner }));
    if ad_wins_conflict {
        (ad.clone(), false)
    } else {
        (cloud.clone(), true)
    }
}

/// Merges an AD record into the cloud's, against the last agreed `base`.
pub fn merge_user(
    base: &UserRecord,
    cloud: &UserRecord,
    ad: &UserRecord,
    authority: Authority,
    ad_changed_at: Option<i64>,
    cloud_changed_at: i64,
) -> (UserRecord, Vec<serde_json::Value>, bool) {
    let ad_wins = match authority {
        Authority::Ad => true,
        Authority::Cloud => false,
        // whenChanged has 1 s resolution: a tie goes to AD, where the edit is visible to both.
        Authority::Latest => ad_changed_at.is_none_or(|a| a + 999 >= cloud_changed_at),
    };
    let mut conflicts = Vec::new();
    let mut kept = false;
    let mut out = ad.clone();
    macro_rules! field {
        ($f:ident) => {{
            let (v, k) = merge_field(stringify!($f), &base.$f, &cloud.$f, &ad.$f, ad_wins, &mut conflicts);
            out.$f = v;
            kept |= k;
        }};
    }
    field!(username);
    field!(given_name);
    field!(family_name);
    field!(display_name);
    field!(email);
    field!(phone);
    field!(mobile);
    field!(title);
    field!(department);
    field!(company);
    field!(description);
    field!(employee_number);
    field!(manager);
    field!(active);
    (out, conflicts, kept)
}

async fn upsert_group(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    guid: Uuid,
    dn: &str,
    record: &GroupRecord,
) -> StoreResult<bool> {
    let link = tx.link_by_guid(ctx.org_id, domain.id, guid).await?;
    if link.is_none() && tx.is_cloud_deleted(ctx.org_id, domain.id, guid).await? {
        // Deleted in the cloud, its delete held for an admin: it stays deleted.
        return Ok(false);
    }
    let existing = match link {
        Some(link) => match tx.get_group(ctx.org_id, link.object_id).await? {
            Some(g) => {
                at_home(tx, ctx, domain, "group", &g.name, g.home_domain).await?;
                Some(g)
            }
            None => None,
        },
        None => match tx.find_group_by_name(ctx.org_id, &record.name).await? {
            Some(g) => {
                may_match(tx, ctx, domain, ObjectKind::Group, g.id, &g.name, g.home_domain).await?;
                let details = json!({ "displayName": g.name, "dn": dn });
                audit(tx, ctx, "sync.group_matched", &target(ObjectKind::Group, g.id), details).await?;
                Some(g)
            }
            None => None,
        },
    };
    let (id, changed) = match existing {
        Some(current) => {
            // A group account name the agent derived from the cloud's name
            // (cleaned for AD, made unique) is the cloud's name, not a rename.
            let derived = names::sam_account_name_for(&current.name, names::MAX_GROUP_SAM);
            let name = if names::is_sam_for(&record.name, &derived, names::MAX_GROUP_SAM) {
                current.name.clone()
            } else {
                record.name.clone()
            };
            let next = NewGroup {
                name,
                external_id: current.external_id.clone(),
                doc: apply_group_record(&current.doc, record),
            };
            let (row, changed) = super::update_group(tx, ctx, &current, next, None).await?;
            (row.id, changed)
        }
        None => {
            let new = NewGroup {
                name: record.name.clone(),
                external_id: None,
                doc: apply_group_record(&json!({}), record),
            };
            (super::create_group(tx, ctx, new, &[]).await?.id, true)
        }
    };
    // A group's base is AD's record, as the comparison of both sides reads it.
    let seen = serde_json::to_value(record).ok();
    let digest = ferry_proto::audit::group_digest(dn, record);
    put_link(tx, ctx, domain, ObjectKind::Group, id, guid, dn, seen, Some(digest)).await?;
    Ok(changed)
}

async fn delete(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, guid: Uuid) -> StoreResult<bool> {
    let Some(link) = tx.link_by_guid(ctx.org_id, domain.id, guid).await? else {
        tx.forget_cloud_deleted(ctx.org_id, domain.id, guid).await?;
        return Ok(false);
    };
    // An object at home in another domain is never deleted from here: only
    // this domain's link to it goes.
    let home = tx.home_of(ctx.org_id, link.kind, link.object_id).await?;
    let action = if home.is_some_and(|h| h != domain.id) {
        AdDeleteAction::Unlink
    } else {
        domain.settings.policies.ad_delete_action
    };
    match action {
        AdDeleteAction::Unlink => {
            tx.delete_link(ctx.org_id, domain.id, guid).await?;
            // The object leaves the domain with its AD account: this domain's
            // agent must not create it again by name.
            if home == Some(domain.id) {
                tx.set_home(ctx.org_id, link.kind, link.object_id, None).await?;
            }
            let details = json!({ "ad_guid": guid, "dn": link.ad_dn });
            audit(tx, ctx, "sync.unlink", &target(link.kind, link.object_id), details).await?;
        }
        AdDeleteAction::Remove => match link.kind {
            ObjectKind::User => super::delete_user(tx, ctx, link.object_id).await?,
            ObjectKind::Group => super::delete_group(tx, ctx, link.object_id).await?,
        },
    }
    Ok(true)
}

pub(super) async fn linked(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    guid: Uuid,
    kind: ObjectKind,
) -> StoreResult<Option<Uuid>> {
    let Some(link) = tx
        .link_by_guid(ctx.org_id, domain.id, guid)
        .await?
        .filter(|l| l.kind == kind)
    else {
        return Ok(None);
    };
    // Linked here but at home in another domain (links made before homes
    // existed): this domain does not change it.
    let home = tx.home_of(ctx.org_id, kind, link.object_id).await?;
    Ok(home.is_none_or(|h| h == domain.id).then_some(link.object_id))
}

/// Refuses a change through a link to an object at home in another domain.
async fn at_home(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    what: &str,
    name: &str,
    home: Option<Uuid>,
) -> StoreResult<()> {
    match home {
        Some(h) if h != domain.id => {
            let other = tx.get_domain(ctx.org_id, h).await?.settings.name;
            Err(StoreError::Conflict(format!(
                "the cloud {what} {name:?} belongs to domain {other}; {} does not change it (unlink it there, or remove the AD object's link here)",
                domain.settings.name
            )))
        }
        _ => Ok(()),
    }
}

/// Whether an AD object of this domain may be linked to an existing cloud
/// object of the same name (soft match), as a conflict naming why not. The
/// object must belong to no other domain, be linked nowhere, and the
/// domain's policy must allow matching. On success it is placed here.
async fn may_match(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    kind: ObjectKind,
    id: Uuid,
    name: &str,
    home: Option<Uuid>,
) -> StoreResult<()> {
    let what = kind.as_str();
    at_home(tx, ctx, domain, what, name, home).await?;
    if let Some(l) = tx.links_of(ctx.org_id, id).await?.first() {
        let other = tx.get_domain(ctx.org_id, l.domain_id).await?.settings.name;
        return Err(StoreError::Conflict(format!(
            "a cloud {what} named {name:?} exists and is linked to {} in {other}: rename one of them",
            l.ad_dn
        )));
    }
    if !domain.settings.policies.match_existing_users {
        return Err(StoreError::Conflict(format!(
            "a cloud {what} named {name:?} exists and matching existing objects is off for this domain: rename one of them, or turn matching on"
        )));
    }
    tx.claim_home(ctx.org_id, kind, id, domain.id).await?;
    Ok(())
}

/// Member GUIDs to cloud members; members not (yet) linked are left out —
/// they are outside the sync's scope, or arrive in a later batch with their
/// own membership change.
pub(super) async fn resolve_members(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    guids: &[Uuid],
) -> StoreResult<Vec<Member>> {
    let found = tx.objects_by_guids(ctx.org_id, domain.id, guids).await?;
    Ok(guids
        .iter()
        .filter_map(|g| found.get(g))
        .map(|(kind, id)| Member { id: *id, kind: *kind })
        .collect())
}

#[allow(clippy::too_many_arguments)]
async fn put_link(
    tx: &mut Tx,
    ctx: &WriteCtx,
    domain: &Domain,
    kind: ObjectKind,
    object_id: Uuid,
    guid: Uuid,
    dn: &str,
    base: Option<serde_json::Value>,
    ad_digest: Option<String>,
) -> StoreResult<()> {
    let link = Link {
        domain_id: domain.id,
        kind,
        object_id,
        ad_guid: guid,
        ad_dn: dn.to_owned(),
        synced_at: ctx.now,
        base,
        ad_digest,
    };
    tx.put_link(ctx.org_id, &link).await
}
