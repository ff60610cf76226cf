//! The AD connector against a real Samba AD DC.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::HashSet;

use common::{shared, Dc};
use ferry_agent::ad::dn::{escape_value, Dn};
use ferry_agent::ad::read::member_delta;
use ferry_agent::ad::write::{NewAdGroup, NewAdUser, GROUP_GLOBAL_SECURITY};
use ferry_agent::ad::{AdConnection, AdError, AdSettings};

const PW: &str = "Initial-Pa55";

/// A plain (non-admin) account with read access only, like a freshly
/// created service account before delegation.
async fn plain_account(dc: &Dc, ou: &str, name: &str) -> String {
    let mut admin = dc.admin().await;
    let u = NewAdUser {
        sam_account_name: name.into(),
        upn: Some(format!("{name}@{}", dc.realm.to_lowercase())),
        password: Some(PW.into()),
        enabled: true,
        ..Default::default()
    };
    admin.create_user(ou, &u).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_tls_verification_and_reads_the_root_dse() {
    let dc = shared();
    let mut c = dc.admin().await;
    assert!(c.encrypted());
    let root = c.root_dse().await.unwrap();
    assert_eq!(root.default_naming_context, dc.base_dn);
    assert!(
        root.supported_controls.iter().any(|o| o == "1.2.840.113556.1.4.841"),
        "DirSync advertised"
    );
    assert!(
        root.supported_controls.iter().any(|o| o == "1.2.840.113556.1.4.319"),
        "paging advertised"
    );
    assert!(root.highest_committed_usn > 0);
    assert!(!root.dns_host_name.is_empty());

    // StartTLS on 389, bound with the UPN form.
    let mut s = AdSettings::new(&dc.ldap_url);
    s.ca_file = Some(dc.ca_file.clone());
    let mut st = AdConnection::connect(&s).await.unwrap();
    assert!(st.encrypted());
    st.bind(&format!("Administrator@{}", dc.realm), &dc.admin_password)
        .await
        .unwrap();
    assert_eq!(st.root_dse().await.unwrap().default_naming_context, dc.base_dn);

    // A CA that did not sign the DC's certificate is refused.
    let tmp = tempfile::tempdir().unwrap();
    let other_ca = tmp.path().join("other-ca.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=unrelated",
        ])
        .arg("-keyout")
        .arg(tmp.path().join("k.pem"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(ok.status.success());
    let mut bad = dc.admin_settings();
    bad.ca_file = Some(other_ca);
    let err = match AdConnection::connect(&bad).await {
        Ok(mut c) => c.bind(&dc.admin_bind, &dc.admin_password).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(err, AdError::Tls { .. } | AdError::Connect { .. }), "{err}");
    // The escape hatch connects anyway.
    let mut insecure = dc.admin_settings();
    insecure.ca_file = None;
    insecure.insecure_skip_tls_verify = true;
    let mut c = AdConnection::connect(&insecure).await.unwrap();
    c.bind(&dc.admin_bind, &dc.admin_password).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_say_what_to_fix() {
    let dc = shared();
    let mut c = AdConnection::connect(&dc.admin_settings()).await.unwrap();
    let e = c.bind("Administrator", &dc.admin_password).await.unwrap_err();
    assert!(e.to_string().contains("DOMAIN\\Administrator"), "{e}");
    let e = c.bind(&dc.admin_bind, "wrong-password").await.unwrap_err();
    assert!(e.to_string().contains("user name or password is wrong"), "{e}");
    let mut s = AdSettings::new("ldaps://127.0.0.1:1");
    s.ca_file = Some(dc.ca_file.clone());
    let e = AdConnection::connect(&s).await.err().unwrap();
    assert!(matches!(e, AdError::Connect { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_escaped_and_non_ascii_names_round_trip() {
    let dc = shared();
    let ou = dc.new_ou("users").await;
    let mut c = dc.admin().await;
    let u = NewAdUser {
        sam_account_name: "jsmith".into(),
        upn: Some(format!("jsmith@{}", dc.realm.to_lowercase())),
        cn: Some("Smith, John".into()),
        attributes: vec![
            ("givenName".into(), "Jöhn".into()),
            ("sn".into(), "Smïth-Ñúñez".into()),
            ("displayName".into(), "Smïth, Jöhn 名前".into()),
            ("mail".into(), "jsmith@example.test".into()),
        ],
        password: Some(PW.into()),
        enabled: true,
    };
    let dn = c.create_user(&ou, &u).await.unwrap();
    assert_eq!(dn, format!("CN=Smith\\, John,{ou}"));
    // An independent client sees it, with the escaped DN.
    let ldif = dc.ldapsearch(&ou, "(sAMAccountName=jsmith)", &["displayName", "userAccountControl"]);
    assert!(ldif.contains("dn: CN=Smith\\, John,OU="), "{ldif}");
    assert!(
        ldif.contains("userAccountControl: 512"),
        "enabled normal account: {ldif}"
    );
    // Our own read returns it with every value intact.
    let all = c
        .read_users_and_groups(&ou, &["objectGUID", "sAMAccountName", "displayName", "givenName", "sn"])
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    let e = &all[0];
    assert_eq!(Dn::parse(&e.dn).unwrap().rdn().unwrap().value, "Smith, John");
    assert_eq!(e.str("displayName").as_deref(), Some("Smïth, Jöhn 名前"));
    assert_eq!(e.str("sn").as_deref(), Some("Smïth-Ñúñez"));
    let guid = e.guid().unwrap();
    // Every mapped attribute, read with the sync's attribute list and mapped.
    let mapped = c
        .read_users_and_groups(&ou, ferry_agent::ad::mapping::READ_ATTRS)
        .await
        .unwrap();
    let (rec, manager) = ferry_agent::ad::mapping::user_record(&mapped[0]);
    assert_eq!(rec.username, "jsmith");
    assert_eq!(rec.given_name.as_deref(), Some("Jöhn"));
    assert_eq!(rec.family_name.as_deref(), Some("Smïth-Ñúñez"));
    assert_eq!(rec.email.as_deref(), Some("jsmith@example.test"));
    assert!(rec.active);
    assert_eq!(manager, None);
    // What Ferry never touches, read from the DC: built-in accounts, and
    // members of protected groups through nested groups (no adminCount:
    // Samba never runs SDProp).
    let ops = format!("CN=ops-admins,{}", ou);
    dc.ldapmodify(
        &format!("dn: {ops}\nobjectClass: group\nsAMAccountName: ops-admins\n"),
        true,
    );
    let helper = format!("CN=helper,{ou}");
    dc.ldapmodify(
        &format!("dn: {helper}\nobjectClass: user\nsAMAccountName: helper\n"),
        true,
    );
    dc.ldapmodify(
        &format!("dn: {ops}\nchangetype: modify\nadd: member\nmember: {helper}\n"),
        false,
    );
    dc.ldapmodify(
        &format!(
            "dn: CN=Domain Admins,CN=Users,{}\nchangetype: modify\nadd: member\nmember: {ops}\n",
            dc.base_dn
        ),
        false,
    );
    // A member of a protected group of the Builtin domain (Account Operators, S-1-5-32-548).
    let operator = format!("CN=operator,{ou}");
    dc.ldapmodify(
        &format!("dn: {operator}\nobjectClass: user\nsAMAccountName: operator\n"),
        true,
    );
    dc.ldapmodify(
        &format!(
            "dn: CN=Account Operators,CN=Builtin,{}\nchangetype: modify\nadd: member\nmember: {operator}\n",
            dc.base_dn
        ),
        false,
    );
    let protection = ferry_agent::sync::protect::Protection::read(&mut c, vec!["CN=svc,DC=x".into()])
        .await
        .unwrap();
    assert_eq!(protection.why(&mapped[0]), None, "an ordinary user");
    for dn in [
        format!("CN=krbtgt,CN=Users,{}", dc.base_dn),
        format!("CN=Administrator,CN=Users,{}", dc.base_dn),
        format!("CN=Guest,CN=Users,{}", dc.base_dn),
        format!("CN=Domain Users,CN=Users,{}", dc.base_dn),
        helper.clone(),
        operator.clone(),
    ] {
        let e = c
            .read_entry(&dn, ferry_agent::ad::mapping::READ_ATTRS)
            .await
            .unwrap()
            .unwrap();
        assert!(protection.why(&e).is_some(), "{dn} is never synced nor written");
    }
    dc.ldapmodify(
        &format!(
            "dn: CN=Domain Admins,CN=Users,{}\nchangetype: modify\ndelete: member\nmember: {ops}\n",
            dc.base_dn
        ),
        false,
    );

    // Rename and move keep the objectGUID.
    let sub = dc.new_ou("moved").await;
    let new_dn = c.rename_move(&dn, Some("Smith, Jonathan"), Some(&sub)).await.unwrap();
    assert_eq!(new_dn, format!("CN=Smith\\, Jonathan,{sub}"));
    let moved = c.read_entry(&new_dn, &["objectGUID"]).await.unwrap().unwrap();
    assert_eq!(moved.guid(), Some(guid));
    assert!(c.read_entry(&dn, &["objectGUID"]).await.unwrap().is_none());

    // Disable and enable flip only the disable bit.
    c.set_enabled(&new_dn, false).await.unwrap();
    assert!(dc
        .ldapsearch(&sub, "(sAMAccountName=jsmith)", &["userAccountControl"])
        .contains("userAccountControl: 514"));
    c.set_enabled(&new_dn, true).await.unwrap();
    assert!(dc
        .ldapsearch(&sub, "(sAMAccountName=jsmith)", &["userAccountControl"])
        .contains("userAccountControl: 512"));

    // Attributes change and clear.
    c.set_attributes(&new_dn, &[("title", Some("Engineer")), ("mail", None)])
        .await
        .unwrap();
    let ldif = dc.ldapsearch(&sub, "(sAMAccountName=jsmith)", &["title", "mail"]);
    assert!(ldif.contains("title: Engineer") && !ldif.contains("mail:"), "{ldif}");

    c.delete(&new_dn).await.unwrap();
    assert!(!dc.ldapsearch(&sub, "(objectClass=user)", &["dn"]).contains("jsmith"));
    let e = c.delete(&new_dn).await.unwrap_err();
    assert!(matches!(e, AdError::NoSuchObject(_)), "{e}");
    // A user created without a password is created disabled.
    let quiet = NewAdUser {
        sam_account_name: "nopw".into(),
        ..Default::default()
    };
    c.create_user(&ou, &quiet).await.unwrap();
    assert!(dc
        .ldapsearch(&ou, "(sAMAccountName=nopw)", &["userAccountControl"])
        .contains("userAccountControl: 546"));
    let dup = c.create_user(&ou, &quiet).await.unwrap_err();
    assert!(matches!(dup, AdError::AlreadyExists(_)), "{dup}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_need_encryption_and_really_change() {
    let dc = shared();
    let ou = dc.new_ou("pw").await;
    let dn = plain_account(dc, &ou, "pwuser").await;
    let user = format!("{}\\pwuser", dc.domain);
    let mut admin = dc.admin().await;
    admin.set_password(&dn, "Changed-Pa55-ü", false).await.unwrap();
    // Proven by binding as that user.
    dc.connect_as(&user, "Changed-Pa55-ü").await;
    let mut c = AdConnection::connect(&dc.admin_settings()).await.unwrap();
    assert!(c.bind(&user, PW).await.is_err(), "the old password no longer works");

    // Over plain LDAP (this test DC allows plain binds) the connector refuses to send it.
    let mut plain = AdSettings::new(&dc.ldap_url);
    plain.starttls = false;
    let mut p = AdConnection::connect(&plain).await.unwrap();
    assert!(!p.encrypted());
    p.bind(&dc.admin_bind, &dc.admin_password).await.unwrap();
    let e = p.set_password(&dn, "Never-Sent-1", false).await.unwrap_err();
    assert!(matches!(e, AdError::PasswordNeedsEncryption), "{e}");
    let e = p
        .create_user(
            &ou,
            &NewAdUser {
                sam_account_name: "x".into(),
                password: Some("Never-Sent-2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AdError::PasswordNeedsEncryption), "{e}");
    dc.connect_as(&user, "Changed-Pa55-ü").await;

    // Must change at next logon: pwdLastSet becomes 0.
    admin.set_password(&dn, "Temp-Pa55", true).await.unwrap();
    assert!(dc
        .ldapsearch(&ou, "(sAMAccountName=pwuser)", &["pwdLastSet"])
        .contains("pwdLastSet: 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_members_and_missing_members() {
    let dc = shared();
    let ou = dc.new_ou("groups").await;
    let mut c = dc.admin().await;
    let a = plain_account(dc, &ou, "gm-a").await;
    let b = plain_account(dc, &ou, "gm-b").await;
    let g = NewAdGroup {
        sam_account_name: None,
        name: "Engineers, R&D".into(),
        description: Some("builders".into()),
        group_type: GROUP_GLOBAL_SECURITY,
    };
    let gdn = c.create_group(&ou, &g).await.unwrap();
    let inner = c
        .create_group(
            &ou,
            &NewAdGroup {
                sam_account_name: None,
                name: "Inner".into(),
                description: None,
                group_type: GROUP_GLOBAL_SECURITY,
            },
        )
        .await
        .unwrap();
    c.add_members(&gdn, &[a.clone(), b.clone(), inner.clone()])
        .await
        .unwrap();
    let mut members = c.group_members(&gdn).await.unwrap();
    members.sort();
    let mut want = vec![a.clone(), b.clone(), inner.clone()];
    want.sort();
    assert_eq!(members, want);
    c.remove_members(&gdn, std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(c.group_members(&gdn).await.unwrap().len(), 2);
    // A missing member fails the whole change and adds nothing.
    let ghost = format!("CN=Ghost,{ou}");
    let e = c.add_members(&gdn, &[b.clone(), ghost]).await.unwrap_err();
    assert!(
        matches!(e, AdError::MissingReference(_) | AdError::NoSuchObject(_)),
        "{e}"
    );
    assert_eq!(c.group_members(&gdn).await.unwrap().len(), 2);
    c.set_attributes(&gdn, &[("description", Some("makers"))])
        .await
        .unwrap();
    assert!(dc
        .ldapsearch(&ou, "(cn=Engineers, R&D)", &["description", "sAMAccountName"])
        .contains("description: makers"));
    assert!(dc
        .ldapsearch(&ou, "(cn=Engineers, R&D)", &["sAMAccountName"])
        .contains("sAMAccountName: Engineers_ R&D"));
    c.delete(&gdn).await.unwrap();
    assert!(!dc.ldapsearch(&ou, "(objectClass=group)", &["cn"]).contains("Engineers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_3000_members_is_read_in_ranges() {
    let dc = shared();
    let ou = dc.new_ou("big").await;
    let mut ldif = String::new();
    for i in 0..3000 {
        ldif.push_str(&format!(
            "dn: CN=m{i},{ou}\nobjectClass: user\nsAMAccountName: big-{}-{i}\n\n",
            &ou[3..11]
        ));
    }
    dc.ldapmodify(&ldif, true);
    let mut group = format!(
        "dn: CN=Big,{ou}\nobjectClass: group\nsAMAccountName: big-{}\n",
        &ou[3..11]
    );
    for i in 0..3000 {
        group.push_str(&format!("member: CN=m{i},{ou}\n"));
    }
    dc.ldapmodify(&group, true);
    let mut c = dc.admin().await;
    let gdn = format!("CN=Big,{ou}");
    // Samba returns all values unless asked for a range: ask in windows of 1000.
    let vals = c.read_ranged(&gdn, "member", 1000).await.unwrap();
    assert_eq!(vals.len(), 3000);
    let distinct: HashSet<&Vec<u8>> = vals.iter().collect();
    assert_eq!(distinct.len(), 3000, "no value twice");
    // The full read returns the group complete as well.
    let all = c
        .read_users_and_groups(&ou, &["objectGUID", "member", "objectClass"])
        .await
        .unwrap();
    assert_eq!(all.len(), 3001);
    let g = all.iter().find(|e| e.has_class("group")).unwrap();
    assert_eq!(g.values("member").len(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirsync_and_reconciliation_as_a_delegated_account() {
    let dc = shared();
    let ou = dc.new_ou("sync").await;
    let svc_dn = plain_account(dc, &ou, "svc-dirsync").await;
    let sid = sid_of(dc, &ou, "svc-dirsync");
    grant_six_tasks(dc, &ou, &sid);
    let mut admin = dc.admin().await;
    let u1 = plain_account(dc, &ou, "ds-one").await;
    let u2 = plain_account(dc, &ou, "ds-two").await;
    let g = admin
        .create_group(
            &ou,
            &NewAdGroup {
                sam_account_name: None,
                name: "ds-group".into(),
                description: None,
                group_type: GROUP_GLOBAL_SECURITY,
            },
        )
        .await
        .unwrap();
    admin.add_members(&g, std::slice::from_ref(&u1)).await.unwrap();

    let mut svc = dc.connect_as(&format!("{}\\svc-dirsync", dc.domain), PW).await;
    let attrs = [
        "objectGUID",
        "sAMAccountName",
        "member",
        "objectClass",
        "isDeleted",
        "description",
    ];
    let first = svc.dirsync_all(&dc.base_dn, &[], &attrs).await.unwrap();
    assert!(
        first.entries.iter().any(|e| e.dn.contains("ds-one")),
        "the delegated account reads with DirSync"
    );
    let cookie = first.cookie;

    // Incremental member add and remove arrive as deltas.
    admin.add_members(&g, std::slice::from_ref(&u2)).await.unwrap();
    admin.remove_members(&g, std::slice::from_ref(&u1)).await.unwrap();
    let inc = svc.dirsync_all(&dc.base_dn, &cookie, &attrs).await.unwrap();
    let ge = inc
        .entries
        .iter()
        .find(|e| e.dn.eq_ignore_ascii_case(&g))
        .expect("the group changed");
    let (added, removed) = member_delta(ge);
    assert!(added.iter().any(|d| d.eq_ignore_ascii_case(&u2)), "added {added:?}");
    assert!(
        removed.iter().any(|d| d.eq_ignore_ascii_case(&u1)),
        "removed {removed:?}"
    );
    assert!(
        !inc.entries
            .iter()
            .any(|e| e.dn.contains("ds-one") && e.has_class("user")),
        "only what changed"
    );

    // A delete: the delegated account sees no tombstone, but reconciliation finds it.
    let before = svc.in_scope_guids(&ou, |_| true).await.unwrap();
    let gone = svc
        .read_entry(&u2, &["objectGUID"])
        .await
        .unwrap()
        .unwrap()
        .guid()
        .unwrap();
    let cookie = inc.cookie;
    admin.delete(&u2).await.unwrap();
    let after = svc.in_scope_guids(&ou, |_| true).await.unwrap();
    let deleted: Vec<_> = before.difference(&after).collect();
    assert_eq!(deleted, vec![&gone]);
    let inc = svc.dirsync_all(&dc.base_dn, &cookie, &attrs).await.unwrap();
    assert!(
        !inc.entries.iter().any(|e| e.flag("isDeleted")),
        "no tombstones for a delegated account (REFERENCE.md)"
    );
    assert!(svc.highest_committed_usn().await.unwrap() > 0);

    // The import's cookie, from a round that matches nothing: the round
    // after it names what changed since (in an attribute asked for, as AD
    // reports it), not every object.
    let now = svc.dirsync_cookie_now(&dc.base_dn).await.unwrap();
    let quiet = svc.dirsync_all(&dc.base_dn, &now, &attrs).await.unwrap();
    let named = |b: &ferry_agent::ad::DirSyncBatch| b.entries.iter().map(|e| e.dn.to_lowercase()).collect::<Vec<_>>();
    assert!(
        !named(&quiet).iter().any(|d| d.ends_with(&ou.to_lowercase())),
        "nothing in this OU changed since the cookie: {:?}",
        named(&quiet)
    );
    admin
        .set_attributes(&u1, &[("description", Some("after"))])
        .await
        .unwrap();
    let next = svc.dirsync_all(&dc.base_dn, &now, &attrs).await.unwrap();
    let in_ou: Vec<String> = named(&next)
        .into_iter()
        .filter(|d| d.ends_with(&ou.to_lowercase()))
        .collect();
    assert_eq!(in_ou, vec![u1.to_lowercase()], "only the change after the cookie");
    let _ = svc_dn;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_dcs_run_at_once_on_their_own_addresses() {
    let second = Dc::start();
    let first = shared();
    assert_ne!(second.ip, first.ip);
    let mut a = first.admin().await;
    let mut b = second.admin().await;
    let ou = second.new_ou("only-here").await;
    assert!(b.read_entry(&ou, &["ou"]).await.unwrap().is_some());
    assert!(
        a.read_entry(&ou, &["ou"]).await.unwrap().is_none(),
        "separate directories"
    );
    let name = escape_value("x");
    assert_eq!(name, "x");
}

/// The account's SID, as samba-tool's dsacl wants it.
pub fn sid_of(dc: &Dc, base: &str, sam: &str) -> String {
    let ldif = dc.ldapsearch(base, &format!("(sAMAccountName={sam})"), &["objectSid"]);
    let b64 = ldif
        .lines()
        .find_map(|l| l.strip_prefix("objectSid:: "))
        .unwrap_or_else(|| panic!("no objectSid in {ldif}"));
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap();
    ferry_agent::preflight::sd::sid_to_string(&raw).unwrap()
}

/// The Delegation of Control wizard's first six tasks, on `ou`, for `sid`.
pub fn grant_six_tasks(dc: &Dc, ou: &str, sid: &str) {
    for sddl in ferry_agent::preflight::Task::ALL.iter().map(|t| t.sddl(sid)) {
        dc.samba_tool(&["dsacl", "set", "--objectdn", ou, "--sddl", &sddl]);
    }
}
