//! The neutral directory record: what a user or group *is*, independent of
//! where it is stored (SCIM document in the cloud, LDAP entry in AD).

use serde::{Deserialize, Serialize};

/// A user as both sides of a sync understand it.
///
/// Every field but `username` is optional: `None` means "no value", and a
/// sync writes exactly the fields that differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserRecord {
    /// Login name; `sAMAccountName` in AD, `userName` in SCIM.
    pub username: String,
    /// Given (first) name.
    pub given_name: Option<String>,
    /// Family (last) name.
    pub family_name: Option<String>,
    /// Name shown in lists.
    pub display_name: Option<String>,
    /// Primary e-mail address.
    pub email: Option<String>,
    /// Work telephone number.
    pub phone: Option<String>,
    /// Mobile telephone number.
    pub mobile: Option<String>,
    /// Job title.
    pub title: Option<String>,
    /// Department.
    pub department: Option<String>,
    /// Company or organization name.
    pub company: Option<String>,
    /// Free-text description.
    pub description: Option<String>,
    /// Employee number.
    pub employee_number: Option<String>,
    /// Manager, as the anchor of the sending side (cloud user id, or AD objectGUID).
    pub manager: Option<String>,
    /// `false` when the account is suspended (cloud) or disabled (AD).
    pub active: bool,
    /// AD only: the account is disabled because it has no password yet (it
    /// was created without one), so its disabled state says nothing about
    /// whether the person should be active.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_password: bool,
}

/// A group as both sides of a sync understand it. Members travel separately.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupRecord {
    /// Group name; `sAMAccountName`/`cn` in AD, `displayName` in SCIM.
    pub name: String,
    /// Free-text description.
    pub description: Option<String>,
}

/// What kind of directory object an id refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// A user account.
    User,
    /// A group.
    Group,
}

impl ObjectKind {
    /// The lowercase name used in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::User => "user",
            ObjectKind::Group => "group",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(ObjectKind::User),
            "group" => Some(ObjectKind::Group),
            _ => None,
        }
    }
}
