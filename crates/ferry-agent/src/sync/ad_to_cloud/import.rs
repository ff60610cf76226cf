//! The full import: every user and group in scope, read page by page and
//! pushed while the next page is read; memberships and managers follow once
//! every object is in.

use std::collections::HashMap;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ferry_proto::agent::AdChange;
use uuid::Uuid;

use super::push::push;
use super::{root, scope_page};
use crate::ad::mapping::{group_record, user_record, when_changed};
use crate::ad::{AdConnection, AdEntry};
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// Changes per pushed batch.
const BATCH: usize = 500;
/// Cookie prefix of a full import in progress.
pub(super) const IMPORT: &str = "import:";

const PUSH_STOPPED: &str = "the push to the cloud stopped";

/// Reads everything in scope and pushes it; returns the DirSync cookie the
/// increments start from (taken before the read, so nothing is missed).
/// Each page of the read is turned into upserts and pushed while the next
/// page is read; memberships and managers follow once every object is in.
pub(super) async fn full_import(
    shared: &Shared,
    conn: &mut AdConnection,
    mut cookie: Option<String>,
    protection: &Protection,
) -> Result<String, String> {
    let root = root(shared).await;
    let started = Instant::now();
    tracing::info!(%root, "full import: starting");
    // Only a cookie is needed, taken before the read: DirSync then reports
    // whatever changes while the read runs (the read is the data).
    let final_cookie = B64.encode(conn.dirsync_cookie_now(&root).await.map_err(|e| e.to_string())?);
    tracing::info!(
        secs = started.elapsed().as_secs_f32(),
        "full import: DirSync cookie taken"
    );
    // `None` ends the stream: the read finished. A stream that ends without
    // it (the read failed) must not move the cookie to `final_cookie`.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<AdChange>>>(2);
    let produce = async move {
        let send = |tx: &tokio::sync::mpsc::Sender<Option<Vec<AdChange>>>, batch: Vec<AdChange>| {
            let tx = tx.clone();
            async move { tx.send(Some(batch)).await.map_err(|_| PUSH_STOPPED.to_owned()) }
        };
        let mut pager = crate::ad::Pager::default();
        // Of each entry, only what the second pass needs is kept (not the
        // entry): its DN, a group's member DNs, a managed user's change.
        let mut later = Later::default();
        let mut pending: Vec<AdChange> = Vec::new();
        loop {
            let (page, more) = scope_page(conn, &root, protection, &mut pager).await?;
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
        let objects = later.guid_of.len();
        pending.extend(later.changes());
        for chunk in pending.chunks(BATCH) {
            send(&tx, chunk.to_vec()).await?;
        }
        tx.send(None).await.map_err(|_| PUSH_STOPPED.to_owned())?;
        Ok::<usize, String>(objects)
    };
    // `move`: when the push fails, the receiver must go with it, so a read
    // blocked on a full channel ends instead of waiting forever.
    let last = final_cookie.clone();
    let consume = async move {
        let mut batches = 0usize;
        let mut done = 0usize;
        while let Some(item) = rx.recv().await {
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
    let (objects, changes) = match (read, pushed) {
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
    Ok(final_cookie)
}

/// What the import sends once every object is in: memberships, then
/// managers (a user's manager is linked once every user exists). Each entry
/// is reduced to this as it is read, so the read never holds the entries.
#[derive(Default)]
struct Later {
    /// Every object read, by lowercased DN.
    guid_of: HashMap<String, Uuid>,
    /// Each group with its members' DNs.
    groups: Vec<(Uuid, Vec<String>)>,
    /// Each user with a manager: the user's upsert and the manager's DN.
    managed: Vec<(AdChange, String)>,
}

impl Later {
    /// Keeps what the second pass needs of `e`; returns its upsert.
    fn keep(&mut self, e: &AdEntry, guid: Uuid) -> AdChange {
        self.guid_of.insert(e.dn.to_lowercase(), guid);
        if e.has_class("group") {
            self.groups.push((guid, e.strs("member")));
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
            self.managed.push((upsert(rec.clone()), m));
        }
        upsert(rec)
    }

    /// The memberships, then the managers, of every object kept.
    fn changes(self) -> Vec<AdChange> {
        let guid = |dn: &str| self.guid_of.get(&dn.to_lowercase()).copied();
        let mut out: Vec<AdChange> = self
            .groups
            .iter()
            .map(|(group, dns)| AdChange::SetMembers {
                group: *group,
                members: dns.iter().filter_map(|d| guid(d)).collect(),
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
