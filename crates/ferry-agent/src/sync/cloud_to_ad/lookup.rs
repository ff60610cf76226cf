//! The AD objects a window of feed entries names, read together: by
//! objectGUID (the linked objects of upserts, deletes, passwords and both
//! sides of a membership change) and by account name (what a new object
//! would match), each in one search of up to 100 alternatives
//! (`(|(objectGUID=…)(objectGUID=…)…)`) instead of one search an entry.
//!
//! A read is used once: the entry that needed it takes it, and any later
//! look at the same object (after a write to it, say) reads it again. A
//! window is read just before it is applied, so what an entry compares
//! with is at most a window's writes old.

use std::collections::HashMap;

use uuid::Uuid;

use crate::ad::guid::guid_filter;
use crate::ad::mapping::READ_ATTRS;
use crate::ad::{AdConnection, AdEntry, AdError};

/// Feed entries read from AD together.
pub(super) const WINDOW: usize = 50;

/// Alternatives in one search filter.
const PER_SEARCH: usize = 100;

/// What cloud → AD reads of an object: all the sync maps, but not a
/// group's member list (a membership change is written without it, and
/// for a big group it is most of the read).
pub(super) fn target_attrs() -> Vec<&'static str> {
    READ_ATTRS.iter().copied().filter(|a| *a != "member").collect()
}

/// Objects read ahead for the entries about to be applied.
#[derive(Default)]
pub(super) struct ReadAhead {
    /// By objectGUID; `None`: no such object in AD.
    by_guid: HashMap<Uuid, Option<AdEntry>>,
    /// By lower-cased account name; `None`: no object has it.
    by_sam: HashMap<String, Option<AdEntry>>,
}

impl ReadAhead {
    /// The object read ahead for `guid` (`Some(None)`: it is not in AD),
    /// or `None` when it was not read ahead.
    pub(super) fn take_guid(&mut self, guid: Uuid) -> Option<Option<AdEntry>> {
        self.by_guid.remove(&guid)
    }

    /// The object read ahead with account name `sam`, as [`ReadAhead::take_guid`].
    pub(super) fn take_sam(&mut self, sam: &str) -> Option<Option<AdEntry>> {
        self.by_sam.remove(&sam.to_lowercase())
    }

    /// Forgets what is left (a new feed page reads afresh).
    pub(super) fn clear(&mut self) {
        self.by_guid.clear();
        self.by_sam.clear();
    }

    /// Reads the objects of `guids` and `sams` (`sAMAccountName`s) under
    /// `root`, in as few searches as the filter size allows.
    pub(super) async fn read(
        &mut self,
        conn: &mut AdConnection,
        root: &str,
        guids: &[Uuid],
        sams: &[String],
    ) -> Result<(), AdError> {
        for chunk in guids.chunks(PER_SEARCH) {
            let filter: String = chunk.iter().map(|g| guid_filter(*g)).collect();
            for g in chunk {
                self.by_guid.insert(*g, None);
            }
            for e in search_any(conn, root, &filter).await? {
                if let Some(g) = e.guid() {
                    self.by_guid.insert(g, Some(e));
                }
            }
        }
        for chunk in sams.chunks(PER_SEARCH) {
            let filter: String = chunk
                .iter()
                .map(|s| format!("(sAMAccountName={})", ldap3::ldap_escape(s.as_str())))
                .collect();
            for s in chunk {
                self.by_sam.insert(s.to_lowercase(), None);
            }
            for e in search_any(conn, root, &filter).await? {
                if let Some(s) = e.str("sAMAccountName") {
                    self.by_sam.insert(s.to_lowercase(), Some(e));
                }
            }
        }
        Ok(())
    }
}

/// Every object under `root` matching any of the `alternatives` (filters).
async fn search_any(conn: &mut AdConnection, root: &str, alternatives: &str) -> Result<Vec<AdEntry>, AdError> {
    conn.search_paged(
        root,
        ldap3::Scope::Subtree,
        &format!("(|{alternatives})"),
        &target_attrs(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_attrs_are_read_attrs_without_the_member_list() {
        let t = target_attrs();
        assert_eq!(t.len(), READ_ATTRS.len() - 1);
        assert!(!t.contains(&"member"));
    }
}
