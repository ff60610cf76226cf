//! Types shared by `ferry-cloud` and `ferry-agent`.
//!
//! The neutral user/group record both sides of a sync speak ([`record`]),
//! the JSON shapes of the agent ⇄ cloud protocol ([`agent`]), and the sealed
//! boxes passwords travel in ([`seal`]). No HTTP, SQL or LDAP.
#![deny(missing_docs)]

pub mod agent;
pub mod connect_key;
pub mod dn;
pub mod names;
pub mod record;
pub mod seal;
pub mod time;
