//! `ferry-agent prepare`: the install guide's steps 6–14 as a script to
//! run on the domain controller — the service account, with a name the
//! checks accept, "Password never expires" and no "must change password",
//! then the six delegated tasks. PowerShell and `dsacls` for Windows,
//! `samba-tool` for Samba; `ferry-agent check` then passes with nothing
//! else to do. The scripts come from [`ferry_proto::delegation`], the same
//! table the console's install dialog and the checks use.

use ferry_proto::delegation::ServiceAccountPlan;

use super::{dc_url_problem, root_dn_problem};
use crate::ad::dn::dns_name_of;
use crate::preflight::account_name_problem;

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// PowerShell with the ActiveDirectory module and `dsacls`.
    Windows,
    /// bash with `samba-tool`.
    Samba,
}

/// What `prepare` is asked for.
#[derive(Debug, Clone)]
pub struct PrepareInput {
    /// The Root DN.
    pub root_dn: String,
    /// The NetBIOS name; the Root DN's first part, upper-cased, when not given.
    pub netbios: Option<String>,
    /// The account's name.
    pub account: String,
    /// Where to delegate; the Root DN when not given.
    pub scope: Option<String>,
    /// The DC samba-tool talks to; `ldap://<domain>` when not given.
    pub ldap_url: Option<String>,
    /// Which script.
    pub platform: Platform,
}

/// The script, or why the input will not do.
pub fn script(input: &PrepareInput) -> Result<String, String> {
    if let Some(m) = root_dn_problem(&input.root_dn) {
        return Err(m);
    }
    let root_dn = input.root_dn.trim();
    let account = input.account.trim();
    if let Some(m) = account_name_problem(account) {
        return Err(m);
    }
    if account.is_empty()
        || account.chars().count() > 20
        || account.contains(|c: char| "\"/\\[]:;|=,+*?<>@ '".contains(c))
    {
        return Err(format!(
            "{account:?} is not a name AD accepts for an account: at most 20 characters, without spaces or any of \" / \\ [ ] : ; | = , + * ? < > @ '"
        ));
    }
    let netbios = match &input.netbios {
        Some(n) if !n.trim().is_empty() => n.trim().to_uppercase(),
        _ => dns_name_of(root_dn)
            .and_then(|d| d.split('.').next().map(str::to_uppercase))
            .unwrap_or_default(),
    };
    let mut plan = ServiceAccountPlan::for_domain(root_dn, &netbios);
    plan.account = account.to_owned();
    if let Some(scope) = input.scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        plan.scope = scope.to_owned();
    }
    if let Some(url) = &input.ldap_url {
        if let Some(m) = dc_url_problem(url) {
            return Err(m);
        }
        let host = url.trim().split("://").nth(1).unwrap_or_default();
        plan.samba_url = format!("ldap://{}", host.split(['/', ':']).next().unwrap_or(host));
    }
    Ok(match input.platform {
        Platform::Windows => plan.powershell(),
        Platform::Samba => plan.samba(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PrepareInput {
        PrepareInput {
            root_dn: "DC=corp,DC=example,DC=com".into(),
            netbios: None,
            account: "svc-dirsync".into(),
            scope: None,
            ldap_url: None,
            platform: Platform::Windows,
        }
    }

    #[test]
    fn the_script_is_for_this_domain() {
        let ps = script(&input()).unwrap();
        assert!(ps.contains("$Trustee = 'CORP\\svc-dirsync'"), "{ps}");
        assert!(ps.contains("-UserPrincipalName 'svc-dirsync@corp.example.com'"), "{ps}");
        let sh = script(&PrepareInput {
            platform: Platform::Samba,
            netbios: Some("EXAMPL".into()),
            ldap_url: Some("ldaps://dc1.corp.example.com:636".into()),
            scope: Some("OU=Sync,DC=corp,DC=example,DC=com".into()),
            ..input()
        })
        .unwrap();
        assert!(sh.contains("H='ldap://dc1.corp.example.com'"), "{sh}");
        assert!(sh.contains("SCOPE='OU=Sync,DC=corp,DC=example,DC=com'"), "{sh}");
        assert!(sh.contains("EXAMPL\\Administrator"), "{sh}");
    }

    #[test]
    fn names_the_checks_refuse_are_refused_here() {
        for (account, says) in [
            ("ferry-sync", "contains \"ferry\""),
            ("a-name-that-is-much-too-long", "at most 20 characters"),
            ("svc sync", "without spaces"),
        ] {
            let e = script(&PrepareInput {
                account: account.into(),
                ..input()
            })
            .unwrap_err();
            assert!(e.contains(says), "{account}: {e}");
        }
        let e = script(&PrepareInput {
            root_dn: "OU=Sync,DC=example,DC=com".into(),
            ..input()
        })
        .unwrap_err();
        assert!(e.contains("only DC= parts"), "{e}");
    }
}
