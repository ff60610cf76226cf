//! Anti-entropy: both sides compared whole, every object, attribute and
//! membership, cheaply (`ferry_proto::audit`), and what differs repaired.
//!
//! The cloud keeps a digest of every AD object as the agent last pushed it;
//! [`compare`] reads AD whole on a connection of its own, digests it the
//! same way, compares one digest per objectGUID range, then per-object
//! digests only in the ranges that differ. Asking for the cloud's digests
//! also makes the cloud send down its own changes that never reached AD.
//! [`repair`] then reads each object that differs fresh from AD and pushes
//! it marked as a repair: the cloud merges it three-way (a field only AD
//! changed comes up, one only the cloud changed goes down again) and sets
//! a group's synced members to AD's list (the cloud's under the `cloud`
//! authority policy), auditing each repair.
//!
//! Objects with an open AD → cloud sync error are left out on both counts:
//! they differ for a reason the admin is shown.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use ferry_proto::agent::AdChange;
use ferry_proto::audit::{
    bucket_digests, bucket_of, entry_digest, group_digest, members_digest, user_digest, AuditReport,
};
use ferry_proto::record::ObjectKind;
use uuid::Uuid;

use super::increment::{guids_of, read_in_scope, upsert_of};
use super::push::push_as;
use super::{root, scope_page};
use crate::ad::mapping::{group_record, user_record};
use crate::ad::AdConnection;
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// What a comparison found.
#[derive(Debug)]
pub(super) struct Drift {
    /// Objects that differ (attributes, or a group's members), or are in AD
    /// and not in the cloud.
    pub objects: Vec<Uuid>,
    /// Objects compared.
    pub compared: u64,
    /// Cloud changes the cloud sent down again.
    pub resent: u64,
    /// When the comparison began.
    pub started: Instant,
}

/// Compares AD, read whole now, with the cloud's digests.
pub(super) async fn compare(shared: &Shared, protection: &Protection) -> Result<Drift, String> {
    let started = Instant::now();
    let root = root(shared).await;
    let refused: HashSet<Uuid> = shared
        .cloud
        .open_sync_errors()
        .await
        .map_err(|e| e.to_string())?
        .ad_to_cloud
        .iter()
        .filter_map(|k| Uuid::parse_str(k).ok())
        .collect();
    let theirs = shared.cloud.audit().await.map_err(|e| e.to_string())?;
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    let ours = read_digests(&mut conn, &root, protection, &refused).await;
    conn.close().await;
    let ours = ours?;
    let pairs: Vec<(Uuid, String)> = ours.iter().map(|(g, (_, e))| (*g, e.clone())).collect();
    let mine = bucket_digests(&pairs);
    let differing: Vec<u16> = (0..mine.len())
        .filter(|i| theirs.buckets.get(*i) != Some(&mine[*i]))
        .filter_map(|i| u16::try_from(i).ok())
        .collect();
    let mut drift = Drift {
        objects: Vec::new(),
        compared: ours.len() as u64,
        resent: theirs.resent,
        started,
    };
    if differing.is_empty() {
        return Ok(drift);
    }
    let cloud: HashMap<Uuid, String> = shared
        .cloud
        .audit_objects(differing.clone())
        .await
        .map_err(|e| e.to_string())?
        .objects
        .into_iter()
        .map(|o| {
            let entry = entry_digest(o.kind, o.digest.as_deref(), o.members.as_deref());
            (o.guid, entry)
        })
        .collect();
    let wanted: HashSet<usize> = differing.iter().map(|b| usize::from(*b)).collect();
    drift.objects = ours
        .iter()
        .filter(|(g, _)| wanted.contains(&bucket_of(**g)))
        .filter(|(g, (_, entry))| cloud.get(g) != Some(entry))
        .map(|(g, _)| *g)
        .collect();
    drift.objects.sort();
    Ok(drift)
}

/// Reads every object in scope: objectGUID → (kind, entry digest).
async fn read_digests(
    conn: &mut AdConnection,
    root: &str,
    protection: &Protection,
    refused: &HashSet<Uuid>,
) -> Result<HashMap<Uuid, (ObjectKind, String)>, String> {
    struct Seen {
        guid: Uuid,
        dn: String,
        user: Option<(ferry_proto::record::UserRecord, Option<String>)>,
        group: Option<(ferry_proto::record::GroupRecord, Vec<String>)>,
    }
    let mut pager = crate::ad::Pager::default();
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        let (page, more) = scope_page(conn, root, protection, &mut pager, None).await?;
        for (guid, e) in page {
            if refused.contains(&guid) {
                continue;
            }
            let (user, group) = if e.has_class("group") {
                (None, Some((group_record(&e), e.strs("member"))))
            } else {
                (Some(user_record(&e)), None)
            };
            seen.push(Seen {
                guid,
                dn: e.dn.clone(),
                user,
                group,
            });
        }
        if !more {
            break;
        }
    }
    let guid_of: HashMap<String, Uuid> = seen.iter().map(|s| (s.dn.to_lowercase(), s.guid)).collect();
    let mut out = HashMap::with_capacity(seen.len());
    for s in seen {
        let entry = match (s.user, s.group) {
            (Some((mut rec, manager)), _) => {
                rec.manager = manager
                    .and_then(|m| guid_of.get(&m.to_lowercase()).copied())
                    .map(|g| g.to_string());
                let own = user_digest(&s.dn, &rec);
                (ObjectKind::User, entry_digest(ObjectKind::User, Some(&own), None))
            }
            (None, Some((rec, members))) => {
                let mut m: Vec<Uuid> = members
                    .iter()
                    .filter_map(|d| guid_of.get(&d.to_lowercase()).copied())
                    .collect();
                let own = group_digest(&s.dn, &rec);
                let members = members_digest(&mut m);
                (
                    ObjectKind::Group,
                    entry_digest(ObjectKind::Group, Some(&own), Some(&members)),
                )
            }
            (None, None) => continue,
        };
        out.insert(s.guid, entry);
    }
    Ok(out)
}

/// Reads the objects that differ fresh from AD and pushes them as repairs;
/// returns the report of the whole comparison.
pub(super) async fn repair(
    shared: &Shared,
    conn: &mut AdConnection,
    cookie: &Option<String>,
    protection: &Protection,
    drift: &Drift,
) -> Result<AuditReport, String> {
    let root = root(shared).await;
    let mut changes = Vec::new();
    // Objects first, then member lists: a member must be linked to count.
    let mut members_of = Vec::new();
    for guid in &drift.objects {
        // Gone or out of scope since: reconciliation's to judge.
        let Some(mut full) = read_in_scope(conn, &root, protection, *guid).await? else {
            continue;
        };
        conn.complete_ranged(std::slice::from_mut(&mut full))
            .await
            .map_err(|e| e.to_string())?;
        changes.push(upsert_of(conn, &root, &full, *guid).await?);
        if full.has_class("group") {
            let members = guids_of(conn, &root, &full.strs("member")).await?;
            members_of.push(AdChange::SetMembers { group: *guid, members });
        }
    }
    changes.extend(members_of);
    let repaired = if changes.is_empty() {
        0
    } else {
        let to = cookie.clone().unwrap_or_default();
        let mut c = cookie.clone();
        push_as(shared, &mut c, to, changes, true).await?
    };
    let previous = shared
        .audit
        .lock()
        .ok()
        .and_then(|a| a.as_ref().map(|r| r.repaired_total))
        .unwrap_or(0);
    let report = AuditReport {
        at: crate::sync::now_ms(),
        compared: drift.compared,
        differed: drift.objects.len() as u64,
        repaired,
        resent: drift.resent,
        repaired_total: previous + repaired + drift.resent,
    };
    if report.differed > 0 || report.resent > 0 {
        tracing::warn!(
            compared = report.compared,
            differed = report.differed,
            repaired = report.repaired,
            resent = report.resent,
            sample = ?drift.objects.iter().take(5).collect::<Vec<_>>(),
            secs = drift.started.elapsed().as_secs_f32(),
            "both sides compared whole: drift found and repaired"
        );
    } else {
        tracing::info!(
            compared = report.compared,
            secs = drift.started.elapsed().as_secs_f32(),
            "both sides compared whole: equal"
        );
    }
    crate::metrics::audited(&report);
    if let Ok(mut a) = shared.audit.lock() {
        *a = Some(report.clone());
    }
    Ok(report)
}
