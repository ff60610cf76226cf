//! What Ferry never syncs and never writes in a domain, whichever side asks:
//! critical system objects, built-in accounts and groups, protected
//! (privileged) accounts and every member, direct or nested, of AD's
//! protected groups, krbtgt, and the service accounts of the domain's agents.
//!
//! `adminCount=1` alone is not enough: Windows sets it on the members of
//! protected groups only when SDProp runs (hourly), and Samba never does.
//! The members are read from the groups instead, nested groups walked.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use ferry_proto::agent::SyncScope;

use super::Shared;
use crate::ad::dn::{dn_key, same_dn};
use crate::ad::guid::bytes_filter;
use crate::ad::{AdConnection, AdEntry, AdError};

/// Relative ids of the domain's protected groups (MS-ADTS 3.1.1.6.1.2).
const PROTECTED_DOMAIN_RIDS: &[u32] = &[512, 516, 518, 519, 521, 526, 527];
/// Relative ids of the protected groups of the Builtin domain (S-1-5-32-…).
const PROTECTED_BUILTIN_RIDS: &[u32] = &[544, 548, 549, 550, 551, 552];
/// RIDs below this are AD's own accounts and groups (Administrator 500,
/// Guest 501, krbtgt 502, Domain Users 513, …).
const FIRST_ORDINARY_RID: u32 = 1000;
/// Nested groups walked at most (a loop or a huge nesting is cut there).
const MAX_GROUPS_WALKED: usize = 1_000;
/// How long a reading of the protected groups' members is trusted.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// The domain's untouchable objects, as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    /// DNs of the agents' service accounts (this agent's first).
    service_accounts: Vec<String>,
    /// The protected groups' members (DN keys), nesting included.
    members: HashSet<String>,
    /// When it was read.
    read_at: Option<Instant>,
    /// The domain's sync scope when it was read.
    pub scope: SyncScope,
    /// With a group scope: the scope groups' members (DN key → DN), nested
    /// groups and the groups themselves included.
    pub scope_members: Option<std::collections::HashMap<String, String>>,
    /// Scope groups that are not in AD (a typo, or deleted).
    pub missing_groups: Vec<String>,
    /// Where the cloud's own objects land: in scope whatever their groups.
    pub user_ou: String,
    /// AD's `highestCommittedUSN` when it was read: while AD stays there,
    /// the reading holds ([`still_holds`]).
    usn: i64,
    /// The other agents' accounts, as the cloud listed them for this reading.
    listed_accounts: Vec<String>,
}

/// A SID's authority and sub-authorities, from its binary form.
fn parse_sid(b: &[u8]) -> Option<(u64, Vec<u32>)> {
    if b.len() < 8 || b[0] != 1 {
        return None;
    }
    let count = usize::from(b[1]);
    if b.len() != 8 + 4 * count {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
    let subs = b[8..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((authority, subs))
}

/// Whether a SID is a built-in one: the Builtin domain's (S-1-5-32-…),
/// or one of a domain's own with a RID below 1000.
fn builtin_sid(b: &[u8]) -> bool {
    match parse_sid(b) {
        Some((5, subs)) if subs.first() == Some(&32) => true,
        Some((5, subs)) if subs.first() == Some(&21) && subs.len() == 5 => subs[4] < FIRST_ORDINARY_RID,
        _ => false,
    }
}

/// A SID in its binary form: authority 5 (NT), then the sub-authorities.
fn nt_sid(subs: &[u32]) -> Vec<u8> {
    let mut b = vec![1, u8::try_from(subs.len()).unwrap_or(0), 0, 0, 0, 0, 0, 5];
    for s in subs {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

/// The search filter matching AD's protected groups by SID, for the domain
/// whose SID is `domain_sid`; `None` when that is not a domain's SID.
fn protected_groups_filter(domain_sid: &[u8]) -> Option<String> {
    let domain = match parse_sid(domain_sid) {
        Some((5, subs)) if subs.len() == 4 && subs[0] == 21 => subs,
        _ => return None,
    };
    let sids = PROTECTED_DOMAIN_RIDS
        .iter()
        .map(|rid| nt_sid(&[domain.as_slice(), &[*rid]].concat()))
        .chain(PROTECTED_BUILTIN_RIDS.iter().map(|rid| nt_sid(&[32, *rid])));
    let alternatives: String = sids.map(|sid| bytes_filter("objectSid", &sid)).collect();
    Some(format!("(|{alternatives})"))
}

/// Whether a group's SID is one of AD's protected groups.
fn protected_group_sid(b: &[u8]) -> bool {
    match parse_sid(b) {
        Some((5, subs)) if subs.len() == 2 && subs[0] == 32 => PROTECTED_BUILTIN_RIDS.contains(&subs[1]),
        Some((5, subs)) if subs.len() == 5 && subs[0] == 21 => PROTECTED_DOMAIN_RIDS.contains(&subs[4]),
        _ => false,
    }
}

impl Protection {
    /// Reads the protected groups and their members (nesting included).
    /// `service_accounts`: the DNs of the domain's agents' accounts.
    pub async fn read(conn: &mut AdConnection, service_accounts: Vec<String>) -> Result<Self, AdError> {
        // The USN first: a change made while this reads moves it past, and
        // the next look reads again.
        let dse = conn.root_dse().await?;
        let nc = dse.default_naming_context;
        // The groups are found by their SIDs, an index lookup on AD and on
        // Samba, in the whole domain (a Root DN that is an OU holds none of
        // them). A search by adminCount or isCriticalSystemObject, which
        // neither indexes, reads every group: seconds of the DC's time at
        // 100,000 objects, every REFRESH_EVERY, on the loops' connections.
        let domain_sid = conn
            .read_entry(&nc, &["objectSid"])
            .await?
            .and_then(|e| e.values("objectSid").first().cloned())
            .ok_or_else(|| AdError::Protocol(format!("the domain {nc} has no objectSid")))?;
        let filter = protected_groups_filter(&domain_sid)
            .ok_or_else(|| AdError::Protocol(format!("the objectSid of {nc} is not a domain's")))?;
        let groups = conn
            .search_paged(&nc, ldap3::Scope::Subtree, &filter, &["objectSid"])
            .await?;
        // Their members, nested groups walked: a handful of reads (these
        // groups are small), where a search with LDAP_MATCHING_RULE_IN_CHAIN
        // costs Samba ~2 s a group on a 3,000-object domain.
        let mut queue: VecDeque<String> = groups
            .iter()
            .filter(|g| g.values("objectSid").first().is_some_and(|s| protected_group_sid(s)))
            .map(|g| g.dn.clone())
            .collect();
        let mut walked = HashSet::new();
        let mut members = HashSet::new();
        while let Some(group) = queue.pop_front() {
            if !walked.insert(dn_key(&group)) || walked.len() > MAX_GROUPS_WALKED {
                continue;
            }
            let Some(mut g) = conn.read_entry(&group, &["member"]).await? else {
                continue;
            };
            conn.complete_ranged(std::slice::from_mut(&mut g)).await?;
            for m in g.strs("member") {
                if !members.insert(dn_key(&m)) {
                    continue;
                }
                if conn
                    .read_entry(&m, &["objectClass"])
                    .await?
                    .is_some_and(|e| e.has_class("group"))
                {
                    queue.push_back(m);
                }
            }
        }
        Ok(Protection {
            service_accounts,
            members,
            read_at: Some(Instant::now()),
            usn: dse.highest_committed_usn,
            ..Protection::default()
        })
    }

    /// Reads the members of the scope's groups (nested groups walked,
    /// found by their `memberOf`), when the scope has groups.
    pub async fn read_scope(
        &mut self,
        conn: &mut AdConnection,
        root: &str,
        scope: SyncScope,
        user_ou: String,
    ) -> Result<(), AdError> {
        self.scope_members = None;
        self.missing_groups.clear();
        if !scope.groups.is_empty() {
            let (members, missing) = group_closure(conn, root, &scope.groups).await?;
            self.scope_members = Some(members);
            self.missing_groups = missing;
        }
        self.scope = scope;
        self.user_ou = user_ou;
        Ok(())
    }

    /// Whether it is time to read again: it is old, or the scope changed.
    pub fn stale(&self, scope: &SyncScope) -> bool {
        self.read_at.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) || *scope != self.scope
    }

    /// Whether an object at `dn` is in the domain's sync scope: under the
    /// containers it takes and, with a group scope, a member of its groups
    /// (or in the user OU, where the cloud's own objects land).
    pub fn admits(&self, dn: &str) -> bool {
        self.scope.admits(dn)
            && self.scope_members.as_ref().is_none_or(|m| {
                m.contains_key(&dn_key(dn)) || (!self.user_ou.is_empty() && crate::ad::dn::dn_within(dn, &self.user_ou))
            })
    }

    /// Why an entry is out of Ferry's reach, if it is.
    pub fn why(&self, e: &AdEntry) -> Option<&'static str> {
        if e.flag("isCriticalSystemObject") {
            return Some("a critical system object");
        }
        if e.int("adminCount") == Some(1) {
            return Some("a protected (privileged) account: adminCount=1");
        }
        if e.str("sAMAccountName")
            .is_some_and(|s| s.eq_ignore_ascii_case("krbtgt"))
        {
            return Some("the krbtgt account");
        }
        if e.values("objectSid").first().is_some_and(|s| builtin_sid(s)) {
            return Some("a built-in account or group of AD");
        }
        if self.service_accounts.iter().any(|s| same_dn(&e.dn, s)) {
            return Some("the service account of a Ferry agent");
        }
        if self.members.contains(&dn_key(&e.dn)) {
            return Some("a member of a protected group (Domain Admins, Administrators, …)");
        }
        None
    }
}

/// The groups `roots`, their members, and their nested groups' members
/// (DN key → DN); and the roots that are not in AD. Nested groups are found
/// with one search of `memberOf` per group, not one read per member.
pub async fn group_closure(
    conn: &mut AdConnection,
    root: &str,
    roots: &[String],
) -> Result<(std::collections::HashMap<String, String>, Vec<String>), AdError> {
    let mut out = std::collections::HashMap::new();
    let mut missing = Vec::new();
    let mut queue: VecDeque<(String, bool)> = roots.iter().map(|g| (g.clone(), true)).collect();
    let mut walked = HashSet::new();
    while let Some((group, is_root)) = queue.pop_front() {
        if !walked.insert(dn_key(&group)) || walked.len() > MAX_GROUPS_WALKED {
            continue;
        }
        let Some(mut g) = conn.read_entry(&group, &["member", "objectClass"]).await? else {
            if is_root {
                missing.push(group);
            }
            continue;
        };
        if !g.has_class("group") {
            if is_root {
                missing.push(group);
            }
            continue;
        }
        conn.complete_ranged(std::slice::from_mut(&mut g)).await?;
        out.insert(dn_key(&g.dn), g.dn.clone());
        for m in g.strs("member") {
            out.insert(dn_key(&m), m);
        }
        let filter = format!("(&(objectClass=group)(memberOf={}))", ldap3::ldap_escape(g.dn.as_str()));
        for nested in conn
            .search_paged(root, ldap3::Scope::Subtree, &filter, &["objectGUID"])
            .await?
        {
            queue.push_back((nested.dn, false));
        }
    }
    Ok((out, missing))
}

/// The domain's protection as of now: this agent's own service account
/// (looked up, and told to the cloud with the heartbeat) and those of the
/// domain's other agents, as the cloud lists them.
pub async fn read(shared: &Shared, conn: &mut AdConnection) -> Result<Protection, String> {
    let (root, mut accounts, scope, user_ou) = {
        let d = shared.domain.read().await;
        (
            d.root_dn.clone(),
            d.service_accounts.clone(),
            d.policies.scope.clone(),
            d.user_ou.clone(),
        )
    };
    let listed_accounts = accounts.clone();
    let own = service_account_dn(shared, conn, &root).await?;
    if let Ok(mut g) = shared.service_account.lock() {
        *g = Some(own.clone()).filter(|s| !s.is_empty());
    }
    accounts.insert(0, own);
    accounts.retain(|a| !a.is_empty());
    let mut p = Protection::read(conn, accounts)
        .await
        .map_err(|e| format!("cannot read the domain's protected groups: {e}"))?;
    p.listed_accounts = listed_accounts;
    p.read_scope(conn, &root, scope, user_ou)
        .await
        .map_err(|e| format!("cannot read the members of the scope's groups: {e}"))?;
    if !p.missing_groups.is_empty() {
        tracing::warn!(groups = ?p.missing_groups, "scope groups not found in AD: they take no one in");
    }
    Ok(p)
}

/// Whether a reading that is [`Protection::stale`] by its age still holds:
/// AD's `highestCommittedUSN` has not moved since it was read (every
/// change to a group's members, an account's name or its place moves it),
/// and the cloud's side of it (the scope, the user OU, the agents'
/// accounts) is as it was. If so it is kept for another REFRESH_EVERY: an
/// idle DC is asked for one number, not read.
pub async fn still_holds(shared: &Shared, conn: &mut AdConnection, p: &mut Protection) -> Result<bool, String> {
    let asked_same = {
        let d = shared.domain.read().await;
        d.policies.scope == p.scope && d.user_ou == p.user_ou && d.service_accounts == p.listed_accounts
    };
    if !asked_same {
        return Ok(false);
    }
    let usn = conn.highest_committed_usn().await.map_err(|e| e.to_string())?;
    if usn != p.usn {
        return Ok(false);
    }
    p.read_at = Some(Instant::now());
    Ok(true)
}

/// The service account's DN. A failed lookup is an error: read as "none",
/// the account itself would be synced.
async fn service_account_dn(shared: &Shared, conn: &mut AdConnection, root: &str) -> Result<String, String> {
    let name = shared.bind_user.rsplit('\\').next().unwrap_or_default();
    let filter = format!("(sAMAccountName={})", ldap3::ldap_escape(name));
    let found = conn
        .search_paged(root, ldap3::Scope::Subtree, &filter, &["objectGUID"])
        .await
        .map_err(|e| format!("cannot look up the service account {name}: {e}"))?;
    Ok(found.into_iter().next().map(|e| e.dn).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn sid(authority: u8, subs: &[u32]) -> Vec<u8> {
        let mut b = vec![1, subs.len() as u8, 0, 0, 0, 0, 0, authority];
        for s in subs {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn protected_groups_are_found_by_sid() {
        let f = protected_groups_filter(&sid(5, &[21, 1, 2, 3])).unwrap();
        assert_eq!(
            f.matches("(objectSid=").count(),
            PROTECTED_DOMAIN_RIDS.len() + PROTECTED_BUILTIN_RIDS.len()
        );
        // Domain Admins, S-1-5-21-1-2-3-512.
        assert!(f.contains(
            "(objectSid=\\01\\05\\00\\00\\00\\00\\00\\05\\15\\00\\00\\00\\01\\00\\00\\00\\02\\00\\00\\00\\03\\00\\00\\00\\00\\02\\00\\00)"
        ));
        // Administrators, S-1-5-32-544.
        assert!(f.contains("(objectSid=\\01\\02\\00\\00\\00\\00\\00\\05\\20\\00\\00\\00\\20\\02\\00\\00)"));
        // Every SID the filter names is one `protected_group_sid` takes.
        for rid in PROTECTED_DOMAIN_RIDS {
            assert!(protected_group_sid(&nt_sid(&[21, 1, 2, 3, *rid])));
        }
        // Not a domain's SID: no filter.
        assert_eq!(protected_groups_filter(&sid(5, &[32, 544])), None);
        assert_eq!(protected_groups_filter(b"junk"), None);
    }

    fn entry(dn: &str, attrs: &[(&str, Vec<u8>)]) -> AdEntry {
        let mut e = AdEntry {
            dn: dn.into(),
            ..AdEntry::default()
        };
        for (k, v) in attrs {
            e.attrs.entry(k.to_ascii_lowercase()).or_default().push(v.clone());
        }
        e
    }

    #[test]
    fn built_in_and_protected_sids_are_told_apart() {
        let domain = [21, 1_111, 2_222, 3_333];
        let with = |rid: u32| sid(5, &[domain[0], domain[1], domain[2], domain[3], rid]);
        assert!(builtin_sid(&with(500)), "Administrator");
        assert!(builtin_sid(&with(502)), "krbtgt");
        assert!(builtin_sid(&sid(5, &[32, 544])), "BUILTIN\\Administrators");
        assert!(!builtin_sid(&with(1104)), "an ordinary user");
        assert!(protected_group_sid(&with(512)), "Domain Admins");
        assert!(protected_group_sid(&sid(5, &[32, 551])), "Backup Operators");
        assert!(!protected_group_sid(&with(513)), "Domain Users");
        assert!(!protected_group_sid(&with(1200)));
        assert!(parse_sid(&[1, 3, 0]).is_none(), "truncated");
        assert!(parse_sid(&[]).is_none());
    }

    #[test]
    fn protection_names_why() {
        let p = Protection {
            service_accounts: vec!["CN=svc-sync,CN=Users,DC=x".into()],
            members: [dn_key("CN=Nested,DC=x")].into_iter().collect(),
            read_at: None,
            ..Protection::default()
        };
        let guid = |n: u128| {
            let mut b = Uuid::from_u128(n).to_bytes_le().to_vec();
            b.truncate(16);
            b
        };
        let plain = entry(
            "CN=ann,DC=x",
            &[
                ("sAMAccountName", b"ann".to_vec()),
                ("objectGUID", guid(1)),
                ("objectSid", sid(5, &[21, 1, 2, 3, 1105])),
            ],
        );
        assert_eq!(p.why(&plain), None);
        let admin = entry(
            "CN=Administrator,CN=Users,DC=x",
            &[("objectSid", sid(5, &[21, 1, 2, 3, 500]))],
        );
        assert!(p.why(&admin).is_some());
        assert!(p.why(&entry("cn=SVC-SYNC,cn=users,dc=x", &[])).is_some());
        assert!(p
            .why(&entry("cn=NESTED,dc=x", &[("objectGUID", guid(7))]))
            .is_some_and(|w| w.contains("protected group")));
        assert!(p
            .why(&entry("CN=k,DC=x", &[("sAMAccountName", b"krbtgt".to_vec())]))
            .is_some());
        assert!(p
            .why(&entry("CN=c,DC=x", &[("isCriticalSystemObject", b"TRUE".to_vec())]))
            .is_some());
        assert!(p.why(&entry("CN=a,DC=x", &[("adminCount", b"1".to_vec())])).is_some());
    }
}
