//! The quick path of AD → cloud: when `highestCommittedUSN` moved by a few,
//! the objects that changed are exactly those whose `uSNChanged` is one of
//! the new USNs. `uSNChanged` is indexed for equality on AD and on Samba, so
//! `(|(uSNChanged=n)(uSNChanged=n+1)…)` finds them in milliseconds whatever
//! the domain's size, where a DirSync round on Samba is a pass over every
//! user and group (~0.15 s per 10,000). Changed users are read whole by
//! that search and pushed at once.
//!
//! DirSync stays the record: it moves the cookie, gives member changes as
//! deltas, and its "nothing readable" is the hint of a delete. So a window
//! with a group in it, or with nothing this path can push, is left to
//! DirSync; and after windows this path took, a DirSync round still follows
//! once the DC is quiet (it pushes nothing the quick path already pushed).

use std::collections::HashMap;

use uuid::Uuid;

use super::increment::{in_reach, upsert_of};
use super::push::push;
use super::root;
use crate::ad::mapping::READ_ATTRS;
use crate::ad::AdConnection;
use crate::sync::protect::Protection;
use crate::sync::Shared;

/// The widest USN window the quick path takes (a burst wider than this is
/// DirSync's: the filter grows with the window).
pub(super) const MAX_WINDOW: i64 = 64;

/// What the quick path did with a window of USNs.
pub(super) enum Quick {
    /// Every changed object it found was a user in scope, now pushed
    /// (objectGUID → the `uSNChanged` pushed).
    Pushed(Vec<(Uuid, i64)>),
    /// The window is DirSync's (a group changed, nothing readable, an
    /// object leaving the scope or out of Ferry's reach).
    DirSync,
}

/// The filter of objects changed at USNs `from..=to`.
pub(super) fn window_filter(from: i64, to: i64) -> String {
    let mut f = String::from("(|");
    for usn in from..=to {
        f.push_str(&format!("(uSNChanged={usn})"));
    }
    f.push(')');
    f
}

/// Pushes the users changed at USNs `from..=to` (`to - from < MAX_WINDOW`),
/// or says the window is DirSync's.
pub(super) async fn users_changed(
    shared: &Shared,
    conn: &mut AdConnection,
    cookie: &Option<String>,
    protection: &Protection,
    from: i64,
    to: i64,
) -> Result<Quick, String> {
    if to < from || to - from >= MAX_WINDOW {
        return Ok(Quick::DirSync);
    }
    let root = root(shared).await;
    let found = conn
        .search_paged(&root, ldap3::Scope::Subtree, &window_filter(from, to), READ_ATTRS)
        .await
        .map_err(|e| e.to_string())?;
    let mut users = Vec::new();
    for e in &found {
        if e.has_class("group") {
            return Ok(Quick::DirSync);
        }
        if !e.has_class("user") || e.has_class("computer") {
            // Not a user or a group (an OU, a computer, a DNS record…).
            continue;
        }
        if !in_reach(&root, protection, e) {
            return Ok(Quick::DirSync);
        }
        let (Some(guid), Some(usn)) = (e.guid(), e.int("uSNChanged")) else {
            return Ok(Quick::DirSync);
        };
        users.push((guid, usn, e));
    }
    if users.is_empty() {
        return Ok(Quick::DirSync);
    }
    let mut changes = Vec::with_capacity(users.len());
    for (guid, _, e) in &users {
        changes.push(upsert_of(conn, &root, e, *guid).await?);
    }
    // The cookie does not move: DirSync's round still covers this window.
    let mut c = cookie.clone();
    push(shared, &mut c, cookie.clone().unwrap_or_default(), changes).await?;
    Ok(Quick::Pushed(users.into_iter().map(|(g, u, _)| (g, u)).collect()))
}

/// The users the quick path pushed since the last DirSync round, so that
/// round does not push them again unchanged. Bounded: past the bound it
/// forgets, which costs only pushes the cloud finds unchanged.
#[derive(Default)]
pub(super) struct Pushed(pub HashMap<Uuid, i64>);

impl Pushed {
    const MAX: usize = 100_000;

    pub(super) fn add(&mut self, pushed: Vec<(Uuid, i64)>) {
        if self.0.len() + pushed.len() > Self::MAX {
            self.0.clear();
        }
        self.0.extend(pushed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_filter_names_every_usn_of_the_window() {
        assert_eq!(window_filter(7, 7), "(|(uSNChanged=7))");
        assert_eq!(
            window_filter(10, 12),
            "(|(uSNChanged=10)(uSNChanged=11)(uSNChanged=12))"
        );
    }
}
