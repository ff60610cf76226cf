//! Pushing AD changes to the cloud: each push carries the cookie it was
//! read from and the one it moves to (compare-and-swap in the cloud).

use std::sync::atomic::Ordering;

use ferry_proto::agent::{AdChange, PushChangesRequest};

use crate::sync::Shared;

pub(super) async fn push(
    shared: &Shared,
    cookie: &mut Option<String>,
    to: String,
    changes: Vec<AdChange>,
) -> Result<(), String> {
    let n = changes.len();
    let req = PushChangesRequest {
        from_cookie: cookie.clone(),
        to_cookie: Some(to.clone()),
        changes,
    };
    let r = shared.cloud.push(&req).await.map_err(|e| e.to_string())?;
    shared.pushed.fetch_add(r.applied, Ordering::SeqCst);
    if r.applied > 0 || r.quarantined > 0 {
        tracing::info!(sent = n, applied = r.applied, quarantined = r.quarantined, "AD → cloud");
    }
    *cookie = Some(to);
    Ok(())
}
