//! cloud → AD: long-poll the cloud's change feed, apply each change to AD
//! (compare before write), then acknowledge the cursor. A change is
//! acknowledged only after AD has it; re-delivery after a crash is harmless
//! because applying is idempotent.
//!
//! A feed page (up to 500 entries) is applied in feed order on one LDAP
//! connection — Samba runs the writes of several connections no faster than
//! one, and one order keeps each object's changes in theirs — with what
//! surrounds the writes batched: the AD objects of a window of entries are
//! read in one search ([`lookup`]), and the links' bases moved by the writes
//! go to the cloud a batch at a time ([`base_moves`]).

mod base_moves;
mod lookup;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_proto::agent::{
    Authority, CloudChange, CloudDeleteAction, DomainInfo, DomainPolicies, ErrorKey, FeedEntry, LinkInfo, LinkRefusal,
    SyncDirection, SyncErrorReport,
};
use ferry_proto::record::{GroupRecord, ObjectKind, UserRecord};
use uuid::Uuid;

use super::error::SyncError;
use super::protect::{self, Protection};
use super::Shared;
use crate::ad::guid::guid_filter;
use crate::ad::mapping::READ_ATTRS;
use crate::ad::names;
use crate::ad::write::{
    sam_account_name_for, Membership, NewAdGroup, NewAdUser, GROUP_UNIVERSAL_SECURITY, UF_ACCOUNTDISABLE,
    UF_NORMAL_ACCOUNT, UF_PASSWD_NOTREQD,
};
use crate::ad::{AdConnection, AdEntry, AdError};

/// Runs forever.
pub async fn run(shared: Arc<Shared>) {
    super::supervise(shared, SyncDirection::CloudToAd, |s| async move { follow(&s).await }).await
}

async fn follow(shared: &Shared) -> Result<(), String> {
    let mut conn = shared.connect().await.map_err(|e| e.to_string())?;
    let mut protection = protect::read(shared, &mut conn).await?;
    let mut cursor = shared.cloud.state().await.map_err(|e| e.to_string())?.feed_cursor;
    let mut links = Links::new(shared.cloud.clone());
    // Objects (and memberships) with an open cloud → AD error: a success clears theirs.
    let mut failed: HashSet<String> = shared
        .cloud
        .open_sync_errors()
        .await
        .map_err(|e| e.to_string())?
        .cloud_to_ad
        .into_iter()
        .collect();
    loop {
        if !shared.primary.load(Ordering::SeqCst) {
            return Ok(());
        }
        let page = shared
            .cloud
            .feed(cursor, FEED_WAIT_SECS)
            .await
            .map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        let stale = protection.stale(&shared.domain.read().await.policies.scope);
        if stale && !protect::still_holds(shared, &mut conn, &mut protection).await? {
            protection = protect::read(shared, &mut conn).await?;
        }
        let domain = shared.domain.read().await.clone();
        let ctx = Ctx {
            shared,
            domain: &domain,
            protection: &protection,
        };
        let mut resolved = Vec::new();
        links.fresh = false;
        links.absent.clear();
        links.members.clear();
        links.bases.clear();
        links.read_ahead.clear();
        let entries = &per_member(page.entries);
        let (mut i, mut read_upto) = (0, 0);
        while i < entries.len() {
            let end = i + membership_run(&entries[i..]);
            if end > read_upto {
                let upto = entries.len().min(end.max(i + lookup::WINDOW));
                read_ahead(&ctx, &mut conn, &mut links, &entries[read_upto.max(i)..upto])
                    .await
                    .map_err(|e| format!("reading the AD objects of changes {}…: {e}", entries[i].seq))?;
                read_upto = upto;
            }
            for entry in &entries[i..end] {
                for (id, guid) in &entry.ad_guids {
                    links.map.insert(*id, *guid);
                }
            }
            let results = if end - i > 1 {
                apply_memberships(&ctx, &mut conn, &mut links, &entries[i..end]).await
            } else {
                vec![apply(&ctx, &mut conn, &mut links, &entries[i]).await]
            };
            for (entry, r) in entries[i..end].iter().zip(results) {
                settle(shared, entry, r, &mut failed, &mut resolved).await?;
            }
            for r in std::mem::take(&mut links.refused_moves) {
                report_refused_move(shared, r).await?;
            }
            i = end;
        }
        // Acknowledged only once the bases the writes moved are recorded.
        let refused = links.moves.drain().await.map_err(|e| e.to_string())?;
        for r in refused {
            report_refused_move(shared, r).await?;
        }
        if !resolved.is_empty() {
            shared
                .cloud
                .resolve_sync_errors(SyncDirection::CloudToAd, resolved)
                .await
                .map_err(|e| e.to_string())?;
        }
        if page.next_cursor > cursor {
            shared.cloud.ack(page.next_cursor).await.map_err(|e| e.to_string())?;
            cursor = page.next_cursor;
        }
        if !entries.is_empty() {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(entries = entries.len(), secs, "cloud → AD: feed page applied");
        }
        shared.synced(SyncDirection::CloudToAd);
    }
}

/// What becomes of an applied entry: a success clears its object's (or its
/// membership's) open error; a refusal is recorded against it and the rest
/// flows on; a fault in passing stops the page (it is applied again after a
/// pause).
async fn settle(
    shared: &Shared,
    entry: &FeedEntry,
    result: Result<(), SyncError>,
    failed: &mut HashSet<String>,
    resolved: &mut Vec<String>,
) -> Result<(), String> {
    let key = error_key(&entry.change).to_string();
    match result {
        Ok(()) => {
            crate::metrics::cloud_change_applied(entry.at);
            if failed.remove(&key) {
                resolved.push(key);
            }
        }
        Err(SyncError::Refused { code, message }) => {
            tracing::warn!(seq = entry.seq, object = %key, %code, "cloud → AD: refused; recorded as a sync error");
            let report = error_report(entry, code, message);
            shared
                .cloud
                .report_sync_error(&report)
                .await
                .map_err(|e| e.to_string())?;
            // Resolved earlier in this page and refused now: the refusal stands.
            resolved.retain(|k| *k != key);
            failed.insert(key);
        }
        Err(SyncError::Retry(e)) => return Err(format!("change {}: {e}", entry.seq)),
    }
    Ok(())
}

/// The page's entries with each membership entry of many members as one
/// entry per member (see [`FeedEntry::per_member`]): the same `seq`, as the
/// page is acknowledged whole, once applied. Runs of them are then written
/// a modify at a time, each member answered alone.
fn per_member(entries: Vec<FeedEntry>) -> Vec<FeedEntry> {
    entries.into_iter().flat_map(FeedEntry::per_member).collect()
}

/// Most membership changes written in one modify.
const MAX_MEMBERSHIP_RUN: usize = 500;

/// How many entries from the first are membership changes of one group,
/// all additions or all removals (at least 1: the first entry itself).
/// Such a run is written in one modify: the changes touch the group and
/// members no other entry of the run touches, so their order among
/// themselves changes nothing.
fn membership_run(entries: &[FeedEntry]) -> usize {
    let Some((group, _, add)) = entries.first().and_then(|e| membership(&e.change)) else {
        return 1;
    };
    entries
        .iter()
        .take(MAX_MEMBERSHIP_RUN)
        .take_while(|e| membership(&e.change).is_some_and(|(g, _, a)| g == group && a == add))
        .count()
        .max(1)
}

/// A membership change's group, member, and whether it adds.
fn membership(change: &CloudChange) -> Option<(Uuid, Uuid, bool)> {
    match change {
        CloudChange::AddMember { group, member, .. } => Some((*group, *member, true)),
        CloudChange::RemoveMember { group, member, .. } => Some((*group, *member, false)),
        _ => None,
    }
}

/// A run of membership changes of one group (see [`membership_run`]),
/// written in one modify: AD takes many values at once for about the price
/// of one. When AD refuses the whole (a member already in, or one gone),
/// each is written alone, so each gets its own answer. One result an entry.
async fn apply_memberships(
    ctx: &Ctx<'_>,
    conn: &mut AdConnection,
    links: &mut Links,
    run: &[FeedEntry],
) -> Vec<Result<(), SyncError>> {
    let Some((group, _, add)) = run.first().and_then(|e| membership(&e.change)) else {
        return Vec::new();
    };
    let g = match membership_entry(ctx, conn, links, group).await {
        Ok(Some(g)) => g,
        Ok(None) => {
            tracing::debug!(seq = run[0].seq, "membership of a group not in AD: skipped");
            return run.iter().map(|_| Ok(())).collect();
        }
        Err(e) => return run.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut results = Vec::with_capacity(run.len());
    let (mut dns, mut written) = (Vec::new(), Vec::new());
    for (i, entry) in run.iter().enumerate() {
        let Some((_, member, _)) = membership(&entry.change) else {
            results.push(Ok(()));
            continue;
        };
        results.push(match membership_entry(ctx, conn, links, member).await {
            Ok(Some(m)) => {
                dns.push(m.dn);
                written.push(i);
                Ok(())
            }
            Ok(None) => {
                tracing::debug!(seq = entry.seq, "membership of an object not in AD: skipped");
                Ok(())
            }
            Err(e) => Err(e),
        });
    }
    if dns.is_empty() {
        return results;
    }
    let whole = if add {
        conn.add_members(&g.dn, &dns).await
    } else {
        conn.remove_members(&g.dn, &dns).await
    };
    match whole.map_err(SyncError::from) {
        Ok(()) => {
            tracing::info!(group = %g.dn, members = dns.len(), add, "cloud → AD: memberships");
            ctx.shared.applied.fetch_add(dns.len() as u64, Ordering::SeqCst);
        }
        Err(SyncError::Retry(e)) => {
            for i in written {
                results[i] = Err(SyncError::Retry(e.clone()));
            }
        }
        Err(SyncError::Refused { .. }) => {
            for (i, dn) in written.into_iter().zip(&dns) {
                results[i] = write_membership(ctx.shared, conn, &g.dn, dn, add).await;
            }
        }
    }
    results
}

/// Adds `member` to `group`, or takes it out: one in already (or out
/// already) is the state wanted.
async fn write_membership(
    shared: &Shared,
    conn: &mut AdConnection,
    group: &str,
    member: &str,
    add: bool,
) -> Result<(), SyncError> {
    // Written without reading the group first: its member list may be
    // ranged (AD gives at most 1,500 values at a time).
    let done = if add {
        conn.add_member(group, member).await
    } else {
        conn.remove_member(group, member).await
    }?;
    if done == Membership::Changed {
        tracing::info!(%group, %member, add, "cloud → AD: membership");
        shared.applied.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// How long a feed request waits for a change when there is none.
const FEED_WAIT_SECS: u64 = 20;

/// Reads the AD objects a window of entries names, in a few searches: the
/// linked objects (the link from the entry's snapshot, or the agent's), and
/// the account names of cloud objects not linked yet.
async fn read_ahead(
    ctx: &Ctx<'_>,
    conn: &mut AdConnection,
    links: &mut Links,
    window: &[FeedEntry],
) -> Result<(), SyncError> {
    let mut guids = Vec::new();
    let mut sams = Vec::new();
    let unknown: Vec<Uuid> = window
        .iter()
        .flat_map(|entry| {
            entry
                .change
                .objects()
                .into_iter()
                .filter(|id| !entry.ad_guids.contains_key(id))
        })
        .collect();
    look_up_links(ctx.shared, links, unknown).await?;
    for entry in window {
        for id in &entry.change.objects() {
            let guid = match entry.ad_guids.get(id) {
                Some(g) => Some(*g),
                None => link_of(ctx.shared, links, *id).await?,
            };
            match guid {
                Some(g) => guids.push(g),
                None => match &entry.change {
                    CloudChange::UpsertUser { record, .. } => sams.push(names::user_sam(&record.username)),
                    CloudChange::UpsertGroup { record, .. } => {
                        sams.push(sam_account_name_for(&record.name, names::MAX_GROUP_SAM))
                    }
                    _ => {}
                },
            }
        }
    }
    guids.sort_unstable();
    guids.dedup();
    sams.sort_unstable();
    sams.dedup();
    links.read_ahead.read(conn, &ctx.domain.root_dn, &guids, &sams).await?;
    Ok(())
}

/// A base move the cloud refused. A user deleted in the cloud meanwhile
/// has its delete coming down the feed; anything else is the user's sync error.
async fn report_refused_move(shared: &Shared, r: LinkRefusal) -> Result<(), String> {
    if r.code == "object_deleted" {
        tracing::debug!(object = %r.object_id, "cloud → AD: the user was deleted in the cloud meanwhile");
        return Ok(());
    }
    tracing::warn!(object = %r.object_id, code = %r.code, "cloud → AD: the cloud refused the link's new base");
    let report = SyncErrorReport {
        direction: SyncDirection::CloudToAd,
        object_key: r.object_id.to_string(),
        object_kind: ObjectKind::User,
        object_name: r.object_id.to_string(),
        operation: "record the link's base".into(),
        code: format!("http {} {}", r.status, r.code),
        message: r.message,
    };
    shared.cloud.report_sync_error(&report).await.map_err(|e| e.to_string())
}

/// What a change's sync error is keyed by: a membership by its group and
/// member, so that one member's success does not resolve another's refusal.
fn error_key(change: &CloudChange) -> ErrorKey {
    match change {
        CloudChange::AddMember { group, member, .. } | CloudChange::RemoveMember { group, member, .. } => {
            ErrorKey::Membership {
                group: *group,
                member: *member,
            }
        }
        other => ErrorKey::Object(subject(other)),
    }
}

/// The object a feed entry changes (a membership change is the group's).
fn subject(change: &CloudChange) -> Uuid {
    match change {
        CloudChange::UpsertUser { id, .. } | CloudChange::UpsertGroup { id, .. } | CloudChange::Delete { id, .. } => {
            *id
        }
        CloudChange::AddMember { group, .. }
        | CloudChange::RemoveMember { group, .. }
        | CloudChange::AddMembers { group, .. }
        | CloudChange::RemoveMembers { group, .. } => *group,
        CloudChange::PasswordSet { user } => *user,
    }
}

fn error_report(entry: &FeedEntry, code: String, message: String) -> SyncErrorReport {
    let (kind, name, operation) = match &entry.change {
        CloudChange::UpsertUser { record, .. } => (ObjectKind::User, record.username.clone(), "create or update user"),
        CloudChange::UpsertGroup { record, .. } => (ObjectKind::Group, record.name.clone(), "create or update group"),
        CloudChange::Delete { id, kind } => (*kind, id.to_string(), "delete"),
        CloudChange::AddMember { group, member, .. } => (
            ObjectKind::Group,
            format!("group {group} (member {member})"),
            "add member",
        ),
        CloudChange::RemoveMember { group, member, .. } => (
            ObjectKind::Group,
            format!("group {group} (member {member})"),
            "remove member",
        ),
        CloudChange::AddMembers { group, members } => (
            ObjectKind::Group,
            format!("group {group} ({} members)", members.len()),
            "add members",
        ),
        CloudChange::RemoveMembers { group, members } => (
            ObjectKind::Group,
            format!("group {group} ({} members)", members.len()),
            "remove members",
        ),
        CloudChange::PasswordSet { user } => (ObjectKind::User, user.to_string(), "set password"),
    };
    SyncErrorReport {
        direction: SyncDirection::CloudToAd,
        object_key: error_key(&entry.change).to_string(),
        object_kind: kind,
        object_name: name,
        operation: operation.to_owned(),
        code,
        message,
    }
}

/// The AD object of `guid`: read ahead, or else read now.
async fn find(conn: &mut AdConnection, root: &str, links: &mut Links, guid: Uuid) -> Result<Option<AdEntry>, AdError> {
    if let Some(e) = links.read_ahead.take_guid(guid) {
        return Ok(e);
    }
    Ok(conn
        .search_paged(root, ldap3::Scope::Subtree, &guid_filter(guid), &lookup::target_attrs())
        .await?
        .into_iter()
        .next())
}

/// The links known to the agent: cloud id → objectGUID.
struct Links {
    map: HashMap<Uuid, Uuid>,
    /// AD objects read this feed page for membership changes (DN and what
    /// protection needs, never the member list): a page of 500 additions
    /// to one group reads the group once.
    members: HashMap<Uuid, AdEntry>,
    /// Users' bases this agent set during this feed page (on create, or
    /// after a write): fresher than the page's, which was read before.
    bases: HashMap<Uuid, UserRecord>,
    /// Read whole from the cloud during this feed page.
    fresh: bool,
    /// Cloud objects the cloud said have no link, this feed page.
    absent: std::collections::HashSet<Uuid>,
    /// AD objects read ahead for the entries about to be applied.
    read_ahead: lookup::ReadAhead,
    /// Bases moved by writes, on their way to the cloud.
    moves: base_moves::BaseMoves,
    /// Moves the cloud refused, to be reported.
    refused_moves: Vec<LinkRefusal>,
}

impl Links {
    fn new(cloud: crate::cloud::CloudClient) -> Links {
        Links {
            map: HashMap::new(),
            members: HashMap::new(),
            bases: HashMap::new(),
            fresh: false,
            absent: std::collections::HashSet::new(),
            read_ahead: lookup::ReadAhead::default(),
            moves: base_moves::BaseMoves::new(cloud),
            refused_moves: Vec::new(),
        }
    }
}

/// The AD object linked to a cloud id, looking the link up in the cloud when
/// the feed entry predates it.
async fn linked(
    shared: &Shared,
    conn: &mut AdConnection,
    root: &str,
    links: &mut Links,
    id: Uuid,
) -> Result<Option<AdEntry>, SyncError> {
    match link_of(shared, links, id).await? {
        Some(g) => Ok(find(conn, root, links, g).await?),
        None => Ok(None),
    }
}

/// The objectGUID a cloud id is linked to: the agent's, or else asked of
/// the cloud (at most once a feed page per object; [`look_up_links`] asks
/// for a window's at once).
async fn link_of(shared: &Shared, links: &mut Links, id: Uuid) -> Result<Option<Uuid>, SyncError> {
    if !links.fresh {
        // Asks only when neither known nor known absent.
        look_up_links(shared, links, vec![id]).await?;
    }
    Ok(links.map.get(&id).copied())
}

/// Asks the cloud for the links of `ids` (an entry written before its
/// object's link has none in its snapshot), 1,000 a request: a page of new
/// cloud users costs one request, not a read of every link in the domain.
async fn look_up_links(shared: &Shared, links: &mut Links, mut ids: Vec<Uuid>) -> Result<(), SyncError> {
    ids.retain(|id| !links.map.contains_key(id) && !links.absent.contains(id));
    ids.sort_unstable();
    ids.dedup();
    for chunk in ids.chunks(1000) {
        for l in shared.cloud.links_of(chunk.to_vec()).await? {
            links.map.insert(l.object_id, l.guid);
        }
        links
            .absent
            .extend(chunk.iter().filter(|id| !links.map.contains_key(id)).copied());
    }
    Ok(())
}

/// The cloud object an AD object is linked to, if any, every link read (at
/// most once a feed page): only when a cloud object's account name is
/// found in AD, which is rare.
async fn linked_object(shared: &Shared, links: &mut Links, guid: Uuid) -> Result<Option<Uuid>, SyncError> {
    if !links.fresh {
        shared
            .cloud
            .each_link(|l| {
                links.map.insert(l.object_id, l.guid);
            })
            .await?;
        links.fresh = true;
    }
    Ok(links.map.iter().find(|(_, g)| **g == guid).map(|(object, _)| *object))
}

/// What a change is applied with.
struct Ctx<'a> {
    shared: &'a Shared,
    domain: &'a DomainInfo,
    protection: &'a Protection,
}

/// Where a cloud object lands in AD.
enum Target {
    /// Its AD object (linked, or matched and now linked).
    Existing(Box<AdEntry>),
    /// Linked to an AD object that is gone: deleted in AD (the delete
    /// comes up the other way), never created again by name.
    Gone,
    /// Not in AD yet; `name_taken`: its account name is another object's.
    New { name_taken: bool },
}

/// A refusal of Ferry's own: the object is out of its reach.
fn protected(e: &AdEntry, why: &str) -> SyncError {
    SyncError::Refused {
        code: "protected".into(),
        message: format!("the AD object {} is {why}; Ferry never writes to it", e.dn),
    }
}

/// Why Ferry may not write an AD object: protected, or outside the scope.
fn out_of_reach(p: &Protection, e: &AdEntry) -> Option<SyncError> {
    if let Some(why) = p.why(e) {
        return Some(protected(e, why));
    }
    (!p.admits(&e.dn)).then(|| SyncError::Refused {
        code: "out_of_scope".into(),
        message: format!(
            "the AD object {} is outside this domain's sync scope; Ferry does not write to it",
            e.dn
        ),
    })
}

/// The linked AD object of a cloud object, refused when it is protected.
async fn linked_entry(
    ctx: &Ctx<'_>,
    conn: &mut AdConnection,
    links: &mut Links,
    id: Uuid,
) -> Result<Option<AdEntry>, SyncError> {
    match linked(ctx.shared, conn, &ctx.domain.root_dn, links, id).await? {
        Some(e) => match out_of_reach(ctx.protection, &e) {
            Some(refusal) => Err(refusal),
            None => Ok(Some(e)),
        },
        None => Ok(None),
    }
}

/// What a membership change needs of an AD object: its DN and what tells
/// whether it may be written (never its member list, which for a big group
/// is most of the read).
const MEMBERSHIP_ATTRS: &[&str] = &[
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "adminCount",
    "isCriticalSystemObject",
];

/// The linked AD object of a group or member, read at most once a feed page.
async fn membership_entry(
    ctx: &Ctx<'_>,
    conn: &mut AdConnection,
    links: &mut Links,
    id: Uuid,
) -> Result<Option<AdEntry>, SyncError> {
    let Some(guid) = link_of(ctx.shared, links, id).await? else {
        return Ok(None);
    };
    let e = match links.members.get(&guid) {
        Some(e) => e.clone(),
        None => {
            let found = match links.read_ahead.take_guid(guid) {
                Some(e) => e,
                None => conn
                    .search_paged(
                        &ctx.domain.root_dn,
                        ldap3::Scope::Subtree,
                        &guid_filter(guid),
                        MEMBERSHIP_ATTRS,
                    )
                    .await?
                    .into_iter()
                    .next(),
            };
            let Some(e) = found else { return Ok(None) };
            links.members.insert(guid, e.clone());
            e
        }
    };
    match out_of_reach(ctx.protection, &e) {
        Some(refusal) => Err(refusal),
        None => Ok(Some(e)),
    }
}

/// The AD object a cloud user or group lands on: its linked one, or an AD
/// object of the same account name that the matching rules allow linking
/// (not protected, linked to nothing, matching on for the domain). Any
/// other same-named object is a conflict recorded as a sync error, never
/// written to.
async fn target(
    ctx: &Ctx<'_>,
    conn: &mut AdConnection,
    links: &mut Links,
    id: Uuid,
    kind: ObjectKind,
    sam: &str,
) -> Result<Target, SyncError> {
    let root = ctx.domain.root_dn.as_str();
    if let Some(guid) = link_of(ctx.shared, links, id).await? {
        return match find(conn, root, links, guid).await? {
            Some(e) => match out_of_reach(ctx.protection, &e) {
                Some(refusal) => Err(refusal),
                None => Ok(Target::Existing(Box::new(e))),
            },
            None => Ok(Target::Gone),
        };
    }
    let found = match links.read_ahead.take_sam(sam) {
        Some(e) => e,
        None => by_sam(conn, root, sam).await?,
    };
    let Some(e) = found else {
        return Ok(Target::New { name_taken: false });
    };
    if let Some(refusal) = out_of_reach(ctx.protection, &e) {
        return Err(refusal);
    }
    let Some(guid) = e.guid() else {
        return Err(SyncError::Retry(format!("{} has no objectGUID", e.dn)));
    };
    match linked_object(ctx.shared, links, guid).await? {
        // Linked to this very object since its own link was asked for: the
        // AD → cloud direction read the account (one an agent stopped
        // mid-change had made) and matched it to this object meanwhile.
        // Creating another would leave AD with two.
        Some(object) if object == id => return Ok(Target::Existing(Box::new(e))),
        // Another cloud object's account (two cloud names that AD's rules
        // make one): this one gets a name of its own.
        Some(_) => return Ok(Target::New { name_taken: true }),
        None => {}
    }
    if !ctx.domain.policies.match_existing_users {
        return Err(SyncError::Refused {
            code: "conflict".into(),
            message: format!(
                "an AD account named {sam:?} ({}) exists and matching existing objects is off for this domain: rename one of them, or turn matching on",
                e.dn
            ),
        });
    }
    ctx.shared
        .cloud
        .put_link(&LinkInfo {
            object_id: id,
            kind,
            guid,
            dn: e.dn.clone(),
            base: None,
        })
        .await?;
    links.map.insert(id, guid);
    tracing::info!(dn = %e.dn, %id, "cloud → AD: matched an existing AD object by its account name, and linked it");
    Ok(Target::Existing(Box::new(e)))
}

async fn apply(ctx: &Ctx<'_>, conn: &mut AdConnection, links: &mut Links, entry: &FeedEntry) -> Result<(), SyncError> {
    let (shared, domain) = (ctx.shared, ctx.domain);
    match &entry.change {
        CloudChange::UpsertUser { id, record } => {
            let sam = names::user_sam(&record.username);
            match target(ctx, conn, links, *id, ObjectKind::User, &sam).await? {
                Target::Existing(e) => update_user(ctx, conn, links, &e, record, entry).await?,
                Target::Gone => tracing::debug!(%id, "the user's AD account was deleted in AD: not created again"),
                Target::New { name_taken } => create_user(shared, conn, domain, *id, record, links, name_taken).await?,
            }
        }
        CloudChange::UpsertGroup { id, record } => {
            let sam = sam_account_name_for(&record.name, names::MAX_GROUP_SAM);
            match target(ctx, conn, links, *id, ObjectKind::Group, &sam).await? {
                Target::Existing(e) => update_group(shared, conn, &e, record).await?,
                Target::Gone => tracing::debug!(%id, "the group was deleted in AD: not created again"),
                Target::New { name_taken } => {
                    create_group(shared, conn, domain, *id, record, links, name_taken).await?
                }
            }
        }
        CloudChange::Delete { id, kind } => {
            let Some(e) = linked_entry(ctx, conn, links, *id).await? else {
                return Ok(());
            };
            match (kind, domain.policies.cloud_delete_action) {
                (ObjectKind::User, CloudDeleteAction::Disable) => {
                    conn.set_enabled(&e.dn, false).await?;
                    tracing::info!(dn = %e.dn, "cloud → AD: user deleted in the cloud, disabled in AD (policy)");
                }
                _ => {
                    match conn.delete(&e.dn).await {
                        // An object with children (a user's devices, say): with them.
                        Err(AdError::Ldap { rc: 66, .. }) => conn.delete_tree(&e.dn).await?,
                        r => r?,
                    }
                    tracing::info!(dn = %e.dn, "cloud → AD: deleted");
                }
            }
            if let Some(g) = links.map.remove(id) {
                links.members.remove(&g);
            }
            shared.applied.fetch_add(1, Ordering::SeqCst);
        }
        CloudChange::AddMember { group, member, .. } | CloudChange::RemoveMember { group, member, .. } => {
            let add = matches!(entry.change, CloudChange::AddMember { .. });
            let (Some(g), Some(m)) = (
                membership_entry(ctx, conn, links, *group).await?,
                membership_entry(ctx, conn, links, *member).await?,
            ) else {
                tracing::debug!(seq = entry.seq, "membership of objects not in AD: skipped");
                return Ok(());
            };
            write_membership(shared, conn, &g.dn, &m.dn, add).await?;
        }
        CloudChange::AddMembers { .. } | CloudChange::RemoveMembers { .. } => {
            // A page's are taken apart before they get here (`per_member`).
            let each = per_member(vec![entry.clone()]);
            for r in apply_memberships(ctx, conn, links, &each).await {
                r?;
            }
        }
        CloudChange::PasswordSet { user } => {
            let Some(e) = linked_entry(ctx, conn, links, *user).await? else {
                tracing::warn!(%user, "a password for a user with no AD account: skipped");
                return Ok(());
            };
            if set_password(shared, conn, &e, entry.seq, *user).await? {
                // The account was enabled: the base moves by that.
                if let Some(mut next) = links.bases.get(user).or(entry.base.as_deref()).cloned() {
                    next.active = true;
                    rebase(links, *user, &e, next).await?;
                }
            }
        }
    }
    Ok(())
}

async fn by_sam(conn: &mut AdConnection, root: &str, sam: &str) -> Result<Option<AdEntry>, SyncError> {
    let filter = format!("(sAMAccountName={})", ldap3::ldap_escape(sam));
    Ok(conn
        .search_paged(root, ldap3::Scope::Subtree, &filter, &lookup::target_attrs())
        .await?
        .into_iter()
        .next())
}

/// LDAP attribute → desired value, from a user record.
fn user_attrs(r: &UserRecord) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("givenName", r.given_name.clone()),
        ("sn", r.family_name.clone()),
        ("displayName", r.display_name.clone()),
        ("mail", r.email.clone()),
        ("telephoneNumber", r.phone.clone()),
        ("mobile", r.mobile.clone()),
        ("title", r.title.clone()),
        ("department", r.department.clone()),
        ("company", r.company.clone()),
        ("description", r.description.clone()),
        ("employeeID", r.employee_number.clone()),
    ]
}

/// Which of a user's fields cloud → AD writes: three-way, against AD's
/// record as the cloud last merged it (`base`). A field where the cloud
/// holds that same value is AD's to keep (an edit made in AD while the agent was down comes
/// up the other way); a field both changed is settled by the authority
/// policy (`latest`: the later of AD's `whenChanged` and the cloud's
/// change). Without a base every difference is the cloud's.
struct Merge<'a> {
    base: Option<&'a UserRecord>,
    ad_wins_both: bool,
}

impl Merge<'_> {
    fn new<'a>(base: Option<&'a UserRecord>, e: &AdEntry, policies: &DomainPolicies, cloud_at: i64) -> Merge<'a> {
        let ad_at = crate::ad::mapping::when_changed(e);
        let ad_wins_both = match policies.authority {
            Authority::Ad => true,
            Authority::Cloud => false,
            Authority::Latest => ad_at.is_some_and(|a| a + 999 >= cloud_at),
        };
        Merge { base, ad_wins_both }
    }

    /// Whether to write `want` over AD's `have`, given the base's `was`.
    fn write<T: PartialEq>(&self, have: &T, want: &T, was: Option<&T>) -> bool {
        if have == want {
            return false;
        }
        match was {
            None => true,
            Some(was) if want == was => false,
            Some(was) => have == was || !self.ad_wins_both,
        }
    }
}

async fn update_user(
    ctx: &Ctx<'_>,
    conn: &mut AdConnection,
    links: &mut Links,
    e: &AdEntry,
    r: &UserRecord,
    entry: &FeedEntry,
) -> Result<(), SyncError> {
    let shared = ctx.shared;
    let id = subject(&entry.change);
    let base = links.bases.get(&id).or(entry.base.as_deref());
    let merge = Merge::new(base, e, &ctx.domain.policies, entry.at);
    let was = merge.base.map(user_attrs);
    let mut changes: Vec<(&str, Option<String>)> = Vec::new();
    // Fields AD already holds as the cloud does, unlike the base: both
    // sides agree, so the base takes them too (else the cloud would find
    // its record ahead of AD's and send it down again).
    let mut agreed: Vec<(&str, Option<String>)> = Vec::new();
    for (i, (attr, want)) in user_attrs(r).into_iter().enumerate() {
        let have = e.str(attr).filter(|s| !s.is_empty());
        let was = was.as_ref().map(|w| &w[i].1);
        if merge.write(&have, &want, was) {
            changes.push((attr, want));
        } else if have == want && was.is_some_and(|w| *w != want) {
            agreed.push((attr, want));
        }
    }
    // The AD name follows the cloud's userName within AD's rules; one Ferry
    // derived earlier for the same userName (`name-2`) is left as it is.
    let sam = names::user_sam(&r.username);
    let renamed_in_cloud = merge.base.is_none_or(|b| b.username != r.username);
    if renamed_in_cloud
        && !e
            .str("sAMAccountName")
            .is_some_and(|cur| names::is_sam_for(&cur, &sam, names::MAX_USER_SAM))
    {
        changes.push(("sAMAccountName", Some(sam.clone())));
    }
    let uac = e.int("userAccountControl").unwrap_or(0);
    let enabled = uac & UF_ACCOUNTDISABLE == 0;
    let mut set_state = merge.write(&enabled, &r.active, merge.base.map(|b| &b.active));
    if set_state && r.active && uac & UF_PASSWD_NOTREQD != 0 {
        // Made by Ferry and still waiting for its password: enabled now it
        // could sign in with none. The password enables it.
        tracing::debug!(dn = %e.dn, "not enabled yet: the account waits for its password");
        set_state = false;
    }
    let same_name = merge.base.is_some_and(|b| b.username != r.username)
        && e.str("sAMAccountName")
            .is_some_and(|cur| names::is_sam_for(&cur, &sam, names::MAX_USER_SAM));
    let state_agreed = merge.base.is_some_and(|b| b.active != r.active) && enabled == r.active;
    if changes.is_empty() && !set_state {
        if let (Some(b), true) = (merge.base, !agreed.is_empty() || same_name || state_agreed) {
            let mut next = b.clone();
            for (attr, value) in &agreed {
                set_field(&mut next, attr, value.clone());
            }
            if same_name {
                next.username = r.username.clone();
            }
            if state_agreed {
                next.active = r.active;
            }
            return rebase(links, id, e, next).await;
        }
        return Ok(());
    }
    let refs: Vec<(&str, Option<&str>)> = changes.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    if !refs.is_empty() {
        conn.set_attributes(&e.dn, &refs).await?;
    }
    if set_state {
        if let Err(err) = conn.set_enabled(&e.dn, r.active).await {
            // AD refuses to enable an account that has no password yet.
            tracing::warn!(dn = %e.dn, error = %err, "cannot change the account state");
        }
    }
    tracing::info!(dn = %e.dn, changed = ?changes.iter().map(|c| c.0).collect::<Vec<_>>(), active = r.active, "cloud → AD: user updated");
    shared.applied.fetch_add(1, Ordering::SeqCst);
    // The base moves by what was written, and only that: an AD edit the
    // cloud has not merged yet must still read as AD's.
    let mut next = match merge.base {
        Some(b) => b.clone(),
        // Without one, every difference was written: AD holds the record.
        None => {
            let mut n = r.clone();
            n.username = e.str("sAMAccountName").unwrap_or_default();
            n
        }
    };
    for (attr, value) in changes.iter().chain(&agreed) {
        set_field(&mut next, attr, value.clone());
    }
    if same_name || changes.iter().any(|(a, _)| *a == "sAMAccountName") {
        // The base keeps the cloud's userName for an AD name derived from it.
        next.username = r.username.clone();
    }
    if set_state || state_agreed {
        next.active = r.active;
    }
    rebase(links, id, e, next).await
}

/// Sets the field of a user's record an AD attribute maps to.
fn set_field(r: &mut UserRecord, attr: &str, value: Option<String>) {
    match attr {
        "givenName" => r.given_name = value,
        "sn" => r.family_name = value,
        "displayName" => r.display_name = value,
        "mail" => r.email = value,
        "telephoneNumber" => r.phone = value,
        "mobile" => r.mobile = value,
        "title" => r.title = value,
        "department" => r.department = value,
        "company" => r.company = value,
        "description" => r.description = value,
        "employeeID" => r.employee_number = value,
        "sAMAccountName" => r.username = value.unwrap_or_default(),
        _ => {}
    }
}

async fn create_user(
    shared: &Shared,
    conn: &mut AdConnection,
    domain: &DomainInfo,
    id: Uuid,
    r: &UserRecord,
    links: &mut Links,
    name_taken: bool,
) -> Result<(), SyncError> {
    let base = names::user_sam(&r.username);
    let sam = free_sam(conn, &domain.root_dn, &base, names::MAX_USER_SAM, name_taken).await?;
    let display = r.display_name.clone().unwrap_or_else(|| r.username.clone());
    let cn = free_cn(conn, &domain.user_ou, &display).await?;
    let u = NewAdUser {
        upn: Some(format!("{sam}@{}", domain.name)),
        sam_account_name: sam,
        cn: Some(cn),
        attributes: user_attrs(r)
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
        password: None,
        enabled: false,
    };
    let creating = shared.creating.lock().await;
    let dn = conn.create_user(&domain.user_ou, &u).await?;
    link_new(shared, conn, links, id, ObjectKind::User, dn.clone()).await?;
    drop(creating);
    tracing::info!(%dn, "cloud → AD: user created (disabled until a password is set)");
    Ok(())
}

async fn update_group(shared: &Shared, conn: &mut AdConnection, e: &AdEntry, r: &GroupRecord) -> Result<(), SyncError> {
    let sam = sam_account_name_for(&r.name, names::MAX_GROUP_SAM);
    let mut changes: Vec<(&str, Option<String>)> = Vec::new();
    if !e
        .str("sAMAccountName")
        .is_some_and(|cur| names::is_sam_for(&cur, &sam, names::MAX_GROUP_SAM))
    {
        changes.push(("sAMAccountName", Some(sam)));
    }
    if e.str("description").filter(|s| !s.is_empty()) != r.description {
        changes.push(("description", r.description.clone()));
    }
    if changes.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&str, Option<&str>)> = changes.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    conn.set_attributes(&e.dn, &refs).await?;
    tracing::info!(dn = %e.dn, "cloud → AD: group updated");
    shared.applied.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn create_group(
    shared: &Shared,
    conn: &mut AdConnection,
    domain: &DomainInfo,
    id: Uuid,
    r: &GroupRecord,
    links: &mut Links,
    name_taken: bool,
) -> Result<(), SyncError> {
    let base = sam_account_name_for(&r.name, names::MAX_GROUP_SAM);
    let g = NewAdGroup {
        sam_account_name: Some(free_sam(conn, &domain.root_dn, &base, names::MAX_GROUP_SAM, name_taken).await?),
        name: free_cn(conn, &domain.user_ou, &r.name).await?,
        description: r.description.clone(),
        group_type: GROUP_UNIVERSAL_SECURITY,
    };
    let creating = shared.creating.lock().await;
    let dn = conn.create_group(&domain.user_ou, &g).await?;
    link_new(shared, conn, links, id, ObjectKind::Group, dn.clone()).await?;
    drop(creating);
    tracing::info!(%dn, "cloud → AD: group created");
    Ok(())
}

/// `base` when it is free (the caller has just looked), or else the first
/// of its variants (`base-2`, …) no object in the domain has.
async fn free_sam(
    conn: &mut AdConnection,
    root: &str,
    base: &str,
    max: usize,
    base_taken: bool,
) -> Result<String, SyncError> {
    if !base_taken {
        return Ok(base.to_owned());
    }
    for n in 2..=names::MAX_VARIANTS {
        let candidate = names::sam_variant(base, n, max);
        if by_sam(conn, root, &candidate).await?.is_none() {
            return Ok(candidate);
        }
    }
    Err(SyncError::Refused {
        code: "ldap 68 entryAlreadyExists".into(),
        message: format!(
            "the account name {base:?} and {} variants of it are all taken in AD",
            names::MAX_VARIANTS
        ),
    })
}

/// A CN for `name` that no object in `parent` has: `John Smith`, then
/// `John Smith (2)`, …, each within 64 characters.
async fn free_cn(conn: &mut AdConnection, parent: &str, name: &str) -> Result<String, SyncError> {
    let base = names::cn_for(name);
    for n in 1..=names::MAX_VARIANTS {
        let candidate = if n == 1 {
            base.clone()
        } else {
            names::cn_variant(&base, n)
        };
        let dn = format!("CN={},{parent}", crate::ad::dn::escape_value(&candidate));
        if conn.read_entry(&dn, &["1.1"]).await?.is_none() {
            return Ok(candidate);
        }
    }
    Err(SyncError::Refused {
        code: "ldap 68 entryAlreadyExists".into(),
        message: format!(
            "{base:?} and {} variants of it are all taken in {parent}",
            names::MAX_VARIANTS
        ),
    })
}

/// Records the link of an object this agent just created in AD.
async fn link_new(
    shared: &Shared,
    conn: &mut AdConnection,
    links: &mut Links,
    id: Uuid,
    kind: ObjectKind,
    dn: String,
) -> Result<(), SyncError> {
    let created = conn
        .read_entry(&dn, READ_ATTRS)
        .await?
        .ok_or_else(|| format!("the new object {dn} is not there"))?;
    let guid = created
        .guid()
        .ok_or_else(|| format!("the new object {dn} has no objectGUID"))?;
    let base = (kind == ObjectKind::User).then(|| crate::ad::mapping::user_record(&created).0);
    let link = LinkInfo {
        object_id: id,
        kind,
        guid,
        dn: dn.clone(),
        base: base.clone().map(Box::new),
    };
    match shared.cloud.put_link(&link).await {
        Ok(()) => {}
        Err(e) if e.code() == Some("object_deleted") => {
            // Deleted in the cloud while it was being created here: it
            // goes (the cloud remembers it, so it never comes back up).
            tracing::info!(%dn, "cloud → AD: the cloud object was deleted meanwhile; removing the AD object made for it");
            conn.delete(&dn).await?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    links.map.insert(id, guid);
    if let Some(b) = base {
        links.bases.insert(id, b);
    }
    shared.applied.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// After a write of a user's fields: the link's base moves by what was
/// written (sent to the cloud in the next batch, see [`base_moves`], and
/// kept for the rest of this feed page), so the write's echo coming back up
/// is not taken for an AD edit — which, set against a newer cloud change,
/// could win under `latest`.
async fn rebase(links: &mut Links, id: Uuid, e: &AdEntry, next: UserRecord) -> Result<(), SyncError> {
    let Some(guid) = e.guid() else { return Ok(()) };
    let refused = links
        .moves
        .push(LinkInfo {
            object_id: id,
            kind: ObjectKind::User,
            guid,
            dn: e.dn.clone(),
            base: Some(Box::new(next.clone())),
        })
        .await?;
    links.refused_moves.extend(refused);
    links.bases.insert(id, next);
    Ok(())
}

/// Writes a password set in the cloud: fetch the box sealed to this agent,
/// open it, set it in AD (over the encrypted connection), and enable an
/// account that was only waiting for a password. A password the domain's
/// policy refuses is reported and skipped: retrying cannot make it pass.
async fn set_password(
    shared: &Shared,
    conn: &mut AdConnection,
    e: &AdEntry,
    seq: i64,
    user: Uuid,
) -> Result<bool, SyncError> {
    let sealed = match shared.cloud.sealed(seq).await {
        Ok(s) => s,
        Err(err) if err.code() == Some("not_found") => {
            tracing::warn!(dn = %e.dn, "no password sealed to this agent (it registered after the change): skipped");
            return Ok(false);
        }
        Err(err) => return Err(err.into()),
    };
    let context = format!("ferry-password:{user}:{seq}");
    let password = ferry_proto::seal::open(&shared.secret_key, &context, &sealed)
        .map_err(|e| SyncError::Retry(format!("cannot open the sealed password: {e}")))?;
    let password =
        std::str::from_utf8(&password).map_err(|_| SyncError::Retry("the sealed password is not UTF-8".into()))?;
    // A password the domain's policy refuses is a sync error of the user:
    // retrying cannot make it pass, a new password can.
    conn.set_password(&e.dn, password, false).await?;
    let uac = e.int("userAccountControl").unwrap_or(0);
    let enabled = uac & UF_PASSWD_NOTREQD != 0;
    if enabled {
        // Created without a password: now it has one, it may be enabled.
        let next = (uac & !UF_PASSWD_NOTREQD & !UF_ACCOUNTDISABLE) | UF_NORMAL_ACCOUNT;
        conn.set_attributes(&e.dn, &[("userAccountControl", Some(&next.to_string()))])
            .await?;
    }
    tracing::info!(dn = %e.dn, "cloud → AD: password set");
    shared.applied.fetch_add(1, Ordering::SeqCst);
    Ok(enabled)
}

#[cfg(test)]
mod tests {
    use super::Merge;

    #[test]
    fn a_membership_entry_of_many_is_applied_one_member_each_with_its_own_guids() {
        use super::{membership_run, per_member, CloudChange, FeedEntry, ObjectKind, Uuid};
        use ferry_proto::agent::FeedMember;
        let (group, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (ga, aa, ba) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let user = |id| FeedMember {
            id,
            kind: ObjectKind::User,
        };
        let entry = |seq, change| FeedEntry {
            seq,
            origin: "cloud".into(),
            change,
            at: 1,
            ad_guids: [(group, ga), (a, aa), (b, ba)].into_iter().collect(),
            base: None,
        };
        let delete = CloudChange::Delete {
            id: a,
            kind: ObjectKind::User,
        };
        let out = per_member(vec![
            entry(
                7,
                CloudChange::AddMembers {
                    group,
                    members: vec![user(a), user(b)],
                },
            ),
            entry(8, delete.clone()),
        ]);
        assert_eq!(out.len(), 3);
        for (e, member, guid) in [(&out[0], a, aa), (&out[1], b, ba)] {
            assert_eq!(e.seq, 7, "acknowledged with the page, as the entry it came from");
            assert_eq!(
                e.change,
                CloudChange::AddMember {
                    group,
                    member,
                    member_kind: ObjectKind::User
                }
            );
            let want: std::collections::BTreeMap<Uuid, Uuid> = [(group, ga), (member, guid)].into_iter().collect();
            assert_eq!(e.ad_guids, want, "only its own objects' GUIDs");
        }
        assert_eq!((out[2].seq, &out[2].change), (8, &delete));
        assert_eq!(out[2].ad_guids.len(), 3, "other entries as they came");
        // The members of one entry are one run: one modify.
        assert_eq!(membership_run(&out), 2);
    }

    #[test]
    fn only_what_the_cloud_changed_is_written() {
        let base = Some("old".to_owned());
        let m = Merge {
            base: None,
            ad_wins_both: true,
        };
        let s = |v: &str| Some(v.to_owned());
        // No base: every difference is the cloud's.
        assert!(m.write(&s("ad"), &s("cloud"), None));
        assert!(!m.write(&s("same"), &s("same"), None));
        // The cloud unchanged since the base: AD's edit stays.
        assert!(!m.write(&s("ad edit"), &base, Some(&base)));
        // Only the cloud changed: written.
        assert!(m.write(&base, &s("cloud edit"), Some(&base)));
        // Both changed: the policy decides.
        assert!(!m.write(&s("ad edit"), &s("cloud edit"), Some(&base)));
        let cloud_wins = Merge {
            base: None,
            ad_wins_both: false,
        };
        assert!(cloud_wins.write(&s("ad edit"), &s("cloud edit"), Some(&base)));
        // A disable in AD survives a cloud change to other fields.
        assert!(!m.write(&false, &true, Some(&true)));
    }
}
