//! Types shared by `ferry-cloud` and `ferry-agent`.
//!
//! The neutral user/group record both sides of a sync speak ([`record`]),
//! the JSON shapes of the agent ⇄ cloud protocol ([`agent`]), the sealed
//! boxes passwords travel in ([`seal`]), the cloud's TLS key pin and how a
//! new key is vouched for ([`cloud_pin`]), and the service account's six
//! delegated tasks with the scripts that grant them ([`delegation`]). No
//! HTTP, SQL or LDAP.
#![deny(missing_docs)]

pub mod agent;
pub mod audit;
pub mod cloud_pin;
pub mod connect_key;
pub mod delegation;
pub mod dn;
pub mod names;
pub mod record;
pub mod seal;
pub mod time;
