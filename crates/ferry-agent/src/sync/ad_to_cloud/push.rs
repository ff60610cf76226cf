//! Pushing AD changes to the cloud. Each push carries the cookie it was
//! read from and the one it moves to (compare-and-swap in the cloud). Pushes
//! are bounded in changes and in bytes, and a big group's member list
//! travels in chunks; only the last push of a round moves the cookie, so a
//! crash in between re-reads the round (applying is idempotent). A push the
//! cloud finds too large (413) is split in two and sent again.

use std::sync::atomic::Ordering;

use ferry_proto::agent::{AdChange, PushChangesRequest};
use uuid::Uuid;

use crate::sync::Shared;

/// Changes in one push.
pub const MAX_CHANGES: usize = 500;
/// Bytes (JSON) in one push, about: well under the cloud's 16 MiB limit for
/// `/agent/v1/changes`.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;
/// Members named in one change (a 30,000-member group is several changes).
pub const MEMBERS_PER_CHANGE: usize = 5_000;

/// Deletes in one push: a burst of deletes goes up whole (within the byte
/// bound, some 30,000), so the cloud holds it against the delete threshold
/// as one mass delete, not batch by batch.
pub const MAX_DELETES: usize = 50_000;

/// Pushes `changes` read from `cookie`, moving it to `to` once all are in.
pub(super) async fn push(
    shared: &Shared,
    cookie: &mut Option<String>,
    to: String,
    changes: Vec<AdChange>,
) -> Result<(), String> {
    push_as(shared, cookie, to, changes, false).await.map(|_| ())
}

/// [`push`], as repairs found by the comparison of both sides (`repair`)
/// or not; returns how many changes altered the cloud.
pub(super) async fn push_as(
    shared: &Shared,
    cookie: &mut Option<String>,
    to: String,
    changes: Vec<AdChange>,
    repair: bool,
) -> Result<u64, String> {
    let mut applied = 0;
    let max = if changes.iter().all(|c| matches!(c, AdChange::Delete { .. })) {
        MAX_DELETES
    } else {
        MAX_CHANGES
    };
    // Last batch on top; an empty round still moves the cookie.
    let mut pending: Vec<Vec<AdChange>> = batches(chunk_members(changes), max, MAX_BYTES);
    if pending.is_empty() {
        pending.push(Vec::new());
    }
    pending.reverse();
    while let Some(batch) = pending.pop() {
        // Only the round's last push moves the cookie.
        let next = if pending.is_empty() {
            Some(to.clone())
        } else {
            cookie.clone()
        };
        match send(shared, cookie, next.clone(), batch.clone(), repair).await {
            Ok(n) => {
                *cookie = next;
                applied += n;
            }
            Err(Push::TooLarge) if batch.len() > 1 => {
                let (a, b) = batch.split_at(batch.len() / 2);
                tracing::info!(changes = batch.len(), "the cloud found a push too large: splitting it");
                pending.push(b.to_vec());
                pending.push(a.to_vec());
            }
            Err(Push::TooLarge) => {
                return Err(
                    "the cloud refused a single change as too large (413); its limit is below one change".into(),
                )
            }
            Err(Push::Failed(e)) => return Err(e),
        }
    }
    Ok(applied)
}

enum Push {
    TooLarge,
    Failed(String),
}

async fn send(
    shared: &Shared,
    cookie: &Option<String>,
    to: Option<String>,
    changes: Vec<AdChange>,
    repair: bool,
) -> Result<u64, Push> {
    let n = changes.len();
    let req = PushChangesRequest {
        from_cookie: cookie.clone(),
        to_cookie: to,
        changes,
        repair,
    };
    // Not while cloud → AD is between creating an object and linking it.
    drop(shared.creating.lock().await);
    let r = match shared.cloud.push(&req).await {
        Ok(r) => r,
        Err(crate::cloud::CloudError::Refused { status: 413, .. }) => return Err(Push::TooLarge),
        Err(e) => {
            crate::metrics::global().push_failures.fetch_add(1, Ordering::Relaxed);
            return Err(Push::Failed(e.to_string()));
        }
    };
    crate::metrics::global().pushes.fetch_add(1, Ordering::Relaxed);
    shared.pushed.fetch_add(r.applied, Ordering::SeqCst);
    if r.applied > 0 || r.quarantined > 0 || r.refused > 0 {
        tracing::info!(
            sent = n,
            applied = r.applied,
            quarantined = r.quarantined,
            refused = r.refused,
            "AD → cloud"
        );
    }
    if r.refused > 0 {
        tracing::warn!(
            refused = r.refused,
            "AD → cloud: the cloud refused changes; recorded as sync errors"
        );
    }
    Ok(r.applied)
}

/// A member list over [`MEMBERS_PER_CHANGE`] becomes several changes: a
/// `SetMembers` of the first part then `AddMembers` of the rest (the same
/// set once all are in); adds and removes are simply cut.
fn chunk_members(changes: Vec<AdChange>) -> Vec<AdChange> {
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        match c {
            AdChange::SetMembers { group, members } if members.len() > MEMBERS_PER_CHANGE => {
                let mut parts = members.chunks(MEMBERS_PER_CHANGE);
                let first = parts.next().map(<[Uuid]>::to_vec).unwrap_or_default();
                out.push(AdChange::SetMembers { group, members: first });
                out.extend(parts.map(|p| AdChange::AddMembers {
                    group,
                    members: p.to_vec(),
                }));
            }
            AdChange::AddMembers { group, members } if members.len() > MEMBERS_PER_CHANGE => {
                out.extend(members.chunks(MEMBERS_PER_CHANGE).map(|p| AdChange::AddMembers {
                    group,
                    members: p.to_vec(),
                }));
            }
            AdChange::RemoveMembers { group, members } if members.len() > MEMBERS_PER_CHANGE => {
                out.extend(members.chunks(MEMBERS_PER_CHANGE).map(|p| AdChange::RemoveMembers {
                    group,
                    members: p.to_vec(),
                }));
            }
            c => out.push(c),
        }
    }
    out
}

/// Cuts changes into batches of at most `max_changes` and about `max_bytes`
/// of JSON each (a change bigger than that goes alone), in order.
fn batches(changes: Vec<AdChange>, max_changes: usize, max_bytes: usize) -> Vec<Vec<AdChange>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for c in changes {
        let size = serde_json::to_vec(&c).map_or(0, |v| v.len()) + 1;
        if !current.is_empty() && (current.len() >= max_changes || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Uuid> {
        (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect()
    }

    #[test]
    fn a_big_group_travels_in_parts_that_make_the_same_set() {
        let g = Uuid::from_u128(7);
        let out = chunk_members(vec![AdChange::SetMembers {
            group: g,
            members: members(12_001),
        }]);
        assert_eq!(out.len(), 3);
        let mut all = Vec::new();
        for (i, c) in out.iter().enumerate() {
            match (i, c) {
                (0, AdChange::SetMembers { members, .. }) => all.extend(members.clone()),
                (_, AdChange::AddMembers { members, .. }) if i > 0 => all.extend(members.clone()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(all, members(12_001));
    }

    #[test]
    fn batches_are_bounded_in_count_and_bytes_and_keep_order() {
        let g = Uuid::from_u128(1);
        let small = |i: usize| AdChange::Delete {
            guid: Uuid::from_u128(i as u128),
        };
        let b = batches((0..1200).map(small).collect(), 500, usize::MAX);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![500, 500, 200]);
        // Each 5,000-member change is ~200 KB of JSON: a 1 MB bound holds four.
        let big = || AdChange::AddMembers {
            group: g,
            members: members(5_000),
        };
        let b = batches((0..10).map(|_| big()).collect(), 500, 1024 * 1024);
        assert!(
            b.iter().all(|x| x.len() <= 5 && !x.is_empty()),
            "{:?}",
            b.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 10);
        // One change bigger than the bound still goes, alone.
        let b = batches(vec![small(1), big(), small(2)], 500, 100);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
    }
}
