//! The failed-attempt limiters over real HTTP, on SQLite and PostgreSQL:
//! they slow guessers down and never refuse a valid credential; behind a
//! trusted proxy they count the forwarded client, and only then.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::TestServer;
use ferry_cloud::app::Config;
use ferry_cloud::secrets::{new_token, AGENT_TOKEN_PREFIX, API_TOKEN_PREFIX};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn behind_proxy() -> Config {
    Config {
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ..Config::default()
    }
}

/// A sign-in attempt, from `forwarded_for` when given.
async fn sign_in(s: &TestServer, password: &str, forwarded_for: Option<&str>) -> (StatusCode, Value) {
    let mut req = s
        .http
        .post(format!("{}/api/v1/sessions", s.base))
        .json(&json!({"email": s.org.admin_email, "password": password}));
    if let Some(f) = forwarded_for {
        req = req.header("x-forwarded-for", f);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The address the last failed sign-in was recorded from (the audit log).
async fn last_failure_ip(s: &TestServer) -> String {
    let (_, v) = s.call(Method::GET, "/api/v1/audit?limit=1", None).await;
    assert_eq!(v["entries"][0]["action"], "admin.sign_in_failed", "{v}");
    v["entries"][0]["details"]["ip"].as_str().unwrap().to_owned()
}

/// A registered agent's token.
async fn agent_token(s: &TestServer) -> String {
    let (_, d) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({"name": "limits.test"})))
        .await;
    let id = d["id"].as_str().unwrap();
    let (_, k) = s
        .call(Method::POST, &format!("/api/v1/domains/{id}/connect-keys"), None)
        .await;
    use base64::Engine as _;
    let body = json!({"connect_key": k["connect_key"], "hostname": "dc1.limits.test", "version": "0.1.0",
                      "public_key": base64::engine::general_purpose::STANDARD.encode([7u8; 32])});
    let (st, v) = s.call_as("", Method::POST, "/agent/v1/register", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v["agent_token"].as_str().unwrap().to_owned()
}

both_engines!(a_thousand_unknown_tokens_never_stop_a_valid_one, |engine| async move {
    let s = TestServer::start(engine).await;
    let agent = agent_token(&s).await;
    let mut limited = 0;
    for i in 0..1000 {
        let (prefix, path) = if i % 2 == 0 {
            (API_TOKEN_PREFIX, "/scim/v2/Users")
        } else {
            (AGENT_TOKEN_PREFIX, "/agent/v1/me")
        };
        let (st, v) = s.call_as(&new_token(prefix), Method::GET, path, None).await;
        match st {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("an unknown token got {other}: {v}"),
        }
        if i % 50 == 49 {
            // From the same address, in the middle of it all.
            let (st, v) = s.call(Method::GET, "/scim/v2/Users", None).await;
            assert_eq!(st, StatusCode::OK, "the admin token after {i} unknown ones: {v}");
            let (st, v) = s.call(Method::GET, "/api/v1/domains", None).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            let (st, v) = s.call_as(&agent, Method::GET, "/agent/v1/me", None).await;
            assert_eq!(st, StatusCode::OK, "the agent token after {i} unknown ones: {v}");
        }
    }
    assert!(limited > 900, "the guesser waits: {limited} of 1000 got 429");
});

both_engines!(
    a_valid_password_signs_in_after_100_bad_ones_from_another_address,
    |engine| async move {
        let s = TestServer::start_with(engine, behind_proxy()).await;
        let guesser = "203.0.113.9";
        let mut limited = 0;
        for i in 0..100 {
            let (st, v) = sign_in(&s, &format!("guess-{i}"), Some(guesser)).await;
            match st {
                StatusCode::UNAUTHORIZED => assert_eq!(v["code"], "invalid_credentials"),
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("a wrong password got {other}: {v}"),
            }
        }
        assert_eq!(limited, 95, "five failures, then the guesser waits");
        let password = s.org.admin_password.clone();
        let (st, v) = sign_in(&s, &password, Some("198.51.100.7")).await;
        assert_eq!(st, StatusCode::CREATED, "the owner, from another address: {v}");
        // The guesser's address waits even with the right password; the wait
        // ends (backoff, not lockout) and then the right password works there too.
        let (st, _) = sign_in(&s, &password, Some(guesser)).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
        s.clock.advance(15 * 60 * 1000);
        let (st, v) = sign_in(&s, &password, Some(guesser)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
);

both_engines!(
    forwarded_addresses_count_only_from_trusted_proxies,
    |engine| async move {
        // Not trusted (the default): the header is anyone's to write, so the
        // TCP peer is the client, whatever it claims.
        let s = TestServer::start(engine).await;
        for i in 0..5 {
            let (st, _) = sign_in(&s, "wrong", Some(&format!("198.51.100.{i}"))).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(last_failure_ip(&s).await, "127.0.0.1");
        let password = s.org.admin_password.clone();
        let (st, _) = sign_in(&s, &password, Some("192.0.2.1")).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "a forged header escapes nothing");

        // Trusted: the forwarded client counts, in either header; trusted hops
        // are skipped, and an unreadable hop stops at the last trusted one.
        let s = TestServer::start_with(engine, behind_proxy()).await;
        for (header, value, client) in [
            ("x-forwarded-for", "203.0.113.5", "203.0.113.5"),
            ("x-forwarded-for", "10.9.9.9, 203.0.113.6, 127.0.0.1", "203.0.113.6"),
            ("forwarded", "for=203.0.113.7;proto=https", "203.0.113.7"),
            ("forwarded", "for=\"[2001:db8::7]:4711\"", "2001:db8::7"),
            ("forwarded", "for=192.0.2.60, for=unknown", "127.0.0.1"),
            ("x-forwarded-for", "not an address", "127.0.0.1"),
        ] {
            let resp = s
                .http
                .post(format!("{}/api/v1/sessions", s.base))
                .header(header, value)
                .json(&json!({"email": s.org.admin_email, "password": "wrong"}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header}: {value}");
            assert_eq!(last_failure_ip(&s).await, client, "{header}: {value}");
        }
    }
);

both_engines!(the_console_answers_a_waiting_sign_in_with_429, |engine| async move {
    let s = TestServer::start(engine).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = no_redirects
            .post(format!("{}/signin", s.base))
            .form(&[("email", s.org.admin_email.as_str()), ("password", "wrong")])
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        let page = resp.text().await.unwrap();
        if statuses.last() == Some(&429) {
            assert!(page.contains("try again in"), "{page}");
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
});
