//! A scope of AD groups ("only members of these groups"): objects enter it
//! when they join a scope group, not when they change, so DirSync alone
//! does not bring them. After a round that changed groups the members are
//! read again; newcomers are read whole and pushed, with their memberships;
//! leavers are found by reconciliation. And the scope preview: what a
//! proposed scope would take in and leave out, counted over AD as it is.

use std::collections::HashSet;

use ferry_proto::agent::{AdChange, ScopeCount, ScopePreviewAnswer, ScopePreviewRequest};
use ferry_proto::record::ObjectKind;
use uuid::Uuid;

use super::increment::{guids_of, upsert_of};
use super::push::push;
use super::root;
use crate::ad::mapping::READ_ATTRS;
use crate::ad::{AdConnection, USERS_AND_GROUPS};
use crate::sync::protect::{group_closure, Protection};
use crate::sync::Shared;

/// Objects that entered a group scope between two readings of it (DN keys
/// of `now` not in `before`); `None` without a group scope.
pub(super) fn entered(before: &Protection, now: &Protection) -> Vec<String> {
    let (Some(b), Some(n)) = (&before.scope_members, &now.scope_members) else {
        return Vec::new();
    };
    n.iter()
        .filter(|(k, _)| !b.contains_key(*k))
        .map(|(_, dn)| dn.clone())
        .collect()
}

/// Whether some object left a group scope between two readings.
pub(super) fn left(before: &Protection, now: &Protection) -> bool {
    match (&before.scope_members, &now.scope_members) {
        (Some(b), Some(n)) => b.keys().any(|k| !n.contains_key(k)),
        _ => false,
    }
}

/// Reads the objects that entered the scope and pushes them, then their
/// memberships: a group's members, and a user's groups that are in scope.
/// The cookie does not move.
pub(super) async fn enter(
    shared: &Shared,
    conn: &mut AdConnection,
    cookie: &Option<String>,
    protection: &Protection,
    dns: &[String],
) -> Result<(), String> {
    let root = root(shared).await;
    let mut attrs: Vec<&str> = READ_ATTRS.to_vec();
    attrs.push("memberOf");
    let mut objects = Vec::new();
    let mut memberships = Vec::new();
    for dn in dns {
        let Some(mut e) = conn.read_entry(dn, &attrs).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let is_object = e.has_class("group") || (e.has_class("user") && !e.has_class("computer"));
        if !is_object || !protection.admits(&e.dn) || protection.why(&e).is_some() {
            continue;
        }
        let Some(guid) = e.guid() else { continue };
        objects.push(upsert_of(conn, &root, &e, guid).await?);
        if e.has_class("group") {
            conn.complete_ranged(std::slice::from_mut(&mut e))
                .await
                .map_err(|e| e.to_string())?;
            let members = guids_of(conn, &root, &e.strs("member")).await?;
            memberships.push(AdChange::SetMembers { group: guid, members });
        }
        let groups: Vec<String> = e
            .strs("memberOf")
            .into_iter()
            .filter(|g| protection.admits(g))
            .collect();
        for group in guids_of(conn, &root, &groups).await? {
            memberships.push(AdChange::AddMembers {
                group,
                members: vec![guid],
            });
        }
    }
    if objects.is_empty() {
        return Ok(());
    }
    tracing::info!(
        count = objects.len(),
        "objects joined the scope's groups: reading them in"
    );
    objects.extend(memberships);
    let to = cookie.clone().unwrap_or_default();
    let mut from = cookie.clone();
    push(shared, &mut from, to, objects).await
}

/// Up to this many DNs in a preview's sample.
const SAMPLE: usize = 20;

fn count(entries: &mut [(ObjectKind, String)]) -> ScopeCount {
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    ScopeCount {
        users: entries.iter().filter(|(k, _)| *k == ObjectKind::User).count() as u64,
        groups: entries.iter().filter(|(k, _)| *k == ObjectKind::Group).count() as u64,
        sample: entries.iter().take(SAMPLE).map(|(_, dn)| dn.clone()).collect(),
    }
}

/// Counts, over AD as it is, what `req.scope` would take in (in scope, not
/// protected, not linked: the import creates or matches them) and leave
/// out (linked, no longer in scope: reconciliation finds them gone), on a
/// connection of its own; then answers the cloud.
pub(super) async fn preview(shared: &Shared, current: Protection, req: ScopePreviewRequest) -> Result<(), String> {
    let root = root(shared).await;
    let user_ou = shared.domain.read().await.user_ou.clone();
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    let mut proposed = current;
    proposed.scope_members = None;
    proposed.missing_groups.clear();
    if !req.scope.groups.is_empty() {
        let (members, missing) = group_closure(&mut conn, &root, &req.scope.groups)
            .await
            .map_err(|e| e.to_string())?;
        proposed.scope_members = Some(members);
        proposed.missing_groups = missing;
    }
    proposed.scope = req.scope.clone();
    proposed.user_ou = user_ou;
    let mut linked: HashSet<Uuid> = HashSet::new();
    shared
        .cloud
        .each_link(|l| {
            linked.insert(l.guid);
        })
        .await
        .map_err(|e| e.to_string())?;
    let all = conn
        .search_paged(
            &root,
            ldap3::Scope::Subtree,
            USERS_AND_GROUPS,
            &[
                "objectGUID",
                "objectClass",
                "objectSid",
                "sAMAccountName",
                "adminCount",
                "isCriticalSystemObject",
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
    conn.close().await;
    let mut entering = Vec::new();
    let mut leaving = Vec::new();
    let mut staying = 0u64;
    for e in &all {
        let Some(guid) = e.guid() else { continue };
        let kind = if e.has_class("group") {
            ObjectKind::Group
        } else {
            ObjectKind::User
        };
        // As reconciliation judges: a linked object stays while in scope.
        let admitted = proposed.admits(&e.dn);
        match (linked.contains(&guid), admitted) {
            (true, true) => staying += 1,
            (true, false) => leaving.push((kind, e.dn.clone())),
            (false, true) if proposed.why(e).is_none() => entering.push((kind, e.dn.clone())),
            (false, _) => {}
        }
    }
    let answer = ScopePreviewAnswer {
        entering: count(&mut entering),
        leaving: count(&mut leaving),
        staying,
        missing_groups: proposed.missing_groups.clone(),
    };
    tracing::info!(
        entering = entering.len(),
        leaving = leaving.len(),
        "scope preview answered"
    );
    shared
        .cloud
        .answer_scope_preview(req.id, &answer)
        .await
        .map_err(|e| e.to_string())
}
