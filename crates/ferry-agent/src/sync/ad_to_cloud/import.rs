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
use super::{admit, root};
use crate::ad::mapping::{group_record, user_record, when_changed, READ_ATTRS};
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
    let mut linked = linked_guids(shared).await?;
    // Sorted: whether a group was in the cloud before is a binary search.
    linked.sort_unstable();
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
    let linked_ref = &linked;
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
        // The read runs ahead in a task of its own, on a second handle of
        // the same connection: the DC works on the next page while this
        // one is parsed and pushed. Groups first, then users: each user
        // read is then a member of groups already known, and memberships
        // are sent while the users are still being read (see `Later`).
        let (pages_tx, mut pages) = tokio::sync::mpsc::channel(1);
        let _reader = AbortOnDrop(tokio::spawn(read_ahead(conn.handle(), root.clone(), pages_tx)));
        let mut later = Later::new(move |g| linked_ref.binary_search(g).is_ok());
        let mut present = HashSet::new();
        let mut pending: Vec<AdChange> = Vec::new();
        loop {
            let page = match pages.recv().await {
                Some(Ok(Read::Page(raw))) => raw,
                Some(Ok(Read::GroupsDone)) => {
                    // The groups before the memberships among them.
                    later.groups_read();
                    let mut batch = std::mem::take(&mut pending);
                    batch.extend(later.owed());
                    for chunk in batch.chunks(BATCH) {
                        send(&tx, chunk.to_vec()).await?;
                    }
                    continue;
                }
                Some(Ok(Read::End)) => break,
                Some(Err(e)) => return Err(e.to_string()),
                // The reader always says why it ends: it panicked.
                None => return Err("the read of AD stopped before its end".to_owned()),
            };
            let mut page = page.parse().map_err(|e| e.to_string())?;
            conn.complete_ranged(&mut page).await.map_err(|e| e.to_string())?;
            for e in page {
                if let Some(guid) = admit(&e, protection, Some(&mut present)) {
                    pending.push(later.keep(&e, guid));
                }
                if pending.len() >= BATCH {
                    send(&tx, std::mem::take(&mut pending)).await?;
                }
                if later.owes_a_share() {
                    // The users read so far, then their memberships.
                    let mut batch = std::mem::take(&mut pending);
                    batch.extend(later.owed());
                    for chunk in batch.chunks(BATCH) {
                        send(&tx, chunk.to_vec()).await?;
                    }
                }
            }
        }
        let objects = later.objects();
        tracing::info!(
            objects,
            secs = started.elapsed().as_secs_f32(),
            waited_for_cloud_secs = read_waited.secs(),
            waited_for_ad_secs = push_waited.secs(),
            "full import: read done; the last memberships and the managers follow"
        );
        pending.extend(later.owed());
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

/// What the reader sends.
enum Read {
    /// A page, as received (parsing it is the receiver's work).
    Page(crate::ad::RawEntries),
    /// Every group was read; the users follow.
    GroupsDone,
    /// Every user was read too.
    End,
}

/// Reads the groups, then the users, under `root`, page by page, and says
/// so at each end (or why it stopped).
async fn read_ahead(
    mut conn: AdConnection,
    root: String,
    pages: tokio::sync::mpsc::Sender<Result<Read, crate::ad::AdError>>,
) {
    for (filter, end) in [(crate::ad::GROUPS, Read::GroupsDone), (crate::ad::USERS, Read::End)] {
        let mut pager = crate::ad::Pager::default();
        loop {
            let read = conn
                .search_page_raw(&root, ldap3::Scope::Subtree, filter, READ_ATTRS, &mut pager)
                .await;
            let (page, more) = match read {
                Ok(p) => p,
                Err(e) => {
                    pages.send(Err(e)).await.ok();
                    return;
                }
            };
            if pages.send(Ok(Read::Page(page))).await.is_err() {
                return;
            }
            if !more {
                break;
            }
        }
        if pages.send(Ok(end)).await.is_err() {
            return;
        }
    }
}

/// A task that ends with its owner: the read ahead stops when the import
/// does, whatever ends it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// Owed memberships are sent in shares: a quarter of the new groups'
/// memberships, or this many when that is more. Each share writes a feed
/// and an audit entry per group, and on SQLite rewrites the pages of every
/// group's memberships: 8 shares cost the cloud 2.0 s at 10,000 users where
/// 4 cost 1.4 s, and all memberships after the read 1.6 s (the
/// `import_cost` example).
const SHARES: usize = 4;
const SHARE_MIN: usize = 5_000;

/// What the import keeps of the objects it read, and the memberships it
/// owes the cloud. Each entry is reduced to this as it is read, so the
/// read never holds the entries; every DN is kept once, and a group's
/// members as numbers naming them (500,000 memberships are 4 MB, not
/// 500,000 strings).
///
/// The groups are read first. A group not linked in the cloud before the
/// import gets its members while the users are read: each user read is
/// owed to the groups that list it, and once a share of all the
/// memberships is owed they are sent, after the users they name. So the
/// cloud writes memberships while AD is still being read, instead of all
/// of them after the read; and in a few entries a group ([`SHARES`]), not
/// one per user. A group's first share is a `SetMembers` (the cloud may
/// have matched the group to one of its own, whose members AD's list
/// replaces, as it did when memberships came after the read), the next
/// ones `AddMembers`; a group that got none is set empty once the read
/// ends. A group the cloud had before gets its whole member list once the
/// read ends (`SetMembers`, which also takes away the members AD no longer
/// lists). Then the managers: a user's manager is linked once every user
/// exists.
struct Later<F> {
    /// Whether a group was linked in the cloud before the import.
    was_linked: F,
    /// Every DN seen (an object's, a member's, a manager's), lowercased: its number.
    ids: HashMap<Box<str>, u32>,
    /// By number: the GUID of the object at that DN, once read.
    guids: Vec<Option<Uuid>>,
    /// Groups the cloud had before: each with its members' numbers.
    whole: Vec<(Uuid, Vec<u32>)>,
    /// Groups not linked before, by index, and whether any of their
    /// memberships were sent.
    fresh: Vec<(Uuid, bool)>,
    /// (member's number, fresh group's index), sorted once every group is read.
    member_of: Vec<(u32, u32)>,
    /// Memberships read and not sent yet: (fresh group's index, member).
    owed: Vec<(u32, Uuid)>,
    /// How many owed memberships are worth sending; set once every group is read.
    share: Option<usize>,
    /// Each user with a manager: the user's upsert and the manager's number.
    managed: Vec<(AdChange, u32)>,
}

impl<F: Fn(&Uuid) -> bool> Later<F> {
    fn new(was_linked: F) -> Self {
        Later {
            was_linked,
            ids: HashMap::new(),
            guids: Vec::new(),
            whole: Vec::new(),
            fresh: Vec::new(),
            member_of: Vec::new(),
            owed: Vec::new(),
            share: None,
            managed: Vec::new(),
        }
    }

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
        if self.share.is_some() {
            // Once the groups are read: this object is owed to those listing it.
            let from = self.member_of.partition_point(|(m, _)| *m < id);
            let of = self.member_of[from..].iter().take_while(|(m, _)| *m == id);
            self.owed.extend(of.map(|(_, g)| (*g, guid)));
        }
        if e.has_class("group") {
            let members: Vec<u32> = e.strs("member").iter().map(|m| self.id(m)).collect();
            if (self.was_linked)(&guid) {
                self.whole.push((guid, members));
            } else {
                let g = u32::try_from(self.fresh.len()).unwrap_or(u32::MAX);
                self.fresh.push((guid, false));
                self.member_of.extend(members.into_iter().map(|m| (m, g)));
            }
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

    /// Every group is read: the memberships among them are owed, and each
    /// object read from now on is owed as it is read.
    fn groups_read(&mut self) {
        self.member_of.sort_unstable();
        self.member_of.shrink_to_fit();
        self.share = Some((self.member_of.len() / SHARES).max(SHARE_MIN));
        for (m, g) in &self.member_of {
            if let Some(Some(guid)) = self.guids.get(*m as usize) {
                self.owed.push((*g, *guid));
            }
        }
    }

    /// Whether a share of memberships is owed.
    fn owes_a_share(&self) -> bool {
        self.share.is_some_and(|share| self.owed.len() >= share)
    }

    /// The memberships owed, a change a group (its first a `SetMembers`);
    /// none are owed after.
    fn owed(&mut self) -> Vec<AdChange> {
        let mut owed = std::mem::take(&mut self.owed);
        owed.sort_unstable_by_key(|(g, _)| *g);
        let mut out = Vec::new();
        for run in owed.chunk_by(|a, b| a.0 == b.0) {
            let Some((group, sent)) = self.fresh.get_mut(run[0].0 as usize) else {
                continue;
            };
            let (group, members) = (*group, run.iter().map(|(_, m)| *m).collect());
            out.push(if std::mem::replace(sent, true) {
                AdChange::AddMembers { group, members }
            } else {
                AdChange::SetMembers { group, members }
            });
        }
        out
    }

    /// Once the read ended (and what was owed sent): the groups not linked
    /// before that got no member, set empty; the whole member lists of the
    /// groups the cloud had before; then the managers.
    fn changes(self) -> Vec<AdChange> {
        let guid = |id: &u32| self.guids.get(*id as usize).copied().flatten();
        let empty = self
            .fresh
            .iter()
            .filter(|(_, sent)| !sent)
            .map(|(group, _)| AdChange::SetMembers {
                group: *group,
                members: Vec::new(),
            });
        let whole = self.whole.iter().map(|(group, ids)| AdChange::SetMembers {
            group: *group,
            members: ids.iter().filter_map(guid).collect(),
        });
        let mut out: Vec<AdChange> = empty.chain(whole).collect();
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

    /// Membership changes as (set or add, group, members).
    fn members(changes: &[AdChange]) -> Vec<(&'static str, Uuid, Vec<Uuid>)> {
        changes
            .iter()
            .map(|c| match c {
                AdChange::SetMembers { group, members } => ("set", *group, members.clone()),
                AdChange::AddMembers { group, members } => ("add", *group, members.clone()),
                other => panic!("not a membership change: {other:?}"),
            })
            .collect()
    }

    /// Groups first: a new group's members are owed as each is read
    /// (whatever the case of its DN), nested groups once every group is
    /// read, a member never read not at all; managers follow the read.
    #[test]
    fn a_new_groups_members_are_owed_as_they_are_read_and_managers_follow() {
        let (ann, bob, team, sub) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let mut later = Later::new(|_: &Uuid| false);
        later.keep(
            &entry(
                "CN=Team,OU=G,DC=x",
                "group",
                &[(
                    "member",
                    &[
                        "cn=ann,ou=p,dc=x",
                        "CN=Bob,OU=P,DC=x",
                        "CN=Sub,OU=G,DC=x",
                        "CN=Printer,OU=Elsewhere,DC=x",
                    ],
                )],
            ),
            team,
        );
        later.keep(
            &entry("CN=Sub,OU=G,DC=x", "group", &[("member", &["CN=Ann,OU=P,DC=x"])]),
            sub,
        );
        assert!(later.owed().is_empty(), "nothing is owed before every group is read");
        later.groups_read();
        // A group's first share sets its members (the cloud may have matched it to one of its own).
        assert_eq!(members(&later.owed()), vec![("set", team, vec![sub])]);
        later.keep(&entry("CN=Ann,OU=P,DC=x", "user", &[]), ann);
        later.keep(
            &entry("CN=Bob,OU=P,DC=x", "user", &[("manager", &["CN=ANN,OU=P,DC=x"])]),
            bob,
        );
        assert_eq!(later.objects(), 4);
        assert!(!later.owes_a_share(), "3 memberships are not a share");
        assert_eq!(
            members(&later.owed()),
            vec![("add", team, vec![ann, bob]), ("set", sub, vec![ann])]
        );
        assert!(later.owed().is_empty(), "what was sent is owed no more");
        let changes = later.changes();
        assert!(matches!(
            &changes[..],
            [AdChange::UpsertUser { guid, record, .. }] if *guid == bob && record.manager == Some(ann.to_string())
        ));
    }

    /// A new group none of whose members was read is set empty once the
    /// read ends: a cloud group it was matched to loses its own members,
    /// as AD's list says.
    #[test]
    fn a_new_group_that_got_no_member_is_set_empty_once_the_read_ends() {
        let (ann, lone, empty) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut later = Later::new(|_: &Uuid| false);
        later.keep(
            &entry("CN=Lone,DC=x", "group", &[("member", &["CN=Printer,DC=x"])]),
            lone,
        );
        later.keep(&entry("CN=Empty,DC=x", "group", &[]), empty);
        later.groups_read();
        later.keep(&entry("CN=Ann,DC=x", "user", &[]), ann);
        assert!(later.owed().is_empty());
        assert_eq!(
            members(&later.changes()),
            vec![("set", lone, vec![]), ("set", empty, vec![])]
        );
    }

    /// A group the cloud had before the import gets its whole member list
    /// once the read ends (so members AD no longer lists go), not adds.
    #[test]
    fn a_group_the_cloud_had_gets_its_whole_member_list_once_the_read_ends() {
        let (ann, old) = (Uuid::from_u128(1), Uuid::from_u128(9));
        let mut later = Later::new(|g: &Uuid| *g == old);
        later.keep(
            &entry("CN=Old,DC=x", "group", &[("member", &["CN=Ann,DC=x", "CN=Gone,DC=x"])]),
            old,
        );
        later.groups_read();
        later.keep(&entry("CN=Ann,DC=x", "user", &[]), ann);
        assert!(later.owed().is_empty());
        assert!(matches!(
            &later.changes()[..],
            [AdChange::SetMembers { group, members }] if *group == old && *members == vec![ann]
        ));
    }

    /// Owed memberships are a share once they are a quarter of all, or
    /// SHARE_MIN when that is more.
    #[test]
    fn memberships_are_sent_by_the_share() {
        let users: Vec<String> = (0..2 * SHARE_MIN).map(|i| format!("CN=U{i},DC=x")).collect();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let mut later = Later::new(|_: &Uuid| false);
        later.keep(&entry("CN=Big,DC=x", "group", &[("member", &refs)]), Uuid::from_u128(1));
        later.groups_read();
        for (i, dn) in users.iter().enumerate() {
            assert_eq!(later.owes_a_share(), i >= SHARE_MIN, "after {i} users");
            later.keep(&entry(dn, "user", &[]), Uuid::from_u128(100 + i as u128));
        }
        let sent = members(&later.owed());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].2.len(), 2 * SHARE_MIN);
    }
}
