//! Ferry cloud directory: the store, the directory core, and the HTTP
//! surfaces on top of it (admin REST API, SCIM 2.0, agent API).
#![deny(missing_docs)]

pub mod agent_api;
pub mod api;
pub mod app;
pub mod clock;
pub mod console;
pub mod directory;
pub mod downloads;
pub mod feed_wakeup;
pub mod http;
pub mod metrics;
pub mod metrics_endpoint;
pub mod ratelimit;
pub mod retention;
pub mod scim;
pub mod secrets;
pub mod store;
pub mod surface_errors;
pub mod tls;
