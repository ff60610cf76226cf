//! Repairs found by the comparison of both sides whole (anti-entropy): the
//! agent read the objects that differ fresh from AD and pushed them with
//! `repair` set.
//!
//! An object's attributes take the ordinary three-way merge (a field only AD
//! changed comes up, a field only the cloud changed goes down again, a
//! field both changed follows the authority policy). A group's member list
//! has no last agreed state: the members both sides sync (those linked in
//! the domain) are set to AD's list, or, under the `cloud` authority
//! policy, AD is sent the cloud's — unless a cloud change to the group is
//! still on its way to AD, when the list is left for the next comparison.
//! Every repair that changes something is audited as `sync.drift_repaired`.

use std::collections::BTreeSet;

use ferry_proto::agent::{AdChange, Authority};
use ferry_proto::record::ObjectKind;
use serde_json::json;
use uuid::Uuid;

use super::ad_apply::{apply_one, linked, resolve_members};
use super::{add_members, audit, remove_members, target, WriteCtx, ORIGIN_CLOUD};
use crate::store::{Domain, Member, StoreResult, Tx};

/// Applies one repair; `true` when it changed something (in the cloud, or
/// in what goes down to AD).
pub async fn apply(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, change: &AdChange) -> StoreResult<bool> {
    let (guid, what) = match change {
        AdChange::SetMembers { group, members } => {
            return set_members(tx, ctx, domain, *group, members).await;
        }
        AdChange::UpsertUser { guid, .. } => (*guid, "attributes"),
        AdChange::UpsertGroup { guid, .. } => (*guid, "attributes"),
        other => return apply_one(tx, ctx, domain, other).await,
    };
    let before = tx.link_by_guid(ctx.org_id, domain.id, guid).await?;
    let changed = apply_one(tx, ctx, domain, change).await?;
    let after = tx.link_by_guid(ctx.org_id, domain.id, guid).await?;
    if changed || before.is_none() {
        if let Some(link) = after {
            let details = json!({ "ad_guid": guid, "dn": link.ad_dn, "repaired": what, "linked": before.is_none() });
            audit(
                tx,
                ctx,
                "sync.drift_repaired",
                &target(link.kind, link.object_id),
                details,
            )
            .await?;
            return Ok(true);
        }
    }
    Ok(changed)
}

/// A group's synced members set to AD's list (or AD sent the cloud's).
async fn set_members(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, group: Uuid, ad: &[Uuid]) -> StoreResult<bool> {
    let Some(gid) = linked(tx, ctx, domain, group, ObjectKind::Group).await? else {
        return Ok(false);
    };
    if tx
        .change_on_its_way(ctx.org_id, domain.id, domain.feed_cursor, gid)
        .await?
    {
        // The lists differ because a cloud change is on its way: not drift.
        return Ok(false);
    }
    let in_ad: BTreeSet<Member> = resolve_members(tx, ctx, domain, ad).await?.into_iter().collect();
    // Members the domain does not sync (cloud-only, another domain's) are
    // not AD's to judge.
    let members = tx.group_members(ctx.org_id, gid).await?;
    let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
    let links = tx.link_guids_of_many(ctx.org_id, &ids).await?;
    let in_cloud: BTreeSet<Member> = members
        .into_iter()
        .filter(|m| links.get(&m.id).is_some_and(|l| l.iter().any(|(d, _)| *d == domain.id)))
        .collect();
    let only_ad: Vec<Member> = in_ad.difference(&in_cloud).copied().collect();
    let only_cloud: Vec<Member> = in_cloud.difference(&in_ad).copied().collect();
    if only_ad.is_empty() && only_cloud.is_empty() {
        return Ok(false);
    }
    let to_ad = domain.settings.policies.authority == Authority::Cloud;
    if to_ad {
        // The cloud's list stands: AD is sent what it lacks and what it has too many of.
        let mut entries = super::membership_entries(gid, &only_cloud, true);
        entries.extend(super::membership_entries(gid, &only_ad, false));
        tx.append_feed_many(ctx.org_id, ORIGIN_CLOUD, &entries, ctx.now).await?;
    } else {
        add_members(tx, ctx, gid, &only_ad).await?;
        remove_members(tx, ctx, gid, &only_cloud).await?;
    }
    let names = |ms: &[Member]| ms.iter().map(|m| target(m.kind, m.id)).collect::<Vec<_>>();
    let details = json!({
        "ad_guid": group,
        "repaired": "members",
        "only_in_ad": names(&only_ad),
        "only_in_cloud": names(&only_cloud),
        "winner": if to_ad { "cloud" } else { "ad" },
    });
    audit(tx, ctx, "sync.drift_repaired", &target(ObjectKind::Group, gid), details).await?;
    Ok(true)
}
