//! The fast path for a run of membership changes (an import sends a
//! `SetMembers` per group, 500 to a batch): every group and member named in
//! the run is resolved in one query, the groups' current members read in
//! one, and the memberships, feed entries, audit entries and version bumps
//! written in multi-row statements. What it writes is exactly what
//! `apply_one` writes change by change: the same rows, the same feed and
//! audit entries in the same order.

use std::collections::{BTreeSet, HashMap, HashSet};

use ferry_proto::agent::AdChange;
use ferry_proto::record::ObjectKind;
use uuid::Uuid;

use crate::directory::{audit_many, member_of_itself, member_records, WriteCtx, ORIGIN_CLOUD};
use crate::store::{Domain, Member, StoreResult, Tx};

/// Whether a change belongs to a membership run. Cloud-made changes never
/// come here (a cloud write may place new members in a bound group's domain).
pub(super) fn is_membership(ctx: &WriteCtx, change: &AdChange) -> bool {
    ctx.origin != ORIGIN_CLOUD
        && matches!(
            change,
            AdChange::SetMembers { .. } | AdChange::AddMembers { .. } | AdChange::RemoveMembers { .. }
        )
}

/// Applies a run of membership changes in order; returns how many changed
/// something.
pub(super) async fn apply(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, run: &[&AdChange]) -> StoreResult<u64> {
    if run.is_empty() {
        return Ok(0);
    }
    let mut guids: Vec<Uuid> = Vec::new();
    for change in run {
        let (group, members) = parts(change);
        guids.push(group);
        guids.extend_from_slice(members);
    }
    guids.sort();
    guids.dedup();
    let linked = tx.objects_by_guids(ctx.org_id, domain.id, &guids).await?;
    let mut groups: Vec<Uuid> = run
        .iter()
        .filter_map(|c| match linked.get(&parts(c).0) {
            Some((ObjectKind::Group, id)) => Some(*id),
            _ => None,
        })
        .collect();
    groups.sort();
    groups.dedup();
    let homes = tx.homes_of_many(ctx.org_id, ObjectKind::Group, &groups).await?;
    // What is there before: a group given whole (`SetMembers`) is read
    // whole; of a group only added to or removed from (a DirSync round's
    // member deltas), just the memberships named, so a few adds to a big
    // group do not read all its members.
    let mut whole: Vec<Uuid> = Vec::new();
    let mut named: Vec<(Uuid, Uuid)> = Vec::new();
    for change in run {
        let (group, members) = parts(change);
        let Some((ObjectKind::Group, gid)) = linked.get(&group) else {
            continue;
        };
        if matches!(change, AdChange::SetMembers { .. }) {
            whole.push(*gid);
        } else {
            named.extend(members.iter().filter_map(|m| linked.get(m)).map(|(_, id)| (*gid, *id)));
        }
    }
    whole.sort_unstable();
    whole.dedup();
    named.retain(|(g, _)| whole.binary_search(g).is_err());
    let mut before: HashMap<Uuid, BTreeSet<Member>> = HashMap::new();
    let read = [
        tx.group_members_many(ctx.org_id, &whole).await?,
        tx.memberships_among(ctx.org_id, &named).await?,
    ];
    for (g, ms) in read.into_iter().flatten() {
        before.entry(g).or_default().extend(ms);
    }
    let mut now = before.clone();
    let mut feed = Vec::new();
    let mut audits = Vec::new();
    let mut touched: HashMap<Uuid, i64> = HashMap::new();
    let mut applied = 0u64;
    for change in run {
        let (group, members) = parts(change);
        // Linked here but at home in another domain: this domain does not change it.
        let Some(gid) = linked
            .get(&group)
            .filter(|(kind, _)| *kind == ObjectKind::Group)
            .map(|(_, id)| *id)
            .filter(|id| homes.get(id).copied().flatten().is_none_or(|h| h == domain.id))
        else {
            continue;
        };
        // Members not (yet) linked are left out, as `resolve_members` does.
        let members: Vec<Member> = members
            .iter()
            .filter_map(|g| linked.get(g))
            .map(|(kind, id)| Member { id: *id, kind: *kind })
            .collect();
        let have = now.entry(gid).or_default();
        let (removed, added) = match change {
            AdChange::SetMembers { .. } => {
                let want: BTreeSet<Member> = members.iter().copied().collect();
                let removed: Vec<Member> = have.difference(&want).copied().collect();
                let added: Vec<Member> = want.difference(have).copied().collect();
                if added.iter().any(|m| m.id == gid) {
                    return Err(member_of_itself());
                }
                (removed, added)
            }
            AdChange::AddMembers { .. } => {
                if members.iter().any(|m| m.id == gid) {
                    return Err(member_of_itself());
                }
                let mut seen = HashSet::new();
                let added = members
                    .into_iter()
                    .filter(|m| !have.iter().any(|h| h.id == m.id) && seen.insert(m.id))
                    .collect();
                (Vec::new(), added)
            }
            _ => {
                let mut removed = Vec::new();
                for m in members {
                    if let Some(h) = have.iter().find(|h| h.id == m.id).copied() {
                        have.remove(&h);
                        removed.push(m);
                    }
                }
                (removed, Vec::new())
            }
        };
        for m in &removed {
            have.remove(m);
        }
        have.extend(added.iter().copied());
        for (list, is_add) in [(&removed, false), (&added, true)] {
            if list.is_empty() {
                continue;
            }
            let (entries, audit) = member_records(gid, list, is_add);
            feed.extend(entries);
            audits.push(audit);
            *touched.entry(gid).or_default() += 1;
        }
        applied += u64::from(!removed.is_empty() || !added.is_empty());
    }
    // The net effect on the rows: what was there before against what is there now.
    let mut gone = Vec::new();
    let mut new = Vec::new();
    for (gid, after) in &now {
        let was = before.get(gid).cloned().unwrap_or_default();
        gone.extend(was.difference(after).map(|m| (*gid, m.id)));
        new.extend(after.difference(&was).map(|m| (*gid, *m)));
    }
    // In key order: each B-tree is written front to back, not at random.
    gone.sort_unstable();
    new.sort_unstable_by_key(|(g, m)| (*g, m.id));
    tx.delete_memberships(ctx.org_id, &gone).await?;
    tx.insert_memberships(ctx.org_id, &new).await?;
    tx.append_feed_many(ctx.org_id, &ctx.origin, &feed, ctx.now).await?;
    audit_many(tx, ctx, audits).await?;
    let touched: Vec<(Uuid, i64)> = touched.into_iter().collect();
    tx.touch_groups(ctx.org_id, &touched, ctx.now).await?;
    Ok(applied)
}

/// A membership change's group and member objectGUIDs.
fn parts(change: &AdChange) -> (Uuid, &[Uuid]) {
    match change {
        AdChange::SetMembers { group, members }
        | AdChange::AddMembers { group, members }
        | AdChange::RemoveMembers { group, members } => (*group, members),
        AdChange::UpsertUser { guid, .. } | AdChange::UpsertGroup { guid, .. } | AdChange::Delete { guid } => {
            (*guid, &[])
        }
    }
}
