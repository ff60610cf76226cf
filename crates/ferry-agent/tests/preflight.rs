//! The preflight against a real Samba DC: a correctly delegated account
//! passes; each missing right, and each account misconfiguration, fails
//! exactly its item with the fix.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::{shared, Dc};
use ferry_agent::ad::write::NewAdUser;
use ferry_agent::preflight::{self, PreflightInput, Report, Task};

const PW: &str = "Svc-Pa55-word";

/// A service account as the guide says: password never expires, must-change off.
async fn account(dc: &Dc, ou: &str, name: &str, never_expires: bool) -> (String, String) {
    let mut admin = dc.admin().await;
    let u = NewAdUser {
        sam_account_name: name.into(),
        password: Some(PW.into()),
        enabled: true,
        ..Default::default()
    };
    let dn = admin.create_user(ou, &u).await.unwrap();
    if never_expires {
        admin
            .set_attributes(&dn, &[("userAccountControl", Some("66048"))])
            .await
            .unwrap();
    }
    let sid = sid_of(dc, ou, name);
    (dn, sid)
}

fn sid_of(dc: &Dc, base: &str, sam: &str) -> String {
    use base64::Engine as _;
    let ldif = dc.ldapsearch(base, &format!("(sAMAccountName={sam})"), &["objectSid"]);
    let b64 = ldif.lines().find_map(|l| l.strip_prefix("objectSid:: ")).unwrap();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap();
    ferry_agent::preflight::sd::sid_to_string(&raw).unwrap()
}

/// Grants for every task but `missing`. The wizard's grants for managing
/// users and groups (full control of them) include resetting passwords,
/// reading users and changing membership, so those two are granted in the
/// narrowest form that still manages: create/delete plus write.
fn grant_all_but(dc: &Dc, ou: &str, sid: &str, missing: Task) {
    let mut sddl = String::new();
    for t in Task::ALL.into_iter().filter(|t| *t != missing) {
        sddl.push_str(&match t {
            Task::ManageUsers => format!("(OA;CI;CCDC;bf967aba-0de6-11d0-a285-00aa003049e2;;{sid})(OA;CIIO;WP;;bf967aba-0de6-11d0-a285-00aa003049e2;{sid})"),
            Task::ManageGroups => format!("(OA;CI;CCDC;bf967a9c-0de6-11d0-a285-00aa003049e2;;{sid})(OA;CIIO;WP;;bf967a9c-0de6-11d0-a285-00aa003049e2;{sid})"),
            other => other.sddl(sid),
        });
    }
    dc.samba_tool(&["dsacl", "set", "--objectdn", ou, "--sddl", &sddl]);
}

fn grant(dc: &Dc, ou: &str, sid: &str, tasks: &[Task]) {
    let sddl: String = tasks.iter().map(|t| t.sddl(sid)).collect();
    if !sddl.is_empty() {
        dc.samba_tool(&["dsacl", "set", "--objectdn", ou, "--sddl", &sddl]);
    }
}

async fn check(dc: &Dc, account: &str, root_dn: &str, scope: &str) -> Report {
    let input = PreflightInput {
        settings: dc.admin_settings(),
        account: account.into(),
        password: PW.into(),
        root_dn: root_dn.into(),
        scopes: vec![scope.into()],
    };
    preflight::run(&input).await
}

fn failed(r: &Report) -> Vec<String> {
    r.checks.iter().filter(|c| !c.ok).map(|c| c.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_delegated_account_passes_every_check() {
    let dc = shared();
    let ou = dc.new_ou("pf-good").await;
    let (_, sid) = account(dc, &ou, "svc-good", true).await;
    grant(dc, &ou, &sid, &Task::ALL);
    let r = check(dc, &format!("{}\\svc-good", dc.domain), &dc.base_dn, &ou).await;
    assert!(r.ok(), "{}", r.render());
    for t in Task::ALL {
        assert!(r.get(&format!("task:{t:?}")).unwrap().ok);
    }
    let text = r.render();
    assert!(text.contains("✓ Create, delete, and manage user accounts"), "{text}");
    assert!(text.contains("✓ Service account is not privileged"), "{text}");
}

macro_rules! missing_right {
    ($name:ident, $task:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dc = shared();
            let ou = dc.new_ou("pf-miss").await;
            let user = format!("svc-{}", &ou[8..14]);
            let (_, sid) = account(dc, &ou, &user, true).await;
            grant_all_but(dc, &ou, &sid, $task);
            let r = check(dc, &format!("{}\\{user}", dc.domain), &dc.base_dn, &ou).await;
            assert_eq!(failed(&r), vec![format!("task:{:?}", $task)], "{}", r.render());
            let item = r.get(&format!("task:{:?}", $task)).unwrap();
            let fix = item.fix.as_deref().unwrap();
            assert!(
                fix.contains("samba-tool dsacl set") && fix.contains(&sid),
                "{fix}"
            );
            assert!(fix.contains("dsacls"), "{fix}");
            assert!(r.render().contains(&format!("✗ {}", $task.title())));
            // Applying the fix as given makes the check pass.
            grant(dc, &ou, &sid, &[$task]);
            let r = check(dc, &format!("{}\\{user}", dc.domain), &dc.base_dn, &ou).await;
            assert!(r.ok(), "{}", r.render());
        }
    };
}

missing_right!(missing_manage_users_fails_only_that_item, Task::ManageUsers);
missing_right!(missing_reset_passwords_fails_only_that_item, Task::ResetPasswords);
missing_right!(missing_read_users_fails_only_that_item, Task::ReadUsers);
missing_right!(missing_manage_groups_fails_only_that_item, Task::ManageGroups);
missing_right!(missing_modify_membership_fails_only_that_item, Task::ModifyMembership);
missing_right!(missing_gp_links_fails_only_that_item, Task::ManageGpLinks);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_rules_are_checked() {
    let dc = shared();
    let ou = dc.new_ou("pf-rules").await;
    let domain = &dc.domain;

    // A privileged account.
    let (admin_dn, sid) = account(dc, &ou, "svc-admin", true).await;
    grant(dc, &ou, &sid, &Task::ALL);
    dc.ldapmodify(
        &format!(
            "dn: CN=Domain Admins,CN=Users,{}\nchangetype: modify\nadd: member\nmember: {admin_dn}\n",
            dc.base_dn
        ),
        false,
    );
    let r = check(dc, &format!("{domain}\\svc-admin"), &dc.base_dn, &ou).await;
    assert_eq!(failed(&r), vec!["not_privileged"], "{}", r.render());
    assert!(r.get("not_privileged").unwrap().detail.contains("Domain Admins"));

    // A name containing "ferry".
    let (_, sid) = account(dc, &ou, "FerrySync", true).await;
    grant(dc, &ou, &sid, &Task::ALL);
    let r = check(dc, &format!("{domain}\\FerrySync"), &dc.base_dn, &ou).await;
    assert_eq!(failed(&r), vec!["account_name"], "{}", r.render());

    // "Password never expires" not set.
    let (_, sid) = account(dc, &ou, "svc-expires", false).await;
    grant(dc, &ou, &sid, &Task::ALL);
    let r = check(dc, &format!("{domain}\\svc-expires"), &dc.base_dn, &ou).await;
    assert_eq!(failed(&r), vec!["password_never_expires"], "{}", r.render());
    assert!(r
        .get("password_never_expires")
        .unwrap()
        .fix
        .as_deref()
        .unwrap()
        .contains("Password never expires"));

    // A good account, entered wrongly.
    let (_, sid) = account(dc, &ou, "svc-ok", true).await;
    grant(dc, &ou, &sid, &Task::ALL);
    let r = check(dc, "svc-ok", &dc.base_dn, &ou).await;
    assert!(failed(&r).contains(&"account_form".to_owned()), "{}", r.render());
    assert!(
        r.get("account_form").unwrap().detail.contains("DOMAIN\\svc-ok"),
        "{}",
        r.render()
    );
    assert!(r.get("bind").is_none(), "no bind is tried with a bare name");
    let r = check(dc, &format!("{domain}\\svc-ok"), "DC=wrong,DC=test", &ou).await;
    assert_eq!(failed(&r), vec!["root_dn"], "{}", r.render());
    assert!(
        r.get("root_dn").unwrap().detail.contains(&dc.base_dn),
        "names the expected DN"
    );
    let r = check(dc, &format!("{domain}\\svc-ok"), "example.test", &ou).await;
    assert!(failed(&r).contains(&"root_dn_syntax".to_owned()), "{}", r.render());
    let input = PreflightInput {
        settings: dc.admin_settings(),
        account: format!("{domain}\\svc-ok"),
        password: "wrong".into(),
        root_dn: dc.base_dn.clone(),
        scopes: vec![ou.clone()],
    };
    let r = preflight::run(&input).await;
    assert_eq!(failed(&r), vec!["bind"], "{}", r.render());
    assert!(r.get("bind").unwrap().detail.contains("password is wrong"));

    // Must change password at next logon.
    let (dn, sid) = account(dc, &ou, "svc-mustchange", true).await;
    grant(dc, &ou, &sid, &Task::ALL);
    let mut admin = dc.admin().await;
    admin.set_attributes(&dn, &[("pwdLastSet", Some("0"))]).await.unwrap();
    let r = check(dc, &format!("{domain}\\svc-mustchange"), &dc.base_dn, &ou).await;
    let f = failed(&r);
    assert!(f == vec!["no_must_change"] || f == vec!["bind"], "{}", r.render());
    assert!(r.render().contains("must change"), "{}", r.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_prints_the_list_and_sets_the_exit_code() {
    let dc = shared();
    let ou = dc.new_ou("pf-cli").await;
    let (_, sid) = account(dc, &ou, "svc-cli", true).await;
    let tmp = tempfile::tempdir().unwrap();
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, format!("{PW}\n")).unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
            .args(["check", "--ldap-url", &dc.ldaps_url, "--ca-file"])
            .arg(&dc.ca_file)
            .args([
                "--bind-user",
                &format!("{}\\svc-cli", dc.domain),
                "--root-dn",
                &dc.base_dn,
                "--scope",
                &ou,
            ])
            .arg("--bind-password-file")
            .arg(&pwfile)
            .env_remove("FERRY_BIND_PASSWORD")
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("✗ Modify the membership of a group"), "{text}");
    assert!(text.contains("6 check(s) failed"), "{text}");
    assert!(
        !text.contains(PW) && !String::from_utf8_lossy(&out.stderr).contains(PW),
        "no password in output"
    );
    grant(dc, &ou, &sid, &Task::ALL);
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("All checks passed."), "{text}");
}
