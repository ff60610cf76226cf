//! The fast path of an import: AD objects the cloud has never seen — no
//! link, not deleted in the cloud, no cloud object of the same name — are
//! created together, a few multi-row statements per batch instead of a
//! dozen statements per object (each a round trip to PostgreSQL). They
//! write exactly what `upsert_user`/`upsert_group` write for a new object:
//! the object placed in its home, its feed entry, its audit entry, its link
//! (a user's with the record seen in AD as its base). Every other change
//! takes the ordinary path, which reads the store as it is then.

use std::collections::{HashMap, HashSet};

use ferry_proto::agent::{AdChange, CloudChange};
use ferry_proto::record::ObjectKind;
use serde_json::json;
use uuid::Uuid;

use super::subject;
use crate::directory::record::{apply_group_record, apply_user_record, group_record, user_record};
use crate::directory::{audit_many, home_for_new, target, WriteCtx};
use crate::store::{Domain, Link, NewGroup, NewUser, StoreError, StoreResult, Tx};

/// Which of `changes` create an object the cloud has never seen, judged
/// against the store before the batch and the batch's earlier changes: an
/// object or a name an earlier change touches may exist by the time this
/// one applies, so such a change takes the ordinary path.
pub(super) async fn find(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, changes: &[AdChange]) -> StoreResult<Vec<bool>> {
    let mut fresh = vec![false; changes.len()];
    let upserts: Vec<(Uuid, ObjectKind, String)> = changes.iter().filter_map(named).collect();
    if upserts.is_empty() {
        return Ok(fresh);
    }
    let guids: Vec<Uuid> = upserts.iter().map(|(g, _, _)| *g).collect();
    let linked = tx.objects_by_guids(ctx.org_id, domain.id, &guids).await?;
    let deleted = tx.cloud_deleted_among(ctx.org_id, domain.id, &guids).await?;
    let mut taken: HashMap<ObjectKind, HashSet<String>> = HashMap::new();
    for kind in [ObjectKind::User, ObjectKind::Group] {
        let keys: Vec<String> = upserts
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(_, _, key)| key.clone())
            .collect();
        taken.insert(kind, tx.taken_name_keys(ctx.org_id, kind, &keys).await?);
    }
    let mut seen_objects = HashSet::new();
    let mut seen_names = HashSet::new();
    for (i, change) in changes.iter().enumerate() {
        let first_of_object = seen_objects.insert(subject(change));
        let Some((guid, kind, key)) = named(change) else {
            continue;
        };
        let first_of_name = seen_names.insert((kind, key.clone()));
        let manager = matches!(change, AdChange::UpsertUser { record, .. } if record.manager.is_some());
        fresh[i] = first_of_object
            && first_of_name
            && !manager
            && !linked.contains_key(&guid)
            && !deleted.contains(&guid)
            && !taken.get(&kind).is_some_and(|t| t.contains(&key));
    }
    Ok(fresh)
}

/// An upsert's object, kind and lowercased name (the store's unique key).
fn named(change: &AdChange) -> Option<(Uuid, ObjectKind, String)> {
    match change {
        AdChange::UpsertUser { guid, record, .. } => Some((*guid, ObjectKind::User, record.username.to_lowercase())),
        AdChange::UpsertGroup { guid, record, .. } => Some((*guid, ObjectKind::Group, record.name.to_lowercase())),
        _ => None,
    }
}

/// Creates the objects of `changes` (each one [`find`] judged fresh), in
/// their order; returns how many it created.
pub(super) async fn create(tx: &mut Tx, ctx: &WriteCtx, domain: &Domain, changes: &[&AdChange]) -> StoreResult<u64> {
    if changes.is_empty() {
        return Ok(0);
    }
    let home = home_for_new(tx, ctx).await?;
    let mut users = Vec::new();
    let mut groups = Vec::new();
    // In the batch's order: (kind, cloud id, objectGUID, DN, link base, AD digest).
    let mut made = Vec::with_capacity(changes.len());
    for change in changes {
        // Time-ordered ids (UUIDv7): a batch's new rows go to the end of
        // every index keyed by a cloud id (users, groups, links,
        // memberships) instead of one random page each. With random (v4)
        // ids each push of an import rewrote pages all over those indexes,
        // and its cost grew with the store: at 100,000 users SQLite's
        // replay of the objects took 8.6-8.9 s, with v7 4.9 s and flat
        // per push (`examples/import_cost.rs`). An id is no secret (an
        // object's creation time is in its SCIM `meta` anyway).
        let id = Uuid::now_v7();
        match change {
            AdChange::UpsertUser { guid, dn, record, .. } => {
                // As AD holds it (a fresh user names no manager), for the
                // comparison of both sides.
                let digest = ferry_proto::audit::user_digest(dn, record);
                let mut record = (**record).clone();
                if record.awaiting_password {
                    // Disabled in AD only for want of a password: a new user counts as active.
                    record.active = true;
                    record.awaiting_password = false;
                }
                users.push((
                    id,
                    NewUser {
                        username: record.username.clone(),
                        external_id: None,
                        active: record.active,
                        doc: apply_user_record(&json!({}), &record),
                        password_hash: None,
                    },
                ));
                made.push((
                    ObjectKind::User,
                    id,
                    *guid,
                    dn,
                    serde_json::to_value(&record).ok(),
                    digest,
                ));
            }
            AdChange::UpsertGroup { guid, dn, record } => {
                groups.push((
                    id,
                    NewGroup {
                        name: record.name.clone(),
                        external_id: None,
                        doc: apply_group_record(&json!({}), record),
                    },
                ));
                // A group's base is AD's record, as for one object.
                made.push((
                    ObjectKind::Group,
                    id,
                    *guid,
                    dn,
                    serde_json::to_value(record).ok(),
                    ferry_proto::audit::group_digest(dn, record),
                ));
            }
            _ => return Err(StoreError::Corrupt("only upserts create objects".into())),
        }
    }
    tx.insert_users_many(ctx.org_id, &users, home, ctx.now).await?;
    tx.insert_groups_many(ctx.org_id, &groups, home, ctx.now).await?;
    let user_ids: Vec<Uuid> = users.iter().map(|(id, _)| *id).collect();
    let group_ids: Vec<Uuid> = groups.iter().map(|(id, _)| *id).collect();
    let user_rows = tx.get_users_many(ctx.org_id, &user_ids).await?;
    let group_rows = tx.get_groups_many(ctx.org_id, &group_ids).await?;
    let mut feed = Vec::with_capacity(made.len());
    let mut audits = Vec::with_capacity(made.len());
    for (kind, id, ..) in &made {
        let (change, action, details) = match kind {
            ObjectKind::User => {
                let row = user_rows.get(id).ok_or(StoreError::NotFound)?;
                let change = CloudChange::UpsertUser {
                    id: *id,
                    record: Box::new(user_record(row)),
                };
                (
                    change,
                    "user.create",
                    json!({ "userName": row.username, "active": row.active }),
                )
            }
            ObjectKind::Group => {
                let row = group_rows.get(id).ok_or(StoreError::NotFound)?;
                let change = CloudChange::UpsertGroup {
                    id: *id,
                    record: group_record(row),
                };
                (change, "group.create", json!({ "displayName": row.name }))
            }
        };
        feed.push((*id, change));
        audits.push((action, target(*kind, *id), details));
    }
    // The feed entries before the links, as for one object: a new object's
    // entry names no link yet.
    tx.append_feed_many(ctx.org_id, &ctx.origin, &feed, ctx.now).await?;
    audit_many(tx, ctx, audits).await?;
    let links: Vec<Link> = made
        .into_iter()
        .map(|(kind, object_id, ad_guid, dn, base, digest)| Link {
            domain_id: domain.id,
            kind,
            object_id,
            ad_guid,
            ad_dn: dn.clone(),
            synced_at: ctx.now,
            base,
            ad_digest: Some(digest),
        })
        .collect();
    tx.put_links_many(ctx.org_id, &links).await?;
    Ok(links.len() as u64)
}
