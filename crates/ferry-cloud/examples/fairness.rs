//! Fairness benchmark: does one org's heavy traffic stall everyone else?
//!
//! A real ferry-cloud (this crate's `serve`) on SQLite — one connection, the
//! hardest case — with USERS users. `/healthz` and an agent's heartbeat are
//! timed first with nothing else running (the baseline), then while 4 clients
//! send the heaviest legal requests back to back: unindexed filter searches
//! over the whole org (Users, Groups and `/.search`), and PATCHes adding
//! 8,000 e-mails. Prints p50/p99 of each probe, the ratio to the baseline,
//! how long the heavy requests take, and the process's peak memory. A benchmark, not a test: see
//! docs/BENCHMARKS.md.
//!
//!   cargo run --release -p ferry-cloud --example fairness -- [USERS] [SECONDS]
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cloud::app::{serve, AppState, Config};
use ferry_cloud::clock::SystemClock;
use ferry_cloud::directory::{self, WriteCtx};
use ferry_cloud::secrets::{hash_password, new_token, token_hash, API_TOKEN_PREFIX};
use ferry_cloud::store::{NewUser, Store, TokenKind};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let users: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&format!("sqlite://{}", dir.path().join("ferry.db").display()))
        .await
        .expect("store");

    // The org, its admin token, and USERS users (straight into the store).
    let token = new_token(API_TOKEN_PREFIX);
    let mut tx = store.begin().await.unwrap();
    let org = tx.insert_org("Bench", 1).await.unwrap();
    let admin = tx
        .insert_admin(org.id, "admin@bench.test", &hash_password("bench-password").unwrap(), 1)
        .await
        .unwrap();
    tx.insert_token(org.id, admin.id, TokenKind::Api, "bench", &token_hash(&token), 1, None)
        .await
        .unwrap();
    let ctx = WriteCtx {
        org_id: org.id,
        origin: "cloud".into(),
        actor: "bench".into(),
        now: 1,
    };
    for i in 0..users {
        let title = ["Engineer", "Manager", "Analyst"][i % 3];
        let user = NewUser {
            username: format!("user{i:06}"),
            external_id: None,
            active: true,
            doc: json!({"title": title, "emails": [{"value": format!("user{i}@bench.test")}]}),
            password_hash: None,
        };
        directory::create_user(&mut tx, &ctx, user, None).await.unwrap();
    }
    tx.commit().await.unwrap();

    let state = AppState::new(store.clone(), Arc::new(SystemClock), Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { serve(listener, state, std::future::pending()).await.unwrap() });
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>| {
        let mut req = http.request(method, format!("{base}{path}")).bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };

    // An agent, for its heartbeat.
    let d: Value = call(
        reqwest::Method::POST,
        "/api/v1/domains",
        &token,
        Some(json!({"name": "bench.test"})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let k: Value = call(
        reqwest::Method::POST,
        &format!("/api/v1/domains/{}/connect-keys", d["id"].as_str().unwrap()),
        &token,
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let public_key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let reg: Value = call(
        reqwest::Method::POST,
        "/agent/v1/register",
        "",
        Some(json!({"connect_key": k["connect_key"], "hostname": "dc1.bench.test", "version": "0.1.0", "public_key": public_key})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let agent = reg["agent_token"].as_str().expect("agent registered").to_owned();
    let heartbeat =
        json!({"state": "idle", "last_error": null, "ad_objects": 0, "pushed": 0, "applied": 0, "last_sync_at": null});

    // The probes: /healthz and a heartbeat, one after the other, for `secs`.
    let probe = |label: &'static str| {
        let http = http.clone();
        let base = base.clone();
        let agent = agent.clone();
        let heartbeat = heartbeat.clone();
        async move {
            let mut health = Vec::new();
            let mut beat = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let t = Instant::now();
                let r = http.get(format!("{base}/healthz")).send().await.unwrap();
                assert!(r.status().is_success());
                health.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/agent/v1/heartbeat"))
                    .bearer_auth(&agent)
                    .json(&heartbeat)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                beat.push(t.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (label, health, beat)
        }
    };

    println!("fairness: ferry-cloud on SQLite, {users} users, {secs} s per phase");
    let idle = probe("idle").await;

    // Heavy clients: each loops over the heaviest requests it may send.
    let stop = Arc::new(AtomicBool::new(false));
    let victim: Value = call(reqwest::Method::GET, "/scim/v2/Users?count=1", &token, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let victim = victim["Resources"][0]["id"].as_str().unwrap().to_owned();
    let mut heavy = Vec::new();
    for c in 0..4 {
        let (http, base, token, stop, victim) =
            (http.clone(), base.clone(), token.clone(), stop.clone(), victim.clone());
        heavy.push(tokio::spawn(async move {
            let mut took: Vec<(&'static str, f64)> = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (what, req) = match (c + n) % 4 {
                    0 => (
                        "unindexed Users filter",
                        http.get(format!(
                            "{base}/scim/v2/Users?filter=title%20eq%20%22analyst%22%20and%20emails%20co%20%22bench%22&startIndex=5000&count=100"
                        )),
                    ),
                    1 => (
                        "/.search over everything",
                        http.post(format!("{base}/scim/v2/.search"))
                            .json(&json!({"filter": "meta.created pr", "startIndex": 1, "count": 1000})),
                    ),
                    2 => {
                        let emails: Vec<Value> =
                            (0..8000).map(|i| json!({"value": format!("x{n}-{i}@bench.test")})).collect();
                        (
                            "PATCH adding 8,000 e-mails",
                            http.patch(format!("{base}/scim/v2/Users/{victim}")).json(&json!({
                                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                "Operations": [{"op": "replace", "path": "emails", "value": emails}]
                            })),
                        )
                    }
                    _ => (
                        "Groups filter",
                        http.get(format!("{base}/scim/v2/Groups?filter=displayName%20co%20%22x%22")),
                    ),
                };
                let r = req.bearer_auth(&token).send().await.unwrap();
                assert!(r.status().is_success(), "{what}: {}", r.status());
                let _ = r.bytes().await;
                took.push((what, t.elapsed().as_secs_f64() * 1000.0));
                n += 1;
            }
            took
        }));
    }
    let loaded = probe("under load").await;
    stop.store(true, Ordering::Relaxed);
    let mut took = Vec::new();
    for h in heavy {
        took.extend(h.await.unwrap());
    }

    let pct = |v: &[f64], p: f64| -> f64 {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    println!("| probe | phase | n | p50 ms | p99 ms | p99 / idle p99 |");
    println!("|---|---|---|---|---|---|");
    for (name, idle_v, loaded_v) in [("/healthz", &idle.1, &loaded.1), ("heartbeat", &idle.2, &loaded.2)] {
        for (label, v) in [(idle.0, idle_v), (loaded.0, loaded_v)] {
            println!(
                "| {name} | {label} | {} | {:.1} | {:.1} | {:.1} × |",
                v.len(),
                pct(v, 0.5),
                pct(v, 0.99),
                pct(v, 0.99) / pct(idle_v, 0.99)
            );
        }
    }
    // The process's high-water mark: the heavy searches must not hold a whole org.
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.trim().to_owned()))
        .unwrap_or_default();
    println!("peak memory of the process (store, server and clients): {hwm}");
    println!("| heavy request | n | p50 ms | max ms |");
    println!("|---|---|---|---|");
    for what in [
        "unindexed Users filter",
        "/.search over everything",
        "PATCH adding 8,000 e-mails",
        "Groups filter",
    ] {
        let v: Vec<f64> = took.iter().filter(|(w, _)| *w == what).map(|(_, t)| *t).collect();
        if !v.is_empty() {
            println!("| {what} | {} | {:.0} | {:.0} |", v.len(), pct(&v, 0.5), pct(&v, 1.0));
        }
    }
}
