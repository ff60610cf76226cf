//! Ferry's sync agent: the AD connector, the preflight checks of the
//! service account, the sync engine, and the install wizard.
#![deny(missing_docs)]

pub mod ad;
pub mod cloud;
pub mod config;
pub mod install;
pub mod metrics;
pub mod platform;
pub mod preflight;
pub mod run;
pub mod sync;
pub mod tls_rule;
