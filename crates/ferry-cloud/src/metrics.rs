//! The process's metrics: counters and histograms every module may bump
//! (a leaf: it imports nothing of the crate). `metrics_endpoint.rs` writes
//! them out for Prometheus.
//!
//! Labels never grow with users or requests: requests are counted by route
//! class (`api`, `scim`, `agent_feed`, …), method and status class; the
//! feed and sync-error figures are per domain (a handful per org). No
//! label or value is a secret, a user name or a path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;

/// Upper bounds (seconds) of every latency histogram.
const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram with [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Writes the histogram's lines under `name` with `labels` (`a="b",…`).
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// A request's class: bounded, whatever the path.
pub type RequestKey = (&'static str, &'static str, &'static str);

/// Every metric the process keeps (the per-domain figures are read from
/// the store at each scrape instead).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests by (route class, method, status class).
    pub requests: Mutex<BTreeMap<RequestKey, Histogram>>,
    /// Waits for a store connection.
    pub store_acquire: Histogram,
    /// Commits.
    pub store_commit: Histogram,
    /// Transactions that committed, from begin to commit.
    pub store_transaction: Histogram,
    /// Feed notifications received from PostgreSQL (another instance's, or our own, writes).
    pub feed_notifications: AtomicU64,
    /// Times the PostgreSQL listener (re)connected.
    pub feed_listener_connects: AtomicU64,
    /// 1 while the PostgreSQL listener is connected.
    pub feed_listener_up: AtomicU64,
    /// Feed long-polls waiting now.
    pub feed_polls_waiting: AtomicU64,
    /// Rows retention deleted, by kind.
    pub pruned_feed: AtomicU64,
    /// See `pruned_feed`.
    pub pruned_audit: AtomicU64,
    /// See `pruned_feed`.
    pub pruned_sessions: AtomicU64,
    /// See `pruned_feed`.
    pub pruned_connect_keys: AtomicU64,
    /// See `pruned_feed`.
    pub pruned_sign_in_failures: AtomicU64,
    /// Retention passes that failed.
    pub retention_failures: AtomicU64,
    /// How long retention passes took.
    pub retention_run: Histogram,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// The route class of a path: a fixed set, so labels stay bounded.
pub fn route_class(path: &str) -> &'static str {
    const CLASSES: [(&str, &str); 9] = [
        ("/agent/v1/feed", "agent_feed"),
        ("/agent/v1/changes", "agent_push"),
        ("/agent/v1/heartbeat", "agent_heartbeat"),
        ("/agent/v1", "agent"),
        ("/api/v1", "api"),
        ("/scim/v2", "scim"),
        ("/downloads", "downloads"),
        ("/healthz", "health"),
        ("/metrics", "metrics"),
    ];
    CLASSES
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or("console", |(_, class)| class)
}

/// The method as a label (a fixed set).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

/// The status as a label: `2xx`, `4xx`…
pub fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes_are_a_fixed_set() {
        assert_eq!(route_class("/agent/v1/feed"), "agent_feed");
        assert_eq!(route_class("/agent/v1/me"), "agent");
        assert_eq!(route_class("/scim/v2/Users/7d1c…"), "scim");
        assert_eq!(route_class("/users/alice"), "console");
        assert_eq!(route_class("/api/v1/domains/x/resync"), "api");
    }

    #[test]
    fn a_histogram_counts_into_every_bucket_above() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"60\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 2\n"), "{out}");
    }
}
