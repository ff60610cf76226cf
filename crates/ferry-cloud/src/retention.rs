//! The retention task: every `Config::retention_interval` it prunes what
//! no one will read again (store/upkeep.rs says what, and how safely).

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::app::AppState;

/// Prunes now, then every interval, until the process ends.
pub async fn run(state: AppState) {
    let Some(interval) = state.config.retention_interval else {
        return;
    };
    loop {
        prune_once(&state).await;
        tokio::time::sleep(interval).await;
    }
}

/// One pass; failures are logged and counted, the next pass tries again.
pub async fn prune_once(state: &AppState) {
    let m = crate::metrics::global();
    let started = Instant::now();
    match state.store.prune(&state.config.retention, state.now()).await {
        Ok(p) => {
            m.retention_run.observe(started.elapsed());
            m.pruned_feed.fetch_add(p.feed, Ordering::Relaxed);
            m.pruned_audit.fetch_add(p.audit, Ordering::Relaxed);
            m.pruned_sessions.fetch_add(p.sessions, Ordering::Relaxed);
            m.pruned_connect_keys.fetch_add(p.connect_keys, Ordering::Relaxed);
            m.pruned_sign_in_failures
                .fetch_add(p.sign_in_failures, Ordering::Relaxed);
            if p != crate::store::Pruned::default() {
                tracing::info!(
                    feed = p.feed,
                    audit = p.audit,
                    sessions = p.sessions,
                    connect_keys = p.connect_keys,
                    sign_in_failures = p.sign_in_failures,
                    "retention: pruned"
                );
            }
        }
        Err(e) => {
            m.retention_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "retention: pruning failed; trying again at the next interval");
        }
    }
}
