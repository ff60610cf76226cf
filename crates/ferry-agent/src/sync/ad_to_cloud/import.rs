//! The full import: every user and group in scope, read page by page and
//! pushed while the next page is read; memberships and managers follow once
//! every object is in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ferry_proto::agent::AdChange;
use uuid::Uuid;

use super::push::push;
use super::reconcile::{gone, linked_guids};
use super::{root, scope_page};
use crate::ad::mapping::{group_record, user_record, when_changed};
use crate::ad::{AdConnection, AdEntry};
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// Changes per pushed batch.
const BATCH: usize = 500;
/// Cookie prefix of a full import in progress.
pub(super) const IMPORT: &str = ferry_proto::agent::IMPORT_COOKIE_PREFIX;

const PUSH_STOPPED: &str = "the push to the cloud stopped";

/// What a full import leaves.
pub(super) struct Imported {
    /// The DirSync cookie the increments start from.
    pub cookie: String,
    /// Linked objects the read did not find in scope (deleted or moved out):
    /// the import is a reconciliation too, so none has to follow it.
    pub gone: Vec<Uuid>,
    /// The DC's `highestCommittedUSN` just before the cookie was taken:
    /// what changed after it, the loop's quick path reads (a few USNs) or
    /// leaves to a DirSync round. Without it the first round after an
    /// import would be owed whatever happened, and a round that names
    /// nothing is the hint of a delete: a needless reconciliation, a read
    /// of every object that on Samba holds writes back while its first page
    /// is computed (7 s at 100,000 objects).
    pub usn: i64,
}

/// Reads everything in scope and pushes it; returns the DirSync cookie the
/// increments start from (taken before the read, so nothing is missed).
/// Each page of the read is turned into upserts and pushed while the next
/// page is read; memberships and managers follow once every object is in.
pub(super) async fn full_import(
    shared: &Shared,
    conn: &mut AdConnection,
    mut cookie: Option<String>,
    protection: &Protection,
) -> Result<Imported, String> {
    let root = root(shared).await;
    let started = Instant::now();
    tracing::info!(%root, "full import: starting");
    // The links before the read, as reconciliation reads them: the read is
    // then the in-scope set they are judged against (at 100,000 objects a
    // reconciliation's own read would hold a DC worker for ~20 s).
    let linked = linked_guids(shared).await?;
    // Only a cookie is needed, taken before the read: DirSync then reports
    // whatever changes while the read runs (the read is the data).
    let usn = conn.highest_committed_usn().await.map_err(|e| e.to_string())?;
    let final_cookie = B64.encode(conn.dirsync_cookie_now(&root).await.map_err(|e| e.to_string())?);
    tracing::info!(
        secs = started.elapsed().as_secs_f32(),
        "full import: DirSync cookie taken"
    );
    // `None` ends the stream: the read finished. A stream that ends without
    // it (the read failed) must not move the cookie to `final_cookie`.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<AdChange>>>(2);
    // How long each side waited for the other during the read: the read
    // for the cloud (a full channel), the push for AD (an empty one). The
    // larger says which side the read's time is spent on.
    let (read_waited, push_waited) = (Waited::default(), Waited::default());
    let (read_waited, push_waited) = (&read_waited, &push_waited);
    let produce = async move {
        let send = |tx: &tokio::sync::mpsc::Sender<Option<Vec<AdChange>>>, batch: Vec<AdChange>| {
            let tx = tx.clone();
            async move {
                let asked = Instant::now();
                let sent = tx.send(Some(batch)).await.map_err(|_| PUSH_STOPPED.to_owned());
                read_waited.add(asked);
                sent
            }
        };
        let mut pager = crate::ad::Pager::default();
        // Of each entry, only what the second pass needs is kept (not the
        // entry): its DN, a group's member DNs, a managed user's change.
        let mut later = Later::default();
        let mut present = HashSet::new();
        let mut pending: Vec<AdChange> = Vec::new();
        loop {
            let (page, more) = scope_page(conn, &root, protection, &mut pager, Some(&mut present)).await?;
            for (guid, e) in page {
                pending.push(later.keep(&e, guid));
                if pending.len() >= BATCH {
                    send(&tx, std::mem::take(&mut pending)).await?;
                }
            }
            if !more {
                break;
            }
        }
        let objects = later.objects();
        tracing::info!(
            objects,
            secs = started.elapsed().as_secs_f32(),
            waited_for_cloud_secs = read_waited.secs(),
            waited_for_ad_secs = push_waited.secs(),
            "full import: read done; memberships and managers follow"
        );
        pending.extend(later.changes());
        for chunk in pending.chunks(BATCH) {
            send(&tx, chunk.to_vec()).await?;
        }
        tx.send(None).await.map_err(|_| PUSH_STOPPED.to_owned())?;
        Ok::<_, String>((objects, present))
    };
    // `move`: when the push fails, the receiver must go with it, so a read
    // blocked on a full channel ends instead of waiting forever.
    let last = final_cookie.clone();
    let consume = async move {
        let mut batches = 0usize;
        let mut done = 0usize;
        loop {
            let asked = Instant::now();
            let next = rx.recv().await;
            push_waited.add(asked);
            let Some(item) = next else { break };
            let Some(chunk) = item else {
                // The read finished: only now may the cookie become final.
                push(shared, &mut cookie, last, vec![]).await?;
                return Ok(done);
            };
            batches += 1;
            done += chunk.len();
            push(shared, &mut cookie, format!("{IMPORT}{batches}"), chunk).await?;
            tracing::info!(done, "full import: progress");
        }
        Err("the read of AD stopped before its end".to_owned())
    };
    let (read, pushed) = tokio::join!(produce, consume);
    // When one side fails the other stops too; report the cause.
    let ((objects, present), changes) = match (read, pushed) {
        (Ok(o), Ok(c)) => (o, c),
        (Err(r), Err(p)) if r == PUSH_STOPPED => return Err(p),
        (Err(r), _) => return Err(r),
        (Ok(_), Err(p)) => return Err(p),
    };
    tracing::info!(
        objects,
        changes,
        secs = started.elapsed().as_secs_f32(),
        "full import: done"
    );
    Ok(Imported {
        cookie: final_cookie,
        gone: gone(shared, linked, &present),
        usn,
    })
}

/// Time spent waiting, summed (microseconds).
#[derive(Default)]
struct Waited(AtomicU64);

impl Waited {
    fn add(&self, since: Instant) {
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_add(us, Ordering::Relaxed);
    }

    fn secs(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// What the import sends once every object is in: memberships, then
/// managers (a user's manager is linked once every user exists). Each entry
/// is reduced to this as it is read, so the read never holds the entries;
/// every DN is kept once, and a group's members as numbers naming them
/// (500,000 memberships are 2 MB, not 500,000 strings).
#[derive(Default)]
struct Later {
    /// Every DN seen (an object's, a member's, a manager's), lowercased: its number.
    ids: HashMap<Box<str>, u32>,
    /// By number: the GUID of the object at that DN, once read.
    guids: Vec<Option<Uuid>>,
    /// Each group with its members' numbers.
    groups: Vec<(Uuid, Vec<u32>)>,
    /// Each user with a manager: the user's upsert and the manager's number.
    managed: Vec<(AdChange, u32)>,
}

impl Later {
    /// The number of a DN.
    fn id(&mut self, dn: &str) -> u32 {
        let key = dn.to_lowercase();
        if let Some(id) = self.ids.get(key.as_str()) {
            return *id;
        }
        let id = u32::try_from(self.guids.len()).unwrap_or(u32::MAX);
        self.ids.insert(key.into_boxed_str(), id);
        self.guids.push(None);
        id
    }

    /// Objects read.
    fn objects(&self) -> usize {
        self.guids.iter().filter(|g| g.is_some()).count()
    }

    /// Keeps what the second pass needs of `e`; returns its upsert.
    fn keep(&mut self, e: &AdEntry, guid: Uuid) -> AdChange {
        let id = self.id(&e.dn);
        if let Some(slot) = self.guids.get_mut(id as usize) {
            *slot = Some(guid);
        }
        if e.has_class("group") {
            let members = e.strs("member").iter().map(|m| self.id(m)).collect();
            self.groups.push((guid, members));
            return AdChange::UpsertGroup {
                guid,
                dn: e.dn.clone(),
                record: group_record(e),
            };
        }
        let (rec, manager) = user_record(e);
        let upsert = |rec| AdChange::UpsertUser {
            guid,
            dn: e.dn.clone(),
            record: Box::new(rec),
            changed_at: when_changed(e),
        };
        if let Some(m) = manager {
            let m = self.id(&m);
            self.managed.push((upsert(rec.clone()), m));
        }
        upsert(rec)
    }

    /// The memberships, then the managers, of every object kept.
    fn changes(self) -> Vec<AdChange> {
        let guid = |id: &u32| self.guids.get(*id as usize).copied().flatten();
        let mut out: Vec<AdChange> = self
            .groups
            .iter()
            .map(|(group, ids)| AdChange::SetMembers {
                group: *group,
                members: ids.iter().filter_map(guid).collect(),
            })
            .collect();
        for (mut change, manager) in self.managed.iter().cloned() {
            let Some(m) = guid(&manager) else { continue };
            if let AdChange::UpsertUser { record, .. } = &mut change {
                // Managers are linked once every user exists: a second, cheap pass.
                record.manager = Some(m.to_string());
            }
            out.push(change);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, class: &str, attrs: &[(&str, &[&str])]) -> AdEntry {
        let mut e = AdEntry {
            dn: dn.into(),
            ..Default::default()
        };
        e.attrs
            .insert("objectclass".into(), vec![b"top".to_vec(), class.as_bytes().to_vec()]);
        for (k, vs) in attrs {
            e.attrs
                .insert(k.to_lowercase(), vs.iter().map(|v| v.as_bytes().to_vec()).collect());
        }
        e
    }

    #[test]
    fn members_and_managers_resolve_to_the_objects_read_whatever_the_order_and_case() {
        let (ann, bob, team) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut later = Later::default();
        later.keep(&entry("CN=Ann,OU=P,DC=x", "user", &[]), ann);
        // A member read after its group, one named in another case, one never read (out of scope).
        later.keep(
            &entry(
                "CN=Team,OU=G,DC=x",
                "group",
                &[(
                    "member",
                    &["cn=ann,ou=p,dc=x", "CN=Bob,OU=P,DC=x", "CN=Gone,OU=Elsewhere,DC=x"],
                )],
            ),
            team,
        );
        later.keep(
            &entry("CN=Bob,OU=P,DC=x", "user", &[("manager", &["CN=ANN,OU=P,DC=x"])]),
            bob,
        );
        assert_eq!(later.objects(), 3);
        let changes = later.changes();
        assert!(matches!(
            &changes[0],
            AdChange::SetMembers { group, members } if *group == team && *members == vec![ann, bob]
        ));
        assert!(matches!(
            &changes[1],
            AdChange::UpsertUser { guid, record, .. } if *guid == bob && record.manager == Some(ann.to_string())
        ));
        assert_eq!(changes.len(), 2);
    }
}
