//! Each rule of the Windows-AD test double, against a real Samba DC: the
//! double answers as Windows AD does, and (where Samba is lenient) the same
//! request sent to Samba directly is accepted, so the answer is the
//! double's. `ldapsearch` checks the page cap and the ranges as an
//! external client sees them.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../../ferry-agent/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;

use common::{shared, Dc};
use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Mod, Scope, SearchEntry};

const SVC_PW: &str = "Svc-Double-Pa55";
const GLOBAL: &str = "-2147483646";
const DOMAIN_LOCAL: &str = "-2147483644";
const UNIVERSAL: &str = "-2147483640";

/// The shared DC behind a double with these limits.
fn through_double(limits: &[&str]) -> Dc {
    shared().clone().behind_double(limits)
}

/// The DC itself, with no double (also when the suite runs through one).
fn samba_itself() -> Dc {
    let mut dc = shared().clone();
    if dc.double.is_some() {
        let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
        dc.ldaps_url = vars["FERRY_TEST_DC_LDAPS_URL"].clone();
        dc.ldap_url = vars["FERRY_TEST_DC_LDAP_URL"].clone();
        dc.ca_file = vars["FERRY_TEST_DC_CA_FILE"].clone().into();
        dc.double = None;
    }
    dc
}

/// A raw LDAP connection (the ldap3 crate, not Ferry's connector) over LDAPS.
async fn ldap(dc: &Dc, user: &str, password: &str) -> Ldap {
    let pem = std::fs::read(&dc.ca_file).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let settings = LdapConnSettings::new().set_config(Arc::new(config));
    let (conn, mut l) = LdapConnAsync::with_settings(settings, &dc.ldaps_url).await.unwrap();
    ldap3::drive!(conn);
    l.simple_bind(user, password).await.unwrap().success().unwrap();
    l
}

async fn admin(dc: &Dc) -> Ldap {
    ldap(dc, &dc.admin_bind, &dc.admin_password).await
}

fn attrs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, HashSet<&'a str>)> {
    pairs.iter().map(|(k, v)| (*k, HashSet::from([*v]))).collect()
}

async fn add_user(l: &mut Ldap, dn: &str, sam: &str) -> LdapResult {
    l.add(dn, attrs(&[("objectClass", "user"), ("sAMAccountName", sam)]))
        .await
        .unwrap()
}

async fn add_group(l: &mut Ldap, dn: &str, sam: &str, group_type: &str) -> LdapResult {
    l.add(
        dn,
        attrs(&[
            ("objectClass", "group"),
            ("sAMAccountName", sam),
            ("groupType", group_type),
        ]),
    )
    .await
    .unwrap()
}

async fn add_member(l: &mut Ldap, group: &str, member: &str) -> LdapResult {
    l.modify(group, vec![Mod::Add("member", HashSet::from([member]))])
        .await
        .unwrap()
}

/// Asserts an AD answer: the result code and the Win32 code in front of the text.
fn assert_ad(r: &LdapResult, rc: u32, win32: &str, what: &str) {
    assert_eq!(r.rc, rc, "{what}: {r:?}");
    assert!(r.text.starts_with(win32), "{what}: expected {win32}…, got {:?}", r.text);
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_owned()
}

fn ldapsearch(dc: &Dc, args: &[&str]) -> (i32, String) {
    let out = Command::new("ldapsearch")
        .env("LDAPTLS_CACERT", &dc.ca_file)
        .args([
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-x",
            "-H",
            &dc.ldaps_url,
            "-D",
            &dc.admin_bind,
            "-w",
        ])
        .arg(&dc.admin_password)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// An OU with `n` users and a group holding them all.
async fn populated_ou(dc: &Dc, n: usize) -> (String, String) {
    let ou = dc.new_ou("dbl").await;
    let tag = suffix();
    let mut ldif = String::new();
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: CN=m{i},{ou}\nobjectClass: user\nsAMAccountName: m{i}-{tag}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Everyone,{ou}\nobjectClass: group\nsAMAccountName: all-{tag}\n"
    ));
    for i in 0..n {
        ldif.push_str(&format!("member: CN=m{i},{ou}\n"));
    }
    dc.ldapmodify(&ldif, true);
    let group = format!("CN=Everyone,{ou}");
    (ou, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldapsearch_sees_the_page_cap_and_the_ranges() {
    let dc = through_double(&["--page-size", "5", "--value-range", "7"]);
    let (ou, group) = populated_ou(&dc, 12).await;

    // Paged: the client asks for 1000 a page; AD gives at most MaxPageSize.
    let (rc, out) = ldapsearch(&dc, &["-E", "pr=1000/noprompt", "-b", &ou, "(objectClass=user)", "1.1"]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("dn: ")).count(), 12);
    let pages = out.lines().filter(|l| l.starts_with("# pagedresults:")).count();
    let direct = samba_itself();
    let (_, samba) = ldapsearch(
        &direct,
        &["-E", "pr=1000/noprompt", "-b", &ou, "(objectClass=user)", "1.1"],
    );
    let samba_pages = samba.lines().filter(|l| l.starts_with("# pagedresults:")).count();
    assert_eq!((pages, samba_pages), (3, 1), "double:\n{out}\nsamba:\n{samba}");

    // Not paged: MaxPageSize entries, then sizeLimitExceeded (4).
    let (rc, out) = ldapsearch(&dc, &["-b", &ou, "(objectClass=user)", "1.1"]);
    assert_eq!(rc, 4, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("dn: ")).count(), 5, "{out}");

    // A big attribute: the first MaxValRange values, under a range.
    let (_, out) = ldapsearch(&dc, &["-b", &group, "-s", "base", "(objectClass=*)", "member"]);
    let first: Vec<&str> = out.lines().filter(|l| l.starts_with("member")).collect();
    assert_eq!(first.len(), 7, "{out}");
    assert!(first.iter().all(|l| l.starts_with("member;range=0-6: ")), "{out}");
    let (_, out) = ldapsearch(
        &dc,
        &["-b", &group, "-s", "base", "(objectClass=*)", "member;range=7-*"],
    );
    let rest: Vec<&str> = out.lines().filter(|l| l.starts_with("member")).collect();
    assert_eq!(rest.len(), 5, "{out}");
    assert!(rest.iter().all(|l| l.starts_with("member;range=7-*: ")), "{out}");
    // Samba by itself returns all twelve at once.
    let (_, out) = ldapsearch(&direct, &["-b", &group, "-s", "base", "(objectClass=*)", "member"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("member: ")).count(), 12);

    // Ferry's reader follows both.
    let mut c = dc.admin().await;
    let all = c
        .read_users_and_groups(&ou, &["objectGUID", "member", "objectClass"])
        .await
        .unwrap();
    assert_eq!(all.len(), 13);
    let g = all.iter().find(|e| e.has_class("group")).unwrap();
    let members: HashSet<&Vec<u8>> = g.values("member").iter().collect();
    assert_eq!(members.len(), 12);
}

/// The `member;range=1-1` (added) or `0-0` (removed) values DirSync reports for `dn`, round by round.
async fn dirsync_member_rounds(dc: &Dc, cookie: &mut Vec<u8>, dn: &str, which: &str) -> Vec<usize> {
    let mut c = dc.admin().await;
    let nc = dc.base_dn.clone();
    let mut rounds = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..100 {
        let b = c.dirsync(&nc, cookie, &["objectGUID", "member"]).await.unwrap();
        *cookie = b.cookie;
        let n: usize = b
            .entries
            .iter()
            .filter(|e| e.dn.eq_ignore_ascii_case(dn))
            .map(|e| {
                let (added, removed) = ferry_agent::ad::member_delta(e);
                let vals = if which == "added" { added } else { removed };
                let count = vals.len();
                seen.extend(vals);
                count
            })
            .sum();
        rounds.push(n);
        if !b.more {
            break;
        }
    }
    rounds.push(seen.len());
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirsync_hands_a_big_member_delta_out_in_rounds() {
    let dc = through_double(&["--value-range", "7"]);
    let (ou, _) = populated_ou(&dc, 20).await;
    let group = format!("CN=Later,{ou}");
    let tag = suffix();
    dc.ldapmodify(
        &format!("dn: {group}\nobjectClass: group\nsAMAccountName: later-{tag}\n"),
        true,
    );
    let mut c = dc.admin().await;
    let mut cookie = c
        .dirsync_all(&dc.base_dn, &[], &["objectGUID", "member"])
        .await
        .unwrap()
        .cookie;

    let members: String = (0..20).map(|i| format!("member: CN=m{i},{ou}\n")).collect();
    dc.ldapmodify(
        &format!("dn: {group}\nchangetype: modify\nadd: member\n{members}"),
        false,
    );
    let rounds = dirsync_member_rounds(&dc, &mut cookie, &group, "added").await;
    // 20 added members: 7, 7 and 6 in three rounds, then all 20 distinct.
    assert_eq!(&rounds[rounds.len() - 4..], &[7, 7, 6, 20], "{rounds:?}");

    let gone: String = (0..10).map(|i| format!("member: CN=m{i},{ou}\n")).collect();
    dc.ldapmodify(
        &format!("dn: {group}\nchangetype: modify\ndelete: member\n{gone}"),
        false,
    );
    let rounds = dirsync_member_rounds(&dc, &mut cookie, &group, "removed").await;
    assert_eq!(&rounds[rounds.len() - 3..], &[7, 3, 10], "{rounds:?}");

    // The final cookie is the DC's: nothing more is pending.
    let rest = c
        .dirsync(&dc.base_dn, &cookie, &["objectGUID", "member"])
        .await
        .unwrap();
    assert!(
        rest.entries.iter().all(|e| !e.dn.eq_ignore_ascii_case(&group)),
        "{:?}",
        rest.entries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_refused_as_windows_refuses_them() {
    let dc = through_double(&[]);
    let ou = dc.new_ou("names").await;
    let mut l = admin(&dc).await;
    let mut samba = admin(&samba_itself()).await;
    let t = suffix();
    let sam = |n: &str| format!("{n}-{t}");

    // sAMAccountName of a user: 20 characters at most.
    let long = format!("u{t}{}", "x".repeat(14));
    assert_ad(
        &add_user(&mut l, &format!("CN=long,{ou}"), &long).await,
        80,
        "00000523",
        "21-character sAMAccountName",
    );
    assert_eq!(
        add_user(&mut samba, &format!("CN=long-samba,{ou}"), &long).await.rc,
        0,
        "Samba takes it"
    );
    let twenty = format!("{t}{}", "y".repeat(14));
    assert_eq!(add_user(&mut l, &format!("CN=twenty,{ou}"), &twenty).await.rc, 0);
    let r = l
        .modify(
            &format!("CN=twenty,{ou}"),
            vec![Mod::Replace("sAMAccountName", HashSet::from([long.as_str()]))],
        )
        .await
        .unwrap();
    assert_ad(&r, 80, "00000523", "renaming to 21 characters");
    // A group's may be longer.
    let group_name = format!("g{t}{}", "z".repeat(18));
    assert_eq!(
        add_group(&mut l, &format!("CN=g,{ou}"), &group_name, GLOBAL).await.rc,
        0
    );

    // RDN: 64 characters at most, on add and on rename.
    let cn65 = "c".repeat(65);
    assert_ad(
        &add_user(&mut l, &format!("CN={cn65},{ou}"), &sam("cn65")).await,
        19,
        "00002082",
        "65-character CN",
    );
    assert_eq!(
        add_user(&mut samba, &format!("CN={cn65},{ou}"), &sam("cn65")).await.rc,
        0,
        "Samba takes it"
    );
    assert_eq!(
        add_user(&mut l, &format!("CN={},{ou}", "d".repeat(64)), &sam("cn64"))
            .await
            .rc,
        0
    );
    let r = l
        .modifydn(
            &format!("CN=twenty,{ou}"),
            &format!("CN={}", "e".repeat(65)),
            true,
            None,
        )
        .await
        .unwrap();
    assert_ad(&r, 19, "00002082", "rename to a 65-character CN");

    // Samba and AD agree on illegal characters and duplicate UPNs: passed through.
    assert_ad(
        &add_user(&mut l, &format!("CN=star,{ou}"), "bad*name").await,
        19,
        "0000202F",
        "'*' in sAMAccountName",
    );
    let upn = format!("dup-{}@{}", suffix(), dc.realm.to_lowercase());
    for (cn, rc) in [("upn-a", 0), ("upn-b", 19)] {
        let name = sam(cn);
        let mut user = attrs(&[("objectClass", "user")]);
        user.push(("sAMAccountName", HashSet::from([name.as_str()])));
        user.push(("userPrincipalName", HashSet::from([upn.as_str()])));
        let r = l.add(&format!("CN={cn},{ou}"), user).await.unwrap();
        assert_eq!(r.rc, rc, "{cn} with a UPN another user has: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_nesting_follows_the_scopes() {
    let dc = through_double(&[]);
    let ou = dc.new_ou("nesting").await;
    let mut l = admin(&dc).await;
    let t = suffix();
    let (g, g2, u, d) = (
        format!("CN=Global,{ou}"),
        format!("CN=Global2,{ou}"),
        format!("CN=Universal,{ou}"),
        format!("CN=Local,{ou}"),
    );
    for (dn, sam, ty) in [
        (&g, format!("glob-{t}"), GLOBAL),
        (&g2, format!("glob2-{t}"), GLOBAL),
        (&u, format!("univ-{t}"), UNIVERSAL),
        (&d, format!("local-{t}"), DOMAIN_LOCAL),
    ] {
        assert_eq!(add_group(&mut l, dn, &sam, ty).await.rc, 0);
    }
    assert_ad(
        &add_member(&mut l, &g, &u).await,
        53,
        "00002145",
        "universal in global (8517)",
    );
    assert_ad(
        &add_member(&mut l, &g, &d).await,
        53,
        "00002144",
        "domain-local in global (8516)",
    );
    assert_ad(
        &add_member(&mut l, &u, &d).await,
        53,
        "00002146",
        "domain-local in universal (8518)",
    );
    for (outer, inner) in [(&g, &g2), (&u, &g), (&d, &u), (&d, &g)] {
        assert_eq!(add_member(&mut l, outer, inner).await.rc, 0, "{inner} in {outer}");
    }
    // A new group carrying a member it may not hold.
    let mut new = attrs(&[("objectClass", "group"), ("groupType", GLOBAL)]);
    let sam = format!("glob3-{t}");
    new.push(("sAMAccountName", HashSet::from([sam.as_str()])));
    new.push(("member", HashSet::from([d.as_str()])));
    assert_ad(
        &l.add(&format!("CN=Global3,{ou}"), new).await.unwrap(),
        53,
        "00002144",
        "created with a local member",
    );
    // Samba by itself accepts universal in global.
    let mut samba = admin(&samba_itself()).await;
    assert_eq!(add_member(&mut samba, &g, &u).await.rc, 0, "Samba takes it");
}

/// A non-admin account with the six delegated tasks on the whole domain.
async fn delegated_account(dc: &Dc) -> String {
    let name = format!("svc-dbl-{}", suffix());
    let dn = format!("CN={name},CN=Users,{}", dc.base_dn);
    let mut c = dc.admin().await;
    let user = ferry_agent::ad::NewAdUser {
        sam_account_name: name.clone(),
        password: Some(SVC_PW.into()),
        enabled: true,
        ..Default::default()
    };
    c.create_user(&format!("CN=Users,{}", dc.base_dn), &user).await.unwrap();
    let sid_raw = c
        .read_entry(&dn, &["objectSid"])
        .await
        .unwrap()
        .unwrap()
        .values("objectSid")[0]
        .clone();
    let sid = ferry_agent::preflight::sd::sid_to_string(&sid_raw).unwrap();
    let sddl: String = ferry_agent::preflight::Task::ALL.iter().map(|t| t.sddl(&sid)).collect();
    dc.samba_tool(&["dsacl", "set", "--objectdn", &dc.base_dn, "--sddl", &sddl]);
    format!("{}\\{name}", dc.domain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_objects_refuse_a_delegated_account() {
    let dc = through_double(&[]);
    let svc = delegated_account(&dc).await;
    let administrator = format!("CN=Administrator,CN=Users,{}", dc.base_dn);
    let domain_admins = format!("CN=Domain Admins,CN=Users,{}", dc.base_dn);
    let note = format!("note {}", suffix());
    let describe = |v: &str| vec![Mod::Replace("description".to_owned(), HashSet::from([v.to_owned()]))];

    let mut l = ldap(&dc, &svc, SVC_PW).await;
    assert_ad(
        &l.modify(&administrator, describe(&note)).await.unwrap(),
        50,
        "00002098",
        "write to Administrator",
    );
    let r = l
        .modify(
            &domain_admins,
            vec![Mod::Add("member", HashSet::from([administrator.as_str()]))],
        )
        .await
        .unwrap();
    assert_ad(&r, 50, "00002098", "write to Domain Admins");
    assert_ad(
        &l.delete(&administrator).await.unwrap(),
        50,
        "00002098",
        "delete of Administrator",
    );
    // An ordinary user is the delegated account's to write.
    let ou = dc.new_ou("prot").await;
    let mut a = admin(&dc).await;
    assert_eq!(
        add_user(&mut a, &format!("CN=plain,{ou}"), &format!("plain-{}", suffix()))
            .await
            .rc,
        0
    );
    assert_eq!(
        l.modify(&format!("CN=plain,{ou}"), describe(&note)).await.unwrap().rc,
        0
    );
    // A privileged account may write protected objects.
    assert_eq!(a.modify(&administrator, describe(&note)).await.unwrap().rc, 0);
    // Samba by itself lets the delegated account write the Administrator.
    let mut samba = ldap(&samba_itself(), &svc, SVC_PW).await;
    let r = samba
        .modify(&administrator, describe("written past AdminSDHolder"))
        .await
        .unwrap();
    assert_eq!(r.rc, 0, "Samba takes it: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_with_children_needs_the_tree_delete_control() {
    let dc = through_double(&[]);
    let ou = dc.new_ou("tree").await;
    let mut l = admin(&dc).await;
    let user = format!("CN=parent,{ou}");
    assert_eq!(add_user(&mut l, &user, &format!("parent-{}", suffix())).await.rc, 0);
    let child = format!("CN=Store,{user}");
    assert_eq!(
        l.add(&child, attrs(&[("objectClass", "classStore")])).await.unwrap().rc,
        0
    );

    assert_ad(
        &l.delete(&user).await.unwrap(),
        66,
        "00002015",
        "delete of a user with a child",
    );
    let tree = RawControl {
        ctype: "1.2.840.113556.1.4.805".into(),
        crit: true,
        val: None,
    };
    let r = l.with_controls(vec![tree]).delete(&user).await.unwrap();
    assert_eq!(r.rc, 0, "{r:?}");
    let (gone, _) = l
        .search(&ou, Scope::Subtree, "(cn=parent)", vec!["1.1"])
        .await
        .unwrap()
        .success()
        .unwrap();
    assert!(
        gone.is_empty(),
        "{:?}",
        gone.into_iter().map(SearchEntry::construct).collect::<Vec<_>>()
    );
}
