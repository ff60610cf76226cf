//! Types shared by `ferry-cloud` and `ferry-agent`.
//!
//! Two things live here and nothing else: the neutral user/group record that
//! both sides of a sync speak ([`record`]), and the JSON shapes of the
//! agent ⇄ cloud protocol ([`agent`]). No HTTP, SQL or LDAP.
#![deny(missing_docs)]

pub mod agent;
pub mod record;
