//! The service account the agent signs in as, and the six tasks of the
//! Delegation of Control wizard it is given (install guide steps 6–14):
//! the ACEs each task writes, and the ready-to-run scripts that create the
//! account and grant them — PowerShell with `dsacls` for Windows,
//! `samba-tool` for Samba. `ferry-agent prepare` prints them, the console's
//! install dialog shows them, and `ferry-agent check` verifies the result
//! against the same table.

use uuid::Uuid;

/// The `user` class (schemaIDGUID).
pub const USER_CLASS: Uuid = Uuid::from_u128(0xbf967aba_0de6_11d0_a285_00aa003049e2);
/// The `group` class.
pub const GROUP_CLASS: Uuid = Uuid::from_u128(0xbf967a9c_0de6_11d0_a285_00aa003049e2);
/// The Reset-Password extended right.
pub const RESET_PASSWORD: Uuid = Uuid::from_u128(0x00299570_246d_11d0_a768_00aa006e0529);
/// The `pwdLastSet` attribute.
pub const PWD_LAST_SET: Uuid = Uuid::from_u128(0xbf967a0a_0de6_11d0_a285_00aa003049e2);
/// The `member` attribute.
pub const MEMBER_ATTR: Uuid = Uuid::from_u128(0xbf9679c0_0de6_11d0_a285_00aa003049e2);
/// The `gPLink` attribute.
pub const GP_LINK: Uuid = Uuid::from_u128(0xf30e3bbe_9ff0_11d1_b603_0000f80367c1);
/// The `gPOptions` attribute.
pub const GP_OPTIONS: Uuid = Uuid::from_u128(0xf30e3bbf_9ff0_11d1_b603_0000f80367c1);

/// The name the scripts give the service account: an ordinary name that
/// passes the install rules (no "ferry", at most 20 characters).
pub const DEFAULT_ACCOUNT: &str = "svc-dirsync";

/// The first six "common tasks" of the Delegation of Control wizard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Create, delete, and manage user accounts.
    ManageUsers,
    /// Reset user passwords and force password change at next logon.
    ResetPasswords,
    /// Read all user information.
    ReadUsers,
    /// Create, delete and manage groups.
    ManageGroups,
    /// Modify the membership of a group.
    ModifyMembership,
    /// Manage Group Policy links.
    ManageGpLinks,
}

/// One ACE a task writes on the delegated container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The rights, in SDDL (`CCDC`, `GA`, `CR`, `RP`, `RPWP`).
    pub rights: &'static str,
    /// The class, attribute or extended right it is limited to (its `dsacls` name and GUID).
    pub object: Option<(&'static str, Uuid)>,
    /// `None`: this container and everything below it. `Some(class)`: only
    /// objects of that class below it (inherit-only).
    pub inherited_by: Option<(&'static str, Uuid)>,
}

impl Grant {
    /// The ACE in SDDL, for `sid`.
    pub fn sddl(&self, sid: &str) -> String {
        format!(
            "(OA;{};{};{};{};{sid})",
            if self.inherited_by.is_some() { "CIIO" } else { "CI" },
            self.rights,
            self.object.map(|(_, g)| g.to_string()).unwrap_or_default(),
            self.inherited_by.map(|(_, g)| g.to_string()).unwrap_or_default(),
        )
    }

    /// `dsacls`'s form: its inheritance switch and `PERMS;OBJECT;CLASS` (empty
    /// fields at the end left out; extended rights are `CA` to dsacls).
    pub fn dsacls(&self) -> (&'static str, String) {
        let rights = if self.rights == "CR" { "CA" } else { self.rights };
        let mut perm = rights.to_owned();
        match (self.object, self.inherited_by) {
            (Some((o, _)), Some((c, _))) => perm.push_str(&format!(";{o};{c}")),
            (Some((o, _)), None) => perm.push_str(&format!(";{o}")),
            (None, Some((c, _))) => perm.push_str(&format!(";;{c}")),
            (None, None) => {}
        }
        (if self.inherited_by.is_some() { "/I:S" } else { "/I:T" }, perm)
    }
}

impl Task {
    /// All six, in the wizard's order.
    pub const ALL: [Task; 6] = [
        Task::ManageUsers,
        Task::ResetPasswords,
        Task::ReadUsers,
        Task::ManageGroups,
        Task::ModifyMembership,
        Task::ManageGpLinks,
    ];

    /// The wizard's wording.
    pub fn title(self) -> &'static str {
        match self {
            Task::ManageUsers => "Create, delete, and manage user accounts",
            Task::ResetPasswords => "Reset user passwords and force password change at next logon",
            Task::ReadUsers => "Read all user information",
            Task::ManageGroups => "Create, delete and manage groups",
            Task::ModifyMembership => "Modify the membership of a group",
            Task::ManageGpLinks => "Manage Group Policy links",
        }
    }

    /// The ACEs the wizard writes for this task.
    pub fn grants(self) -> Vec<Grant> {
        let user = Some(("user", USER_CLASS));
        let group = Some(("group", GROUP_CLASS));
        let g = |rights, object, inherited_by| Grant {
            rights,
            object,
            inherited_by,
        };
        match self {
            Task::ManageUsers => vec![g("CCDC", user, None), g("GA", None, user)],
            Task::ResetPasswords => vec![
                g("CR", Some(("Reset Password", RESET_PASSWORD)), user),
                g("RPWP", Some(("pwdLastSet", PWD_LAST_SET)), user),
            ],
            Task::ReadUsers => vec![g("RP", None, user)],
            Task::ManageGroups => vec![g("CCDC", group, None), g("GA", None, group)],
            Task::ModifyMembership => vec![g("RPWP", Some(("member", MEMBER_ATTR)), group)],
            Task::ManageGpLinks => vec![
                g("RPWP", Some(("gPLink", GP_LINK)), None),
                g("RPWP", Some(("gPOptions", GP_OPTIONS)), None),
            ],
        }
    }

    /// The ACEs the wizard writes for this task, in SDDL, for `sid`.
    pub fn sddl(self, sid: &str) -> String {
        self.grants().iter().map(|g| g.sddl(sid)).collect()
    }
}

/// What the scripts need to know of the domain.
#[derive(Debug, Clone)]
pub struct ServiceAccountPlan {
    /// The Root DN, e.g. `DC=example,DC=com`.
    pub root_dn: String,
    /// The domain's NetBIOS name, e.g. `EXAMPLE`.
    pub netbios: String,
    /// The account's name (`sAMAccountName`).
    pub account: String,
    /// Where the tasks are delegated (the Root DN, or the OU the agent works in).
    pub scope: String,
    /// The DC samba-tool talks to, `ldap://dc.example.com`.
    pub samba_url: String,
}

impl ServiceAccountPlan {
    /// The defaults for a domain: the account `svc-dirsync` in `CN=Users`,
    /// the tasks delegated on the Root DN, samba-tool talking to the
    /// domain's DNS name.
    pub fn for_domain(root_dn: &str, netbios: &str) -> ServiceAccountPlan {
        ServiceAccountPlan {
            root_dn: root_dn.to_owned(),
            netbios: netbios.to_owned(),
            account: DEFAULT_ACCOUNT.to_owned(),
            scope: root_dn.to_owned(),
            samba_url: format!("ldap://{}", dns_name(root_dn)),
        }
    }

    /// `DOMAIN\account`, as the wizard asks for it.
    pub fn trustee(&self) -> String {
        format!("{}\\{}", self.netbios, self.account)
    }

    /// PowerShell for a Windows domain controller (the ActiveDirectory
    /// module and `dsacls`, both there on a DC): the account with "Password
    /// never expires" and without "must change password", then the six tasks.
    pub fn powershell(&self) -> String {
        let mut s = format!(
            "# Ferry: the sync agent's service account {trustee}, delegated the six tasks\n\
             # on {scope}. Run in an elevated PowerShell on a domain controller;\n\
             # it asks for the new account's password.\n\
             $ErrorActionPreference = 'Stop'\n\
             $Scope = '{scope}'\n\
             $Trustee = '{trustee}'\n\
             $Password = Read-Host -AsSecureString \"Password for $Trustee\"\n\
             New-ADUser -Name '{account}' -SamAccountName '{account}' `\n\
             \x20 -UserPrincipalName '{account}@{dns}' -Path 'CN=Users,{root}' `\n\
             \x20 -AccountPassword $Password -Enabled $true `\n\
             \x20 -PasswordNeverExpires $true -ChangePasswordAtLogon $false\n",
            trustee = ps_quote(&self.trustee()),
            scope = ps_quote(&self.scope),
            account = ps_quote(&self.account),
            dns = dns_name(&self.root_dn),
            root = ps_quote(&self.root_dn),
        );
        for task in Task::ALL {
            s.push_str(&format!("# {}\n", task.title()));
            for g in task.grants() {
                let (inherit, perm) = g.dsacls();
                s.push_str(&format!("dsacls $Scope {inherit} /G \"${{Trustee}}:{perm}\"\n"));
            }
        }
        s.push_str("Write-Host \"Done: enter $Trustee and its password in the agent's setup.\"\n");
        s
    }

    /// bash with `samba-tool` for a Samba DC: the same account and ACEs.
    pub fn samba(&self) -> String {
        let mut s = format!(
            "#!/bin/bash\n\
             # Ferry: the sync agent's service account {trustee}, delegated the six tasks\n\
             # on {scope}. Run on the Samba DC (or a host with samba-tool); it asks for\n\
             # the Administrator's password, then the new account's (twice).\n\
             set -euo pipefail\n\
             H='{url}'\n\
             SCOPE='{scope}'\n\
             read -rsp 'Password of {netbios}\\Administrator: ' PASSWD; echo; export PASSWD\n\
             st() {{ samba-tool \"$@\" -H \"$H\" -U Administrator; }}\n\
             grant() {{ st dsacl set --objectdn=\"$SCOPE\" --sddl=\"$1\"; }}\n\
             st user create '{account}'\n\
             st user setexpiry '{account}' --noexpiry\n\
             SID=$(st user show '{account}' --attributes=objectSid | sed -n 's/^objectSid: //p')\n\
             U={user}  # the user class\n\
             G={group}  # the group class\n",
            trustee = self.trustee(),
            scope = sh_quote(&self.scope),
            url = sh_quote(&self.samba_url),
            netbios = self.netbios,
            account = sh_quote(&self.account),
            user = USER_CLASS,
            group = GROUP_CLASS,
        );
        for task in Task::ALL {
            s.push_str(&format!("# {}\n", task.title()));
            for g in task.grants() {
                let ace = g
                    .sddl("$SID")
                    .replace(&USER_CLASS.to_string(), "$U")
                    .replace(&GROUP_CLASS.to_string(), "$G");
                s.push_str(&format!("grant \"{ace}\"\n"));
            }
        }
        s.push_str(&format!(
            "echo \"Done: enter {} and its password in the agent's setup.\"\n",
            self.trustee().replace('\\', "\\\\")
        ));
        s
    }
}

/// `example.com` for `DC=example,DC=com`.
fn dns_name(root_dn: &str) -> String {
    root_dn
        .split(',')
        .filter_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("DC").then(|| v.trim().to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Inside PowerShell single quotes, a quote is doubled.
fn ps_quote(s: &str) -> String {
    s.replace('\'', "''")
}

/// Inside shell single quotes, a quote ends, is escaped, and starts again.
fn sh_quote(s: &str) -> String {
    s.replace('\'', "'\\''")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ServiceAccountPlan {
        ServiceAccountPlan::for_domain("DC=example,DC=com", "EXAMPLE")
    }

    #[test]
    fn the_powershell_creates_the_account_as_the_rules_want_and_writes_the_wizards_aces() {
        let ps = plan().powershell();
        for line in [
            "$Scope = 'DC=example,DC=com'",
            "$Trustee = 'EXAMPLE\\svc-dirsync'",
            "New-ADUser -Name 'svc-dirsync' -SamAccountName 'svc-dirsync' `",
            "  -UserPrincipalName 'svc-dirsync@example.com' -Path 'CN=Users,DC=example,DC=com' `",
            "  -AccountPassword $Password -Enabled $true `",
            "  -PasswordNeverExpires $true -ChangePasswordAtLogon $false",
            // The six tasks, exactly as the Delegation of Control wizard writes them.
            "dsacls $Scope /I:T /G \"${Trustee}:CCDC;user\"",
            "dsacls $Scope /I:S /G \"${Trustee}:GA;;user\"",
            "dsacls $Scope /I:S /G \"${Trustee}:CA;Reset Password;user\"",
            "dsacls $Scope /I:S /G \"${Trustee}:RPWP;pwdLastSet;user\"",
            "dsacls $Scope /I:S /G \"${Trustee}:RP;;user\"",
            "dsacls $Scope /I:T /G \"${Trustee}:CCDC;group\"",
            "dsacls $Scope /I:S /G \"${Trustee}:GA;;group\"",
            "dsacls $Scope /I:S /G \"${Trustee}:RPWP;member;group\"",
            "dsacls $Scope /I:T /G \"${Trustee}:RPWP;gPLink\"",
            "dsacls $Scope /I:T /G \"${Trustee}:RPWP;gPOptions\"",
        ] {
            assert!(ps.lines().any(|l| l == line), "{line:?} missing from:\n{ps}");
        }
        assert_eq!(ps.lines().filter(|l| l.starts_with("dsacls ")).count(), 10, "{ps}");
        assert!(ps.lines().all(|l| l.len() <= 100), "every line is short:\n{ps}");
        assert!(!DEFAULT_ACCOUNT.contains("ferry") && DEFAULT_ACCOUNT.len() <= 20);
    }

    #[test]
    fn the_samba_script_writes_the_same_aces_in_short_lines() {
        let sh = plan().samba();
        assert!(sh.contains("H='ldap://example.com'"), "{sh}");
        assert!(sh.contains("st user create 'svc-dirsync'\n"), "{sh}");
        assert!(sh.contains("st user setexpiry 'svc-dirsync' --noexpiry\n"), "{sh}");
        assert!(
            sh.contains("grant() { st dsacl set --objectdn=\"$SCOPE\" --sddl=\"$1\"; }\n"),
            "{sh}"
        );
        let aces: String = sh
            .lines()
            .filter_map(|l| l.strip_prefix("grant \""))
            .map(|l| l.trim_end_matches('"'))
            .collect();
        let expected: String = Task::ALL
            .iter()
            .map(|t| t.sddl("$SID"))
            .collect::<String>()
            .replace(&USER_CLASS.to_string(), "$U")
            .replace(&GROUP_CLASS.to_string(), "$G");
        assert_eq!(aces, expected);
        assert!(sh.lines().all(|l| l.len() <= 100), "every line is short:\n{sh}");
    }

    #[test]
    fn sddl_matches_the_delegation_wizard() {
        let sid = "S-1-5-21-1-2-3-1105";
        assert_eq!(
            Task::ManageUsers.sddl(sid),
            format!("(OA;CI;CCDC;{USER_CLASS};;{sid})(OA;CIIO;GA;;{USER_CLASS};{sid})")
        );
        assert_eq!(
            Task::ResetPasswords.sddl(sid),
            format!("(OA;CIIO;CR;{RESET_PASSWORD};{USER_CLASS};{sid})(OA;CIIO;RPWP;{PWD_LAST_SET};{USER_CLASS};{sid})")
        );
        assert_eq!(
            Task::ManageGpLinks.sddl(sid),
            format!("(OA;CI;RPWP;{GP_LINK};;{sid})(OA;CI;RPWP;{GP_OPTIONS};;{sid})")
        );
        assert_eq!(plan().trustee(), "EXAMPLE\\svc-dirsync");
    }
}
