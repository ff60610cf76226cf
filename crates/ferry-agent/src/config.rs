//! The agent's configuration directory, as `ferry-agent install` writes it:
//!
//! - `agent.json` (0600): where the cloud and the DC are, the service
//!   account's name, and two sealed secrets: the agent token and the service
//!   account's password. Neither is in the file in plaintext.
//! - `agent.key` (0600): the agent's X25519 secret key. Passwords set in the
//!   cloud arrive sealed to it, and it opens the two secrets above.
//! - `dc-ca.pem`: a copy of the DC's CA certificate, when one was given, so
//!   the install does not depend on where the admin kept it.
//!
//! What the sealing buys: `agent.json` can be read, backed up, attached to a
//! support ticket or leaked without giving away a password or token; both
//! need `agent.key` too, which never leaves the host. How `agent.key` is kept
//! is the platform's ([`crate::platform`]): on Unix a file `run` refuses to
//! use while anyone but its owner can read it; on Windows a DPAPI blob
//! (machine scope: useless on another machine) in a directory only SYSTEM
//! and Administrators may open. What it does not: root (or an
//! Administrator) on the agent's host can read both (as on any OS without a
//! hardware key store).
//!
//! The directory is written whole or not at all: into a staging directory
//! beside it, then renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ferry_proto::cloud_pin::Pin;
use ferry_proto::seal::{self, Sealed};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cloud::{CloudClient, CloudError, Pins};
use crate::platform::{create_private_dir, read_secret, write_private, write_secret};

/// The config file in the config directory.
pub const CONFIG_FILE: &str = "agent.json";
/// The agent's secret key in the config directory.
pub const KEY_FILE: &str = "agent.key";
/// The copy of the DC's CA certificate.
pub const CA_FILE: &str = "dc-ca.pem";

/// `agent.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Format version (1).
    pub version: u32,
    /// The cloud's base URL.
    pub cloud_url: String,
    /// The cloud's TLS key, trusted by its pin (`AB:CD:…`, the SHA-256 of
    /// its public key) instead of the OS trust store: from the Connect Key,
    /// a vouched rotation, or `ferry-agent trust`. Empty: the OS trust store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cloud_pins: Vec<String>,
    /// This agent's id.
    pub agent_id: Uuid,
    /// The domain's DNS name, for people reading the file.
    pub domain: String,
    /// The Root DN checked at install.
    pub root_dn: String,
    /// The DC: `ldaps://…` or `ldap://…` (StartTLS).
    pub ldap_url: String,
    /// CA file for the DC's certificate (relative: in the config directory).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The DC's certificate, trusted by its SHA-256 (`AB:CD:…`) instead of a
    /// CA: a self-signed certificate the admin compared and pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Skip certificate verification (lab only).
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// The service account, `DOMAIN\user`.
    pub bind_user: String,
    /// The agent token, sealed to `agent.key`.
    pub agent_token: Sealed,
    /// The service account's password, sealed to `agent.key`.
    pub bind_password: Sealed,
    /// The service the installer set up, if any (the systemd unit, or the Windows service).
    #[serde(default)]
    pub service: Option<String>,
    /// When it was installed (unix ms).
    #[serde(default)]
    pub installed_at: i64,
}

/// The secrets `run` needs, opened.
pub struct AgentSecrets {
    /// Bearer token for the cloud.
    pub agent_token: Zeroizing<String>,
    /// The service account's password.
    pub bind_password: Zeroizing<String>,
    /// The agent's X25519 secret key (base64).
    pub secret_key: Zeroizing<String>,
}

fn context(agent_id: Uuid, what: &str) -> String {
    format!("ferry-agent config v1 {what} {agent_id}")
}

impl AgentConfig {
    /// Seals the two secrets into a config for `agent_id`.
    pub fn seal_secrets(
        secret_key: &str,
        agent_id: Uuid,
        agent_token: &str,
        bind_password: &str,
    ) -> Result<(Sealed, Sealed)> {
        let pk = seal::public_key(secret_key).map_err(|e| anyhow!("the agent key: {e}"))?;
        let t = seal::seal(&pk, &context(agent_id, "agent_token"), agent_token.as_bytes())
            .map_err(|e| anyhow!("sealing the agent token: {e}"))?;
        let p = seal::seal(&pk, &context(agent_id, "bind_password"), bind_password.as_bytes())
            .map_err(|e| anyhow!("sealing the password: {e}"))?;
        Ok((t, p))
    }

    /// The pinned cloud keys (unreadable entries are skipped; `install` and
    /// `trust` write only valid ones).
    pub fn cloud_pins(&self) -> Vec<Pin> {
        self.cloud_pins.iter().filter_map(|p| Pin::parse(p).ok()).collect()
    }

    /// A client for this agent's cloud: pinned when the config pins a key
    /// (a rotation the cloud vouches for is recorded in `dir`), else
    /// trusting the OS trust store.
    pub fn cloud_client(&self, dir: &Path, token: &str) -> Result<CloudClient, CloudError> {
        let pins = self.cloud_pins();
        let pins = (!pins.is_empty()).then(|| Pins::new(pins, Some(dir.to_owned())));
        CloudClient::with_pins(&self.cloud_url, token, pins)
    }

    /// Whether `dir` holds an installed agent.
    pub fn exists(dir: &Path) -> bool {
        dir.join(CONFIG_FILE).exists()
    }

    /// Reads `DIR/agent.json`.
    pub fn load(dir: &Path) -> Result<AgentConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow!(
                "cannot read {}: {e} (is the agent installed there? `ferry-agent install` writes it)",
                path.display()
            )
        })?;
        let mut c: AgentConfig =
            serde_json::from_str(&text).map_err(|e| anyhow!("{} is not a valid agent config: {e}", path.display()))?;
        if c.version != 1 {
            bail!(
                "{} has format version {}; this agent reads version 1",
                path.display(),
                c.version
            );
        }
        if let Some(ca) = c.ca_file.as_mut() {
            if ca.is_relative() {
                *ca = dir.join(&*ca);
            }
        }
        Ok(c)
    }

    /// Opens the sealed secrets with `DIR/agent.key`, which must be readable
    /// by its owner only.
    pub fn secrets(&self, dir: &Path) -> Result<AgentSecrets> {
        let key_path = dir.join(KEY_FILE);
        let secret_key = read_secret(&key_path)?;
        let open = |what: &str, s: &Sealed| -> Result<Zeroizing<String>> {
            let bytes = seal::open(&secret_key, &context(self.agent_id, what), s).map_err(|e| {
                anyhow!(
                    "cannot open the {what} in {}: {e} ({} does not belong with this config; install the agent again)",
                    dir.join(CONFIG_FILE).display(),
                    key_path.display()
                )
            })?;
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| anyhow!("the {what} is not text"))?;
            Ok(Zeroizing::new(text))
        };
        Ok(AgentSecrets {
            agent_token: open("agent_token", &self.agent_token)?,
            bind_password: open("bind_password", &self.bind_password)?,
            secret_key,
        })
    }
}

/// Records the cloud's trusted keys in `DIR/agent.json` (replacing the
/// ones before), leaving everything else in the file as it is.
pub fn save_cloud_pins(dir: &Path, pins: &[Pin]) -> Result<()> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid agent config", path.display()))?;
    let obj = json
        .as_object_mut()
        .ok_or_else(|| anyhow!("{} is not a valid agent config", path.display()))?;
    obj.insert(
        "cloud_pins".into(),
        serde_json::Value::from(pins.iter().map(Pin::to_hex).collect::<Vec<_>>()),
    );
    let staged = dir.join(format!(".{CONFIG_FILE}.new"));
    write_private(&staged, &serde_json::to_vec_pretty(&json)?)?;
    std::fs::rename(&staged, &path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Writes a whole config directory at `dir`: staged beside it, then renamed
/// into place (replacing an older install, whose files are removed). On
/// error nothing is left behind and an existing install is untouched.
pub fn write_dir(dir: &Path, config: &AgentConfig, secret_key: &str, ca_source: Option<&Path>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let staging = parent.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    create_private_dir(&staging)?;
    let result = (|| -> Result<()> {
        let mut config = config.clone();
        if let Some(src) = ca_source {
            let pem = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
            write_private(&staging.join(CA_FILE), &pem)?;
            config.ca_file = Some(PathBuf::from(CA_FILE));
        }
        write_secret(&staging.join(KEY_FILE), secret_key)?;
        let json = serde_json::to_vec_pretty(&config)?;
        write_private(&staging.join(CONFIG_FILE), &json)?;
        swap_into_place(&staging, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn swap_into_place(staging: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(staging, dir).with_context(|| format!("cannot create {}", dir.display()));
    }
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::rename(dir, &old).with_context(|| format!("cannot move the old {} aside", dir.display()))?;
    if let Err(e) = std::fs::rename(staging, dir) {
        let _ = std::fs::rename(&old, dir);
        return Err(e).with_context(|| format!("cannot create {}", dir.display()));
    }
    remove_install(&old)?;
    Ok(())
}

/// Removes the files an install wrote in `dir`, then `dir` if that left it
/// empty (an admin's own files there are kept).
pub fn remove_install(dir: &Path) -> Result<()> {
    for f in [CONFIG_FILE, KEY_FILE, CA_FILE] {
        match std::fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", dir.join(f).display())),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // Not empty: the admin's files stay.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(secret_key: &str, id: Uuid) -> AgentConfig {
        let (t, p) = AgentConfig::seal_secrets(secret_key, id, "fca_token", "Svc-Pa55!").unwrap();
        AgentConfig {
            version: 1,
            cloud_url: "http://127.0.0.1:1".into(),
            cloud_pins: Vec::new(),
            agent_id: id,
            domain: "example.test".into(),
            root_dn: "DC=example,DC=test".into(),
            ldap_url: "ldaps://dc".into(),
            ca_file: None,
            tls_fingerprint: None,
            insecure_skip_tls_verify: false,
            bind_user: "EXAMPLE\\svc".into(),
            agent_token: t,
            bind_password: p,
            service: None,
            installed_at: 1,
        }
    }

    #[test]
    fn written_whole_private_and_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        let (sk, _) = seal::generate_keypair();
        let id = Uuid::new_v4();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        write_dir(&dir, &sample(&sk, id), &sk, Some(&ca)).unwrap();
        #[cfg(unix)]
        for f in [CONFIG_FILE, KEY_FILE, CA_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        // The key is not in the file as it is used (on Windows it is a DPAPI blob).
        let key_file = std::fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        assert_eq!(key_file.trim() == sk, cfg!(unix), "{key_file}");
        let json = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        assert!(!json.contains("Svc-Pa55!") && !json.contains("fca_token"), "{json}");
        let c = AgentConfig::load(&dir).unwrap();
        assert_eq!(c.ca_file.as_deref(), Some(dir.join(CA_FILE).as_path()));
        let s = c.secrets(&dir).unwrap();
        assert_eq!(s.agent_token.as_str(), "fca_token");
        assert_eq!(s.bind_password.as_str(), "Svc-Pa55!");
        // No staging directory is left beside it.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");

        // A replacement swaps the whole directory.
        let (sk2, _) = seal::generate_keypair();
        write_dir(&dir, &sample(&sk2, id), &sk2, None).unwrap();
        assert!(!dir.join(CA_FILE).exists());
        assert_eq!(
            AgentConfig::load(&dir)
                .unwrap()
                .secrets(&dir)
                .unwrap()
                .bind_password
                .as_str(),
            "Svc-Pa55!"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    fn secrets_error(dir: &Path) -> String {
        match AgentConfig::load(dir).unwrap().secrets(dir) {
            Ok(_) => String::from("(opened)"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_readable_key_or_a_foreign_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        let (sk, _) = seal::generate_keypair();
        let id = Uuid::new_v4();
        write_dir(&dir, &sample(&sk, id), &sk, None).unwrap();
        let key = dir.join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = secrets_error(&dir);
            assert!(e.contains("readable by others") && e.contains("chmod 600"), "{e}");
        }
        std::fs::remove_file(&key).unwrap();
        let (other, _) = seal::generate_keypair();
        write_secret(&key, &other).unwrap();
        let e = secrets_error(&dir);
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_keeps_the_old_install() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        let (sk, _) = seal::generate_keypair();
        let id = Uuid::new_v4();
        write_dir(&dir, &sample(&sk, id), &sk, None).unwrap();
        let missing_ca = tmp.path().join("no-such-ca.pem");
        let (sk2, _) = seal::generate_keypair();
        let e = write_dir(&dir, &sample(&sk2, id), &sk2, Some(&missing_ca)).unwrap_err();
        assert!(e.to_string().contains("no-such-ca.pem"), "{e}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert!(AgentConfig::load(&dir).unwrap().secrets(&dir).is_ok());
    }

    #[test]
    fn a_new_cloud_pin_is_recorded_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        let (sk, _) = seal::generate_keypair();
        write_dir(&dir, &sample(&sk, Uuid::new_v4()), &sk, None).unwrap();
        assert!(AgentConfig::load(&dir).unwrap().cloud_pins().is_empty());
        let pin = Pin::of_spki(b"next key");
        save_cloud_pins(&dir, &[pin]).unwrap();
        let c = AgentConfig::load(&dir).unwrap();
        assert_eq!(c.cloud_pins(), vec![pin]);
        assert!(c.secrets(&dir).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(CONFIG_FILE)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no staged file is left");
    }

    #[test]
    fn removal_keeps_the_admins_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        let (sk, _) = seal::generate_keypair();
        write_dir(&dir, &sample(&sk, Uuid::new_v4()), &sk, None).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        remove_install(&dir).unwrap();
        assert!(!dir.join(CONFIG_FILE).exists() && !dir.join(KEY_FILE).exists());
        assert!(dir.join("notes.txt").exists());
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        remove_install(&dir).unwrap();
        assert!(!dir.exists());
    }
}
