//! `GET /metrics` in Prometheus's text exposition format, written by hand
//! (a few counters and histograms need no crate), and the middleware that
//! times requests.
//!
//! Who may read them: a client with the metrics bearer token
//! (`--metrics-token`) on the service's own address, or anyone who can
//! reach `--metrics-listen` (a loopback address unless a token is set).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::metrics::{global, method_label, route_class, status_class};

/// Middleware: times every request by route class, method and status class.
pub async fn track_requests(req: Request, next: axum::middleware::Next) -> Response {
    let class = route_class(req.uri().path());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let key = (class, method, status_class(resp.status()));
    let mut requests = global().requests.lock().unwrap_or_else(|p| p.into_inner());
    requests.entry(key).or_default().observe(started.elapsed());
    resp
}

/// `GET /metrics` on the service's own address: only with the metrics token.
pub async fn scrape_with_token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(expected) = state.config.metrics_token_hash.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let given = crate::secrets::token_hash(given);
    if !crate::secrets::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the metrics token is missing or wrong\n",
        )
            .into_response();
    }
    scrape(State(state)).await
}

/// `GET /metrics` on `--metrics-listen`: who can connect may read.
pub async fn scrape(State(state): State<AppState>) -> Response {
    match render(&state).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: the store did not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the store did not answer\n").into_response()
        }
    }
}

/// The whole exposition.
pub async fn render(state: &AppState) -> Result<String, crate::store::StoreError> {
    let m = global();
    let mut out = String::new();
    out.push_str("# HELP ferry_http_request_duration_seconds Requests by route class, method and status class.\n");
    out.push_str("# TYPE ferry_http_request_duration_seconds histogram\n");
    {
        let requests = m.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((class, method, status), h) in requests.iter() {
            let labels = format!("route=\"{class}\",method=\"{method}\",status=\"{status}\"");
            h.write(&mut out, "ferry_http_request_duration_seconds", &labels);
        }
    }
    for (name, help, h) in [
        (
            "ferry_store_acquire_seconds",
            "Waits for a store connection.",
            &m.store_acquire,
        ),
        ("ferry_store_commit_seconds", "Store commits.", &m.store_commit),
        (
            "ferry_store_transaction_seconds",
            "Committed store transactions, begin to commit.",
            &m.store_transaction,
        ),
        ("ferry_retention_run_seconds", "Retention passes.", &m.retention_run),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        h.write(&mut out, name, "");
    }
    let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    };
    counter(
        &mut out,
        "ferry_feed_notifications_total",
        "Feed notifications received from PostgreSQL.",
        &m.feed_notifications,
    );
    counter(
        &mut out,
        "ferry_feed_listener_connects_total",
        "Connections of the PostgreSQL feed listener.",
        &m.feed_listener_connects,
    );
    counter(
        &mut out,
        "ferry_retention_failures_total",
        "Retention passes that failed.",
        &m.retention_failures,
    );
    out.push_str("# HELP ferry_retention_deleted_total Rows retention deleted.\n");
    out.push_str("# TYPE ferry_retention_deleted_total counter\n");
    for (kind, v) in [
        ("feed", &m.pruned_feed),
        ("audit", &m.pruned_audit),
        ("sessions", &m.pruned_sessions),
        ("connect_keys", &m.pruned_connect_keys),
        ("sign_in_failures", &m.pruned_sign_in_failures),
    ] {
        let _ = writeln!(
            out,
            "ferry_retention_deleted_total{{kind=\"{kind}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        &mut out,
        "ferry_feed_listener_up",
        "1 while the PostgreSQL feed listener is connected (0 on SQLite).",
        m.feed_listener_up.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "ferry_feed_polls_waiting",
        "Feed long-polls waiting now.",
        m.feed_polls_waiting.load(Ordering::Relaxed),
    );

    // Per domain, from the store.
    let now = state.now();
    let lags = state.store.domain_lags().await?;
    out.push_str("# HELP ferry_feed_lag_entries Feed entries a domain's agent has not acknowledged.\n");
    out.push_str("# TYPE ferry_feed_lag_entries gauge\n");
    for l in &lags {
        let _ = writeln!(
            out,
            "ferry_feed_lag_entries{{org=\"{}\",domain=\"{}\"}} {}",
            l.org_id,
            l.domain_id,
            (l.head - l.cursor).max(0)
        );
    }
    out.push_str(
        "# HELP ferry_feed_lag_seconds Age of the oldest feed entry a domain's agent has not acknowledged (0 when none).\n",
    );
    out.push_str("# TYPE ferry_feed_lag_seconds gauge\n");
    for l in &lags {
        let age = l
            .oldest_unacknowledged_at
            .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "ferry_feed_lag_seconds{{org=\"{}\",domain=\"{}\"}} {age}",
            l.org_id, l.domain_id
        );
    }
    let errors = state.store.open_sync_errors_by_domain().await?;
    out.push_str("# HELP ferry_sync_errors_open Open sync errors per domain and direction.\n");
    out.push_str("# TYPE ferry_sync_errors_open gauge\n");
    let orgs: BTreeMap<_, _> = lags.iter().map(|l| (l.domain_id, l.org_id)).collect();
    for (domain, direction, n) in errors {
        let org = orgs.get(&domain).map(ToString::to_string).unwrap_or_default();
        let direction = if direction == "ad_to_cloud" {
            "ad_to_cloud"
        } else {
            "cloud_to_ad"
        };
        let _ = writeln!(
            out,
            "ferry_sync_errors_open{{org=\"{org}\",domain=\"{domain}\",direction=\"{direction}\"}} {n}"
        );
    }
    Ok(out)
}
