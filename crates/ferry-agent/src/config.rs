//! The agent's configuration (`agent.json` in the config directory).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `ferry-agent run` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The cloud's base URL.
    pub cloud_url: String,
    /// This agent's id.
    pub agent_id: String,
    /// File holding the agent token (mode 0600).
    pub agent_token_file: PathBuf,
    /// File holding the agent's X25519 secret key (mode 0600): passwords set
    /// in the cloud arrive sealed to it.
    pub agent_key_file: PathBuf,
    /// The DC: `ldaps://…` or `ldap://…` (StartTLS).
    pub ldap_url: String,
    /// CA file for the DC's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (lab only).
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// The service account, `DOMAIN\user`.
    pub bind_user: String,
    /// File holding the service account's password (mode 0600).
    pub bind_password_file: PathBuf,
}

impl AgentConfig {
    /// Reads `DIR/agent.json`.
    pub fn load(dir: &Path) -> anyhow::Result<AgentConfig> {
        let path = dir.join("agent.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e} (is the agent installed in this directory?)",
                path.display()
            )
        })?;
        let mut c: AgentConfig = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a valid agent config: {e}", path.display()))?;
        for p in [
            &mut c.agent_token_file,
            &mut c.agent_key_file,
            &mut c.bind_password_file,
        ] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        if let Some(ca) = c.ca_file.as_mut() {
            if ca.is_relative() {
                *ca = dir.join(&*ca);
            }
        }
        Ok(c)
    }

    /// Reads a secret file, trimmed of its line end.
    pub fn secret(path: &Path) -> anyhow::Result<String> {
        let s = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Ok(s.trim_end_matches(['\r', '\n']).to_owned())
    }
}
