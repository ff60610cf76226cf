//! Prometheus metrics of the agent: `ferry-agent run --metrics-listen
//! 127.0.0.1:9465` serves `GET /metrics` (text exposition format, written
//! by hand) on a loopback address, unless `--metrics-allow-remote`.
//!
//! Figures: changes pushed to the cloud and applied to AD (counters, so
//! Prometheus's `rate()` gives events per second), push requests,
//! reconciliation time, the age of the last cloud change when it reached AD,
//! the time since the last clean pass, the primary lease, the domain's open
//! sync errors. No label names a user, a DN or a secret.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sync::Shared;

/// Counters the engine bumps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Push requests the cloud accepted.
    pub pushes: AtomicU64,
    /// Push requests that failed (retried).
    pub push_failures: AtomicU64,
    /// Reconciliation passes, and their total time (µs), and the last one's.
    pub reconciliations: AtomicU64,
    /// See `reconciliations`.
    pub reconciliation_micros: AtomicU64,
    /// See `reconciliations`.
    pub last_reconciliation_micros: AtomicU64,
    /// Age (ms) of the last cloud change when it was applied to AD.
    pub last_cloud_to_ad_lag_ms: AtomicU64,
    /// Comparisons of both sides whole, objects found different, repairs
    /// that changed something, and cloud changes sent down again.
    pub audits: AtomicU64,
    /// See `audits`.
    pub drift_found: AtomicU64,
    /// See `audits`.
    pub drift_repaired: AtomicU64,
    /// See `audits`.
    pub drift_resent: AtomicU64,
    engine: Mutex<Option<Weak<Shared>>>,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// The running engine, whose state the metrics show.
pub fn attach(shared: &Arc<Shared>) {
    if let Ok(mut e) = global().engine.lock() {
        *e = Some(Arc::downgrade(shared));
    }
}

/// Times a reconciliation pass while it lives.
pub struct ReconciliationTimer(Instant);

impl ReconciliationTimer {
    /// Starts timing.
    pub fn start() -> Self {
        ReconciliationTimer(Instant::now())
    }
}

impl Drop for ReconciliationTimer {
    fn drop(&mut self) {
        let m = global();
        let us = u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX);
        m.reconciliations.fetch_add(1, Ordering::Relaxed);
        m.reconciliation_micros.fetch_add(us, Ordering::Relaxed);
        m.last_reconciliation_micros.store(us, Ordering::Relaxed);
    }
}

/// A comparison of both sides whole ended.
pub fn audited(r: &ferry_proto::audit::AuditReport) {
    let m = global();
    m.audits.fetch_add(1, Ordering::Relaxed);
    m.drift_found.fetch_add(r.differed, Ordering::Relaxed);
    m.drift_repaired.fetch_add(r.repaired, Ordering::Relaxed);
    m.drift_resent.fetch_add(r.resent, Ordering::Relaxed);
}

/// A cloud change written at `at` (unix ms) is now in AD.
pub fn cloud_change_applied(at: i64) {
    let age = (now_ms() - at).max(0);
    global()
        .last_cloud_to_ad_lag_ms
        .store(u64::try_from(age).unwrap_or(0), Ordering::Relaxed);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The exposition.
pub fn render() -> String {
    let m = global();
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    line(
        "ferry_agent_pushes_total",
        "counter",
        "Push requests (AD changes to the cloud) the cloud accepted.",
        load(&m.pushes).to_string(),
    );
    line(
        "ferry_agent_push_failures_total",
        "counter",
        "Push requests that failed and are retried.",
        load(&m.push_failures).to_string(),
    );
    line(
        "ferry_agent_reconciliations_total",
        "counter",
        "Reconciliation passes (deletes and moves found by comparing GUID sets).",
        load(&m.reconciliations).to_string(),
    );
    line(
        "ferry_agent_reconciliation_seconds_total",
        "counter",
        "Time spent reconciling.",
        secs(load(&m.reconciliation_micros)),
    );
    line(
        "ferry_agent_last_reconciliation_seconds",
        "gauge",
        "How long the last reconciliation took.",
        secs(load(&m.last_reconciliation_micros)),
    );
    for (name, help, v) in [
        (
            "ferry_agent_audits_total",
            "Comparisons of both sides whole (anti-entropy).",
            &m.audits,
        ),
        (
            "ferry_agent_drift_found_total",
            "Objects a comparison found different in AD and the cloud.",
            &m.drift_found,
        ),
        (
            "ferry_agent_drift_repaired_total",
            "Of those, the ones whose repair changed the cloud.",
            &m.drift_repaired,
        ),
        (
            "ferry_agent_drift_resent_total",
            "Cloud changes that had not reached AD, sent down again.",
            &m.drift_resent,
        ),
    ] {
        line(name, "counter", help, load(v).to_string());
    }
    line(
        "ferry_agent_cloud_to_ad_lag_seconds",
        "gauge",
        "Age of the last cloud change when it was applied to AD.",
        secs(load(&m.last_cloud_to_ad_lag_ms).saturating_mul(1000)),
    );
    let engine = m.engine.lock().ok().and_then(|e| e.as_ref().and_then(Weak::upgrade));
    if let Some(s) = engine {
        line(
            "ferry_agent_ad_changes_pushed_total",
            "counter",
            "AD changes the cloud applied.",
            s.pushed.load(Ordering::Relaxed).to_string(),
        );
        line(
            "ferry_agent_quick_path_users_total",
            "counter",
            "AD users pushed by the quick path (found by uSNChanged, ahead of DirSync).",
            s.quick_pushed.load(Ordering::Relaxed).to_string(),
        );
        line(
            "ferry_agent_dirsync_rounds_total",
            "counter",
            "DirSync rounds applied (the record of AD's changes).",
            s.dirsync_rounds.load(Ordering::Relaxed).to_string(),
        );
        line(
            "ferry_agent_cloud_changes_applied_total",
            "counter",
            "Cloud changes applied to AD.",
            s.applied.load(Ordering::Relaxed).to_string(),
        );
        line(
            "ferry_agent_primary",
            "gauge",
            "1 while this agent holds the domain's primary lease.",
            u8::from(s.primary.load(Ordering::Relaxed)).to_string(),
        );
        line(
            "ferry_agent_ad_objects",
            "gauge",
            "Users and groups in scope in AD at the last reconciliation.",
            s.ad_objects.load(Ordering::Relaxed).to_string(),
        );
        line(
            "ferry_agent_sync_errors_open",
            "gauge",
            "The domain's open sync errors, as the cloud last told.",
            s.sync_errors.load(Ordering::Relaxed).to_string(),
        );
        let last = s.last_sync_at.load(Ordering::Relaxed);
        let since = if last == 0 {
            "NaN".to_owned()
        } else {
            format!("{}", (now_ms() - last).max(0) as f64 / 1000.0)
        };
        line(
            "ferry_agent_seconds_since_last_sync",
            "gauge",
            "Time since a direction last completed a pass without error (NaN: never).",
            since,
        );
    }
    out
}

fn secs(micros: u64) -> String {
    format!("{}", micros as f64 / 1e6)
}

/// Where `--metrics-listen` may point.
pub fn check_address(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "--metrics-listen {addr} is not a loopback address: use 127.0.0.1:PORT (or --metrics-allow-remote, behind a firewall)"
        ))
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. A request
/// is one line and headers, read within 5 s and 8 KiB; anything else is 404.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let (status, body) = if buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?") {
                ("200 OK", render())
            } else {
                ("404 Not Found", "only GET /metrics here\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        assert!(check_address("127.0.0.1:9465".parse().unwrap(), false).is_ok());
        assert!(check_address("[::1]:9465".parse().unwrap(), false).is_ok());
        assert!(check_address("0.0.0.0:9465".parse().unwrap(), false).is_err());
        assert!(check_address("0.0.0.0:9465".parse().unwrap(), true).is_ok());
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener));
        global().pushes.fetch_add(1, Ordering::Relaxed);
        {
            let _t = ReconciliationTimer::start();
        }
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\nferry_agent_pushes_total "), "{ok}");
        assert!(ok.contains("\nferry_agent_reconciliations_total "), "{ok}");
        let other = get("/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        server.abort();
    }
}
