//! The installed agent at work: load the config, open its secrets, reach
//! the cloud, sync until asked to stop. `ferry-agent run` (in a terminal or
//! under systemd) and the Windows service both come here.

use std::future::Future;
use std::path::Path;

use anyhow::Result;

use crate::ad::AdSettings;
use crate::config::AgentConfig;
use crate::sync::{self, Shared};

/// How a run ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop; the primary lease was released.
    Stopped,
    /// The cloud no longer accepts this agent (revoked in the console, or
    /// uninstalled): it must not be started again as it is.
    NotAccepted,
}

/// What to tell the admin when the cloud no longer accepts the agent.
pub const NOT_ACCEPTED: &str = "the cloud no longer accepts this agent (revoked in the console, or uninstalled): install it again with a new Connect Key";

/// Runs the agent installed in `config_dir` until `shutdown` resolves or
/// the cloud refuses it. Errors are the ones a restart will not fix without
/// the admin (a missing or unreadable config).
pub async fn installed_agent(config_dir: &Path, shutdown: impl Future<Output = ()>) -> Result<Exit> {
    let c = AgentConfig::load(config_dir)?;
    let secrets = c.secrets(config_dir)?;
    let cloud = c.cloud_client(config_dir, &secrets.agent_token)?;
    let mut ad = AdSettings::new(&c.ldap_url);
    ad.ca_file = c.ca_file.clone();
    ad.tls_fingerprint = c.tls_fingerprint.clone();
    ad.insecure_skip_tls_verify = c.insecure_skip_tls_verify;
    tokio::pin!(shutdown);
    // The domain (root DN, user OU, policies) comes from the cloud.
    let mut attempt = 0;
    let first = loop {
        match cloud.heartbeat(&Default::default()).await {
            Ok(r) => break r,
            Err(e) if e.code() == Some("agent_revoked") || e.code() == Some("invalid_token") => {
                tracing::error!(error = %e, "{NOT_ACCEPTED}");
                return Ok(Exit::NotAccepted);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the cloud yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(sync::backoff(attempt)) => {}
                    _ = &mut shutdown => return Ok(Exit::Stopped),
                }
                attempt += 1;
            }
        }
    };
    tracing::info!(agent = %c.agent_id, domain = %first.domain.name, root = %first.domain.root_dn, primary = first.primary, "ferry-agent running");
    let shared = Shared::new(
        cloud,
        ad,
        c.bind_user,
        secrets.bind_password.to_string(),
        secrets.secret_key.to_string(),
        first,
    );
    crate::metrics::attach(&shared);
    match sync::run(shared, shutdown).await {
        sync::Ended::Stopped => {
            tracing::info!("ferry-agent stopped");
            Ok(Exit::Stopped)
        }
        sync::Ended::NotAccepted => {
            tracing::error!("{NOT_ACCEPTED}");
            Ok(Exit::NotAccepted)
        }
    }
}
