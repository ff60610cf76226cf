//! The sync engine: keeps one AD domain and the cloud directory in step.
//!
//! Two directions run side by side on their own LDAP connections:
//! [`ad_to_cloud`] (full import, then DirSync increments woken by the
//! rootDSE's USN, and reconciliation for deletes) and [`cloud_to_ad`]
//! (long-poll of the cloud feed, applied to AD, then acknowledged). Only the
//! agent holding the domain's primary lease syncs; the heartbeat keeps it.

pub mod ad_to_cloud;
pub mod cloud_to_ad;
pub mod error;
pub mod protect;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::agent::{DirectionHealth, DomainInfo, HeartbeatRequest, SyncDirection};
use tokio::sync::RwLock;

use crate::ad::{AdConnection, AdError, AdSettings};
use crate::cloud::CloudClient;

/// Shared between the engine's tasks.
pub struct Shared {
    /// The cloud.
    pub cloud: CloudClient,
    /// How to reach the DC.
    pub ad: AdSettings,
    /// Service account.
    pub bind_user: String,
    /// Its password.
    pub bind_password: String,
    /// This agent's X25519 secret key (base64).
    pub secret_key: String,
    /// The domain as the cloud last described it.
    pub domain: RwLock<DomainInfo>,
    /// Holds the primary lease.
    pub primary: AtomicBool,
    /// Users and groups in scope in AD, at the last reconciliation.
    pub ad_objects: AtomicU64,
    /// Changes pushed to the cloud.
    pub pushed: AtomicU64,
    /// Changes applied to AD.
    pub applied: AtomicU64,
    /// Users the quick path pushed (found by `uSNChanged`, before any DirSync round).
    pub quick_pushed: AtomicU64,
    /// DirSync rounds applied since the import.
    pub dirsync_rounds: AtomicU64,
    /// Memberships the last full import sent while it still read AD (the
    /// rest follow the read).
    pub import_memberships_early: AtomicU64,
    /// The last error, for the heartbeat; cleared by a clean pass.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// When a direction last completed a pass without error (unix ms; 0: never).
    pub last_sync_at: AtomicI64,
    /// The domain's open sync errors, as the last heartbeat told.
    pub sync_errors: AtomicU64,
    /// The DN of the service account, once looked up (told to the cloud).
    pub service_account: std::sync::Mutex<Option<String>>,
    /// How each direction stands (told to the cloud with the heartbeat).
    pub health: std::sync::Mutex<Vec<DirectionHealth>>,
    /// The last comparison of both sides whole (told with the heartbeat).
    pub audit: std::sync::Mutex<Option<ferry_proto::audit::AuditReport>>,
    /// Held by cloud → AD from an AD object's creation until its link is
    /// recorded; every AD → cloud push waits for it. An object Ferry has
    /// just created is seen by the quick path within ~100 ms: pushed before
    /// its link, the cloud would take it for a new AD object (a second
    /// cloud user, where AD's rules changed its name).
    pub creating: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The engine's state, from the first heartbeat's answer.
    pub fn new(
        cloud: CloudClient,
        ad: AdSettings,
        bind_user: String,
        bind_password: String,
        secret_key: String,
        first: ferry_proto::agent::HeartbeatResponse,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            cloud,
            ad,
            bind_user,
            bind_password,
            secret_key,
            domain: RwLock::new(first.domain),
            primary: AtomicBool::new(first.primary),
            ad_objects: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            quick_pushed: AtomicU64::new(0),
            dirsync_rounds: AtomicU64::new(0),
            import_memberships_early: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
            last_sync_at: AtomicI64::new(0),
            sync_errors: AtomicU64::new(0),
            service_account: std::sync::Mutex::new(None),
            health: std::sync::Mutex::new(
                [SyncDirection::AdToCloud, SyncDirection::CloudToAd]
                    .into_iter()
                    .map(|direction| DirectionHealth {
                        direction,
                        last_success_at: None,
                        error: None,
                        failing_since: None,
                    })
                    .collect(),
            ),
            audit: std::sync::Mutex::new(None),
            creating: tokio::sync::Mutex::new(()),
        })
    }

    /// A fresh bound connection to the DC.
    pub async fn connect(&self) -> Result<AdConnection, AdError> {
        let mut c = AdConnection::connect(&self.ad).await?;
        c.bind(&self.bind_user, &self.bind_password).await?;
        Ok(c)
    }

    /// A direction completed a pass: AD and the cloud agree up to now.
    fn synced(&self, direction: SyncDirection) {
        let now = now_ms();
        self.last_sync_at.store(now, Ordering::SeqCst);
        self.worked(direction);
    }

    /// A direction reached both sides and found them as it expects: it is
    /// healthy (its error, if any, is over).
    pub(crate) fn worked(&self, direction: SyncDirection) {
        let now = now_ms();
        if let Ok(mut h) = self.health.lock() {
            for d in h.iter_mut().filter(|d| d.direction == direction) {
                d.last_success_at = Some(now);
                d.error = None;
                d.failing_since = None;
            }
        }
    }

    /// A direction failed; it is retried with backoff.
    fn failed(&self, direction: SyncDirection, e: &str) {
        let now = now_ms();
        if let Ok(mut h) = self.health.lock() {
            for d in h.iter_mut().filter(|d| d.direction == direction) {
                d.error = Some(e.to_owned());
                d.failing_since.get_or_insert(now);
            }
        }
    }

    /// The heartbeat itself failed (the cloud is unreachable).
    fn note_error(&self, e: Option<&str>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e.map(str::to_owned);
        }
    }

    /// The error to show first: the heartbeat's, else a direction's.
    fn current_error(&self) -> Option<String> {
        let own = self.last_error.lock().ok().and_then(|g| g.clone());
        own.or_else(|| {
            self.health
                .lock()
                .ok()
                .and_then(|h| h.iter().find_map(|d| d.error.clone()))
        })
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Retry delays: 0.5 s doubling to 4 s, with jitter (±12 %). The cap is
/// low on purpose: the agent is back within ~4.5 s of a DC or cloud that
/// returns after an outage of any length, and a try costs one connection.
pub fn backoff(attempt: u32) -> Duration {
    let base = 500u64.saturating_mul(1 << attempt.min(6)).min(4_000);
    let jitter = u64::from(std::process::id() ^ attempt.wrapping_mul(2_654_435_761)) % (base / 4 + 1);
    Duration::from_millis(base - base / 8 + jitter)
}

/// Why the engine stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `stop` resolved.
    Stopped,
    /// The cloud no longer accepts this agent (revoked or uninstalled).
    NotAccepted,
}

/// Runs the engine until `stop` resolves or the cloud revokes the agent.
pub async fn run(shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) -> Ended {
    let mut hb = tokio::spawn(heartbeat_loop(shared.clone()));
    let up = tokio::spawn(ad_to_cloud::run(shared.clone()));
    let down = tokio::spawn(cloud_to_ad::run(shared.clone()));
    let ended = tokio::select! {
        _ = stop => Ended::Stopped,
        _ = &mut hb => Ended::NotAccepted,
    };
    hb.abort();
    up.abort();
    down.abort();
    // Hand over at once rather than when the lease runs out.
    if shared.primary.swap(false, Ordering::SeqCst) {
        if let Err(e) = shared.cloud.release().await {
            tracing::warn!(error = %e, "could not release the primary lease; a standby takes over when it expires");
        }
    }
    ended
}

/// Heartbeats until the cloud stops accepting this agent (revoked in the
/// console, or uninstalled), keeping `shared.primary` and the domain
/// settings current.
pub async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut attempt = 0;
    loop {
        let req = HeartbeatRequest {
            state: if shared.primary.load(Ordering::SeqCst) {
                "syncing".into()
            } else {
                "standby".into()
            },
            last_error: shared.current_error(),
            ad_objects: shared.ad_objects.load(Ordering::SeqCst),
            pushed: shared.pushed.load(Ordering::SeqCst),
            applied: shared.applied.load(Ordering::SeqCst),
            last_sync_at: Some(shared.last_sync_at.load(Ordering::SeqCst)).filter(|t| *t > 0),
            service_account: shared.service_account.lock().ok().and_then(|g| g.clone()),
            directions: shared.health.lock().map(|h| h.clone()).unwrap_or_default(),
            audit: shared.audit.lock().ok().and_then(|a| a.clone()),
        };
        match shared.cloud.heartbeat(&req).await {
            Ok(r) => {
                attempt = 0;
                shared.note_error(None);
                let was = shared.primary.swap(r.primary, Ordering::SeqCst);
                if was != r.primary {
                    tracing::info!(
                        primary = r.primary,
                        "primary lease {}",
                        if r.primary { "taken" } else { "lost: standing by" }
                    );
                }
                *shared.domain.write().await = r.domain;
                let before = shared.sync_errors.swap(r.sync_errors, Ordering::SeqCst);
                if r.sync_errors > before {
                    tracing::warn!(
                        open = r.sync_errors,
                        "changes refused by the other side are listed as sync errors (console: the domain's Sync activity)"
                    );
                }
                // A standby asks more often, to take over soon after a release.
                let every = if r.primary {
                    Duration::from_secs(5)
                } else {
                    Duration::from_secs(2)
                };
                tokio::time::sleep(every).await;
            }
            Err(e) if matches!(e.code(), Some("agent_revoked") | Some("invalid_token")) => {
                shared.primary.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "the cloud no longer accepts this agent; stopping");
                return;
            }
            Err(e) => {
                shared.primary.store(false, Ordering::SeqCst);
                tracing::warn!(error = %e, "heartbeat failed");
                shared.note_error(Some(&e.to_string()));
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Runs one direction of the sync forever: while primary, `follow` runs
/// until it fails (then it is retried with backoff) or the lease is lost.
pub async fn supervise<F, Fut>(shared: Arc<Shared>, direction: SyncDirection, follow: F)
where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut attempt = 0;
    loop {
        wait_primary(&shared).await;
        match follow(shared.clone()).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                let label = match direction {
                    SyncDirection::AdToCloud => "AD → cloud",
                    SyncDirection::CloudToAd => "cloud → AD",
                };
                tracing::warn!(error = %e, "{label} sync failed; retrying");
                shared.failed(direction, &e);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Waits until this agent is primary.
pub async fn wait_primary(shared: &Shared) {
    while !shared.primary.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
