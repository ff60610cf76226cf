//! Cloud groups bound to a domain (a domain's `scope.cloud_groups`), the
//! way JumpCloud provisions into AD: a bound group, and every member of it
//! (nested groups' members included) that belongs to no domain yet, is
//! placed in the domain when the group is bound and whenever a member is
//! added in the cloud later. Its agent then creates them in AD. Objects
//! that belong to another domain stay there. Unbinding, or leaving the
//! group, moves nothing: taking an object out of AD is a delete.

use std::collections::{HashSet, VecDeque};

use ferry_proto::record::ObjectKind;
use uuid::Uuid;

use super::{place, WriteCtx, ORIGIN_CLOUD};
use crate::store::{Member, StoreResult, Tx};

/// Objects walked at most from one set of bound groups.
const MAX_WALKED: usize = 200_000;

/// The bound groups and everything in them, each once, nested groups
/// walked; with `groups_only`, just the groups.
pub async fn closure(tx: &mut Tx, org_id: Uuid, roots: &[Uuid], groups_only: bool) -> StoreResult<Vec<Member>> {
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut out = Vec::new();
    let mut queue: VecDeque<Uuid> = roots.iter().copied().collect();
    while let Some(g) = queue.pop_front() {
        if out.len() >= MAX_WALKED || !seen.insert(g) {
            continue;
        }
        out.push(Member {
            id: g,
            kind: ObjectKind::Group,
        });
        for m in tx.group_members(org_id, g).await? {
            match m.kind {
                ObjectKind::Group => queue.push_back(m.id),
                ObjectKind::User if !groups_only && seen.insert(m.id) => out.push(m),
                ObjectKind::User => {}
            }
        }
    }
    Ok(out)
}

/// What binding `groups` to `domain` would place there, and what stays in
/// other domains.
pub struct BindingPreview {
    /// Objects without a home: placed in the domain (created in its AD).
    pub entering: Vec<(Member, String)>,
    /// Objects that belong to another domain and stay there.
    pub elsewhere: usize,
}

/// Counts what binding `groups` to `domain` would place, without writing.
pub async fn preview(tx: &mut Tx, org_id: Uuid, domain: Uuid, groups: &[Uuid]) -> StoreResult<BindingPreview> {
    let mut p = BindingPreview {
        entering: Vec::new(),
        elsewhere: 0,
    };
    for m in closure(tx, org_id, groups, false).await? {
        let (home, name) = match m.kind {
            ObjectKind::User => match tx.get_user(org_id, m.id).await? {
                Some(u) => (u.home_domain, u.username),
                None => continue,
            },
            ObjectKind::Group => match tx.get_group(org_id, m.id).await? {
                Some(g) => (g.home_domain, g.name),
                None => continue,
            },
        };
        match home {
            None => p.entering.push((m, name)),
            Some(d) if d != domain => p.elsewhere += 1,
            Some(_) => {}
        }
    }
    Ok(p)
}

/// Binds groups to `domain`: places them and their members that belong to
/// no domain there (`place` leaves objects of other domains where they are).
pub async fn bind(tx: &mut Tx, ctx: &WriteCtx, domain: Uuid, groups: &[Uuid]) -> StoreResult<()> {
    let ids: Vec<Uuid> = closure(tx, ctx.org_id, groups, false)
        .await?
        .iter()
        .map(|m| m.id)
        .collect();
    place(tx, ctx, domain, &ids).await?;
    Ok(())
}

/// Members were just added to `group` in the cloud: if the group is bound
/// to a domain (directly, or inside a bound group), the new members and
/// what they contain follow it there when they belong to no domain.
pub async fn follow(tx: &mut Tx, ctx: &WriteCtx, group: Uuid, added: &[Member]) -> StoreResult<()> {
    if ctx.origin != ORIGIN_CLOUD || added.is_empty() {
        return Ok(());
    }
    for d in tx.list_domains(ctx.org_id).await? {
        let bound = &d.settings.policies.scope.cloud_groups;
        if bound.is_empty() {
            continue;
        }
        let groups = closure(tx, ctx.org_id, bound, true).await?;
        if groups.iter().any(|g| g.id == group) {
            let added_groups: Vec<Uuid> = added
                .iter()
                .filter(|m| m.kind == ObjectKind::Group)
                .map(|m| m.id)
                .collect();
            let mut ids: Vec<Uuid> = added
                .iter()
                .filter(|m| m.kind == ObjectKind::User)
                .map(|m| m.id)
                .collect();
            ids.extend(
                closure(tx, ctx.org_id, &added_groups, false)
                    .await?
                    .iter()
                    .map(|m| m.id),
            );
            place(tx, ctx, d.id, &ids).await?;
            return Ok(());
        }
    }
    Ok(())
}
