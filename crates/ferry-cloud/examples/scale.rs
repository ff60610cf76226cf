//! Scale benchmark: does a request's cost grow with the org?
//!
//! A real ferry-cloud (this crate's `serve`) on SQLite (or PostgreSQL with
//! `FERRY_SCALE_DB_URL`), an org filled as an agent's import fills it (users
//! with links and bases, a group of fifty per ten users, nested), then, at each size in turn
//! (in one run, the store growing), one client times: the SCIM `userName eq`
//! filter, a SCIM PATCH of a user's title, a SCIM create, a SCIM list page
//! of 100, and the cloud → AD round of a PATCH as the agent sees it (the
//! PATCH, its feed read, the link's base moved, the ack, the echo pushed
//! back). Prints the mean of each at each size and the ratio of the last
//! size to the first. A benchmark, not a test.
//!
//!   cargo run --release -p ferry-cloud --example scale -- [SIZE...]   (default 10000 100000)
//!
//! `RUST_LOG=sqlx::query=debug` logs every statement with its time.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ferry_cloud::app::{serve, AppState, Config};
use ferry_cloud::clock::SystemClock;
use ferry_cloud::directory::ad_apply::{apply_ad_changes, Isolation};
use ferry_cloud::directory::WriteCtx;
use ferry_cloud::secrets::{hash_password, new_token, token_hash, API_TOKEN_PREFIX};
use ferry_cloud::store::{Store, TokenKind};
use ferry_proto::agent::{AdChange, PushChangesRequest};
use ferry_proto::record::UserRecord;
use serde_json::{json, Value};
use uuid::Uuid;

/// Users a pushed batch carries (as the agent's import).
const BATCH: usize = 500;

fn record(i: usize, title: &str) -> UserRecord {
    UserRecord {
        username: format!("u{i:06}"),
        given_name: Some("User".into()),
        family_name: Some(format!("N{i}")),
        display_name: Some(format!("User N{i}")),
        email: Some(format!("u{i:06}@bench.test")),
        title: Some(title.into()),
        department: Some(["Sales", "R&D", "Ops"][i % 3].into()),
        active: true,
        ..Default::default()
    }
}

fn user_guid(i: usize) -> Uuid {
    Uuid::from_u128(0x1000_0000_0000_0000_0000_0000_0000_0000 + i as u128)
}

fn group_guid(j: usize) -> Uuid {
    Uuid::from_u128(0x2000_0000_0000_0000_0000_0000_0000_0000 + j as u128)
}

fn dn(i: usize) -> String {
    format!("CN=u{i:06},OU=Bench,DC=bench,DC=test")
}

struct Bench {
    http: reqwest::Client,
    base: String,
    token: String,
    agent: String,
}

impl Bench {
    async fn call(&self, method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn scim(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, &self.token, body).await
    }

    async fn agent(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, &self.agent, body).await
    }
}

/// Milliseconds since `t`.
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = std::env::var("FERRY_SCALE_DB_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("ferry.db").display()));
    let store = Store::open(&url).await.expect("store");

    let token = new_token(API_TOKEN_PREFIX);
    let mut tx = store.begin().await.unwrap();
    let org = tx.insert_org(&format!("Scale {}", Uuid::new_v4()), 1).await.unwrap();
    let admin = tx
        .insert_admin(
            org.id,
            &format!("admin-{}@bench.test", Uuid::new_v4()),
            &hash_password("bench-password").unwrap(),
            1,
        )
        .await
        .unwrap();
    tx.insert_token(org.id, admin.id, TokenKind::Api, "bench", &token_hash(&token), 1, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let state = AppState::new(store.clone(), Arc::new(SystemClock), Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { serve(listener, state, std::future::pending()).await.unwrap() });
    let mut b = Bench {
        http: reqwest::Client::new(),
        base,
        token,
        agent: String::new(),
    };

    // The domain and its agent (the primary, by its heartbeat).
    let d = b
        .scim(
            reqwest::Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "bench.test"})),
        )
        .await;
    let domain_id = Uuid::parse_str(d["id"].as_str().unwrap()).unwrap();
    let k = b
        .scim(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain_id}/connect-keys"),
            None,
        )
        .await;
    let reg = b
        .call(
            reqwest::Method::POST,
            "/agent/v1/register",
            "",
            Some(
                json!({"connect_key": k["connect_key"], "hostname": "dc1.bench.test", "version": "0.1.0",
                        "public_key": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}),
            ),
        )
        .await;
    b.agent = reg["agent_token"].as_str().unwrap().to_owned();
    let heartbeat =
        json!({"state": "idle", "last_error": null, "ad_objects": 0, "pushed": 0, "applied": 0, "last_sync_at": null});
    b.agent(reqwest::Method::POST, "/agent/v1/heartbeat", Some(heartbeat.clone()))
        .await;

    let mut have = 0usize;
    let mut cookie_no = 0usize;
    let mut results: BTreeMap<&'static str, Vec<(usize, f64, f64)>> = BTreeMap::new();
    for &size in &sizes {
        // Fill up to `size` users as an import does (batches applied as a
        // push applies them), a group of ten users for each ten.
        let t = Instant::now();
        while have < size {
            let n = BATCH.min(size - have);
            let mut changes: Vec<AdChange> = (have..have + n)
                .map(|i| AdChange::UpsertUser {
                    guid: user_guid(i),
                    dn: dn(i),
                    record: Box::new(record(i, "Engineer")),
                    changed_at: None,
                })
                .collect();
            // As the benchmark's directory: a group per ten users, fifty
            // members each (every user in five groups), nested in a chain.
            for j in (have / 10)..((have + n) / 10) {
                changes.push(AdChange::UpsertGroup {
                    guid: group_guid(j),
                    dn: format!("CN=g{j:05},OU=Bench,DC=bench,DC=test"),
                    record: ferry_proto::record::GroupRecord {
                        name: format!("g{j:05}"),
                        description: None,
                    },
                });
            }
            for j in (have / 10)..((have + n) / 10) {
                let mut members: Vec<Uuid> = (0..50).map(|k| user_guid(have + (j * 10 + k * 37) % n)).collect();
                if j > have / 10 {
                    members.push(group_guid(j - 1));
                }
                changes.push(AdChange::SetMembers {
                    group: group_guid(j),
                    members,
                });
            }
            let mut tx = store.begin().await.unwrap();
            let domain = tx.get_domain(org.id, domain_id).await.unwrap();
            let ctx = WriteCtx {
                org_id: org.id,
                origin: domain_id.to_string(),
                actor: "agent:bench".into(),
                now: 1,
            };
            cookie_no += 1;
            let push = PushChangesRequest {
                from_cookie: domain.ad_cookie.clone(),
                to_cookie: Some(format!("c{cookie_no}")),
                changes,
                repair: false,
            };
            apply_ad_changes(&mut tx, &ctx, &domain, &push, Isolation::Batch)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            have += n;
        }
        // The agent is up to date.
        let mut tx = store.begin().await.unwrap();
        let head = tx.feed_head(org.id).await.unwrap();
        tx.advance_feed_cursor(org.id, domain_id, head).await.unwrap();
        tx.commit().await.unwrap();
        eprintln!("{size} users ({:.1} s to fill)", t.elapsed().as_secs_f64());
        b.agent(reqwest::Method::POST, "/agent/v1/heartbeat", Some(heartbeat.clone()))
            .await;

        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ size as u64;
        let mut pick = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % size as u64) as usize
        };
        let mut push = |name: &'static str, v: &[f64]| {
            results.entry(name).or_default().push((size, mean(v), median(v)));
        };

        // SCIM userName eq (and the ids the PATCHes use).
        let mut v = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..300 {
            let i = pick();
            let t = Instant::now();
            let r = b
                .scim(
                    reqwest::Method::GET,
                    &format!("/scim/v2/Users?filter=userName%20eq%20%22u{i:06}%22"),
                    None,
                )
                .await;
            v.push(ms(t));
            assert_eq!(r["totalResults"], 1, "u{i:06}");
            ids.push((i, r["Resources"][0]["id"].as_str().unwrap().to_owned()));
        }
        push("SCIM filter userName eq", &v);

        // SCIM PATCH of a title.
        let mut v = Vec::new();
        for (n, (_, id)) in ids.iter().enumerate().take(200) {
            let t = Instant::now();
            b.scim(
                reqwest::Method::PATCH,
                &format!("/scim/v2/Users/{id}"),
                Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "title", "value": format!("p{size}-{n}")}]})),
            )
            .await;
            v.push(ms(t));
        }
        push("SCIM PATCH title", &v);

        // SCIM create.
        let mut v = Vec::new();
        for n in 0..200 {
            let t = Instant::now();
            b.scim(
                reqwest::Method::POST,
                "/scim/v2/Users",
                Some(json!({"userName": format!("new{size}-{n}"), "name": {"givenName": "New", "familyName": format!("User{n}")}})),
            )
            .await;
            v.push(ms(t));
        }
        push("SCIM create user", &v);

        // SCIM list page of 100, anywhere in the org.
        let mut v = Vec::new();
        for _ in 0..40 {
            let start = pick() + 1;
            let t = Instant::now();
            let r = b
                .scim(
                    reqwest::Method::GET,
                    &format!("/scim/v2/Users?startIndex={start}&count=100"),
                    None,
                )
                .await;
            v.push(ms(t));
            assert!(r["totalResults"].as_u64().unwrap() >= size as u64);
        }
        push("SCIM list, 100 a page", &v);

        // The cloud → AD round as the agent makes it: the PATCH, the feed
        // read, the link's base moved by the write, the ack, the echo.
        // (The creates above went to the feed: the agent reads past them first.)
        let mut tx = store.begin().await.unwrap();
        let head = tx.feed_head(org.id).await.unwrap();
        tx.advance_feed_cursor(org.id, domain_id, head).await.unwrap();
        tx.commit().await.unwrap();
        let mut cursor = head;
        let (mut patch_v, mut feed_v, mut link_v, mut ack_v, mut echo_v, mut round_v) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (n, (i, id)) in ids.iter().skip(200).take(100).enumerate() {
            let title = format!("r{size}-{n}");
            let round = Instant::now();
            let t = Instant::now();
            b.scim(
                reqwest::Method::PATCH,
                &format!("/scim/v2/Users/{id}"),
                Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "title", "value": title}]})),
            )
            .await;
            patch_v.push(ms(t));
            let t = Instant::now();
            let f = b
                .agent(
                    reqwest::Method::GET,
                    &format!("/agent/v1/feed?after={cursor}&wait=5"),
                    None,
                )
                .await;
            feed_v.push(ms(t));
            let entries = f["entries"].as_array().unwrap();
            assert_eq!(entries.len(), 1, "{f}");
            cursor = f["next_cursor"].as_i64().unwrap();
            let rec = record(*i, &title);
            let t = Instant::now();
            b.agent(
                reqwest::Method::POST,
                "/agent/v1/links",
                Some(json!({"object_id": id, "kind": "user", "guid": user_guid(*i), "dn": dn(*i), "base": rec})),
            )
            .await;
            link_v.push(ms(t));
            let t = Instant::now();
            b.agent(reqwest::Method::POST, "/agent/v1/ack", Some(json!({"cursor": cursor})))
                .await;
            ack_v.push(ms(t));
            round_v.push(ms(round));
            // AD's echo of the write, pushed back by the quick path.
            let st = b.agent(reqwest::Method::GET, "/agent/v1/state", None).await;
            cookie_no += 1;
            let t = Instant::now();
            b.agent(
                reqwest::Method::POST,
                "/agent/v1/changes",
                Some(
                    json!({"from_cookie": st["ad_cookie"], "to_cookie": format!("c{cookie_no}"),
                            "changes": [{"op": "upsert_user", "guid": user_guid(*i), "dn": dn(*i), "record": rec}]}),
                ),
            )
            .await;
            echo_v.push(ms(t));
        }
        push("round: PATCH", &patch_v);
        push("round: agent feed read", &feed_v);
        push("round: agent link with base", &link_v);
        push("round: agent ack", &ack_v);
        push("round: PATCH to ack", &round_v);
        push("round: AD echo pushed", &echo_v);
    }

    println!(
        "| request | {} | last / first |",
        sizes
            .iter()
            .map(|s| format!("{s} users: mean (median) ms"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}---|", "---|".repeat(sizes.len()));
    for (name, v) in &results {
        let cells: Vec<String> = v.iter().map(|(_, m, p)| format!("{m:.2} ({p:.2})")).collect();
        let ratio = v.last().unwrap().1 / v.first().unwrap().1;
        println!("| {name} | {} | {ratio:.2} × |", cells.join(" | "));
    }
}
