//! Two-way sync end to end: a real Samba AD DC, a real ferry-cloud (HTTP on
//! loopback, SQLite) and the agent's sync engine, each change checked on
//! the far side by an independent client (ldapsearch for AD, SCIM for the
//! cloud).
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use ferry_agent::ad::write::NewAdUser;
use ferry_agent::sync;
use serde_json::json;

async fn setup() -> (Dc, Cloud, Engine) {
    let (dc, cloud, domain) = prepare().await;
    let agent = enrol(&cloud, &domain).await;
    let stop = run_engine(&dc, &cloud, &agent).await;
    (dc, cloud, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_flow_both_ways_and_settle() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ferry_agent=info")
        .with_test_writer()
        .try_init();
    let (dc, cloud, _stop) = setup().await;
    let users = format!("CN=Users,{}", dc.base_dn);

    // Full import: the user that existed before the agent is in the cloud.
    let early = eventually("the initial import", || async { cloud.user("early").await }).await;
    assert_eq!(early["name"]["givenName"], "Early");
    assert_eq!(early["emails"][0]["value"], "early@example.test");
    assert!(
        cloud.user("svc-sync").await.is_none(),
        "the agent's own account is never synced"
    );
    assert!(cloud.user("krbtgt").await.is_none() && cloud.user("Administrator").await.is_none());

    // AD → cloud: create, change.
    let mut admin = dc.admin().await;
    let ann_user = NewAdUser {
        sam_account_name: "ann".into(),
        cn: Some("Ann Lee".into()),
        attributes: vec![("givenName".into(), "Ann".into()), ("title".into(), "Engineer".into())],
        password: Some("Ann-Pa55-word".into()),
        enabled: true,
        ..Default::default()
    };
    admin.create_user(&users, &ann_user).await.unwrap();
    let ann = eventually("an AD user in the cloud", || async { cloud.user("ann").await }).await;
    assert_eq!(ann["title"], "Engineer");
    assert_eq!(ann["active"], true, "an enabled AD account is active");
    dc.ldapmodify(
        &format!("dn: CN=Ann Lee,{users}\nchangetype: modify\nreplace: title\ntitle: Architect\n"),
        false,
    );
    eventually("an AD change in the cloud", || async {
        cloud.user("ann").await.filter(|u| u["title"] == "Architect")
    })
    .await;

    // cloud → AD: a user created in the cloud lands in the user OU.
    let (st, bob) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "bob", "name": {"givenName": "Bob", "familyName": "Stone"}, "title": "Ops"})),
        )
        .await;
    assert_eq!(st, 201, "{bob}");
    eventually("a cloud user in AD", || async {
        let l = dc.ldapsearch(
            &users,
            "(sAMAccountName=bob)",
            &["title", "userPrincipalName", "givenName"],
        );
        (l.contains("title: Ops") && l.contains(&format!("userPrincipalName: bob@{}", dc.realm.to_lowercase())))
            .then_some(())
    })
    .await;

    // The AD account waits for a password (disabled), but the cloud user stays active.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cloud.user("bob").await.unwrap()["active"], true);

    // A password set in the cloud reaches AD (sealed to the agent on the way):
    // the account is enabled and the password works for a real bind.
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "password", "value": "Bob-Cloud-Pa55"}]});
    let (st, _) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Users/{bob_id}"), Some(patch))
        .await;
    assert_eq!(st, 200);
    let bind_as = format!("{}\\bob", dc.domain);
    eventually("the cloud password works in AD", || async {
        let mut c = ferry_agent::ad::AdConnection::connect(&dc.admin_settings())
            .await
            .ok()?;
        c.bind(&bind_as, "Bob-Cloud-Pa55").await.ok()
    })
    .await;
    assert!(dc
        .ldapsearch(&users, "(sAMAccountName=bob)", &["userAccountControl"])
        .contains("userAccountControl: 512"));
    let mut tx = cloud.store.begin().await.unwrap();
    let orgs = tx.list_orgs().await.unwrap();
    let feed = tx.read_feed(orgs[0].id, 0, 1000).await.unwrap();
    drop(tx);
    assert!(
        !format!("{feed:?}").contains("Bob-Cloud-Pa55"),
        "no plaintext in the feed"
    );

    // A group made in the cloud with an AD user in it.
    let (st, g) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "Builders", "members": [{"value": ann["id"]}]})),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    eventually("a cloud group with its member in AD", || async {
        let l = dc.ldapsearch(&users, "(cn=Builders)", &["member"]);
        l.contains("member: CN=Ann Lee").then_some(())
    })
    .await;

    // Suspending in the cloud disables in AD.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "active", "value": false}]});
    cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/scim/v2/Users/{}", ann["id"].as_str().unwrap()),
            Some(patch),
        )
        .await;
    eventually("a suspension in AD", || async {
        let l = dc.ldapsearch(&users, "(sAMAccountName=ann)", &["userAccountControl"]);
        l.lines()
            .find_map(|x| x.strip_prefix("userAccountControl: "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| v & 2 != 0)
    })
    .await;

    // AD: disable, rename and move keep identity.
    let mut admin = dc.admin().await;
    // (bob has a password now; an account that never had one stays "waiting".)
    let bob_dn = format!("CN=bob,{users}");
    admin.set_enabled(&bob_dn, false).await.unwrap();
    eventually("an AD disable in the cloud", || async {
        cloud.user("bob").await.filter(|u| u["active"] == false)
    })
    .await;
    let moved_ou = dc.new_ou("moved").await;
    let ann_dn = format!("CN=Ann Lee,{users}");
    let new_dn = admin
        .rename_move(&ann_dn, Some("Ann Lee-Smith"), Some(&moved_ou))
        .await
        .unwrap();
    admin
        .set_attributes(&new_dn, &[("sAMAccountName", Some("ann.smith"))])
        .await
        .unwrap();
    let renamed = eventually("an AD rename in the cloud", || async { cloud.user("ann.smith").await }).await;
    assert_eq!(
        renamed["id"], ann["id"],
        "the same cloud user: identity is the objectGUID"
    );
    assert!(cloud.user("ann").await.is_none());

    // AD groups, nested, arrive with their members; a rename follows.
    dc.ldapmodify(
        &format!("dn: CN=Inner,{users}\nobjectClass: group\nsAMAccountName: inner\nmember: {new_dn}\n"),
        true,
    );
    dc.ldapmodify(
        &format!("dn: CN=Outer,{users}\nobjectClass: group\nsAMAccountName: outer\nmember: CN=Inner,{users}\n"),
        true,
    );
    let group = |name: &'static str| cloud.group(name);
    let outer = eventually("a nested AD group in the cloud", || async {
        group("outer").await.filter(|g| g["members"][0]["type"] == "Group")
    })
    .await;
    let inner = group("inner").await.unwrap();
    assert_eq!(inner["members"][0]["value"], ann["id"]);
    assert_eq!(outer["members"][0]["value"], inner["id"]);
    dc.ldapmodify(
        &format!("dn: CN=Inner,{users}\nchangetype: modify\nreplace: sAMAccountName\nsAMAccountName: inner-renamed\n"),
        false,
    );
    eventually("an AD group rename in the cloud", || async {
        group("inner-renamed").await
    })
    .await;
    // A group deleted in the cloud is deleted in AD.
    cloud
        .call(
            reqwest::Method::DELETE,
            &format!("/scim/v2/Groups/{}", outer["id"].as_str().unwrap()),
            None,
        )
        .await;
    eventually("a cloud group delete in AD", || async {
        (!dc.ldapsearch(&users, "(objectClass=group)", &["cn"])
            .contains("cn: Outer"))
        .then_some(())
    })
    .await;

    // AD membership changes reach the cloud; AD group deletes too.
    dc.ldapmodify(
        &format!("dn: CN=Inner,{users}\nchangetype: modify\nadd: member\nmember: CN=bob,{users}\n"),
        false,
    );
    eventually("an AD member add in the cloud", || async {
        group("inner-renamed")
            .await
            .filter(|g| g["members"].as_array().is_some_and(|m| m.len() == 2))
    })
    .await;
    dc.ldapmodify(
        &format!("dn: CN=Inner,{users}\nchangetype: modify\ndelete: member\nmember: {new_dn}\n"),
        false,
    );
    eventually("an AD member removal in the cloud", || async {
        group("inner-renamed")
            .await
            .filter(|g| g["members"].as_array().is_some_and(|m| m.len() == 1))
    })
    .await;
    dc.ldapmodify(&format!("dn: CN=Inner,{users}\nchangetype: delete\n"), false);
    eventually("an AD group delete in the cloud", || async {
        group("inner-renamed").await.is_none().then_some(())
    })
    .await;

    // Cloud: a change, a member removal, a group rename, a user delete.
    let builders = group("Builders").await.unwrap();
    let bid = builders["id"].as_str().unwrap().to_owned();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "replace", "path": "displayName", "value": "Makers"},
        {"op": "remove", "path": format!("members[value eq \"{}\"]", ann["id"].as_str().unwrap())}]});
    let (st, v) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Groups/{bid}"), Some(patch))
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("a cloud group rename and member removal in AD", || async {
        let l = dc.ldapsearch(&users, "(cn=Builders)", &["sAMAccountName", "member"]);
        (l.contains("sAMAccountName: Makers") && !l.contains("member:")).then_some(())
    })
    .await;
    // A group nested in a group, in the cloud, nests in AD.
    let (st, crew) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "Crew", "members": [{"value": bid, "type": "Group"}]})),
        )
        .await;
    assert_eq!(st, 201, "{crew}");
    eventually("a nested cloud group in AD", || async {
        dc.ldapsearch(&users, "(cn=Crew)", &["member"])
            .contains("member: CN=Builders,")
            .then_some(())
    })
    .await;
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "title", "value": "Lead"}]});
    cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Users/{bob_id}"), Some(patch))
        .await;
    eventually("a cloud change in AD", || async {
        dc.ldapsearch(&users, "(sAMAccountName=bob)", &["title"])
            .contains("title: Lead")
            .then_some(())
    })
    .await;
    admin.set_enabled(&bob_dn, true).await.unwrap();
    cloud
        .call(reqwest::Method::DELETE, &format!("/scim/v2/Users/{bob_id}"), None)
        .await;
    eventually("a cloud delete disables the AD user (default policy)", || async {
        let l = dc.ldapsearch(&users, "(sAMAccountName=bob)", &["userAccountControl"]);
        l.contains("userAccountControl: 514").then_some(())
    })
    .await;

    // An AD delete removes the cloud user (found by reconciliation).
    dc.ldapmodify(&format!("dn: CN=Early Bird,{users}\nchangetype: delete\n"), false);
    eventually("an AD delete in the cloud", || async {
        cloud.user("early").await.is_none().then_some(())
    })
    .await;

    // No echo: once settled, nothing more is written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let head = cloud.feed_head().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        cloud.feed_head().await,
        head,
        "the cloud feed is quiet after the changes settled"
    );
}

async fn cloud_user_count(cloud: &Cloud) -> i64 {
    let (_, v) = cloud.call(reqwest::Method::GET, "/scim/v2/Users?count=0", None).await;
    v["totalResults"].as_i64().unwrap_or(-1)
}

fn ad_count(dc: &Dc, base: &str, filter: &str) -> usize {
    dc.ldapsearch(base, filter, &["dn"])
        .lines()
        .filter(|l| l.starts_with("dn:"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_import_and_mid_stream_then_restart_converges() {
    let (dc, cloud, domain) = prepare().await;
    // The early user from prepare() is there too.
    let bulk = dc.new_ou("bulk").await;
    let mut ldif = String::new();
    for i in 0..2000 {
        ldif.push_str(&format!(
            "dn: CN=bulk{i},{bulk}\nobjectClass: user\nsAMAccountName: bulk{i}\ngivenName: Bulk\nsn: User {i}\nuserAccountControl: 512\n\n"
        ));
    }
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&cloud, &domain).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &dc, &cloud, &agent);
    let expected = 2001;

    // SIGKILL in the middle of the import.
    let mut p = AgentProcess::spawn(dir.path(), "agent.log");
    let killed_at = eventually("the import to start", || async {
        let n = cloud_user_count(&cloud).await;
        (n > 0).then_some(n)
    })
    .await;
    p.kill9();
    let after_kill = cloud_user_count(&cloud).await;
    eprintln!("killed the agent with {killed_at} of {expected} users imported ({after_kill} committed)");
    // Restart: the import resumes from the stored cookie and converges.
    let _p = AgentProcess::spawn(dir.path(), "agent.log");
    eventually("the import to finish after the restart", || async {
        (cloud_user_count(&cloud).await == expected).then_some(())
    })
    .await;
    let client = cloud.agent_client(&agent.token);
    let links = client.links().await.unwrap();
    assert_eq!(links.len(), expected as usize, "one link per user, nothing duplicated");
    let bulk5 = cloud.user("bulk5").await.unwrap();
    assert_eq!(bulk5["name"]["familyName"], "User 5");
    drop(_p);

    // SIGKILL while a stream of cloud changes is being applied to AD.
    for i in 0..40 {
        let (st, v) = cloud
            .call(
                reqwest::Method::POST,
                "/scim/v2/Users",
                Some(json!({"userName": format!("stream{i}"), "title": "stream"})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let users = format!("CN=Users,{}", dc.base_dn);
    let mut p = AgentProcess::spawn(dir.path(), "agent.log");
    let seen = eventually("the stream to start reaching AD", || async {
        let n = ad_count(&dc, &users, "(title=stream)");
        (n > 0).then_some(n)
    })
    .await;
    p.kill9();
    eprintln!("killed the agent with {seen} of 40 cloud users in AD");
    let _p = AgentProcess::spawn(dir.path(), "agent.log");
    eventually("every cloud user in AD after the restart", || async {
        (ad_count(&dc, &users, "(title=stream)") == 40).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ad_count(&dc, &users, "(title=stream)"), 40, "nothing created twice");
    assert_eq!(
        cloud_user_count(&cloud).await,
        expected + 40,
        "and nothing echoed back as a duplicate"
    );
    // Both sides whole: every object, attribute and membership.
    let report = audit_now(&cloud, &domain).await;
    assert_eq!(report["differed"], 0, "{report}");
    assert_eq!(report["resent"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_when_the_primary_stops() {
    let (dc, cloud, domain) = prepare().await;
    let one = enrol(&cloud, &domain).await;
    let two = enrol(&cloud, &domain).await;
    let stop_one = run_engine(&dc, &cloud, &one).await;
    eventually("the first agent to import", || async { cloud.user("early").await }).await;
    let stop_two = run_engine(&dc, &cloud, &two).await;
    let (_, agents) = cloud
        .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await;
    assert_eq!(
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["primary"] == true)
            .count(),
        1
    );
    // The primary stops cleanly and releases its lease: the standby takes
    // over at its next heartbeat, and changes keep flowing.
    stop_one.stop().await;
    let users = format!("CN=Users,{}", dc.base_dn);
    dc.ldapmodify(
        &format!("dn: CN=After Failover,{users}\nobjectClass: user\nsAMAccountName: afterfail\n"),
        true,
    );
    let start = Instant::now();
    eventually("a change after failover", || async { cloud.user("afterfail").await }).await;
    eprintln!(
        "failover: change visible {:.1} s after the primary stopped",
        start.elapsed().as_secs_f32()
    );
    let (st, _) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "cloudside"})),
        )
        .await;
    assert_eq!(st, 201);
    eventually("cloud → AD after failover", || async {
        (ad_count(&dc, &users, "(sAMAccountName=cloudside)") == 1).then_some(())
    })
    .await;
    // Heartbeats report status and counts to the console.
    eventually("the agent's report", || async {
        let (_, a) = cloud
            .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
            .await;
        a["agents"].as_array()?.iter().find(|x| {
            x["primary"] == true
                && x["report"]["state"] == "syncing"
                && x["report"]["ad_objects"].as_u64().unwrap_or(0) >= 2
                && x["report"]["applied"].as_u64().unwrap_or(0) >= 1
        })?;
        Some(())
    })
    .await;
    stop_two.stop().await;
}

/// Change latency, both ways: a benchmark, not a test (run with
/// `cargo test -p ferry-e2e --release -- --ignored latency --nocapture`).
/// Prints median and p99; asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn latency() {
    let (dc, cloud, _engine) = setup().await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let mut admin = dc.admin().await;
    let u = NewAdUser {
        sam_account_name: "lat".into(),
        password: Some("Lat-Pa55-w".into()),
        enabled: true,
        ..Default::default()
    };
    let dn = admin.create_user(&users, &u).await.unwrap();
    let lat = eventually("the user in the cloud", || async { cloud.user("lat").await }).await;
    let id = lat["id"].as_str().unwrap().to_owned();
    let pct = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
    };
    let mut up = Vec::new();
    for i in 0..50 {
        let title = format!("ad-{i}");
        let t = Instant::now();
        admin.set_attributes(&dn, &[("title", Some(&title))]).await.unwrap();
        poll_until("AD → cloud", Duration::from_millis(10), || async {
            cloud.user("lat").await.filter(|u| u["title"] == title.as_str())
        })
        .await;
        up.push(t.elapsed().as_secs_f64());
    }
    let reader = tokio::sync::Mutex::new(dc.admin().await);
    let mut down = Vec::new();
    for i in 0..50 {
        let title = format!("cloud-{i}");
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "title", "value": title}]});
        let t = Instant::now();
        cloud
            .call(reqwest::Method::PATCH, &format!("/scim/v2/Users/{id}"), Some(patch))
            .await;
        poll_until("cloud → AD", Duration::from_millis(10), || async {
            let e = reader.lock().await.read_entry(&dn, &["title"]).await.ok()??;
            (e.str("title").as_deref() == Some(title.as_str())).then_some(())
        })
        .await;
        down.push(t.elapsed().as_secs_f64());
    }
    let (u50, u99) = pct(up);
    let (d50, d99) = pct(down);
    println!("change latency over 50 changes each (Samba DC, SQLite cloud, loopback; polled every 10 ms):");
    println!("  AD → cloud: median {u50:.3} s, p99 {u99:.3} s");
    println!("  cloud → AD: median {d50:.3} s, p99 {d99:.3} s");
}

/// A conflict made for real: with the agent stopped, the same attribute is
/// changed in AD and in the cloud; then AD → cloud runs first (so AD's
/// change meets the cloud's), then cloud → AD. Both sides end with the
/// value the domain's authority policy picks, and the conflict is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_conflict_follows_the_authority_policy() {
    let (dc, cloud, domain) = prepare().await;
    let agent = enrol(&cloud, &domain).await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let mut admin = dc.admin().await;
    for (i, policy) in ["ad", "cloud"].into_iter().enumerate() {
        let (st, _) = cloud
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/domains/{domain}"),
                Some(json!({"policies": {"authority": policy}})),
            )
            .await;
        assert_eq!(st, 200);
        let name = format!("conf{i}");
        let u = NewAdUser {
            sam_account_name: name.clone(),
            attributes: vec![("title".into(), "Base".into())],
            password: Some("Conf-Pa55-w".into()),
            enabled: true,
            ..Default::default()
        };
        let dn = admin.create_user(&users, &u).await.unwrap();
        let engine = run_engine(&dc, &cloud, &agent).await;
        let cu = eventually("the user in the cloud", || async {
            cloud.user(&name).await.filter(|u| u["title"] == "Base")
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        engine.stop().await;

        // Both sides change the title while the agent is away.
        admin.set_attributes(&dn, &[("title", Some("From AD"))]).await.unwrap();
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "title", "value": "From cloud"}]});
        cloud
            .call(
                reqwest::Method::PATCH,
                &format!("/scim/v2/Users/{}", cu["id"].as_str().unwrap()),
                Some(patch),
            )
            .await;

        // AD → cloud alone first.
        let shared = engine_shared(&dc, &cloud, &agent).await;
        let hb = tokio::spawn(sync::heartbeat_loop(shared.clone()));
        let up = tokio::spawn(sync::ad_to_cloud::run(shared.clone()));
        let want = if policy == "ad" { "From AD" } else { "From cloud" };
        eventually("the conflict to be settled in the cloud", || async {
            let (_, a) = cloud.call(reqwest::Method::GET, "/api/v1/audit?limit=50", None).await;
            a["entries"]
                .as_array()?
                .iter()
                .find(|e| e["action"] == "sync.conflict" && e["details"]["winner"] == policy)
                .map(|_| ())
        })
        .await;
        assert_eq!(cloud.user(&name).await.unwrap()["title"], want, "{policy}");
        // Then cloud → AD: AD ends with the same value.
        let down = tokio::spawn(sync::cloud_to_ad::run(shared.clone()));
        eventually("AD to agree", || async {
            dc.ldapsearch(&users, &format!("(sAMAccountName={name})"), &["title"])
                .contains(&format!("title: {want}"))
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            cloud.user(&name).await.unwrap()["title"],
            want,
            "{policy}: settled, no flip-flop"
        );
        for t in [hb, up, down] {
            t.abort();
        }
        shared.cloud.release().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_cloud_mid_import_then_restart_converges() {
    let dc = delegated_dc().await;
    let bulk = dc.new_ou("bulk").await;
    let mut ldif = String::new();
    for i in 0..1500 {
        ldif.push_str(&format!(
            "dn: CN=c{i},{bulk}\nobjectClass: user\nsAMAccountName: c{i}\nuserAccountControl: 512\n\n"
        ));
    }
    dc.ldapmodify(&ldif, true);
    let expected = 1501; // with the user delegated_dc() made

    let mut server = CloudServer::start().await;
    let cloud = &server.cloud;
    let dir = tempfile::tempdir().unwrap();
    let domain = add_domain(cloud, &dc).await;
    let agent = enrol(cloud, &domain).await;
    write_config(dir.path(), &dc, cloud, &agent);
    let _agent = AgentProcess::spawn(dir.path(), "agent.log");

    let seen = eventually("the import to start", || async {
        let n = cloud_user_count(&server.cloud).await;
        (n > 0).then_some(n)
    })
    .await;
    server.kill9(); // mid-import
    eprintln!("killed the cloud with {seen} of {expected} users imported");
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.up().await;
    let cloud = &server.cloud;
    eventually("the import to finish after the cloud restarts", || async {
        (cloud_user_count(cloud).await == expected).then_some(())
    })
    .await;
    let client = cloud.agent_client(&agent.token);
    assert_eq!(
        client.links().await.unwrap().len(),
        expected as usize,
        "nothing duplicated"
    );
}

/// A mass delete in AD is held in quarantine until an admin approves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mass_delete_in_ad_waits_for_approval() {
    let (dc, cloud, domain) = prepare().await;
    let (st, _) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/domains/{domain}"),
            Some(json!({"policies": {"delete_threshold": 2}})),
        )
        .await;
    assert_eq!(st, 200);
    let ou = dc.new_ou("mass").await;
    for i in 0..3 {
        dc.ldapmodify(
            &format!("dn: CN=m{i},{ou}\nobjectClass: user\nsAMAccountName: mass{i}\n"),
            true,
        );
    }
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    for i in 0..3 {
        eventually("the users in the cloud", || async {
            cloud.user(&format!("mass{i}")).await
        })
        .await;
    }
    let mut admin = dc.admin().await;
    for i in 0..3 {
        admin.delete(&format!("CN=m{i},{ou}")).await.unwrap();
    }
    let qid = eventually("the deletes in quarantine", || async {
        pending_quarantine(&cloud, &domain)
            .await
            .iter()
            .find(|e| e["deletes"] == 3)
            .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        assert!(
            cloud.user(&format!("mass{i}")).await.is_some(),
            "nothing deleted before approval"
        );
    }
    let (_, q) = cloud
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/domains/{domain}/quarantine"),
            None,
        )
        .await;
    assert_eq!(
        q["quarantine"].as_array().unwrap().len(),
        1,
        "held once, though reconciliation keeps finding them"
    );
    let (st, v) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/quarantine/{qid}/approve"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for i in 0..3 {
        assert!(cloud.user(&format!("mass{i}")).await.is_none(), "deleted once approved");
    }
    engine.stop().await;
}

/// The members of a cloud group, by userName.
async fn cloud_members(cloud: &Cloud, group_id: &str) -> BTreeSet<String> {
    let (_, g) = cloud
        .call(reqwest::Method::GET, &format!("/scim/v2/Groups/{group_id}"), None)
        .await;
    let mut names = BTreeSet::new();
    for m in g["members"].as_array().cloned().unwrap_or_default() {
        let (_, u) = cloud
            .call(
                reqwest::Method::GET,
                &format!("/scim/v2/Users/{}", m["value"].as_str().unwrap_or_default()),
                None,
            )
            .await;
        names.insert(u["userName"].as_str().unwrap_or_default().to_owned());
    }
    names
}

/// A group bigger than AD's value range (through the double: 7) changes on
/// both sides at once: members added and removed in AD and in the cloud.
/// Both sides end with the same members, read whole (AD by range).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_group_changed_on_both_sides_ends_equal() {
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("crowd").await;
    let mut ldif = String::new();
    for i in 0..20 {
        ldif.push_str(&format!(
            "dn: CN=c{i},{ou}\nobjectClass: user\nsAMAccountName: crowd{i}\n\n"
        ));
    }
    let group = format!("CN=Crowd,{ou}");
    ldif.push_str(&format!("dn: {group}\nobjectClass: group\nsAMAccountName: crowd\n"));
    for i in 0..12 {
        ldif.push_str(&format!("member: CN=c{i},{ou}\n"));
    }
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;

    let names = |r: std::ops::Range<usize>| r.map(|i| format!("crowd{i}")).collect::<BTreeSet<_>>();
    let g = eventually("the group in the cloud", || async { cloud.group("crowd").await }).await;
    let gid = g["id"].as_str().unwrap().to_owned();
    eventually("its twelve members in the cloud", || async {
        (cloud_members(&cloud, &gid).await == names(0..12)).then_some(())
    })
    .await;

    // AD: four in, three out.
    let add: String = (12..16).map(|i| format!("member: CN=c{i},{ou}\n")).collect();
    let remove: String = (0..3).map(|i| format!("member: CN=c{i},{ou}\n")).collect();
    dc.ldapmodify(
        &format!("dn: {group}\nchangetype: modify\nadd: member\n{add}-\ndelete: member\n{remove}"),
        false,
    );
    // The cloud: three in, two out.
    let mut ops = Vec::new();
    for i in 16..19 {
        let u = eventually("a user in the cloud", || async {
            cloud.user(&format!("crowd{i}")).await
        })
        .await;
        ops.push(json!({"op": "add", "path": "members", "value": [{"value": u["id"]}]}));
    }
    for i in 3..5 {
        let u = cloud.user(&format!("crowd{i}")).await.unwrap();
        let id = u["id"].as_str().unwrap().to_owned();
        ops.push(json!({"op": "remove", "path": format!("members[value eq \"{id}\"]")}));
    }
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let (st, v) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Groups/{gid}"), Some(patch))
        .await;
    assert!(st == 200 || st == 204, "{st} {v}");

    // Both sides end with c5…c18, and stay there.
    let want = names(5..19);
    let want_dns: BTreeSet<String> = (5..19).map(|i| format!("CN=c{i},{ou}")).collect();
    eventually("the same members on both sides", || async {
        let ad = dc.group_members(&group);
        let cloud_side = cloud_members(&cloud, &gid).await;
        (ad == want_dns && cloud_side == want).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(dc.group_members(&group), want_dns, "AD stayed settled");
    assert_eq!(cloud_members(&cloud, &gid).await, want, "the cloud stayed settled");
    engine.stop().await;
}

/// A cloud change AD refuses for good (a userPrincipalName another AD
/// account has; through the Windows-AD double also a universal group put
/// in a global one) becomes a sync error of that object: a marker queued
/// behind it still arrives, the error is listed by the API and survives an
/// agent restart, and once the cause is fixed a retry applies it and the
/// error clears by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_cloud_change_is_recorded_and_the_rest_flows() {
    let (dc, cloud, domain) = prepare().await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let upn = format!("jsmith@{}", dc.realm.to_lowercase());
    dc.ldapmodify(
        &format!("dn: CN=Robert,{users}\nobjectClass: user\nsAMAccountName: robert\nuserPrincipalName: {upn}\n"),
        true,
    );
    dc.ldapmodify(
        &format!("dn: CN=Legacy,{users}\nobjectClass: group\nsAMAccountName: legacy\ngroupType: -2147483646\n"),
        true,
    );
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    // (No clone of `dc`: a clone owns the DC and stops it when dropped.)
    let (dc_ref, users_ref) = (&dc, &users);
    let in_ad = |sam: &'static str| async move {
        dc_ref
            .ldapsearch(users_ref, &format!("(sAMAccountName={sam})"), &["cn"])
            .contains("dn: ")
            .then_some(())
    };
    let legacy = eventually("the AD group in the cloud", || async { cloud.group("legacy").await }).await;

    // AD refuses the UPN: another account has it.
    let poison = scim_create_user(&cloud, json!({"userName": "jsmith", "displayName": "John Smith"})).await;
    // The keys of the errors wanted: an object's id, or a membership's `group/member`.
    let mut poisons = vec![poison["id"].as_str().unwrap().to_owned()];
    let mut legacy_member = None;
    if Dc::through_double() {
        // Windows refuses a universal group (what Ferry creates) in a global one.
        let (st, team) = cloud
            .call(
                reqwest::Method::POST,
                "/scim/v2/Groups",
                Some(json!({"displayName": "Cloud Team"})),
            )
            .await;
        assert_eq!(st, 201, "{team}");
        eventually("the cloud group in AD", || in_ad("Cloud Team")).await;
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": team["id"]}]}]});
        let lid = legacy["id"].as_str().unwrap();
        let (st, v) = cloud
            .call(reqwest::Method::PATCH, &format!("/scim/v2/Groups/{lid}"), Some(patch))
            .await;
        assert!(st == 200 || st == 204, "{st} {v}");
        poisons.push(format!("{lid}/{}", team["id"].as_str().unwrap()));
        legacy_member = Some(lid.to_owned());
    }
    let marker = scim_create_user(&cloud, json!({"userName": "marker", "title": "behind the poison"})).await;
    eventually("the marker behind the refused changes", || in_ad("marker")).await;

    let errors = eventually("the refusals listed", || async {
        let e = sync_errors(&cloud, &domain).await;
        (e.len() == poisons.len()).then_some(e)
    })
    .await;
    let dup = errors
        .iter()
        .find(|e| e["object_name"] == "jsmith")
        .expect("jsmith's error");
    assert_eq!(dup["direction"], "cloud_to_ad");
    assert!(dup["code"].as_str().unwrap().contains("19"), "{dup}");
    for id in &poisons {
        assert!(errors.iter().any(|e| e["object_key"] == id.as_str()), "{errors:?}");
    }
    if let Some(lid) = &legacy_member {
        let nest = errors
            .iter()
            .find(|e| e["operation"] == "add member")
            .expect("the nesting error");
        assert!(nest["message"].as_str().unwrap().contains("00002145"), "{nest}");
        // Another member of the same group, which AD takes: its success is
        // its own and leaves the refused member's error open.
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": marker["id"]}]}]});
        let (st, v) = cloud
            .call(reqwest::Method::PATCH, &format!("/scim/v2/Groups/{lid}"), Some(patch))
            .await;
        assert!(st == 200 || st == 204, "{st} {v}");
        eventually("marker in Legacy in AD", || async {
            dc.group_members(&format!("CN=Legacy,{users}"))
                .iter()
                .any(|m| m.to_lowercase().starts_with("cn=marker,"))
                .then_some(())
        })
        .await;
        scim_create_user(&cloud, json!({"userName": "marker1"})).await;
        eventually("a change after marker's membership", || in_ad("marker1")).await;
        let still = sync_errors(&cloud, &domain).await;
        assert!(
            still.iter().any(|e| e["operation"] == "add member"),
            "a success of another member resolved the refused one: {still:?}"
        );
    }

    // An agent restart neither loses nor repeats them.
    engine.stop().await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    scim_create_user(&cloud, json!({"userName": "marker2"})).await;
    eventually("a change after the restart", || in_ad("marker2")).await;
    let after = sync_errors(&cloud, &domain).await;
    assert_eq!(after.len(), poisons.len(), "{after:?}");
    assert_eq!(
        after.iter().find(|e| e["object_name"] == "jsmith").unwrap()["attempts"],
        1
    );

    // The fix: the other account's UPN changes; a retry creates jsmith and the error clears.
    dc.ldapmodify(
        &format!(
            "dn: CN=Robert,{users}\nchangetype: modify\nreplace: userPrincipalName\nuserPrincipalName: robert@{}\n",
            dc.realm.to_lowercase()
        ),
        false,
    );
    let eid = dup["id"].as_str().unwrap();
    let (st, v) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/sync-errors/{eid}/retry"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("the retried user in AD", || in_ad("jsmith")).await;
    eventually("its error cleared", || async {
        let e = sync_errors(&cloud, &domain).await;
        (!e.iter().any(|e| e["object_name"] == "jsmith")).then_some(())
    })
    .await;
    if Dc::through_double() {
        // The nesting's fix: Legacy becomes a universal group in AD, which
        // may hold one; a retry adds Cloud Team and the error clears.
        dc.ldapmodify(
            &format!("dn: CN=Legacy,{users}\nchangetype: modify\nreplace: groupType\ngroupType: -2147483640\n"),
            false,
        );
        let nest = sync_errors(&cloud, &domain)
            .await
            .into_iter()
            .find(|e| e["operation"] == "add member")
            .expect("the nesting error");
        let (st, v) = cloud
            .call(
                reqwest::Method::POST,
                &format!(
                    "/api/v1/domains/{domain}/sync-errors/{}/retry",
                    nest["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        eventually("Cloud Team in Legacy in AD", || async {
            dc.group_members(&format!("CN=Legacy,{users}"))
                .iter()
                .any(|m| m.to_lowercase().starts_with("cn=cloud team,"))
                .then_some(())
        })
        .await;
        eventually("the nesting error cleared", || async {
            sync_errors(&cloud, &domain).await.is_empty().then_some(())
        })
        .await;
    }
    // After the refusals, the fixes and the retries, both sides compared
    // whole by the agent: nothing differs, nothing is left to send.
    let report = audit_now(&cloud, &domain).await;
    assert_eq!(report["differed"], 0, "{report}");
    assert_eq!(report["resent"], 0, "{report}");
    engine.stop().await;
}

/// Users and groups made in the cloud land in AD under AD's naming rules,
/// whatever the cloud's names: a `sAMAccountName` of at most 20 characters,
/// CNs of at most 64, unique in their OU (`John Smith (2)`); the cloud's
/// names stay as they are, and nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_names_land_in_ad_within_ads_rules() {
    let (dc, cloud, domain) = prepare().await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let long_name = "a-name-of-25-characters-x";
    let long_cn = "A display name that is longer than sixty-four characters, as some are";
    scim_create_user(&cloud, json!({"userName": long_name, "displayName": long_cn})).await;
    // Another name AD's 20 characters make the same: an account name of its own.
    scim_create_user(&cloud, json!({"userName": "a-name-of-25-characters-y"})).await;
    scim_create_user(&cloud, json!({"userName": "jsmith1", "displayName": "John Smith"})).await;
    scim_create_user(&cloud, json!({"userName": "jsmith2", "displayName": "John Smith"})).await;
    scim_create_user(&cloud, json!({"userName": "marker"})).await;
    let (dc_ref, users_ref) = (&dc, &users);
    let cn_of = |sam: &'static str| async move {
        let l = dc_ref.ldapsearch(users_ref, &format!("(sAMAccountName={sam})"), &["cn"]);
        l.lines().find_map(|x| x.strip_prefix("cn: ")).map(str::to_owned)
    };
    eventually("the marker", || cn_of("marker")).await;
    let long_cn_in_ad = eventually("the long name, derived", || cn_of("a-name-of-25-charact")).await;
    assert_eq!(long_cn_in_ad.chars().count(), 64, "{long_cn_in_ad}");
    assert!(long_cn.starts_with(&long_cn_in_ad));
    let variant = ferry_proto::names::sam_variant("a-name-of-25-charact", 2, 20);
    let (dc_ref, users_ref, variant_ref) = (&dc, &users, &variant);
    eventually("the second long name, with an account name of its own", || async move {
        dc_ref
            .ldapsearch(users_ref, &format!("(sAMAccountName={variant_ref})"), &["cn"])
            .contains("cn: a-name-of-25-characters-y")
            .then_some(())
    })
    .await;
    assert_eq!(cn_of("jsmith1").await.as_deref(), Some("John Smith"));
    assert_eq!(
        eventually("the second John Smith", || cn_of("jsmith2")).await,
        "John Smith (2)"
    );
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    assert!(cloud.user(long_name).await.is_some(), "the cloud's userName stays");
    // Changing something else does not rename the derived account.
    let u = cloud.user(long_name).await.unwrap();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "title", "value": "Derived"}]});
    let (st, _) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/scim/v2/Users/{}", u["id"].as_str().unwrap()),
            Some(patch),
        )
        .await;
    assert_eq!(st, 200);
    eventually("the change in AD", || async {
        dc.ldapsearch(&users, "(sAMAccountName=a-name-of-25-charact)", &["title"])
            .contains("title: Derived")
            .then_some(())
    })
    .await;
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// An AD user the cloud refuses (a cloud user of the same name exists and
/// matching is off) is a sync error of that AD object; the rest of the
/// import and later AD changes flow; once the cloud user is renamed, a
/// retry brings the AD user in and the error clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_ad_change_is_recorded_and_the_rest_flows() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ferry_agent=info")
        .with_test_writer()
        .try_init();
    let (dc, cloud, domain) = prepare().await;
    let (st, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/domains/{domain}"),
            Some(json!({"policies": {"match_existing_users": false}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // "early" is in AD already (prepare); a cloud user takes the name first.
    let (st, clash) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "early", "title": "cloud's own"})),
        )
        .await;
    assert_eq!(st, 201, "{clash}");
    let ou = dc.new_ou("flow").await;
    dc.ldapmodify(
        &format!("dn: CN=first,{ou}\nobjectClass: user\nsAMAccountName: first\n"),
        true,
    );
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    eventually("the rest of the import", || async { cloud.user("first").await }).await;
    // Refused both ways: AD's early is not merged into the cloud's, and the
    // cloud's early is not written onto AD's (matching is off).
    let errors = eventually("the refusals listed", || async {
        let e = sync_errors(&cloud, &domain).await;
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    let up = errors
        .iter()
        .find(|e| e["direction"] == "ad_to_cloud")
        .expect("AD → cloud refusal");
    assert!(up["object_name"].as_str().unwrap().contains("early"), "{errors:?}");
    let down = errors
        .iter()
        .find(|e| e["direction"] == "cloud_to_ad")
        .expect("cloud → AD refusal");
    assert_eq!(down["object_key"], clash["id"], "{errors:?}");
    assert!(down["message"].as_str().unwrap().contains("matching"), "{down}");
    assert_eq!(
        cloud.user("early").await.unwrap()["title"],
        "cloud's own",
        "the cloud user is untouched"
    );
    assert!(
        !dc.ldapsearch(&dc.base_dn, "(sAMAccountName=early)", &["title"])
            .contains("cloud's own"),
        "the AD account is untouched"
    );
    dc.ldapmodify(
        &format!("dn: CN=marker,{ou}\nobjectClass: user\nsAMAccountName: marker\n"),
        true,
    );
    eventually("an AD change behind the refusal", || async {
        cloud.user("marker").await
    })
    .await;
    // An agent restart neither loses the errors nor adds to them.
    engine.stop().await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    dc.ldapmodify(
        &format!("dn: CN=marker2,{ou}\nobjectClass: user\nsAMAccountName: marker2\n"),
        true,
    );
    eventually("an AD change after the restart", || async {
        cloud.user("marker2").await
    })
    .await;
    let after = sync_errors(&cloud, &domain).await;
    assert_eq!(after.len(), 2, "{after:?}");

    // The fix, then a retry: the AD user comes in, the error goes.
    let id = clash["id"].as_str().unwrap();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "userName", "value": "early-cloud"}]});
    let (st, _) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Users/{id}"), Some(patch))
        .await;
    assert_eq!(st, 200);
    let eid = up["id"].as_str().unwrap();
    let (st, v) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/sync-errors/{eid}/retry"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Only AD has an "early" now; the renamed cloud user gets an AD account
    // of its own, and both errors clear.
    eventually("the AD user in the cloud", || async { cloud.user("early").await }).await;
    eventually("its error cleared", || async {
        let (_, v) = cloud
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/domains/{domain}/sync-errors"),
                None,
            )
            .await;
        (v["total"] == 0).then_some(())
    })
    .await;
    engine.stop().await;
}

/// A big import through a cloud whose push limit is small: the agent's
/// pushes are refused as too large (413), split and sent again, and the
/// import completes whole: 1,500 users and a group holding all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_too_large_for_the_cloud_are_split_and_the_import_completes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ferry_agent=info")
        .with_test_writer()
        .try_init();
    let dc = delegated_dc().await;
    let config = ferry_cloud::app::Config {
        agent_push_limit: 128 * 1024,
        ..Default::default()
    };
    let cloud = Cloud::start_with(config).await;
    let domain = add_domain(&cloud, &dc).await;
    let ou = dc.new_ou("many").await;
    let mut ldif = String::new();
    for i in 0..1500 {
        ldif.push_str(&format!(
            "dn: CN=many{i},{ou}\nobjectClass: user\nsAMAccountName: many{i}\ndescription: {}\n\n",
            "x".repeat(200)
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=All Many,{ou}\nobjectClass: group\nsAMAccountName: allmany\n"
    ));
    for i in 0..1500 {
        ldif.push_str(&format!("member: CN=many{i},{ou}\n"));
    }
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let g = eventually("the group in the cloud", || async { cloud.group("allmany").await }).await;
    let gid = g["id"].as_str().unwrap().to_owned();
    eventually("all 1,500 members", || async {
        let (_, v) = cloud
            .call(reqwest::Method::GET, &format!("/scim/v2/Groups/{gid}"), None)
            .await;
        (v["members"].as_array().map_or(0, Vec::len) == 1500).then_some(())
    })
    .await;
    // 1,500 users, the early one and nothing twice.
    assert_eq!(cloud_user_count(&cloud).await, 1501);
    engine.stop().await;
}

async fn stored_cookie(cloud: &Cloud, domain: &str) -> Option<String> {
    let mut tx = cloud.store.begin().await.unwrap();
    let orgs = tx.list_orgs().await.unwrap();
    tx.get_domain(orgs[0].id, domain.parse().unwrap())
        .await
        .unwrap()
        .ad_cookie
}

/// "Resync this domain", and a DirSync cookie the DC does not honour (here:
/// one it never issued, as a cookie from another DC may be): the agent reads
/// the whole domain again, without a duplicate, and changes flow after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resync_and_a_refused_cookie_read_the_domain_again_without_duplicates() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ferry_agent=info")
        .with_test_writer()
        .try_init();
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("again").await;
    for i in 0..5 {
        dc.ldapmodify(
            &format!("dn: CN=a{i},{ou}\nobjectClass: user\nsAMAccountName: again{i}\n"),
            true,
        );
    }
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    eventually("the import", || async { cloud.user("again4").await }).await;
    let count = cloud_user_count(&cloud).await;
    let first = eventually("a DirSync cookie", || async {
        stored_cookie(&cloud, &domain)
            .await
            .filter(|c| !c.starts_with("import:"))
    })
    .await;

    // The admin's resync.
    let (st, v) = cloud
        .call(reqwest::Method::POST, &format!("/api/v1/domains/{domain}/resync"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("a new cookie after reading again", || async {
        stored_cookie(&cloud, &domain)
            .await
            .filter(|c| !c.starts_with("import:") && *c != first)
    })
    .await;
    assert_eq!(cloud_user_count(&cloud).await, count, "nothing twice");

    // A user deleted in AD while the agent is down, and a resync asked for
    // meanwhile: the import that follows is the reconciliation too.
    engine.stop().await;
    dc.ldapmodify(&format!("dn: CN=a2,{ou}\nchangetype: delete\n"), false);
    let before = stored_cookie(&cloud, &domain).await;
    let (st, v) = cloud
        .call(reqwest::Method::POST, &format!("/api/v1/domains/{domain}/resync"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    let engine = run_engine(&dc, &cloud, &agent).await;
    eventually("the deleted user gone from the cloud", || async {
        cloud.user("again2").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        cloud_user_count(&cloud).await,
        count - 1,
        "that one gone, nothing twice"
    );
    eventually("a new cookie after reading again", || async {
        stored_cookie(&cloud, &domain)
            .await
            .filter(|c| !c.starts_with("import:") && Some(c) != before.as_ref())
    })
    .await;

    // A cookie the DC refuses (12, "Unable to unmarshall cookie" on Samba).
    let current = stored_cookie(&cloud, &domain).await;
    {
        let mut tx = cloud.store.begin().await.unwrap();
        let orgs = tx.list_orgs().await.unwrap();
        let swapped = tx
            .swap_ad_cookie(
                orgs[0].id,
                domain.parse().unwrap(),
                current.as_deref(),
                Some("Z2FyYmFnZSBjb29raWU="),
            )
            .await
            .unwrap();
        assert!(swapped);
        tx.commit().await.unwrap();
    }
    dc.ldapmodify(
        &format!("dn: CN=a0,{ou}\nchangetype: modify\nreplace: title\ntitle: After\n"),
        false,
    );
    eventually("the change, after reading the domain again", || async {
        cloud.user("again0").await.filter(|u| u["title"] == "After")
    })
    .await;
    eventually("a cookie the DC issued", || async {
        stored_cookie(&cloud, &domain)
            .await
            .filter(|c| !c.starts_with("import:") && c != "Z2FyYmFnZSBjb29raWU=")
    })
    .await;
    assert_eq!(cloud_user_count(&cloud).await, count - 1, "nothing twice");
    engine.stop().await;
}

fn text(x: &serde_json::Value) -> String {
    x.as_str().unwrap_or_default().to_owned()
}

/// Every cloud user: userName → (title, mobile).
async fn cloud_users(cloud: &Cloud) -> std::collections::BTreeMap<String, (String, String)> {
    all_cloud_users(cloud)
        .await
        .iter()
        .map(|u| {
            let mobile = u["phoneNumbers"]
                .as_array()
                .and_then(|p| p.iter().find(|n| n["type"] == "mobile"))
                .map(|n| text(&n["value"]))
                .unwrap_or_default();
            (text(&u["userName"]), (text(&u["title"]), mobile))
        })
        .collect()
}

/// Every AD user under `base`: sAMAccountName → (title, mobile).
fn ad_users(dc: &Dc, base: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let ldif = dc.ldapsearch(
        base,
        "(&(objectClass=user)(objectCategory=person))",
        &["sAMAccountName", "title", "mobile"],
    );
    let mut out = std::collections::BTreeMap::new();
    for entry in ldif.split("\n\n") {
        let get = |k: &str| {
            entry
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap_or_default()
                .to_owned()
        };
        let sam = get("sAMAccountName");
        if !sam.is_empty() {
            out.insert(sam, (get("title"), get("mobile")));
        }
    }
    out
}

/// The agent is stopped while both sides make N changes (`FERRY_CATCHUP_N`,
/// 300 by default; the issue's figure is 3,000): AD changes N users' titles;
/// the cloud creates N/3 users, puts them in a new group (N/3 memberships)
/// and gives the other N/3 changes to AD users. A marker is queued behind
/// the backlog on each side (a new user) and must arrive. Then it is
/// started: it catches up, and both sides are compared whole: every user's
/// attributes and the group's members, by name, on both sides. The time it
/// took is printed (a benchmark figure in docs/BENCHMARKS.md, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_night_of_changes_on_both_sides_catches_up_and_both_sides_end_equal() {
    let n: usize = std::env::var("FERRY_CATCHUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("night").await;
    let mut ldif = String::new();
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: CN=n{i},{ou}\nobjectClass: user\nsAMAccountName: night{i}\ntitle: Day\n\n"
        ));
    }
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while cloud_users(&cloud)
        .await
        .keys()
        .filter(|k| k.starts_with("night"))
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "the import did not finish in 300 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    engine.stop().await;

    // The night: AD changes its users' titles; the cloud adds users, a group
    // of them, and mobile numbers for the AD users.
    let mut ldif = String::new();
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: CN=n{i},{ou}\nchangetype: modify\nreplace: title\ntitle: Night {i}\n\n"
        ));
    }
    dc.ldapmodify(&ldif, false);
    let third = n / 3;
    let patched = n - 2 * third;
    let mut ids = Vec::new();
    for i in 0..third {
        let u = scim_create_user(
            &cloud,
            json!({"userName": format!("cloudy{i}"), "title": format!("Cloud {i}")}),
        )
        .await;
        ids.push(json!({"value": u["id"]}));
    }
    let (st, g) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "Night Shift", "members": ids})),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    for i in 0..patched {
        let u = cloud.user(&format!("night{i}")).await.unwrap();
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "phoneNumbers", "value": [{"type": "mobile", "value": format!("+1555{i:04}")}]}]});
        let (st, v) = cloud
            .call(
                reqwest::Method::PATCH,
                &format!("/scim/v2/Users/{}", u["id"].as_str().unwrap()),
                Some(patch),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    // A marker each way, behind everything else.
    scim_create_user(
        &cloud,
        json!({"userName": "cloudymarker", "title": "Behind the backlog"}),
    )
    .await;
    dc.ldapmodify(
        &format!(
            "dn: CN=nightmarker,{ou}\nobjectClass: user\nsAMAccountName: nightmarker\ntitle: Behind the backlog\n"
        ),
        true,
    );

    // Morning: the agent starts and catches up.
    let started = Instant::now();
    let engine = run_engine(&dc, &cloud, &agent).await;
    let users_dn = format!("CN=Users,{}", dc.base_dn);
    let mut want_ad = std::collections::BTreeMap::new();
    for i in 0..n {
        let mobile = if i < patched {
            format!("+1555{i:04}")
        } else {
            String::new()
        };
        want_ad.insert(format!("night{i}"), (format!("Night {i}"), mobile));
    }
    want_ad.insert("nightmarker".into(), ("Behind the backlog".into(), String::new()));
    let mut want_cloudy: std::collections::BTreeMap<String, (String, String)> = (0..third)
        .map(|i| (format!("cloudy{i}"), (format!("Cloud {i}"), String::new())))
        .collect();
    want_cloudy.insert("cloudymarker".into(), ("Behind the backlog".into(), String::new()));
    let group_dn = format!("CN=Night Shift,{users_dn}");
    let deadline = Instant::now() + Duration::from_secs(300);
    // The markers come last each way. Reading both sides whole is heavy at
    // 3,000 (every half second it would slow down what it measures), so
    // cheap reads wait for the markers first.
    loop {
        let down = dc
            .ldapsearch(&users_dn, "(sAMAccountName=cloudymarker)", &["cn"])
            .contains("dn: ");
        if down && cloud.user("nightmarker").await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the markers did not arrive in 300 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    loop {
        let ad_night = ad_users(&dc, &ou);
        let ad_cloudy: std::collections::BTreeMap<_, _> = ad_users(&dc, &users_dn)
            .into_iter()
            .filter(|(k, _)| k.starts_with("cloudy"))
            .collect();
        let cloud_all = cloud_users(&cloud).await;
        let cloud_night: std::collections::BTreeMap<_, _> = cloud_all
            .iter()
            .filter(|(k, _)| k.starts_with("night"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let cloud_cloudy: std::collections::BTreeMap<_, _> = cloud_all
            .iter()
            .filter(|(k, _)| k.starts_with("cloudy"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let members = if ad_count(&dc, &users_dn, "(cn=Night Shift)") == 1 {
            dc.group_members(&group_dn).len()
        } else {
            0
        };
        if ad_night == want_ad
            && cloud_night == want_ad
            && ad_cloudy == want_cloudy
            && cloud_cloudy == want_cloudy
            && members == third
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not equal after 300 s: AD night {} of {n} right, cloud night {}, AD cloudy {}, cloud cloudy {}, members {members}",
            ad_night.iter().filter(|(k, v)| want_ad.get(*k) == Some(v)).count(),
            cloud_night.iter().filter(|(k, v)| want_ad.get(*k) == Some(v)).count(),
            ad_cloudy.len(),
            cloud_cloudy.len(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "caught up {n} AD and {} cloud changes in {:.1} s",
        2 * third + patched,
        started.elapsed().as_secs_f32()
    );
    // The group's members by name, on both sides.
    let want_members: BTreeSet<String> = (0..third).map(|i| format!("cloudy{i}")).collect();
    let ad_members: BTreeSet<String> = dc
        .group_members(&group_dn)
        .iter()
        .filter_map(|dn| dn.strip_prefix("CN=")?.split(',').next().map(str::to_owned))
        .collect();
    assert_eq!(ad_members, want_members, "AD's Night Shift");
    let night_shift = cloud.group("Night%20Shift").await.expect("the cloud group");
    let cloud_group_members = cloud_members(&cloud, night_shift["id"].as_str().unwrap()).await;
    assert_eq!(cloud_group_members, want_members, "the cloud's Night Shift");
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// Every cloud user's id → userName.
async fn cloud_user_names(cloud: &Cloud) -> std::collections::HashMap<String, String> {
    all_cloud_users(cloud)
        .await
        .iter()
        .map(|u| (text(&u["id"]), text(&u["userName"])))
        .collect()
}

/// A big group (`FERRY_BIG_GROUP_N` members, 30,000 by default: the issue's
/// figure; `scripts/test` runs 2,000, past AD's 1,500-value range, to stay
/// quick) is in AD before the agent starts: the import brings it whole (its
/// member list read by range where the DC ranges it, and pushed in chunks
/// within the cloud's body limit), and a change made in AD after it still
/// arrives. The two sides' member lists are compared whole. Filling the DC
/// with 30,000 users and the group takes 2–4 minutes (populate-group.py, in
/// ldb's batch mode). The import time is printed, not asserted; measured
/// 2026-12-02 (debug build, SQLite, a shared 2-core machine): 30,000 users
/// and the 30,000-member group in 125.6 s (docs/BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "heavy (minutes of a busy DC): scripts/test runs it on its own, after the suite"]
async fn a_big_group_is_imported_whole() {
    let n: usize = std::env::var("FERRY_BIG_GROUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("multitude").await;
    populate_group(&dc, &ou, n, "Everyone Here", "everyonehere", "many");
    let group = format!("CN=Everyone Here,{ou}");
    assert_eq!(dc.group_members(&group).len(), n, "AD has them all");
    let agent = enrol(&cloud, &domain).await;
    let started = Instant::now();
    let engine = run_engine(&dc, &cloud, &agent).await;
    // The group comes after its members: at 30,000 that is minutes, not
    // the 45 s `eventually` waits.
    let deadline = Instant::now() + Duration::from_secs(600);
    let g = loop {
        if let Some(g) = cloud.group("everyonehere").await {
            break g;
        }
        assert!(Instant::now() < deadline, "the import did not bring the group in 600 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let gid = g["id"].as_str().unwrap().to_owned();
    let want: BTreeSet<String> = (0..n).map(|i| format!("many{i}")).collect();
    loop {
        let (_, g) = cloud
            .call(reqwest::Method::GET, &format!("/scim/v2/Groups/{gid}"), None)
            .await;
        let ids = member_ids(&g);
        if ids.len() == n {
            let names = cloud_user_names(&cloud).await;
            let got: BTreeSet<String> = ids.iter().filter_map(|id| names.get(id).cloned()).collect();
            assert_eq!(got, want, "the cloud group's members are AD's");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import did not bring the group whole: {} of {n} members",
            ids.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "imported {n} users and a group of {n} members in {:.1} s",
        started.elapsed().as_secs_f32()
    );
    // The sync goes on after it: a change in AD arrives.
    dc.ldapmodify(
        &format!("dn: CN=m0,{ou}\nchangetype: modify\nreplace: title\ntitle: After\n"),
        false,
    );
    eventually("a change after the import", || async {
        cloud.user("many0").await.filter(|u| u["title"] == "After")
    })
    .await;
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// A user deleted in the cloud under the `disable` policy stays deleted: its
/// AD account is disabled, and neither a later change to that account in AD
/// nor a full re-read of the domain brings it back as a new cloud user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cloud_delete_under_disable_stays_deleted() {
    let (dc, cloud, domain) = prepare().await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let leaver = NewAdUser {
        sam_account_name: "leaver".into(),
        cn: Some("Leaver".into()),
        password: Some("Leaver-Pa55-word".into()),
        enabled: true,
        ..Default::default()
    };
    dc.admin().await.create_user(&users, &leaver).await.unwrap();
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let u = eventually("leaver in the cloud", || cloud.user("leaver")).await;
    let (st, v) = cloud
        .call(
            reqwest::Method::DELETE,
            &format!("/scim/v2/Users/{}", u["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(st, 204, "{v}");
    let uac = || {
        dc.ldapsearch(&users, "(sAMAccountName=leaver)", &["userAccountControl"])
            .lines()
            .find_map(|l| l.strip_prefix("userAccountControl: ").map(str::to_owned))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    eventually("the AD account disabled", || async { (uac() & 2 == 2).then_some(()) }).await;

    // AD changes the account; a marker behind it arrives, the leaver does not.
    dc.ldapmodify(
        &format!("dn: CN=Leaver,{users}\nchangetype: modify\nreplace: title\ntitle: Still here\n"),
        false,
    );
    dc.ldapmodify(
        &format!("dn: CN=Marker,{users}\nobjectClass: user\nsAMAccountName: marker\n"),
        true,
    );
    eventually("the marker in the cloud", || cloud.user("marker")).await;
    assert!(cloud.user("leaver").await.is_none(), "a cloud delete stays");

    // A full re-read of the domain does not bring it back either.
    let (st, v) = cloud
        .call(reqwest::Method::POST, &format!("/api/v1/domains/{domain}/resync"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("the re-read done", || async {
        stored_cookie(&cloud, &domain)
            .await
            .filter(|c| !c.starts_with("import"))
            .map(|_| ())
    })
    .await;
    dc.ldapmodify(
        &format!("dn: CN=Marker Two,{users}\nobjectClass: user\nsAMAccountName: marker2\n"),
        true,
    );
    eventually("a marker after the re-read", || cloud.user("marker2")).await;
    assert!(
        cloud.user("leaver").await.is_none(),
        "a cloud delete stays after a resync"
    );
    assert_eq!(uac() & 2, 2, "the AD account stays disabled");
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// Edits made in AD while the agent was down (a disable, a new display
/// name, a new account name) survive a pending cloud change to other
/// fields of the same user: cloud → AD writes only what the cloud changed
/// since both sides last agreed, and both sides end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ad_edits_made_while_the_agent_was_down_survive_a_pending_cloud_change() {
    let (dc, cloud, domain) = prepare().await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let u = NewAdUser {
        sam_account_name: "dana".into(),
        cn: Some("Dana".into()),
        attributes: vec![
            ("displayName".into(), "Dana Old".into()),
            ("title".into(), "Clerk".into()),
        ],
        password: Some("Dana-Pa55-word".into()),
        enabled: true,
        ..Default::default()
    };
    dc.admin().await.create_user(&users, &u).await.unwrap();
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let cu = eventually("dana in the cloud", || cloud.user("dana")).await;
    let id = cu["id"].as_str().unwrap().to_owned();
    engine.stop().await;

    // The night: AD disables and renames her; the cloud gives her a mobile.
    dc.ldapmodify(
        &format!(
            "dn: CN=Dana,{users}\nchangetype: modify\nreplace: displayName\ndisplayName: Dana New\n-\nreplace: sAMAccountName\nsAMAccountName: dana2\n-\nreplace: userAccountControl\nuserAccountControl: 514\n"
        ),
        false,
    );
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "phoneNumbers", "value": [{"type": "mobile", "value": "+15550100"}]}]});
    let (st, v) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Users/{id}"), Some(patch))
        .await;
    assert_eq!(st, 200, "{v}");

    let engine = run_engine(&dc, &cloud, &agent).await;
    let read_ad = || {
        let l = dc.ldapsearch(
            &users,
            "(cn=Dana)",
            &["sAMAccountName", "displayName", "userAccountControl", "mobile", "title"],
        );
        let get = |k: &str| {
            l.lines()
                .find_map(|x| x.strip_prefix(&format!("{k}: ")))
                .unwrap_or_default()
                .to_owned()
        };
        (
            get("sAMAccountName"),
            get("displayName"),
            get("userAccountControl"),
            get("mobile"),
            get("title"),
        )
    };
    let want_ad = (
        "dana2".to_owned(),
        "Dana New".to_owned(),
        "514".to_owned(),
        "+15550100".to_owned(),
        "Clerk".to_owned(),
    );
    eventually("AD with both sides' edits", || async {
        (read_ad() == want_ad).then_some(())
    })
    .await;
    let cloud_side = eventually("the cloud with both sides' edits", || async {
        let (_, u) = cloud
            .call(reqwest::Method::GET, &format!("/scim/v2/Users/{id}"), None)
            .await;
        (u["userName"] == "dana2" && u["displayName"] == "Dana New" && u["active"] == false).then_some(u)
    })
    .await;
    assert_eq!(cloud_side["phoneNumbers"][0]["value"], "+15550100", "{cloud_side}");
    // And they stay so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(read_ad(), want_ad);
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// The health of one direction as the Domain Agents API shows it.
async fn direction_status(cloud: &Cloud, domain: &str, direction: &str) -> Option<serde_json::Value> {
    let (st, v) = cloud
        .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v["agents"][0]["health"]
        .as_array()?
        .iter()
        .find(|h| h["direction"] == direction)
        .cloned()
}

/// The DC goes away for over a minute while changes wait on both sides.
/// The AD → cloud direction is shown failing (red after a minute) with its
/// error, the cloud → AD one as well once it needs the DC; when the DC is
/// back the agent reconnects within its capped backoff (4 s), the waiting
/// changes cross both ways, a change made just after the return crosses
/// too, both directions are shown healthy again, and both sides end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_dc_outage_the_agent_is_back_within_seconds_and_says_so_meanwhile() {
    if Dc::through_double() {
        return; // the outage is the DC's own: run once, against Samba
    }
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("Outage").await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    eventually("the import", || cloud.user("early")).await;
    eventually("both directions healthy", || async {
        let up = direction_status(&cloud, &domain, "ad_to_cloud").await?;
        let down = direction_status(&cloud, &domain, "cloud_to_ad").await?;
        (up["status"] == "ok" && down["status"] == "ok").then_some(())
    })
    .await;

    dc.stop();
    let stopped = Instant::now();
    // A cloud change waits for the DC.
    scim_create_user(
        &cloud,
        json!({"userName": "duringoutage", "title": "made while the DC was down"}),
    )
    .await;
    let retrying = poll_until("AD → cloud shown retrying", Duration::from_millis(500), || async {
        let h = direction_status(&cloud, &domain, "ad_to_cloud").await?;
        (h["status"] == "retrying").then_some(h)
    })
    .await;
    assert!(retrying["failing_since"].as_i64().is_some(), "{retrying}");
    // The cloud change waiting for the DC shows as the cloud → AD backlog.
    let down = direction_status(&cloud, &domain, "cloud_to_ad").await.unwrap();
    assert!(down["backlog"].as_i64().unwrap_or(0) >= 1, "{down}");
    while stopped.elapsed() < Duration::from_secs(55) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failing = poll_until("AD → cloud shown failing", Duration::from_secs(1), || async {
        let h = direction_status(&cloud, &domain, "ad_to_cloud").await?;
        (h["status"] == "failing").then_some(h)
    })
    .await;
    assert!(failing["error"].as_str().is_some_and(|e| !e.is_empty()), "{failing}");
    while stopped.elapsed() < Duration::from_secs(62) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    dc.resume();
    let back = Instant::now();
    dc.ldapmodify(
        &format!("dn: CN=afteroutage,{ou}\nobjectClass: user\nsAMAccountName: afteroutage\n"),
        true,
    );
    poll_until(
        "the AD change made after the return, in the cloud",
        Duration::from_millis(100),
        || cloud.user("afteroutage"),
    )
    .await;
    let up_after = back.elapsed();
    poll_until(
        "the cloud change made during the outage, in AD",
        Duration::from_millis(100),
        || async {
            dc.ldapsearch(&dc.base_dn, "(sAMAccountName=duringoutage)", &["title"])
                .contains("title: made while the DC was down")
                .then_some(())
        },
    )
    .await;
    let down_after = back.elapsed();
    println!(
        "DC outage of {:.0} s: AD → cloud syncing {:.1} s after the DC's return, cloud → AD {:.1} s",
        (back - stopped).as_secs_f64(),
        up_after.as_secs_f64(),
        down_after.as_secs_f64()
    );
    // Within the capped backoff and a pass, not the 30 s of an uncapped one.
    assert!(up_after < Duration::from_secs(15), "AD → cloud took {up_after:?}");
    assert!(down_after < Duration::from_secs(15), "cloud → AD took {down_after:?}");
    eventually("both directions healthy again", || async {
        let up = direction_status(&cloud, &domain, "ad_to_cloud").await?;
        let down = direction_status(&cloud, &domain, "cloud_to_ad").await?;
        (up["status"] == "ok" && down["status"] == "ok" && up["error"].is_null()).then_some(())
    })
    .await;
    // Both sides whole: every AD user of the OU is in the cloud with its
    // attributes, and every cloud user of it in AD.
    let ad = ad_users(&dc, &ou);
    let in_cloud = cloud_users(&cloud).await;
    for (name, attrs) in &ad {
        assert_eq!(in_cloud.get(name), Some(attrs), "{name} the same on both sides");
    }
    let ad_all = ad_users(&dc, &dc.base_dn);
    for (name, attrs) in &in_cloud {
        assert_eq!(ad_all.get(name), Some(attrs), "the cloud's {name} in AD, the same");
    }
    engine.stop().await;
}

/// 550 users deleted in AD one by one over some 45 s, as a script does it,
/// are one mass delete: held in quarantine whole (the default threshold is
/// 500), not applied in small batches that each pass under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_fifty_deletes_one_by_one_are_held_in_quarantine() {
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("OneByOne").await;
    let mut ldif = String::new();
    for i in 0..560 {
        ldif.push_str(&format!(
            "dn: CN=obo{i},{ou}\nobjectClass: user\nsAMAccountName: obo{i}\n\n"
        ));
    }
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    eventually("the 560 users in the cloud", || async {
        (cloud_user_count(&cloud).await >= 561).then_some(())
    })
    .await;
    let started = Instant::now();
    for i in 0..550 {
        dc.ldapmodify(&format!("dn: CN=obo{i},{ou}\nchangetype: delete\n"), false);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    println!("550 deletes one by one in {:.0} s", started.elapsed().as_secs_f64());
    let held = eventually("the deletes held in quarantine", || async {
        pending_quarantine(&cloud, &domain).await.into_iter().next()
    })
    .await;
    assert_eq!(held["deletes"], 550, "all of them, as one mass delete: {held}");
    assert_eq!(pending_quarantine(&cloud, &domain).await.len(), 1, "one entry");
    assert!(cloud.user("obo0").await.is_some(), "held, not deleted");
    assert!(cloud.user("obo549").await.is_some(), "held, not deleted");
    assert_eq!(cloud_user_count(&cloud).await, 561, "nothing deleted");
    engine.stop().await;
}

/// Membership changes of one group that follow each other in the feed are
/// written to AD in one modify. When AD refuses that modify whole (here:
/// one of the members is in the group already, made so in AD while the
/// agent was stopped), each change is written alone and gets its own
/// answer: all of them land, and nothing is a sync error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_of_memberships_ad_refuses_whole_is_written_one_by_one() {
    let (dc, cloud, domain) = prepare().await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let users = format!("CN=Users,{}", dc.base_dn);
    let mut ids = Vec::new();
    for name in ["run1", "run2", "run3"] {
        let u = scim_create_user(&cloud, json!({"userName": name})).await;
        ids.push(u["id"].as_str().unwrap().to_owned());
    }
    let (st, g) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "Runners"})),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    let group_dn = format!("CN=Runners,{users}");
    let (dc_ref, users_ref) = (&dc, &users);
    for name in ["run1", "run2", "run3", "Runners"] {
        eventually("the cloud's objects in AD", || async move {
            dc_ref
                .ldapsearch(users_ref, &format!("(sAMAccountName={name})"), &["cn"])
                .contains("dn: ")
                .then_some(())
        })
        .await;
    }
    engine.stop().await;
    // While the agent is stopped: run2 joins in AD, then the cloud adds all three.
    dc.ldapmodify(
        &format!("dn: {group_dn}\nchangetype: modify\nadd: member\nmember: CN=run2,{users}\n"),
        false,
    );
    let members: Vec<_> = ids.iter().map(|id| json!({"value": id})).collect();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": members}]});
    let gid = g["id"].as_str().unwrap();
    let (st, v) = cloud
        .call(reqwest::Method::PATCH, &format!("/scim/v2/Groups/{gid}"), Some(patch))
        .await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let engine = run_engine(&dc, &cloud, &agent).await;
    let want: BTreeSet<String> = ["run1", "run2", "run3"].iter().map(|s| s.to_string()).collect();
    let (dc_ref, group_ref, want_ref) = (&dc, &group_dn, &want);
    eventually("all three in AD's group", || async move {
        let got: BTreeSet<String> = dc_ref
            .group_members(group_ref)
            .iter()
            .filter_map(|dn| dn.strip_prefix("CN=")?.split(',').next().map(str::to_owned))
            .collect();
        (got == *want_ref).then_some(())
    })
    .await;
    assert_eq!(cloud_members(&cloud, gid).await, want);
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// The quick path: a change to a user crosses found by `uSNChanged` (an
/// index lookup), ahead of any DirSync round; a membership crosses by
/// DirSync (its deltas); and the DirSync round that follows the quick path
/// moves the cookie without pushing the user again. Both sides are then
/// compared whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_change_crosses_by_the_quick_path_and_dirsync_stays_the_record() {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ferry_agent=info")
        .with_test_writer()
        .try_init();
    let (dc, cloud, domain) = prepare().await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let s = engine.shared.clone();
    let users = format!("CN=Users,{}", dc.base_dn);
    eventually("the initial import", || async { cloud.user("early").await }).await;
    // A quiet DC: no round owed (the import is the record as of its start;
    // what other tests change on a shared DC meanwhile is the quick path's
    // or a round's, settled in these 2 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (quick0, rounds0, pushed0) = (
        s.quick_pushed.load(Relaxed),
        s.dirsync_rounds.load(Relaxed),
        s.pushed.load(Relaxed),
    );

    let early_dn = dc.ldapsearch(&users, "(sAMAccountName=early)", &["dn"]);
    let early_dn = early_dn
        .lines()
        .find_map(|l| l.strip_prefix("dn: "))
        .expect("early's DN")
        .to_owned();
    dc.ldapmodify(
        &format!("dn: {early_dn}\nchangetype: modify\nreplace: title\ntitle: Quick\n"),
        false,
    );
    eventually("the change in the cloud", || async {
        cloud.user("early").await.filter(|u| u["title"] == "Quick")
    })
    .await;
    assert_eq!(
        s.quick_pushed.load(Relaxed),
        quick0 + 1,
        "the user came by the quick path"
    );
    let pushed_quick = s.pushed.load(Relaxed);
    assert_eq!(pushed_quick, pushed0 + 1, "one change pushed");
    // The record follows once the DC is quiet, and pushes nothing again.
    eventually("the DirSync round after the quick path", || async {
        (s.dirsync_rounds.load(Relaxed) > rounds0).then_some(())
    })
    .await;
    assert_eq!(
        s.pushed.load(Relaxed),
        pushed_quick,
        "the DirSync round did not push the user the quick path pushed"
    );

    // A membership: DirSync's (the group's member delta).
    let mut admin = dc.admin().await;
    let group = admin
        .create_group(
            &users,
            &ferry_agent::ad::write::NewAdGroup {
                name: "Quick Team".into(),
                sam_account_name: None,
                description: None,
                group_type: -2147483646,
            },
        )
        .await
        .unwrap();
    eventually("the group in the cloud", || async { cloud.group("Quick Team").await }).await;
    let quick1 = s.quick_pushed.load(Relaxed);
    admin.add_member(&group, &early_dn).await.unwrap();
    eventually("the membership in the cloud", || async {
        cloud
            .group("Quick Team")
            .await
            .filter(|g| g["members"].as_array().is_some_and(|m| m.len() == 1))
    })
    .await;
    assert_eq!(s.quick_pushed.load(Relaxed), quick1, "a group's change is DirSync's");

    let report = audit_now(&cloud, &domain).await;
    assert_eq!(report["differed"], 0, "{report}");
    assert_eq!(report["resent"], 0, "{report}");
    engine.stop().await;
}

/// Users made in the cloud, one after another, each land in AD once and
/// come back up as themselves: the quick path sees each new AD account
/// within ~100 ms, before or while the agent records its link, and the
/// cloud must never take it for a new AD object (a second cloud user under
/// the account name AD's 20 characters made of a long userName) nor keep
/// the new account's "disabled until a password is set" as what AD and
/// the cloud agreed. Both sides are then compared whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_made_in_the_cloud_come_back_up_as_themselves() {
    let (dc, cloud, domain) = prepare().await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let users = format!("CN=Users,{}", dc.base_dn);
    eventually("the initial import", || async { cloud.user("early").await }).await;
    let before = cloud_user_count(&cloud).await;
    const N: usize = 24;
    for i in 0..N {
        let name = format!("a-cloud-made-user-named-{i:02}");
        scim_create_user(&cloud, json!({"userName": name, "displayName": format!("Made {i}")})).await;
        let (dc_ref, users_ref) = (&dc, &users);
        eventually("the user in AD", || async move {
            dc_ref
                .ldapsearch(users_ref, &format!("(displayName=Made {i})"), &["cn"])
                .contains("dn: ")
                .then_some(())
        })
        .await;
    }
    // Every echo up, the DirSync round after them done.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        cloud_user_count(&cloud).await,
        before + N as i64,
        "one cloud user each, none made again from its AD account"
    );
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    let report = audit_now(&cloud, &domain).await;
    assert_eq!(report["differed"], 0, "{report}");
    assert_eq!(report["resent"], 0, "{report}");
    engine.stop().await;
}

/// A DC that takes its time over each page (a DC far away or busy: the
/// double's `--page-delay-ms`, in front of the real DC): the import sends
/// memberships while it still reads, in the time the cloud would otherwise
/// wait for AD (docs/sync.md, "The full import"), and every group ends
/// equal on both sides, its member list compared whole. Six groups list the
/// same 600 users (and one nests another), 600 more users have a group of
/// their own: where the DC puts each group in its read decides which
/// memberships can go early, and six make it all but certain some do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memberships_cross_while_a_slow_dc_is_still_read_and_both_sides_end_equal() {
    let dc = delegated_dc().await;
    let groups = crowd(&dc).await;
    let dc = dc.behind_double(&["--page-size", "100", "--page-delay-ms", "150"]);
    let cloud = Cloud::start().await;
    let domain = add_domain(&cloud, &dc).await;
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    crowd_in_cloud(&cloud, &groups).await;
    let early = engine
        .shared
        .import_memberships_early
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(early > 0, "no membership went up while AD was read");
    crowd_equal(&cloud, &domain, &dc, &groups).await;
    eprintln!("{early} memberships crossed while AD was read");
    engine.stop().await;
}

/// The same slow DC and groups, and the cloud killed (SIGKILL) once
/// memberships have crossed and before the read has ended: once it is
/// back, the agent imports again and both sides end equal, every group
/// compared whole (the groups a share had started are linked by then, and
/// get their whole list).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_cloud_while_memberships_cross_a_slow_read_then_both_sides_end_equal() {
    let dc = delegated_dc().await;
    let groups = crowd(&dc).await;
    let dc = dc.behind_double(&["--page-size", "100", "--page-delay-ms", "300"]);
    let mut server = CloudServer::start().await;
    let domain = add_domain(&server.cloud, &dc).await;
    let agent = enrol(&server.cloud, &domain).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &dc, &server.cloud, &agent);
    let _agent = AgentProcess::spawn(dir.path(), "agent.log");
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    poll_until(
        "memberships crossing while AD is read",
        Duration::from_millis(20),
        || async { log().contains("memberships while reading").then_some(()) },
    )
    .await;
    server.kill9();
    assert!(
        !log().contains("read done"),
        "the read ended before the cloud was killed: nothing was cut"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.up().await;
    crowd_in_cloud(&server.cloud, &groups).await;
    crowd_equal(&server.cloud, &domain, &dc, &groups).await;
    // Each import read the groups beside the users, on a second connection.
    let log = log();
    assert!(
        log.contains("the DC's first page search=\"groups\"") && !log.contains("the groups follow the users"),
        "the groups were not read on a connection of their own:\n{log}"
    );
}

/// A DC that answers one page of the import's read `busy` (the double's
/// `--busy-page`, as a loaded DC does): the import stops there instead of
/// taking what it read for the whole domain (its cookie is not moved on,
/// nothing unread is judged gone), the agent reads the domain again from
/// the start, and both sides end equal, every group compared whole. The
/// read asks for each page while the last is still being turned into
/// changes; a read that ends on a refusal must not look like one that ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_the_dc_answers_busy_stops_the_import_which_reads_again_and_both_sides_end_equal() {
    let dc = delegated_dc().await;
    let groups = crowd(&dc).await;
    // 1,200 users and more at 100 a page: the 8th page is well inside the read.
    let dc = dc.behind_double(&["--page-size", "100", "--busy-page", "8"]);
    let (cloud, domain, dir, _agent) = cloud_and_agent_process(&dc).await;
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    crowd_in_cloud(&cloud, &groups).await;
    crowd_equal(&cloud, &domain, &dc, &groups).await;
    let log = log();
    let double = dc.double.as_ref().map(|d| d.log()).unwrap_or_default();
    assert!(
        double.contains("answered a page busy"),
        "the double never cut the read:\n{double}"
    );
    let busy = log
        .find("answered this page busy")
        .unwrap_or_else(|| panic!("the agent did not see the busy page:\n{log}"));
    let done: Vec<usize> = log.match_indices("full import: read done").map(|(i, _)| i).collect();
    assert!(
        done.len() == 1 && done[0] > busy,
        "the read must end once, after the busy page, read again whole:\n{log}"
    );
}

/// A DC, or a proxy in front of it, that refuses the import's second
/// connection (the double's `--refuse-connection`, as a DC at its
/// `MaxConnections` does): the import reads the groups after the users on
/// its one connection instead of beside them, and both sides end equal,
/// every group compared whole. The double counts its connections: the
/// first is `scripts/ad-double`'s readiness probe, the next two are the
/// agent's two directions' (each opens one as it starts), and the fourth
/// is the import's second, for the groups, opened after the users' search
/// is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_second_connection_reads_the_groups_after_the_users_and_both_sides_end_equal() {
    let dc = delegated_dc().await;
    let groups = crowd(&dc).await;
    let dc = dc.behind_double(&["--refuse-connection", "4"]);
    let (cloud, domain, dir, _agent) = cloud_and_agent_process(&dc).await;
    crowd_in_cloud(&cloud, &groups).await;
    crowd_equal(&cloud, &domain, &dc, &groups).await;
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let double = dc.double.as_ref().map(|d| d.log()).unwrap_or_default();
    assert!(
        double.contains("refused a connection"),
        "the double never refused a connection:\n{double}"
    );
    let first = |search: &str| {
        log.find(&format!("the DC's first page search=\"{search}\""))
            .unwrap_or_else(|| panic!("no first page of the {search}:\n{log}"))
    };
    assert!(
        log.contains("no second connection to the DC"),
        "the import did not see its second connection refused:\n{log}"
    );
    let done: Vec<usize> = log.match_indices("full import: read done").map(|(i, _)| i).collect();
    assert!(
        done.len() == 1 && first("users") < first("groups") && first("groups") < done[0],
        "one read, the groups after the users:\n{log}"
    );
}

/// A cloud with `dc`'s domain and an enrolled agent running as a process,
/// its config and `agent.log` in the returned directory.
async fn cloud_and_agent_process(dc: &Dc) -> (Cloud, String, tempfile::TempDir, AgentProcess) {
    let cloud = Cloud::start().await;
    let domain = add_domain(&cloud, dc).await;
    let agent = enrol(&cloud, &domain).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), dc, &cloud, &agent);
    let process = AgentProcess::spawn(dir.path(), "agent.log");
    (cloud, domain, dir, process)
}

/// A crowd group: its cloud name, its DN, its members in the cloud (user
/// names, a group as `group:NAME`) and in AD (CNs, lower case).
type CrowdGroup = (String, String, BTreeSet<String>, BTreeSet<String>);

/// Six groups listing the same 600 users (one nesting another) and 600 more
/// users with a group of their own: where the DC puts each group in its
/// read decides which memberships can go early, and six make it all but
/// certain some do.
async fn crowd(dc: &Dc) -> Vec<CrowdGroup> {
    const N: usize = 600;
    let (a, b) = (dc.new_ou("crowd-a").await, dc.new_ou("crowd-b").await);
    populate_group(dc, &a, N, "Crowd A", "crowda", "ca");
    populate_group(dc, &b, N, "Crowd B", "crowdb", "cb");
    let members: String = (0..N).map(|i| format!("member: CN=m{i},{a}\n")).collect();
    let mut ldif = String::new();
    for k in 0..4 {
        ldif.push_str(&format!(
            "dn: CN=Crowd {k},{a}\nobjectClass: group\nsAMAccountName: crowd{k}\n{members}\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Crowd Nest,{a}\nobjectClass: group\nsAMAccountName: crowdnest\nmember: CN=Crowd A,{a}\nmember: CN=m0,{b}\n\n"
    ));
    dc.ldapmodify(&ldif, true);
    let of_a: BTreeSet<String> = (0..N).map(|i| format!("ca{i}")).collect();
    let of_b: BTreeSet<String> = (0..N).map(|i| format!("cb{i}")).collect();
    let cns: BTreeSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    let nest_cloud: BTreeSet<String> = ["group:crowda".to_owned(), "cb0".to_owned()].into();
    // `group_member_cns` gives CNs in lower case.
    let nest_ad: BTreeSet<String> = ["crowd a".to_owned(), "m0".to_owned()].into();
    let mut groups = vec![
        ("crowda".into(), format!("CN=Crowd A,{a}"), of_a.clone(), cns.clone()),
        ("crowdb".into(), format!("CN=Crowd B,{b}"), of_b, cns.clone()),
        ("crowdnest".into(), format!("CN=Crowd Nest,{a}"), nest_cloud, nest_ad),
    ];
    for k in 0..4 {
        groups.push((
            format!("crowd{k}"),
            format!("CN=Crowd {k},{a}"),
            of_a.clone(),
            cns.clone(),
        ));
    }
    groups
}

/// Each crowd group's members in the cloud, by name.
async fn crowd_cloud_side(cloud: &Cloud, groups: &[CrowdGroup]) -> Option<Vec<BTreeSet<String>>> {
    let mut names = cloud_user_names(cloud).await;
    let mut ids = std::collections::HashMap::new();
    for (name, ..) in groups {
        let g = cloud.group(name).await?;
        names.insert(text(&g["id"]), format!("group:{name}"));
        ids.insert(name.clone(), text(&g["id"]));
    }
    let mut out = Vec::new();
    for (name, ..) in groups {
        let (_, g) = cloud
            .call(reqwest::Method::GET, &format!("/scim/v2/Groups/{}", ids[name]), None)
            .await;
        let got: BTreeSet<String> = member_ids(&g)
            .into_iter()
            .map(|id| names.get(&id).cloned().unwrap_or(id))
            .collect();
        out.push(got);
    }
    Some(out)
}

/// Waits until every crowd group is whole in the cloud.
async fn crowd_in_cloud(cloud: &Cloud, groups: &[CrowdGroup]) {
    let want: Vec<BTreeSet<String>> = groups.iter().map(|g| g.2.clone()).collect();
    eventually("every group whole in the cloud", || async {
        crowd_cloud_side(cloud, groups).await.filter(|got| *got == want)
    })
    .await;
}

/// Both sides equal, every crowd group compared whole, and still so once
/// the agent is quiet; no sync error.
async fn crowd_equal(cloud: &Cloud, domain: &str, dc: &Dc, groups: &[CrowdGroup]) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let want: Vec<BTreeSet<String>> = groups.iter().map(|g| g.2.clone()).collect();
    assert_eq!(crowd_cloud_side(cloud, groups).await, Some(want));
    // The DC itself, not through the delaying double: the same members.
    let ad = dc.without_double();
    for (name, dn, _, want_ad) in groups {
        assert_eq!(&ad.group_member_cns(dn), want_ad, "AD's {name}");
    }
    assert!(sync_errors(cloud, domain).await.is_empty());
    // And every object, attribute and membership, compared whole.
    let report = audit_now(cloud, domain).await;
    assert_eq!(report["differed"], 0, "{report}");
    assert_eq!(report["resent"], 0, "{report}");
}

/// A cloud group with a member of its own, which the first import matches
/// to an AD group of the same name: both sides end with the same members,
/// AD's and the cloud's member (placed in AD as the group's). A guard for
/// any change to how an import sends memberships (docs/BENCHMARKS.md, runs
/// 19–26, sent them while reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cloud_group_matched_by_the_first_import_ends_equal_on_both_sides() {
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("matched").await;
    let mut ldif = String::new();
    for u in ["crewann", "crewbob"] {
        ldif.push_str(&format!("dn: CN={u},{ou}\nobjectClass: user\nsAMAccountName: {u}\n\n"));
    }
    ldif.push_str(&format!(
        "dn: CN=Crew,{ou}\nobjectClass: group\nsAMAccountName: Crew\nmember: CN=crewann,{ou}\nmember: CN=crewbob,{ou}\n\n"
    ));
    dc.ldapmodify(&ldif, true);
    let loner = scim_create_user(&cloud, json!({"userName": "crewloner"})).await;
    let (st, g) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "Crew", "members": [{"value": loner["id"]}]})),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let group = format!("CN=Crew,{ou}");
    let want: BTreeSet<String> = ["crewann", "crewbob", "crewloner"].map(String::from).into();
    eventually("the matched group, equal on both sides", || async {
        (cloud_members(&cloud, &gid).await == want && dc.group_member_cns(&group) == want).then_some(())
    })
    .await;
    // And it stays so once the agent is quiet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cloud_members(&cloud, &gid).await, want);
    assert_eq!(dc.group_member_cns(&group), want);
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// `n` users `<prefix><i>` (CN `m<i>`) and a group `cn` of them all in `ou`,
/// written straight into the DC's database in one transaction
/// (`scripts/lib/populate-group.py`: over LDAP Samba takes minutes for
/// 30,000 adds); the agent reads them over LDAP.
fn populate_group(dc: &Dc, ou: &str, n: usize, cn: &str, sam: &str, prefix: &str) {
    let st = std::process::Command::new("/usr/bin/python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/populate-group.py"))
        .arg(dc.dir.join("etc/smb.conf"))
        .args([ou, &n.to_string(), cn, sam, prefix])
        .status()
        .unwrap();
    assert!(st.success(), "populate-group.py failed");
}

/// The ids of a SCIM group's members.
fn member_ids(group: &serde_json::Value) -> Vec<String> {
    group["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["value"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
