//! Errors of the AD connector, in words an admin can act on. AD puts a
//! Win32 error code in front of its diagnostic text (`0000052D: …`) and,
//! for binds, a `data 52e` sub-code; both are decoded here.

/// An error talking to a domain controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdError {
    /// The DC could not be reached, or the connection failed.
    #[error("cannot reach the domain controller at {url}: {detail}. Check the address, that ports 636/389 are open, and that the DC is running")]
    Connect {
        /// LDAP URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// TLS setup or verification failed.
    #[error("TLS to {url} failed: {detail}")]
    Tls {
        /// LDAP URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The bind was refused.
    #[error("{0}")]
    Bind(String),
    /// The account name is not in a form AD accepts.
    #[error("{0}")]
    AccountForm(String),
    /// A password write was attempted on an unencrypted connection.
    #[error("refusing to send a password over an unencrypted connection: use ldaps:// or StartTLS")]
    PasswordNeedsEncryption,
    /// The password does not meet the domain's policy.
    #[error(
        "the domain refused the password: it does not meet the password policy (length, complexity or history). {0}"
    )]
    PasswordPolicy(String),
    /// The object does not exist.
    #[error("no such object: {0}")]
    NoSuchObject(String),
    /// A DN named in the change (e.g. a group member) does not exist.
    #[error("a DN in the request does not exist (a member, or the target container): {0}")]
    MissingReference(String),
    /// An object with that name exists.
    #[error("an object with that name already exists: {0}")]
    AlreadyExists(String),
    /// The service account may not do this.
    #[error("the service account is not allowed to do this: {0}. Check the delegated rights (ferry-agent check)")]
    AccessDenied(String),
    /// The server answered something we cannot use.
    #[error("unexpected answer from the domain controller: {0}")]
    Protocol(String),
    /// Any other LDAP result.
    #[error("LDAP error {rc} ({name}): {text}")]
    Ldap {
        /// Result code.
        rc: u32,
        /// Its name.
        name: &'static str,
        /// The server's diagnostic text.
        text: String,
    },
    /// A malformed DN.
    #[error(transparent)]
    Dn(#[from] super::dn::DnError),
}

/// The Win32 error code AD puts in front of its diagnostic text.
pub fn win32_code(text: &str) -> Option<u32> {
    let head = text.get(..8)?;
    if text.as_bytes().get(8) != Some(&b':') {
        return None;
    }
    u32::from_str_radix(head, 16).ok()
}

/// The `data XXX` sub-code of a bind failure (`…, data 52e, v4563`).
pub fn bind_data_code(text: &str) -> Option<u32> {
    let i = text.find("data ")?;
    let rest = &text[i + 5..];
    let end = rest.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(rest.len());
    u32::from_str_radix(&rest[..end], 16).ok()
}

fn rc_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        16 => "noSuchAttribute",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        68 => "entryAlreadyExists",
        80 => "other",
        _ => "unknown",
    }
}

/// Maps an LDAP result (code and text) to an error; `context` names what was attempted.
pub fn from_result(rc: u32, text: &str, context: &str) -> AdError {
    let code = win32_code(text);
    let detail = format!("{context}: {}", text.trim());
    match (rc, code) {
        (_, Some(0x52d)) => AdError::PasswordPolicy(detail),
        (_, Some(0x525)) => AdError::MissingReference(detail),
        (32, _) => AdError::NoSuchObject(detail),
        (68, _) | (_, Some(0x2071)) => AdError::AlreadyExists(detail),
        (50, _) | (_, Some(0x5)) => AdError::AccessDenied(detail),
        (8, _) => {
            AdError::Bind("the DC requires an encrypted connection for this bind: use ldaps:// or StartTLS".into())
        }
        _ => AdError::Ldap {
            rc,
            name: rc_name(rc),
            text: detail,
        },
    }
}

/// Whether a member removal failed because the member is not in the group:
/// AD answers unwillingToPerform with ERROR_MEMBER_NOT_IN_GROUP (00000561),
/// Samba unwillingToPerform "Attribute member doesn't exist" for an
/// existing object, or noSuchAttribute.
pub fn is_not_a_member(e: &AdError) -> bool {
    match e {
        AdError::Ldap { rc: 53, text, .. } => text.contains("00000561") || text.contains("doesn't exist"),
        AdError::Ldap { rc: 16, .. } => true,
        _ => false,
    }
}

/// Explains a failed bind as `DOMAIN\user`.
pub fn bind_failure(rc: u32, text: &str, user: &str) -> AdError {
    if rc == 8 {
        return from_result(rc, text, "bind");
    }
    let why = match bind_data_code(text) {
        Some(0x525) => "the account does not exist",
        Some(0x52e) => "the user name or password is wrong",
        Some(0x530) => "the account may not log on at this time",
        Some(0x531) => "the account may not log on from this computer",
        Some(0x532) => "the account's password has expired: set a new one and tick \"Password never expires\"",
        Some(0x533) => "the account is disabled: enable it in Active Directory Users and Computers",
        Some(0x701) => "the account has expired",
        Some(0x773) => {
            "the account must change its password at next logon: untick that option and set \"Password never expires\""
        }
        Some(0x775) => "the account is locked out: unlock it, then check the password",
        _ if rc == 49 => "the user name or password is wrong",
        _ => "",
    };
    if why.is_empty() {
        return from_result(rc, text, &format!("bind as {user}"));
    }
    AdError::Bind(format!("cannot sign in to the domain as {user}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ad_codes_are_decoded() {
        assert_eq!(
            win32_code("0000052D: Constraint violation - check_password_restrictions"),
            Some(0x52d)
        );
        assert_eq!(win32_code("no code here"), None);
        assert_eq!(
            bind_data_code("80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data 52e, v4563"),
            Some(0x52e)
        );
        assert!(matches!(
            from_result(19, "0000052D: Constraint violation", "set password"),
            AdError::PasswordPolicy(_)
        ));
        assert!(matches!(
            from_result(80, "00000525: Unable to find", "add member"),
            AdError::MissingReference(_)
        ));
        assert!(matches!(
            from_result(32, "0000208D: NameErr", "read"),
            AdError::NoSuchObject(_)
        ));
        assert!(matches!(
            from_result(68, "00002071: UpdErr", "add"),
            AdError::AlreadyExists(_)
        ));
        assert!(matches!(
            from_result(50, "00000005: SecErr", "add"),
            AdError::AccessDenied(_)
        ));
        assert!(matches!(
            from_result(53, "odd", "x"),
            AdError::Ldap {
                rc: 53,
                name: "unwillingToPerform",
                ..
            }
        ));
    }

    #[test]
    fn a_member_already_gone_is_recognised() {
        let ad = from_result(
            53,
            "00000561: SvcErr: DSID-031A1021, problem 5003 (WILL_NOT_PERFORM), data 0",
            "remove",
        );
        assert!(is_not_a_member(&ad));
        let samba = from_result(53, "Attribute member doesn't exist for target GUID 4522da2b", "remove");
        assert!(is_not_a_member(&samba));
        assert!(is_not_a_member(&from_result(16, "No such attribute", "remove")));
        assert!(!is_not_a_member(&from_result(
            53,
            "00002035: Unable to find GUID",
            "remove"
        )));
        assert!(!is_not_a_member(&from_result(50, "00002098: SecErr", "remove")));
    }

    #[test]
    fn bind_failures_say_what_to_fix() {
        let e = bind_failure(
            49,
            "80090308: LdapErr: DSID-0C090447, comment: AcceptSecurityContext error, data 533, v3839",
            "EX\\svc",
        );
        assert!(e.to_string().contains("disabled"), "{e}");
        let e = bind_failure(49, "80090308: LdapErr: ..., data 773, v4563", "EX\\svc");
        assert!(e.to_string().contains("must change its password"), "{e}");
        let e = bind_failure(49, "", "EX\\svc");
        assert!(e.to_string().contains("user name or password is wrong"), "{e}");
    }
}
