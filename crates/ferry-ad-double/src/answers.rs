//! Every answer the double gives in Windows AD's place: the LDAP result
//! code and AD's extended error string (a Win32 error code in hex, then
//! AD's own diagnostic). Clients act on the result code and the leading
//! Win32 code; the DSID in the middle names the line of AD's source that
//! refused and differs between Windows builds, so these carry one seen on
//! Windows Server. The sources are in `docs/ad-double.md`.

use ldap3_proto::proto::{LdapBindResponse, LdapExtendedResponse, LdapOp, LdapResult, LdapResultCode};

/// A refusal, as AD gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The LDAP result code.
    pub code: LdapResultCode,
    /// AD's extended error string.
    pub message: String,
    /// The double's rule that refused (for the log).
    pub rule: &'static str,
}

impl Refusal {
    /// The response to `request` carrying this refusal.
    pub fn response_to(&self, request: &LdapOp) -> Option<LdapOp> {
        response_for(request, self.code.clone(), &self.message)
    }
}

/// A response of `request`'s own kind with this result, or `None` for an
/// operation that has no response (unbind, abandon).
pub fn response_for(request: &LdapOp, code: LdapResultCode, message: &str) -> Option<LdapOp> {
    let res = LdapResult {
        code,
        matcheddn: String::new(),
        message: message.to_owned(),
        referral: Vec::new(),
    };
    Some(match request {
        LdapOp::AddRequest(_) => LdapOp::AddResponse(res),
        LdapOp::ModifyRequest(_) => LdapOp::ModifyResponse(res),
        LdapOp::ModifyDNRequest(_) => LdapOp::ModifyDNResponse(res),
        LdapOp::DelRequest(_) => LdapOp::DelResponse(res),
        LdapOp::SearchRequest(_) => LdapOp::SearchResultDone(res),
        LdapOp::CompareRequest(_) => LdapOp::CompareResult(res),
        LdapOp::BindRequest(_) => LdapOp::BindResponse(LdapBindResponse { res, saslcreds: None }),
        LdapOp::ExtendedRequest(_) => LdapOp::ExtendedResponse(LdapExtendedResponse {
            res,
            name: None,
            value: None,
        }),
        _ => return None,
    })
}

/// `sAMAccountName` of a user or computer over 20 characters: SAM refuses
/// it with ERROR_INVALID_PARAMETER (0x57) wrapped as a SysErr, rc 80.
pub fn sam_account_name_too_long() -> Refusal {
    Refusal {
        code: LdapResultCode::Other,
        message: "00000523: SysErr: DSID-031A1256, problem 22 (Invalid argument), data 0\n".into(),
        rule: "names: sAMAccountName over 20 characters",
    }
}

/// An RDN value over its attribute's rangeUpper (64 for `cn`, `ou`):
/// ERROR_DS_RANGE_CONSTRAINT (0x2082), constraintViolation.
pub fn rdn_too_long(attr: &str, len: usize) -> Refusal {
    Refusal {
        code: LdapResultCode::ConstraintViolation,
        message: format!(
            "00002082: AtrErr: DSID-03152F6B, #1:\n\t0: 00002082: DSID-03152F6B, problem 1005 (CONSTRAINT_ATT_TYPE), data 0, Att 3 ({attr}):len {len}\n"
        ),
        rule: "names: RDN over 64 characters",
    }
}

/// The group nesting a scope forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// A universal group as a member of a global group (ERROR_DS_GLOBAL_CANT_HAVE_UNIVERSAL_MEMBER, 8517).
    UniversalInGlobal,
    /// A domain-local group as a member of a global group (ERROR_DS_GLOBAL_CANT_HAVE_LOCAL_MEMBER, 8516).
    LocalInGlobal,
    /// A domain-local group as a member of a universal group (ERROR_DS_UNIVERSAL_CANT_HAVE_LOCAL_MEMBER, 8518).
    LocalInUniversal,
}

impl Nesting {
    /// The Win32 error code AD answers with.
    pub fn win32(self) -> u32 {
        match self {
            Nesting::LocalInGlobal => 8516,
            Nesting::UniversalInGlobal => 8517,
            Nesting::LocalInUniversal => 8518,
        }
    }
}

/// A member whose group scope the group's scope may not contain.
pub fn nesting(n: Nesting) -> Refusal {
    Refusal {
        code: LdapResultCode::UnwillingToPerform,
        message: format!(
            "{:08X}: SvcErr: DSID-031A124C, problem 5003 (WILL_NOT_PERFORM), data 0\n",
            n.win32()
        ),
        rule: match n {
            Nesting::UniversalInGlobal => "nesting: universal group in a global group",
            Nesting::LocalInGlobal => "nesting: domain-local group in a global group",
            Nesting::LocalInUniversal => "nesting: domain-local group in a universal group",
        },
    }
}

/// A write to an AdminSDHolder-protected object (`adminCount=1`) by an
/// account without rights there: ERROR_DS_INSUFF_ACCESS_RIGHTS (0x2098).
pub fn protected_object() -> Refusal {
    Refusal {
        code: LdapResultCode::InsufficentAccessRights,
        message: "00002098: SecErr: DSID-03150F94, problem 4003 (INSUFF_ACCESS_RIGHTS), data 0\n".into(),
        rule: "protected object (adminCount=1, AdminSDHolder)",
    }
}

/// A delete of an object with children without the tree-delete control:
/// ERROR_DS_CANT_ON_NON_LEAF (0x2015), notAllowedOnNonLeaf.
pub fn non_leaf() -> Refusal {
    Refusal {
        code: LdapResultCode::NotAllowedOnNonLeaf,
        message: "00002015: UpdErr: DSID-031A1236, problem 6003 (CANT_ON_NON_LEAF), data 0\n".into(),
        rule: "delete of an object with children",
    }
}

/// The Win32 error code at the front of an AD error string.
pub fn win32_code(message: &str) -> Option<u32> {
    let head = message.get(..8)?;
    (message.as_bytes().get(8) == Some(&b':')).then_some(())?;
    u32::from_str_radix(head, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_leads_with_its_win32_code() {
        assert_eq!(win32_code(&sam_account_name_too_long().message), Some(0x523));
        assert_eq!(win32_code(&rdn_too_long("cn", 70).message), Some(0x2082));
        assert_eq!(win32_code(&nesting(Nesting::UniversalInGlobal).message), Some(8517));
        assert_eq!(win32_code(&nesting(Nesting::LocalInGlobal).message), Some(8516));
        assert_eq!(win32_code(&nesting(Nesting::LocalInUniversal).message), Some(8518));
        assert_eq!(win32_code(&protected_object().message), Some(0x2098));
        assert_eq!(win32_code(&non_leaf().message), Some(0x2015));
    }

    #[test]
    fn a_refusal_answers_in_the_request_s_own_response() {
        let r = non_leaf();
        assert!(matches!(
            r.response_to(&LdapOp::DelRequest("CN=x".into())),
            Some(LdapOp::DelResponse(res)) if res.code == LdapResultCode::NotAllowedOnNonLeaf
        ));
        assert!(r.response_to(&LdapOp::UnbindRequest).is_none());
    }
}
