//! Anti-entropy: both sides of a domain compared whole, cheaply.
//!
//! The cloud keeps, on every link, a digest of the AD object as the agent
//! last pushed it ([`user_digest`], [`group_digest`]); a group's members are
//! digested live from the cloud's memberships ([`members_digest`]). The
//! agent reads AD whole and computes the same digests. Objects fall into
//! [`BUCKETS`] ranges by objectGUID; the two sides first compare one digest
//! per range ([`bucket_digests`]), then per-object digests only for the
//! ranges that differ, so a quiet, equal domain costs one small request.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::record::{GroupRecord, ObjectKind, UserRecord};

/// Ranges of the objectGUID space (its first byte).
pub const BUCKETS: usize = 256;

/// The range an object falls in.
pub fn bucket_of(guid: Uuid) -> usize {
    usize::from(guid.as_bytes()[0])
}

/// What the agent pushed of a user, digested: its DN (case aside) and its
/// record, with `manager` as the manager's objectGUID when the manager is
/// synced, else none.
pub fn user_digest(dn: &str, record: &UserRecord) -> String {
    digest_of(&("user", dn.to_lowercase(), record))
}

/// What the agent pushed of a group (not its members), digested.
pub fn group_digest(dn: &str, record: &GroupRecord) -> String {
    digest_of(&("group", dn.to_lowercase(), record))
}

/// A group's members (objectGUIDs of synced members), in any order.
pub fn members_digest(members: &mut [Uuid]) -> String {
    members.sort_unstable();
    let mut h = Sha256::new();
    for m in members.iter() {
        h.update(m.as_bytes());
    }
    hex16(&h.finalize())
}

/// One object's entry in the comparison: its own digest, and for a group
/// its members' too.
pub fn entry_digest(kind: ObjectKind, own: Option<&str>, members: Option<&str>) -> String {
    digest_of(&(kind, own.unwrap_or(""), members.unwrap_or("")))
}

/// One digest per range over `(objectGUID, entry digest)` pairs.
pub fn bucket_digests(entries: &[(Uuid, String)]) -> Vec<String> {
    let mut per: Vec<Vec<(Uuid, &str)>> = vec![Vec::new(); BUCKETS];
    for (g, d) in entries {
        per[bucket_of(*g)].push((*g, d));
    }
    per.into_iter()
        .map(|mut items| {
            items.sort_unstable();
            let mut h = Sha256::new();
            for (g, d) in items {
                h.update(g.as_bytes());
                h.update(d.as_bytes());
            }
            hex16(&h.finalize())
        })
        .collect()
}

fn digest_of<T: Serialize>(value: &T) -> String {
    // Serializing plain records cannot fail; an empty digest would only
    // make the object look different, and be pushed again.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex16(&Sha256::digest(&bytes))
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// `POST /agent/v1/audit`: the cloud's digests of the domain, one per
/// range. The cloud first compares its own side with what AD last held and
/// sends down what never reached AD.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditDigests {
    /// [`BUCKETS`] digests, in range order.
    pub buckets: Vec<String>,
    /// Linked objects compared.
    pub objects: u64,
    /// Cloud objects whose changes had not reached AD, with nothing on its
    /// way: sent down again.
    #[serde(default)]
    pub resent: u64,
}

/// `POST /agent/v1/audit/objects`: the per-object digests of some ranges.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditObjectsRequest {
    /// Range numbers.
    pub buckets: Vec<u16>,
}

/// One linked object's digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditObject {
    /// AD objectGUID.
    pub guid: Uuid,
    /// User or group.
    pub kind: ObjectKind,
    /// The object's own digest (none: unknown, e.g. linked before digests).
    pub digest: Option<String>,
    /// A group's members' digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<String>,
}

/// The answer to [`AuditObjectsRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditObjects {
    /// The linked objects in the ranges asked for.
    pub objects: Vec<AuditObject>,
}

/// The last comparison, as the agent reports it with its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// When it ended (unix ms).
    pub at: i64,
    /// Objects compared.
    pub compared: u64,
    /// Objects found different (pushed again, fresh from AD).
    pub differed: u64,
    /// Of those, the ones whose push changed the cloud.
    pub repaired: u64,
    /// Cloud changes that had not reached AD, sent down again.
    pub resent: u64,
    /// Since the agent started: objects repaired and resent.
    pub repaired_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_ignore_order_and_dn_case_but_not_values() {
        let mut r = UserRecord {
            username: "ann".into(),
            title: Some("Boss".into()),
            active: true,
            ..Default::default()
        };
        let a = user_digest("CN=Ann,OU=X,DC=a", &r);
        assert_eq!(a, user_digest("cn=ann,ou=x,dc=a", &r));
        r.title = Some("Chief".into());
        assert_ne!(a, user_digest("CN=Ann,OU=X,DC=a", &r));
        let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(members_digest(&mut [x, y]), members_digest(&mut [y, x]));
        assert_ne!(members_digest(&mut [x]), members_digest(&mut [x, y]));
        let e = vec![(x, "a".to_owned()), (y, "b".to_owned())];
        let mut rev = e.clone();
        rev.reverse();
        assert_eq!(bucket_digests(&e), bucket_digests(&rev));
        let changed = vec![(x, "a".to_owned()), (y, "c".to_owned())];
        let (d1, d2) = (bucket_digests(&e), bucket_digests(&changed));
        assert_eq!(d1.len(), BUCKETS);
        assert_eq!(d1.iter().zip(&d2).filter(|(a, b)| a != b).count(), 1);
        assert_ne!(
            entry_digest(ObjectKind::Group, Some("a"), Some("b")),
            entry_digest(ObjectKind::Group, Some("a"), None)
        );
    }
}
