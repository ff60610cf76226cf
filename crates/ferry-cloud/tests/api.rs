//! The admin REST API over real HTTP, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::{Engine, TestServer};
use ferry_cloud::api::OPENAPI;
use ferry_cloud::clock::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const DAY_MS: i64 = 24 * 3600 * 1000;

async fn new_domain(s: &TestServer) -> String {
    let (st, d) = s
        .call(
            Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "example.test", "netbios_name": "EXAMPLE"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    d["id"].as_str().unwrap().to_owned()
}

fn public_key() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

async fn register(s: &TestServer, key: &str) -> (StatusCode, Value) {
    let body =
        json!({"connect_key": key, "hostname": "dc1.example.test", "version": "0.1.0", "public_key": public_key()});
    s.call_as("", Method::POST, "/agent/v1/register", Some(body)).await
}

both_engines!(health_and_unknown_paths, |engine| async move {
    let s = TestServer::start(engine).await;
    let (st, v) = s.call_as("", Method::GET, "/healthz", None).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (st, v) = s.call(Method::GET, "/api/v1/nope", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found");
});

both_engines!(authentication_is_required_and_checked, |engine| async move {
    let s = TestServer::start(engine).await;
    let (st, v) = s.call_as("", Method::GET, "/api/v1/domains", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "unauthorized");
    assert!(v["message"].as_str().unwrap().contains("Bearer"));
    let (st, v) = s.call_as("fct_wrong", Method::GET, "/api/v1/domains", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
});

both_engines!(domain_lifecycle_and_validation, |engine| async move {
    let s = TestServer::start(engine).await;
    let (st, d) = s
        .call(
            Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "Example.Test", "netbios_name": "example"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    assert_eq!(d["name"], "example.test");
    assert_eq!(d["netbios_name"], "EXAMPLE");
    assert_eq!(d["root_dn"], "DC=example,DC=test");
    assert_eq!(d["user_ou"], "CN=Users,DC=example,DC=test");
    assert_eq!(d["policies"]["authority"], "latest");
    assert_eq!(d["policies"]["delete_threshold"], 500);
    assert_eq!(d["policies"]["cloud_delete_action"], "disable");
    let id = d["id"].as_str().unwrap();

    let (st, v) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({"name": "example.test"})))
        .await;
    assert_eq!((st, v["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));

    for (body, needle) in [
        (json!({"name": "not a domain"}), "not a DNS domain name"),
        (
            json!({"name": "corp.test", "netbios_name": "WAYTOOLONGNETBIOSNAME"}),
            "netbios_name",
        ),
        (
            json!({"name": "corp.test", "user_ou": "OU=Staff,DC=other,DC=test"}),
            "must be a DN inside DC=corp,DC=test",
        ),
        (
            json!({"name": "corp.test", "policies": {"delete_threshold": 0}}),
            "delete_threshold",
        ),
        (
            json!({"name": "corp.test", "policies": {"authority": "nobody"}}),
            "unknown variant",
        ),
        (json!({"name": "corp.test", "colour": "blue"}), "unknown field"),
        (json!({}), "missing field `name`"),
    ] {
        let (st, v) = s.call(Method::POST, "/api/v1/domains", Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(v["message"].as_str().unwrap().contains(needle), "{body} → {v}");
    }
    let resp = s
        .http
        .post(format!("{}/api/v1/domains", s.base))
        .bearer_auth(&s.org.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "invalid_request");

    let (st, v) = s.call(Method::GET, "/api/v1/domains", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["domains"].as_array().unwrap().len(),
        1,
        "failed creates created nothing"
    );

    let (st, v) = s
        .call(
            Method::PATCH,
            &format!("/api/v1/domains/{id}"),
            Some(json!({"user_ou": "OU=Staff,DC=example,DC=test", "policies": {"authority": "ad", "delete_threshold": 50}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["user_ou"], "OU=Staff,DC=example,DC=test");
    assert_eq!(v["policies"]["authority"], "ad");
    assert_eq!(v["policies"]["delete_threshold"], 50);
    assert_eq!(
        v["policies"]["cloud_delete_action"], "disable",
        "untouched policies keep their value"
    );
    let (st, _) = s
        .call(
            Method::PATCH,
            &format!("/api/v1/domains/{id}"),
            Some(json!({"user_ou": "nonsense"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (_, v) = s.call(Method::GET, &format!("/api/v1/domains/{id}"), None).await;
    assert_eq!(
        v["user_ou"], "OU=Staff,DC=example,DC=test",
        "a refused PATCH changes nothing"
    );

    for path in [
        "/api/v1/domains/00000000-0000-0000-0000-000000000000",
        "/api/v1/domains/not-an-id",
    ] {
        let (st, v) = s.call(Method::GET, path, None).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}"
        );
    }
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/domains/{id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.call(Method::GET, &format!("/api/v1/domains/{id}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
});

both_engines!(another_orgs_objects_are_not_found, |engine| async move {
    let s = TestServer::start(engine).await;
    let id = new_domain(&s).await;
    let other = s.other_org("Globex").await;
    for (m, path, body) in [
        (Method::GET, format!("/api/v1/domains/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/domains/{id}"),
            Some(json!({"netbios_name": "X"})),
        ),
        (Method::DELETE, format!("/api/v1/domains/{id}"), None),
        (Method::POST, format!("/api/v1/domains/{id}/connect-keys"), None),
        (Method::GET, format!("/api/v1/domains/{id}/agents"), None),
    ] {
        let (st, v) = s.call_as(&other.token, m.clone(), &path, body).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{m} {path}: {v}");
    }
    let (_, v) = s.call_as(&other.token, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(v["domains"], json!([]));
    let (st, _) = s.call(Method::GET, &format!("/api/v1/domains/{id}"), None).await;
    assert_eq!(st, StatusCode::OK, "still there for its owner");
});

both_engines!(connect_keys_register_agents_once, |engine| async move {
    let s = TestServer::start(engine).await;
    let id = new_domain(&s).await;
    let (st, k) = s
        .call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    assert_eq!(st, StatusCode::CREATED, "{k}");
    let key = k["connect_key"].as_str().unwrap();
    assert!(key.starts_with("fck1."));
    assert_eq!(
        ferry_cloud::secrets::connect_key_url(key).as_deref(),
        Some(s.base.as_str())
    );
    let now = s.clock.now_ms();
    let exp = k["expires_at"].as_i64().unwrap();
    assert!((exp - now - 7 * DAY_MS).abs() < 60_000, "expires in 7 days");
    assert!(k["download_url"].as_str().unwrap().ends_with("/downloads/ferry-agent"));

    let (st, r) = register(&s, key).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    assert!(r["agent_token"].as_str().unwrap().starts_with("fca_"));
    assert_eq!(r["domain"]["root_dn"], "DC=example,DC=test");
    assert_eq!(r["domain"]["id"], id.as_str());

    let (st, v) = register(&s, key).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("connect_key_used"))
    );
    let mut typo = key.to_owned();
    typo.pop();
    typo.push('x');
    let (st, v) = register(&s, &typo).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("connect_key_invalid"))
    );
    assert!(v["message"].as_str().unwrap().contains("copied whole"));

    let (_, k2) = s
        .call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    s.clock.advance(7 * DAY_MS + 1);
    let (st, v) = register(&s, k2["connect_key"].as_str().unwrap()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("connect_key_expired"))
    );
    assert!(v["message"].as_str().unwrap().contains("7 days"));

    // The key itself is stored only as a hash.
    let mut tx = s.store.begin().await.unwrap();
    let found = tx.consume_connect_key(key, s.clock.now_ms()).await.unwrap();
    assert!(found.is_err(), "the raw key is not a stored value");
});

async fn agents(s: &TestServer, domain: &str) -> Value {
    s.call(Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await
        .1["agents"]
        .clone()
}

both_engines!(agent_status_primary_and_revocation, |engine| async move {
    let s = TestServer::start(engine).await;
    let id = new_domain(&s).await;
    let (_, k) = s
        .call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    let (_, r) = register(&s, k["connect_key"].as_str().unwrap()).await;
    let agent_token = r["agent_token"].as_str().unwrap().to_owned();
    let agent_id = r["agent_id"].as_str().unwrap().to_owned();
    let (st, hb) = s
        .call_as(
            &agent_token,
            Method::POST,
            "/agent/v1/heartbeat",
            Some(json!({"state": "idle"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{hb}");
    assert_eq!(hb["primary"], true);

    let a = agents(&s, &id).await;
    assert_eq!(a[0]["id"], agent_id.as_str());
    assert_eq!(a[0]["status"], "active");
    assert_eq!(a[0]["primary"], true);
    assert_eq!(a[0]["hostname"], "dc1.example.test");
    assert_eq!(a[0]["version"], "0.1.0");
    s.clock.advance(31_000);
    let a = agents(&s, &id).await;
    assert_eq!(
        (a[0]["status"].as_str(), a[0]["primary"].as_bool()),
        (Some("stale"), Some(false))
    );
    s.clock.advance(300_000);
    assert_eq!(agents(&s, &id).await[0]["status"], "offline");

    let (st, _) = s
        .call(Method::DELETE, &format!("/api/v1/domains/{id}/agents/{agent_id}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s
        .call_as(&agent_token, Method::POST, "/agent/v1/heartbeat", Some(json!({})))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("agent_revoked"))
    );
    assert_eq!(agents(&s, &id).await, json!([]));
    let (st, _) = s
        .call(Method::DELETE, &format!("/api/v1/domains/{id}/agents/{agent_id}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
});

both_engines!(audit_log_records_and_pages, |engine| async move {
    let s = TestServer::start(engine).await;
    let id = new_domain(&s).await;
    s.call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    s.call(
        Method::PATCH,
        &format!("/api/v1/domains/{id}"),
        Some(json!({"netbios_name": "EX2"})),
    )
    .await;
    let (st, v) = s.call(Method::GET, "/api/v1/audit?limit=2", None).await;
    assert_eq!(st, StatusCode::OK);
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["action"], "domain.update");
    assert_eq!(entries[1]["action"], "connect_key.create");
    assert_eq!(entries[0]["actor"], format!("admin:{}", s.org.admin_email));
    let before = v["next_before"].as_i64().unwrap();
    let (_, v) = s
        .call(Method::GET, &format!("/api/v1/audit?limit=2&before={before}"), None)
        .await;
    assert_eq!(v["entries"][0]["action"], "domain.create");
    assert!(!v.to_string().contains("fck1."), "no key in the audit log");
    for bad in [
        "/api/v1/audit?limit=0",
        "/api/v1/audit?limit=abc",
        "/api/v1/audit?color=red",
    ] {
        let (st, v) = s.call(Method::GET, bad, None).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{bad}"
        );
    }
    let other = s.other_org("Globex").await;
    let (_, v) = s.call_as(&other.token, Method::GET, "/api/v1/audit", None).await;
    assert_eq!(v["entries"], json!([]), "another org's audit log is its own");
});

both_engines!(sign_in_sessions_tokens_and_rate_limit, |engine| async move {
    let s = TestServer::start(engine).await;
    let body = json!({"email": s.org.admin_email.to_uppercase(), "password": s.org.admin_password});
    let (st, v) = s.call_as("", Method::POST, "/api/v1/sessions", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let session = v["token"].as_str().unwrap().to_owned();
    assert!(session.starts_with("fcs_"));
    let (st, _) = s.call_as(&session, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(st, StatusCode::OK);

    let (st, v) = s
        .call_as(
            &session,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "okta provisioning"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let api_token = v["token"].as_str().unwrap().to_owned();
    let (st, _) = s.call_as(&api_token, Method::GET, "/scim/v2/Users", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .call_as(&session, Method::POST, "/api/v1/tokens", Some(json!({"name": ""})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let (st, _) = s
        .call_as(&session, Method::DELETE, "/api/v1/sessions/current", None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s.call_as(&session, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );

    // Sessions expire.
    let body = json!({"email": s.org.admin_email, "password": s.org.admin_password});
    let (_, v) = s.call_as("", Method::POST, "/api/v1/sessions", Some(body)).await;
    let session = v["token"].as_str().unwrap().to_owned();
    s.clock.advance(13 * 3600 * 1000);
    let (st, v) = s.call_as(&session, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );

    // Unknown accounts get the same answer as wrong passwords.
    let (st, v) = s
        .call_as(
            "",
            Method::POST,
            "/api/v1/sessions",
            Some(json!({"email": "nobody@x.test", "password": "x"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    // Wrong passwords: refused, then limited (5 failures from one address
    // for one account); the right password from that address is refused too
    // while it waits (tests/limits.rs: not from another address).
    let wrong = json!({"email": s.org.admin_email, "password": "guess"});
    for _ in 0..5 {
        let (st, v) = s
            .call_as("", Method::POST, "/api/v1/sessions", Some(wrong.clone()))
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
        );
    }
    let resp = s
        .http
        .post(format!("{}/api/v1/sessions", s.base))
        .json(&json!({"email": s.org.admin_email, "password": s.org.admin_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    let (_, v) = s.call(Method::GET, "/api/v1/audit?limit=1", None).await;
    assert_eq!(v["entries"][0]["action"], "admin.sign_in_failed");
});

both_engines!(connect_key_guessing_is_limited, |engine| async move {
    let s = TestServer::start(engine).await;
    let id = new_domain(&s).await;
    for i in 0..10 {
        let (st, _) = register(&s, &format!("fck1.guess.{i}")).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    // The eleventh guess waits (1 s, then 2 s, 4 s… at most 15 min)…
    let (st, v) = register(&s, "fck1.guess.10").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    // A wait, not a lockout: after it, a guess is answered again, and the
    // next one waits longer.
    s.clock.advance(1_001);
    let (st, v) = register(&s, "fck1.guess.11").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("connect_key_invalid")),
        "{v}"
    );
    let (st, _) = register(&s, "fck1.guess.12").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    s.clock.advance(1_001);
    let (st, _) = register(&s, "fck1.guess.13").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "the second wait is 2 s");
    // A valid key from the same address, while it waits, is never refused.
    let (_, k) = s
        .call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    let (st, v) = register(&s, k["connect_key"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
});

both_engines!(oversized_bodies_are_refused, |engine| async move {
    let s = TestServer::start(engine).await;
    // Just over the 1 MiB limit (small enough that the refused body still fits the socket buffers).
    let big = json!({"name": "x".repeat(1024 * 1024 + 100)});
    let (st, v) = s.call(Method::POST, "/api/v1/domains", Some(big.clone())).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    let (st, v) = s.call(Method::POST, "/scim/v2/Users", Some(big)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error");
});

#[tokio::test]
async fn openapi_documents_every_route_that_exists() {
    let s = TestServer::start(Engine::Sqlite).await;
    let resp = s
        .http
        .get(format!("{}/api/v1/openapi.json", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc, serde_json::from_str::<Value>(OPENAPI).unwrap());
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = path
                .replace("{id}", "00000000-0000-0000-0000-000000000000")
                .replace("{agent_id}", "00000000-0000-0000-0000-000000000000")
                .replace("{qid}", "00000000-0000-0000-0000-000000000000");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (st, v) = s.call(m, &format!("/api/v1{url}"), Some(json!({}))).await;
            assert_ne!(
                st,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed"
            );
            let fallback = v["message"].as_str().is_some_and(|m| m.ends_with("is not an endpoint"));
            assert!(!fallback, "{method} {path} is documented but not routed");
        }
    }
}

#[tokio::test]
async fn the_agent_binary_downloads_with_its_checksum() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ferry-agent");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&bin, &content).unwrap();
    let config = ferry_cloud::app::Config {
        agent_binary: Some(bin),
        ..Default::default()
    };
    let s = TestServer::start_with(Engine::Sqlite, config).await;
    let want = hex::encode(sha2::Sha256::digest(&content));

    let resp = s
        .http
        .get(format!("{}/downloads/ferry-agent", s.base))
        .bearer_auth(&s.org.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-checksum-sha256"], want.as_str());
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("ferry-agent"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
    let sum = s
        .http
        .get(format!("{}/downloads/ferry-agent.sha256", s.base))
        .bearer_auth(&s.org.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sum, format!("{want}  ferry-agent\n"));
    let (st, _) = s.call_as("", Method::GET, "/downloads/ferry-agent", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "admins only");

    let none = TestServer::start(Engine::Sqlite).await;
    let (st, v) = none.call(Method::GET, "/downloads/ferry-agent", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("agent_binary_unavailable"))
    );
    assert!(v["message"].as_str().unwrap().contains("--agent-binary"));
}

#[tokio::test]
async fn the_windows_installer_downloads_with_its_checksum_and_the_dialog_lists_both() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ferry-agent");
    std::fs::write(&bin, b"linux agent").unwrap();
    let msi = dir.path().join("ferry-agent.msi");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&msi, &content).unwrap();
    let config = ferry_cloud::app::Config {
        agent_binary: Some(bin),
        agent_msi: Some(msi),
        ..Default::default()
    };
    let s = TestServer::start_with(Engine::Sqlite, config).await;
    let want = hex::encode(sha2::Sha256::digest(&content));
    let resp = s
        .http
        .get(format!("{}/downloads/ferry-agent.msi", s.base))
        .bearer_auth(&s.org.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-msi");
    assert_eq!(resp.headers()["x-checksum-sha256"], want.as_str());
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("filename=\"ferry-agent.msi\""));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
    let sum = s
        .http
        .get(format!("{}/downloads/ferry-agent.msi.sha256", s.base))
        .bearer_auth(&s.org.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sum, format!("{want}  ferry-agent.msi\n"));
    let (st, _) = s.call_as("", Method::GET, "/downloads/ferry-agent.msi", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "admins only");

    // A new Connect Key lists both downloads, Windows first, with their checksums.
    let id = new_domain(&s).await;
    let (st, k) = s
        .call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    assert_eq!(st, StatusCode::CREATED, "{k}");
    let d = k["downloads"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{k}");
    assert_eq!(
        (d[0]["platform"].as_str(), d[0]["sha256"].as_str()),
        (Some("windows"), Some(want.as_str()))
    );
    assert!(d[0]["url"].as_str().unwrap().ends_with("/downloads/ferry-agent.msi"));
    assert_eq!(d[1]["platform"], "linux");
    assert_eq!(
        d[1]["sha256"].as_str(),
        Some(hex::encode(sha2::Sha256::digest(b"linux agent")).as_str())
    );

    // Without the file, the server says how to offer it.
    let none = TestServer::start(Engine::Sqlite).await;
    let (st, v) = none.call(Method::GET, "/downloads/ferry-agent.msi", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("agent_msi_unavailable"))
    );
    assert!(v["message"].as_str().unwrap().contains("--agent-msi"));
}
