//! The agent API over real HTTP, on SQLite and PostgreSQL: registration,
//! heartbeats and the primary lease, AD batches with the cookie
//! compare-and-swap, the cloud feed long-poll and its acknowledgement.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::TestServer;
use ferry_proto::agent::{AdChange, CloudChange, FeedResponse, PushChangesRequest, FEED_MEMBERS_MAX};
use ferry_proto::record::{GroupRecord, UserRecord};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

type Agent = common::TestAgent;

async fn setup(s: &TestServer, policies: Value) -> (String, Agent) {
    let (_, d) = s
        .call(
            Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "example.test", "policies": policies})),
        )
        .await;
    let domain = d["id"].as_str().unwrap().to_owned();
    let agent = enrol(s, &domain).await;
    (domain, agent)
}

async fn enrol(s: &TestServer, domain: &str) -> Agent {
    s.enrol(domain).await
}

async fn heartbeat(s: &TestServer, a: &Agent) -> Value {
    s.heartbeat(a).await
}

async fn push(s: &TestServer, a: &Agent, from: Option<&str>, to: &str, changes: Vec<AdChange>) -> (StatusCode, Value) {
    let body = PushChangesRequest {
        from_cookie: from.map(str::to_owned),
        to_cookie: Some(to.to_owned()),
        changes,
        repair: false,
    };
    s.call_as(
        &a.token,
        Method::POST,
        "/agent/v1/changes",
        Some(serde_json::to_value(body).unwrap()),
    )
    .await
}

fn ad_user(guid: Uuid, name: &str) -> AdChange {
    AdChange::UpsertUser {
        guid,
        dn: format!("CN={name},CN=Users,DC=example,DC=test"),
        record: Box::new(UserRecord {
            username: name.into(),
            given_name: Some("Given".into()),
            email: Some(format!("{name}@example.test")),
            department: Some("R&D".into()),
            active: true,
            ..Default::default()
        }),
        changed_at: None,
    }
}

fn ad_user_with(guid: Uuid, name: &str, title: &str, department: &str, changed_at: Option<i64>) -> AdChange {
    AdChange::UpsertUser {
        guid,
        dn: format!("CN={name},CN=Users,DC=example,DC=test"),
        record: Box::new(UserRecord {
            username: name.into(),
            title: Some(title.into()),
            department: Some(department.into()),
            active: true,
            ..Default::default()
        }),
        changed_at,
    }
}

async fn set_title(s: &TestServer, id: &str, title: &str) {
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "title", "value": title}]});
    let (st, v) = s
        .call(Method::PATCH, &format!("/scim/v2/Users/{id}"), Some(patch))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

async fn scim_user(s: &TestServer, name: &str) -> Option<Value> {
    let (_, v) = s
        .call(
            Method::GET,
            &format!("/scim/v2/Users?filter=userName%20eq%20%22{name}%22"),
            None,
        )
        .await;
    v["Resources"].as_array().and_then(|r| r.first().cloned())
}

async fn feed(s: &TestServer, a: &Agent, after: i64, wait: u64) -> FeedResponse {
    let (st, v) = s
        .call_as(
            &a.token,
            Method::GET,
            &format!("/agent/v1/feed?after={after}&wait={wait}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

both_engines!(register_validates_its_input, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_, d) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({"name": "example.test"})))
        .await;
    let (_, k) = s
        .call(
            Method::POST,
            &format!("/api/v1/domains/{}/connect-keys", d["id"].as_str().unwrap()),
            None,
        )
        .await;
    for (body, needle) in [
        (
            json!({"connect_key": k["connect_key"], "hostname": "dc", "version": "1", "public_key": "c2hvcnQ="}),
            "X25519",
        ),
        (
            json!({"connect_key": k["connect_key"], "hostname": "", "version": "1", "public_key": "x"}),
            "hostname",
        ),
        (json!({"connect_key": k["connect_key"]}), "missing field"),
    ] {
        let (st, v) = s.call_as("", Method::POST, "/agent/v1/register", Some(body)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["message"].as_str().unwrap().contains(needle), "{v}");
    }
    // A refused registration did not use the key up.
    enrol(&s, d["id"].as_str().unwrap()).await;
    let (st, v) = s.call_as("fca_forged", Method::GET, "/agent/v1/state", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    let (st, _) = s.call(Method::GET, "/agent/v1/state", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "an admin token is not an agent token");
});

both_engines!(
    a_key_is_checked_without_being_used_and_an_agent_can_leave,
    |engine| async move {
        use base64::Engine as _;
        let s = TestServer::start(engine).await;
        let (_, d) = s
            .call(Method::POST, "/api/v1/domains", Some(json!({"name": "example.test"})))
            .await;
        let domain = d["id"].as_str().unwrap().to_owned();
        let (_, k) = s
            .call(Method::POST, &format!("/api/v1/domains/{domain}/connect-keys"), None)
            .await;
        let key = json!({"connect_key": k["connect_key"]});
        for _ in 0..2 {
            let (st, v) = s
                .call_as("", Method::POST, "/agent/v1/connect-key", Some(key.clone()))
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            assert_eq!(v["domain"]["root_dn"], "DC=example,DC=test");
            assert_eq!(v["domain"]["name"], "example.test");
            assert_eq!(v["expires_at"], k["expires_at"]);
        }
        let (st, v) = s
            .call_as(
                "",
                Method::POST,
                "/agent/v1/connect-key",
                Some(json!({"connect_key": "fck1.x.y"})),
            )
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("connect_key_invalid"))
        );
        s.clock.advance(8 * 24 * 3600 * 1000);
        let (_, v) = s
            .call_as("", Method::POST, "/agent/v1/connect-key", Some(key.clone()))
            .await;
        assert_eq!(v["code"], "connect_key_expired");
        s.clock.advance(-(8 * 24 * 3600 * 1000));

        // Checking did not use the key: it registers, and is then used.
        let body = json!({"connect_key": k["connect_key"], "hostname": "dc", "version": "0.1.0",
                      "public_key": base64::engine::general_purpose::STANDARD.encode([1u8; 32])});
        let (st, r) = s.call_as("", Method::POST, "/agent/v1/register", Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let a = Agent {
            token: r["agent_token"].as_str().unwrap().to_owned(),
            id: r["agent_id"].as_str().unwrap().to_owned(),
        };
        let (_, v) = s.call_as("", Method::POST, "/agent/v1/connect-key", Some(key)).await;
        assert_eq!(v["code"], "connect_key_used");

        // The agent's own view, then it deregisters (uninstall).
        heartbeat(&s, &a).await;
        let (st, me) = s.call_as(&a.token, Method::GET, "/agent/v1/me", None).await;
        assert_eq!(st, StatusCode::OK, "{me}");
        assert_eq!(me["agent_id"], a.id.as_str());
        assert_eq!(
            (me["status"].as_str(), me["primary"].as_bool()),
            (Some("active"), Some(true))
        );
        assert_eq!(me["report"]["state"], "idle");
        let (st, _) = s.call_as(&a.token, Method::POST, "/agent/v1/deregister", None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, v) = s.call_as(&a.token, Method::GET, "/agent/v1/me", None).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("agent_revoked"))
        );
        let (_, agents) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
            .await;
        assert_eq!(agents["agents"].as_array().unwrap().len(), 0);
        let (_, audit) = s.call(Method::GET, "/api/v1/audit", None).await;
        assert!(audit.to_string().contains("agent.uninstall"), "{audit}");
    }
);

both_engines!(one_primary_and_takeover, |engine| async move {
    let s = TestServer::start(engine).await;
    let (domain, one) = setup(&s, json!({})).await;
    let two = enrol(&s, &domain).await;
    assert_eq!(heartbeat(&s, &one).await["primary"], true);
    let hb = heartbeat(&s, &two).await;
    assert_eq!(hb["primary"], false);
    assert_eq!(hb["domain"]["root_dn"], "DC=example,DC=test");
    let (st, v) = push(&s, &two, None, "c1", vec![]).await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("not_primary")));
    // The primary goes quiet; after the lease the standby takes over.
    s.clock.advance(31_000);
    assert_eq!(heartbeat(&s, &two).await["primary"], true);
    assert_eq!(heartbeat(&s, &one).await["primary"], false);
    let (_, agents) = s
        .call(Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await;
    let primary: Vec<&Value> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["primary"] == true)
        .collect();
    assert_eq!(primary.len(), 1);
    assert_eq!(primary[0]["id"], two.id.as_str());
    // A clean stop releases the lease: the other agent takes it at once.
    let (st, v) = s.call_as(&two.token, Method::POST, "/agent/v1/release", None).await;
    assert_eq!((st, v["released"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(heartbeat(&s, &one).await["primary"], true);
    let (_, v) = s.call_as(&two.token, Method::POST, "/agent/v1/release", None).await;
    assert_eq!(v["released"], false, "only the holder releases");
    assert_eq!(heartbeat(&s, &one).await["primary"], true);
});

both_engines!(ad_batches_apply_once_with_cookie_cas, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_domain, a) = setup(&s, json!({})).await;
    heartbeat(&s, &a).await;
    let (alice, bob, staff) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let batch = vec![
        ad_user(alice, "alice"),
        ad_user(bob, "bob"),
        AdChange::UpsertGroup {
            guid: staff,
            dn: "CN=Staff,CN=Users,DC=example,DC=test".into(),
            record: GroupRecord {
                name: "Staff".into(),
                description: Some("Everyone".into()),
            },
        },
        AdChange::SetMembers {
            group: staff,
            members: vec![alice, bob, Uuid::new_v4()],
        },
    ];
    let (st, v) = push(&s, &a, None, "c1", batch.clone()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["applied"], 4);
    let u = scim_user(&s, "alice").await.expect("alice is in the cloud");
    assert_eq!(u["emails"][0]["value"], "alice@example.test");
    assert_eq!(
        u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
        "R&D"
    );
    let (_, g) = s
        .call(
            Method::GET,
            "/scim/v2/Groups?filter=displayName%20eq%20%22Staff%22",
            None,
        )
        .await;
    assert_eq!(
        g["Resources"][0]["members"].as_array().unwrap().len(),
        2,
        "unknown members are left out"
    );
    assert_eq!(
        g["Resources"][0]["urn:ietf:params:scim:schemas:extension:ferry:2.0:Group"]["description"],
        "Everyone"
    );

    // Replaying from the old cookie is refused and changes nothing.
    let mut tx = s.store.begin().await.unwrap();
    let head = tx.feed_head(s.org.id).await.unwrap();
    drop(tx);
    let (st, v) = push(&s, &a, None, "c2", batch.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("cookie_mismatch"))
    );
    // The same changes again from the right cookie: compare-before-write, nothing changes.
    let (st, v) = push(&s, &a, Some("c1"), "c2", batch).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["applied"], 0);
    let mut tx = s.store.begin().await.unwrap();
    assert_eq!(tx.feed_head(s.org.id).await.unwrap(), head, "no echo: nothing written");
    drop(tx);
    let (_, state) = s.call_as(&a.token, Method::GET, "/agent/v1/state", None).await;
    assert_eq!(state["ad_cookie"], "c2");

    // A rename keeps identity: same cloud id, new name.
    let id_before = scim_user(&s, "alice").await.unwrap()["id"].clone();
    let (_, v) = push(&s, &a, Some("c2"), "c3", vec![ad_user(alice, "alice.b")]).await;
    assert_eq!(v["applied"], 1);
    assert!(scim_user(&s, "alice").await.is_none());
    assert_eq!(scim_user(&s, "alice.b").await.unwrap()["id"], id_before);

    // An AD delete removes the cloud user (policy "remove").
    let (_, v) = push(&s, &a, Some("c3"), "c4", vec![AdChange::Delete { guid: bob }]).await;
    assert_eq!(v["applied"], 1);
    assert!(scim_user(&s, "bob").await.is_none());
});

both_engines!(
    first_contact_matches_existing_users_and_unlink_policy,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (_domain, a) = setup(&s, json!({"ad_delete_action": "unlink"})).await;
        heartbeat(&s, &a).await;
        let (st, cloud) = s
            .call(
                Method::POST,
                "/scim/v2/Users",
                Some(json!({"userName": "Carol", "nickName": "CC"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let guid = Uuid::new_v4();
        let (_, v) = push(&s, &a, None, "c1", vec![ad_user(guid, "carol")]).await;
        assert_eq!(v["applied"], 1);
        let u = scim_user(&s, "carol").await.unwrap();
        assert_eq!(u["id"], cloud["id"], "linked, not duplicated");
        assert_eq!(u["nickName"], "CC", "attributes AD does not map are kept");
        let (_, v) = push(&s, &a, Some("c1"), "c2", vec![AdChange::Delete { guid }]).await;
        assert_eq!(v["applied"], 1);
        assert_eq!(
            scim_user(&s, "carol").await.unwrap()["id"],
            cloud["id"],
            "unlink keeps the cloud user"
        );
        let (_, audit) = s.call(Method::GET, "/api/v1/audit?limit=1", None).await;
        assert_eq!(audit["entries"][0]["action"], "sync.unlink");
    }
);

both_engines!(
    mass_deletes_are_quarantined_until_approved_or_rejected,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (domain, a) = setup(&s, json!({"delete_threshold": 2})).await;
        heartbeat(&s, &a).await;
        let guids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let users = guids
            .iter()
            .enumerate()
            .map(|(i, g)| ad_user(*g, &format!("u{i}")))
            .collect();
        push(&s, &a, None, "c1", users).await;
        let deletes = guids.iter().map(|g| AdChange::Delete { guid: *g }).collect();
        let (st, v) = push(&s, &a, Some("c1"), "c2", deletes).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!((v["applied"].as_i64(), v["quarantined"].as_i64()), (Some(0), Some(3)));
        for i in 0..3 {
            assert!(
                scim_user(&s, &format!("u{i}")).await.is_some(),
                "nothing deleted meanwhile"
            );
        }
        let (_, audit) = s.call(Method::GET, "/api/v1/audit?limit=1", None).await;
        assert_eq!(audit["entries"][0]["action"], "sync.deletes_quarantined");
        let (_, q) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/quarantine"), None)
            .await;
        assert_eq!(q["quarantine"].as_array().unwrap().len(), 1);
        assert_eq!(
            (
                q["quarantine"][0]["status"].as_str(),
                q["quarantine"][0]["deletes"].as_i64()
            ),
            (Some("pending"), Some(3))
        );
        let qid = q["quarantine"][0]["id"].as_str().unwrap().to_owned();

        // Reconciliation sends the same deletes again: they are not held twice.
        let again = guids.iter().map(|g| AdChange::Delete { guid: *g }).collect();
        let (_, v) = push(&s, &a, Some("c2"), "c3", again).await;
        assert_eq!((v["applied"].as_i64(), v["quarantined"].as_i64()), (Some(0), Some(0)));
        let (_, q) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/quarantine"), None)
            .await;
        assert_eq!(q["quarantine"].as_array().unwrap().len(), 1);

        // Approval carries them out.
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/api/v1/domains/{domain}/quarantine/{qid}/approve"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["applied"], 3);
        for i in 0..3 {
            assert!(scim_user(&s, &format!("u{i}")).await.is_none());
        }
        let (st, _) = s
            .call(
                Method::POST,
                &format!("/api/v1/domains/{domain}/quarantine/{qid}/approve"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "decided once");

        // Rejection keeps the cloud users and unlinks them, so they are not deleted later.
        let more: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        let users = more
            .iter()
            .enumerate()
            .map(|(i, g)| ad_user(*g, &format!("k{i}")))
            .collect();
        push(&s, &a, Some("c3"), "c4", users).await;
        let deletes: Vec<AdChange> = more.iter().map(|g| AdChange::Delete { guid: *g }).collect();
        let (_, v) = push(&s, &a, Some("c4"), "c5", deletes.clone()).await;
        assert_eq!(v["quarantined"], 3);
        let (_, q) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/quarantine"), None)
            .await;
        let pending = q["quarantine"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["status"] == "pending")
            .unwrap()
            .clone();
        let (st, _) = s
            .call(
                Method::POST,
                &format!(
                    "/api/v1/domains/{domain}/quarantine/{}/reject",
                    pending["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let (_, v) = push(&s, &a, Some("c5"), "c6", deletes).await;
        assert_eq!((v["applied"].as_i64(), v["quarantined"].as_i64()), (Some(0), Some(0)));
        for i in 0..3 {
            assert!(scim_user(&s, &format!("k{i}")).await.is_some(), "kept after rejection");
        }
        let other = s.other_org("Globex").await;
        let (st, _) = s
            .call_as(
                &other.token,
                Method::GET,
                &format!("/api/v1/domains/{domain}/quarantine"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
);

both_engines!(feed_long_poll_excludes_own_changes_and_acks, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_domain, a) = setup(&s, json!({})).await;
    heartbeat(&s, &a).await;
    let guid = Uuid::new_v4();
    push(&s, &a, None, "c1", vec![ad_user(guid, "dave")]).await;
    // The agent's own AD changes are not fed back to it, but the cursor moves past them.
    let f = feed(&s, &a, 0, 0).await;
    assert!(f.entries.is_empty(), "{:?}", f.entries);
    assert!(f.next_cursor > 0);

    // A long-poll wakes when the cloud changes.
    let cursor = f.next_cursor;
    let poll = {
        let (base, token) = (s.base.clone(), a.token.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{base}/agent/v1/feed?after={cursor}&wait=20"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<FeedResponse>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll waits while nothing changes");
    let dave = scim_user(&s, "dave").await.unwrap();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "title", "value": "Chief"}]});
    s.call(
        Method::PATCH,
        &format!("/scim/v2/Users/{}", dave["id"].as_str().unwrap()),
        Some(patch),
    )
    .await;
    let got = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(got.entries.len(), 1);
    let e = &got.entries[0];
    assert_eq!(e.origin, "cloud");
    let dave_id: Uuid = dave["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        e.ad_guids.get(&dave_id),
        Some(&guid),
        "the entry names dave's objectGUID"
    );

    // A delete in the cloud still names the AD object after the link is gone.
    s.call(Method::DELETE, &format!("/scim/v2/Users/{dave_id}"), None).await;
    let f = feed(&s, &a, got.next_cursor, 0).await;
    let del = f.entries.last().unwrap();
    assert!(matches!(del.change, ferry_proto::agent::CloudChange::Delete { id, .. } if id == dave_id));
    assert_eq!(del.ad_guids.get(&dave_id), Some(&guid));

    let (st, v) = s
        .call_as(
            &a.token,
            Method::POST,
            "/agent/v1/ack",
            Some(json!({"cursor": f.next_cursor + 100})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (st, v) = s
        .call_as(
            &a.token,
            Method::POST,
            "/agent/v1/ack",
            Some(json!({"cursor": f.next_cursor})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["feed_cursor"], f.next_cursor);
    let (st, v) = s.call_as(&a.token, Method::GET, "/agent/v1/feed?after=-1", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
});

both_engines!(an_agent_sees_only_its_own_org, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_domain, a) = setup(&s, json!({})).await;
    let other = s.other_org("Globex").await;
    let (st, _) = s
        .call_as(
            &other.token,
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "eve"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let f = feed(&s, &a, 0, 0).await;
    assert!(f.entries.is_empty(), "another org's changes never reach this agent");
    // The other org's admin cannot see this agent.
    let (_, d) = s.call_as(&other.token, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(d["domains"], json!([]));
});

both_engines!(concurrent_edits_follow_the_authority_policy, |engine| async move {
    use ferry_cloud::clock::Clock;
    for policy in ["ad", "cloud", "latest"] {
        let s = TestServer::start(engine).await;
        let (_domain, a) = setup(&s, json!({"authority": policy})).await;
        heartbeat(&s, &a).await;
        let guid = Uuid::new_v4();
        push(&s, &a, None, "c1", vec![ad_user_with(guid, "carl", "T0", "D0", None)]).await;
        let id = scim_user(&s, "carl").await.unwrap()["id"].as_str().unwrap().to_owned();

        // Not a conflict: the cloud changed the title, AD changed the department
        // and still shows the old title. The cloud's title must survive.
        set_title(&s, &id, "Cloud1").await;
        let cursor = feed(&s, &a, 0, 0).await.next_cursor;
        let (_, v) = push(
            &s,
            &a,
            Some("c1"),
            "c2",
            vec![ad_user_with(guid, "carl", "T0", "D1", None)],
        )
        .await;
        assert_eq!(v["applied"], 1, "{policy}");
        let u = scim_user(&s, "carl").await.unwrap();
        assert_eq!(
            u["title"], "Cloud1",
            "{policy}: a stale AD value does not revert the cloud's change"
        );
        assert_eq!(
            u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"], "D1",
            "{policy}"
        );
        let f = feed(&s, &a, cursor, 0).await;
        let down = f.entries.iter().any(|e| matches!(&e.change, ferry_proto::agent::CloudChange::UpsertUser { record, .. } if record.title.as_deref() == Some("Cloud1") && record.department.as_deref() == Some("D1")));
        assert!(down, "{policy}: the cloud's title is sent down to AD: {:?}", f.entries);

        // AD catches up: both sides agree; nothing more is written.
        push(
            &s,
            &a,
            Some("c2"),
            "c3",
            vec![ad_user_with(guid, "carl", "Cloud1", "D1", None)],
        )
        .await;
        let mut tx = s.store.begin().await.unwrap();
        let head = tx.feed_head(s.org.id).await.unwrap();
        drop(tx);

        // A real conflict: both changed the title since they last agreed.
        set_title(&s, &id, "C2").await;
        let now = s.clock.now_ms();
        let ad_time = if policy == "latest" { Some(now + 10_000) } else { None };
        push(
            &s,
            &a,
            Some("c3"),
            "c4",
            vec![ad_user_with(guid, "carl", "A2", "D1", ad_time)],
        )
        .await;
        let want = match policy {
            "cloud" => "C2",
            _ => "A2",
        };
        assert_eq!(scim_user(&s, "carl").await.unwrap()["title"], want, "{policy}");
        let (_, audit) = s.call(Method::GET, "/api/v1/audit?limit=20", None).await;
        let conflict = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "sync.conflict")
            .unwrap_or_else(|| panic!("{policy}: the conflict is audited: {audit}"));
        assert_eq!(conflict["details"]["attribute"], "title");
        assert_eq!(
            (
                conflict["details"]["ad"].as_str(),
                conflict["details"]["cloud"].as_str()
            ),
            (Some("A2"), Some("C2"))
        );
        assert_eq!(conflict["details"]["winner"], if want == "C2" { "cloud" } else { "ad" });
        let mut tx = s.store.begin().await.unwrap();
        assert!(tx.feed_head(s.org.id).await.unwrap() > head);
        drop(tx);

        if policy == "latest" {
            // The cloud's edit is the later one this time.
            push(
                &s,
                &a,
                Some("c4"),
                "c5",
                vec![ad_user_with(guid, "carl", "A2", "D1", None)],
            )
            .await;
            set_title(&s, &id, "C3").await;
            let past = Some(s.clock.now_ms() - 60_000);
            push(
                &s,
                &a,
                Some("c5"),
                "c6",
                vec![ad_user_with(guid, "carl", "A3", "D1", past)],
            )
            .await;
            assert_eq!(
                scim_user(&s, "carl").await.unwrap()["title"],
                "C3",
                "latest: the later cloud edit wins"
            );
        }
    }
});

both_engines!(
    sync_errors_are_recorded_listed_retried_and_resolved,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (domain, agent) = setup(&s, json!({})).await;
        let (st, u) = s
            .call(
                Method::POST,
                "/scim/v2/Users",
                Some(json!({"userName": "jsmith2", "displayName": "John Smith"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{u}");
        let uid = u["id"].as_str().unwrap().to_owned();
        let report = json!({"direction": "cloud_to_ad", "object_key": uid, "object_kind": "user", "object_name": "jsmith2",
        "operation": "create or update user", "code": "ldap 68 entryAlreadyExists", "message": "an object with that name already exists"});
        for attempt in 1..=2 {
            let (st, v) = s
                .call_as(
                    &agent.token,
                    Method::POST,
                    "/agent/v1/sync-errors",
                    Some(report.clone()),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            assert_eq!(v["attempts"], attempt, "one row per object, attempts counted");
        }
        let bad = json!({"direction": "sideways", "object_key": uid});
        let (st, _) = s
            .call_as(&agent.token, Method::POST, "/agent/v1/sync-errors", Some(bad))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        let (_, list) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
            .await;
        assert_eq!(list["total"], 1, "{list}");
        let e = &list["sync_errors"][0];
        assert_eq!(
            (e["object_name"].as_str(), e["attempts"].as_i64()),
            (Some("jsmith2"), Some(2))
        );
        assert!(e["advice"].as_str().unwrap().contains("Rename"), "{e}");
        let (_, me) = s.call_as(&agent.token, Method::GET, "/agent/v1/me", None).await;
        assert_eq!(me["sync_errors"], 1);
        let (_, open) = s
            .call_as(&agent.token, Method::GET, "/agent/v1/sync-errors", None)
            .await;
        assert_eq!(open["cloud_to_ad"], json!([uid]));

        // A retry sends the user to the agent again, as it is now.
        heartbeat(&s, &agent).await;
        let head = feed(&s, &agent, 0, 0).await.next_cursor;
        let eid = e["id"].as_str().unwrap();
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/api/v1/domains/{domain}/sync-errors/{eid}/retry"),
                None,
            )
            .await;
        assert_eq!((st, v["retried"].as_i64()), (StatusCode::OK, Some(1)), "{v}");
        let again = feed(&s, &agent, head, 0).await;
        assert!(
            again
                .entries
                .iter()
                .any(|e| format!("{:?}", e.change).contains("jsmith2")),
            "{:?}",
            again.entries
        );
        // The agent applied it: the error clears.
        let resolved = json!({"direction": "cloud_to_ad", "object_keys": [uid]});
        let (_, v) = s
            .call_as(
                &agent.token,
                Method::POST,
                "/agent/v1/sync-errors/resolved",
                Some(resolved),
            )
            .await;
        assert_eq!(v["resolved"], 1);
        let (_, list) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
            .await;
        assert_eq!(list["total"], 0, "{list}");

        // Dismissing: one, all, and an unknown one.
        s.call_as(
            &agent.token,
            Method::POST,
            "/agent/v1/sync-errors",
            Some(report.clone()),
        )
        .await;
        let (_, list) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
            .await;
        let eid = list["sync_errors"][0]["id"].as_str().unwrap().to_owned();
        let (st, _) = s
            .call(
                Method::DELETE,
                &format!("/api/v1/domains/{domain}/sync-errors/{eid}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = s
            .call(
                Method::DELETE,
                &format!("/api/v1/domains/{domain}/sync-errors/{eid}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = s
            .call(
                Method::GET,
                &format!("/api/v1/domains/{domain}/sync-errors?limit=0"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
);

both_engines!(
    a_refused_ad_change_is_recorded_and_the_rest_of_the_batch_applies,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (domain, agent) = setup(&s, json!({"match_existing_users": false})).await;
        heartbeat(&s, &agent).await;
        let (st, _) = s
            .call(Method::POST, "/scim/v2/Users", Some(json!({"userName": "jdoe"})))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        // A same-named AD user, between two others, with matching off.
        let (clash, before, after) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let batch = vec![ad_user(before, "ann"), ad_user(clash, "jdoe"), ad_user(after, "zed")];
        let (st, v) = push(&s, &agent, None, "c1", batch).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(
            (v["applied"].as_u64(), v["refused"].as_u64()),
            (Some(2), Some(1)),
            "{v}"
        );
        assert!(scim_user(&s, "ann").await.is_some() && scim_user(&s, "zed").await.is_some());
        let (_, state) = s.call_as(&agent.token, Method::GET, "/agent/v1/state", None).await;
        assert_eq!(state["ad_cookie"], "c1", "the cookie moved on past the refusal");
        let (_, list) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
            .await;
        assert_eq!(list["total"], 1, "{list}");
        let e = &list["sync_errors"][0];
        assert_eq!(
            (e["direction"].as_str(), e["object_key"].as_str()),
            (Some("ad_to_cloud"), Some(clash.to_string().as_str()))
        );
        assert!(e["message"].as_str().unwrap().contains("matching"), "{e}");
        // The cloud user is untouched: not linked, not changed.
        let jdoe = scim_user(&s, "jdoe").await.unwrap();
        assert!(jdoe["emails"].is_null(), "{jdoe}");

        // Once the cloud user is renamed, the AD user comes in and the error goes.
        let id = jdoe["id"].as_str().unwrap();
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "userName", "value": "jdoe-cloud"}]});
        let (st, _) = s
            .call(Method::PATCH, &format!("/scim/v2/Users/{id}"), Some(patch))
            .await;
        assert_eq!(st, StatusCode::OK);
        let (st, v) = push(&s, &agent, Some("c1"), "c2", vec![ad_user(clash, "jdoe")]).await;
        assert_eq!((st, v["refused"].as_u64()), (StatusCode::OK, Some(0)), "{v}");
        assert!(scim_user(&s, "jdoe").await.is_some());
        let (_, list) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
            .await;
        assert_eq!(list["total"], 0, "{list}");
    }
);

async fn new_domain(s: &TestServer, name: &str) -> String {
    let (st, d) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({ "name": name })))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    d["id"].as_str().unwrap().to_owned()
}

both_engines!(
    each_object_belongs_to_one_domain_and_goes_to_its_agent_only,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let d1 = new_domain(&s, "one.test").await;
        let d2 = new_domain(&s, "two.test").await;
        let (a1, a2) = (enrol(&s, &d1).await, enrol(&s, &d2).await);
        heartbeat(&s, &a1).await;
        heartbeat(&s, &a2).await;
        let (_, d) = s.call(Method::GET, &format!("/api/v1/domains/{d1}"), None).await;
        assert_eq!(d["default_for_cloud_objects"], true, "the org's first domain: {d}");

        // A1's jsmith and its group, from AD.
        let (g1, u1) = (Uuid::new_v4(), Uuid::new_v4());
        let (st, v) = push(&s, &a1, None, "c1", vec![ad_user(u1, "jsmith")]).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let group = AdChange::UpsertGroup {
            guid: g1,
            dn: "CN=Engineers,CN=Users,DC=one,DC=test".into(),
            record: GroupRecord {
                name: "Engineers".into(),
                description: None,
            },
        };
        let members = AdChange::SetMembers {
            group: g1,
            members: vec![u1],
        };
        push(&s, &a1, Some("c1"), "c2", vec![group.clone(), members]).await;
        let jsmith = scim_user(&s, "jsmith").await.unwrap();
        let jid = jsmith["id"].as_str().unwrap().to_owned();

        // A2 pushes its own jsmith (disabled) and an empty Engineers: both
        // are conflicts of A2, and A1's objects stay as they are.
        let mut theirs = ad_user(Uuid::new_v4(), "jsmith");
        if let AdChange::UpsertUser { record, .. } = &mut theirs {
            record.active = false;
            record.given_name = Some("Jane".into());
        }
        let g2 = Uuid::new_v4();
        let group2 = AdChange::UpsertGroup {
            guid: g2,
            dn: "CN=Engineers,CN=Users,DC=two,DC=test".into(),
            record: GroupRecord {
                name: "Engineers".into(),
                description: None,
            },
        };
        let empty = AdChange::SetMembers {
            group: g2,
            members: vec![],
        };
        let (st, v) = push(
            &s,
            &a2,
            None,
            "x1",
            vec![theirs, group2, empty, ad_user(Uuid::new_v4(), "onlytwo")],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["refused"], 2, "{v}");
        let after = scim_user(&s, "jsmith").await.unwrap();
        assert_eq!(after["active"], true);
        assert_eq!(after["name"]["givenName"], "Given");
        let (_, errors) = s
            .call(Method::GET, &format!("/api/v1/domains/{d2}/sync-errors"), None)
            .await;
        let errors = errors["sync_errors"].as_array().unwrap().clone();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e["message"].as_str().unwrap().contains("one.test")));
        let (_, links) = s.call(Method::GET, &format!("/api/v1/objects/{jid}/links"), None).await;
        assert_eq!(links["links"].as_array().unwrap().len(), 1, "{links}");
        assert_eq!(links["home_domain"], d1.as_str());

        // The feed: a cloud edit of A1's jsmith goes to A1 only; A2's own
        // user's edit to A2 only.
        let head1 = feed(&s, &a1, 0, 0).await.next_cursor;
        let head2 = feed(&s, &a2, 0, 0).await.next_cursor;
        set_title(&s, &jid, "Lead").await;
        let two = scim_user(&s, "onlytwo").await.unwrap();
        set_title(&s, two["id"].as_str().unwrap(), "Solo").await;
        let f1 = feed(&s, &a1, head1, 0).await;
        let f2 = feed(&s, &a2, head2, 0).await;
        let ids = |f: &FeedResponse| -> Vec<Uuid> {
            f.entries
                .iter()
                .filter_map(|e| match &e.change {
                    ferry_proto::agent::CloudChange::UpsertUser { id, .. } => Some(*id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(ids(&f1), vec![jid.parse::<Uuid>().unwrap()], "{f1:?}");
        assert_eq!(ids(&f2), vec![two["id"].as_str().unwrap().parse::<Uuid>().unwrap()]);

        // A2 may not link A1's object to an AD object of its own.
        let (st, v) = s
            .call_as(
                &a2.token,
                Method::POST,
                "/agent/v1/links",
                Some(json!({"object_id": jid, "kind": "user", "guid": Uuid::new_v4(), "dn": "CN=x,DC=two,DC=test"})),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["code"], "other_domain", "{v}");
        // …and a delete from A2 of an object it never had changes nothing.
        let (st, _) = push(&s, &a2, Some("x1"), "x2", vec![AdChange::Delete { guid: u1 }]).await;
        assert_eq!(st, StatusCode::OK);
        assert!(scim_user(&s, "jsmith").await.is_some());
    }
);

both_engines!(one_by_one_deletes_add_up_to_the_threshold, |engine| async move {
    let s = TestServer::start(engine).await;
    let (domain, a) = setup(&s, json!({"delete_threshold": 2})).await;
    heartbeat(&s, &a).await;
    let guids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let users = guids
        .iter()
        .enumerate()
        .map(|(i, g)| ad_user(*g, &format!("one{i}")))
        .collect();
    push(&s, &a, None, "c0", users).await;
    // One at a time: the first two are applied, the third and fourth
    // would make more than two in the window and are held.
    let mut from = "c0".to_owned();
    let mut outcome = Vec::new();
    for (i, g) in guids.iter().enumerate() {
        let to = format!("c{}", i + 1);
        let (st, v) = push(&s, &a, Some(&from), &to, vec![AdChange::Delete { guid: *g }]).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        outcome.push((v["applied"].as_i64().unwrap(), v["quarantined"].as_i64().unwrap()));
        from = to;
    }
    assert_eq!(outcome, vec![(1, 0), (1, 0), (0, 1), (0, 1)]);
    assert!(scim_user(&s, "one0").await.is_none());
    assert!(scim_user(&s, "one2").await.is_some(), "held, not deleted");
    let (_, q) = s
        .call(Method::GET, &format!("/api/v1/domains/{domain}/quarantine"), None)
        .await;
    assert_eq!(q["quarantine"].as_array().unwrap().len(), 2, "{q}");
});

both_engines!(
    a_scope_preview_is_asked_of_the_primary_agent_and_its_answer_returned,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (domain, agent) = setup(&s, json!({})).await;
        heartbeat(&s, &agent).await;
        let scope = json!({"groups": ["CN=Pilot,DC=example,DC=test"]});
        let preview_path = format!("/api/v1/domains/{domain}/scope-preview");
        let admin = s.call(Method::POST, &preview_path, Some(scope.clone()));
        let agent_side = async {
            let mut asked = Value::Null;
            for _ in 0..200 {
                let (st, state) = s.call_as(&agent.token, Method::GET, "/agent/v1/state", None).await;
                assert_eq!(st, StatusCode::OK, "{state}");
                asked = state["scope_preview"].clone();
                if !asked.is_null() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                asked["scope"]["groups"], scope["groups"],
                "the agent is asked with the proposed scope"
            );
            let answer = json!({
                "entering": {"users": 4, "groups": 1, "sample": ["CN=a,DC=example,DC=test"]},
                "leaving": {"users": 2, "groups": 0, "sample": []},
                "staying": 9,
                "missing_groups": ["CN=Gone,DC=example,DC=test"],
            });
            let path = format!("/agent/v1/scope-preview/{}", asked["id"].as_str().unwrap());
            let (st, v) = s.call_as(&agent.token, Method::POST, &path, Some(answer.clone())).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            // Answered once: a second answer has nothing pending.
            let (st, _) = s.call_as(&agent.token, Method::POST, &path, Some(answer)).await;
            assert_eq!(st, StatusCode::NOT_FOUND);
        };
        let ((st, p), ()) = tokio::join!(admin, agent_side);
        assert_eq!(st, StatusCode::OK, "{p}");
        assert_eq!(p["source"], "agent", "{p}");
        assert_eq!(p["entering"]["users"], 4, "{p}");
        assert_eq!(p["leaving"]["users"], 2, "{p}");
        assert_eq!(p["staying"], 9, "{p}");
        assert_eq!(p["missing_groups"][0], "CN=Gone,DC=example,DC=test", "{p}");
        let (_, state) = s.call_as(&agent.token, Method::GET, "/agent/v1/state", None).await;
        assert!(state["scope_preview"].is_null(), "nothing left to answer: {state}");
    }
);

both_engines!(
    a_link_for_an_object_deleted_meanwhile_is_refused_and_the_ad_object_never_comes_up,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (_domain, agent) = setup(&s, json!({})).await;
        heartbeat(&s, &agent).await;
        let (st, u) = s
            .call(Method::POST, "/scim/v2/Users", Some(json!({"userName": "brief"})))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{u}");
        let id = u["id"].as_str().unwrap().to_owned();
        // The agent is creating its AD account when the cloud deletes it.
        let (st, _) = s.call(Method::DELETE, &format!("/scim/v2/Users/{id}"), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let guid = Uuid::new_v4();
        let link = json!({"object_id": id, "kind": "user", "guid": guid,
                          "dn": "CN=brief,CN=Users,DC=example,DC=test"});
        let (st, v) = s
            .call_as(&agent.token, Method::POST, "/agent/v1/links", Some(link))
            .await;
        assert_eq!(st, StatusCode::GONE, "{v}");
        assert_eq!(v["code"], "object_deleted", "{v}");
        // The AD account the agent made, read back up, is not a new cloud user.
        let (st, r) = push(&s, &agent, None, "c1", vec![ad_user(guid, "brief")]).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert!(scim_user(&s, "brief").await.is_none(), "the deleted user stays deleted");
    }
);

both_engines!(a_base_sent_with_a_link_is_the_next_merge_base, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_domain, agent) = setup(&s, json!({"authority": "ad"})).await;
    heartbeat(&s, &agent).await;
    let guid = Uuid::new_v4();
    let (st, r) = push(
        &s,
        &agent,
        None,
        "c1",
        vec![ad_user_with(guid, "echo", "t0", "R&D", Some(1_000))],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let u = scim_user(&s, "echo").await.unwrap();
    let id = u["id"].as_str().unwrap().to_owned();
    // The cloud sets t1, the agent writes it into AD and sends AD's record
    // as it now is; then the cloud moves on to t2.
    set_title(&s, &id, "t1").await;
    let base = match ad_user_with(guid, "echo", "t1", "R&D", None) {
        AdChange::UpsertUser { record, .. } => record,
        _ => unreachable!(),
    };
    let link = json!({"object_id": id, "kind": "user", "guid": guid,
                      "dn": "CN=echo,CN=Users,DC=example,DC=test", "base": base});
    let (st, v) = s
        .call_as(&agent.token, Method::POST, "/agent/v1/links", Some(link))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    set_title(&s, &id, "t2").await;
    // The echo of the t1 write comes up from AD, stamped later than the
    // cloud's t2: it is no AD edit (AD holds the base), so even with AD as
    // the authority the cloud's newer t2 stays.
    let (st, r) = push(
        &s,
        &agent,
        Some("c1"),
        "c2",
        vec![ad_user_with(guid, "echo", "t1", "R&D", Some(i64::MAX / 2))],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let u = scim_user(&s, "echo").await.unwrap();
    assert_eq!(u["title"], "t2", "{u}");
});

both_engines!(
    the_cloud_digests_what_ad_last_held_and_resends_what_never_reached_it,
    |engine| async move {
        use ferry_proto::audit::{
            bucket_digests, bucket_of, entry_digest, group_digest, members_digest, user_digest, AuditObjects,
        };
        use ferry_proto::record::ObjectKind;
        let s = TestServer::start(engine).await;
        let (_domain, agent) = setup(&s, json!({})).await;
        heartbeat(&s, &agent).await;
        let (ann, bob, team) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let group = GroupRecord {
            name: "team".into(),
            description: Some("Ours".into()),
        };
        let team_dn = "CN=team,CN=Users,DC=example,DC=test";
        let changes = vec![
            ad_user(ann, "ann"),
            ad_user(bob, "bob"),
            AdChange::UpsertGroup {
                guid: team,
                dn: team_dn.into(),
                record: group.clone(),
            },
            AdChange::SetMembers {
                group: team,
                members: vec![ann, bob],
            },
        ];
        let (st, r) = push(&s, &agent, None, "c1", changes.clone()).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        // What the agent computes from AD, the way the cloud does.
        let own = |c: &AdChange| match c {
            AdChange::UpsertUser { dn, record, .. } => user_digest(dn, record),
            _ => unreachable!(),
        };
        let mut expected = vec![
            (ann, entry_digest(ObjectKind::User, Some(&own(&changes[0])), None)),
            (bob, entry_digest(ObjectKind::User, Some(&own(&changes[1])), None)),
            (
                team,
                entry_digest(
                    ObjectKind::Group,
                    Some(&group_digest(team_dn, &group)),
                    Some(&members_digest(&mut [bob, ann])),
                ),
            ),
        ];
        let d = audit_digests(&s, &agent).await;
        assert_eq!(d.objects, 3);
        assert_eq!(d.resent, 0, "nothing differs from what AD last held");
        assert_eq!(
            d.buckets,
            bucket_digests(&expected),
            "the cloud digests AD as the agent does"
        );
        // Per object, for the ranges asked.
        let b = bucket_of(team) as u16;
        let (st, v) = s
            .call_as(
                &agent.token,
                Method::POST,
                "/agent/v1/audit/objects",
                Some(json!({"buckets": [b]})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let objects = serde_json::from_value::<AuditObjects>(v).unwrap().objects;
        let t = objects.iter().find(|o| o.guid == team).unwrap();
        assert_eq!(t.digest.as_deref(), Some(group_digest(team_dn, &group).as_str()));
        let (st, v) = s
            .call_as(
                &agent.token,
                Method::POST,
                "/agent/v1/audit/objects",
                Some(json!({"buckets": [256]})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        // A member removed in the cloud changes the group's digest; a title set
        // in the cloud is on its way to AD, so nothing is resent…
        let u = scim_user(&s, "bob").await.unwrap();
        let bob_id = u["id"].as_str().unwrap().to_owned();
        let g = &s
            .call(
                Method::GET,
                "/scim/v2/Groups?filter=displayName%20eq%20%22team%22",
                None,
            )
            .await
            .1["Resources"][0];
        let gid = g["id"].as_str().unwrap().to_owned();
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "remove", "path": format!("members[value eq \"{bob_id}\"]")}]});
        let (st, v) = s
            .call(Method::PATCH, &format!("/scim/v2/Groups/{gid}"), Some(patch))
            .await;
        assert!(st.is_success(), "{v}");
        set_title(&s, &bob_id, "Lead").await;
        expected[2].1 = entry_digest(
            ObjectKind::Group,
            Some(&group_digest(team_dn, &group)),
            Some(&members_digest(&mut [ann])),
        );
        let d = audit_digests(&s, &agent).await;
        assert_eq!(d.buckets, bucket_digests(&expected));
        assert_eq!(d.resent, 0, "a change on its way is not resent");
        // …until the agent acknowledges the feed without AD taking the title
        // (a lost write): then the cloud sends it down again, once.
        let head = ack_all(&s, &agent).await;
        let d = audit_digests(&s, &agent).await;
        assert_eq!(d.resent, 1, "the lost title goes down again");
        let entries = feed(&s, &agent, head, 0).await.entries;
        assert!(
            entries.iter().any(|e| format!("{:?}", e.change).contains("Lead")),
            "{entries:?}"
        );
        assert_eq!(audit_digests(&s, &agent).await.resent, 0, "sent once: now on its way");
    }
);

both_engines!(
    a_new_account_awaiting_its_password_is_linked_as_agreed_not_as_a_difference,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (_domain, agent) = setup(&s, json!({})).await;
        heartbeat(&s, &agent).await;
        let id = s.create_user("fresh").await;
        // The agent created the AD account, disabled until a password is
        // set, and links it with AD's record as it reads it.
        let base = UserRecord {
            username: "fresh".into(),
            active: false,
            awaiting_password: true,
            ..Default::default()
        };
        let link = json!({"object_id": id, "kind": "user", "guid": Uuid::new_v4(),
                          "dn": "CN=fresh,CN=Users,DC=example,DC=test", "base": base});
        let (st, v) = s
            .call_as(&agent.token, Method::POST, "/agent/v1/links", Some(link))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let head = ack_all(&s, &agent).await;
        // "Disabled" only for want of a password is the cloud's "active":
        // nothing differs, nothing goes down again.
        assert_eq!(audit_digests(&s, &agent).await.resent, 0);
        assert!(feed(&s, &agent, head, 0).await.entries.is_empty());
    }
);

/// Acknowledges the whole feed, as an agent that applied it; returns its head.
async fn ack_all(s: &TestServer, agent: &Agent) -> i64 {
    let head = feed(s, agent, 0, 0).await.next_cursor;
    let (st, v) = s
        .call_as(
            &agent.token,
            Method::POST,
            "/agent/v1/ack",
            Some(json!({"cursor": head})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    head
}

async fn audit_digests(s: &TestServer, agent: &Agent) -> ferry_proto::audit::AuditDigests {
    let (st, v) = s.call_as(&agent.token, Method::POST, "/agent/v1/audit", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

both_engines!(
    cloud_deletes_over_the_threshold_are_held_back_from_ad_until_decided,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (domain, agent) = setup(&s, json!({"delete_threshold": 3, "cloud_delete_action": "disable"})).await;
        heartbeat(&s, &agent).await;
        let guids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let changes = guids
            .iter()
            .enumerate()
            .map(|(i, g)| ad_user(*g, &format!("gone{i}")))
            .collect();
        let (st, r) = push(&s, &agent, None, "c1", changes).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let head = feed(&s, &agent, 0, 0).await.next_cursor;
        // Five deleted one by one in the cloud (as a SCIM client does).
        for i in 0..5 {
            let id = scim_user(&s, &format!("gone{i}")).await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let (st, _) = s.call(Method::DELETE, &format!("/scim/v2/Users/{id}"), None).await;
            assert_eq!(st, StatusCode::NO_CONTENT);
        }
        let deleted_guids = |entries: &[ferry_proto::agent::FeedEntry]| -> Vec<Uuid> {
            entries
                .iter()
                .filter(|e| matches!(e.change, ferry_proto::agent::CloudChange::Delete { .. }))
                .flat_map(|e| e.ad_guids.values().copied())
                .collect()
        };
        let page = feed(&s, &agent, head, 0).await;
        assert_eq!(
            deleted_guids(&page.entries),
            guids[..3].to_vec(),
            "three go down, the rest wait"
        );
        let (st, held) = s
            .call(Method::GET, &format!("/api/v1/domains/{domain}/held-deletes"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{held}");
        let names: Vec<&str> = held["held"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["gone3", "gone4"], "{held}");
        // Held, the AD accounts do not come back as cloud users when AD shows them.
        let (st, r) = push(&s, &agent, Some("c1"), "c2", vec![ad_user(guids[3], "gone3")]).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert!(
            scim_user(&s, "gone3").await.is_none(),
            "a held delete stays deleted in the cloud"
        );
        // Approved: they go down to AD, named by their objectGUIDs.
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/api/v1/domains/{domain}/held-deletes/approve"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["decided"], 2);
        let page2 = feed(&s, &agent, page.next_cursor, 0).await;
        assert_eq!(deleted_guids(&page2.entries), guids[3..5].to_vec());
        // The next burst is held from its first delete past the window's count…
        for i in 5..8 {
            let id = scim_user(&s, &format!("gone{i}")).await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            s.call(Method::DELETE, &format!("/scim/v2/Users/{id}"), None).await;
        }
        let page3 = feed(&s, &agent, page2.next_cursor, 0).await;
        assert!(deleted_guids(&page3.entries).is_empty(), "{:?}", page3.entries);
        // …and rejected: nothing goes down, and AD's accounts may come back to
        // the cloud (as new users) the next time the agent shows them.
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/api/v1/domains/{domain}/held-deletes/reject"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["decided"], 3);
        assert!(deleted_guids(&feed(&s, &agent, page3.next_cursor, 0).await.entries).is_empty());
        let (st, r) = push(&s, &agent, Some("c2"), "c3", vec![ad_user(guids[6], "gone6")]).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert!(scim_user(&s, "gone6").await.is_some(), "kept in AD, back in the cloud");
        let (_, log) = s.call(Method::GET, "/api/v1/audit?limit=100", None).await;
        for action in [
            "sync.cloud_deletes_held",
            "sync.cloud_deletes_approve",
            "sync.cloud_deletes_reject",
        ] {
            assert!(log.to_string().contains(action), "{action} audited");
        }
    }
);

both_engines!(
    links_in_a_batch_are_judged_one_by_one_and_their_bases_are_the_next_merge_bases,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (_domain, agent) = setup(&s, json!({"authority": "ad"})).await;
        heartbeat(&s, &agent).await;
        let (g1, g2) = (Uuid::new_v4(), Uuid::new_v4());
        let (st, r) = push(
            &s,
            &agent,
            None,
            "c1",
            vec![
                ad_user_with(g1, "echo1", "t0", "R&D", Some(1_000)),
                ad_user_with(g2, "echo2", "t0", "R&D", Some(1_000)),
            ],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let (st, gone) = s
            .call(Method::POST, "/scim/v2/Users", Some(json!({"userName": "brief"})))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{gone}");
        let gone_id = gone["id"].as_str().unwrap().to_owned();
        let (st, _) = s.call(Method::DELETE, &format!("/scim/v2/Users/{gone_id}"), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let gone_guid = Uuid::new_v4();
        let mut links = Vec::new();
        let mut ids = Vec::new();
        for (guid, name) in [(g1, "echo1"), (g2, "echo2")] {
            let id = scim_user(&s, name).await.unwrap()["id"].as_str().unwrap().to_owned();
            set_title(&s, &id, "t1").await;
            let base = match ad_user_with(guid, name, "t1", "R&D", None) {
                AdChange::UpsertUser { record, .. } => record,
                _ => unreachable!(),
            };
            links.push(json!({"object_id": id, "kind": "user", "guid": guid,
                              "dn": format!("CN={name},CN=Users,DC=example,DC=test"), "base": base}));
            ids.push(id);
        }
        // The deleted user's link sits between the two base moves.
        links.insert(
            1,
            json!({"object_id": gone_id, "kind": "user", "guid": gone_guid,
                   "dn": "CN=brief,CN=Users,DC=example,DC=test"}),
        );
        let (st, v) = s
            .call_as(
                &agent.token,
                Method::POST,
                "/agent/v1/links/batch",
                Some(json!({"links": links})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let refused = v["refused"].as_array().unwrap();
        assert_eq!(refused.len(), 1, "{v}");
        assert_eq!(refused[0]["object_id"], gone_id.as_str(), "{v}");
        assert_eq!(refused[0]["status"], 410, "{v}");
        assert_eq!(refused[0]["code"], "object_deleted", "{v}");
        // Both bases moved: the echoes of the t1 writes, stamped after the
        // cloud's t2, are no AD edits, so t2 stays even with AD the authority.
        for id in &ids {
            set_title(&s, id, "t2").await;
        }
        let (st, r) = push(
            &s,
            &agent,
            Some("c1"),
            "c2",
            vec![
                ad_user_with(g1, "echo1", "t1", "R&D", Some(i64::MAX / 2)),
                ad_user_with(g2, "echo2", "t1", "R&D", Some(i64::MAX / 2)),
                ad_user(gone_guid, "brief"),
            ],
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        for name in ["echo1", "echo2"] {
            let u = scim_user(&s, name).await.unwrap();
            assert_eq!(u["title"], "t2", "{u}");
        }
        assert!(scim_user(&s, "brief").await.is_none(), "the deleted user stays deleted");
        // A batch is bounded.
        let too_many: Vec<_> = (0..1001).map(|_| links[0].clone()).collect();
        let (st, v) = s
            .call_as(
                &agent.token,
                Method::POST,
                "/agent/v1/links/batch",
                Some(json!({"links": too_many})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
);

both_engines!(
    links_are_looked_up_by_cloud_object_in_the_agents_domain_only,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (_domain, agent) = setup(&s, json!({})).await;
        heartbeat(&s, &agent).await;
        let guid = Uuid::new_v4();
        let (st, r) = push(&s, &agent, None, "c1", vec![ad_user(guid, "linked")]).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        let linked = scim_user(&s, "linked").await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let unlinked = s.create_user("cloudonly").await;
        // Another domain's agent: the same object is not linked there.
        let (_, d2) = s
            .call(Method::POST, "/api/v1/domains", Some(json!({"name": "two.test"})))
            .await;
        let other = enrol(&s, d2["id"].as_str().unwrap()).await;
        heartbeat(&s, &other).await;
        let ask = |token: String, ids: Vec<String>| {
            let s = &s;
            async move {
                s.call_as(
                    &token,
                    Method::POST,
                    "/agent/v1/links/of",
                    Some(json!({"objects": ids})),
                )
                .await
            }
        };
        let ids = vec![linked.clone(), unlinked, Uuid::new_v4().to_string()];
        let (st, v) = ask(agent.token.clone(), ids.clone()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let got = v["links"].as_array().unwrap();
        assert_eq!(got.len(), 1, "only the linked one: {v}");
        assert_eq!(got[0]["object_id"], linked.as_str());
        assert_eq!(got[0]["guid"], guid.to_string());
        let (st, v) = ask(other.token.clone(), ids).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert!(
            v["links"].as_array().unwrap().is_empty(),
            "another domain's links stay its own: {v}"
        );
        // Too many at once is a clear 400.
        let many: Vec<String> = (0..1001).map(|_| Uuid::new_v4().to_string()).collect();
        let (st, v) = ask(agent.token.clone(), many).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
);

both_engines!(links_come_by_page_in_objectguid_order_each_once, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_domain, agent) = setup(&s, json!({"authority": "ad"})).await;
    heartbeat(&s, &agent).await;
    let guids: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    let changes = guids
        .iter()
        .enumerate()
        .map(|(i, g)| ad_user(*g, &format!("paged{i}")))
        .collect();
    let (st, r) = push(&s, &agent, None, "c1", changes).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let get = |path: String| {
        let (s, token) = (&s, agent.token.clone());
        async move { s.call_as(&token, Method::GET, &path, None).await }
    };
    // Without a limit: everything, as before paging.
    let (st, all) = get("/agent/v1/links".into()).await;
    assert_eq!(st, StatusCode::OK, "{all}");
    assert_eq!(all["links"].as_array().unwrap().len(), 7);
    assert!(all.get("next").is_none(), "{all}");
    // By pages of 3: 3, 3, 1, each once, in objectGUID order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/agent/v1/links?limit=3&after={a}"),
            None => "/agent/v1/links?limit=3".into(),
        };
        let (st, page) = get(path).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        pages += 1;
        for l in page["links"].as_array().unwrap() {
            seen.push(l["guid"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut want = guids.clone();
    want.sort_by_key(|g| g.to_string());
    assert_eq!(seen, want, "every link once, in order");
    // A limit out of range is a clear 400.
    for bad in [
        "/agent/v1/links?limit=0",
        "/agent/v1/links?limit=20001",
        "/agent/v1/links?after=nope",
    ] {
        let (st, body) = get(bad.into()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
});

// A big membership change in the cloud is a few feed entries of up to 500
// members each, and a feed page names at most 5,000 members: the agent
// asking for the grouped form gets them so, with every member's objectGUID
// in its domain; an agent of before (no `members=grouped`) gets the same
// changes one entry per member, with the entry's sequence number.
both_engines!(
    a_big_membership_change_is_few_feed_entries_and_pages_stay_small,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let (_domain, a) = setup(&s, json!({})).await;
        heartbeat(&s, &a).await;
        const N: usize = 5_100;
        let group_guid = Uuid::new_v4();
        let users: Vec<(Uuid, String)> = (0..N).map(|i| (Uuid::new_v4(), format!("m{i:05}"))).collect();
        let mut cookie: Option<String> = None;
        let mut changes = vec![AdChange::UpsertGroup {
            guid: group_guid,
            dn: "CN=Big,CN=Users,DC=example,DC=test".into(),
            record: GroupRecord {
                name: "Big".into(),
                description: None,
            },
        }];
        for (n, chunk) in users.chunks(500).enumerate() {
            changes.extend(chunk.iter().map(|(g, name)| ad_user(*g, name)));
            let to = format!("c{n}");
            let (st, v) = push(&s, &a, cookie.as_deref(), &to, std::mem::take(&mut changes)).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            cookie = Some(to);
        }
        let head = feed(&s, &a, 0, 0).await.next_cursor;
        // The cloud's ids of the AD objects, as the agent would resolve them.
        let (_, g) = s
            .call(Method::GET, "/scim/v2/Groups?filter=displayName%20eq%20%22Big%22", None)
            .await;
        let gid: Uuid = g["Resources"][0]["id"].as_str().unwrap().parse().unwrap();
        let mut ids = std::collections::BTreeMap::new();
        let mut start = 1;
        loop {
            let (_, page) = s
                .call(
                    Method::GET,
                    &format!("/scim/v2/Users?startIndex={start}&count=1000&attributes=userName"),
                    None,
                )
                .await;
            let rs = page["Resources"].as_array().unwrap().clone();
            if rs.is_empty() {
                break;
            }
            for r in &rs {
                let id: Uuid = r["id"].as_str().unwrap().parse().unwrap();
                ids.insert(r["userName"].as_str().unwrap().to_owned(), id);
            }
            start += rs.len();
        }
        let guid_of: std::collections::BTreeMap<Uuid, Uuid> =
            users.iter().map(|(guid, name)| (ids[name], *guid)).collect();
        assert_eq!(guid_of.len(), N);

        // The cloud adds all of them to the group, in one PATCH.
        let value: Vec<Value> = guid_of.keys().map(|id| json!({"value": id})).collect();
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "add", "path": "members", "value": value}]});
        let (st, v) = s
            .call(Method::PATCH, &format!("/scim/v2/Groups/{gid}"), Some(patch))
            .await;
        assert!(st == StatusCode::OK || st == StatusCode::NO_CONTENT, "{st} {v}");

        // Grouped: pages of at most 5,000 members, each entry at most 500.
        let mut got = Vec::new();
        let (mut cursor, mut pages) = (head, 0);
        loop {
            let (st, v) = s
                .call_as(
                    &a.token,
                    Method::GET,
                    &format!("/agent/v1/feed?after={cursor}&wait=0&members=grouped"),
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            let f: FeedResponse = serde_json::from_value(v).unwrap();
            if f.entries.is_empty() {
                break;
            }
            pages += 1;
            let mut on_page = 0;
            for e in &f.entries {
                let CloudChange::AddMembers { group, members } = &e.change else {
                    panic!("grouped membership entries only: {:?}", e.change);
                };
                assert_eq!(*group, gid);
                assert!(members.len() <= FEED_MEMBERS_MAX, "{}", members.len());
                assert_eq!(e.ad_guids.get(&gid), Some(&group_guid));
                for m in members {
                    assert_eq!(e.ad_guids.get(&m.id), Some(&guid_of[&m.id]), "each member's objectGUID");
                    got.push(m.id);
                }
                on_page += members.len();
            }
            assert!(on_page <= 5_000, "a page names at most 5,000 members: {on_page}");
            assert_eq!(f.next_cursor, f.entries.last().unwrap().seq);
            cursor = f.next_cursor;
        }
        assert_eq!(pages, 2, "5,100 members: two pages");
        let mut want: Vec<Uuid> = guid_of.keys().copied().collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "every member once");

        // An agent of before: one entry per member, in entries of the same seqs.
        let mut got = Vec::new();
        let mut cursor = head;
        loop {
            let f = feed(&s, &a, cursor, 0).await;
            if f.entries.is_empty() {
                break;
            }
            for e in &f.entries {
                let CloudChange::AddMember { group, member, .. } = &e.change else {
                    panic!("one member an entry: {:?}", e.change);
                };
                assert_eq!(*group, gid);
                let want: std::collections::BTreeMap<Uuid, Uuid> =
                    [(gid, group_guid), (*member, guid_of[member])].into_iter().collect();
                assert_eq!(e.ad_guids, want);
                assert!(e.seq > head && e.seq <= f.next_cursor);
                got.push(*member);
            }
            cursor = f.next_cursor;
        }
        got.sort();
        assert_eq!(got, want, "every member once, one an entry");
    }
);
