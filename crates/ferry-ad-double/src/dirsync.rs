//! MaxValRange in DirSync. AD returns at most MaxValRange values of one
//! attribute of an object in one DirSync answer; the rest of that object's
//! values come in later rounds, under `moreResults`, with the object
//! repeated (its `objectGUID` and the rest of the values, under the same
//! attribute description: `member;range=1-1` for added members,
//! `member;range=0-0` for removed ones with INCREMENTAL_VALUES).
//!
//! The double keeps what it held back and hands the client a cookie of its
//! own naming it and the round; the DC's real cookie is given out only once
//! everything held back is delivered. Its cookie also carries the DC's
//! cookie *before* the round, so one that outlives the double (a restart)
//! replays the round from the DC: delivered again, never lost, as a DirSync
//! client must expect when it presents an older cookie.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{LdapMsg, LdapOp, LdapPartialAttribute, LdapResultCode, LdapSearchResultEntry};

use crate::session::Session;
use crate::values;

const MAGIC: &[u8; 8] = b"FDBLDS01";
/// Rounds held back at once; older ones are replayed from the DC if asked for.
const KEPT: usize = 256;

/// Whether a search carries the DirSync control.
pub(crate) fn requested(msg: &LdapMsg) -> bool {
    msg.ctrl.iter().any(|c| matches!(c, LdapControl::AdDirsync { .. }))
}

/// Values held back from DirSync answers, by round id.
#[derive(Default)]
pub(crate) struct Held {
    rounds: Mutex<VecDeque<(u64, Arc<Pending>)>>,
    next: AtomicU64,
}

impl Held {
    fn keep(&self, p: Pending) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if rounds.len() >= KEPT {
            rounds.pop_front();
        }
        rounds.push_back((id, Arc::new(p)));
        id
    }

    fn get(&self, id: u64) -> Option<Arc<Pending>> {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds.iter().find(|(i, _)| *i == id).map(|(_, p)| p.clone())
    }
}

struct Pending {
    entries: Vec<PendingEntry>,
    upstream_more: bool,
    upstream_cookie: Vec<u8>,
}

struct PendingEntry {
    dn: String,
    /// Repeated with every part: `objectGUID`, `instanceType`.
    identity: Vec<LdapPartialAttribute>,
    /// Attribute description → the values not yet delivered.
    rest: Vec<(String, Vec<Vec<u8>>)>,
}

/// The double's cookie: which held round, which part of it, and the DC's
/// cookie the round was read from.
#[derive(Debug, PartialEq, Eq)]
struct Cookie {
    id: u64,
    part: u32,
    before: Vec<u8>,
}

impl Cookie {
    fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.part.to_be_bytes());
        out.extend_from_slice(&self.before);
        out
    }

    fn decode(raw: &[u8]) -> Option<Cookie> {
        let rest = raw.strip_prefix(MAGIC.as_slice())?;
        let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let part = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
        Some(Cookie {
            id,
            part,
            before: rest.get(12..)?.to_vec(),
        })
    }
}

fn dirsync_cookie(msg: &LdapMsg) -> Vec<u8> {
    msg.ctrl
        .iter()
        .find_map(|c| match c {
            LdapControl::AdDirsync { cookie, .. } => Some(cookie.clone().unwrap_or_default()),
            _ => None,
        })
        .unwrap_or_default()
}

fn set_request_cookie(msg: &mut LdapMsg, new: Vec<u8>) {
    for c in &mut msg.ctrl {
        if let LdapControl::AdDirsync { cookie, .. } = c {
            *cookie = Some(new.clone());
        }
    }
}

/// A DirSync search through the double.
pub(crate) async fn search(s: &Session, mut msg: LdapMsg) {
    let Some(max) = s.double.limits.max_val_range else {
        return s.relay(msg).await;
    };
    let max = max.max(1);
    let presented = dirsync_cookie(&msg);
    if let Some(c) = Cookie::decode(&presented) {
        if let Some(p) = s.double.dirsync.get(c.id) {
            return deliver_part(s, &msg, &p, c, max);
        }
        // Issued before a restart: read that round from the DC again.
        set_request_cookie(&mut msg, c.before);
    }
    let before = dirsync_cookie(&msg);
    let request = msg.clone();
    let Ok(mut rx) = s.exchange(msg).await else {
        return s.reply_unavailable(&request);
    };
    let mut held = Vec::new();
    while let Some(mut m) = rx.recv().await {
        match &mut m.op {
            LdapOp::SearchResultEntry(e) => {
                if let Some(p) = hold_back(e, max) {
                    held.push(p);
                }
            }
            LdapOp::SearchResultDone(r) => {
                if !held.is_empty() && r.code == LdapResultCode::Success {
                    let (upstream_more, upstream_cookie) = response_state(&m.ctrl);
                    let id = s.double.dirsync.keep(Pending {
                        entries: held,
                        upstream_more,
                        upstream_cookie,
                    });
                    let next = Cookie { id, part: 1, before };
                    set_response(&mut m.ctrl, true, next.encode());
                }
                s.reply(m);
                return;
            }
            _ => {}
        }
        s.reply(m);
    }
    s.reply_unavailable(&request);
}

/// Cuts every attribute of `e` to `max` values and returns what was cut.
fn hold_back(e: &mut LdapSearchResultEntry, max: usize) -> Option<PendingEntry> {
    let mut rest = Vec::new();
    for a in &mut e.attributes {
        if values::is_ranged(&a.atype) && a.vals.len() > max {
            rest.push((a.atype.clone(), a.vals.split_off(max)));
        }
    }
    if rest.is_empty() {
        return None;
    }
    let identity = e
        .attributes
        .iter()
        .filter(|a| a.atype.eq_ignore_ascii_case("objectGUID") || a.atype.eq_ignore_ascii_case("instanceType"))
        .cloned()
        .collect();
    Some(PendingEntry {
        dn: e.dn.clone(),
        identity,
        rest,
    })
}

/// Part `c.part` (1, 2, …) of what round `c.id` held back.
fn deliver_part(s: &Session, msg: &LdapMsg, p: &Pending, c: Cookie, max: usize) {
    let part = c.part.max(1) as usize;
    let (from, to) = ((part - 1) * max, part * max);
    let mut more = false;
    for e in &p.entries {
        let mut attributes = e.identity.clone();
        for (atype, vals) in &e.rest {
            more |= vals.len() > to;
            if let Some(chunk) = vals.get(from..to.min(vals.len())).filter(|c| !c.is_empty()) {
                attributes.push(LdapPartialAttribute {
                    atype: atype.clone(),
                    vals: chunk.to_vec(),
                });
            }
        }
        if attributes.len() > e.identity.len() {
            let entry = LdapSearchResultEntry {
                dn: e.dn.clone(),
                attributes,
            };
            s.reply(LdapMsg::new(msg.msgid, LdapOp::SearchResultEntry(entry)));
        }
    }
    let mut ctrl = vec![LdapControl::AdDirsync {
        flags: 0,
        max_bytes: 0,
        cookie: None,
    }];
    if more {
        let next = Cookie {
            id: c.id,
            part: c.part + 1,
            before: c.before,
        };
        set_response(&mut ctrl, true, next.encode());
    } else {
        set_response(&mut ctrl, p.upstream_more, p.upstream_cookie.clone());
    }
    let done = crate::answers::response_for(&msg.op, LdapResultCode::Success, "");
    if let Some(op) = done {
        s.reply(LdapMsg::new_with_ctrls(msg.msgid, op, ctrl));
    }
}

/// `moreResults` and the cookie of a DirSync response control.
fn response_state(ctrl: &[LdapControl]) -> (bool, Vec<u8>) {
    ctrl.iter()
        .find_map(|c| match c {
            LdapControl::AdDirsync { flags, cookie, .. } => Some((*flags != 0, cookie.clone().unwrap_or_default())),
            _ => None,
        })
        .unwrap_or_default()
}

fn set_response(ctrl: &mut [LdapControl], more: bool, new: Vec<u8>) {
    for c in ctrl {
        if let LdapControl::AdDirsync { flags, cookie, .. } = c {
            *flags = i64::from(more);
            *cookie = Some(new.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_foreign_ones_are_not_ours() {
        let c = Cookie {
            id: 7,
            part: 3,
            before: b"samba-cookie".to_vec(),
        };
        assert_eq!(Cookie::decode(&c.encode()), Some(c));
        assert_eq!(Cookie::decode(b"samba-cookie"), None);
        assert_eq!(Cookie::decode(b"FDBLDS01\0\0"), None);
    }

    #[test]
    fn a_big_delta_is_held_back_past_the_range() {
        let mut e = LdapSearchResultEntry {
            dn: "CN=g".into(),
            attributes: vec![
                LdapPartialAttribute {
                    atype: "objectGUID".into(),
                    vals: vec![vec![1; 16]],
                },
                LdapPartialAttribute {
                    atype: "member;range=1-1".into(),
                    vals: (0..20).map(|i| vec![i]).collect(),
                },
            ],
        };
        let p = hold_back(&mut e, 7).expect("held");
        assert_eq!(e.attributes[1].vals.len(), 7);
        assert_eq!(p.rest[0].0, "member;range=1-1");
        assert_eq!(p.rest[0].1.len(), 13);
        assert_eq!(p.identity.len(), 1);
        let mut small = e.clone();
        assert!(hold_back(&mut small, 7).is_none());
    }
}
