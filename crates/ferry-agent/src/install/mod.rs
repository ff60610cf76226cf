//! `ferry-agent install`: the install guide's steps 5–18, for real.
//!
//! The interactive wizard ([`wizard`]) and the non-interactive path
//! ([`non_interactive`]) run the same checks, in the guide's order, with the
//! same messages: cloud URL → Root DN → domain controller → service account →
//! the preflight checklist → Connect Key → install. Nothing is written and
//! no key is used until every check passed; the install itself registers the
//! agent, writes the config directory whole (see [`crate::config`]) and sets
//! up the service, undoing all three if a later one fails.

pub mod manage;
pub mod prepare;
pub mod wizard;

use std::path::{Path, PathBuf};

use ferry_proto::agent::{ConnectKeyCheckResponse, RegisterRequest};
use std::sync::Arc;

use ferry_proto::connect_key::{connect_key_url, parse_connect_key};
use zeroize::Zeroizing;

use crate::ad::dn::{dns_name_of, same_dn, Dn};
use crate::ad::{tls, AdConnection, AdError, AdSettings};
use crate::cloud::{clear_text_refusal, CloudClient, CloudError, Pins};
use crate::config::{self, AgentConfig};
use crate::platform::{self, service, Outcome};
use crate::preflight::{self, PreflightInput, Report};

/// Which step refused: it sets the exit code of the non-interactive path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A value given is malformed, or the directory is taken.
    Input,
    /// The domain controller or the service account failed a check.
    Ad,
    /// The Connect Key was refused or is for another domain.
    ConnectKey,
    /// The cloud could not be reached.
    Cloud,
    /// Writing the config or setting up the service failed.
    Install,
}

impl Step {
    /// The process exit code for a refusal at this step.
    pub fn exit_code(self) -> u8 {
        match self {
            Step::Input => 2,
            Step::Ad => 3,
            Step::ConnectKey => 4,
            Step::Cloud => 5,
            Step::Install => 6,
        }
    }
}

/// A refusal, in words an admin can act on.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Where it happened.
    pub step: Step,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    fn new(step: Step, message: impl Into<String>) -> Problem {
        Problem {
            step,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Everything the install needs, once every check passed.
pub struct Answers {
    /// The cloud's base URL.
    pub cloud_url: String,
    /// The Connect Key.
    pub connect_key: Zeroizing<String>,
    /// How to reach the DC (URL, CA file, TLS choices).
    pub ad: AdSettings,
    /// The Root DN.
    pub root_dn: String,
    /// `DOMAIN\user`.
    pub bind_user: String,
    /// Its password.
    pub bind_password: Zeroizing<String>,
    /// Where the config goes.
    pub config_dir: PathBuf,
    /// Set up the service where the service manager runs (systemd, the Windows SCM).
    pub service: bool,
}

/// A cloud URL's problem, if it has one: not a URL, or plain `http://` to
/// a host other than this one (decided from the text, before any connection).
pub fn cloud_url_problem(url: &str) -> Option<String> {
    let u = url.trim();
    let rest = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') && !u.contains(char::is_whitespace) => {
            clear_text_refusal(u)
        }
        _ => Some(format!(
            "{u:?} is not a cloud URL: give it as https://ferry.example.com (the address you open the console at)"
        )),
    }
}

/// The cloud keys a Connect Key pins (`fck2`), to trust instead of the OS
/// trust store; none for an `fck1` key.
fn pins_of(connect_key: &str) -> Option<Arc<Pins>> {
    parse_connect_key(connect_key)
        .and_then(|k| k.pin)
        .map(|pin| Pins::new(vec![pin], None))
}

/// A Root DN's syntax problem, if it has one.
pub fn root_dn_problem(dn: &str) -> Option<String> {
    let dn = dn.trim();
    if dn.is_empty() {
        return Some("enter the domain's Root DN, e.g. DC=example,DC=com for example.com".into());
    }
    match Dn::parse(dn) {
        Err(e) => Some(format!(
            "{dn:?} is not a distinguished name ({}): a Root DN has only DC= parts, e.g. DC=example,DC=com for example.com",
            e.why
        )),
        Ok(_) if dns_name_of(dn).is_none() => Some(format!(
            "{dn:?} is not a domain's Root DN: a Root DN has only DC= parts, e.g. DC=example,DC=com"
        )),
        Ok(_) => None,
    }
}

/// The DC URL offered by default: LDAPS on the domain's DNS name (which
/// resolves to its domain controllers).
pub fn default_dc_url(root_dn: &str) -> String {
    format!("ldaps://{}", dns_name_of(root_dn).unwrap_or_else(|| "localhost".into()))
}

/// A DC URL's problem, if it has one.
pub fn dc_url_problem(url: &str) -> Option<String> {
    let u = url.trim();
    match u.strip_prefix("ldaps://").or_else(|| u.strip_prefix("ldap://")) {
        Some(h) if !h.is_empty() => None,
        _ => Some(format!(
            "{u:?} is not a domain controller URL: give ldaps://dc.example.com (or ldap://… for StartTLS)"
        )),
    }
}

/// Connects to the DC and reads its naming context (the rootDSE is readable
/// before signing in), so a wrong Root DN is caught before anything else.
/// An untrusted certificate is described, with its fingerprint to pin.
pub async fn dc_naming_context(ad: &AdSettings) -> Result<String, Problem> {
    match dc_naming_context_or_certificate(ad).await {
        Ok(served) => Ok(served),
        Err(DcRefused::Other(p)) => Err(p),
        Err(DcRefused::Untrusted { detail, certificate }) => Err(Problem::new(
            Step::Ad,
            format!(
                "TLS to {} failed: {detail}\n  fix: {}\n  The certificate the domain controller presents:\n{}",
                ad.url,
                tls::refusal_advice(&detail, true),
                certificate.describe()
            ),
        )),
    }
}

/// Why the DC's naming context could not be read.
pub enum DcRefused {
    /// The DC's certificate is not trusted; this is the one it presents.
    Untrusted {
        /// The TLS error.
        detail: String,
        /// The certificate, for the admin to compare and perhaps pin.
        certificate: tls::DcCertificate,
    },
    /// Anything else, explained.
    Other(Problem),
}

/// [`dc_naming_context`], with an untrusted certificate handed back whole
/// (the wizard offers to pin it).
pub async fn dc_naming_context_or_certificate(ad: &AdSettings) -> Result<String, DcRefused> {
    if let Some(f) = &ad.tls_fingerprint {
        tls::parse_fingerprint(f).map_err(|m| DcRefused::Other(Problem::new(Step::Input, m)))?;
    }
    let mut conn = match AdConnection::connect(ad).await {
        Ok(c) => c,
        Err(AdError::Tls { detail, .. }) if !ad.insecure_skip_tls_verify => {
            return Err(match tls::dc_certificate(ad).await {
                Ok(certificate) => DcRefused::Untrusted { detail, certificate },
                Err(e) => DcRefused::Other(Problem::new(
                    Step::Ad,
                    format!("{e}\n  fix: {}", preflight::fix_for(&e)),
                )),
            });
        }
        Err(e) => {
            return Err(DcRefused::Other(Problem::new(
                Step::Ad,
                format!("{e}\n  fix: {}", preflight::fix_for(&e)),
            )))
        }
    };
    let root = conn.root_dse().await.map_err(|e| {
        DcRefused::Other(Problem::new(
            Step::Ad,
            format!("cannot read the domain controller's rootDSE: {e}"),
        ))
    })?;
    conn.close().await;
    Ok(root.default_naming_context)
}

/// The Root DN entered against the one the DC serves.
pub fn root_dn_mismatch(entered: &str, served: &str, url: &str) -> Option<String> {
    (!same_dn(entered, served)).then(|| {
        format!(
            "{:?} is not this domain's Root DN: the domain controller at {url} serves {served}. Enter {served}",
            entered.trim()
        )
    })
}

/// The preflight checklist for these answers.
pub async fn checklist(ad: &AdSettings, root_dn: &str, bind_user: &str, password: &str) -> Report {
    preflight::run(&PreflightInput {
        settings: ad.clone(),
        account: bind_user.trim().to_owned(),
        password: password.to_owned(),
        root_dn: root_dn.trim().to_owned(),
        scopes: vec![],
    })
    .await
}

/// The failed lines of a checklist with their fixes, for a refusal.
pub fn failures(report: &Report) -> String {
    let failed = Report {
        checks: report.checks.iter().filter(|c| !c.ok).cloned().collect(),
    };
    failed.render()
}

/// The cloud URL to use: the one given, else the one the key carries.
pub fn cloud_url_for(given: Option<&str>, connect_key: &str) -> Result<String, Problem> {
    let carried = connect_key_url(connect_key);
    if carried.is_none() {
        return Err(Problem::new(
            Step::ConnectKey,
            "this is not a Connect Key: copy it whole from the console (Directories → your domain → Install a new Sync Agent); it starts with fck1.",
        ));
    }
    let url = match given.map(str::trim).filter(|g| !g.is_empty()) {
        Some(g) => g.trim_end_matches('/').to_owned(),
        None => carried.ok_or_else(|| Problem::new(Step::ConnectKey, "the Connect Key carries no cloud URL"))?,
    };
    match cloud_url_problem(&url) {
        Some(m) => Err(Problem::new(Step::Input, m)),
        None => Ok(url),
    }
}

fn cloud_problem(e: CloudError) -> Problem {
    match e {
        CloudError::Refused { code, message, .. } if code.starts_with("connect_key") => {
            Problem::new(Step::ConnectKey, message)
        }
        CloudError::Refused { message, .. } => Problem::new(Step::Cloud, message),
        CloudError::ClearText(m) => Problem::new(Step::Input, m),
        e @ CloudError::KeyChanged { .. } => Problem::new(Step::Cloud, e.to_string()),
        CloudError::Unreachable { url, detail } => Problem::new(
            Step::Cloud,
            format!("cannot reach the cloud at {url}: {detail}\n  fix: check the URL, and that this host can reach it (proxy, firewall, DNS)"),
        ),
    }
}

/// Checks the Connect Key with the cloud (without using it) and that it
/// belongs to the domain whose Root DN was entered.
pub async fn check_key(cloud_url: &str, connect_key: &str, root_dn: &str) -> Result<ConnectKeyCheckResponse, Problem> {
    let client = CloudClient::with_pins(cloud_url, "", pins_of(connect_key)).map_err(cloud_problem)?;
    let info = client.check_connect_key(connect_key).await.map_err(cloud_problem)?;
    if !same_dn(&info.domain.root_dn, root_dn) {
        return Err(Problem::new(
            Step::ConnectKey,
            format!(
                "this Connect Key belongs to the domain {} (Root DN {}), but this domain controller serves {}: create the key from the domain {} in the console (add the domain first if it is not there)",
                info.domain.name,
                info.domain.root_dn,
                root_dn.trim(),
                dns_name_of(root_dn).unwrap_or_else(|| root_dn.to_owned()),
            ),
        ));
    }
    Ok(info)
}

/// What an install did.
pub struct Installed {
    /// The new agent's id.
    pub agent_id: uuid::Uuid,
    /// Its domain.
    pub domain: String,
    /// The config directory.
    pub config_dir: PathBuf,
    /// The cloud's TLS key, pinned from the Connect Key.
    pub cloud_pin: Option<ferry_proto::cloud_pin::Pin>,
    /// How the agent runs.
    pub service: Outcome,
    /// Problems that did not stop the install (e.g. an old agent that
    /// could not be revoked).
    pub warnings: Vec<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Registers the agent, writes its config and sets up its service. A step
/// that fails undoes the ones before it: the new agent is revoked and an
/// existing install is left as it was.
pub async fn install(a: &Answers) -> Result<Installed, Problem> {
    let previous = AgentConfig::load(&a.config_dir)
        .ok()
        .and_then(|c| c.secrets(&a.config_dir).ok().map(|s| (c, s)));
    let (secret_key, public_key) = ferry_proto::seal::generate_keypair();
    let secret_key = Zeroizing::new(secret_key);
    let pins = pins_of(&a.connect_key);
    let anon = CloudClient::with_pins(&a.cloud_url, "", pins.clone()).map_err(cloud_problem)?;
    let reg = anon
        .register(&RegisterRequest {
            connect_key: a.connect_key.trim().to_owned(),
            hostname: platform::hostname(),
            version: env!("CARGO_PKG_VERSION").into(),
            public_key,
        })
        .await
        .map_err(cloud_problem)?;
    let token = Zeroizing::new(reg.agent_token);
    let me = CloudClient::with_pins(&a.cloud_url, &token, pins.clone()).map_err(cloud_problem)?;
    let undo_registration = |why: String| async {
        if let Err(e) = me.deregister().await {
            tracing::warn!(error = %e, "could not revoke the half-installed agent");
        }
        Problem::new(Step::Install, why)
    };
    let use_service = a.service && service::manager_runs();
    let (sealed_token, sealed_password) =
        match AgentConfig::seal_secrets(&secret_key, reg.agent_id, &token, &a.bind_password) {
            Ok(x) => x,
            Err(e) => return Err(undo_registration(e.to_string()).await),
        };
    let cfg = AgentConfig {
        version: 1,
        cloud_url: a.cloud_url.clone(),
        cloud_pins: pins
            .map(|p| p.current().iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        agent_id: reg.agent_id,
        domain: reg.domain.name.clone(),
        root_dn: reg.domain.root_dn.clone(),
        ldap_url: a.ad.url.clone(),
        ca_file: None,
        tls_fingerprint: a
            .ad
            .tls_fingerprint
            .as_deref()
            .and_then(|f| tls::parse_fingerprint(f).ok())
            .map(|sha256| tls::format_fingerprint(&sha256)),
        insecure_skip_tls_verify: a.ad.insecure_skip_tls_verify,
        bind_user: a.bind_user.trim().to_owned(),
        agent_token: sealed_token,
        bind_password: sealed_password,
        service: use_service.then(|| service::NAME.to_owned()),
        installed_at: now_ms(),
    };
    if let Err(e) = config::write_dir(&a.config_dir, &cfg, &secret_key, a.ad.ca_file.as_deref()) {
        return Err(undo_registration(format!("{e:#}")).await);
    }
    let outcome = if use_service {
        match service::install(&a.config_dir) {
            Ok(o) => o,
            Err(e) => {
                let _ = config::remove_install(&a.config_dir);
                return Err(undo_registration(format!("setting up the service failed: {e:#}")).await);
            }
        }
    } else {
        Outcome::Manual {
            command: service::run_command(&a.config_dir),
            manager_runs: service::manager_runs(),
        }
    };
    let mut warnings = Vec::new();
    if let Some((old, secrets)) = previous {
        let revoke = match old.cloud_client(&a.config_dir, &secrets.agent_token) {
            Ok(c) => c.deregister().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = revoke {
            warnings.push(format!(
                "the agent this one replaced ({}) could not be revoked: {e}; revoke it in the console (Domain Agents → Revoke)",
                old.agent_id
            ));
        }
    }
    Ok(Installed {
        agent_id: reg.agent_id,
        domain: reg.domain.name,
        config_dir: a.config_dir.clone(),
        cloud_pin: pins_of(&a.connect_key).and_then(|p| p.current().first().copied()),
        service: outcome,
        warnings,
    })
}

/// The summary printed after an install.
pub fn summary(i: &Installed) -> String {
    let mut s = format!(
        "✓ Installed: agent {} for {} (config in {}; the password and token are encrypted at rest)\n",
        i.agent_id,
        i.domain,
        i.config_dir.display()
    );
    if let Some(pin) = &i.cloud_pin {
        s.push_str(&format!(
            "✓ The cloud's TLS key is pinned from the Connect Key (SHA-256 of its public key {pin})\n"
        ));
    }
    match &i.service {
        Outcome::Service { name } => s.push_str(&format!(
            "✓ Service {name} is enabled and running ({})\n",
            service::how_to_watch(name)
        )),
        Outcome::Manual { command, manager_runs } => {
            if *manager_runs {
                s.push_str("No service was set up (--no-service). Start the agent with:\n");
            } else {
                s.push_str(&format!(
                    "{} is not running on this host, so no service was set up. Start the agent with:\n",
                    service::MANAGER
                ));
            }
            s.push_str(&format!("    {command}\n"));
        }
    }
    for w in &i.warnings {
        s.push_str(&format!("! {w}\n"));
    }
    s.push_str("Next: open the console → Directories → your domain → Domain Agents; this agent shows as active once it runs.\n");
    s.push_str(&format!(
        "Check it here any time with: ferry-agent status --config-dir {}\n",
        i.config_dir.display()
    ));
    s
}

/// What `install --non-interactive` is given: the answers as flags
/// (`cloud_url` empty: the one the Connect Key carries).
pub struct NonInteractive {
    /// The flags.
    pub answers: Answers,
    /// `--replace`.
    pub replace: bool,
}

/// Refuses to overwrite an install unless asked to.
pub fn existing_install_problem(dir: &Path, replace: bool) -> Option<Problem> {
    if replace || !AgentConfig::exists(dir) {
        return None;
    }
    let what = AgentConfig::load(dir)
        .map(|c| format!("agent {} for {}", c.agent_id, c.domain))
        .unwrap_or_else(|_| "an agent".into());
    Some(Problem::new(
        Step::Input,
        format!(
            "{what} is already installed in {}: run `ferry-agent uninstall --config-dir {}` first, or install again with --replace",
            dir.display(),
            dir.display()
        ),
    ))
}

/// The whole install without questions: each check in the wizard's order;
/// the first that fails is the answer.
pub async fn non_interactive(n: NonInteractive, progress: impl Fn(&str)) -> Result<Installed, Problem> {
    let mut a = n.answers;
    if let Some(p) = existing_install_problem(&a.config_dir, n.replace) {
        return Err(p);
    }
    let given = Some(a.cloud_url.as_str()).filter(|u| !u.trim().is_empty());
    if let Some(m) = given.and_then(cloud_url_problem) {
        return Err(Problem::new(Step::Input, m));
    }
    a.cloud_url = cloud_url_for(given, &a.connect_key)?;
    if let Some(m) = root_dn_problem(&a.root_dn) {
        return Err(Problem::new(Step::Input, m));
    }
    if let Some(m) = dc_url_problem(&a.ad.url) {
        return Err(Problem::new(Step::Input, m));
    }
    if let Some(m) =
        preflight::account_form_problem(&a.bind_user).or_else(|| preflight::account_name_problem(&a.bind_user))
    {
        return Err(Problem::new(Step::Input, m));
    }
    progress(&format!("Connecting to {} …", a.ad.url));
    let served = dc_naming_context(&a.ad).await?;
    if let Some(m) = root_dn_mismatch(&a.root_dn, &served, &a.ad.url) {
        return Err(Problem::new(Step::Ad, m));
    }
    progress("Checking the service account …");
    let report = checklist(&a.ad, &a.root_dn, &a.bind_user, &a.bind_password).await;
    if !report.ok() {
        return Err(Problem::new(
            Step::Ad,
            format!("the service account is not ready:\n{}", failures(&report)),
        ));
    }
    progress(&format!("Checking the Connect Key with {} …", a.cloud_url));
    check_key(&a.cloud_url, &a.connect_key, &a.root_dn).await?;
    progress("Installing …");
    install(&a).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_with_a_way_forward() {
        assert!(cloud_url_problem("https://ferry.example.com").is_none());
        assert!(cloud_url_problem("http://127.0.0.1:8080/").is_none());
        assert!(cloud_url_problem("http://localhost:8080").is_none());
        assert!(cloud_url_problem("http://10.0.0.5:8080").is_some_and(|m| m.contains("clear text")));
        assert!(cloud_url_problem("ferry.example.com").is_some_and(|m| m.contains("https://")));
        assert!(root_dn_problem("DC=example,DC=com").is_none());
        assert!(root_dn_problem("example.com").is_some_and(|m| m.contains("DC=example,DC=com")));
        assert!(root_dn_problem("OU=Staff,DC=example,DC=com").is_some_and(|m| m.contains("only DC=")));
        assert!(root_dn_problem("").is_some());
        assert_eq!(default_dc_url("DC=Example,DC=com"), "ldaps://example.com");
        assert!(dc_url_problem("ldaps://dc1").is_none());
        assert!(dc_url_problem("dc1.example.com").is_some_and(|m| m.contains("ldaps://")));
        assert!(root_dn_mismatch("dc=EXAMPLE,dc=test", "DC=example,DC=test", "ldaps://x").is_none());
        assert!(root_dn_mismatch("DC=wrong,DC=test", "DC=example,DC=test", "ldaps://x")
            .is_some_and(|m| m.contains("Enter DC=example,DC=test")));
    }

    #[test]
    fn the_cloud_url_comes_from_the_flag_or_the_key() {
        let key = ferry_proto::connect_key::new_connect_key("https://cloud.example");
        assert_eq!(cloud_url_for(None, &key).ok().as_deref(), Some("https://cloud.example"));
        assert_eq!(
            cloud_url_for(Some("https://10.0.0.5:8443/"), &key).ok().as_deref(),
            Some("https://10.0.0.5:8443")
        );
        // Clear text to another host is refused from the text alone, flag or key.
        let refused = cloud_url_for(Some("http://10.0.0.5:8080/"), &key).err();
        assert!(refused.is_some_and(|p| p.step == Step::Input && p.message.contains("https://10.0.0.5:8080")));
        let clear_key = ferry_proto::connect_key::new_connect_key("http://ferry.example.com");
        assert!(cloud_url_for(None, &clear_key).is_err_and(|p| p.step == Step::Input));
        assert_eq!(
            cloud_url_for(Some("http://127.0.0.1:8080"), &clear_key).ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        let e = cloud_url_for(None, "fca_not-a-key").err();
        assert!(e.is_some_and(|p| p.step == Step::ConnectKey && p.message.contains("fck1.")));
    }
}
