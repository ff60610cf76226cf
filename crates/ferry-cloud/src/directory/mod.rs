//! The directory core: every change to a user, group or membership goes
//! through here, whoever asked (SCIM, console, an agent pushing AD changes).
//!
//! Each write compares before it writes: a change that changes nothing
//! writes nothing, not even a feed or audit row. A write that does change
//! something appends the feed entry agents read and the audit entry admins
//! read, in the caller's transaction.

pub mod ad_apply;
pub mod binding;
pub mod held;
pub mod record;
pub mod repair;

use std::collections::BTreeSet;

use ferry_proto::agent::{CloudChange, FeedMember, FEED_MEMBERS_MAX};
use ferry_proto::record::ObjectKind;
use serde_json::json;
use uuid::Uuid;

use crate::store::{GroupRow, Member, NewGroup, NewUser, StoreError, StoreResult, Tx, UserRow};

/// Who is writing, from where, and when.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// The org written to.
    pub org_id: Uuid,
    /// Feed origin: `cloud`, or the id of the domain the change came from.
    pub origin: String,
    /// Audit actor, e.g. `admin:ann@example.test` or `agent:<id>`.
    pub actor: String,
    /// Now (unix ms).
    pub now: i64,
}

/// An audit entry to write: `(action, target, details)`.
pub type AuditLine<'a> = (&'a str, String, serde_json::Value);

/// The origin of changes made in the cloud itself.
pub const ORIGIN_CLOUD: &str = "cloud";

/// Creates a user. `password` is the plaintext of `user.password_hash`, if
/// one was set: it is sealed to every agent and then forgotten.
pub async fn create_user(tx: &mut Tx, ctx: &WriteCtx, user: NewUser, password: Option<&str>) -> StoreResult<UserRow> {
    let mut row = tx.insert_user(ctx.org_id, &user, ctx.now).await?;
    row.home_domain = place_new(tx, ctx, ObjectKind::User, row.id).await?;
    let change = CloudChange::UpsertUser {
        id: row.id,
        record: Box::new(record::user_record(&row)),
    };
    tx.append_feed(ctx.org_id, &ctx.origin, row.id, &change, ctx.now)
        .await?;
    if let Some(p) = password {
        password_set(tx, ctx, row.id, p).await?;
    }
    let details = json!({ "userName": row.username, "active": row.active });
    audit(tx, ctx, "user.create", &target(ObjectKind::User, row.id), details).await?;
    Ok(row)
}

/// The home of a new object: the domain it came from, or the org's default
/// domain for objects made in the cloud (none: it syncs nowhere until placed).
async fn place_new(tx: &mut Tx, ctx: &WriteCtx, kind: ObjectKind, id: Uuid) -> StoreResult<Option<Uuid>> {
    match home_for_new(tx, ctx).await? {
        Some(d) => tx.claim_home(ctx.org_id, kind, id, d).await,
        None => Ok(None),
    }
}

/// Where an object this context creates belongs (see [`place_new`]).
async fn home_for_new(tx: &mut Tx, ctx: &WriteCtx) -> StoreResult<Option<Uuid>> {
    match Uuid::parse_str(&ctx.origin) {
        Ok(domain) => Ok(Some(domain)),
        Err(_) => tx.default_domain(ctx.org_id).await,
    }
}

/// Places objects without a home in `domain` and sends them (with their
/// memberships) to its agent. Objects homed elsewhere are left as they are
/// and returned, with their home.
pub async fn place(tx: &mut Tx, ctx: &WriteCtx, domain: Uuid, ids: &[Uuid]) -> StoreResult<Vec<(Uuid, Uuid)>> {
    let mut elsewhere = Vec::new();
    for id in ids {
        let Some(kind) = tx.object_kind(ctx.org_id, *id).await? else {
            return Err(StoreError::NotFound);
        };
        let before = tx.home_of(ctx.org_id, kind, *id).await?;
        match tx.claim_home(ctx.org_id, kind, *id, domain).await? {
            Some(home) if home != domain => elsewhere.push((*id, home)),
            _ if before.is_none() => {
                redeliver(tx, ctx, *id).await?;
                let details = json!({ "domain": domain });
                audit(tx, ctx, "object.place", &target(kind, *id), details).await?;
            }
            _ => {}
        }
    }
    Ok(elsewhere)
}

/// Replaces a user's state with `next` unless nothing differs. Returns the
/// stored user and whether anything changed. Fails with a conflict when the
/// user changed since `current` was read.
pub async fn update_user(
    tx: &mut Tx,
    ctx: &WriteCtx,
    current: &UserRow,
    next: NewUser,
    password: Option<&str>,
) -> StoreResult<(UserRow, bool)> {
    let attrs_changed = next.username != current.username
        || next.external_id != current.external_id
        || next.active != current.active
        || next.doc != current.doc;
    let password_changed = next.password_hash.is_some();
    if !attrs_changed && !password_changed {
        return Ok((current.clone(), false));
    }
    if !tx
        .update_user(ctx.org_id, current.id, current.version, &next, ctx.now)
        .await?
    {
        return Err(StoreError::Conflict(
            "the user was changed by someone else meanwhile; read it again and retry".into(),
        ));
    }
    let row = tx.get_user(ctx.org_id, current.id).await?.ok_or(StoreError::NotFound)?;
    if attrs_changed {
        let change = CloudChange::UpsertUser {
            id: row.id,
            record: Box::new(record::user_record(&row)),
        };
        tx.append_feed(ctx.org_id, &ctx.origin, row.id, &change, ctx.now)
            .await?;
        let details = json!({
            "changed": changed_keys(current, &row),
        });
        let action = match (current.active, row.active) {
            (true, false) => "user.suspend",
            (false, true) => "user.activate",
            _ => "user.update",
        };
        audit(tx, ctx, action, &target(ObjectKind::User, row.id), details).await?;
    }
    if password_changed {
        if let Some(p) = password {
            password_set(tx, ctx, row.id, p).await?;
        }
        audit(
            tx,
            ctx,
            "user.password_set",
            &target(ObjectKind::User, row.id),
            json!({}),
        )
        .await?;
    }
    Ok((row, true))
}

/// Records a password change in the feed, with the password sealed to each
/// agent of the user's home domain (the feed entry itself carries no secret).
async fn password_set(tx: &mut Tx, ctx: &WriteCtx, user: Uuid, password: &str) -> StoreResult<()> {
    let seq = tx
        .append_feed(
            ctx.org_id,
            &ctx.origin,
            user,
            &CloudChange::PasswordSet { user },
            ctx.now,
        )
        .await?;
    // Sealed to the agents of the user's home domain only: no other agent
    // writes this user, so no other needs its password.
    let home = tx.home_of(ctx.org_id, ObjectKind::User, user).await?;
    for agent in tx
        .list_org_agents(ctx.org_id)
        .await?
        .into_iter()
        .filter(|a| Some(a.domain_id) == home)
    {
        let context = password_context(user, seq);
        match ferry_proto::seal::seal(&agent.public_key, &context, password.as_bytes()) {
            Ok(sealed) => {
                let text = serde_json::to_string(&sealed).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                tx.insert_sealed(ctx.org_id, agent.id, seq, &text, ctx.now).await?;
            }
            Err(e) => tracing::warn!(agent = %agent.id, error = %e, "cannot seal a password to this agent's key"),
        }
    }
    Ok(())
}

/// The associated data a sealed password is bound to.
pub fn password_context(user: Uuid, seq: i64) -> String {
    format!("ferry-password:{user}:{seq}")
}

/// Deletes a user (and its memberships).
pub async fn delete_user(tx: &mut Tx, ctx: &WriteCtx, id: Uuid) -> StoreResult<()> {
    let user = tx.get_user(ctx.org_id, id).await?.ok_or(StoreError::NotFound)?;
    // Deleted in the cloud where the domain keeps the AD account (disabled):
    // that account must not come back as a new cloud user.
    if ctx.origin == ORIGIN_CLOUD {
        for l in tx.links_of(ctx.org_id, id).await? {
            let d = tx.get_domain(ctx.org_id, l.domain_id).await?;
            if d.settings.policies.cloud_delete_action == ferry_proto::agent::CloudDeleteAction::Disable {
                tx.mark_cloud_deleted(ctx.org_id, l.domain_id, l.ad_guid, ObjectKind::User, ctx.now)
                    .await?;
            }
        }
    }
    // Over a domain's delete threshold, held back from its AD.
    held::count_or_hold(tx, ctx, id, ObjectKind::User, &user.username).await?;
    // The feed entry first: it snapshots the links the delete removes.
    let change = CloudChange::Delete {
        id,
        kind: ObjectKind::User,
    };
    tx.append_feed(ctx.org_id, &ctx.origin, id, &change, ctx.now).await?;
    tx.delete_user(ctx.org_id, id).await?;
    let details = json!({ "userName": user.username });
    audit(tx, ctx, "user.delete", &target(ObjectKind::User, id), details).await
}

/// Creates a group with its members.
pub async fn create_group(tx: &mut Tx, ctx: &WriteCtx, group: NewGroup, members: &[Member]) -> StoreResult<GroupRow> {
    let mut row = tx.insert_group(ctx.org_id, &group, ctx.now).await?;
    row.home_domain = place_new(tx, ctx, ObjectKind::Group, row.id).await?;
    let change = CloudChange::UpsertGroup {
        id: row.id,
        record: record::group_record(&row),
    };
    tx.append_feed(ctx.org_id, &ctx.origin, row.id, &change, ctx.now)
        .await?;
    audit(
        tx,
        ctx,
        "group.create",
        &target(ObjectKind::Group, row.id),
        json!({ "displayName": row.name }),
    )
    .await?;
    set_members(tx, ctx, row.id, members).await?;
    Ok(row)
}

/// Replaces a group's attributes (and, when `members` is given, its member
/// list). Returns the stored group and whether anything changed.
pub async fn update_group(
    tx: &mut Tx,
    ctx: &WriteCtx,
    current: &GroupRow,
    next: NewGroup,
    members: Option<&[Member]>,
) -> StoreResult<(GroupRow, bool)> {
    let attrs_changed = next.name != current.name || next.external_id != current.external_id || next.doc != current.doc;
    let mut changed = false;
    if attrs_changed {
        if !tx
            .update_group(ctx.org_id, current.id, current.version, &next, ctx.now)
            .await?
        {
            return Err(StoreError::Conflict(
                "the group was changed by someone else meanwhile; read it again and retry".into(),
            ));
        }
        let row = tx
            .get_group(ctx.org_id, current.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let change = CloudChange::UpsertGroup {
            id: row.id,
            record: record::group_record(&row),
        };
        tx.append_feed(ctx.org_id, &ctx.origin, row.id, &change, ctx.now)
            .await?;
        let details = json!({ "from": current.name, "to": row.name });
        audit(tx, ctx, "group.update", &target(ObjectKind::Group, row.id), details).await?;
        changed = true;
    }
    if let Some(members) = members {
        changed |= set_members(tx, ctx, current.id, members).await?;
    }
    let row = tx
        .get_group(ctx.org_id, current.id)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok((row, changed))
}

/// Makes a group's members exactly `wanted`; returns whether any changed.
pub async fn set_members(tx: &mut Tx, ctx: &WriteCtx, group_id: Uuid, wanted: &[Member]) -> StoreResult<bool> {
    let have: BTreeSet<Member> = tx.group_members(ctx.org_id, group_id).await?.into_iter().collect();
    let want: BTreeSet<Member> = wanted.iter().copied().collect();
    let to_remove: Vec<Member> = have.difference(&want).copied().collect();
    let to_add: Vec<Member> = want.difference(&have).copied().collect();
    let mut changed = remove_members(tx, ctx, group_id, &to_remove).await?;
    changed |= add_members(tx, ctx, group_id, &to_add).await?;
    Ok(changed)
}

/// Adds members (already-members are skipped); returns whether any was added.
pub async fn add_members(tx: &mut Tx, ctx: &WriteCtx, group_id: Uuid, members: &[Member]) -> StoreResult<bool> {
    if members.iter().any(|m| m.id == group_id) {
        return Err(member_of_itself());
    }
    let added = tx.add_members_many(ctx.org_id, group_id, members).await?;
    // Members added to a group bound to a domain go there first, so their
    // memberships reach an AD that has them.
    binding::follow(tx, ctx, group_id, &added).await?;
    record_members(tx, ctx, group_id, &added, true).await
}

/// Feed entries (one per [`FEED_MEMBERS_MAX`] members) and one audit entry
/// (naming every member) for members added or removed.
async fn record_members(
    tx: &mut Tx,
    ctx: &WriteCtx,
    group_id: Uuid,
    changed: &[Member],
    added: bool,
) -> StoreResult<bool> {
    if changed.is_empty() {
        return Ok(false);
    }
    let (entries, audit_entry) = member_records(group_id, changed, added);
    tx.append_feed_many(ctx.org_id, &ctx.origin, &entries, ctx.now).await?;
    audit_many(tx, ctx, vec![audit_entry]).await?;
    tx.touch_group(ctx.org_id, group_id, ctx.now).await?;
    Ok(true)
}

/// What [`record_members`] writes for a non-empty change: the feed entries
/// and the audit entry `(action, target, details)`.
pub(crate) fn member_records(
    group_id: Uuid,
    changed: &[Member],
    added: bool,
) -> (Vec<(Uuid, CloudChange)>, AuditLine<'static>) {
    let entries = membership_entries(group_id, changed, added);
    let names: Vec<String> = changed.iter().map(|m| target(m.kind, m.id)).collect();
    let details = if names.len() == 1 {
        json!({ "member": names[0] })
    } else {
        json!({ "members": names })
    };
    let action = if added {
        "group.member_add"
    } else {
        "group.member_remove"
    };
    (entries, (action, target(ObjectKind::Group, group_id), details))
}

/// The feed entries of members added to a group (or removed): one entry per
/// [`FEED_MEMBERS_MAX`] members. One row for many is what keeps an import's
/// memberships, or a PATCH of thousands, from writing a row each.
pub(crate) fn membership_entries(group: Uuid, members: &[Member], added: bool) -> Vec<(Uuid, CloudChange)> {
    members
        .chunks(FEED_MEMBERS_MAX)
        .map(|chunk| {
            let members = chunk.iter().map(|m| FeedMember { id: m.id, kind: m.kind }).collect();
            let change = if added {
                CloudChange::AddMembers { group, members }
            } else {
                CloudChange::RemoveMembers { group, members }
            };
            (group, change)
        })
        .collect()
}

/// The refusal of a group made a member of itself.
fn member_of_itself() -> StoreError {
    StoreError::Conflict("a group cannot be a member of itself".into())
}

/// Removes members (non-members are skipped); returns whether any was removed.
pub async fn remove_members(tx: &mut Tx, ctx: &WriteCtx, group_id: Uuid, members: &[Member]) -> StoreResult<bool> {
    let mut removed = Vec::new();
    for m in members {
        if tx.remove_member(ctx.org_id, group_id, m.id).await? {
            removed.push(*m);
        }
    }
    record_members(tx, ctx, group_id, &removed, false).await
}

/// Deletes a group.
pub async fn delete_group(tx: &mut Tx, ctx: &WriteCtx, id: Uuid) -> StoreResult<()> {
    let group = tx.get_group(ctx.org_id, id).await?.ok_or(StoreError::NotFound)?;
    held::count_or_hold(tx, ctx, id, ObjectKind::Group, &group.name).await?;
    let change = CloudChange::Delete {
        id,
        kind: ObjectKind::Group,
    };
    tx.append_feed(ctx.org_id, &ctx.origin, id, &change, ctx.now).await?;
    tx.delete_group(ctx.org_id, id).await?;
    audit(
        tx,
        ctx,
        "group.delete",
        &target(ObjectKind::Group, id),
        json!({ "displayName": group.name }),
    )
    .await
}

/// Sends an object to the agents again as it is now: its state, and every
/// membership it takes part in (as the group, or as a member). This is how
/// a change an agent could not apply is retried once its cause is fixed:
/// memberships skipped while the object was missing from AD come along.
/// `false` when the object no longer exists.
pub async fn redeliver(tx: &mut Tx, ctx: &WriteCtx, id: Uuid) -> StoreResult<bool> {
    let mut entries = Vec::new();
    if let Some(row) = tx.get_user(ctx.org_id, id).await? {
        entries.push((
            id,
            CloudChange::UpsertUser {
                id,
                record: Box::new(record::user_record(&row)),
            },
        ));
    } else if let Some(row) = tx.get_group(ctx.org_id, id).await? {
        entries.push((
            id,
            CloudChange::UpsertGroup {
                id,
                record: record::group_record(&row),
            },
        ));
        entries.extend(membership_entries(id, &tx.group_members(ctx.org_id, id).await?, true));
    } else {
        return Ok(false);
    }
    let kind = tx.object_kind(ctx.org_id, id).await?.unwrap_or(ObjectKind::User);
    for (group, _) in tx.groups_of(ctx.org_id, id).await? {
        entries.extend(membership_entries(group, &[Member { id, kind }], true));
    }
    tx.append_feed_many(ctx.org_id, &ctx.origin, &entries, ctx.now).await?;
    Ok(true)
}

/// Sends one membership to the agents again as the cloud holds it now: an
/// add when `member` is in `group`, a removal when it is not (a refused
/// removal is retried too). `false` when the group or the member is gone:
/// nothing is left to retry.
pub async fn redeliver_membership(tx: &mut Tx, ctx: &WriteCtx, group: Uuid, member: Uuid) -> StoreResult<bool> {
    let Some(kind) = tx.object_kind(ctx.org_id, member).await? else {
        return Ok(false);
    };
    if tx.get_group(ctx.org_id, group).await?.is_none() {
        return Ok(false);
    }
    let is_member = tx.groups_of(ctx.org_id, member).await?.iter().any(|(g, _)| *g == group);
    let entries = membership_entries(group, &[Member { id: member, kind }], is_member);
    tx.append_feed_many(ctx.org_id, &ctx.origin, &entries, ctx.now).await?;
    Ok(true)
}

/// Writes an audit entry for this context.
pub async fn audit(
    tx: &mut Tx,
    ctx: &WriteCtx,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> StoreResult<()> {
    audit_many(tx, ctx, vec![(action, target.to_owned(), details)]).await
}

/// Writes audit entries `(action, target, details)` for this context, in
/// order, in a few statements.
pub async fn audit_many(tx: &mut Tx, ctx: &WriteCtx, mut entries: Vec<AuditLine<'_>>) -> StoreResult<()> {
    if ctx.origin != ORIGIN_CLOUD {
        for (_, _, details) in &mut entries {
            if let Some(obj) = details.as_object_mut() {
                obj.insert("origin".into(), json!(ctx.origin));
            }
        }
    }
    tx.append_audit_many(ctx.org_id, &ctx.actor, &entries, ctx.now)
        .await
        .map(|_| ())
}

/// `kind:id`, the audit log's way of naming an object.
pub fn target(kind: ObjectKind, id: Uuid) -> String {
    format!("{}:{id}", kind.as_str())
}

/// Top-level attribute names that differ between two user states.
fn changed_keys(a: &UserRow, b: &UserRow) -> Vec<String> {
    let mut keys = BTreeSet::new();
    if a.username != b.username {
        keys.insert("userName".to_owned());
    }
    if a.active != b.active {
        keys.insert("active".to_owned());
    }
    if a.external_id != b.external_id {
        keys.insert("externalId".to_owned());
    }
    let empty = serde_json::Map::new();
    let (da, db) = (a.doc.as_object().unwrap_or(&empty), b.doc.as_object().unwrap_or(&empty));
    for k in da.keys().chain(db.keys()) {
        if da.get(k) != db.get(k) {
            keys.insert(k.clone());
        }
    }
    keys.into_iter().collect()
}
