//! The full import: every user and group in scope, read page by page and
//! pushed while the next page is read; memberships go up while the push
//! would otherwise wait for AD, the rest and the managers once every object
//! is in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ferry_proto::agent::AdChange;
use uuid::Uuid;

use super::push::push;
use super::reconcile::{gone, linked_guids};
use super::{admit_page, read_page, root};
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
/// page is read; owed memberships go up whenever the push has nothing else
/// to send ([`Later::share`]); the rest and the managers follow once every
/// object is in.
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
    // What the read keeps, shared with the push: it sends owed memberships
    // while it would otherwise wait for AD. Both run in this one task, and
    // neither holds the lock across an await.
    let later = std::sync::Mutex::new(Some(Later::default()));
    let later = &later;
    let lock = || later.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let linked_set: HashSet<Uuid> = linked.iter().copied().collect();
    let linked_set = &linked_set;
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
        // AD's pages come through a channel of one: the next page is
        // asked for as soon as this one is in, and the DC computes it while
        // this one is turned into changes (~15 ms a page of 1,000 that the
        // DC otherwise spent idle). Each of the two searches ends with a
        // page that says it is its last; a closed channel before both have
        // is a read that failed.
        let (page_tx, mut page_rx) = tokio::sync::mpsc::channel::<(Vec<AdEntry>, bool)>(1);
        let read = read_both(shared, conn, &root, page_tx);
        let mut present = HashSet::new();
        let mut pending: Vec<AdChange> = Vec::new();
        let turn = async {
            let turned = async {
                let mut ended = 0;
                while let Some((page, last)) = page_rx.recv().await {
                    for (guid, e) in admit_page(protection, page, Some(&mut present)) {
                        let change = lock()
                            .as_mut()
                            .map(|l| l.keep(&e, guid, linked_set.contains(&guid)))
                            .ok_or(PUSH_STOPPED)?;
                        pending.push(change);
                        if pending.len() >= BATCH {
                            send(&tx, std::mem::take(&mut pending)).await?;
                        }
                    }
                    ended += usize::from(last);
                    if ended == SEARCHES.len() {
                        return Ok(());
                    }
                }
                Err(PUSH_STOPPED.to_owned())
            }
            .await;
            // A reader waiting to hand over a page must not wait forever.
            page_rx.close();
            turned
        };
        match tokio::join!(read, turn) {
            (Err(r), _) if r != PUSH_STOPPED => return Err(r),
            (_, Err(t)) => return Err(t),
            _ => {}
        }
        // The read is done: what no share sent follows the last objects.
        let Some(kept) = lock().take() else {
            return Err(PUSH_STOPPED.to_owned());
        };
        let objects = kept.objects();
        shared
            .import_memberships_early
            .store(kept.shared as u64, Ordering::Relaxed);
        tracing::info!(
            objects,
            memberships_sent = kept.shared,
            secs = started.elapsed().as_secs_f32(),
            waited_for_cloud_secs = read_waited.secs(),
            waited_for_ad_secs = push_waited.secs(),
            "full import: read done; the rest of the memberships and the managers follow"
        );
        pending.extend(kept.changes());
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
        // Objects pushed, in the order read (a share names only those).
        let mut pushed = 0u32;
        loop {
            let next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    // The cloud is level with the read: memberships owed, if
                    // any, go now instead of after the read.
                    let share = lock().as_mut().map(|l| l.share(pushed)).unwrap_or_default();
                    if !share.is_empty() {
                        batches += 1;
                        done += share.len();
                        push(shared, &mut cookie, format!("{IMPORT}{batches}"), share).await?;
                        tracing::info!(done, "full import: progress (memberships while reading)");
                        continue;
                    }
                    let asked = Instant::now();
                    let next = rx.recv().await;
                    push_waited.add(asked);
                    next
                }
            };
            let Some(item) = next else { break };
            let Some(chunk) = item else {
                // The read finished: only now may the cookie become final.
                push(shared, &mut cookie, last, vec![]).await?;
                return Ok(done);
            };
            batches += 1;
            done += chunk.len();
            let objects = chunk
                .iter()
                .filter(|c| matches!(c, AdChange::UpsertUser { .. } | AdChange::UpsertGroup { .. }))
                .count();
            push(shared, &mut cookie, format!("{IMPORT}{batches}"), chunk).await?;
            pushed = pushed.saturating_add(u32::try_from(objects).unwrap_or(u32::MAX));
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

/// The import's two searches, whose union is what every other read of the
/// domain takes ([`crate::ad::USERS_AND_GROUPS`]): their name in the log,
/// filter and page size. A page of 1,000 groups holds every member's DN
/// (50,000 at 50 a group, ~10 MB parsed), and it is read while the users
/// are: the groups come in pages of 250, so the two reads together hold
/// no more than one read did.
const SEARCHES: [(&str, &str, i32); 2] = [
    ("groups", crate::ad::GROUPS, 250),
    ("users", crate::ad::USERS, crate::ad::MAX_PAGE_SIZE),
];

/// How long after the users' search is sent the groups' connection opens:
/// a Samba LDAP worker busy with that search accepts no connection, so the
/// groups' search goes to another worker (another core).
const SECOND_SEARCH_AFTER: std::time::Duration = std::time::Duration::from_millis(30);

/// Reads the users and the groups, at once where the DC allows, into
/// `pages`; each search's last page is marked `true`.
///
/// Samba evaluates a whole search before it answers its first page, on one
/// worker, one core: 5-12 s for 100,000 users (5.5 s on a quiet machine),
/// against 0.7 s for their 10,000 groups, which are a tenth of the objects
/// but most of the bytes (every member's DN; 2.8 s to read them all). So
/// the groups are read on a second connection while the DC evaluates the
/// users' search, and pushed first; their memberships go up as the users
/// come. Windows AD answers both at once too. A second connection the DC
/// refuses, or whose search fails before its first page, costs nothing
/// but the overlap: the groups are then read after the users, on this one.
async fn read_both(
    shared: &Shared,
    conn: &mut AdConnection,
    root: &str,
    pages: tokio::sync::mpsc::Sender<(Vec<AdEntry>, bool)>,
) -> Result<(), String> {
    let [groups, users] = SEARCHES;
    let apart = async {
        tokio::time::sleep(SECOND_SEARCH_AFTER).await;
        let mut second = match shared.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "full import: no second connection to the DC; the groups follow the users");
                return Ok(false);
            }
        };
        let mut sent = false;
        let read = read_search(&mut second, root, groups, &pages, &mut sent).await;
        second.close().await;
        match read {
            Ok(()) => Ok(true),
            // Nothing of the groups went on yet: they can follow the users
            // on the one connection. After a page, reading them again would
            // keep those groups twice: the import fails and starts again.
            Err(e) if !sent && e != PUSH_STOPPED => {
                tracing::warn!(error = %e, "full import: the groups' search failed on the second connection before its first page; the groups follow the users");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    };
    let mut users_sent = false;
    let ((), apart) = tokio::try_join!(read_search(conn, root, users, &pages, &mut users_sent), apart)?;
    if !apart {
        read_search(conn, root, groups, &pages, &mut false).await?;
    }
    Ok(())
}

/// One paged search into `pages`, its last page marked `true`; `sent` once
/// a page went.
async fn read_search(
    conn: &mut AdConnection,
    root: &str,
    (name, filter, size): (&str, &str, i32),
    pages: &tokio::sync::mpsc::Sender<(Vec<AdEntry>, bool)>,
    sent: &mut bool,
) -> Result<(), String> {
    let mut pager = crate::ad::Pager::of(size);
    let mut first = true;
    loop {
        let asked = Instant::now();
        let (page, more) = read_page(conn, root, filter, &mut pager).await?;
        if std::mem::take(&mut first) {
            // Samba evaluates the whole search before it answers the
            // first page (5-12 s for 100,000 users): the DC's share of a
            // slow start, told apart from Ferry's.
            tracing::info!(
                search = name,
                secs = asked.elapsed().as_secs_f32(),
                entries = page.len(),
                "full import: the DC's first page"
            );
        }
        pages.send((page, !more)).await.map_err(|_| PUSH_STOPPED.to_owned())?;
        *sent = true;
        if !more {
            return Ok(());
        }
    }
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

/// Memberships in one share sent while AD is read: enough that a share is
/// worth a push, few enough that an object page arriving meanwhile waits
/// at most a small push for it.
const SHARE_MAX: usize = 5_000;
/// Fewer owed memberships than this are left for a later share.
const SHARE_MIN: usize = 500;

/// What the import keeps of the objects it read, and the memberships it
/// owes the cloud. Each entry is reduced to this as it is read, so the
/// read never holds the entries; every DN is kept once, and a group's
/// members as numbers naming them (500,000 memberships are 2 MB, not
/// 500,000 strings).
///
/// A membership is owed once its group and its member have both been
/// pushed. Whenever the cloud has applied every push and the read has not
/// brought the next page yet (the push would otherwise wait for AD), a
/// share of what is owed goes up ([`Later::share`]): so the cloud writes
/// memberships in time it would spend idle, and a cloud that is already
/// the bottleneck gets them all after the read, as before. A share takes
/// whole groups in turn (their owed members together, so the cloud writes
/// each group's memberships side by side, not one row on every page of its
/// index). A group's first change is a `SetMembers` (the cloud may have
/// matched the group by name to one of its own, whose members AD's list
/// replaces), the next ones `AddMembers`. A group the cloud had linked
/// before the import gets no share: its whole list once the read ends
/// (`SetMembers`, which takes away the members AD no longer lists, and no
/// member it keeps is taken away in between). Then the managers: a user's
/// manager is linked once every user exists.
#[derive(Default)]
struct Later {
    /// Every DN seen (an object's, a member's, a manager's), lowercased: its number.
    ids: HashMap<Box<str>, u32>,
    /// By number: the GUID of the object at that DN, once read, and its
    /// place in the read (objects pushed before it are in the cloud).
    read: Vec<Option<(Uuid, u32)>>,
    /// Objects read.
    objects: u32,
    /// Each group read.
    groups: Vec<Group>,
    /// The group the next share starts at.
    next: usize,
    /// Memberships sent in shares.
    shared: usize,
    /// Each user with a manager: the user's upsert and the manager's number.
    managed: Vec<(AdChange, u32)>,
}

struct Group {
    guid: Uuid,
    /// Its place in the read.
    at: u32,
    /// Members not sent yet, by number.
    members: Vec<u32>,
    /// Whether its first change (a `SetMembers`) was sent.
    started: bool,
    /// Linked in the cloud before the import: gets its whole list at the end.
    whole: bool,
}

impl Later {
    /// The number of a DN.
    fn id(&mut self, dn: &str) -> u32 {
        let key = dn.to_lowercase();
        if let Some(id) = self.ids.get(key.as_str()) {
            return *id;
        }
        let id = u32::try_from(self.read.len()).unwrap_or(u32::MAX);
        self.ids.insert(key.into_boxed_str(), id);
        self.read.push(None);
        id
    }

    /// Objects read.
    fn objects(&self) -> usize {
        self.objects as usize
    }

    /// Keeps what the second pass needs of `e` (`linked`: the cloud had
    /// linked it before the import); returns its upsert.
    fn keep(&mut self, e: &AdEntry, guid: Uuid, linked: bool) -> AdChange {
        let id = self.id(&e.dn);
        let at = self.objects;
        self.objects += 1;
        if let Some(slot) = self.read.get_mut(id as usize) {
            *slot = Some((guid, at));
        }
        if e.has_class("group") {
            let members = e.strs("member").iter().map(|m| self.id(m)).collect();
            self.groups.push(Group {
                guid,
                at,
                members,
                started: false,
                whole: linked,
            });
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

    /// A share of the memberships owed once the first `pushed` objects read
    /// are in the cloud: whole groups in turn, from where the last share
    /// stopped, up to about [`SHARE_MAX`] memberships; nothing when fewer
    /// than [`SHARE_MIN`] are owed.
    fn share(&mut self, pushed: u32) -> Vec<AdChange> {
        let read = &self.read;
        // A member's GUID if it is in the cloud already.
        let owed = |m: &u32| match read.get(*m as usize) {
            Some(Some((guid, at))) if *at < pushed => Some(*guid),
            _ => None,
        };
        let n = self.groups.len();
        let mut picked = Vec::new();
        let mut rows = 0;
        for k in 0..n {
            let i = (self.next + k) % n;
            let g = &self.groups[i];
            if g.whole || g.at >= pushed {
                continue;
            }
            let c = g.members.iter().filter(|m| owed(m).is_some()).count();
            if c > 0 {
                picked.push(i);
                rows += c;
                if rows >= SHARE_MAX {
                    self.next = (i + 1) % n;
                    break;
                }
            }
        }
        if rows < SHARE_MIN {
            return Vec::new();
        }
        if rows < SHARE_MAX {
            self.next = 0;
        }
        self.shared += rows;
        let mut out = Vec::with_capacity(picked.len());
        for i in picked {
            let g = &mut self.groups[i];
            let mut members = Vec::new();
            g.members.retain(|m| match owed(m) {
                Some(guid) => {
                    members.push(guid);
                    false
                }
                None => true,
            });
            out.push(if std::mem::replace(&mut g.started, true) {
                AdChange::AddMembers { group: g.guid, members }
            } else {
                AdChange::SetMembers { group: g.guid, members }
            });
        }
        out
    }

    /// Once the read ended: what no share sent of each group's members (a
    /// group not started gets its whole list, which may be empty), then
    /// the managers.
    fn changes(self) -> Vec<AdChange> {
        let guid = |id: &u32| self.read.get(*id as usize).copied().flatten().map(|(g, _)| g);
        let mut out: Vec<AdChange> = Vec::with_capacity(self.groups.len() + self.managed.len());
        for g in &self.groups {
            let members: Vec<Uuid> = g.members.iter().filter_map(guid).collect();
            if !g.started {
                out.push(AdChange::SetMembers { group: g.guid, members });
            } else if !members.is_empty() {
                out.push(AdChange::AddMembers { group: g.guid, members });
            }
        }
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
        later.keep(&entry("CN=Ann,OU=P,DC=x", "user", &[]), ann, false);
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
            false,
        );
        later.keep(
            &entry("CN=Bob,OU=P,DC=x", "user", &[("manager", &["CN=ANN,OU=P,DC=x"])]),
            bob,
            false,
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

    /// `n` users `CN=U<i>` (GUIDs 1000+i) kept after `group` (GUID 1, listing
    /// all of them and one never read), itself linked or not.
    fn group_then_users(later: &mut Later, n: usize, linked: bool) -> Vec<Uuid> {
        let dns: Vec<String> = (0..n).map(|i| format!("CN=U{i},OU=P,DC=x")).collect();
        let mut member: Vec<&str> = dns.iter().map(String::as_str).collect();
        member.push("CN=Gone,OU=Elsewhere,DC=x");
        later.keep(
            &entry("CN=G,OU=G,DC=x", "group", &[("member", &member)]),
            Uuid::from_u128(1),
            linked,
        );
        dns.iter()
            .enumerate()
            .map(|(i, dn)| {
                let guid = Uuid::from_u128(1000 + i as u128);
                later.keep(&entry(dn, "user", &[]), guid, false);
                guid
            })
            .collect()
    }

    /// Each membership change of `changes`: kind, group, members.
    fn memberships(changes: &[AdChange]) -> Vec<(&'static str, Uuid, Vec<Uuid>)> {
        changes
            .iter()
            .filter_map(|c| match c {
                AdChange::SetMembers { group, members } => Some(("set", *group, members.clone())),
                AdChange::AddMembers { group, members } => Some(("add", *group, members.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_share_names_only_members_already_pushed_and_the_rest_follows_the_read() {
        let mut later = Later::default();
        let users = group_then_users(&mut later, 2 * SHARE_MIN, false);
        // Nothing owed until the group is in the cloud, nor while few are.
        assert!(later.share(0).is_empty());
        assert!(later.share(SHARE_MIN as u32).is_empty(), "fewer than SHARE_MIN owed");
        // The group (place 0) and the first SHARE_MIN + 10 users pushed.
        let first = memberships(&later.share(SHARE_MIN as u32 + 11));
        assert_eq!(
            first,
            vec![("set", Uuid::from_u128(1), users[..SHARE_MIN + 10].to_vec())]
        );
        // Owed again only once more are pushed; then as additions.
        assert!(later.share(SHARE_MIN as u32 + 11).is_empty());
        let rest = memberships(&later.changes());
        assert_eq!(
            rest,
            vec![("add", Uuid::from_u128(1), users[SHARE_MIN + 10..].to_vec())]
        );
    }

    #[test]
    fn a_share_takes_whole_groups_in_turn_up_to_its_size() {
        let mut later = Later::default();
        // Three groups of SHARE_MAX / 2 members each, then the members.
        let per = SHARE_MAX / 2;
        let dns: Vec<String> = (0..per).map(|i| format!("CN=U{i},OU=P,DC=x")).collect();
        let member: Vec<&str> = dns.iter().map(String::as_str).collect();
        for g in 1..=3u128 {
            let dn = format!("CN=G{g},OU=G,DC=x");
            later.keep(&entry(&dn, "group", &[("member", &member)]), Uuid::from_u128(g), false);
        }
        for (i, dn) in dns.iter().enumerate() {
            later.keep(&entry(dn, "user", &[]), Uuid::from_u128(1000 + i as u128), false);
        }
        let all = u32::try_from(3 + per).unwrap();
        let groups = |c: &[AdChange]| {
            memberships(c)
                .into_iter()
                .map(|(k, g, m)| (k, g, m.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            groups(&later.share(all)),
            vec![("set", Uuid::from_u128(1), per), ("set", Uuid::from_u128(2), per)]
        );
        assert_eq!(groups(&later.share(all)), vec![("set", Uuid::from_u128(3), per)]);
        assert!(later.share(all).is_empty());
        // Every group started and was sent whole: nothing follows.
        assert!(memberships(&later.changes()).is_empty());
    }

    #[test]
    fn a_group_the_cloud_linked_before_gets_no_share_and_its_whole_list_after_the_read() {
        let mut later = Later::default();
        let users = group_then_users(&mut later, 2 * SHARE_MIN, true);
        assert!(later.share(u32::MAX).is_empty());
        assert_eq!(memberships(&later.changes()), vec![("set", Uuid::from_u128(1), users)]);
    }
}
