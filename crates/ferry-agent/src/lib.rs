//! Ferry's sync agent: the AD connector, the preflight checks of the
//! service account, and (to come) the sync engine and install wizard.
#![deny(missing_docs)]

pub mod ad;
pub mod cloud;
pub mod config;
pub mod preflight;
pub mod sync;
