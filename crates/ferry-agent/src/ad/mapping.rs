//! Where an AD entry becomes a neutral record (and which entries are never
//! synced). The attribute names here are the whole AD side of the mapping.

use ferry_proto::record::{GroupRecord, UserRecord};

use super::entry::AdEntry;
use super::write::{UF_ACCOUNTDISABLE, UF_PASSWD_NOTREQD};

/// LDAP attribute ⇄ record field, for users.
pub const USER_ATTRS: &[(&str, &str)] = &[
    ("sAMAccountName", "username"),
    ("givenName", "given_name"),
    ("sn", "family_name"),
    ("displayName", "display_name"),
    ("mail", "email"),
    ("telephoneNumber", "phone"),
    ("mobile", "mobile"),
    ("title", "title"),
    ("department", "department"),
    ("company", "company"),
    ("description", "description"),
    ("employeeID", "employee_number"),
    ("manager", "manager"),
    ("userAccountControl", "active"),
];

/// Every attribute a read needs: the mapped ones, identity, scope rules, membership.
pub const READ_ATTRS: &[&str] = &[
    "objectGUID",
    "objectClass",
    "objectSid",
    "sAMAccountName",
    "userPrincipalName",
    "cn",
    "givenName",
    "sn",
    "displayName",
    "mail",
    "telephoneNumber",
    "mobile",
    "title",
    "department",
    "company",
    "description",
    "employeeID",
    "manager",
    "userAccountControl",
    "member",
    "groupType",
    "adminCount",
    "isCriticalSystemObject",
    "isDeleted",
    "uSNChanged",
    "whenChanged",
];

/// `whenChanged` (GeneralizedTime, `20261125183000.0Z`) as unix ms.
pub fn when_changed(e: &AdEntry) -> Option<i64> {
    let s = e.str("whenChanged")?;
    let d = |a: usize, b: usize| -> Option<i64> { s.get(a..b)?.parse().ok() };
    let (y, mo, day, h, mi, sec) = (d(0, 4)?, d(4, 6)?, d(6, 8)?, d(8, 10)?, d(10, 12)?, d(12, 14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000)
}

/// The record of a user entry, and its manager's DN (the caller resolves
/// it to the manager's objectGUID).
pub fn user_record(e: &AdEntry) -> (UserRecord, Option<String>) {
    let uac = e.int("userAccountControl").unwrap_or(0);
    let text = |a: &str| e.str(a).filter(|s| !s.is_empty());
    (
        UserRecord {
            username: e.str("sAMAccountName").unwrap_or_default(),
            given_name: text("givenName"),
            family_name: text("sn"),
            display_name: text("displayName"),
            email: text("mail"),
            phone: text("telephoneNumber"),
            mobile: text("mobile"),
            title: text("title"),
            department: text("department"),
            company: text("company"),
            description: text("description"),
            employee_number: text("employeeID"),
            manager: None,
            active: uac & UF_ACCOUNTDISABLE == 0,
            // Disabled with "no password required": created without a
            // password (by Ferry, or by a tool), waiting for one.
            awaiting_password: uac & UF_ACCOUNTDISABLE != 0 && uac & UF_PASSWD_NOTREQD != 0,
        },
        text("manager"),
    )
}

/// The record of a group entry.
pub fn group_record(e: &AdEntry) -> GroupRecord {
    GroupRecord {
        name: e.str("sAMAccountName").or_else(|| e.str("cn")).unwrap_or_default(),
        description: e.str("description").filter(|s| !s.is_empty()),
    }
}

/// Whether a (DirSync) entry is a tombstone, where the DC shows them.
pub fn is_tombstone(e: &AdEntry) -> bool {
    e.flag("isDeleted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> AdEntry {
        let mut m = BTreeMap::new();
        for (k, v) in attrs {
            m.entry(k.to_ascii_lowercase())
                .or_insert_with(Vec::new)
                .push(v.as_bytes().to_vec());
        }
        AdEntry {
            dn: dn.into(),
            attrs: m,
        }
    }

    /// A user as Samba/AD returns it (recorded attribute values) → the record.
    #[test]
    fn a_recorded_user_entry_maps_to_the_expected_record() {
        let e = entry(
            "CN=Smith\\, John,OU=Staff,DC=example,DC=test",
            &[
                ("objectClass", "top"),
                ("objectClass", "user"),
                ("sAMAccountName", "jsmith"),
                ("givenName", "John"),
                ("sn", "Smith"),
                ("displayName", "Smith, John"),
                ("mail", "jsmith@example.test"),
                ("telephoneNumber", "+1 555 0100"),
                ("mobile", "+1 555 0199"),
                ("title", "Engineer"),
                ("department", "R&D"),
                ("company", "Example"),
                ("description", ""),
                ("employeeID", "E-42"),
                ("manager", "CN=Boss,OU=Staff,DC=example,DC=test"),
                ("userAccountControl", "514"),
            ],
        );
        let (rec, manager) = user_record(&e);
        assert_eq!(
            rec,
            UserRecord {
                username: "jsmith".into(),
                given_name: Some("John".into()),
                family_name: Some("Smith".into()),
                display_name: Some("Smith, John".into()),
                email: Some("jsmith@example.test".into()),
                phone: Some("+1 555 0100".into()),
                mobile: Some("+1 555 0199".into()),
                title: Some("Engineer".into()),
                department: Some("R&D".into()),
                company: Some("Example".into()),
                description: None,
                employee_number: Some("E-42".into()),
                manager: None,
                active: false,
                awaiting_password: false,
            }
        );
        assert_eq!(manager.as_deref(), Some("CN=Boss,OU=Staff,DC=example,DC=test"));
        let g = entry(
            "CN=Staff,DC=x",
            &[("sAMAccountName", "staff"), ("description", "Everyone")],
        );
        assert_eq!(
            group_record(&g),
            GroupRecord {
                name: "staff".into(),
                description: Some("Everyone".into())
            }
        );
    }

    #[test]
    fn when_changed_is_unix_ms() {
        assert_eq!(
            when_changed(&entry("x", &[("whenChanged", "19700101000000.0Z")])),
            Some(0)
        );
        assert_eq!(
            when_changed(&entry("x", &[("whenChanged", "20231114221320.0Z")])),
            Some(1_700_000_000_000)
        );
        assert_eq!(when_changed(&entry("x", &[("whenChanged", "garbage")])), None);
        assert_eq!(when_changed(&entry("x", &[])), None);
    }

    #[test]
    fn tombstones_are_told() {
        assert!(is_tombstone(&entry("CN=x\\0ADEL:1,DC=x", &[("isDeleted", "TRUE")])));
    }
}
