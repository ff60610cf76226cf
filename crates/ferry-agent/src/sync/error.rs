//! What the engine does with a failure, decided in one place. A refusal
//! from the other side that retrying cannot change (a name AD already has,
//! a protected object, a value AD's rules refuse) is recorded against the
//! object as a *sync error* and everything else flows on; a fault in passing
//! (the DC or the cloud unreachable, busy, restarting) is retried with
//! backoff. Nothing is ever read as "absent" or "empty".

use crate::ad::AdError;
use crate::cloud::CloudError;

/// A failed step of the sync.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// Try again after a pause: nothing is wrong with the change itself.
    #[error("{0}")]
    Retry(String),
    /// The other side refused this change for good: record it and go on.
    #[error("{code}: {message}")]
    Refused {
        /// The refusing side's code (`ldap 68 entryAlreadyExists`, `http 409 conflict`).
        code: String,
        /// Its message.
        message: String,
    },
}

impl From<AdError> for SyncError {
    fn from(e: AdError) -> Self {
        let message = e.to_string();
        let refused = |code: &str| SyncError::Refused {
            code: code.to_owned(),
            message: message.clone(),
        };
        match &e {
            AdError::PasswordPolicy(_) => refused("ldap 19 constraintViolation (password policy)"),
            AdError::NoSuchObject(_) => refused("ldap 32 noSuchObject"),
            AdError::MissingReference(_) => refused("ldap 32 noSuchObject (a member or container)"),
            AdError::AlreadyExists(_) => refused("ldap 68 entryAlreadyExists"),
            AdError::AccessDenied(_) => refused("ldap 50 insufficientAccessRights"),
            AdError::Dn(_) => refused("ldap 34 invalidDNSyntax"),
            // Busy, unavailable, time or admin limits, an operations error: in passing.
            AdError::Ldap { rc, name, .. } if ![1, 3, 11, 51, 52].contains(rc) => refused(&format!("ldap {rc} {name}")),
            _ => SyncError::Retry(message),
        }
    }
}

impl From<CloudError> for SyncError {
    fn from(e: CloudError) -> Self {
        match &e {
            // The request itself is wrong for the cloud: retrying sends the same.
            // …and so is a link the cloud's identity rules forbid.
            CloudError::Refused { status, code, .. }
                if ((400..500).contains(status) && ![401, 403, 408, 409, 413, 429].contains(status))
                    || (*status == 409 && matches!(code.as_str(), "other_domain" | "already_linked")) =>
            {
                SyncError::Refused {
                    code: format!("http {status} {code}"),
                    message: e.to_string(),
                }
            }
            _ => SyncError::Retry(e.to_string()),
        }
    }
}

impl From<String> for SyncError {
    fn from(e: String) -> Self {
        SyncError::Retry(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ad::error::from_result;

    #[test]
    fn refusals_are_recorded_and_faults_retried() {
        let refused = |e: AdError| matches!(SyncError::from(e), SyncError::Refused { .. });
        assert!(refused(from_result(68, "00002071: UpdErr", "create")));
        assert!(
            refused(from_result(80, "00000523: SysErr: problem 22", "create")),
            "AD's long sAMAccountName"
        );
        assert!(
            refused(from_result(53, "00002145: SvcErr", "add member")),
            "a nesting rule"
        );
        assert!(refused(from_result(50, "00002098: SecErr", "modify")));
        assert!(refused(from_result(19, "0000052D: Constraint", "password")));
        assert!(!refused(from_result(51, "busy", "modify")));
        assert!(!refused(from_result(52, "unavailable", "modify")));
        assert!(!refused(AdError::Connect {
            url: "ldaps://dc".into(),
            detail: "connection refused".into()
        }));
        let cloud = |status: u16| {
            SyncError::from(CloudError::Refused {
                status,
                code: "x".into(),
                message: "y".into(),
            })
        };
        assert!(matches!(cloud(400), SyncError::Refused { .. }));
        assert!(
            matches!(cloud(413), SyncError::Retry(_)),
            "a body too large is split, not given up"
        );
        assert!(matches!(cloud(503), SyncError::Retry(_)));
        assert!(matches!(cloud(401), SyncError::Retry(_)));
    }
}
