//! Safe identity end to end, on real Samba DCs: protected AD accounts are
//! never written from the cloud, and the domains of one org stay apart
//! (each cloud object belongs to one domain; a same-named object of another
//! domain is a recorded conflict, never a merge). Checked on the far side by
//! independent clients: ldapsearch for AD, SCIM and the REST API for the cloud.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::*;
use ferry_agent::ad::write::NewAdUser;
use serde_json::{json, Value};

/// The attributes of one AD account, as ldapsearch prints them (no volatile ones).
fn ad_account(dc: &Dc, sam: &str) -> String {
    let mut out: Vec<String> = dc
        .ldapsearch(
            &dc.base_dn,
            &format!("(sAMAccountName={sam})"),
            &["userAccountControl", "title", "givenName", "displayName", "description"],
        )
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    out.sort();
    out.join("\n")
}

fn in_ad(dc: &Dc, sam: &str) -> bool {
    dc.ldapsearch(&dc.base_dn, &format!("(sAMAccountName={sam})"), &["cn"])
        .contains("dn: ")
}

/// Cloud users named like AD's built-in Administrator and like the agent's
/// own service account, and a cloud edit of a linked user who has become
/// privileged since (`adminCount=1`, as SDProp sets it), change nothing in
/// AD: each is a sync error with code `protected`, a marker behind them
/// arrives, the errors survive an agent restart, and once the account is no
/// longer privileged a retry applies the edit and clears its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protected_ad_accounts_are_never_written_from_the_cloud() {
    let (dc, cloud, domain) = prepare().await;
    let users = format!("CN=Users,{}", dc.base_dn);
    dc.ldapmodify(
        &format!("dn: CN=Pat Ops,{users}\nobjectClass: user\nsAMAccountName: patops\ntitle: Operator\n"),
        true,
    );
    // A member of Domain Admins through a nested group: never imported.
    dc.ldapmodify(
        &format!("dn: CN=Hidden Admin,{users}\nobjectClass: user\nsAMAccountName: hiddenadmin\n"),
        true,
    );
    dc.ldapmodify(
        &format!(
            "dn: CN=Ops Admins,{users}\nobjectClass: group\nsAMAccountName: opsadmins\nmember: CN=Hidden Admin,{users}\n"
        ),
        true,
    );
    dc.ldapmodify(
        &format!("dn: CN=Domain Admins,{users}\nchangetype: modify\nadd: member\nmember: CN=Ops Admins,{users}\n"),
        false,
    );
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let pat = eventually("patops in the cloud", || cloud.user("patops")).await;
    let pat_id = pat["id"].as_str().unwrap().to_owned();
    eventually("the import", || cloud.user("early")).await;
    assert!(
        cloud.user("hiddenadmin").await.is_none(),
        "a nested domain admin is never synced"
    );
    assert!(cloud.user("Administrator").await.is_none());

    let admin_before = ad_account(&dc, "Administrator");
    let svc_before = ad_account(&dc, "svc-sync");
    // Pat becomes privileged (SDProp would set this on Windows within the hour).
    dc.ldapmodify(
        &format!("dn: CN=Pat Ops,{users}\nchangetype: modify\nreplace: adminCount\nadminCount: 1\n"),
        false,
    );
    let pat_before = ad_account(&dc, "patops");

    let poison_admin = scim_create_user(
        &cloud,
        json!({"userName": "Administrator", "active": false, "title": "taken over"}),
    )
    .await;
    let poison_svc = scim_create_user(&cloud, json!({"userName": "svc-sync", "title": "taken over"})).await;
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "title", "value": "Promoted"}]});
    let (st, v) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Users/{pat_id}"), Some(patch))
        .await;
    assert_eq!(st, 200, "{v}");
    scim_create_user(&cloud, json!({"userName": "marker", "title": "behind the poison"})).await;
    eventually("the marker in AD", || async { in_ad(&dc, "marker").then_some(()) }).await;

    let keys = [
        poison_admin["id"].as_str().unwrap(),
        poison_svc["id"].as_str().unwrap(),
        pat_id.as_str(),
    ];
    let errors = eventually("the three refusals listed", || async {
        let e = sync_errors(&cloud, &domain).await;
        keys.iter()
            .all(|k| e.iter().any(|x| x["object_key"] == *k))
            .then_some(e)
    })
    .await;
    for k in keys {
        let e = errors.iter().find(|x| x["object_key"] == k).unwrap();
        assert_eq!(e["code"], "protected", "{e}");
        assert_eq!(e["direction"], "cloud_to_ad", "{e}");
        assert!(e["advice"].as_str().unwrap().contains("protected"), "{e}");
    }
    assert_eq!(
        ad_account(&dc, "Administrator"),
        admin_before,
        "Administrator untouched"
    );
    assert_eq!(ad_account(&dc, "svc-sync"), svc_before, "the service account untouched");
    assert_eq!(
        ad_account(&dc, "patops"),
        pat_before,
        "the privileged account untouched"
    );
    dc.admin().await; // the administrator can still sign in

    // A restart neither loses nor repeats them.
    engine.stop().await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    scim_create_user(&cloud, json!({"userName": "marker2"})).await;
    eventually("a change after the restart", || async {
        in_ad(&dc, "marker2").then_some(())
    })
    .await;
    let after = sync_errors(&cloud, &domain).await;
    assert_eq!(after.len(), errors.len(), "{after:?}");

    // Pat is no longer privileged: a retry writes the edit and clears the error.
    dc.ldapmodify(
        &format!("dn: CN=Pat Ops,{users}\nchangetype: modify\ndelete: adminCount\n"),
        false,
    );
    let eid = errors.iter().find(|x| x["object_key"] == pat_id.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, v) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/sync-errors/{eid}/retry"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("the retried edit in AD", || async {
        ad_account(&dc, "patops").contains("title: Promoted").then_some(())
    })
    .await;
    eventually("its error cleared", || async {
        let e = sync_errors(&cloud, &domain).await;
        (!e.iter().any(|x| x["object_key"] == pat_id.as_str())).then_some(())
    })
    .await;
    assert_eq!(ad_account(&dc, "Administrator"), admin_before);
    engine.stop().await;
}

async fn links_of(cloud: &Cloud, id: &str) -> Value {
    let (st, v) = cloud
        .call(reqwest::Method::GET, &format!("/api/v1/objects/{id}/links"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn member_ids(cloud: &Cloud, group: &str) -> Vec<String> {
    let g = cloud.group(group).await.unwrap();
    let mut ids: Vec<String> = g["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Two domains in one org, each with its own `jsmith` and `Engineers`. The
/// second domain's agent neither changes nor links the first's: its
/// same-named objects are conflicts listed for it, and AD of the first
/// domain is untouched. A user made in the cloud goes to the default
/// domain only; one placed in the second domain goes there only; a delete
/// in the second domain changes nothing of the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_domains_in_one_org_stay_apart() {
    let a1 = delegated_dc().await;
    let a2 = delegated(Dc::start_realm("OTHER.TEST", "OTHER")).await;
    let cloud = Cloud::start().await;
    let d1 = add_domain(&cloud, &a1).await;
    let d2 = add_domain(&cloud, &a2).await;
    for (dc, given, enabled) in [(&a1, "John", true), (&a2, "Jane", false)] {
        let u = NewAdUser {
            sam_account_name: "jsmith".into(),
            cn: Some("John Smith".into()),
            attributes: vec![("givenName".into(), given.into()), ("sn".into(), "Smith".into())],
            password: Some("Jsmith-Pa55-word".into()),
            enabled,
            ..Default::default()
        };
        dc.admin()
            .await
            .create_user(&format!("CN=Users,{}", dc.base_dn), &u)
            .await
            .unwrap();
    }
    let u1 = format!("CN=Users,{}", a1.base_dn);
    let u2 = format!("CN=Users,{}", a2.base_dn);
    a1.ldapmodify(
        &format!("dn: CN=Engineers,{u1}\nobjectClass: group\nsAMAccountName: Engineers\nmember: CN=John Smith,{u1}\n"),
        true,
    );
    a2.ldapmodify(
        &format!("dn: CN=Engineers,{u2}\nobjectClass: group\nsAMAccountName: Engineers\n"),
        true,
    );
    let ad1_before = ad_account(&a1, "jsmith");

    let agent1 = enrol(&cloud, &d1).await;
    let engine1 = run_engine(&a1, &cloud, &agent1).await;
    let jsmith = eventually("A1's jsmith in the cloud", || async {
        cloud.user("jsmith").await.filter(|u| u["name"]["givenName"] == "John")
    })
    .await;
    let jid = jsmith["id"].as_str().unwrap().to_owned();
    eventually("Engineers with its member", || async {
        (member_ids(&cloud, "Engineers").await == vec![jid.clone()]).then_some(())
    })
    .await;

    a2.ldapmodify(
        &format!("dn: CN=Only Two,{u2}\nobjectClass: user\nsAMAccountName: onlytwo\n"),
        true,
    );
    let agent2 = enrol(&cloud, &d2).await;
    let engine2 = run_engine(&a2, &cloud, &agent2).await;
    eventually("A2's own user in the cloud", || cloud.user("onlytwo")).await;
    let errors = eventually("A2's same-named objects listed as conflicts", || async {
        let e = sync_errors(&cloud, &d2).await;
        let named = |n: &str| e.iter().any(|x| x["object_name"].as_str().unwrap_or("").starts_with(n));
        (named("jsmith") && named("Engineers")).then_some(e)
    })
    .await;
    for e in &errors {
        assert_eq!(e["direction"], "ad_to_cloud", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("example.test"),
            "names the other domain: {e}"
        );
    }
    assert!(sync_errors(&cloud, &d1).await.is_empty(), "A1 is clean");

    // The cloud's jsmith and Engineers are A1's, unchanged.
    let now = cloud.user("jsmith").await.unwrap();
    assert_eq!(now["id"], jsmith["id"]);
    assert_eq!(now["active"], true, "{now}");
    assert_eq!(now["name"]["givenName"], "John", "{now}");
    assert_eq!(member_ids(&cloud, "Engineers").await, vec![jid.clone()]);
    let links = links_of(&cloud, &jid).await;
    assert_eq!(links["links"].as_array().unwrap().len(), 1, "{links}");
    assert_eq!(links["home_domain"], d1.as_str(), "{links}");

    // A user made in the cloud goes to the default domain (the first) only,
    // and cannot be placed in another; with the second as the default, new
    // users go there only.
    let one = scim_create_user(&cloud, json!({"userName": "cloudone"})).await;
    eventually("cloudone in A1", || async { in_ad(&a1, "cloudone").then_some(()) }).await;
    let place = |domain: String, id: Value| {
        let cloud = &cloud;
        async move {
            let (st, v) = cloud
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/domains/{domain}/objects"),
                    Some(json!({ "ids": [id] })),
                )
                .await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };
    let v = place(d2.clone(), one["id"].clone()).await;
    assert_eq!(v["placed"], 0, "{v}");
    assert_eq!(v["elsewhere"][0]["domain_id"], d1.as_str(), "{v}");
    let (st, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/domains/{d2}"),
            Some(json!({"default_for_cloud_objects": true})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["default_for_cloud_objects"], true, "{v}");
    let four = scim_create_user(&cloud, json!({"userName": "cloudfour"})).await;
    eventually("cloudfour in A2", || async { in_ad(&a2, "cloudfour").then_some(()) }).await;
    // Feeds are applied in order: A2 has seen every earlier entry.
    assert!(!in_ad(&a2, "cloudone"), "cloudone is A1's, never created in A2");
    let v = place(d1.clone(), four["id"].clone()).await;
    assert_eq!(v["elsewhere"][0]["domain_id"], d2.as_str(), "cloudfour is A2's: {v}");

    // A delete in A2's AD of its jsmith changes nothing of A1's.
    a2.ldapmodify(&format!("dn: CN=John Smith,{u2}\nchangetype: delete\n"), false);
    a2.ldapmodify(
        &format!("dn: CN=After Delete,{u2}\nobjectClass: user\nsAMAccountName: afterdelete\n"),
        true,
    );
    eventually("a change after the delete", || cloud.user("afterdelete")).await;
    let now = cloud.user("jsmith").await.expect("A1's jsmith stays");
    assert_eq!(now["active"], true, "{now}");
    // Back to A1 as the default: once A1 has a later user, it has applied
    // every earlier entry, and its AD jsmith is exactly as it was.
    let (st, _) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/domains/{d1}"),
            Some(json!({"default_for_cloud_objects": true})),
        )
        .await;
    assert_eq!(st, 200);
    scim_create_user(&cloud, json!({"userName": "lastone"})).await;
    eventually("a last change in A1", || async { in_ad(&a1, "lastone").then_some(()) }).await;
    assert_eq!(ad_account(&a1, "jsmith"), ad1_before, "A1's jsmith untouched");
    assert!(!in_ad(&a1, "cloudfour"), "A2's users never in A1");
    engine1.stop().await;
    engine2.stop().await;
}

async fn patch_domain(cloud: &Cloud, domain: &str, body: Value) -> Value {
    let (st, v) = cloud
        .call(reqwest::Method::PATCH, &format!("/api/v1/domains/{domain}"), Some(body))
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn preview(cloud: &Cloud, domain: &str, scope: &Value) -> Value {
    let (st, v) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/scope-preview"),
            Some(scope.clone()),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// The admin chooses which OUs sync. Objects outside the scope never reach
/// the cloud, and a cloud change that would land on one is refused
/// (`out_of_scope`) with nothing written. A scope that leaves linked objects
/// out is previewed first, and the preview's numbers are what the sync then
/// does: here more than the threshold, so the deletes are held in quarantine.
/// A scope that takes an OU in imports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_chooses_the_ous_that_sync_and_previews_a_change() {
    let (dc, cloud, domain) = prepare().await;
    let staff = dc.new_ou("Staff").await;
    let contractors = dc.new_ou("Contractors").await;
    for (ou, names) in [
        (&staff, ["s1", "s2", "s3"].as_slice()),
        (&contractors, &["c1", "c2", "c3", "c4"]),
    ] {
        for n in names {
            dc.ldapmodify(
                &format!("dn: CN={n},{ou}\nobjectClass: user\nsAMAccountName: {n}\ntitle: AD\n"),
                true,
            );
        }
    }
    let users = format!("CN=Users,{}", dc.base_dn);
    // The scope must keep the OU where cloud users land.
    let (st, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/domains/{domain}"),
            Some(json!({"policies": {"scope": {"include": [staff]}}})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("CN=Users"), "{v}");
    patch_domain(
        &cloud,
        &domain,
        json!({"policies": {"scope": {"include": [staff, users]}, "delete_threshold": 2}}),
    )
    .await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    for n in ["s1", "s2", "s3", "early"] {
        eventually(&format!("{n} in the cloud"), || cloud.user(n)).await;
    }

    // A cloud user that would land on an AD account outside the scope.
    let c1_before = ad_account(&dc, "c1");
    let poison = scim_create_user(&cloud, json!({"userName": "c1", "title": "from the cloud"})).await;
    scim_create_user(&cloud, json!({"userName": "marker"})).await;
    eventually("the marker in AD", || async { in_ad(&dc, "marker").then_some(()) }).await;
    let errors = eventually("the refusal listed", || async {
        let e = sync_errors(&cloud, &domain).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["object_key"], poison["id"]);
    assert_eq!(errors[0]["code"], "out_of_scope", "{errors:?}");
    assert_eq!(ad_account(&dc, "c1"), c1_before, "nothing written outside the scope");
    for n in ["c2", "c3", "c4"] {
        assert!(cloud.user(n).await.is_none(), "{n} is outside the scope");
    }

    // Leaving Staff out: previewed, then held in quarantine as previewed.
    let narrower = json!({"include": [users]});
    let p = preview(&cloud, &domain, &narrower).await;
    assert_eq!(p["leaving"]["users"], 3, "{p}");
    assert_eq!(p["leaving"]["held_in_quarantine"], true, "{p}");
    assert_eq!(p["leaving"]["action"], "deleted in the cloud", "{p}");
    assert!(p["leaving"]["sample"][0].as_str().unwrap().contains("OU=Staff"), "{p}");
    patch_domain(&cloud, &domain, json!({"policies": {"scope": narrower}})).await;
    let held = eventually("the leaving users held in quarantine", || async {
        pending_quarantine(&cloud, &domain).await.into_iter().next()
    })
    .await;
    assert_eq!(held["deletes"], p["leaving"]["users"], "the preview's number: {held}");
    for n in ["s1", "s2", "s3"] {
        assert!(cloud.user(n).await.is_some(), "held, not deleted: {n}");
    }

    // Taking Contractors in imports them.
    let wider = json!({"include": [users, contractors]});
    let p = preview(&cloud, &domain, &wider).await;
    assert_eq!(p["source"], "agent", "the agent read AD: {p}");
    assert_eq!(p["leaving"]["users"], 3, "Staff is still left out: {p}");
    assert_eq!(p["entering"]["users"], 4, "c1–c4 (c1 matched to the cloud's c1): {p}");
    patch_domain(&cloud, &domain, json!({"policies": {"scope": wider}})).await;
    for n in ["c2", "c3", "c4"] {
        eventually(&format!("{n} in the cloud"), || cloud.user(n)).await;
    }
    engine.stop().await;
}

/// The users of the cloud, by userName.
async fn cloud_usernames(cloud: &Cloud) -> std::collections::BTreeSet<String> {
    all_cloud_users(cloud)
        .await
        .iter()
        .map(|u| u["userName"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Adds (`add`) or removes a member of an AD group.
fn ad_member(dc: &Dc, group: &str, member: &str, add: bool) {
    let op = if add { "add" } else { "delete" };
    dc.ldapmodify(
        &format!("dn: {group}\nchangetype: modify\n{op}: member\nmember: {member}\n"),
        false,
    );
}

/// Group scope both ways, each previewed, and each preview's numbers are
/// what the sync then does.
/// - AD → cloud, "only members of these groups": a scope of one AD group
///   (with a nested group) leaves out the linked users who are not in it
///   (deleted in the cloud, as previewed), keeps the user OU where the
///   cloud's own land, takes in a user who joins the nested group later,
///   and lets go of one who leaves. A wider scope takes in exactly the
///   users the preview counted.
/// - Cloud → AD, cloud groups bound to the domain: with no default domain,
///   cloud users sync nowhere; binding a cloud group places it, its
///   members and its nested group's members in the domain (created in AD,
///   as previewed), and a member added later follows.
///
/// At the end both sides are compared whole: the cloud's users are exactly
/// the AD users the scope admits, and the cloud's own users are in AD.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_scopes_by_group_both_ways_and_the_preview_matches_the_sync() {
    let (dc, cloud, domain) = prepare().await;
    let base = dc.base_dn.clone();
    let staff = dc.new_ou("Staff").await;
    let groups = dc.new_ou("Groups").await;
    for n in ["p1", "p2", "p3", "p4", "w1", "w2", "o1"] {
        dc.ldapmodify(
            &format!("dn: CN={n},{staff}\nobjectClass: user\nsAMAccountName: {n}\n"),
            true,
        );
    }
    let member = |n: &str| format!("member: CN={n},{staff}\n");
    let nested = format!("CN=Pilot Nested,{groups}");
    let pilot = format!("CN=Pilot,{groups}");
    let wave2 = format!("CN=Wave Two,{groups}");
    dc.ldapmodify(
        &format!(
            "dn: {nested}\nobjectClass: group\nsAMAccountName: pilotnested\n{}",
            member("p3")
        ),
        true,
    );
    dc.ldapmodify(
        &format!(
            "dn: {pilot}\nobjectClass: group\nsAMAccountName: pilot\n{}{}member: {nested}\n",
            member("p1"),
            member("p2")
        ),
        true,
    );
    dc.ldapmodify(
        &format!(
            "dn: {wave2}\nobjectClass: group\nsAMAccountName: wavetwo\n{}{}",
            member("w1"),
            member("w2")
        ),
        true,
    );
    patch_domain(&cloud, &domain, json!({"policies": {"delete_threshold": 100}})).await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    for n in ["p1", "p2", "p3", "p4", "w1", "w2", "o1", "early"] {
        eventually(&format!("{n} in the cloud"), || cloud.user(n)).await;
    }
    for g in ["pilot", "pilotnested", "wavetwo"] {
        eventually(&format!("group {g} in the cloud"), || cloud.group(g)).await;
    }
    let before = cloud_usernames(&cloud).await;
    // Those of CN=Users, where the cloud's own land: in scope whatever their groups.
    let from_user_ou: std::collections::BTreeSet<String> = dc
        .ldapsearch(
            &format!("CN=Users,{base}"),
            "(objectCategory=person)",
            &["sAMAccountName"],
        )
        .lines()
        .filter_map(|l| l.strip_prefix("sAMAccountName: "))
        .map(str::to_owned)
        .filter(|n| before.contains(n))
        .collect();
    assert!(from_user_ou.contains("early"), "{from_user_ou:?}");

    // Only the Pilot group: p4, w1, w2 and o1 leave, and the Wave Two
    // group with them; Pilot, Pilot Nested, p1–p3 and CN=Users stay.
    let pilot_only = json!({"groups": [pilot]});
    let p = preview(&cloud, &domain, &pilot_only).await;
    assert_eq!(p["source"], "agent", "the agent read AD: {p}");
    assert_eq!(p["leaving"]["users"], 4, "{p}");
    assert_eq!(p["leaving"]["groups"], 1, "{p}");
    assert_eq!(p["entering"]["users"], 0, "{p}");
    assert_eq!(p["leaving"]["held_in_quarantine"], false, "{p}");
    patch_domain(&cloud, &domain, json!({"policies": {"scope": pilot_only}})).await;
    let after = eventually("the users outside Pilot deleted in the cloud", || async {
        let now = cloud_usernames(&cloud).await;
        (!now.contains("o1") && !now.contains("p4") && !now.contains("w1") && !now.contains("w2")).then_some(now)
    })
    .await;
    assert_eq!(
        before.difference(&after).count() as u64,
        p["leaving"]["users"].as_u64().unwrap(),
        "the preview's number: {before:?} → {after:?}"
    );
    eventually("Wave Two gone with its members", || async {
        cloud.group("wavetwo").await.is_none().then_some(())
    })
    .await;
    for n in ["p1", "p2", "p3", "early"] {
        assert!(after.contains(n), "{n} stays: {after:?}");
    }

    // p4 joins the nested group: in; p2 leaves Pilot: out.
    ad_member(&dc, &nested, &format!("CN=p4,{staff}"), true);
    let p4 = eventually("p4, who joined Pilot Nested, in the cloud", || cloud.user("p4")).await;
    let g = eventually("p4 a member of Pilot Nested in the cloud", || async {
        let g = cloud.group("pilotnested").await?;
        let ids: Vec<&str> = g["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["value"].as_str())
            .collect();
        ids.contains(&p4["id"].as_str()?).then_some(g)
    })
    .await;
    assert_eq!(g["members"].as_array().unwrap().len(), 2, "p3 and p4: {g}");
    ad_member(&dc, &pilot, &format!("CN=p2,{staff}"), false);
    eventually("p2, who left Pilot, gone from the cloud", || async {
        cloud.user("p2").await.is_none().then_some(())
    })
    .await;

    // A wider scope: Pilot and Wave Two. The preview counts w1, w2 and the
    // group coming in, and nothing leaving.
    let wider = json!({"groups": [pilot, wave2]});
    let p = preview(&cloud, &domain, &wider).await;
    assert_eq!(p["entering"]["users"], 2, "w1 and w2: {p}");
    assert_eq!(p["entering"]["groups"], 1, "Wave Two: {p}");
    assert_eq!(p["leaving"]["users"], 0, "{p}");
    let before = cloud_usernames(&cloud).await;
    patch_domain(&cloud, &domain, json!({"policies": {"scope": wider}})).await;
    for n in ["w1", "w2"] {
        eventually(&format!("{n} in the cloud"), || cloud.user(n)).await;
    }
    eventually("Wave Two in the cloud", || cloud.group("wavetwo")).await;
    let after = cloud_usernames(&cloud).await;
    assert_eq!(
        after.difference(&before).count() as u64,
        p["entering"]["users"].as_u64().unwrap(),
        "the preview's number: {before:?} → {after:?}"
    );

    // Cloud → AD: with no default domain, cloud objects stay in the cloud
    // until a bound group places them.
    patch_domain(&cloud, &domain, json!({"default_for_cloud_objects": false})).await;
    let mut ids = Vec::new();
    for n in ["cu1", "cu2", "cu3", "cu4"] {
        ids.push(scim_create_user(&cloud, json!({"userName": n})).await["id"].clone());
    }
    let scim_group = |name: &str, members: &[&Value]| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": name,
            "members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>(),
        })
    };
    let (st, inner) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(scim_group("Laptop Pilots", &[&ids[2]])),
        )
        .await;
    assert_eq!(st, 201, "{inner}");
    let (st, laptops) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(scim_group("Laptops", &[&ids[0], &ids[1], &inner["id"]])),
        )
        .await;
    assert_eq!(st, 201, "{laptops}");
    // A marker through another, placed user shows the feed has passed them.
    let marker = scim_create_user(&cloud, json!({"userName": "placedmarker"})).await;
    let (st, v) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/objects"),
            Some(json!({"ids": [marker["id"]]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("the placed marker in AD", || async {
        in_ad(&dc, "placedmarker").then_some(())
    })
    .await;
    for n in ["cu1", "cu2", "cu3"] {
        assert!(!in_ad(&dc, n), "{n} belongs to no domain yet");
    }

    let bound = json!({"groups": [pilot, wave2], "cloud_groups": [laptops["id"]]});
    let p = preview(&cloud, &domain, &bound).await;
    assert_eq!(p["cloud_to_ad"]["entering"]["users"], 3, "cu1–cu3: {p}");
    assert_eq!(p["cloud_to_ad"]["entering"]["groups"], 2, "Laptops, Laptop Pilots: {p}");
    assert_eq!(p["entering"]["users"], 0, "nothing new from AD: {p}");
    assert_eq!(p["leaving"]["users"], 0, "{p}");
    patch_domain(&cloud, &domain, json!({"policies": {"scope": bound}})).await;
    for n in ["cu1", "cu2", "cu3", "Laptops", "Laptop Pilots"] {
        eventually(&format!("{n} in AD"), || async { in_ad(&dc, n).then_some(()) }).await;
    }
    assert!(!in_ad(&dc, "cu4"), "cu4 is in no bound group");
    // A member added to the bound group later follows it into AD.
    let (st, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/scim/v2/Groups/{}", laptops["id"].as_str().unwrap()),
            Some(json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": ids[3]}]}],
            })),
        )
        .await;
    assert!(st == 200 || st == 204, "{st} {v}");
    eventually("cu4 in AD", || async { in_ad(&dc, "cu4").then_some(()) }).await;
    for n in ["cu1", "cu2", "cu4", "laptop pilots"] {
        eventually(&format!("{n} a member of Laptops in AD"), || async {
            dc.ldapsearch(&base, "(sAMAccountName=laptops)", &["member"])
                .to_lowercase()
                .contains(&format!("cn={n},"))
                .then_some(())
        })
        .await;
    }

    // Both sides whole: the cloud's users are the AD users the scope
    // admits (Pilot's and Wave Two's members, nested ones included, and
    // everyone in CN=Users but the protected and the service account),
    // and every cloud user is in AD.
    let in_cloud = cloud_usernames(&cloud).await;
    let mut expected: std::collections::BTreeSet<String> =
        ["p1", "p3", "p4", "w1", "w2", "cu1", "cu2", "cu3", "cu4", "placedmarker"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    expected.extend(from_user_ou.iter().cloned());
    assert_eq!(in_cloud, expected, "the cloud's users are exactly the scope's");
    for n in &in_cloud {
        assert!(in_ad(&dc, n), "{n} is in AD");
    }
    engine.stop().await;
}
