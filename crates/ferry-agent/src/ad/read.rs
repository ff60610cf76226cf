//! Reading AD: the rootDSE, paged searches, ranged retrieval of big
//! multi-valued attributes, DirSync increments, and the in-scope objectGUID
//! set that deletes are found by.

use std::collections::HashSet;

use ldap3::controls::RawControl;
use ldap3::Scope;
use uuid::Uuid;

use super::ber;
use super::entry::AdEntry;
use super::error::AdError;
use super::AdConnection;

/// AD's MaxPageSize: a page never holds more entries than this.
pub const MAX_PAGE_SIZE: i32 = 1000;

/// Users and groups (not computers, contacts or system objects' containers):
/// the union of [`USERS`] and [`GROUPS`].
pub const USERS_AND_GROUPS: &str = "(|(&(objectCategory=person)(objectClass=user))(objectClass=group))";
/// Users (people, not computers): one half of [`USERS_AND_GROUPS`].
pub const USERS: &str = "(&(objectCategory=person)(objectClass=user))";
/// Groups: the other half of [`USERS_AND_GROUPS`].
pub const GROUPS: &str = "(objectClass=group)";

/// What the rootDSE tells about the DC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDse {
    /// The domain's naming context, e.g. `DC=example,DC=test`.
    pub default_naming_context: String,
    /// `CN=Configuration,…`.
    pub configuration_naming_context: String,
    /// The DC's DNS name.
    pub dns_host_name: String,
    /// Advertised control OIDs.
    pub supported_controls: Vec<String>,
    /// Moves whenever anything on the DC changes: a cheap change trigger.
    pub highest_committed_usn: i64,
}

/// One DirSync round.
#[derive(Debug, Clone, Default)]
pub struct DirSyncBatch {
    /// Changed objects (only changed attributes, plus objectGUID).
    pub entries: Vec<AdEntry>,
    /// Resume from here.
    pub cookie: Vec<u8>,
    /// More changes wait behind this cookie.
    pub more: bool,
}

/// Where the next window of a ranged attribute starts, from the attribute
/// description the server returned (`member;range=1500-2999` → 3000,
/// `member;range=3000-*` → done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeStep {
    /// Ask again from this index.
    Next(u32),
    /// That was the last window.
    Done,
}

/// Parses the `;range=a-b` of an attribute description.
pub fn range_step(desc: &str) -> Option<RangeStep> {
    let lower = desc.to_ascii_lowercase();
    let range = lower.split(';').find_map(|p| p.strip_prefix("range="))?;
    let (_, end) = range.split_once('-')?;
    if end == "*" {
        return Some(RangeStep::Done);
    }
    let end: u32 = end.parse().ok()?;
    Some(RangeStep::Next(end.checked_add(1)?))
}

/// The paging state of one search: which cookie to send, and whether the
/// server has more. Pages are whatever size the server chooses (AD caps them
/// at [`MAX_PAGE_SIZE`]; Samba may send everything in one).
#[derive(Debug, Default)]
pub struct Pager {
    cookie: Vec<u8>,
    pages: u32,
    /// The page size asked for; 0: [`MAX_PAGE_SIZE`].
    size: i32,
}

impl Pager {
    /// A pager that asks for pages of `size` entries (at most
    /// [`MAX_PAGE_SIZE`], which is also what 0 or less asks for): fewer
    /// where each entry is large.
    pub fn of(size: i32) -> Pager {
        Pager {
            size: size.clamp(0, MAX_PAGE_SIZE),
            ..Pager::default()
        }
    }

    /// The page size to ask for.
    pub fn size(&self) -> i32 {
        if self.size <= 0 {
            MAX_PAGE_SIZE
        } else {
            self.size
        }
    }

    /// The cookie for the next request (empty for the first).
    pub fn cookie(&self) -> &[u8] {
        &self.cookie
    }

    /// Records the server's answer (its cookie, if it sent the control);
    /// `true` when another page should be asked for.
    pub fn advance(&mut self, next: Option<Vec<u8>>) -> Result<bool, AdError> {
        self.pages += 1;
        if self.pages > 1_000_000 {
            return Err(AdError::Protocol(
                "a paged search did not end after a million pages".into(),
            ));
        }
        match next {
            Some(c) if !c.is_empty() => {
                self.cookie = c;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

fn control(oid: &str, crit: bool, val: Vec<u8>) -> RawControl {
    RawControl {
        ctype: oid.to_owned(),
        crit,
        val: Some(val),
    }
}

fn find_control<'a>(ctrls: &'a [RawControl], oid: &str) -> Option<&'a RawControl> {
    ctrls.iter().find(|c| c.ctype == oid)
}

impl AdConnection {
    /// Reads the rootDSE.
    pub async fn root_dse(&mut self) -> Result<RootDse, AdError> {
        let attrs = [
            "defaultNamingContext",
            "configurationNamingContext",
            "dnsHostName",
            "supportedControl",
            "highestCommittedUSN",
        ];
        let (entries, _) = self
            .search_raw("", Scope::Base, "(objectClass=*)", &attrs, vec![])
            .await?;
        let e = entries
            .into_iter()
            .next()
            .ok_or_else(|| AdError::Protocol("the rootDSE is empty".into()))?;
        Ok(RootDse {
            default_naming_context: e.str("defaultNamingContext").unwrap_or_default(),
            configuration_naming_context: e.str("configurationNamingContext").unwrap_or_default(),
            dns_host_name: e.str("dnsHostName").unwrap_or_default(),
            supported_controls: e.strs("supportedControl"),
            highest_committed_usn: e.int("highestCommittedUSN").unwrap_or(0),
        })
    }

    /// The rootDSE's `highestCommittedUSN`: poll it, and read changes when it moves.
    pub async fn highest_committed_usn(&mut self) -> Result<i64, AdError> {
        let (entries, _) = self
            .search_raw("", Scope::Base, "(objectClass=*)", &["highestCommittedUSN"], vec![])
            .await?;
        entries
            .first()
            .and_then(|e| e.int("highestCommittedUSN"))
            .ok_or_else(|| AdError::Protocol("the rootDSE has no highestCommittedUSN".into()))
    }

    /// One entry by DN, or `None` when it does not exist.
    pub async fn read_entry(&mut self, dn: &str, attrs: &[&str]) -> Result<Option<AdEntry>, AdError> {
        match self.search_raw(dn, Scope::Base, "(objectClass=*)", attrs, vec![]).await {
            Ok((mut entries, _)) => Ok(entries.pop()),
            Err(AdError::NoSuchObject(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A paged subtree (or other scope) search returning every entry.
    pub async fn search_paged(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<AdEntry>, AdError> {
        let mut pager = Pager::default();
        let mut all = Vec::new();
        loop {
            let (entries, more) = self.search_page(base, scope, filter, attrs, &mut pager).await?;
            all.extend(entries);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Every value of a multi-valued attribute, asking in windows of
    /// `window` values (`attr;range=a-b`) as AD requires for big ones
    /// (it returns at most 1500 at a time).
    pub async fn read_ranged(&mut self, dn: &str, attr: &str, window: u32) -> Result<Vec<Vec<u8>>, AdError> {
        let mut values = Vec::new();
        let mut start = 0u32;
        loop {
            let desc = format!("{attr};range={start}-{}", start.saturating_add(window.max(1) - 1));
            let Some(entry) = self.read_entry(dn, &[desc.as_str()]).await? else {
                return Err(AdError::NoSuchObject(dn.to_owned()));
            };
            // A server that does not range answers with the plain attribute: that is all of it.
            let plain = entry.values(attr);
            if !plain.is_empty() {
                values.extend_from_slice(plain);
                return Ok(values);
            }
            let ranged = entry.ranged(attr);
            let Some((returned, vals)) = ranged.first() else {
                return Ok(values);
            };
            values.extend_from_slice(vals);
            match range_step(returned) {
                Some(RangeStep::Next(next)) if next > start => start = next,
                Some(RangeStep::Next(_)) => {
                    return Err(AdError::Protocol(format!(
                        "the range of {attr} on {dn} did not advance"
                    )))
                }
                Some(RangeStep::Done) => return Ok(values),
                None => return Err(AdError::Protocol(format!("cannot read the range in {returned:?}"))),
            }
        }
    }

    /// The members (DNs) of a group, however many (ranged when needed).
    pub async fn group_members(&mut self, dn: &str) -> Result<Vec<String>, AdError> {
        let vals = self.read_ranged(dn, "member", 1500).await?;
        Ok(vals.into_iter().filter_map(|v| String::from_utf8(v).ok()).collect())
    }

    /// Every user and group under `base` with `attrs`; a group's `member`
    /// arrives complete (the rest of a ranged answer is fetched).
    pub async fn read_users_and_groups(&mut self, base: &str, attrs: &[&str]) -> Result<Vec<AdEntry>, AdError> {
        let mut entries = self.search_paged(base, Scope::Subtree, USERS_AND_GROUPS, attrs).await?;
        self.complete_ranged(&mut entries).await?;
        Ok(entries)
    }

    /// One page of a paged search, and whether the server has more: for a
    /// reader that works on each page while the next is on its way.
    pub async fn search_page(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        pager: &mut Pager,
    ) -> Result<(Vec<AdEntry>, bool), AdError> {
        let ctrl = control(ber::PAGED_OID, false, ber::paged_request(pager.size(), pager.cookie()));
        let (entries, ctrls) = self.search_raw(base, scope, filter, attrs, vec![ctrl]).await?;
        let next = match find_control(&ctrls, ber::PAGED_OID).and_then(|c| c.val.as_deref()) {
            Some(v) => Some(
                ber::parse_paged_response(v)
                    .ok_or_else(|| AdError::Protocol("a malformed paged-results control".into()))?,
            ),
            None => None,
        };
        let more = pager.advance(next)?;
        Ok((entries, more))
    }

    /// Replaces `member;range=…` (a big group's first window) with every
    /// member, read in windows.
    pub async fn complete_ranged(&mut self, entries: &mut [AdEntry]) -> Result<(), AdError> {
        for e in entries.iter_mut() {
            let ranged: Vec<String> = e.ranged("member").iter().map(|(k, _)| (*k).to_owned()).collect();
            if ranged.is_empty() {
                continue;
            }
            let all = self.read_ranged(&e.dn.clone(), "member", 1500).await?;
            for k in ranged {
                e.attrs.remove(&k);
            }
            e.attrs.insert("member".into(), all);
        }
        Ok(())
    }

    /// The objectGUIDs of every user and group under `base`: compared with
    /// what the cloud has linked, the difference is what was deleted or
    /// moved out of scope (a delegated account sees no tombstones).
    /// `admits` tells which DNs the sync's scope takes.
    pub async fn in_scope_guids(
        &mut self,
        base: &str,
        admits: impl Fn(&str) -> bool,
    ) -> Result<HashSet<Uuid>, AdError> {
        // Page by page: only the GUIDs are kept, never the entries.
        let mut pager = Pager::default();
        let mut out = HashSet::new();
        loop {
            let (page, more) = self
                .search_page(base, Scope::Subtree, USERS_AND_GROUPS, &["objectGUID"], &mut pager)
                .await?;
            out.extend(page.iter().filter(|e| admits(&e.dn)).filter_map(AdEntry::guid));
            if !more {
                return Ok(out);
            }
        }
    }

    /// One DirSync round from `cookie` (empty: from the beginning) over the
    /// naming context `nc`, with OBJECT_SECURITY (so the six delegated tasks
    /// suffice) and INCREMENTAL_VALUES (member changes as deltas).
    pub async fn dirsync(&mut self, nc: &str, cookie: &[u8], attrs: &[&str]) -> Result<DirSyncBatch, AdError> {
        self.dirsync_filtered(nc, USERS_AND_GROUPS, cookie, attrs).await
    }

    /// A cookie for "now", without reading anything: a first DirSync round
    /// whose filter matches no object (the all-zero objectGUID), answered
    /// from the objectGUID index where a round over users and groups is a
    /// pass over all of them. The cookie is the DC's replication watermark,
    /// not tied to the filter: later rounds over users and groups report
    /// what changed after it.
    pub async fn dirsync_cookie_now(&mut self, nc: &str) -> Result<Vec<u8>, AdError> {
        let nothing = crate::ad::guid::guid_filter(Uuid::nil());
        let mut cookie = Vec::new();
        for _ in 0..100_000 {
            let b = self.dirsync_filtered(nc, &nothing, &cookie, &["objectGUID"]).await?;
            cookie = b.cookie;
            if !b.more {
                return Ok(cookie);
            }
        }
        Err(AdError::Protocol("DirSync kept reporting more results".into()))
    }

    async fn dirsync_filtered(
        &mut self,
        nc: &str,
        filter: &str,
        cookie: &[u8],
        attrs: &[&str],
    ) -> Result<DirSyncBatch, AdError> {
        let flags = ber::DIRSYNC_OBJECT_SECURITY | ber::DIRSYNC_INCREMENTAL_VALUES;
        let ctrl = control(ber::DIRSYNC_OID, true, ber::dirsync_request(flags, 1_048_576, cookie));
        let (entries, ctrls) = self.search_raw(nc, Scope::Subtree, filter, attrs, vec![ctrl]).await?;
        let resp = find_control(&ctrls, ber::DIRSYNC_OID)
            .and_then(|c| c.val.as_deref())
            .and_then(ber::parse_dirsync_response)
            .ok_or_else(|| AdError::Protocol("the DirSync answer has no usable control".into()))?;
        Ok(DirSyncBatch {
            entries,
            cookie: resp.cookie,
            more: resp.more_results,
        })
    }

    /// DirSync rounds until the DC has nothing more; returns all entries and the last cookie.
    pub async fn dirsync_all(&mut self, nc: &str, cookie: &[u8], attrs: &[&str]) -> Result<DirSyncBatch, AdError> {
        let mut out = DirSyncBatch {
            cookie: cookie.to_vec(),
            ..Default::default()
        };
        for _ in 0..100_000 {
            let b = self.dirsync(nc, &out.cookie, attrs).await?;
            out.entries.extend(b.entries);
            out.cookie = b.cookie;
            if !b.more {
                return Ok(out);
            }
        }
        Err(AdError::Protocol("DirSync kept reporting more results".into()))
    }
}

/// Member changes in a DirSync entry (INCREMENTAL_VALUES): values under
/// `member;range=1-1` were added, under `member;range=0-0` removed.
pub fn member_delta(e: &AdEntry) -> (Vec<String>, Vec<String>) {
    let text =
        |vals: &[Vec<u8>]| -> Vec<String> { vals.iter().filter_map(|v| String::from_utf8(v.clone()).ok()).collect() };
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (desc, vals) in e.ranged("member") {
        if desc.ends_with("range=1-1") {
            added.extend(text(vals));
        } else if desc.ends_with("range=0-0") {
            removed.extend(text(vals));
        }
    }
    added.extend(text(e.values("member")));
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_import_s_two_searches_are_the_union_every_other_read_makes() {
        assert_eq!(USERS_AND_GROUPS, format!("(|{USERS}{GROUPS})"));
    }

    #[test]
    fn a_pager_asks_for_its_size_at_most_max_page_size_and_that_by_default() {
        assert_eq!(Pager::default().size(), MAX_PAGE_SIZE);
        assert_eq!(Pager::of(250).size(), 250);
        assert_eq!(Pager::of(1).size(), 1);
        for asked in [0, -5, MAX_PAGE_SIZE, MAX_PAGE_SIZE + 1, i32::MAX] {
            assert_eq!(Pager::of(asked).size(), MAX_PAGE_SIZE, "{asked}");
        }
    }

    fn entry(n: usize) -> AdEntry {
        AdEntry {
            dn: format!("CN=u{n},DC=example,DC=test"),
            attrs: BTreeMap::new(),
        }
    }

    /// A simulated AD: pages of at most MaxPageSize (1000) whatever was asked.
    fn ad_page(all: usize, cookie: Vec<u8>) -> (Vec<AdEntry>, Option<Vec<u8>>) {
        let start: usize = if cookie.is_empty() {
            0
        } else {
            String::from_utf8(cookie).unwrap().parse().unwrap()
        };
        let end = (start + MAX_PAGE_SIZE as usize).min(all);
        let next = if end < all {
            end.to_string().into_bytes()
        } else {
            vec![]
        };
        ((start..end).map(entry).collect(), Some(next))
    }

    /// Drives a Pager against a simulated server, as search_paged does.
    async fn run(server: impl Fn(Vec<u8>) -> (Vec<AdEntry>, Option<Vec<u8>>)) -> (Vec<AdEntry>, u32) {
        let mut pager = Pager::default();
        let mut all = Vec::new();
        let mut calls = 0;
        loop {
            calls += 1;
            let (page, next) = server(pager.cookie().to_vec());
            all.extend(page);
            if !pager.advance(next).unwrap() {
                return (all, calls);
            }
        }
    }

    #[tokio::test]
    async fn paging_collects_every_page_of_a_capped_server() {
        let (got, calls) = run(|c| ad_page(2500, c)).await;
        assert_eq!(got.len(), 2500);
        assert_eq!(calls, 3);
        assert_eq!(got[2499].dn, "CN=u2499,DC=example,DC=test");
    }

    #[tokio::test]
    async fn a_server_that_does_not_page_is_one_page() {
        let (got, calls) = run(|_| ((0..3000).map(entry).collect(), None)).await;
        assert_eq!((got.len(), calls), (3000, 1));
    }

    #[test]
    fn ranges_as_ad_returns_them() {
        // AD answers `member;range=0-*` with at most 1500 values.
        assert_eq!(range_step("member;range=0-1499"), Some(RangeStep::Next(1500)));
        assert_eq!(range_step("member;range=1500-2999"), Some(RangeStep::Next(3000)));
        assert_eq!(range_step("member;range=3000-*"), Some(RangeStep::Done));
        assert_eq!(range_step("Member;Range=0-*"), Some(RangeStep::Done));
        assert_eq!(range_step("member"), None);
        assert_eq!(range_step("member;range=garbage"), None);
        assert_eq!(range_step("member;range=0-4294967295"), None);
    }

    #[test]
    fn member_deltas() {
        let mut e = entry(0);
        e.attrs.insert("member;range=1-1".into(), vec![b"CN=a".to_vec()]);
        e.attrs
            .insert("member;range=0-0".into(), vec![b"CN=b".to_vec(), b"CN=c".to_vec()]);
        let (added, removed) = member_delta(&e);
        assert_eq!(added, vec!["CN=a"]);
        assert_eq!(removed, vec!["CN=b", "CN=c"]);
    }
}
