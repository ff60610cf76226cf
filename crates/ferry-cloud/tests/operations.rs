//! What operators rely on, on SQLite and PostgreSQL: retention prunes what
//! no one will read again and nothing else (an entry a domain has not
//! acknowledged stays; a domain made after pruning still gets every object),
//! and `/metrics` answers only with its token and shows the feed lag per
//! domain without a secret or a user's name in it.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::TestServer;
use ferry_cloud::app::{AppState, Config};
use ferry_cloud::clock::Clock;
use ferry_cloud::secrets::token_hash;
use ferry_cloud::store::RetentionPolicy;
use ferry_proto::agent::{CloudChange, FeedResponse};
use reqwest::{Method, StatusCode};
use serde_json::json;

const HOUR: i64 = 3600 * 1000;
const DAY: i64 = 24 * HOUR;

type Agent = common::TestAgent;

fn quiet() -> Config {
    // Retention runs only when a test says so.
    Config {
        retention_interval: None,
        ..Config::default()
    }
}

async fn new_domain(s: &TestServer, name: &str) -> String {
    let (st, d) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({ "name": name })))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    d["id"].as_str().unwrap().to_owned()
}

async fn enrol(s: &TestServer, domain: &str) -> Agent {
    let a = s.enrol(domain).await;
    s.heartbeat(&a).await;
    a
}

async fn feed(s: &TestServer, a: &Agent, after: i64) -> FeedResponse {
    let (st, v) = s
        .call_as(
            &a.token,
            Method::GET,
            &format!("/agent/v1/feed?after={after}&limit=5000"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn ack(s: &TestServer, a: &Agent, cursor: i64) {
    let (st, v) = s
        .call_as(
            &a.token,
            Method::POST,
            "/agent/v1/ack",
            Some(json!({ "cursor": cursor })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

async fn create_user(s: &TestServer, name: &str) -> String {
    s.create_user(name).await
}

fn upserted_users(page: &FeedResponse) -> Vec<String> {
    page.entries
        .iter()
        .filter_map(|e| match &e.change {
            CloudChange::UpsertUser { record, .. } => Some(record.username.clone()),
            _ => None,
        })
        .collect()
}

async fn feed_seqs(s: &TestServer) -> Vec<i64> {
    let mut tx = s.store.begin().await.unwrap();
    tx.read_feed(s.org.id, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// No margins: whatever may go, goes.
fn eager() -> RetentionPolicy {
    RetentionPolicy {
        feed_keep_acknowledged: 0,
        feed_keep_ms: 0,
        ..RetentionPolicy::default()
    }
}

both_engines!(
    the_feed_is_pruned_only_below_what_every_domain_acknowledged,
    |engine| async move {
        let s = TestServer::start_with(engine, quiet()).await;
        let now = || s.clock.now_ms();
        for n in ["a.one", "a.two", "a.three"] {
            create_user(&s, n).await;
        }
        // No domain yet: a first domain will read the whole feed, so it stays.
        assert_eq!(s.store.prune(&eager(), now()).await.unwrap().feed, 0);
        assert_eq!(feed_seqs(&s).await, vec![1, 2, 3]);

        let d1 = new_domain(&s, "one.test").await;
        let d2 = new_domain(&s, "two.test").await;
        let (a1, a2) = (enrol(&s, &d1).await, enrol(&s, &d2).await);
        for n in ["b.four", "b.five"] {
            create_user(&s, n).await;
        }
        let page = feed(&s, &a1, 0).await;
        assert_eq!(
            upserted_users(&page),
            ["a.one", "a.two", "a.three", "b.four", "b.five"],
            "the first domain adopted the earlier users"
        );
        ack(&s, &a1, page.next_cursor).await;
        // Domain two has acknowledged nothing: nothing goes.
        assert_eq!(s.store.prune(&eager(), now()).await.unwrap().feed, 0);
        assert_eq!(feed_seqs(&s).await, vec![1, 2, 3, 4, 5]);

        // Domain two acknowledges through 3: 1..=3 go, 4 and 5 stay.
        ack(&s, &a2, 3).await;
        assert_eq!(s.store.prune(&eager(), now()).await.unwrap().feed, 3);
        assert_eq!(feed_seqs(&s).await, vec![4, 5]);
        let after = feed(&s, &a2, 3).await;
        assert_eq!(
            after.next_cursor, 5,
            "what domain two has not acknowledged is still there"
        );

        // The margins: the newest acknowledged entries, and young ones, stay.
        ack(&s, &a2, 5).await;
        let keep_one = RetentionPolicy {
            feed_keep_acknowledged: 1,
            ..eager()
        };
        assert_eq!(s.store.prune(&keep_one, now()).await.unwrap().feed, 1);
        assert_eq!(feed_seqs(&s).await, vec![5]);
        let young = RetentionPolicy {
            feed_keep_acknowledged: 0,
            ..RetentionPolicy::default()
        };
        assert_eq!(
            s.store.prune(&young, now()).await.unwrap().feed,
            0,
            "a day old at least"
        );
        assert_eq!(s.store.prune(&young, now() + 2 * DAY).await.unwrap().feed, 1);
        assert!(feed_seqs(&s).await.is_empty());

        // The feed goes on numbering where it was; agents read on.
        create_user(&s, "c.six").await;
        let page = feed(&s, &a1, 5).await;
        assert_eq!(upserted_users(&page), ["c.six"]);
        assert_eq!(page.next_cursor, 6);
    }
);

both_engines!(
    a_first_domain_made_after_pruning_still_gets_every_cloud_object,
    |engine| async move {
        let s = TestServer::start_with(engine, quiet()).await;
        let now = s.clock.now_ms();
        create_user(&s, "early.bird").await;
        let d1 = new_domain(&s, "one.test").await;
        let a1 = enrol(&s, &d1).await;
        let page = feed(&s, &a1, 0).await;
        ack(&s, &a1, page.next_cursor).await;
        assert!(s.store.prune(&eager(), now + 1_000).await.unwrap().feed >= 1);
        // The domain goes; its objects lose their home. A new domain is the
        // org's first again and adopts them; its agent reads from 0.
        let (st, v) = s.call(Method::DELETE, &format!("/api/v1/domains/{d1}"), None).await;
        assert!(st.is_success(), "{st} {v}");
        let d2 = new_domain(&s, "two.test").await;
        let a2 = enrol(&s, &d2).await;
        let page = feed(&s, &a2, 0).await;
        assert!(
            upserted_users(&page).contains(&"early.bird".to_owned()),
            "the pruned user reaches the new domain's agent: {:?}",
            page.entries
        );
    }
);

both_engines!(
    audit_sessions_keys_and_sign_in_counters_are_pruned_by_age,
    |engine| async move {
        let s = TestServer::start_with(engine, quiet()).await;
        let now = s.clock.now_ms();
        let d = new_domain(&s, "one.test").await;
        enrol(&s, &d).await; // a used key
        let (_, unused) = s
            .call(Method::POST, &format!("/api/v1/domains/{d}/connect-keys"), None)
            .await;
        let (st, v) = s
            .call_as(
                "",
                Method::POST,
                "/api/v1/sessions",
                Some(json!({"email": s.org.admin_email, "password": s.org.admin_password})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let session = v["token"].as_str().unwrap().to_owned();
        let (st, _) = s
            .call_as(
                "",
                Method::POST,
                "/api/v1/sessions",
                Some(json!({"email": s.org.admin_email, "password": "not it"})),
            )
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let entries = audit_count(&s).await;
        assert!(entries >= 3, "{entries}");

        // Now: nothing is old enough.
        let policy = RetentionPolicy {
            audit_max_age_ms: Some(DAY),
            ..RetentionPolicy::default()
        };
        let p = s.store.prune(&policy, now).await.unwrap();
        assert_eq!(
            (p.audit, p.sessions, p.connect_keys, p.sign_in_failures),
            (0, 0, 0, 0),
            "{p:?}"
        );
        let (st, _) = s.call_as(&session, Method::GET, "/api/v1/domains", None).await;
        assert_eq!(st, StatusCode::OK, "a live session is kept");
        assert_eq!(audit_count(&s).await, entries);

        // Half a day on: the session has expired, the sign-in counter is quiet.
        let p = s.store.prune(&policy, now + 13 * HOUR).await.unwrap();
        assert_eq!((p.audit, p.sessions, p.sign_in_failures), (0, 1, 1), "{p:?}");
        // Two days on: the audit entries are older than a day.
        let p = s.store.prune(&policy, now + 2 * DAY).await.unwrap();
        assert_eq!(p.audit as usize, entries, "{p:?}");
        assert_eq!(p.connect_keys, 0, "keys are kept 30 days after use or expiry");
        // A month on: the used key goes; the unused one (expired 7 days in) too, later.
        let p = s.store.prune(&policy, now + 31 * DAY).await.unwrap();
        assert_eq!(p.connect_keys, 1, "{p:?}");
        let p = s.store.prune(&policy, now + 38 * DAY).await.unwrap();
        assert_eq!(p.connect_keys, 1, "{p:?}");
        assert!(unused["connect_key"].is_string());
        // API tokens are not sessions: the admin's still works.
        let (st, _) = s.call(Method::GET, "/api/v1/domains", None).await;
        assert_eq!(st, StatusCode::OK);
        // `None` keeps the audit log forever.
        s.call(Method::POST, "/api/v1/domains", Some(json!({"name": "two.test"})))
            .await;
        let forever = RetentionPolicy {
            audit_max_age_ms: None,
            ..RetentionPolicy::default()
        };
        assert_eq!(s.store.prune(&forever, now + 3650 * DAY).await.unwrap().audit, 0);
    }
);

both_engines!(the_retention_task_runs_in_the_service, |engine| async move {
    let s = TestServer::start_with(
        engine,
        Config {
            retention_interval: Some(std::time::Duration::from_millis(50)),
            retention: RetentionPolicy {
                audit_max_age_ms: Some(1),
                ..RetentionPolicy::default()
            },
            ..Config::default()
        },
    )
    .await;
    new_domain(&s, "one.test").await;
    // The domain's audit entry is pruned by the service itself, soon.
    loop {
        let (_, v) = s.call(Method::GET, "/api/v1/audit", None).await;
        if v["entries"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
});

async fn audit_count(s: &TestServer) -> usize {
    let (_, v) = s.call(Method::GET, "/api/v1/audit?limit=500", None).await;
    v["entries"].as_array().unwrap().len()
}

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

async fn scrape(s: &TestServer, token: Option<&str>) -> (StatusCode, String) {
    let mut req = s.http.get(format!("{}/metrics", s.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

both_engines!(
    metrics_need_their_token_and_show_lag_without_secrets,
    |engine| async move {
        let plain = TestServer::start(engine).await;
        let (st, _) = scrape(&plain, Some(METRICS_TOKEN)).await;
        assert_eq!(
            st,
            StatusCode::NOT_FOUND,
            "no token configured: not served on the service's address"
        );
        drop(plain);

        let s = TestServer::start_with(
            engine,
            Config {
                metrics_token_hash: Some(token_hash(METRICS_TOKEN)),
                ..quiet()
            },
        )
        .await;
        let (st, _) = scrape(&s, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _) = scrape(&s, Some(&s.org.token)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "an admin token is not the metrics token");

        let d = new_domain(&s, "one.test").await;
        let agent = enrol(&s, &d).await;
        create_user(&s, "private.person").await;
        create_user(&s, "another.person").await;
        let page = feed(&s, &agent, 0).await;
        ack(&s, &agent, page.next_cursor - 1).await;
        let report = json!({"direction": "cloud_to_ad", "object_key": "k1", "object_kind": "user",
            "object_name": "private.person", "operation": "create user", "code": "ldap 19", "message": "no"});
        let (st, v) = s
            .call_as(&agent.token, Method::POST, "/agent/v1/sync-errors", Some(report))
            .await;
        assert!(st.is_success(), "{st} {v}");

        let (st, text) = scrape(&s, Some(METRICS_TOKEN)).await;
        assert_eq!(st, StatusCode::OK, "{text}");
        let labels = format!("org=\"{}\",domain=\"{d}\"", s.org.id);
        assert!(
            text.contains(&format!("ferry_feed_lag_entries{{{labels}}} 1\n")),
            "one entry not acknowledged:\n{text}"
        );
        let age_line = text
            .lines()
            .find(|l| l.starts_with(&format!("ferry_feed_lag_seconds{{{labels}}}")))
            .unwrap();
        assert!(!age_line.ends_with(" 0"), "{age_line}");
        assert!(
            text.contains(&format!(
                "ferry_sync_errors_open{{{labels},direction=\"cloud_to_ad\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("ferry_http_request_duration_seconds_count{route=\"scim\",method=\"POST\",status=\"2xx\"}"),
            "{text}"
        );
        assert!(text.contains("ferry_store_acquire_seconds_count"), "{text}");
        for secret in [
            "private.person",
            "another.person",
            s.org.token.as_str(),
            agent.token.as_str(),
            METRICS_TOKEN,
            s.org.admin_email.as_str(),
        ] {
            assert!(!text.contains(secret), "{secret:?} in the metrics");
        }
        // Labels do not grow with users (request series are shared with
        // the other tests of this process, so only SCIM POST's are counted).
        let series = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| !l.starts_with("ferry_http_request") || l.contains("route=\"scim\",method=\"POST\""))
                .count()
        };
        let before = series(&text);
        for i in 0..20 {
            create_user(&s, &format!("more.{i}")).await;
        }
        let (_, text) = scrape(&s, Some(METRICS_TOKEN)).await;
        assert_eq!(before, series(&text), "{text}");

        // `--metrics-listen`: the same figures on an address of their own, no token.
        let state = AppState::new(s.store.clone(), s.clock.clone(), quiet());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, ferry_cloud::app::metrics_router(state))
                .await
                .unwrap();
        });
        let resp = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text: String = resp.text().await.unwrap();
        assert!(text.contains("ferry_feed_lag_entries{"), "{text}");
        let other = reqwest::get(format!("http://{addr}/api/v1/domains")).await.unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND, "only /metrics there");
        server.abort();
    }
);
