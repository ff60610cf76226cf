//! `ferry-agent status` and `ferry-agent uninstall`.

use std::path::Path;

use ferry_proto::agent::AgentSelf;
use serde_json::json;

use crate::cloud::CloudError;
use crate::config::{self, AgentConfig};
use crate::platform::service;

/// What `status` found.
pub struct Status {
    /// For people.
    pub text: String,
    /// For scripts (`--json`).
    pub json: serde_json::Value,
    /// Registered, seen recently and reporting no error.
    pub healthy: bool,
}

fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The agent's state: the local install, its service, and the cloud's view.
pub async fn status(dir: &Path) -> anyhow::Result<Status> {
    let c = AgentConfig::load(dir)?;
    let secrets = c.secrets(dir)?;
    let mut text = format!(
        "Installed:  {} (agent {}, domain {})\nDomain controller: {} as {}{}\n",
        dir.display(),
        c.agent_id,
        c.domain,
        c.ldap_url,
        c.bind_user,
        if c.insecure_skip_tls_verify {
            " (certificate NOT verified)"
        } else if c.tls_fingerprint.is_some() {
            " (its certificate pinned by SHA-256)"
        } else {
            ""
        }
    );
    let service_state = c.service.as_deref().map(|u| (u.to_owned(), service::state(u)));
    match &service_state {
        Some((u, st)) => text.push_str(&format!("Service:    {u} is {st}\n")),
        None => text.push_str("Service:    none (started by hand: ferry-agent run --config-dir …)\n"),
    }
    let cloud = c.cloud_client(dir, &secrets.agent_token)?;
    let now = now_ms();
    let (healthy, cloud_json) = match cloud.me().await {
        Ok(me) => {
            text.push_str(&describe(&c.cloud_url, &me, now));
            let healthy = me.status == "active" && me.report.last_error.is_none();
            (healthy, serde_json::to_value(&me).unwrap_or_default())
        }
        Err(e) => {
            let why = match &e {
                CloudError::Refused { code, .. } if code == "agent_revoked" => {
                    "this agent was revoked in the console: install it again with a new Connect Key".to_owned()
                }
                _ => e.to_string(),
            };
            text.push_str(&format!("Cloud:      {} — {why}\n", c.cloud_url));
            (false, json!({ "error": why }))
        }
    };
    // After the call: a rotation the cloud vouched for may have moved the pin.
    let pins: Vec<String> = cloud
        .pins()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    text.push_str(&match pins.first() {
        Some(p) => format!("Cloud key:  pinned, SHA-256 of its public key {p}\n"),
        None if c.cloud_url.starts_with("http://") => "Cloud key:  none: plain HTTP, on this host only\n".to_owned(),
        None => "Cloud key:  its certificate checked by this host's trust store\n".to_owned(),
    });
    let json = json!({
        "config_dir": dir,
        "cloud_pins": pins,
        "agent_id": c.agent_id,
        "domain": c.domain,
        "ldap_url": c.ldap_url,
        "bind_user": c.bind_user,
        "service": service_state.map(|(u, s)| json!({"unit": u, "state": s})),
        "cloud_url": c.cloud_url,
        "cloud": cloud_json,
        "healthy": healthy,
    });
    Ok(Status { text, json, healthy })
}

fn describe(url: &str, me: &AgentSelf, now: i64) -> String {
    let mut s = format!(
        "Cloud:      {url} — registered, {}{}, last seen {}\n",
        me.status,
        if me.primary {
            ", primary (this agent syncs)"
        } else {
            ", standby"
        },
        ago(now, me.last_seen)
    );
    let r = &me.report;
    s.push_str(&format!(
        "Last sync:  {}; {} objects in AD; {} changes AD → cloud, {} cloud → AD since it started\n",
        r.last_sync_at.map_or_else(|| "not yet".to_owned(), |t| ago(now, t)),
        r.ad_objects,
        r.pushed,
        r.applied
    ));
    for d in &r.directions {
        let label = match d.direction {
            ferry_proto::agent::SyncDirection::AdToCloud => "AD → cloud",
            ferry_proto::agent::SyncDirection::CloudToAd => "cloud → AD",
        };
        let since = |t: Option<i64>| t.map_or_else(|| "never".to_owned(), |t| ago(now, t));
        s.push_str(&match (d.status(me.last_seen), &d.error) {
            (_, None) => format!("{label}: ok, last worked {}\n", since(d.last_success_at)),
            (status, Some(e)) => format!(
                "{label}: {} since {} (last worked {}): {e}\n",
                if status == "failing" { "FAILING" } else { "retrying" },
                since(d.failing_since),
                since(d.last_success_at)
            ),
        });
    }
    s.push_str(&match &r.audit {
        None => "Compared:   not yet (both sides are compared whole every 15 minutes)\n".to_owned(),
        Some(a) => format!(
            "Compared:   {} — {} objects; {} different in AD, {} repaired; {} cloud changes sent again\n",
            ago(now, a.at),
            a.compared,
            a.differed,
            a.repaired,
            a.resent
        ),
    });
    s.push_str(&format!("Errors:     {}\n", r.last_error.as_deref().unwrap_or("none")));
    s.push_str(&format!(
        "Sync errors: {} (changes the other side refused; see the domain's Sync activity in the console)\n",
        me.sync_errors
    ));
    s
}

/// What `uninstall` did, line by line.
pub async fn uninstall(dir: &Path, force: bool) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    if !AgentConfig::exists(dir) {
        done.push(format!(
            "Nothing to uninstall: no agent is installed in {}.",
            dir.display()
        ));
        return Ok(done);
    }
    let c = AgentConfig::load(dir)?;
    let secrets = c.secrets(dir);
    if let Some(unit) = &c.service {
        if service::manager_runs() {
            service::stop(unit).ok();
            done.push(format!("Stopped {unit}."));
        }
    }
    let revoked = match &secrets {
        Ok(s) => match c.cloud_client(dir, &s.agent_token) {
            Ok(cloud) => match cloud.deregister().await {
                Ok(()) => Ok(()),
                Err(e) if matches!(e.code(), Some("agent_revoked") | Some("invalid_token")) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    match revoked {
        Ok(()) => done.push(format!("Revoked agent {} in the cloud ({}).", c.agent_id, c.cloud_url)),
        Err(e) if !force => {
            if let Some(unit) = &c.service {
                if service::manager_runs() {
                    service::start(unit).ok();
                }
            }
            anyhow::bail!(
                "cannot revoke agent {} in the cloud: {e}\nNothing was removed. Run this again when the cloud is reachable, or pass --force and revoke the agent in the console (Domain Agents → Revoke).",
                c.agent_id
            );
        }
        Err(e) => done.push(format!(
            "! Could not revoke agent {} in the cloud ({e}): revoke it in the console (Domain Agents → Revoke).",
            c.agent_id
        )),
    }
    if let Some(unit) = &c.service {
        if service::manager_runs() {
            service::remove(unit)?;
            done.push(format!("Removed the service {unit}."));
        }
    }
    config::remove_install(dir)?;
    if c.service.is_some() {
        service::remove_logs(dir);
    }
    done.push(format!("Removed the agent's files from {}.", dir.display()));
    Ok(done)
}

/// What `trust` found: the key the cloud presents now.
pub struct Presented {
    /// The cloud's URL.
    pub cloud_url: String,
    /// Its certificate, described for the admin to compare.
    pub certificate: String,
    /// The pin of its key.
    pub pin: ferry_proto::cloud_pin::Pin,
    /// Whether the config already trusts it.
    pub trusted: bool,
}

/// `ferry-agent trust`, first half: the key the cloud at the installed
/// agent's URL presents (read without trusting it and without sending
/// anything secret), for the admin to compare before [`pin_cloud_key`].
pub async fn presented_key(dir: &Path) -> anyhow::Result<Presented> {
    let c = AgentConfig::load(dir)?;
    let der = crate::cloud::CloudClient::presented_certificate(&c.cloud_url).await?;
    let pin = ferry_proto::cloud_pin::Pin::of_certificate(&der)?;
    let certificate = crate::ad::tls::DcCertificate::from_der(&der)
        .map(|d| d.describe())
        .unwrap_or_else(|e| format!("    ({e})"));
    Ok(Presented {
        trusted: c.cloud_pins().contains(&pin),
        cloud_url: c.cloud_url,
        certificate,
        pin,
    })
}

/// `ferry-agent trust`, second half: pins `pin` in the config (instead of
/// the keys before it, or of the OS trust store). A running agent takes it
/// at its next call to the cloud.
pub fn pin_cloud_key(dir: &Path, pin: ferry_proto::cloud_pin::Pin) -> anyhow::Result<()> {
    config::save_cloud_pins(dir, &[pin])
}
