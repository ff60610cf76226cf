//! The AD connector: the agent's hands in Active Directory. Connects over
//! LDAPS or StartTLS with CA verification (or one pinned certificate, [`tls`]), binds as the delegated service
//! account, reads (paged full reads, ranged multi-valued attributes,
//! DirSync increments, the in-scope objectGUID set) and writes.

pub mod ber;
pub use ferry_proto::dn;
pub mod entry;
pub mod error;
pub mod guid;
pub mod mapping;
pub mod names;
pub mod read;
pub mod tls;
pub mod write;

use std::path::PathBuf;
use std::time::Duration;

use ldap3::controls::RawControl;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope};

pub use entry::AdEntry;
pub use error::AdError;
pub use read::{
    member_delta, range_step, DirSyncBatch, Pager, RangeStep, RootDse, GROUPS, MAX_PAGE_SIZE, USERS, USERS_AND_GROUPS,
};
pub use write::{NewAdGroup, NewAdUser, GROUP_GLOBAL_SECURITY};

/// An LDAP request at least this long is logged at info ([`AdConnection::timed`]).
const SLOW_REQUEST_SECS: f64 = 0.5;

/// How to reach a domain controller.
#[derive(Debug, Clone)]
pub struct AdSettings {
    /// `ldaps://host[:636]` or `ldap://host[:389]`.
    pub url: String,
    /// PEM file with the CA(s) that signed the DC's certificate; the
    /// system's trust store when unset.
    pub ca_file: Option<PathBuf>,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// Trust exactly the certificate with this SHA-256 (hex, colons
    /// allowed) instead of a CA: for self-signed DC certificates.
    pub tls_fingerprint: Option<String>,
    /// Accept any certificate. Only for a lab; logs a loud warning.
    pub insecure_skip_tls_verify: bool,
    /// Connect and per-operation timeout.
    pub timeout: Duration,
}

impl AdSettings {
    /// Settings for a URL with defaults: StartTLS for `ldap://`, verification on.
    pub fn new(url: &str) -> Self {
        AdSettings {
            url: url.to_owned(),
            ca_file: None,
            tls_fingerprint: None,
            starttls: url.starts_with("ldap://"),
            insecure_skip_tls_verify: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// Whether the connection will be encrypted.
    pub fn encrypted(&self) -> bool {
        self.url.starts_with("ldaps://") || self.starttls
    }
}

/// A connection to a DC.
pub struct AdConnection {
    pub(crate) ldap: Ldap,
    url: String,
    encrypted: bool,
    timeout: Duration,
}

impl AdConnection {
    /// Connects (and, for `ldap://` with StartTLS, upgrades) to the DC.
    pub async fn connect(s: &AdSettings) -> Result<AdConnection, AdError> {
        if !(s.url.starts_with("ldaps://") || s.url.starts_with("ldap://")) {
            return Err(AdError::Connect {
                url: s.url.clone(),
                detail: "the URL must start with ldaps:// or ldap://".into(),
            });
        }
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(s.timeout)
            .set_starttls(s.starttls && s.url.starts_with("ldap://"));
        if s.insecure_skip_tls_verify {
            tracing::warn!(
                url = %s.url,
                "TLS CERTIFICATE VERIFICATION IS OFF (--insecure-skip-tls-verify): anyone on the network path can read the service account's password and every change; use --ca-file instead"
            );
            settings = settings.set_no_tls_verify(true);
        } else if s.encrypted() {
            settings = settings.set_config(tls::client_config(s)?);
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &s.url)
            .await
            .map_err(|e| classify_connect_error(&s.url, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        Ok(AdConnection {
            ldap,
            url: s.url.clone(),
            encrypted: s.encrypted(),
            timeout: s.timeout,
        })
    }

    /// Whether traffic on this connection is encrypted.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Binds as `DOMAIN\user`, `user@realm` or a DN.
    pub async fn bind(&mut self, user: &str, password: &str) -> Result<(), AdError> {
        check_account_form(user)?;
        if password.is_empty() {
            return Err(AdError::Bind("the service account's password is empty".into()));
        }
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .simple_bind(user, password)
            .await
            .map_err(|e| self.io_error(e))?;
        if r.rc != 0 {
            return Err(error::bind_failure(r.rc, &r.text, user));
        }
        Ok(())
    }

    /// Ends the session.
    pub async fn close(mut self) {
        self.ldap.unbind().await.ok();
    }

    pub(crate) fn io_error(&self, e: ldap3::LdapError) -> AdError {
        classify_connect_error(&self.url, e)
    }

    /// Says how long one LDAP request took: every request at debug level
    /// (`RUST_LOG=ferry_agent::ldap=debug`), a slow one at info. On Samba a
    /// long request holds its worker process, and every other request that
    /// worker was given waits behind it: this names the one that held it.
    pub(crate) fn timed(&self, op: &str, target: &str, started: std::time::Instant) {
        let secs = started.elapsed().as_secs_f64();
        // A filter of a hundred alternatives is shortened; names are not
        // secrets. The fields are built only when the line is logged.
        let shown = || target.chars().take(120).collect::<String>();
        if secs >= SLOW_REQUEST_SECS {
            tracing::info!(target: "ferry_agent::ldap", op, target = %shown(), secs = format!("{secs:.3}"), "slow LDAP request");
        } else {
            tracing::debug!(target: "ferry_agent::ldap", op, target = %shown(), secs = format!("{secs:.3}"), "LDAP request");
        }
    }

    /// One search (no paging), entries parsed; `controls` are sent with it,
    /// and the response's controls returned.
    pub async fn search_raw(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        controls: Vec<RawControl>,
    ) -> Result<(Vec<AdEntry>, Vec<RawControl>), AdError> {
        let started = std::time::Instant::now();
        let res = self
            .ldap
            .with_timeout(self.timeout)
            .with_controls(controls)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(|e| self.io_error(e))?;
        self.timed("search", filter, started);
        let ldap3::SearchResult(entries, result) = res;
        if result.rc != 0 {
            return Err(error::from_result(result.rc, &result.text, &format!("search {base}")));
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            out.push(
                entry::parse_entry(&e.0).ok_or_else(|| {
                    AdError::Protocol(format!("a malformed entry in the answer to a search of {base}"))
                })?,
            );
        }
        Ok((out, result.ctrls.into_iter().map(|c| c.1).collect()))
    }
}

/// Accepts `DOMAIN\user`, `user@realm` or a DN; anything else is explained.
pub fn check_account_form(user: &str) -> Result<(), AdError> {
    if user.contains('\\') {
        let (domain, name) = user.split_once('\\').unwrap_or_default();
        if domain.is_empty() || name.is_empty() {
            return Err(AdError::AccountForm(format!(
                "{user:?}: write the account as DOMAIN\\user"
            )));
        }
        return Ok(());
    }
    if user.contains('@') || user.contains('=') {
        return Ok(());
    }
    Err(AdError::AccountForm(format!(
        "{user:?} has no domain: write it as DOMAIN\\{user} (the domain's NetBIOS name, then a backslash); AD refuses a bare user name"
    )))
}

fn classify_connect_error(url: &str, e: ldap3::LdapError) -> AdError {
    let detail = e.to_string();
    let lower = detail.to_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        AdError::Tls {
            url: url.to_owned(),
            detail,
        }
    } else {
        AdError::Connect {
            url: url.to_owned(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_forms() {
        assert!(check_account_form("EXAMPLE\\svc-sync").is_ok());
        assert!(check_account_form("svc-sync@example.test").is_ok());
        assert!(check_account_form("CN=svc,CN=Users,DC=example,DC=test").is_ok());
        let e = check_account_form("svc-sync").unwrap_err().to_string();
        assert!(e.contains("DOMAIN\\svc-sync"), "{e}");
        assert!(check_account_form("\\svc").is_err());
        assert!(check_account_form("EXAMPLE\\").is_err());
    }

    #[test]
    fn encryption_follows_the_url() {
        assert!(AdSettings::new("ldaps://dc").encrypted());
        assert!(AdSettings::new("ldap://dc").encrypted(), "StartTLS by default");
        let mut plain = AdSettings::new("ldap://dc");
        plain.starttls = false;
        assert!(!plain.encrypted());
    }
}
