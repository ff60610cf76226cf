//! The agent ⇄ cloud protocol (`/agent/v1`). The agent always calls out;
//! the cloud never connects to the agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::{GroupRecord, ObjectKind, UserRecord};

/// `POST /agent/v1/register`: trade a Connect Key for an agent identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The single-use Connect Key shown in the console.
    pub connect_key: String,
    /// Host the agent runs on.
    pub hostname: String,
    /// Agent version.
    pub version: String,
    /// The agent's X25519 public key, base64 (standard, padded). Secrets sent
    /// to the agent (passwords set in the cloud) are sealed to it.
    pub public_key: String,
}

/// Answer to [`RegisterRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The new agent's id.
    pub agent_id: Uuid,
    /// Bearer token for every later call. Shown once; the cloud keeps a hash.
    pub agent_token: String,
    /// The domain this agent serves.
    pub domain: DomainInfo,
}

/// What an agent needs to know about its domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain id.
    pub id: Uuid,
    /// DNS name, e.g. `example.test`.
    pub name: String,
    /// NetBIOS name, e.g. `EXAMPLE`.
    pub netbios_name: String,
    /// Naming context, e.g. `DC=example,DC=test`.
    pub root_dn: String,
    /// Where users created in the cloud land in AD.
    pub user_ou: String,
    /// Sync policies.
    pub policies: DomainPolicies,
    /// The service accounts (DNs) of the domain's agents: never synced, never written.
    #[serde(default)]
    pub service_accounts: Vec<String>,
}

/// Per-domain sync policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainPolicies {
    /// Which side wins a concurrent edit of one attribute.
    pub authority: Authority,
    /// What a deletion in AD does in the cloud.
    pub ad_delete_action: AdDeleteAction,
    /// What a deletion in the cloud does in AD.
    pub cloud_delete_action: CloudDeleteAction,
    /// More deletes than this in one batch are quarantined until approved.
    pub delete_threshold: u32,
    /// Link an unlinked cloud user (or group) with the same name on first contact.
    pub match_existing_users: bool,
    /// Which part of AD the domain syncs.
    #[serde(default)]
    pub scope: SyncScope,
}

/// Which part of AD a domain syncs: AD → cloud reads only objects the scope
/// admits, and the agent writes only to them. Objects that leave it are
/// handled as deleted in AD (the AD delete policy and threshold apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncScope {
    /// Only objects under these containers (DNs); empty: the whole domain.
    #[serde(default)]
    pub include: Vec<String>,
    /// Never objects under these containers.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// AD → cloud: only members of these AD groups (DNs), nested groups'
    /// members included, and the groups themselves; empty: no such limit.
    /// Objects in the domain's user OU (where the cloud's own land) are in
    /// scope whatever their groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Cloud → AD: cloud groups bound to this domain. Each, and its members
    /// (nested groups' included) that belong to no domain yet, are placed
    /// in this domain, now and whenever a member is added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cloud_groups: Vec<Uuid>,
}

impl SyncScope {
    /// Whether an object at `dn` is in scope.
    pub fn admits(&self, dn: &str) -> bool {
        use crate::dn::dn_within;
        (self.include.is_empty() || self.include.iter().any(|i| dn_within(dn, i)))
            && !self.exclude.iter().any(|x| dn_within(dn, x))
    }

    /// Whether two scopes take the same objects from AD (they may differ
    /// in the cloud groups bound to the domain).
    pub fn same_in_ad(&self, other: &SyncScope) -> bool {
        self.include == other.include && self.exclude == other.exclude && self.groups == other.groups
    }
}

impl Default for DomainPolicies {
    fn default() -> Self {
        DomainPolicies {
            authority: Authority::Latest,
            ad_delete_action: AdDeleteAction::Remove,
            cloud_delete_action: CloudDeleteAction::Disable,
            delete_threshold: 500,
            match_existing_users: true,
            scope: SyncScope::default(),
        }
    }
}

/// Which side wins a concurrent edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authority {
    /// AD's value wins.
    Ad,
    /// The cloud's value wins.
    Cloud,
    /// The most recent edit wins.
    Latest,
}

/// What a deletion in AD does in the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdDeleteAction {
    /// Delete the cloud object.
    Remove,
    /// Keep the cloud object, drop its link to AD.
    Unlink,
}

/// What a deletion in the cloud does in AD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudDeleteAction {
    /// Disable the AD account (groups are deleted).
    Disable,
    /// Delete the AD object.
    Delete,
}

/// `POST /agent/v1/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HeartbeatRequest {
    /// Short machine-readable state, e.g. `syncing`, `idle`, `error`.
    pub state: String,
    /// The last error the agent hit, in words an admin can act on.
    pub last_error: Option<String>,
    /// Objects in scope in AD.
    pub ad_objects: u64,
    /// Changes applied since the agent started, AD → cloud.
    pub pushed: u64,
    /// Changes applied since the agent started, cloud → AD.
    pub applied: u64,
    /// When the agent last finished a sync pass without error (unix ms).
    pub last_sync_at: Option<i64>,
    /// The DN of the service account the agent binds as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// How each direction stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directions: Vec<DirectionHealth>,
    /// The last comparison of both sides whole (anti-entropy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditReport>,
}

/// How one direction of the sync stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionHealth {
    /// Which direction.
    pub direction: SyncDirection,
    /// When it last worked (a pass, or a look at the other side that found
    /// nothing to do; unix ms).
    #[serde(default)]
    pub last_success_at: Option<i64>,
    /// What stops it now, in words an admin can act on; `None`: healthy.
    #[serde(default)]
    pub error: Option<String>,
    /// Since when it has failed without a success between (unix ms).
    #[serde(default)]
    pub failing_since: Option<i64>,
}

/// A direction failing this long is shown red until it succeeds (ms).
pub const FAILING_AFTER_MS: i64 = 60_000;

impl DirectionHealth {
    /// `ok`, `retrying` (failing for less than [`FAILING_AFTER_MS`]) or `failing`.
    pub fn status(&self, now: i64) -> &'static str {
        match (&self.error, self.failing_since) {
            (None, _) => "ok",
            (Some(_), Some(t)) if now - t >= FAILING_AFTER_MS => "failing",
            (Some(_), _) => "retrying",
        }
    }
}

/// Answer to [`HeartbeatRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Whether this agent holds the domain's primary lease.
    pub primary: bool,
    /// When the lease ends unless renewed (unix ms).
    pub lease_expires_at: i64,
    /// Current domain settings (they may change in the console).
    pub domain: DomainInfo,
    /// Open sync errors of the domain (changes the other side refused).
    #[serde(default)]
    pub sync_errors: u64,
}

/// `GET /agent/v1/state`: where the domain's sync stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncState {
    /// The stored DirSync cookie (base64), `None` before the first full read.
    pub ad_cookie: Option<String>,
    /// The last acknowledged position in the cloud change feed.
    pub feed_cursor: i64,
    /// A scope the admin is previewing: the agent counts, over AD as it is,
    /// what it would take in and leave out, and answers with
    /// `POST /agent/v1/scope-preview/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_preview: Option<ScopePreviewRequest>,
    /// When an admin last asked for a comparison of both sides whole now
    /// (unix ms): the agent runs one when this changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_requested_at: Option<i64>,
}

/// A scope to preview (see [`SyncState::scope_preview`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopePreviewRequest {
    /// The request's id.
    pub id: Uuid,
    /// The proposed scope.
    pub scope: SyncScope,
}

/// The agent's answer to a [`ScopePreviewRequest`], read from AD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopePreviewAnswer {
    /// AD objects the scope admits that are not linked yet: they would be
    /// created in the cloud (or linked to a same-named cloud object).
    pub entering: ScopeCount,
    /// Linked AD objects the scope leaves out: the AD delete policy applies.
    pub leaving: ScopeCount,
    /// Linked AD objects that stay.
    pub staying: u64,
    /// Scope groups that are not in AD: they take no one in.
    #[serde(default)]
    pub missing_groups: Vec<String>,
}

/// Users and groups counted, with a sample of their DNs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeCount {
    /// Users.
    pub users: u64,
    /// Groups.
    pub groups: u64,
    /// Up to 20 DNs, sorted.
    pub sample: Vec<String>,
}

/// One change read in AD, keyed by `objectGUID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdChange {
    /// A user was created or changed.
    UpsertUser {
        /// `objectGUID`.
        guid: Uuid,
        /// Current DN.
        dn: String,
        /// The user's attributes.
        record: Box<UserRecord>,
        /// When AD last changed the object (`whenChanged`, unix ms): the
        /// `latest` authority policy compares it with the cloud's change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        changed_at: Option<i64>,
    },
    /// A group was created or changed.
    UpsertGroup {
        /// `objectGUID`.
        guid: Uuid,
        /// Current DN.
        dn: String,
        /// The group's attributes.
        record: GroupRecord,
    },
    /// An object left scope or was deleted.
    Delete {
        /// `objectGUID`.
        guid: Uuid,
    },
    /// The full member list of a group (after a full read).
    SetMembers {
        /// The group's `objectGUID`.
        group: Uuid,
        /// Members' `objectGUID`s.
        members: Vec<Uuid>,
    },
    /// Members added to a group.
    AddMembers {
        /// The group's `objectGUID`.
        group: Uuid,
        /// Added members' `objectGUID`s.
        members: Vec<Uuid>,
    },
    /// Members removed from a group.
    RemoveMembers {
        /// The group's `objectGUID`.
        group: Uuid,
        /// Removed members' `objectGUID`s.
        members: Vec<Uuid>,
    },
}

/// `POST /agent/v1/changes`: a batch read from AD.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushChangesRequest {
    /// The cookie the batch was read from; must equal the stored one.
    pub from_cookie: Option<String>,
    /// The cookie after the batch.
    pub to_cookie: Option<String>,
    /// The changes, applied in order, in one transaction.
    pub changes: Vec<AdChange>,
    /// Objects found different by a comparison of both sides (anti-entropy),
    /// read fresh from AD: each change that alters the cloud is audited as
    /// a repair, and a group's member list is left alone while a cloud
    /// change to it is on its way to AD.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repair: bool,
}

/// Answer to [`PushChangesRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushChangesResponse {
    /// Changes that altered the cloud directory (the rest were already so).
    pub applied: u64,
    /// The stored cookie now.
    pub cookie: Option<String>,
    /// Deletes held for an admin's approval (over the domain's threshold).
    pub quarantined: u64,
    /// Changes the cloud refused for good (recorded as sync errors of their
    /// objects; the rest of the batch was applied).
    #[serde(default)]
    pub refused: u64,
}

/// `GET /agent/v1/feed?after=N&wait=SECS`: cloud changes after a cursor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedResponse {
    /// Entries in sequence order, excluding those that came from this domain.
    pub entries: Vec<FeedEntry>,
    /// Pass as `after` next time (and acknowledge once applied).
    pub next_cursor: i64,
}

/// One entry of the cloud change feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// The org's sequence number.
    pub seq: i64,
    /// `cloud`, or the id of the domain the change came from.
    pub origin: String,
    /// What changed.
    pub change: CloudChange,
    /// When (unix ms).
    pub at: i64,
    /// The AD `objectGUID`s, in the reading agent's domain, of the objects
    /// this entry names (cloud id → objectGUID), as linked when the change
    /// was made. An object missing here has no AD counterpart yet.
    #[serde(default)]
    pub ad_guids: BTreeMap<Uuid, Uuid>,
    /// For a user's upsert or password: AD's record as the cloud last
    /// merged it (the link's base, in the reading agent's domain). The agent writes only
    /// the fields where the cloud differs from it; a field only AD changed
    /// since stays AD's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<crate::record::UserRecord>>,
}

/// A change in the cloud directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CloudChange {
    /// A user was created or changed; the record is the full current state.
    UpsertUser {
        /// Cloud id.
        id: Uuid,
        /// The user's current attributes.
        record: Box<UserRecord>,
    },
    /// A group was created or changed.
    UpsertGroup {
        /// Cloud id.
        id: Uuid,
        /// The group's current attributes.
        record: GroupRecord,
    },
    /// An object was deleted.
    Delete {
        /// Cloud id.
        id: Uuid,
        /// User or group.
        kind: ObjectKind,
    },
    /// A member was added to a group.
    AddMember {
        /// The group's cloud id.
        group: Uuid,
        /// The member's cloud id.
        member: Uuid,
        /// User or group.
        member_kind: ObjectKind,
    },
    /// A member was removed from a group.
    RemoveMember {
        /// The group's cloud id.
        group: Uuid,
        /// The member's cloud id.
        member: Uuid,
        /// User or group.
        member_kind: ObjectKind,
    },
    /// Members were added to a group: the form the cloud writes (one feed
    /// row for many members, at most [`FEED_MEMBERS_MAX`]; an import's 50
    /// members of a group are not 50 rows). `AddMember` is read still, from
    /// rows written before.
    AddMembers {
        /// The group's cloud id.
        group: Uuid,
        /// The members added.
        members: Vec<FeedMember>,
    },
    /// Members were removed from a group (see `AddMembers`).
    RemoveMembers {
        /// The group's cloud id.
        group: Uuid,
        /// The members removed.
        members: Vec<FeedMember>,
    },
    /// A password was set in the cloud. The value travels only sealed to an
    /// agent's key, never in the feed itself.
    PasswordSet {
        /// The user's cloud id.
        user: Uuid,
    },
}

/// The cookie prefix of an import's intermediate pushes (`import:N`, N the
/// pushes so far): the DirSync cookie is stored only once the read ended
/// whole. The cloud refreshes its planner statistics as N doubles.
pub const IMPORT_COOKIE_PREFIX: &str = "import:";

/// The most members one `AddMembers`/`RemoveMembers` feed entry names: a
/// bigger change is several entries, so a feed page stays small.
pub const FEED_MEMBERS_MAX: usize = 500;

/// A member named by a membership feed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedMember {
    /// The member's cloud id.
    pub id: Uuid,
    /// User or group.
    pub kind: ObjectKind,
}

impl FeedEntry {
    /// A membership entry of many members as one entry per member (the
    /// same `seq`), each with only its group's and member's objectGUIDs;
    /// any other entry as it is. For an agent of before the grouped form,
    /// and for the agent's own writes, which answer each member alone.
    pub fn per_member(self) -> Vec<FeedEntry> {
        if !matches!(
            self.change,
            CloudChange::AddMembers { .. } | CloudChange::RemoveMembers { .. }
        ) {
            return vec![self];
        }
        let FeedEntry {
            seq,
            origin,
            change,
            at,
            ad_guids,
            base: _,
        } = self;
        change
            .per_member()
            .into_iter()
            .map(|change| {
                let ad_guids = change
                    .objects()
                    .into_iter()
                    .filter_map(|id| ad_guids.get(&id).map(|g| (id, *g)))
                    .collect();
                FeedEntry {
                    seq,
                    origin: origin.clone(),
                    change,
                    at,
                    ad_guids,
                    base: None,
                }
            })
            .collect()
    }
}

impl CloudChange {
    /// The cloud objects the change names: a membership's group and
    /// members, or the object it changes.
    pub fn objects(&self) -> Vec<Uuid> {
        match self {
            CloudChange::UpsertUser { id, .. }
            | CloudChange::UpsertGroup { id, .. }
            | CloudChange::Delete { id, .. } => {
                vec![*id]
            }
            CloudChange::AddMember { group, member, .. } | CloudChange::RemoveMember { group, member, .. } => {
                vec![*group, *member]
            }
            CloudChange::AddMembers { group, members } | CloudChange::RemoveMembers { group, members } => {
                std::iter::once(*group).chain(members.iter().map(|m| m.id)).collect()
            }
            CloudChange::PasswordSet { user } => vec![*user],
        }
    }

    /// A membership change as one change per member (`AddMember`,
    /// `RemoveMember`); any other change as it is.
    pub fn per_member(self) -> Vec<CloudChange> {
        let (group, members, add) = match self {
            CloudChange::AddMembers { group, members } => (group, members, true),
            CloudChange::RemoveMembers { group, members } => (group, members, false),
            c => return vec![c],
        };
        members
            .into_iter()
            .map(|m| {
                let (member, member_kind) = (m.id, m.kind);
                if add {
                    CloudChange::AddMember {
                        group,
                        member,
                        member_kind,
                    }
                } else {
                    CloudChange::RemoveMember {
                        group,
                        member,
                        member_kind,
                    }
                }
            })
            .collect()
    }
}

/// `POST /agent/v1/ack`: the agent applied everything up to `cursor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckRequest {
    /// The highest sequence number applied.
    pub cursor: i64,
}

/// The error body of every cloud API (`/api/v1`, `/agent/v1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Stable machine-readable code, e.g. `connect_key_expired`.
    pub code: String,
    /// What happened and what to do, for a person.
    pub message: String,
}

/// A link between a cloud object and an AD object (`GET`/`POST /agent/v1/links`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Cloud id.
    pub object_id: Uuid,
    /// User or group.
    pub kind: ObjectKind,
    /// AD objectGUID.
    pub guid: Uuid,
    /// AD DN.
    pub dn: String,
    /// A user's base moved by what the agent just wrote into AD: the
    /// link's new base, so the echo of the agent's own write is not taken
    /// for an AD edit (and set against a newer cloud change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<UserRecord>>,
}

/// `POST /agent/v1/links/batch`: several links at once (at most 1,000).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinksBatch {
    /// The links, each judged as `POST /agent/v1/links` judges one.
    pub links: Vec<LinkInfo>,
}

/// The answer to `POST /agent/v1/links/batch`: the links refused (the
/// others are recorded).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinksBatchResponse {
    /// Each refused link, with what `POST /agent/v1/links` would have answered.
    pub refused: Vec<LinkRefusal>,
}

/// One link the cloud refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRefusal {
    /// The cloud object of the link.
    pub object_id: Uuid,
    /// The HTTP status a single `POST /agent/v1/links` would have had.
    pub status: u16,
    /// Its stable error code (`object_deleted`, `other_domain`, …).
    pub code: String,
    /// Its message.
    pub message: String,
}

/// `GET /agent/v1/links`: everything linked in the agent's domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinksResponse {
    /// The links.
    pub links: Vec<LinkInfo>,
    /// Asked by page: the `after` of the next page (none: this was the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Uuid>,
}

/// `POST /agent/v1/links/of`: the cloud objects whose links are wanted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinksOfRequest {
    /// Cloud ids (at most 1,000).
    pub objects: Vec<Uuid>,
}

/// `POST /agent/v1/connect-key`: what a Connect Key would register an agent
/// for, asked without using the key up (the install wizard checks the key
/// and the domain before it installs anything).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectKeyCheckRequest {
    /// The Connect Key as pasted.
    pub connect_key: String,
}

/// Answer to [`ConnectKeyCheckRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectKeyCheckResponse {
    /// The domain the key belongs to.
    pub domain: DomainInfo,
    /// When the key stops working (unix ms).
    pub expires_at: i64,
}

/// `GET /agent/v1/me`: the cloud's view of the calling agent, for
/// `ferry-agent status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSelf {
    /// The agent's id.
    pub agent_id: Uuid,
    /// Host it registered from.
    pub hostname: String,
    /// Version it last reported.
    pub version: String,
    /// `active`, `stale` or `offline`, as the console shows it.
    pub status: String,
    /// Whether it holds the domain's primary lease.
    pub primary: bool,
    /// Last heartbeat (unix ms).
    pub last_seen: i64,
    /// Registration time (unix ms).
    pub registered_at: i64,
    /// The last heartbeat's report.
    pub report: HeartbeatRequest,
    /// The domain it serves.
    pub domain: DomainInfo,
    /// Open sync errors of the domain (changes the other side refused).
    #[serde(default)]
    pub sync_errors: u64,
}

/// Which way a change was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDirection {
    /// From the cloud into AD.
    CloudToAd,
    /// From AD into the cloud.
    AdToCloud,
}

impl SyncDirection {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncDirection::CloudToAd => "cloud_to_ad",
            SyncDirection::AdToCloud => "ad_to_cloud",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cloud_to_ad" => Some(SyncDirection::CloudToAd),
            "ad_to_cloud" => Some(SyncDirection::AdToCloud),
            _ => None,
        }
    }
}

/// `POST /agent/v1/sync-errors`: the other side refused a change to one
/// object for good. The agent goes on with everything else; the error
/// stays listed (attempts counted) until a later try of the object succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncErrorReport {
    /// Which way.
    pub direction: SyncDirection,
    /// The object: its cloud id (cloud → AD) or AD objectGUID (AD → cloud);
    /// for a cloud → AD membership, the group's and the member's cloud ids
    /// (see [`ErrorKey`]), so each member's refusal is its own error.
    pub object_key: String,
    /// User or group.
    pub object_kind: ObjectKind,
    /// A name an admin recognizes (userName, group name, DN).
    pub object_name: String,
    /// What was tried, e.g. `create user`, `add member`.
    pub operation: String,
    /// The refusing side's code: an LDAP result (`ldap 68 entryAlreadyExists`), an HTTP status and code.
    pub code: String,
    /// The refusing side's message, with what to do.
    pub message: String,
}

/// What a sync error's `object_key` names.
///
/// A membership is keyed by its group *and* member (`group/member`): keyed
/// by the group alone, a member AD refused and another member of the same
/// group written just after would share one error, and the success would
/// resolve the refusal it had nothing to do with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKey {
    /// A user or group.
    Object(Uuid),
    /// One member of one group.
    Membership {
        /// The group.
        group: Uuid,
        /// The member.
        member: Uuid,
    },
}

impl ErrorKey {
    /// Reads a key written by [`ErrorKey`]'s `Display`; `None` when it is neither form.
    pub fn parse(key: &str) -> Option<ErrorKey> {
        match key.split_once('/') {
            Some((group, member)) => Some(ErrorKey::Membership {
                group: group.parse().ok()?,
                member: member.parse().ok()?,
            }),
            None => key.parse().ok().map(ErrorKey::Object),
        }
    }
}

impl std::fmt::Display for ErrorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKey::Object(id) => write!(f, "{id}"),
            ErrorKey::Membership { group, member } => write!(f, "{group}/{member}"),
        }
    }
}

/// `POST /agent/v1/sync-errors/resolved`: a later try of these objects succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncErrorsResolved {
    /// Which way.
    pub direction: SyncDirection,
    /// The objects (as in [`SyncErrorReport::object_key`]).
    pub object_keys: Vec<String>,
}

/// `GET /agent/v1/sync-errors`: the objects with an open error, per direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSyncErrors {
    /// Object keys with an open cloud → AD error.
    pub cloud_to_ad: Vec<String>,
    /// Object keys with an open AD → cloud error.
    pub ad_to_cloud: Vec<String>,
    /// Those of them due for another try now (backing off per object, or
    /// retried by an admin): the agent reads them from AD and pushes them again.
    #[serde(default)]
    pub ad_to_cloud_due: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_key_reads_back_what_it_writes_and_nothing_else() {
        let (g, m) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for key in [ErrorKey::Object(g), ErrorKey::Membership { group: g, member: m }] {
            assert_eq!(ErrorKey::parse(&key.to_string()), Some(key));
        }
        assert_eq!(
            ErrorKey::Membership { group: g, member: m }.to_string(),
            format!("{g}/{m}")
        );
        for bad in ["", "x", "x/y", &format!("{g}/"), &format!("{g}/{m}/{m}")] {
            assert_eq!(ErrorKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_direction_is_red_after_a_minute_of_failing_and_until_it_works() {
        let mut h = DirectionHealth {
            direction: SyncDirection::AdToCloud,
            last_success_at: Some(1_000),
            error: None,
            failing_since: None,
        };
        assert_eq!(h.status(500_000), "ok");
        h.error = Some("cannot reach the DC".into());
        h.failing_since = Some(10_000);
        assert_eq!(h.status(10_000 + FAILING_AFTER_MS - 1), "retrying");
        assert_eq!(h.status(10_000 + FAILING_AFTER_MS), "failing");
        h.error = None;
        assert_eq!(h.status(10_000 + 10 * FAILING_AFTER_MS), "ok");
    }
}
