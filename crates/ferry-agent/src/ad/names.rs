//! AD's naming rules for what the agent creates: see [`ferry_proto::names`],
//! shared with the cloud so both sides derive the same names.

pub use ferry_proto::names::*;
