//! AD → cloud: a full import (paged read), then DirSync increments woken by
//! the rootDSE's `highestCommittedUSN`, and reconciliation of the in-scope
//! objectGUID set with the cloud's links to find deletes.
//!
//! Every batch carries `from_cookie`/`to_cookie`; the cloud applies it in one
//! transaction with a compare-and-swap, so a crash anywhere resumes from the
//! stored cookie and re-sends at most what was not applied.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ferry_proto::agent::{AdChange, PushChangesRequest};
use ferry_proto::record::ObjectKind;
use uuid::Uuid;

use super::Shared;
use crate::ad::dn::dn_within;
use crate::ad::guid::guid_filter;
use crate::ad::mapping::{excluded, group_record, is_tombstone, user_record, when_changed, READ_ATTRS};
use crate::ad::read::member_delta;
use crate::ad::{AdConnection, AdEntry};

/// Changes per pushed batch.
const BATCH: usize = 500;
/// Cookie prefix of a full import in progress.
const IMPORT: &str = "import:";

/// Runs forever: import if needed, then follow changes.
pub async fn run(shared: Arc<Shared>) {
    super::supervise(shared, "AD → cloud", |s| async move { follow(s).await }).await
}

/// A task aborted when dropped (a reconciliation in flight when its loop ends).
struct Background<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow(arc: Arc<Shared>) -> Result<(), String> {
    let shared: &Shared = &arc;
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    let state = shared.cloud.state().await.map_err(|e| e.to_string())?;
    let mut cookie = state.ad_cookie;
    // Looked up once per connection, not on every change.
    let svc = service_account_dn(shared, &mut conn, &root(shared).await).await;
    if cookie.as_deref().is_none_or(|c| c.starts_with(IMPORT)) {
        cookie = Some(full_import(shared, &mut conn, cookie, &svc).await?);
    }
    let mut last_usn = -1;
    let mut reconciling: Option<Background<Result<Vec<AdChange>, String>>> = None;
    let mut last_reconcile = Instant::now() - RECONCILE_EVERY;
    let mut reconcile_due = true;
    loop {
        if !shared.primary.load(Ordering::SeqCst) {
            return Ok(());
        }
        let usn = conn.highest_committed_usn().await.map_err(|e| e.to_string())?;
        if usn != last_usn {
            let (next, suspect) = increment(shared, &mut conn, cookie.clone(), &svc).await?;
            cookie = Some(next);
            reconcile_due |= suspect;
            last_usn = usn;
            shared.synced();
        }
        // Reconciliation (a read of every GUID in scope) finds what DirSync
        // cannot show this account: deletions and moves out of scope. It
        // runs when an increment hints at one, and every RECONCILE_EVERY as
        // a safety net, on a connection of its own beside this loop: the
        // read takes ~2 s per 10,000 objects on Samba, and changes must not
        // wait behind it.
        let due = (reconcile_due && last_reconcile.elapsed() >= RECONCILE_SPACING)
            || last_reconcile.elapsed() >= RECONCILE_EVERY;
        if due && reconciling.is_none() {
            let s = arc.clone();
            reconciling = Some(Background(tokio::spawn(async move { gone_from_ad(&s).await })));
            last_reconcile = Instant::now();
            reconcile_due = false;
        }
        if reconciling.as_ref().is_some_and(|r| r.0.is_finished()) {
            if let Some(mut r) = reconciling.take() {
                let gone = (&mut r.0).await.map_err(|e| format!("reconciliation stopped: {e}"))??;
                if !gone.is_empty() {
                    tracing::info!(
                        count = gone.len(),
                        "objects gone from AD (deleted or moved out of scope)"
                    );
                    let to = cookie.clone().unwrap_or_default();
                    let mut c = cookie.clone();
                    push(shared, &mut c, to, gone).await?;
                }
                shared.synced();
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The safety-net interval of reconciliation.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// The least time between two reconciliations an increment asked for.
const RECONCILE_SPACING: Duration = Duration::from_secs(1);

async fn root(shared: &Shared) -> String {
    shared.domain.read().await.root_dn.clone()
}

async fn service_account_dn(shared: &Shared, conn: &mut AdConnection, root: &str) -> String {
    let name = shared.bind_user.rsplit('\\').next().unwrap_or_default();
    let filter = format!("(sAMAccountName={})", ldap3::ldap_escape(name));
    conn.search_paged(root, ldap3::Scope::Subtree, &filter, &["objectGUID"])
        .await
        .ok()
        .and_then(|mut v| v.pop())
        .map(|e| e.dn)
        .unwrap_or_default()
}

const PUSH_STOPPED: &str = "the push to the cloud stopped";

/// Reads everything in scope and pushes it; returns the DirSync cookie the
/// increments start from (taken before the read, so nothing is missed).
/// Each page of the read is turned into upserts and pushed while the next
/// page is read; memberships and managers follow once every object is in.
async fn full_import(
    shared: &Shared,
    conn: &mut AdConnection,
    mut cookie: Option<String>,
    svc: &str,
) -> Result<String, String> {
    let root = root(shared).await;
    let started = Instant::now();
    tracing::info!(%root, "full import: starting");
    let start = conn
        .dirsync_all(&root, &[], &["objectGUID"])
        .await
        .map_err(|e| e.to_string())?;
    let final_cookie = B64.encode(&start.cookie);
    // `None` ends the stream: the read finished. A stream that ends without
    // it (the read failed) must not move the cookie to `final_cookie`.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<AdChange>>>(2);
    let produce = async move {
        let send = |tx: &tokio::sync::mpsc::Sender<Option<Vec<AdChange>>>, batch: Vec<AdChange>| {
            let tx = tx.clone();
            async move { tx.send(Some(batch)).await.map_err(|_| PUSH_STOPPED.to_owned()) }
        };
        let mut pager = crate::ad::Pager::default();
        let mut kept: Vec<AdEntry> = Vec::new();
        let mut pending: Vec<AdChange> = Vec::new();
        loop {
            let (mut page, more) = conn
                .search_page(
                    &root,
                    ldap3::Scope::Subtree,
                    crate::ad::USERS_AND_GROUPS,
                    READ_ATTRS,
                    &mut pager,
                )
                .await
                .map_err(|e| e.to_string())?;
            conn.complete_ranged(&mut page).await.map_err(|e| e.to_string())?;
            for e in page {
                if let Some(why) = excluded(&e, svc) {
                    tracing::debug!(dn = %e.dn, why, "skipped");
                    continue;
                }
                let Some(guid) = e.guid() else { continue };
                pending.push(if e.has_class("group") {
                    AdChange::UpsertGroup {
                        guid,
                        dn: e.dn.clone(),
                        record: group_record(&e),
                    }
                } else {
                    let (rec, _) = user_record(&e);
                    AdChange::UpsertUser {
                        guid,
                        dn: e.dn.clone(),
                        record: Box::new(rec),
                        changed_at: when_changed(&e),
                    }
                });
                kept.push(e);
                if pending.len() >= BATCH {
                    send(&tx, std::mem::take(&mut pending)).await?;
                }
            }
            if !more {
                break;
            }
        }
        // Then what needs every object linked first.
        let guid_of: HashMap<String, Uuid> = kept
            .iter()
            .filter_map(|e| Some((e.dn.to_lowercase(), e.guid()?)))
            .collect();
        let mut later = Vec::new();
        let mut managed = Vec::new();
        for e in &kept {
            let Some(guid) = e.guid() else { continue };
            if e.has_class("group") {
                let m: Vec<Uuid> = e
                    .strs("member")
                    .iter()
                    .filter_map(|d| guid_of.get(&d.to_lowercase()).copied())
                    .collect();
                later.push(AdChange::SetMembers {
                    group: guid,
                    members: m,
                });
            } else {
                let (mut rec, manager) = user_record(e);
                if let Some(m) = manager.and_then(|m| guid_of.get(&m.to_lowercase()).copied()) {
                    // Managers are linked once every user exists: a second, cheap pass.
                    rec.manager = Some(m.to_string());
                    managed.push(AdChange::UpsertUser {
                        guid,
                        dn: e.dn.clone(),
                        record: Box::new(rec),
                        changed_at: when_changed(e),
                    });
                }
            }
        }
        pending.extend(later);
        pending.extend(managed);
        for chunk in pending.chunks(BATCH) {
            send(&tx, chunk.to_vec()).await?;
        }
        tx.send(None).await.map_err(|_| PUSH_STOPPED.to_owned())?;
        Ok::<usize, String>(kept.len())
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

async fn push(shared: &Shared, cookie: &mut Option<String>, to: String, changes: Vec<AdChange>) -> Result<(), String> {
    let n = changes.len();
    let req = PushChangesRequest {
        from_cookie: cookie.clone(),
        to_cookie: Some(to.clone()),
        changes,
    };
    let r = shared.cloud.push(&req).await.map_err(|e| e.to_string())?;
    shared.pushed.fetch_add(r.applied, Ordering::SeqCst);
    if r.applied > 0 || r.quarantined > 0 {
        tracing::info!(sent = n, applied = r.applied, quarantined = r.quarantined, "AD → cloud");
    }
    *cookie = Some(to);
    Ok(())
}

/// One DirSync round; pushes what changed; returns the new cookie.
/// Pushes what DirSync reports since `cookie`; returns the next cookie, and
/// whether the round hints at a deletion or a move out of scope that only
/// reconciliation can confirm: the USN moved but nothing readable changed,
/// an object left the scope, or a group lost members.
async fn increment(
    shared: &Shared,
    conn: &mut AdConnection,
    cookie: Option<String>,
    svc: &str,
) -> Result<(String, bool), String> {
    let root = root(shared).await;
    let current = cookie.clone().unwrap_or_default();
    let raw = B64
        .decode(&current)
        .map_err(|_| "the stored DirSync cookie is not base64".to_owned())?;
    let batch = conn
        .dirsync_all(&root, &raw, READ_ATTRS)
        .await
        .map_err(|e| e.to_string())?;
    let next = B64.encode(&batch.cookie);
    if batch.entries.is_empty() && next == current {
        return Ok((current, true));
    }
    let mut suspect = batch.entries.is_empty();
    // Objects first, then memberships: a member must be linked before it is added.
    let mut changes = Vec::new();
    let mut memberships = Vec::new();
    for e in &batch.entries {
        let Some(guid) = e.guid() else { continue };
        if is_tombstone(e) {
            changes.push(AdChange::Delete { guid });
            continue;
        }
        // DirSync sends only what changed: read the whole object.
        let full = conn
            .search_paged(&root, ldap3::Scope::Subtree, &guid_filter(guid), READ_ATTRS)
            .await
            .map_err(|e| e.to_string())?;
        let Some(full) = full.into_iter().next() else {
            suspect = true;
            continue;
        };
        if !dn_within(&full.dn, &root) || excluded(&full, svc).is_some() {
            suspect = true;
            continue;
        }
        if full.has_class("group") {
            changes.push(AdChange::UpsertGroup {
                guid,
                dn: full.dn.clone(),
                record: group_record(&full),
            });
            let (added, removed) = member_delta(e);
            suspect |= !removed.is_empty();
            let added = guids_of(conn, &root, &added).await;
            let removed = guids_of(conn, &root, &removed).await;
            if !added.is_empty() {
                memberships.push(AdChange::AddMembers {
                    group: guid,
                    members: added,
                });
            }
            if !removed.is_empty() {
                memberships.push(AdChange::RemoveMembers {
                    group: guid,
                    members: removed,
                });
            }
        } else {
            let (mut rec, manager) = user_record(&full);
            if let Some(m) = manager {
                rec.manager = guids_of(conn, &root, &[m]).await.first().map(Uuid::to_string);
            }
            changes.push(AdChange::UpsertUser {
                guid,
                dn: full.dn.clone(),
                record: Box::new(rec),
                changed_at: when_changed(&full),
            });
        }
    }
    changes.extend(memberships);
    let mut c = cookie;
    push(shared, &mut c, next.clone(), changes).await?;
    Ok((next, suspect))
}

async fn guids_of(conn: &mut AdConnection, root: &str, dns: &[String]) -> Vec<Uuid> {
    let mut out = Vec::new();
    for dn in dns {
        if !dn_within(dn, root) {
            continue;
        }
        if let Ok(Some(e)) = conn.read_entry(dn, &["objectGUID"]).await {
            out.extend(e.guid());
        }
    }
    out
}

/// Linked objects no longer in scope in AD were deleted (or moved out):
/// their deletes, read on a connection of its own.
async fn gone_from_ad(shared: &Shared) -> Result<Vec<AdChange>, String> {
    let root = root(shared).await;
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    // Links first: a link is recorded only after its AD object exists, so
    // every link read here has its object in the set read next.
    let links = shared.cloud.links().await.map_err(|e| e.to_string())?;
    let present = conn.in_scope_guids(&root).await.map_err(|e| e.to_string())?;
    conn.close().await;
    shared.ad_objects.store(present.len() as u64, Ordering::SeqCst);
    Ok(links
        .iter()
        .filter(|l| matches!(l.kind, ObjectKind::User | ObjectKind::Group) && !present.contains(&l.guid))
        .map(|l| AdChange::Delete { guid: l.guid })
        .collect())
}
