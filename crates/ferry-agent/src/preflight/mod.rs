//! The preflight: before the agent runs, check the service account the
//! way the install guide asks for it (seed steps 5–15), each item ✓ or ✗
//! with how to fix it. Rights are judged from the security descriptor of
//! the sync scope (what the Delegation of Control wizard writes), never by
//! trying destructive writes.

pub mod sd;

use ldap3::controls::RawControl;
use ldap3::Scope;

use self::sd::{granted, parse_dacl, rid, sid_to_string, AppliesTo, Need, Sid};
use crate::ad::dn::{dn_within, same_dn, Dn};
use crate::ad::write::{UF_DONT_EXPIRE_PASSWD, UF_NORMAL_ACCOUNT};
use crate::ad::{ber, AdConnection, AdError, AdSettings};

pub use ferry_proto::delegation::Task;
use ferry_proto::delegation::{
    GP_LINK, GP_OPTIONS, GROUP_CLASS, MEMBER_ATTR, PWD_LAST_SET, RESET_PASSWORD, USER_CLASS,
};

/// The effective rights that make a task possible. The wizard's grants
/// overlap (full control of users includes resetting their passwords), so
/// a broader grant satisfies a narrower task.
fn needs(task: Task) -> Vec<Need> {
    use sd::rights::*;
    let on = |rights, object, applies_to| Need {
        rights,
        object,
        applies_to,
    };
    match task {
        Task::ManageUsers => vec![
            on(CC | DC, Some(USER_CLASS), AppliesTo::Container),
            on(WP, None, AppliesTo::Descendants(USER_CLASS)),
        ],
        Task::ResetPasswords => vec![
            on(CR, Some(RESET_PASSWORD), AppliesTo::Descendants(USER_CLASS)),
            on(WP, Some(PWD_LAST_SET), AppliesTo::Descendants(USER_CLASS)),
        ],
        Task::ReadUsers => vec![on(RP, None, AppliesTo::Descendants(USER_CLASS))],
        Task::ManageGroups => vec![
            on(CC | DC, Some(GROUP_CLASS), AppliesTo::Container),
            on(WP, None, AppliesTo::Descendants(GROUP_CLASS)),
        ],
        Task::ModifyMembership => vec![on(RP | WP, Some(MEMBER_ATTR), AppliesTo::Descendants(GROUP_CLASS))],
        Task::ManageGpLinks => vec![
            on(RP | WP, Some(GP_LINK), AppliesTo::Container),
            on(RP | WP, Some(GP_OPTIONS), AppliesTo::Container),
        ],
    }
}

/// How to grant a task, on Windows and on Samba: one short command per ACE
/// (`samba_url`: the DC samba-tool talks to), or `ferry-agent prepare`.
fn task_fix(task: Task, scope: &str, account: &str, sid: &str, samba_url: &str) -> String {
    let mut out = format!(
        "Delegate \"{}\" to {account} on {scope} (Active Directory Users and Computers → Delegate Control; `ferry-agent prepare` prints a script for all six), or run",
        task.title()
    );
    out.push_str("\n      Windows:");
    for g in task.grants() {
        let (inherit, perm) = g.dsacls();
        out.push_str(&format!(
            "\n        dsacls \"{scope}\" {inherit} /G \"{account}:{perm}\""
        ));
    }
    out.push_str("\n      Samba:");
    for g in task.grants() {
        out.push_str(&format!(
            "\n        samba-tool dsacl set -H {samba_url} -U Administrator --objectdn='{scope}' --sddl='{}'",
            g.sddl(sid)
        ));
    }
    out
}

/// One checklist line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable id, e.g. `bind`, `task:ManageUsers`.
    pub id: String,
    /// What is checked.
    pub title: String,
    /// Passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not ok.
    pub fix: Option<String>,
}

/// The whole checklist.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The lines, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Every check passed.
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// The line with `id`.
    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    fn push(&mut self, id: &str, title: &str, ok: bool, detail: impl Into<String>, fix: Option<String>) {
        self.checks.push(Check {
            id: id.to_owned(),
            title: title.to_owned(),
            ok,
            detail: detail.into(),
            fix: if ok { None } else { fix },
        });
    }

    /// The checklist as a person reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{} {}: {}\n", if c.ok { "✓" } else { "✗" }, c.title, c.detail));
            if let Some(f) = &c.fix {
                out.push_str(&format!("    fix: {f}\n"));
            }
        }
        out
    }
}

/// What to check.
#[derive(Debug, Clone)]
pub struct PreflightInput {
    /// How to reach the DC.
    pub settings: AdSettings,
    /// `DOMAIN\user`.
    pub account: String,
    /// Its password.
    pub password: String,
    /// The Root DN the admin entered.
    pub root_dn: String,
    /// Where the agent will work (delegation is checked on each); the Root DN when empty.
    pub scopes: Vec<String>,
}

/// Privileged groups (RIDs in the domain; Builtin aliases as full SIDs).
const PRIVILEGED_RIDS: &[(u32, &str)] = &[
    (512, "Domain Admins"),
    (518, "Schema Admins"),
    (519, "Enterprise Admins"),
    (520, "Group Policy Creator Owners"),
];
const PRIVILEGED_BUILTIN: &[(&str, &str)] = &[
    ("S-1-5-32-544", "Administrators"),
    ("S-1-5-32-548", "Account Operators"),
    ("S-1-5-32-549", "Server Operators"),
    ("S-1-5-32-551", "Backup Operators"),
];

/// What is wrong with how the service account is written, if anything: the
/// agent signs in as `DOMAIN\\user`.
pub fn account_form_problem(account: &str) -> Option<String> {
    let account = account.trim();
    if account.is_empty() {
        return Some("enter the service account as DOMAIN\\user".into());
    }
    match crate::ad::check_account_form(account) {
        Err(e) => Some(e.to_string()),
        Ok(()) if !account.contains('\\') => Some(format!(
            "{account:?}: write the account as DOMAIN\\user (the domain's NetBIOS name, a backslash, the user name)"
        )),
        Ok(()) => None,
    }
}

/// Why the service account's name will not do, if it will not. The install
/// guide asks for a name without the product's ("ferry"), so the account is
/// not taken for something Ferry created. Nothing else depends on the name:
/// the agent leaves its own account out of the sync by its DN, whatever it
/// is called, and other users with "ferry" in their names sync as usual.
pub fn account_name_problem(account: &str) -> Option<String> {
    let user = account.trim().rsplit('\\').next().unwrap_or_default();
    user.to_lowercase().contains("ferry").then(|| {
        format!("{user:?} contains \"ferry\": the install guide asks for a service account named otherwise, so it is not taken for something Ferry created (the agent's own account is left out of the sync whatever its name); create one with another name, e.g. svc-dirsync")
    })
}

/// Runs the checklist. Stops early only where later checks cannot run
/// (no connection, no bind); everything else is checked and reported.
pub async fn run(input: &PreflightInput) -> Report {
    let mut r = Report::default();
    let account = input.account.trim();
    let form = account_form_problem(account);
    r.push(
        "account_form",
        "Service account written as DOMAIN\\user",
        form.is_none(),
        form.clone().unwrap_or_else(|| account.to_owned()),
        Some("Enter the account with the domain in front, e.g. EXAMPLE\\svc-sync".into()),
    );
    let (domain_part, user_part) = account.split_once('\\').unwrap_or(("", account));
    let name = account_name_problem(account);
    r.push(
        "account_name",
        "Account name does not contain \"ferry\"",
        name.is_none(),
        name.unwrap_or_else(|| user_part.to_owned()),
        Some("Create a service account with another name, e.g. svc-dirsync".into()),
    );
    let root_syntax = Dn::parse(&input.root_dn);
    r.push(
        "root_dn_syntax",
        "Root DN is a distinguished name",
        root_syntax.is_ok(),
        match &root_syntax {
            Ok(_) => input.root_dn.clone(),
            Err(e) => format!("{:?} is not a distinguished name: {}", e.dn, e.why),
        },
        Some("Enter the domain's DN, e.g. DC=example,DC=com for example.com".into()),
    );

    let mut conn = match AdConnection::connect(&input.settings).await {
        Ok(c) => c,
        Err(e) => {
            // An untrusted certificate is shown, so its fingerprint can be compared and pinned.
            let presented = match &e {
                AdError::Tls { .. } if !input.settings.insecure_skip_tls_verify => {
                    crate::ad::tls::dc_certificate(&input.settings).await.ok()
                }
                _ => None,
            };
            let detail = match presented {
                Some(c) => format!(
                    "{e}\n    The certificate the domain controller presents:\n{}",
                    c.describe()
                ),
                None => e.to_string(),
            };
            r.push(
                "connect",
                "Domain controller reachable over TLS",
                false,
                detail,
                Some(fix_for(&e)),
            );
            return r;
        }
    };
    r.push(
        "connect",
        "Domain controller reachable over TLS",
        true,
        conn.url().to_owned(),
        None,
    );
    if form.is_some() {
        return r;
    }
    if let Err(e) = conn.bind(account, &input.password).await {
        let wrong_prefix = match &e {
            AdError::Bind(m) if m.contains("password is wrong") && !domain_part.is_empty() => {
                right_netbios_name(input, domain_part, user_part).await
            }
            _ => None,
        };
        match wrong_prefix {
            Some((nb, upn)) => r.push(
                "bind",
                "Sign-in as the service account",
                false,
                format!("cannot sign in as {account}: {domain_part:?} is not this domain's NetBIOS name {nb:?} (the password is right: it signs in as {upn})"),
                Some(format!("Enter the account as {nb}\\{user_part}")),
            ),
            None => r.push(
                "bind",
                "Sign-in as the service account",
                false,
                e.to_string(),
                Some(fix_for(&e)),
            ),
        }
        return r;
    }
    r.push(
        "bind",
        "Sign-in as the service account",
        true,
        format!("signed in as {account}"),
        None,
    );

    let root = match conn.root_dse().await {
        Ok(x) => x,
        Err(e) => {
            r.push(
                "root_dse",
                "Read the domain controller's rootDSE",
                false,
                e.to_string(),
                None,
            );
            return r;
        }
    };
    let nc = root.default_naming_context.clone();
    let root_ok = root_syntax.is_ok() && same_dn(&input.root_dn, &nc);
    r.push(
        "root_dn",
        "Root DN is the domain's naming context",
        root_ok,
        if root_ok {
            nc.clone()
        } else {
            format!(
                "{:?} is not this domain's DN; the domain controller serves {nc}",
                input.root_dn
            )
        },
        Some(format!("Enter {nc}")),
    );
    match netbios_name(&mut conn, &root.configuration_naming_context, &nc).await {
        Some(nb) if nb.eq_ignore_ascii_case(domain_part) => {
            r.push("account_domain", "Account's domain is this domain", true, nb, None)
        }
        Some(nb) => r.push(
            "account_domain",
            "Account's domain is this domain",
            false,
            format!("{domain_part:?} is not this domain's NetBIOS name {nb:?}"),
            Some(format!("Enter the account as {nb}\\{user_part}")),
        ),
        None => {}
    }

    // The account itself.
    let filter = format!(
        "(&(objectClass=user)(sAMAccountName={}))",
        ldap3::ldap_escape(user_part)
    );
    let me = match conn
        .search_paged(
            &nc,
            Scope::Subtree,
            &filter,
            &["objectSid", "adminCount", "userAccountControl", "pwdLastSet"],
        )
        .await
        .map(|mut v| v.pop())
    {
        Ok(Some(e)) => e,
        Ok(None) | Err(_) => {
            r.push(
                "account",
                "Read the service account",
                false,
                format!("cannot find {user_part} under {nc}"),
                None,
            );
            return r;
        }
    };
    let my_sid: Sid = me.values("objectSid").first().cloned().unwrap_or_default();
    let my_sid_text = sid_to_string(&my_sid).unwrap_or_default();
    let mut sids = vec![my_sid.clone()];
    if let Ok(Some(tg)) = conn.read_entry(&me.dn, &["tokenGroups"]).await {
        sids.extend(tg.values("tokenGroups").iter().cloned());
    }
    let mut privileged: Vec<String> = Vec::new();
    if me.int("adminCount") == Some(1) {
        privileged.push("adminCount=1 (protected account)".into());
    }
    if rid(&my_sid) == Some(500) {
        privileged.push("the built-in Administrator".into());
    }
    for s in &sids {
        let text = sid_to_string(s).unwrap_or_default();
        if text.starts_with("S-1-5-21-") && sid_domain(s) == sid_domain(&my_sid) {
            if let Some((_, name)) = PRIVILEGED_RIDS.iter().find(|(r, _)| Some(*r) == rid(s)) {
                privileged.push(format!("member of {name}"));
            }
        }
        if let Some((_, name)) = PRIVILEGED_BUILTIN.iter().find(|(t, _)| *t == text) {
            privileged.push(format!("member of {name}"));
        }
    }
    privileged.dedup();
    r.push(
        "not_privileged",
        "Service account is not privileged",
        privileged.is_empty(),
        if privileged.is_empty() { "an ordinary account".to_owned() } else { privileged.join(", ") },
        Some("Use a dedicated ordinary account: remove it from admin groups (and clear adminCount), then delegate only the six tasks".into()),
    );
    let uac = me.int("userAccountControl").unwrap_or(UF_NORMAL_ACCOUNT);
    let never_expires = uac & UF_DONT_EXPIRE_PASSWD != 0;
    r.push(
        "password_never_expires",
        "\"Password never expires\" is set",
        never_expires,
        if never_expires { "set" } else { "not set: the sync stops when the password expires" },
        Some(format!("Tick \"Password never expires\" on the account, or run: Set-ADUser {user_part} -PasswordNeverExpires $true   (Samba: samba-tool user setexpiry {user_part} --noexpiry)")),
    );
    let must_change = me.int("pwdLastSet") == Some(0);
    r.push(
        "no_must_change",
        "\"User must change password at next logon\" is not set",
        !must_change,
        if must_change {
            "set: the account cannot sign in until its password is changed"
        } else {
            "not set"
        },
        Some("Untick \"User must change password at next logon\" (and set the password again)".into()),
    );

    // The six delegated tasks, on each scope.
    let scopes: Vec<String> = if input.scopes.is_empty() {
        vec![nc.clone()]
    } else {
        input.scopes.clone()
    };
    for scope in &scopes {
        if !dn_within(scope, &nc) {
            r.push(
                "scope",
                "Sync scope lies in the domain",
                false,
                format!("{scope} is outside {nc}"),
                None,
            );
            continue;
        }
        let dacl = match read_dacl(&mut conn, scope).await {
            Ok(d) => d,
            Err(e) => {
                r.push(
                    "scope_acl",
                    "Read the permissions of the sync scope",
                    false,
                    format!("{scope}: {e}"),
                    None,
                );
                continue;
            }
        };
        // Rights delegated to the account or a domain group it is in; broad
        // defaults (Authenticated Users, Pre-Windows 2000 Compatible Access)
        // are not a delegation and may be tightened by any domain.
        let delegated_to: Vec<Sid> = sids
            .iter()
            .filter(|s| sid_to_string(s).is_some_and(|t| t.starts_with("S-1-5-21-")))
            .cloned()
            .collect();
        for task in Task::ALL {
            let ok = needs(task).iter().all(|n| granted(&dacl, &delegated_to, n));
            r.push(
                &format!("task:{task:?}"),
                task.title(),
                ok,
                if ok {
                    format!("delegated on {scope}")
                } else {
                    format!("not delegated on {scope}")
                },
                Some(task_fix(
                    task,
                    scope,
                    account,
                    &my_sid_text,
                    &samba_url(&input.settings.url),
                )),
            );
        }
    }
    conn.close().await;
    r
}

fn sid_domain(s: &[u8]) -> &[u8] {
    &s[..s.len().saturating_sub(4)]
}

/// A sign-in as `DOMAIN\user` refused as a wrong password may be a wrong
/// DOMAIN (AD answers both alike): if the same password signs in as
/// `user@<the Root DN's DNS name>`, it was the prefix. Returns the domain's
/// NetBIOS name and the name that worked. (Only tried after a refusal, so a
/// really wrong password costs one more failed sign-in.)
async fn right_netbios_name(input: &PreflightInput, given: &str, user: &str) -> Option<(String, String)> {
    let upn = format!("{user}@{}", crate::ad::dn::dns_name_of(&input.root_dn)?);
    let mut conn = AdConnection::connect(&input.settings).await.ok()?;
    conn.bind(&upn, &input.password).await.ok()?;
    let root = conn.root_dse().await.ok()?;
    let nb = netbios_name(
        &mut conn,
        &root.configuration_naming_context,
        &root.default_naming_context,
    )
    .await;
    conn.close().await;
    nb.filter(|nb| !nb.eq_ignore_ascii_case(given)).map(|nb| (nb, upn))
}

async fn netbios_name(conn: &mut AdConnection, config_nc: &str, nc: &str) -> Option<String> {
    let base = format!("CN=Partitions,{config_nc}");
    let filter = format!(
        "(&(objectClass=crossRef)(nETBIOSName=*)(nCName={}))",
        ldap3::ldap_escape(nc)
    );
    let found = conn
        .search_paged(&base, Scope::OneLevel, &filter, &["nETBIOSName"])
        .await
        .ok()?;
    found.first().and_then(|e| e.str("nETBIOSName"))
}

async fn read_dacl(conn: &mut AdConnection, dn: &str) -> Result<Vec<sd::Ace>, AdError> {
    let ctrl = RawControl {
        ctype: ber::SD_FLAGS_OID.to_owned(),
        crit: true,
        val: Some(ber::sd_flags_request(4)),
    };
    let (entries, _) = conn
        .search_raw(
            dn,
            Scope::Base,
            "(objectClass=*)",
            &["nTSecurityDescriptor"],
            vec![ctrl],
        )
        .await?;
    let raw = entries
        .first()
        .and_then(|e| e.values("nTSecurityDescriptor").first().cloned())
        .ok_or_else(|| AdError::AccessDenied(format!("the account cannot read the permissions of {dn}")))?;
    parse_dacl(&raw).ok_or_else(|| AdError::Protocol(format!("the security descriptor of {dn} is malformed")))
}

/// How to fix a connection or sign-in error.
pub fn fix_for(e: &AdError) -> String {
    match e {
        AdError::Tls { detail, .. } => crate::ad::tls::refusal_advice(detail, true),
        AdError::Connect { .. } => "Check the DC's address, that LDAPS (636) or LDAP with StartTLS (389) is reachable from this host, and that the DC runs".into(),
        AdError::Bind(m) if m.contains("disabled") => "Enable the account".into(),
        AdError::Bind(m) if m.contains("must change") => "Untick \"User must change password at next logon\" and set the password again".into(),
        _ => "Check the account name (DOMAIN\\user) and its password".into(),
    }
}

/// The plain-LDAP URL of the DC, for samba-tool (it signs and seals the
/// connection itself).
fn samba_url(ldap_url: &str) -> String {
    let rest = ldap_url
        .strip_prefix("ldaps://")
        .or_else(|| ldap_url.strip_prefix("ldap://"))
        .unwrap_or(ldap_url);
    let host = rest.split(['/', ':']).next().unwrap_or(rest);
    format!("ldap://{host}")
}
