//! The cloud's half of the comparison of both sides whole (anti-entropy).
//!
//! `POST /agent/v1/audit` first looks at the cloud's own side: a linked
//! object whose cloud record differs from what AD last held (the link's
//! base), with no change on its way to AD and no open sync error, lost a
//! change on its way down: it is sent down again. Then it answers one digest
//! per objectGUID range of what AD last held (`ferry_proto::audit`), for the
//! agent to compare with AD as it reads it now; `POST /agent/v1/audit/objects`
//! gives the per-object digests of the ranges that differ.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::Json;
use ferry_proto::agent::{CloudChange, SyncDirection};
use ferry_proto::audit::{
    bucket_digests, bucket_of, entry_digest, members_digest, AuditDigests, AuditObject, AuditObjects,
    AuditObjectsRequest, BUCKETS,
};
use ferry_proto::names;
use ferry_proto::record::{GroupRecord, ObjectKind, UserRecord};
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::directory::record::{group_record, user_record};
use crate::directory::{audit_many, target, WriteCtx, ORIGIN_CLOUD};
use crate::http::auth::AgentAuth;
use crate::http::{ApiError, JsonBody};
use crate::store::{Agent, Link, StoreResult, Tx};

/// `POST /agent/v1/audit`.
pub(super) async fn digests(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
) -> Result<Json<AuditDigests>, ApiError> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let domain = tx.get_domain(agent.org_id, agent.domain_id).await?;
    super::require_primary(&agent, &domain, now)?;
    let ctx = WriteCtx {
        org_id: agent.org_id,
        origin: ORIGIN_CLOUD.to_owned(),
        actor: format!("agent:{}", agent.id),
        now,
    };
    let links = tx.audit_links(agent.org_id, agent.domain_id).await?;
    let resent = resend_lost(&mut tx, &ctx, &agent, domain.feed_cursor, &links).await?;
    let entries = entries(&mut tx, &agent, links).await?;
    state.commit(tx).await?;
    if resent > 0 {
        tracing::warn!(domain = %agent.domain_id, resent, "cloud changes that never reached AD: sent down again");
    }
    Ok(Json(AuditDigests {
        buckets: bucket_digests(&entries.iter().map(|(g, e)| (*g, e.1.clone())).collect::<Vec<_>>()),
        objects: entries.len() as u64,
        resent,
    }))
}

/// `POST /agent/v1/audit/objects`.
pub(super) async fn objects(
    State(state): State<AppState>,
    AgentAuth(agent): AgentAuth,
    JsonBody(req): JsonBody<AuditObjectsRequest>,
) -> Result<Json<AuditObjects>, ApiError> {
    if req.buckets.iter().any(|b| usize::from(*b) >= BUCKETS) {
        return Err(ApiError::bad_request("bucket numbers run from 0 to 255"));
    }
    let wanted: HashSet<usize> = req.buckets.iter().map(|b| usize::from(*b)).collect();
    let mut tx = state.store.begin().await?;
    let links = tx.audit_links(agent.org_id, agent.domain_id).await?;
    let all = entries(&mut tx, &agent, links).await?;
    let objects = all
        .into_iter()
        .filter(|(g, _)| wanted.contains(&bucket_of(*g)))
        .map(|(guid, (kind, _, own, members))| AuditObject {
            guid,
            kind,
            digest: own,
            members,
        })
        .collect();
    Ok(Json(AuditObjects { objects }))
}

/// Per linked object: kind, entry digest, own digest, members' digest.
type Entry = (ObjectKind, String, Option<String>, Option<String>);

async fn entries(tx: &mut Tx, agent: &Agent, links: Vec<Link>) -> StoreResult<Vec<(Uuid, Entry)>> {
    let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (g, m) in tx.linked_memberships(agent.org_id, agent.domain_id).await? {
        members.entry(g).or_default().push(m);
    }
    let mut out: Vec<(Uuid, Entry)> = links
        .into_iter()
        .map(|l| {
            let m = (l.kind == ObjectKind::Group)
                .then(|| members_digest(members.get_mut(&l.ad_guid).map_or(&mut [][..], |v| &mut v[..])));
            let entry = entry_digest(l.kind, l.ad_digest.as_deref(), m.as_deref());
            (l.ad_guid, (l.kind, entry, l.ad_digest, m))
        })
        .collect();
    // AD accounts kept (disabled) after their cloud user was deleted are
    // compared as AD last held them.
    for (guid, own) in tx.cloud_deleted_digests(agent.org_id, agent.domain_id).await? {
        let entry = entry_digest(ObjectKind::User, own.as_deref(), None);
        out.push((guid, (ObjectKind::User, entry, own, None)));
    }
    Ok(out)
}

/// Sends down what differs from AD's last record with nothing on its way.
async fn resend_lost(tx: &mut Tx, ctx: &WriteCtx, agent: &Agent, cursor: i64, links: &[Link]) -> StoreResult<u64> {
    let on_the_way = tx.objects_on_their_way(agent.org_id, agent.domain_id, cursor).await?;
    let failing: HashSet<String> = tx
        .open_sync_errors(agent.org_id, agent.domain_id)
        .await?
        .into_iter()
        .map(|(_, key, _, _)| key)
        .collect();
    let quiet = |id: Uuid, guid: Uuid| {
        !on_the_way.contains(&id) && !failing.contains(&id.to_string()) && !failing.contains(&guid.to_string())
    };
    let mut lost: Vec<(Uuid, CloudChange, serde_json::Value)> = Vec::new();
    for (link, row) in tx.linked_users(agent.org_id, agent.domain_id).await? {
        let Some(base) = link.base.and_then(|b| serde_json::from_value::<UserRecord>(b).ok()) else {
            continue;
        };
        let cloud = user_record(&row);
        let fields = user_differences(&base, &cloud);
        if !fields.is_empty() && quiet(row.id, link.ad_guid) {
            let change = CloudChange::UpsertUser {
                id: row.id,
                record: Box::new(cloud),
            };
            lost.push((row.id, change, json!({ "ad_guid": link.ad_guid, "fields": fields })));
        }
    }
    let groups: Vec<&Link> = links
        .iter()
        .filter(|l| l.kind == ObjectKind::Group && quiet(l.object_id, l.ad_guid))
        .collect();
    let ids: Vec<Uuid> = groups.iter().map(|l| l.object_id).collect();
    let rows = tx.get_groups_many(agent.org_id, &ids).await?;
    for link in groups {
        let Some(base) = link
            .base
            .clone()
            .and_then(|b| serde_json::from_value::<GroupRecord>(b).ok())
        else {
            continue;
        };
        let Some(row) = rows.get(&link.object_id) else {
            continue;
        };
        let cloud = group_record(row);
        let fields = group_differences(&base, &cloud);
        if !fields.is_empty() {
            let change = CloudChange::UpsertGroup {
                id: row.id,
                record: cloud,
            };
            lost.push((row.id, change, json!({ "ad_guid": link.ad_guid, "fields": fields })));
        }
    }
    let n = lost.len() as u64;
    let mut feed = Vec::with_capacity(lost.len());
    let mut audits = Vec::with_capacity(lost.len());
    for (id, change, mut details) in lost {
        let kind = match change {
            CloudChange::UpsertGroup { .. } => ObjectKind::Group,
            _ => ObjectKind::User,
        };
        details["repaired"] = json!("sent to AD again");
        details["direction"] = json!(SyncDirection::CloudToAd);
        audits.push(("sync.drift_repaired", target(kind, id), details));
        feed.push((id, change));
    }
    tx.append_feed_many(ctx.org_id, ORIGIN_CLOUD, &feed, ctx.now).await?;
    audit_many(tx, ctx, audits).await?;
    Ok(n)
}

/// The fields a user's cloud record holds otherwise than AD last did.
/// `manager` is left out: cloud → AD does not write it.
fn user_differences(base: &UserRecord, cloud: &UserRecord) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => {$(
            if base.$f != cloud.$f {
                out.push(stringify!($f));
            }
        )*};
    }
    cmp!(
        username,
        given_name,
        family_name,
        display_name,
        email,
        phone,
        mobile,
        title,
        department,
        company,
        description,
        employee_number,
        active
    );
    out
}

/// The fields a group's cloud record holds otherwise than AD last did; an
/// AD name Ferry derived from the cloud's is the same name.
fn group_differences(base: &GroupRecord, cloud: &GroupRecord) -> Vec<&'static str> {
    let mut out = Vec::new();
    let derived = names::sam_account_name_for(&cloud.name, names::MAX_GROUP_SAM);
    if base.name != cloud.name && !names::is_sam_for(&base.name, &derived, names::MAX_GROUP_SAM) {
        out.push("name");
    }
    if base.description != cloud.description {
        out.push("description");
    }
    out
}
