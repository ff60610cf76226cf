//! cloud → AD: long-poll the cloud's change feed, apply each change to AD
//! (compare before write), then acknowledge the cursor. A change is
//! acknowledged only after AD has it; re-delivery after a crash is harmless
//! because applying is idempotent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_proto::agent::{
    Authority, CloudChange, CloudDeleteAction, DomainInfo, DomainPolicies, FeedEntry, LinkInfo, SyncDirection,
    SyncErrorReport,
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
    let mut links = Links::default();
    // Objects with an open cloud → AD error: a success clears theirs.
    let mut failed: HashSet<Uuid> = shared
        .cloud
        .open_sync_errors()
        .await
        .map_err(|e| e.to_string())?
        .cloud_to_ad
        .iter()
        .filter_map(|k| k.parse().ok())
        .collect();
    loop {
        if !shared.primary.load(Ordering::SeqCst) {
            return Ok(());
        }
        let page = shared.cloud.feed(cursor, 20).await.map_err(|e| e.to_string())?;
        if protection.stale(&shared.domain.read().await.policies.scope) {
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
        links.members.clear();
        links.bases.clear();
        for entry in &page.entries {
            for (id, guid) in &entry.ad_guids {
                links.map.insert(*id, *guid);
            }
            let object = subject(&entry.change);
            match apply(&ctx, &mut conn, &mut links, entry).await {
                Ok(()) => {
                    crate::metrics::cloud_change_applied(entry.at);
                    if failed.remove(&object) {
                        resolved.push(object.to_string());
                    }
                }
                // Refused for good: recorded against the object; the rest flows on.
                Err(SyncError::Refused { code, message }) => {
                    tracing::warn!(seq = entry.seq, %object, %code, "cloud → AD: refused; recorded as a sync error");
                    let report = error_report(entry, code, message);
                    shared
                        .cloud
                        .report_sync_error(&report)
                        .await
                        .map_err(|e| e.to_string())?;
                    failed.insert(object);
                }
                Err(SyncError::Retry(e)) => return Err(format!("change {}: {e}", entry.seq)),
            }
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
        shared.synced(SyncDirection::CloudToAd);
    }
}

/// The object a feed entry changes (a membership change is the group's).
fn subject(change: &CloudChange) -> Uuid {
    match change {
        CloudChange::UpsertUser { id, .. } | CloudChange::UpsertGroup { id, .. } | CloudChange::Delete { id, .. } => {
            *id
        }
        CloudChange::AddMember { group, .. } | CloudChange::RemoveMember { group, .. } => *group,
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
        CloudChange::PasswordSet { user } => (ObjectKind::User, user.to_string(), "set password"),
    };
    SyncErrorReport {
        direction: SyncDirection::CloudToAd,
        object_key: subject(&entry.change).to_string(),
        object_kind: kind,
        object_name: name,
        operation: operation.to_owned(),
        code,
        message,
    }
}

async fn find(conn: &mut AdConnection, root: &str, guid: Uuid) -> Result<Option<AdEntry>, AdError> {
    Ok(conn
        .search_paged(root, ldap3::Scope::Subtree, &guid_filter(guid), READ_ATTRS)
        .await?
        .into_iter()
        .next())
}

/// The links known to the agent: cloud id → objectGUID.
#[derive(Default)]
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
        Some(g) => Ok(find(conn, root, g).await?),
        None => Ok(None),
    }
}

/// The objectGUID a cloud id is linked to. Every link is read again at most
/// once a feed page: an object created in the cloud has none, and asking for
/// each would read them all per object.
async fn link_of(shared: &Shared, links: &mut Links, id: Uuid) -> Result<Option<Uuid>, SyncError> {
    if !links.map.contains_key(&id) && !links.fresh {
        for l in shared.cloud.links().await? {
            links.map.insert(l.object_id, l.guid);
        }
        links.fresh = true;
    }
    Ok(links.map.get(&id).copied())
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
            let found = conn
                .search_paged(
                    &ctx.domain.root_dn,
                    ldap3::Scope::Subtree,
                    &guid_filter(guid),
                    MEMBERSHIP_ATTRS,
                )
                .await?
                .into_iter()
                .next();
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
        return match find(conn, root, guid).await? {
            Some(e) => match out_of_reach(ctx.protection, &e) {
                Some(refusal) => Err(refusal),
                None => Ok(Target::Existing(Box::new(e))),
            },
            None => Ok(Target::Gone),
        };
    }
    let Some(e) = by_sam(conn, root, sam).await? else {
        return Ok(Target::New { name_taken: false });
    };
    if let Some(refusal) = out_of_reach(ctx.protection, &e) {
        return Err(refusal);
    }
    let Some(guid) = e.guid() else {
        return Err(SyncError::Retry(format!("{} has no objectGUID", e.dn)));
    };
    if links.map.values().any(|g| *g == guid) {
        // Another cloud object's account (two cloud names that AD's rules
        // make one): this one gets a name of its own.
        return Ok(Target::New { name_taken: true });
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
            // Written without reading the group first: its member list may
            // be ranged (AD gives at most 1,500 values at a time), and a
            // member already in (or out) is the state we want.
            let done = if add {
                conn.add_member(&g.dn, &m.dn).await
            } else {
                conn.remove_member(&g.dn, &m.dn).await
            }?;
            if done == Membership::AlreadySo {
                return Ok(());
            }
            tracing::info!(group = %g.dn, member = %m.dn, add, "cloud → AD: membership");
            shared.applied.fetch_add(1, Ordering::SeqCst);
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
                    rebase(ctx, links, *user, &e, next).await?;
                }
            }
        }
    }
    Ok(())
}

async fn by_sam(conn: &mut AdConnection, root: &str, sam: &str) -> Result<Option<AdEntry>, SyncError> {
    let filter = format!("(sAMAccountName={})", ldap3::ldap_escape(sam));
    Ok(conn
        .search_paged(root, ldap3::Scope::Subtree, &filter, READ_ATTRS)
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
    for (i, (attr, want)) in user_attrs(r).into_iter().enumerate() {
        let have = e.str(attr).filter(|s| !s.is_empty());
        if merge.write(&have, &want, was.as_ref().map(|w| &w[i].1)) {
            changes.push((attr, want));
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
        changes.push(("sAMAccountName", Some(sam)));
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
    if changes.is_empty() && !set_state {
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
    for (attr, value) in &changes {
        set_field(&mut next, attr, value.clone());
    }
    if set_state {
        next.active = r.active;
    }
    rebase(ctx, links, id, e, next).await
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
    let dn = conn.create_user(&domain.user_ou, &u).await?;
    link_new(shared, conn, links, id, ObjectKind::User, dn.clone()).await?;
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
    let dn = conn.create_group(&domain.user_ou, &g).await?;
    link_new(shared, conn, links, id, ObjectKind::Group, dn.clone()).await?;
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
/// written (sent to the cloud, and kept for the rest of this feed page), so
/// the write's echo coming back up is not taken for an AD edit — which, set
/// against a newer cloud change, could win under `latest`.
async fn rebase(ctx: &Ctx<'_>, links: &mut Links, id: Uuid, e: &AdEntry, next: UserRecord) -> Result<(), SyncError> {
    let Some(guid) = e.guid() else { return Ok(()) };
    ctx.shared
        .cloud
        .put_link(&LinkInfo {
            object_id: id,
            kind: ObjectKind::User,
            guid,
            dn: e.dn.clone(),
            base: Some(Box::new(next.clone())),
        })
        .await?;
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
