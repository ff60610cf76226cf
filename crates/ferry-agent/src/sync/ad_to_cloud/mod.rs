//! AD → cloud: a full import (paged read, `import.rs`), then changes woken by
//! the rootDSE's `highestCommittedUSN`: users changed at the new USNs pushed
//! at once (`quick.rs`), DirSync rounds for the rest and as the record
//! (`increment.rs`),
//! reconciliation of the in-scope objectGUID set with the cloud's links to
//! find deletes (`reconcile.rs`), and another try of objects the cloud
//! refused (`retry.rs`), and a periodic comparison of both sides whole that
//! repairs any drift (`audit.rs`); `push.rs` owns batching and the cookie.
//!
//! Every batch carries `from_cookie`/`to_cookie`; the cloud applies it in one
//! transaction with a compare-and-swap, so a crash anywhere resumes from the
//! stored cookie and re-sends at most what was not applied.

mod audit;
mod import;
mod increment;
mod push;
mod quick;
mod reconcile;
mod retry;
mod scope;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::agent::{AdChange, SyncDirection};

use super::{protect, Shared};
use import::{full_import, Imported, IMPORT};
use push::push;
use quick::Quick;
use reconcile::gone_from_ad;

/// Runs forever: import if needed, then follow changes.
pub async fn run(shared: Arc<Shared>) {
    super::supervise(shared, SyncDirection::AdToCloud, |s| async move { follow(s).await }).await
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
    // Read once per connection (and again every few minutes), not on every change.
    let mut protection = protect::read(shared, &mut conn).await?;
    // Deletes found, waiting for the burst they belong to to end, and the
    // tombstones DirSync showed since the last reconciliation began.
    let mut deletes: Option<PendingDeletes> = None;
    let mut tombstones: std::collections::BTreeSet<uuid::Uuid> = std::collections::BTreeSet::new();
    // Reconciliation: due at once after a restart (deletes made while the
    // agent was down), not after an import (which is one).
    let mut reconcile_due = true;
    let mut last_reconcile = Instant::now() - RECONCILE_EVERY;
    // The safety net's interval, SAFETY_DUTY × a reconciliation's length.
    let mut safety_every = RECONCILE_EVERY;
    let imported =
        |i: Imported, deletes: &mut Option<PendingDeletes>, tombstones: &mut std::collections::BTreeSet<uuid::Uuid>| {
            tombstones.clear();
            PendingDeletes::found(deletes, i.gone, true);
            // Until one has run, a reconciliation's length is estimated from the domain's size.
            let objects = u32::try_from(shared.ad_objects.load(Ordering::SeqCst)).unwrap_or(u32::MAX);
            (
                i.cookie,
                RECONCILE_EVERY.max(RECONCILE_PER_OBJECT * objects * SAFETY_DUTY),
                i.usn,
            )
        };
    // The USN the quick path reads on from (-1: none yet, a DirSync round first).
    let mut last_usn = -1;
    if cookie.as_deref().is_none_or(|c| c.starts_with(IMPORT)) {
        let i = full_import(shared, &mut conn, cookie, &protection).await?;
        let (c, every, usn) = imported(i, &mut deletes, &mut tombstones);
        (cookie, safety_every, reconcile_due, last_reconcile, last_usn) = (Some(c), every, false, Instant::now(), usn);
    }
    // The quick path's pushes not yet covered by a DirSync round, and the round's state.
    let mut quick_pushed = quick::Pushed::default();
    let mut scan_owed: Option<Instant> = None;
    let mut scan_now = false;
    let mut scanning: Option<(Option<String>, Scan)> = None;
    // The USN when the last reconciliation and comparison began: an idle DC is not read again.
    let mut reconciled_usn = i64::MIN;
    let mut audited_usn = i64::MIN;
    let mut last_change = Instant::now();
    let mut reconciling: Option<Background<Result<Vec<AdChange>, String>>> = None;
    // How long the last DirSync round's pass held the DC.
    let mut scan_cost = Duration::ZERO;
    let mut last_retry = Instant::now();
    // The protection a reconciliation in flight judges scope by.
    let mut reconciled_with: Option<protect::Protection> = None;
    let mut previewing: Option<Background<Result<(), String>>> = None;
    // The comparison of both sides whole: on its own connection, like
    // reconciliation; its repairs go up from here, in order with increments.
    let audit_every = audit_interval();
    let mut auditing: Option<Background<Result<audit::Drift, String>>> = None;
    let mut last_audit = Instant::now();
    // An admin's "compare now", as last acted on.
    let mut audit_asked: Option<i64> = None;
    let mut audit_wanted = false;
    loop {
        if !shared.primary.load(Ordering::SeqCst) {
            return Ok(());
        }
        let scope = shared.domain.read().await.policies.scope.clone();
        if protection.stale(&scope) && !protect::still_holds(shared, &mut conn, &mut protection).await? {
            let scope_changed = scope != protection.scope;
            let now = protect::read(shared, &mut conn).await?;
            let entered = scope::entered(&protection, &now);
            reconcile_due |= scope::left(&protection, &now);
            protection = now;
            if !scope_changed && !entered.is_empty() {
                scope::enter(shared, &mut conn, &cookie, &protection, &entered).await?;
            }
            if scope_changed {
                // The cloud asked for a re-read with the new scope, but the
                // heartbeat may bring the scope after that re-read began:
                // read again with it, then look for what left.
                tracing::info!("the sync scope changed: reading the domain again");
                let i = full_import(shared, &mut conn, cookie, &protection).await?;
                let (c, every, usn) = imported(i, &mut deletes, &mut tombstones);
                (cookie, safety_every, reconcile_due, last_reconcile, last_usn) =
                    (Some(c), every, false, Instant::now(), usn);
            }
        }
        let usn = conn.highest_committed_usn().await.map_err(|e| e.to_string())?;
        shared.worked(SyncDirection::AdToCloud);
        if usn != last_usn {
            // A few USNs: the users changed there, found by the index and
            // pushed now; the rest (and, later, the record) is DirSync's.
            let quick = if last_usn >= 0 && scan_owed.is_none_or(|t| t.elapsed() < scan_defer_max(scan_cost)) {
                quick::users_changed(shared, &mut conn, &cookie, &protection, last_usn + 1, usn).await?
            } else {
                Quick::DirSync
            };
            match quick {
                Quick::Pushed(users) => {
                    shared.quick_pushed.fetch_add(users.len() as u64, Ordering::Relaxed);
                    quick_pushed.add(users);
                    scan_owed.get_or_insert_with(Instant::now);
                    shared.synced(SyncDirection::AdToCloud);
                }
                Quick::DirSync => scan_now = true,
            }
            last_usn = usn;
            last_change = Instant::now();
        }
        // The DirSync round: its pass over AD runs on a connection of its
        // own, so changes keep flowing through the quick path meanwhile;
        // what it found is read and pushed from here, in order.
        // The round is deferred in proportion to what it costs the DC.
        let scan_quiet = last_change.elapsed() >= SCAN_QUIET.max(scan_cost * SCAN_QUIET_FACTOR);
        if scanning.is_none()
            && (scan_now || scan_owed.is_some_and(|t| scan_quiet || t.elapsed() >= scan_defer_max(scan_cost)))
        {
            scan_now = false;
            scan_owed = None;
            let (s, c) = (arc.clone(), cookie.clone());
            scanning = Some((
                cookie.clone(),
                Background(tokio::spawn(async move { increment::scan(&s, c).await })),
            ));
        }
        if scanning.as_ref().is_some_and(|(_, t)| t.0.is_finished()) {
            if let Some((from, mut task)) = scanning.take() {
                let scanned = (&mut task.0)
                    .await
                    .map_err(|e| format!("the DirSync round stopped: {e}"))??;
                scan_cost = scanned.took;
                if from != cookie {
                    // The cookie moved while it ran (the domain was read again): again, from the new one.
                    scan_now = true;
                } else if let Some(batch) = scanned.batch {
                    tracing::info!(
                        named = batch.entries.len(),
                        pass_secs = scanned.took.as_secs_f32(),
                        "DirSync round"
                    );
                    let round = increment::apply(
                        shared,
                        &mut conn,
                        cookie.clone(),
                        batch,
                        &protection,
                        &mut quick_pushed.0,
                    )
                    .await?;
                    shared.dirsync_rounds.fetch_add(1, Ordering::Relaxed);
                    cookie = Some(round.cookie);
                    reconcile_due |= round.suspect;
                    tombstones.extend(round.deleted.iter().copied());
                    PendingDeletes::found(&mut deletes, round.deleted, false);
                    if round.groups_changed && protection.scope_members.is_some() {
                        // A group scope grows when someone joins a scope
                        // group, which DirSync shows as the group's change.
                        let now = protect::read(shared, &mut conn).await?;
                        let entered = scope::entered(&protection, &now);
                        reconcile_due |= scope::left(&protection, &now);
                        protection = now;
                        if !entered.is_empty() {
                            scope::enter(shared, &mut conn, &cookie, &protection, &entered).await?;
                        }
                    }
                } else {
                    // Read everything again; links by objectGUID keep it free of duplicates.
                    let i = full_import(shared, &mut conn, cookie, &protection).await?;
                    let (c, every, usn) = imported(i, &mut deletes, &mut tombstones);
                    (cookie, safety_every, last_reconcile, last_usn) = (Some(c), every, Instant::now(), usn);
                    quick_pushed = quick::Pushed::default();
                }
                shared.synced(SyncDirection::AdToCloud);
            }
        }
        // Reconciliation (a read of every GUID in scope) finds what DirSync
        // cannot show this account: deletions and moves out of scope. It
        // runs when an increment hints at one, and every RECONCILE_EVERY as
        // a safety net, on a connection of its own beside this loop: the
        // read takes ~2 s per 10,000 objects on Samba, and changes must not
        // wait behind it.
        // A hinted one waits for the DC to be quiet a moment, so a burst of
        // deletes (a script deleting users one by one) is seen, and held
        // against the delete threshold, together.
        // The safety net runs only when AD changed since the last one (an
        // idle DC is not read again), and in a quiet moment: on Samba a
        // search is served by one of a few worker processes, one request at
        // a time, so a change whose connection shares the worker waits
        // behind the read (on a DC that never quiets, RECONCILE_EVERY × 5).
        let quiet = last_change.elapsed() >= RECONCILE_QUIET;
        let settled = quiet || last_reconcile.elapsed() >= RECONCILE_EVERY / 4;
        let due = (reconcile_due && settled && last_reconcile.elapsed() >= RECONCILE_SPACING)
            || (deletes.is_some() && last_reconcile.elapsed() >= DELETE_RECHECK)
            || (last_usn != reconciled_usn
                && ((quiet && last_reconcile.elapsed() >= safety_every)
                    || last_reconcile.elapsed() >= safety_every * 5));
        if due && reconciling.is_none() {
            reconciled_usn = last_usn;
            let s = arc.clone();
            let p = protection.clone();
            reconciled_with = Some(protection.clone());
            tombstones.clear();
            reconciling = Some(Background(tokio::spawn(async move { gone_from_ad(&s, &p).await })));
            last_reconcile = Instant::now();
            reconcile_due = false;
        }
        if reconciling.as_ref().is_some_and(|r| r.0.is_finished()) {
            if let Some(mut r) = reconciling.take() {
                let gone = (&mut r.0).await.map_err(|e| format!("reconciliation stopped: {e}"))??;
                // The safety net takes at most 1 % of the time: at 100,000
                // objects a reconciliation reads for tens of seconds.
                safety_every = RECONCILE_EVERY.max(last_reconcile.elapsed() * SAFETY_DUTY);
                let judged = reconciled_with.take();
                if judged.is_some_and(|j| j.scope != protection.scope || j.scope_members != protection.scope_members) {
                    // The scope moved while it ran: what it found gone may
                    // have just come in. Judge again with the scope as it is.
                    reconcile_due = true;
                } else {
                    // What reconciliation found is the set, with the
                    // tombstones DirSync showed since it began.
                    let mut found: Vec<uuid::Uuid> = gone
                        .iter()
                        .filter_map(|c| match c {
                            AdChange::Delete { guid } => Some(*guid),
                            _ => None,
                        })
                        .collect();
                    found.extend(std::mem::take(&mut tombstones));
                    PendingDeletes::found(&mut deletes, found, true);
                }
                shared.synced(SyncDirection::AdToCloud);
            }
        }
        // Deletes go up once their burst is over (nothing new for a while),
        // as one batch against the delete threshold: a script deleting
        // users one by one is a mass delete too.
        if let Some(d) =
            deletes.take_if(|d| d.last_growth.elapsed() >= DELETE_SETTLE || d.first.elapsed() >= DELETE_MAX_WAIT)
        {
            if reconciling.is_none() {
                tracing::info!(
                    count = d.guids.len(),
                    "objects gone from AD (deleted or moved out of scope)"
                );
                let to = cookie.clone().unwrap_or_default();
                let mut c = cookie.clone();
                let changes = d.guids.iter().map(|guid| AdChange::Delete { guid: *guid }).collect();
                push(shared, &mut c, to, changes).await?;
            } else {
                deletes = Some(d);
            }
        }
        // With nothing changed in AD since the last comparison, AD cannot
        // have drifted: compare again only after AUDIT_IDLE_EVERY (the cloud's
        // side, a restored database say), so an idle DC is not read whole.
        let audit_due = (last_audit.elapsed() >= audit_every && last_usn != audited_usn)
            || last_audit.elapsed() >= AUDIT_IDLE_EVERY.max(audit_every);
        if auditing.is_none() && (audit_wanted || audit_due) {
            audit_wanted = false;
            audited_usn = last_usn;
            let (s, p) = (arc.clone(), protection.clone());
            auditing = Some(Background(tokio::spawn(async move { audit::compare(&s, &p).await })));
        }
        if auditing.as_ref().is_some_and(|a| a.0.is_finished()) {
            if let Some(mut a) = auditing.take() {
                last_audit = Instant::now();
                match (&mut a.0).await.map_err(|e| format!("the comparison stopped: {e}"))? {
                    Ok(drift) => {
                        audit::repair(shared, &mut conn, &cookie, &protection, &drift).await?;
                    }
                    // A comparison that could not finish is tried again next time.
                    Err(e) => tracing::warn!(error = %e, "comparing both sides whole failed"),
                }
            }
        }
        if last_retry.elapsed() >= RETRY_CHECK_EVERY {
            retry::retry_refused(shared, &mut conn, &cookie, &protection).await?;
            last_retry = Instant::now();
            let state = shared.cloud.state().await.map_err(|e| e.to_string())?;
            if previewing.as_ref().is_none_or(|p| p.0.is_finished()) {
                if let Some(req) = state.scope_preview {
                    // Read on a connection of its own: changes do not wait.
                    let (s, p) = (arc.clone(), protection.clone());
                    previewing = Some(Background(tokio::spawn(async move {
                        let r = scope::preview(&s, p, req).await;
                        if let Err(e) = &r {
                            tracing::warn!(error = %e, "scope preview failed");
                        }
                        r
                    })));
                }
            }
            if state.audit_requested_at.is_some() && state.audit_requested_at != audit_asked {
                audit_asked = state.audit_requested_at;
                audit_wanted = true;
            }
            // An admin's "Resync this domain" clears the stored cookie: start over.
            let stored = state.ad_cookie;
            if stored != cookie {
                tracing::info!("the cloud's DirSync cookie changed (a resync was asked for): reading the domain again");
                return Ok(());
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A DirSync round's pass over AD, in flight.
type Scan = Background<Result<increment::Scanned, String>>;

/// Deletes found (by reconciliation, or as DirSync tombstones) and not
/// pushed yet.
struct PendingDeletes {
    guids: std::collections::BTreeSet<uuid::Uuid>,
    /// When the first of them was found.
    first: Instant,
    /// When the set last grew.
    last_growth: Instant,
}

impl PendingDeletes {
    /// Takes in deletes found: with `whole`, `found` is the whole set (a
    /// reconciliation: what is no longer in it came back); else more of it.
    fn found(pending: &mut Option<PendingDeletes>, found: Vec<uuid::Uuid>, whole: bool) {
        if found.is_empty() && !whole {
            return;
        }
        let now = Instant::now();
        let found: std::collections::BTreeSet<uuid::Uuid> = found.into_iter().collect();
        match pending {
            Some(d) => {
                if found.iter().any(|g| !d.guids.contains(g)) {
                    d.last_growth = now;
                }
                if whole {
                    d.guids = found;
                } else {
                    d.guids.extend(found);
                }
                if d.guids.is_empty() {
                    *pending = None;
                }
            }
            None if !found.is_empty() => {
                *pending = Some(PendingDeletes {
                    guids: found,
                    first: now,
                    last_growth: now,
                })
            }
            None => {}
        }
    }
}

/// Deletes wait until no new one has been found for this long…
const DELETE_SETTLE: Duration = Duration::from_secs(10);
/// …but no longer than this after the first.
const DELETE_MAX_WAIT: Duration = Duration::from_secs(120);
/// How often reconciliation looks again while deletes wait.
const DELETE_RECHECK: Duration = Duration::from_secs(3);

/// How often the agent asks whether refused objects are due another try
/// (and whether the admin asked for a scope preview): two small reads, so
/// not more often, with many agents on one cloud.
const RETRY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often the rootDSE's `highestCommittedUSN` is read (one small base
/// search): the most a change waits before the agent looks.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// After the quick path took a window, the DirSync round follows once the
/// DC has been quiet this long, or SCAN_QUIET_FACTOR × the last round's
/// pass when longer (on Samba a pass over every user and group: ~2 s at
/// 100,000 objects, which a change arriving meanwhile may wait behind)…
const SCAN_QUIET: Duration = Duration::from_secs(1);
const SCAN_QUIET_FACTOR: u32 = 10;
/// …or at the latest SCAN_DEFER_MAX after (changes that never stop), or
/// SAFETY_DUTY × the last pass when longer. Deferring loses nothing: the
/// quick path leaves any window it cannot read whole to an immediate
/// round, and the cookie only lags (a restart re-reads more).
const SCAN_DEFER_MAX: Duration = Duration::from_secs(60);

fn scan_defer_max(cost: Duration) -> Duration {
    SCAN_DEFER_MAX.max(cost * SAFETY_DUTY)
}

/// A reconciliation's length per object in scope, until one has been timed
/// (measured on Samba: ~2 s per 10,000 objects).
const RECONCILE_PER_OBJECT: Duration = Duration::from_micros(200);

/// The safety net's interval is at least this many times its last run's
/// length (the hinted reconciliations are not bound by it).
const SAFETY_DUTY: u32 = 100;

/// The safety-net interval of reconciliation (when AD changed at all), or
/// SAFETY_DUTY × its length when longer.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// The least time between two reconciliations an increment asked for.
const RECONCILE_SPACING: Duration = Duration::from_secs(1);
/// How long the DC must have been quiet before a hinted reconciliation.
const RECONCILE_QUIET: Duration = Duration::from_secs(2);

/// How often both sides are compared whole (anti-entropy): every 15
/// minutes, or `FERRY_AUDIT_EVERY_SECS`.
const AUDIT_EVERY: Duration = Duration::from_secs(15 * 60);

/// How often both sides are compared whole when AD has not changed since
/// the last comparison.
const AUDIT_IDLE_EVERY: Duration = Duration::from_secs(6 * 3600);

fn audit_interval() -> Duration {
    std::env::var("FERRY_AUDIT_EVERY_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(AUDIT_EVERY, Duration::from_secs)
}

/// The next page of the users and groups in scope, each with its
/// objectGUID (protected and excluded objects left out, big member lists
/// read whole by range); `false` once it was the last. `present` gets the
/// objectGUID of every object in scope, protected ones too: what
/// reconciliation counts as still there.
async fn scope_page(
    conn: &mut crate::ad::AdConnection,
    root: &str,
    protection: &protect::Protection,
    pager: &mut crate::ad::Pager,
    present: Option<&mut std::collections::HashSet<uuid::Uuid>>,
) -> Result<(Vec<(uuid::Uuid, crate::ad::AdEntry)>, bool), String> {
    let (page, more) = read_page(conn, root, crate::ad::USERS_AND_GROUPS, pager).await?;
    Ok((admit_page(protection, page, present), more))
}

/// The next page of the objects under `root` that `filter` takes (the
/// users and groups, or one of the two), as AD sends it (big member lists
/// read whole by range), and whether more follow: the read half of
/// [`scope_page`], for a reader that asks for the next page before it
/// works on this one.
async fn read_page(
    conn: &mut crate::ad::AdConnection,
    root: &str,
    filter: &str,
    pager: &mut crate::ad::Pager,
) -> Result<(Vec<crate::ad::AdEntry>, bool), String> {
    let (mut page, more) = conn
        .search_page(
            root,
            ldap3::Scope::Subtree,
            filter,
            crate::ad::mapping::READ_ATTRS,
            pager,
        )
        .await
        .map_err(|e| e.to_string())?;
    conn.complete_ranged(&mut page).await.map_err(|e| e.to_string())?;
    Ok((page, more))
}

/// What of a page read by [`read_page`] is in scope: the other half of
/// [`scope_page`].
fn admit_page(
    protection: &protect::Protection,
    page: Vec<crate::ad::AdEntry>,
    mut present: Option<&mut std::collections::HashSet<uuid::Uuid>>,
) -> Vec<(uuid::Uuid, crate::ad::AdEntry)> {
    let mut out = Vec::with_capacity(page.len());
    for e in page {
        if !protection.admits(&e.dn) {
            continue;
        }
        let Some(guid) = e.guid() else { continue };
        if let Some(p) = present.as_deref_mut() {
            p.insert(guid);
        }
        if let Some(why) = protection.why(&e) {
            tracing::debug!(dn = %e.dn, why, "skipped");
            continue;
        }
        out.push((guid, e));
    }
    out
}

async fn root(shared: &Shared) -> String {
    shared.domain.read().await.root_dn.clone()
}
