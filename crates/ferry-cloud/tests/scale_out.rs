//! Several `ferry-cloud` instances on one PostgreSQL, as a deployment
//! behind a load balancer runs them: what one instance does, the others
//! see — sessions, sign-in failure counts, and feed long-polls woken by
//! another instance's write (LISTEN/NOTIFY), also after the listener's
//! connection drops.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Engine, Instance, TestServer};
use ferry_cloud::app::Config;
use ferry_proto::agent::{CloudChange, FeedResponse};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(base: &str, token: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn sign_in(base: &str, email: &str, password: &str) -> (StatusCode, Value) {
    call(
        base,
        "",
        Method::POST,
        "/api/v1/sessions",
        Some(json!({"email": email, "password": password})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_instance_is_valid_on_another_and_ends_on_both() {
    let a = TestServer::start(Engine::Postgres).await;
    let b = a.another_instance(Config::default()).await;
    let (st, v) = sign_in(&a.base, &a.org.admin_email, &a.org.admin_password).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let session = v["token"].as_str().unwrap().to_owned();
    let (st, v) = call(&b.base, &session, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(st, StatusCode::OK, "a session made on A works on B: {v}");
    let (st, _) = call(&b.base, &session, Method::DELETE, "/api/v1/sessions/current", None).await;
    assert!(st.is_success(), "{st}");
    let (st, v) = call(&a.base, &session, Method::GET, "/api/v1/domains", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "signed out on B, refused on A: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_count_across_instances() {
    let a = TestServer::start(Engine::Postgres).await;
    let b = a.another_instance(Config::default()).await;
    // Five failures (the limit), spread over both instances…
    for i in 0..5 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (st, v) = sign_in(base, &a.org.admin_email, "wrong password").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "attempt {i}: {v}");
    }
    // …make the account wait on both: even the right password is not tried.
    // (The wait is 1 s; the shared test clock steps back a minute so that
    // a slow machine cannot outlast it between the requests.)
    a.clock.advance(-60_000);
    for base in [&a.base, &b.base] {
        let (st, v) = sign_in(base, &a.org.admin_email, &a.org.admin_password).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{base}: {v}");
    }
    // Once the wait is over, the right password works, and clears the count.
    a.clock.advance(60_000 + 2_000);
    let (st, v) = sign_in(&b.base, &a.org.admin_email, &a.org.admin_password).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = sign_in(&a.base, &a.org.admin_email, "wrong again").await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "one failure after a success costs nothing yet: {v}"
    );
}

/// A domain with an enrolled agent; returns the agent's token and the feed's head.
async fn domain_with_agent(s: &TestServer) -> (String, i64) {
    let (st, d) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({"name": "example.test"})))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let token = s.enrol(d["id"].as_str().unwrap()).await.token;
    let (st, v) = s
        .call_as(&token, Method::GET, "/agent/v1/feed?after=0&wait=0", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    (token, v["next_cursor"].as_i64().unwrap())
}

/// Starts a long-poll on `b`, waits until it is waiting, creates a user on
/// `a`, and returns the poll's answer (or panics if it was not woken long
/// before its 30 s wait ends: `b` re-reads only hourly, so only a wake-up
/// from `a`'s commit can answer it sooner).
async fn write_on_a_wakes_poll_on_b(a: &TestServer, b: &Instance, agent: &str, after: i64, name: &str) -> FeedResponse {
    let m = ferry_cloud::metrics::global();
    let waiting_before = m.feed_polls_waiting.load(Ordering::SeqCst);
    let poll = {
        let (base, agent) = (b.base.clone(), agent.to_owned());
        tokio::spawn(async move {
            let (st, v) = call(
                &base,
                &agent,
                Method::GET,
                &format!("/agent/v1/feed?after={after}&wait=30"),
                None,
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            serde_json::from_value::<FeedResponse>(v).unwrap()
        })
    };
    // Until the poll has read the feed, found nothing and waits.
    while m.feed_polls_waiting.load(Ordering::SeqCst) <= waiting_before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = Instant::now();
    a.create_user(name).await;
    let page = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the long-poll on instance B was not woken by instance A's write")
        .unwrap();
    println!(
        "cross-instance wake-up: {:?} from A's commit to B's answer",
        written.elapsed()
    );
    page
}

fn names_user(page: &FeedResponse, name: &str) -> bool {
    page.entries.iter().any(|e| match &e.change {
        CloudChange::UpsertUser { record, .. } => record.username == name,
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_write_on_one_instance_wakes_a_long_poll_on_another() {
    let a = TestServer::start(Engine::Postgres).await;
    let b = a
        .another_instance(Config {
            // No periodic re-read to fall back on: only LISTEN/NOTIFY can wake B.
            feed_reread: Duration::from_secs(3600),
            ..Config::default()
        })
        .await;
    let (agent, head) = domain_with_agent(&a).await;
    let notified = ferry_cloud::metrics::global().feed_notifications.load(Ordering::SeqCst);
    let page = write_on_a_wakes_poll_on_b(&a, &b, &agent, head, "woken.by.a").await;
    assert!(names_user(&page, "woken.by.a"), "{page:?}");
    assert!(
        ferry_cloud::metrics::global().feed_notifications.load(Ordering::SeqCst) > notified,
        "the wake-up came through PostgreSQL"
    );

    // The listener's connection dropped (a restart of PostgreSQL, a proxy
    // timeout): it reconnects, and long-polls are woken again.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&b.url)
        .await
        .unwrap();
    let old = listener_pids(&mut conn).await;
    assert!(old.len() >= 2, "both instances listen: {old:?}");
    for pid in &old {
        sqlx::query("SELECT pg_terminate_backend(CAST($1 AS INTEGER))")
            .bind(*pid)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    loop {
        let now = listener_pids(&mut conn).await;
        if now.iter().filter(|p| !old.contains(p)).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = write_on_a_wakes_poll_on_b(&a, &b, &agent, page.next_cursor, "after.reconnect").await;
    assert!(names_user(&page, "after.reconnect"), "{page:?}");
}

/// The backends of this database that listen (the instances' feed listeners).
async fn listener_pids(conn: &mut sqlx::AnyConnection) -> Vec<i64> {
    sqlx::query(
        "SELECT CAST(pid AS BIGINT) AS pid FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(conn)
    .await
    .unwrap()
    .iter()
    .map(|r| sqlx::Row::try_get(r, "pid").unwrap())
    .collect()
}
