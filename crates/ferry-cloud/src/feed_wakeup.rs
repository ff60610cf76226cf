//! Waking feed long-polls across instances. On PostgreSQL a commit that grew
//! a feed sends `NOTIFY ferry_feed` (store/journal.rs); every instance
//! listens on its own connection and wakes its long-polls at once. If the
//! listener drops, the long-poll's periodic re-read (`Config::feed_reread`)
//! still finds the entries, and the listener reconnects.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::app::AppState;

/// Listens until the process ends (PostgreSQL only; returns at once on SQLite).
pub async fn listen(state: AppState) {
    let m = crate::metrics::global();
    loop {
        let mut listener = match state.store.listen_feed().await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "feed listener: cannot listen on PostgreSQL; long-polls re-read periodically meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        m.feed_listener_connects.fetch_add(1, Ordering::Relaxed);
        m.feed_listener_up.store(1, Ordering::Relaxed);
        // Anything written while we were not listening: look now.
        state.feed_grew.notify_waiters();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    m.feed_notifications.fetch_add(1, Ordering::Relaxed);
                    state.feed_grew.notify_waiters();
                }
                // The connection dropped; notifications may have been
                // missed: wake everyone, then reconnect.
                Ok(None) | Err(_) => {
                    m.feed_listener_up.store(0, Ordering::Relaxed);
                    tracing::warn!("feed listener: the PostgreSQL connection dropped; reconnecting");
                    state.feed_grew.notify_waiters();
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
