//! SCIM 2.0 over real HTTP, on SQLite and PostgreSQL, plus the external
//! conformance suite (`scim2 test` from scim2-cli).
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::{Engine, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

async fn create_user(s: &TestServer, body: Value) -> Value {
    let (st, v) = s.call(Method::POST, "/scim/v2/Users", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v
}

async fn create_group(s: &TestServer, body: Value) -> Value {
    let (st, v) = s.call(Method::POST, "/scim/v2/Groups", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v
}

fn scim_error(v: &Value, status: u16, scim_type: Option<&str>) {
    assert_eq!(v["schemas"][0], ERROR_SCHEMA, "{v}");
    assert_eq!(v["status"], status.to_string(), "{v}");
    assert_eq!(v["scimType"].as_str(), scim_type, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
}

/// A cloud write context for the test org (to seed many objects directly).
fn cloud_ctx(s: &TestServer) -> ferry_cloud::directory::WriteCtx {
    ferry_cloud::directory::WriteCtx {
        org_id: s.org.id,
        origin: "cloud".into(),
        actor: "test".into(),
        now: 1000,
    }
}

fn new_user(name: &str, doc: Value) -> ferry_cloud::store::NewUser {
    ferry_cloud::store::NewUser {
        username: name.into(),
        external_id: None,
        active: true,
        doc,
        password_hash: None,
    }
}

async fn feed_head(s: &TestServer) -> i64 {
    let mut tx = s.store.begin().await.unwrap();
    tx.feed_head(s.org.id).await.unwrap()
}

both_engines!(create_read_and_errors, |engine| async move {
    let s = TestServer::start(engine).await;
    let resp = s
        .http
        .post(format!("{}/scim/v2/Users", s.base))
        .bearer_auth(&s.org.token)
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Smith, John",
                     "name": {"givenName": "John", "familyName": "Smith"}, "displayName": "Jöhn Smïth",
                     ENTERPRISE: {"department": "R&D"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["content-type"], "application/scim+json");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let u: Value = resp.json().await.unwrap();
    assert_eq!(location, u["meta"]["location"]);
    assert_eq!(etag, "W/\"1\"");
    assert_eq!(u["displayName"], "Jöhn Smïth");
    assert_eq!(
        u["schemas"],
        json!(["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE])
    );
    let id = u["id"].as_str().unwrap();
    let (st, got) = s.call(Method::GET, &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got, u);

    let (st, v) = s
        .call(Method::POST, "/scim/v2/Users", Some(json!({"userName": "SMITH, JOHN"})))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    scim_error(&v, 409, Some("uniqueness"));
    let (st, v) = s
        .call(Method::POST, "/scim/v2/Users", Some(json!({"displayName": "no name"})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    scim_error(&v, 400, Some("invalidValue"));
    let (st, v) = s
        .call(
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "x", "favouriteColour": "red"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("favouriteColour"));
    let resp = s
        .http
        .post(format!("{}/scim/v2/Users", s.base))
        .bearer_auth(&s.org.token)
        .body("{\"userName\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    scim_error(&resp.json().await.unwrap(), 400, Some("invalidSyntax"));
    for path in [
        "/scim/v2/Users/00000000-0000-0000-0000-000000000000",
        "/scim/v2/Users/nope",
        "/scim/v2/Nothing",
    ] {
        let (st, v) = s.call(Method::GET, path, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
        scim_error(&v, 404, None);
    }
    let (st, v) = s.call_as("wrong", Method::GET, "/scim/v2/Users", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["schemas"][0], ERROR_SCHEMA);
    // Nothing was written by the refused requests.
    let (_, list) = s.call(Method::GET, "/scim/v2/Users", None).await;
    assert_eq!(list["totalResults"], 1);
});

both_engines!(filters_paging_and_projection, |engine| async move {
    let s = TestServer::start(engine).await;
    for (u, given, dept, active, email) in [
        ("alice", "Alice", "Sales", true, "alice@example.com"),
        ("bob", "Bob", "R&D", true, "bob@example.org"),
        ("carol", "Carol", "R&D", false, "carol@example.com"),
        ("dave", "Dave", "Ops", true, "dave@example.com"),
    ] {
        create_user(
            &s,
            json!({"userName": u, "name": {"givenName": given}, "active": active, "externalId": format!("ext-{u}"),
                   "emails": [{"value": email, "type": "work", "primary": true}], ENTERPRISE: {"department": dept}}),
        )
        .await;
    }
    let names = |v: &Value| -> Vec<String> {
        v["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["userName"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    for (filter, want) in [
        (r#"userName eq "BOB""#, vec!["bob"]),
        (r#"userName sw "c""#, vec!["carol"]),
        (r#"name.givenName co "a""#, vec!["alice", "carol", "dave"]),
        (r#"emails.value ew "example.org""#, vec!["bob"]),
        (r#"emails[type eq "work" and value sw "dave"]"#, vec!["dave"]),
        (r#"active eq false"#, vec!["carol"]),
        (
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "r&d" and active eq true"#,
            vec!["bob"],
        ),
        (r#"userName eq "alice" or userName eq "dave""#, vec!["alice", "dave"]),
        (r#"not (active eq true)"#, vec!["carol"]),
        (r#"externalId eq "ext-dave""#, vec!["dave"]),
        (r#"externalId eq "EXT-DAVE""#, vec![]),
        (r#"title pr"#, vec![]),
    ] {
        let (st, v) = s
            .http
            .get(format!("{}/scim/v2/Users", s.base))
            .bearer_auth(&s.org.token)
            .query(&[("filter", filter)])
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        assert_eq!(st, StatusCode::OK, "{filter}");
        let v: Value = v.json().await.unwrap();
        assert_eq!(names(&v), want, "{filter}");
        assert_eq!(v["totalResults"], want.len(), "{filter}");
    }
    let (st, v) = s
        .call(Method::GET, "/scim/v2/Users?filter=userName%20zz%20%22x%22", None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    scim_error(&v, 400, Some("invalidFilter"));

    let (_, v) = s.call(Method::GET, "/scim/v2/Users?startIndex=2&count=2", None).await;
    assert_eq!(
        (
            v["totalResults"].as_i64(),
            v["startIndex"].as_i64(),
            v["itemsPerPage"].as_i64()
        ),
        (Some(4), Some(2), Some(2))
    );
    assert_eq!(names(&v), ["bob", "carol"]);
    let (_, v) = s
        .call(
            Method::GET,
            "/scim/v2/Users?filter=active%20eq%20true&startIndex=3&count=5",
            None,
        )
        .await;
    assert_eq!(v["totalResults"], 3);
    assert_eq!(names(&v), ["dave"]);

    let (_, v) = s
        .call(
            Method::GET,
            "/scim/v2/Users?filter=userName%20eq%20%22bob%22&attributes=name.givenName",
            None,
        )
        .await;
    let r = &v["Resources"][0];
    assert_eq!(r["name"], json!({"givenName": "Bob"}));
    assert!(r.get("userName").is_none() && r.get("emails").is_none());
    assert!(r["id"].is_string(), "id is always returned");
    let (_, v) = s
        .call(Method::GET, "/scim/v2/Users?excludedAttributes=emails,id", None)
        .await;
    assert!(v["Resources"][0].get("emails").is_none());
    assert!(v["Resources"][0]["id"].is_string());

    let (st, v) = s
        .call(
            Method::POST,
            "/scim/v2/Users/.search",
            Some(json!({"filter": "userName sw \"a\"", "attributes": ["userName"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(names(&v), ["alice"]);
});

both_engines!(username_searches_are_paged_by_the_store, |engine| async move {
    let s = TestServer::start(engine).await;
    for name in ["alpha", "Alphabet", "beta_1", "betax1", "gamma%x", "delta"] {
        create_user(&s, json!({"userName": name})).await;
    }
    let names = |v: &Value| -> Vec<String> {
        v["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["userName"].as_str().unwrap().to_owned())
            .collect()
    };
    for (filter, expect) in [
        ("userName sw \"ALP\"", vec!["alpha", "Alphabet"]),
        ("userName co \"a_1\"", vec!["beta_1"]),
        ("userName co \"%\"", vec!["gamma%x"]),
        ("userName ew \"TA\"", vec!["delta"]),
        ("userName co \"zzz\"", vec![]),
    ] {
        let q: String = filter
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (st, v) = s.call(Method::GET, &format!("/scim/v2/Users?filter={q}"), None).await;
        assert_eq!(st, StatusCode::OK, "{filter}: {v}");
        assert_eq!(names(&v), expect, "{filter}");
        assert_eq!(v["totalResults"], expect.len(), "{filter}");
    }
    // Paged: the total is the whole match, the page is one.
    let (_, v) = s
        .call(
            Method::GET,
            "/scim/v2/Users?filter=userName%20sw%20%22a%22&startIndex=2&count=1",
            None,
        )
        .await;
    assert_eq!(
        (v["totalResults"].as_u64(), names(&v)),
        (Some(2), vec!["Alphabet".to_owned()])
    );
});

both_engines!(groups_membership_and_nesting, |engine| async move {
    let s = TestServer::start(engine).await;
    let ann = create_user(&s, json!({"userName": "ann"})).await;
    let ben = create_user(&s, json!({"userName": "ben"})).await;
    let (ann_id, ben_id) = (ann["id"].as_str().unwrap(), ben["id"].as_str().unwrap());
    let inner = create_group(&s, json!({"displayName": "Engineers", "members": [{"value": ann_id}]})).await;
    let inner_id = inner["id"].as_str().unwrap();
    assert_eq!(inner["members"][0]["type"], "User");
    assert_eq!(inner["members"][0]["$ref"], ann["meta"]["location"]);
    let outer = create_group(
        &s,
        json!({"displayName": "Staff", "members": [{"value": inner_id, "type": "Group"}]}),
    )
    .await;
    let outer_id = outer["id"].as_str().unwrap();

    let head = feed_head(&s).await;
    let patch = json!({"schemas": [PATCH_OP], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": ben_id, "display": "Ben"}]},
        {"op": "remove", "path": format!("members[value eq \"{ann_id}\"]")},
    ]});
    let (st, g) = s
        .call(Method::PATCH, &format!("/scim/v2/Groups/{inner_id}"), Some(patch))
        .await;
    assert_eq!(st, StatusCode::OK, "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 1);
    assert_eq!(g["members"][0]["value"], ben_id);
    let mut tx = s.store.begin().await.unwrap();
    let entries = tx.read_feed(s.org.id, head, 10).await.unwrap();
    drop(tx);
    let kinds: Vec<String> = entries
        .iter()
        .map(|e| {
            serde_json::to_value(&e.change).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["remove_members", "add_members"]);

    // A user's groups are its direct groups.
    let (_, b) = s.call(Method::GET, &format!("/scim/v2/Users/{ben_id}"), None).await;
    assert_eq!(
        b["groups"],
        json!([{"value": inner_id, "$ref": inner["meta"]["location"], "display": "Engineers", "type": "direct"}])
    );
    let (_, o) = s.call(Method::GET, &format!("/scim/v2/Groups/{outer_id}"), None).await;
    assert_eq!(o["members"][0]["type"], "Group");

    // Bad members are refused and change nothing.
    let other = s.other_org("Globex").await;
    let (_, stranger) = s
        .call_as(
            &other.token,
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "eve"})),
        )
        .await;
    for (member, needle) in [
        (
            json!({"value": stranger["id"]}),
            "not a user or group of this organization",
        ),
        (json!({"value": "not-an-id"}), "not the id"),
        (json!({"value": ann_id, "type": "Group"}), "is a user"),
        (json!({"value": outer_id}), "member of itself"),
    ] {
        let patch = json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [member]}]});
        let (st, v) = s
            .call(Method::PATCH, &format!("/scim/v2/Groups/{outer_id}"), Some(patch))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(needle), "{v}");
    }
    let (_, o) = s.call(Method::GET, &format!("/scim/v2/Groups/{outer_id}"), None).await;
    assert_eq!(o["members"].as_array().unwrap().len(), 1);

    let (st, v) = s
        .call(
            Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "engineers"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    scim_error(&v, 409, Some("uniqueness"));
    let (_, v) = s
        .call(
            Method::GET,
            "/scim/v2/Groups?filter=displayName%20eq%20%22staff%22",
            None,
        )
        .await;
    assert_eq!(v["totalResults"], 1);

    let (st, _) = s
        .call(Method::DELETE, &format!("/scim/v2/Groups/{inner_id}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, o) = s.call(Method::GET, &format!("/scim/v2/Groups/{outer_id}"), None).await;
    assert!(o.get("members").is_none(), "a deleted group leaves its parents");
});

both_engines!(suspension_passwords_etags_and_no_op_writes, |engine| async move {
    let s = TestServer::start(engine).await;
    let u = create_user(
        &s,
        json!({"userName": "ann", "password": "Secret-Pa55", "title": "Eng"}),
    )
    .await;
    let id = u["id"].as_str().unwrap();
    assert!(u.get("password").is_none(), "never returned");
    let mut tx = s.store.begin().await.unwrap();
    let row = tx.get_user(s.org.id, id.parse().unwrap()).await.unwrap().unwrap();
    assert!(row.has_password);
    assert!(!row.doc.to_string().contains("Secret-Pa55"));
    let feed = tx.read_feed(s.org.id, 0, 10).await.unwrap();
    drop(tx);
    assert!(feed
        .iter()
        .any(|e| matches!(e.change, ferry_proto::agent::CloudChange::PasswordSet { .. })));
    assert!(
        !format!("{feed:?}").contains("Secret-Pa55"),
        "the feed carries no password"
    );

    // Suspend with the "False" string Entra ID sends.
    let patch = json!({"schemas": [PATCH_OP], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let (st, v) = s
        .call(Method::PATCH, &format!("/scim/v2/Users/{id}"), Some(patch))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["active"], false);
    let (_, a) = s.call(Method::GET, "/api/v1/audit?limit=1", None).await;
    assert_eq!(a["entries"][0]["action"], "user.suspend");

    // PUT of the same state writes nothing.
    let head = feed_head(&s).await;
    let (_, audit_before) = s.call(Method::GET, "/api/v1/audit", None).await;
    let (st, v) = s
        .call(
            Method::PUT,
            &format!("/scim/v2/Users/{id}"),
            Some(json!({"userName": "ann", "title": "Eng", "active": false})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(feed_head(&s).await, head);
    let (_, audit_after) = s.call(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(audit_before, audit_after);

    // If-Match with a stale version is refused.
    let resp = s
        .http
        .put(format!("{}/scim/v2/Users/{id}", s.base))
        .bearer_auth(&s.org.token)
        .header("if-match", "W/\"1\"")
        .json(&json!({"userName": "ann", "title": "Boss"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let (_, v) = s.call(Method::GET, &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(v["title"], "Eng");

    // Another org cannot see or touch the user.
    let other = s.other_org("Globex").await;
    for m in [Method::GET, Method::DELETE] {
        let (st, v) = s.call_as(&other.token, m, &format!("/scim/v2/Users/{id}"), None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        scim_error(&v, 404, None);
    }
    let (_, v) = s.call_as(&other.token, Method::GET, "/scim/v2/Users", None).await;
    assert_eq!(v["totalResults"], 0);
    let (st, _) = s.call(Method::DELETE, &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.call(Method::GET, &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
});

both_engines!(discovery_documents, |engine| async move {
    let s = TestServer::start(engine).await;
    let (st, v) = s.call_as("", Method::GET, "/scim/v2/ServiceProviderConfig", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["patch"]["supported"], true);
    assert_eq!(v["filter"]["maxResults"], 1000);
    let (_, v) = s.call_as("", Method::GET, "/scim/v2/ResourceTypes", None).await;
    assert_eq!(v["totalResults"], 2);
    let (_, v) = s
        .call_as(
            "",
            Method::GET,
            "/scim/v2/Schemas/urn:ietf:params:scim:schemas:core:2.0:User",
            None,
        )
        .await;
    let password = v["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "password")
        .unwrap();
    assert_eq!(
        (password["mutability"].as_str(), password["returned"].as_str()),
        (Some("writeOnly"), Some("never"))
    );
    let (st, _) = s
        .call(Method::POST, "/scim/v2/ServiceProviderConfig", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
});

/// The external SCIM conformance suite (scim2-tester through scim2-cli),
/// installed by scripts/test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_scim2_suite_passes() {
    let s = TestServer::start(Engine::Sqlite).await;
    let scim2 = std::env::var("FERRY_SCIM2_BIN").unwrap_or_else(|_| "scim2".into());
    let out = tokio::process::Command::new(&scim2)
        .args([
            "--url",
            &format!("{}/scim/v2", s.base),
            "-h",
            &format!("Authorization: Bearer {}", s.org.token),
            "test",
        ])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run {scim2:?} ({e}): install it with `pip install scim2-cli` (scripts/test does)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("SKIPPED"))
        .collect();
    assert!(
        out.status.success(),
        "scim2 test failed: {failures:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.matches("SUCCESS").count() > 50,
        "the suite ran its checks:\n{stdout}"
    );
}

both_engines!(
    a_patch_sets_a_password_hashed_outside_the_transaction,
    |engine| async move {
        let s = TestServer::start(engine).await;
        let u = create_user(&s, json!({"userName": "pat"})).await;
        let id = u["id"].as_str().unwrap().to_owned();
        let has_password = || async {
            let mut tx = s.store.begin().await.unwrap();
            let row = tx.get_user(s.org.id, id.parse().unwrap()).await.unwrap().unwrap();
            (row.has_password, row.version)
        };
        assert_eq!(has_password().await, (false, 1));
        for (i, op) in [
            json!({"op": "replace", "path": "password", "value": "Pat-Pa55-one"}),
            json!({"op": "replace", "value": {"password": "Pat-Pa55-two", "title": "Eng"}}),
        ]
        .into_iter()
        .enumerate()
        {
            let (st, v) = s
                .call(
                    Method::PATCH,
                    &format!("/scim/v2/Users/{id}"),
                    Some(json!({"schemas": [PATCH_OP], "Operations": [op]})),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            assert!(v.get("password").is_none(), "never returned");
            assert_eq!(has_password().await, (true, 2 + i as i64));
        }
        let mut tx = s.store.begin().await.unwrap();
        let feed = tx.read_feed(s.org.id, 0, 100).await.unwrap();
        let sets = feed
            .iter()
            .filter(|e| matches!(e.change, ferry_proto::agent::CloudChange::PasswordSet { .. }))
            .count();
        assert_eq!(sets, 2, "one password change each");
        assert!(!format!("{feed:?}").contains("Pat-Pa55"));
    }
);

// Filters the store cannot answer walk the org in batches (200 a
// transaction): the count is exact and pages are cut right across batch
// boundaries, for Users, Groups and `/.search` over both.
both_engines!(unindexed_filters_are_paged_across_batches, |engine| async move {
    use ferry_cloud::directory;
    use ferry_cloud::store::NewGroup;
    let s = TestServer::start(engine).await;
    let ctx = cloud_ctx(&s);
    let mut tx = s.store.begin().await.unwrap();
    for i in 0..450 {
        let user = new_user(
            &format!("u{i:04}"),
            json!({"title": if i % 3 == 0 { "Three" } else { "Other" }}),
        );
        directory::create_user(&mut tx, &ctx, user, None).await.unwrap();
    }
    for i in 0..250 {
        let group = NewGroup {
            name: format!("g{i:04}"),
            external_id: Some(if i % 5 == 0 { "five".into() } else { "other".into() }),
            doc: json!({}),
        };
        directory::create_group(&mut tx, &ctx, group, &[]).await.unwrap();
    }
    tx.commit().await.unwrap();
    let names = |v: &Value, key: &str| -> Vec<String> {
        v["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].as_str().unwrap().to_owned())
            .collect()
    };
    // 150 users have title "Three" (u0000, u0003 … u0447): the 60th to 69th.
    let (st, v) = s
        .call(
            Method::GET,
            "/scim/v2/Users?filter=title%20eq%20%22three%22&startIndex=60&count=10",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["totalResults"], 150);
    let want: Vec<String> = (59..69).map(|k| format!("u{:04}", k * 3)).collect();
    assert_eq!(names(&v, "userName"), want);
    // 50 groups have externalId "five".
    let (_, v) = s
        .call(
            Method::POST,
            "/scim/v2/Groups/.search",
            Some(json!({"filter": "externalId eq \"five\" and displayName pr", "startIndex": 41, "count": 20})),
        )
        .await;
    assert_eq!(v["totalResults"], 50, "{v}");
    let want: Vec<String> = (40..50).map(|k| format!("g{:04}", k * 5)).collect();
    assert_eq!(names(&v, "displayName"), want);
    // Over both: 450 users then 250 groups match `id pr`; a page spanning the two.
    let (_, v) = s
        .call(
            Method::POST,
            "/scim/v2/.search",
            Some(json!({"filter": "id pr", "startIndex": 446, "count": 10, "attributes": ["id"]})),
        )
        .await;
    assert_eq!(v["totalResults"], 700, "{v}");
    assert_eq!(v["itemsPerPage"], 10);
    let ids: Vec<&str> = v["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    // The same page without a filter (the store's own paging) agrees.
    let (_, all) = s
        .call(
            Method::POST,
            "/scim/v2/.search",
            Some(json!({"startIndex": 446, "count": 10, "attributes": ["id"]})),
        )
        .await;
    assert_eq!(all["totalResults"], 700, "{all}");
    assert_eq!(all["Resources"], v["Resources"]);
});

// Members are checked in a few queries (500 ids each), whatever their
// number: 1,200 users and a nested group in one request, and an unknown id
// among them is named.
both_engines!(a_big_group_is_checked_in_batches, |engine| async move {
    use ferry_cloud::directory;
    let s = TestServer::start(engine).await;
    let ctx = cloud_ctx(&s);
    let mut tx = s.store.begin().await.unwrap();
    let mut members = Vec::new();
    for i in 0..1200 {
        let user = new_user(&format!("m{i:04}"), json!({}));
        let row = directory::create_user(&mut tx, &ctx, user, None).await.unwrap();
        members.push(json!({"value": row.id.to_string(), "type": "User"}));
    }
    tx.commit().await.unwrap();
    let inner = create_group(&s, json!({"displayName": "inner"})).await;
    members.push(json!({"value": inner["id"], "type": "Group"}));
    let unknown = "00000000-0000-4000-8000-000000000001";
    let mut with_unknown = members.clone();
    with_unknown.insert(700, json!({"value": unknown}));
    let (st, v) = s
        .call(
            Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "big", "members": with_unknown})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["detail"].as_str().unwrap().contains(unknown), "{v}");
    let mut wrong_type = members.clone();
    wrong_type[3]["type"] = json!("Group");
    let (st, v) = s
        .call(
            Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "big", "members": wrong_type})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let g = create_group(&s, json!({"displayName": "big", "members": members})).await;
    assert_eq!(g["members"].as_array().unwrap().len(), 1201);
});

// `userName eq` or `externalId eq` as one term of an `and` narrows the
// candidates through the index; the rest of the filter still decides.
both_engines!(an_indexed_term_of_an_and_narrows_the_search, |engine| async move {
    let s = TestServer::start(engine).await;
    create_user(&s, json!({"userName": "ann", "externalId": "x1", "title": "Eng"})).await;
    create_user(&s, json!({"userName": "bob", "externalId": "x1", "title": "Ops"})).await;
    for (filter, want) in [
        (r#"userName eq "ANN" and title eq "eng""#, vec!["ann"]),
        (r#"title eq "ops" and userName eq "ann""#, vec![]),
        (r#"externalId eq "x1" and title pr"#, vec!["ann", "bob"]),
        (
            r#"externalId eq "x1" and (title eq "ops" or title eq "none")"#,
            vec!["bob"],
        ),
        (r#"externalId eq "x1" or userName eq "zed""#, vec!["ann", "bob"]),
    ] {
        let (st, v) = s
            .call(Method::POST, "/scim/v2/Users/.search", Some(json!({"filter": filter})))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let got: Vec<&str> = v["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["userName"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{filter}");
        assert_eq!(v["totalResults"], want.len(), "{filter}");
    }
});
