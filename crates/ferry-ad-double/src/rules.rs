//! The write rules Windows AD enforces and Samba does not: names, group
//! nesting, AdminSDHolder-protected objects, deletes of objects with
//! children. Checked in AD's order: access first, then constraints. A
//! check that cannot read what it needs lets the DC decide.

use ldap3_proto::control::LdapControl;
use ldap3_proto::proto::{
    LdapAddRequest, LdapFilter, LdapModifyRequest, LdapModifyType, LdapMsg, LdapOp, LdapSearchScope,
};

use crate::answers::{self, Nesting, Refusal};
use crate::session::{all_values, first_value, Session};

/// The tree-delete control: delete an object and everything under it.
pub const TREE_DELETE_OID: &str = "1.2.840.113556.1.4.805";
/// SAM's limit on a user's or computer's `sAMAccountName`.
pub const MAX_SAM_ACCOUNT_NAME: usize = 20;
/// `rangeUpper` of `cn` and `ou`, the RDN attributes of users, groups and OUs.
pub const MAX_RDN: usize = 64;

/// Members are looked up this many at a time.
const MEMBER_BATCH: usize = 100;

/// The DN a write targets (for the log).
pub(crate) fn target(op: &LdapOp) -> &str {
    match op {
        LdapOp::AddRequest(r) => &r.dn,
        LdapOp::ModifyRequest(r) => &r.dn,
        LdapOp::ModifyDNRequest(r) => &r.dn,
        LdapOp::DelRequest(dn) => dn,
        _ => "",
    }
}

/// The refusal Windows AD would give this write, if any.
pub(crate) async fn check_write(s: &Session, msg: &LdapMsg) -> Option<Refusal> {
    let limits = &s.double.limits;
    match &msg.op {
        LdapOp::AddRequest(req) => {
            if limits.names {
                if let Some(r) = check_add_names(req) {
                    return Some(r);
                }
            }
            if limits.nesting && has_class(&req.attributes, "group") {
                let group_type = value_of(&req.attributes, "groupType")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(GLOBAL_SECURITY);
                let members = values_of(&req.attributes, "member");
                return check_nesting(s, group_type, &members).await;
            }
            None
        }
        LdapOp::ModifyRequest(req) => {
            if limits.protected_objects && is_protected(s, &req.dn).await {
                return Some(answers::protected_object());
            }
            if limits.names {
                if let Some(r) = check_modify_names(s, req).await {
                    return Some(r);
                }
            }
            if limits.nesting {
                return check_modify_nesting(s, req).await;
            }
            None
        }
        LdapOp::ModifyDNRequest(req) => {
            if limits.protected_objects && is_protected(s, &req.dn).await {
                return Some(answers::protected_object());
            }
            if limits.names {
                return rdn_refusal(&req.newrdn);
            }
            None
        }
        LdapOp::DelRequest(dn) => {
            if limits.protected_objects && is_protected(s, dn).await {
                return Some(answers::protected_object());
            }
            let tree = msg
                .ctrl
                .iter()
                .any(|c| matches!(c, LdapControl::Unknown { oid, .. } if oid == TREE_DELETE_OID));
            if limits.tree_delete && !tree && has_children(s, dn).await {
                return Some(answers::non_leaf());
            }
            None
        }
        _ => None,
    }
}

// ---- names ----

fn check_add_names(req: &LdapAddRequest) -> Option<Refusal> {
    if let Some(r) = rdn_refusal(&req.dn) {
        return Some(r);
    }
    let sam_limited = has_class(&req.attributes, "user") || has_class(&req.attributes, "computer");
    let sam = value_of(&req.attributes, "sAMAccountName").unwrap_or_default();
    (sam_limited && sam.chars().count() > MAX_SAM_ACCOUNT_NAME).then(answers::sam_account_name_too_long)
}

async fn check_modify_names(s: &Session, req: &LdapModifyRequest) -> Option<Refusal> {
    let too_long = req.changes.iter().any(|c| {
        c.modification.atype.eq_ignore_ascii_case("sAMAccountName")
            && !matches!(c.operation, LdapModifyType::Delete)
            && c.modification
                .vals
                .iter()
                .any(|v| String::from_utf8_lossy(v).chars().count() > MAX_SAM_ACCOUNT_NAME)
    });
    if !too_long {
        return None;
    }
    let classes = match s.read(&req.dn, &["objectClass"]).await {
        Ok(Some(e)) => all_values(&e, "objectClass"),
        _ => return None,
    };
    let limited = classes
        .iter()
        .any(|c| c.eq_ignore_ascii_case("user") || c.eq_ignore_ascii_case("computer"));
    limited.then(answers::sam_account_name_too_long)
}

/// The refusal for a DN (or bare RDN) whose first RDN value is too long.
fn rdn_refusal(dn_or_rdn: &str) -> Option<Refusal> {
    let (attr, value) = first_rdn(dn_or_rdn)?;
    let len = value.chars().count();
    (len > MAX_RDN).then(|| answers::rdn_too_long(&attr, value.len()))
}

/// The attribute and unescaped value of a DN's first RDN (RFC 4514).
pub fn first_rdn(dn: &str) -> Option<(String, String)> {
    let (attr, rest) = dn.split_once('=')?;
    let mut value = Vec::new();
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        value.push(b);
                        i += 3;
                    }
                    None => {
                        value.push(*bytes.get(i + 1)?);
                        i += 2;
                    }
                }
            }
            b',' | b'+' => break,
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    Some((attr.trim().to_owned(), String::from_utf8_lossy(&value).into_owned()))
}

// ---- nesting ----

const GLOBAL_SECURITY: i64 = -2_147_483_646;
const SCOPE_GLOBAL: i64 = 0x2;
const SCOPE_DOMAIN_LOCAL: i64 = 0x4;
const SCOPE_UNIVERSAL: i64 = 0x8;

/// Why a group of scope `outer` may not contain a group of scope `inner`,
/// if it may not (Microsoft, "Active Directory security groups": group
/// scope; a universal group takes no domain-local member, a global group
/// only global ones).
pub fn nesting_refusal(outer: i64, inner: i64) -> Option<Nesting> {
    if outer & SCOPE_GLOBAL != 0 {
        if inner & SCOPE_UNIVERSAL != 0 {
            return Some(Nesting::UniversalInGlobal);
        }
        if inner & SCOPE_DOMAIN_LOCAL != 0 {
            return Some(Nesting::LocalInGlobal);
        }
    }
    if outer & SCOPE_UNIVERSAL != 0 && inner & SCOPE_DOMAIN_LOCAL != 0 {
        return Some(Nesting::LocalInUniversal);
    }
    None
}

async fn check_modify_nesting(s: &Session, req: &LdapModifyRequest) -> Option<Refusal> {
    let added: Vec<String> = req
        .changes
        .iter()
        .filter(|c| c.modification.atype.eq_ignore_ascii_case("member"))
        .filter(|c| matches!(c.operation, LdapModifyType::Add | LdapModifyType::Replace))
        .flat_map(|c| {
            c.modification
                .vals
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    if added.is_empty() {
        return None;
    }
    let group_type = match s.read(&req.dn, &["groupType"]).await {
        Ok(Some(e)) => first_value(&e, "groupType")?.parse().ok()?,
        _ => return None,
    };
    check_nesting(s, group_type, &added).await
}

async fn check_nesting(s: &Session, group_type: i64, members: &[String]) -> Option<Refusal> {
    if members.is_empty() {
        return None;
    }
    let nc = s.naming_context().await.ok()?;
    for batch in members.chunks(MEMBER_BATCH) {
        let filter = LdapFilter::And(vec![
            LdapFilter::Equality("objectClass".into(), "group".into()),
            LdapFilter::Or(
                batch
                    .iter()
                    .map(|dn| LdapFilter::Equality("distinguishedName".into(), dn.clone()))
                    .collect(),
            ),
        ]);
        let Ok((groups, _)) = s
            .search_internal(&nc, LdapSearchScope::Subtree, filter, &["groupType"])
            .await
        else {
            return None;
        };
        for g in groups {
            let inner: i64 = first_value(&g, "groupType").and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(n) = nesting_refusal(group_type, inner) {
                return Some(answers::nesting(n));
            }
        }
    }
    None
}

// ---- protected objects, children ----

async fn is_protected(s: &Session, dn: &str) -> bool {
    let admin_count = match s.read(dn, &["adminCount"]).await {
        Ok(Some(e)) => first_value(&e, "adminCount"),
        _ => None,
    };
    admin_count.as_deref() == Some("1") && !s.privileged().await
}

async fn has_children(s: &Session, dn: &str) -> bool {
    let all = LdapFilter::Present("objectClass".into());
    match s.search_internal(dn, LdapSearchScope::OneLevel, all, &["1.1"]).await {
        Ok((children, _)) => !children.is_empty(),
        Err(_) => false,
    }
}

// ---- attribute helpers ----

fn values_of(attrs: &[ldap3_proto::proto::LdapPartialAttribute], name: &str) -> Vec<String> {
    attrs
        .iter()
        .filter(|a| a.atype.eq_ignore_ascii_case(name))
        .flat_map(|a| a.vals.iter().map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn value_of(attrs: &[ldap3_proto::proto::LdapPartialAttribute], name: &str) -> Option<String> {
    values_of(attrs, name).into_iter().next()
}

fn has_class(attrs: &[ldap3_proto::proto::LdapPartialAttribute], class: &str) -> bool {
    values_of(attrs, "objectClass")
        .iter()
        .any(|c| c.eq_ignore_ascii_case(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rdns_are_unescaped() {
        assert_eq!(
            first_rdn("CN=Smith\\, John,OU=x,DC=y"),
            Some(("CN".into(), "Smith, John".into()))
        );
        assert_eq!(first_rdn("CN=J\\C3\\BCrgen,DC=y"), Some(("CN".into(), "Jürgen".into())));
        assert_eq!(first_rdn("cn=plain"), Some(("cn".into(), "plain".into())));
        assert_eq!(first_rdn("no-equals"), None);
    }

    #[test]
    fn rdns_over_64_characters_are_refused_counted_in_characters() {
        assert!(rdn_refusal(&format!("CN={},DC=x", "a".repeat(64))).is_none());
        assert!(rdn_refusal(&format!("CN={},DC=x", "a".repeat(65))).is_some());
        // 64 two-byte characters are 64 characters.
        assert!(rdn_refusal(&format!("CN={},DC=x", "ü".repeat(64))).is_none());
        // Escapes count as the character they stand for.
        assert!(rdn_refusal(&format!("CN={},DC=x", "\\,".repeat(64))).is_none());
    }

    #[test]
    fn nesting_follows_the_scopes() {
        let global = -2_147_483_646;
        let local = -2_147_483_644;
        let universal = -2_147_483_640;
        assert_eq!(nesting_refusal(global, universal), Some(Nesting::UniversalInGlobal));
        assert_eq!(nesting_refusal(global, local), Some(Nesting::LocalInGlobal));
        assert_eq!(nesting_refusal(universal, local), Some(Nesting::LocalInUniversal));
        assert_eq!(nesting_refusal(global, global), None);
        assert_eq!(nesting_refusal(universal, universal), None);
        assert_eq!(nesting_refusal(universal, global), None);
        assert_eq!(nesting_refusal(local, universal), None);
        assert_eq!(nesting_refusal(local, local), None);
        assert_eq!(nesting_refusal(local, global), None);
        // Distribution groups (no security bit) follow the same scopes.
        assert_eq!(nesting_refusal(2, 8), Some(Nesting::UniversalInGlobal));
    }
}
