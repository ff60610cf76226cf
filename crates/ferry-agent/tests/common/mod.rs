//! Test fixture: real Samba AD DCs started by `scripts/samba-dc`.
//!
//! `shared()` is one DC per test run: the one `scripts/test` started (named
//! in `FERRY_TEST_DC_*`), or one this process starts, with a watchdog that
//! stops it when the process ends. `Dc::start()` starts a further DC on its
//! own address (a copy of the provisioned template), stopped on drop.
//! Tests isolate themselves in OUs of their own.
//!
//! With `FERRY_TEST_AD_DOUBLE` set (the double's limits, e.g.
//! `--page-size 50 --value-range 7`), every DC is fronted by the
//! Windows-AD test double (`scripts/ad-double`): the URLs and CA file lead
//! to the double, which forwards to the Samba DC; `samba-tool` still talks
//! to the DC itself.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use ferry_agent::ad::{AdConnection, AdSettings};

#[derive(Debug, Clone)]
pub struct Dc {
    pub dir: PathBuf,
    pub ip: String,
    pub ldap_url: String,
    pub ldaps_url: String,
    pub ca_file: PathBuf,
    pub base_dn: String,
    pub domain: String,
    pub realm: String,
    pub admin_bind: String,
    pub admin_password: String,
    /// The Samba DC's own plain-LDAP URL (for `samba-tool`), also when a double fronts it.
    pub samba_ldap_url: String,
    /// The AD double in front of this DC, if any (stopped when the last clone goes).
    pub double: Option<Arc<DoubleGuard>>,
    /// The SHA-256 of a self-signed DC certificate, pinned by the fixture's own connections.
    pub tls_fingerprint: Option<String>,
    owned: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static NEXT: AtomicU32 = AtomicU32::new(2);

impl Dc {
    fn from_vars(v: &HashMap<String, String>, owned: bool) -> Dc {
        let get = |k: &str| {
            v.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} missing from samba-dc output"))
        };
        Dc {
            dir: get("FERRY_DC_DIR").into(),
            ip: get("FERRY_DC_IP"),
            ldap_url: get("FERRY_DC_LDAP_URL"),
            ldaps_url: get("FERRY_DC_LDAPS_URL"),
            ca_file: get("FERRY_DC_CA_FILE").into(),
            base_dn: get("FERRY_DC_BASE_DN"),
            domain: get("FERRY_DC_DOMAIN"),
            realm: get("FERRY_DC_REALM"),
            admin_bind: get("FERRY_DC_ADMIN_BIND"),
            admin_password: get("FERRY_DC_ADMIN_PASSWORD"),
            samba_ldap_url: get("FERRY_DC_LDAP_URL"),
            double: None,
            tls_fingerprint: None,
            owned,
        }
    }

    /// A free loopback address of this process's range, and a fresh directory.
    fn next_address(what: &str) -> (String, PathBuf) {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let ip = format!("127.{}.{}.{}", 100 + (pid / 250) % 100, pid % 250, n % 250 + 1);
        (ip, std::env::temp_dir().join(format!("ferry-{what}-{pid}-{n}")))
    }

    /// Puts the Windows-AD test double (`scripts/ad-double`, with `limits`
    /// such as `--page-size 50`) in front of this DC: from now on the URLs
    /// and CA file lead to the double. A DC already behind a double gets a
    /// new one in front of the DC itself, with the first's limits and then
    /// these (a later flag overrides an earlier), not a double in front of
    /// a double.
    pub fn behind_double(mut self, limits: &[&str]) -> Dc {
        let (upstream, upstream_ca, mut all) = match &self.double {
            Some(d) => (d.upstream.clone(), d.upstream_ca.clone(), d.limits.clone()),
            None => (self.ldaps_url.clone(), self.ca_file.clone(), Vec::new()),
        };
        all.extend(limits.iter().map(|l| l.to_string()));
        for _ in 0..50 {
            let (ip, dir) = Dc::next_address("ad-double");
            let out = Command::new("bash")
                .arg(repo().join("scripts/ad-double"))
                .arg("start")
                .arg(&dir)
                .args(["--upstream", &upstream, "--listen", &ip, "--upstream-ca"])
                .arg(&upstream_ca)
                .args(&all)
                .output()
                .expect("run scripts/ad-double");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                if stderr.contains("is taken") {
                    continue;
                }
                panic!("scripts/ad-double start failed:\n{stderr}");
            }
            let vars = parse_vars(&String::from_utf8_lossy(&out.stdout));
            self.ldap_url = vars["FERRY_DC_LDAP_URL"].clone();
            self.ldaps_url = vars["FERRY_DC_LDAPS_URL"].clone();
            self.ca_file = vars["FERRY_DC_CA_FILE"].clone().into();
            self.double = Some(Arc::new(DoubleGuard {
                dir,
                upstream,
                upstream_ca,
                limits: all,
            }));
            return self;
        }
        panic!("no free loopback address for the AD double");
    }

    /// This DC without the double in front, if one is: for reading what the
    /// DC holds without the double's value ranges (one `ldapsearch` where
    /// seven-value windows take a hundred).
    pub fn without_double(&self) -> Dc {
        let mut dc = self.clone();
        if let Some(d) = dc.double.take() {
            dc.ldaps_url = d.upstream.clone();
            dc.ca_file = d.upstream_ca.clone();
            dc.ldap_url = dc.samba_ldap_url.clone();
            dc.double = Some(d);
        }
        dc
    }

    /// Fronts the DC with the double when `FERRY_TEST_AD_DOUBLE` asks for it.
    fn with_double_from_env(self) -> Dc {
        match std::env::var("FERRY_TEST_AD_DOUBLE") {
            Ok(limits) if !limits.trim().is_empty() => {
                let limits: Vec<&str> = limits.split_whitespace().collect();
                self.behind_double(&limits)
            }
            _ => self,
        }
    }

    /// Whether the tests run through the Windows-AD test double.
    pub fn through_double() -> bool {
        std::env::var("FERRY_TEST_AD_DOUBLE").is_ok_and(|v| !v.trim().is_empty())
    }

    /// Starts a new DC on a free loopback address of this process's own range.
    pub fn start() -> Dc {
        Dc::start_with(&[])
    }

    /// Starts a new DC of another domain (`OTHER.TEST`, `OTHER`): several
    /// domains in one org.
    pub fn start_realm(realm: &str, netbios: &str) -> Dc {
        Dc::start_with(&[("FERRY_DC_REALM", realm), ("FERRY_DC_DOMAIN", netbios)])
    }

    /// A DC whose certificate is self-signed, as `openssl req -x509` makes
    /// it (CA:TRUE): `ca_file` is that certificate.
    pub fn start_self_signed() -> Dc {
        Dc::start_with(&[("FERRY_DC_TLS", "self-signed")])
    }

    fn start_with(env: &[(&str, &str)]) -> Dc {
        let self_signed = env.contains(&("FERRY_DC_TLS", "self-signed"));
        for _ in 0..50 {
            let (ip, dir) = Dc::next_address("dc");
            let out = Command::new("bash")
                .arg(repo().join("scripts/samba-dc"))
                .args(["start"])
                .arg(&dir)
                .arg(&ip)
                .envs(env.iter().copied())
                .output()
                .expect("run scripts/samba-dc");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                if stderr.contains("is taken") {
                    continue;
                }
                panic!("scripts/samba-dc start failed:\n{stderr}");
            }
            let vars = parse_vars(&String::from_utf8_lossy(&out.stdout));
            let mut dc = Dc::from_vars(&vars, true);
            if self_signed {
                let fp = Command::new("openssl")
                    .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
                    .arg(&dc.ca_file)
                    .output()
                    .expect("run openssl");
                dc.tls_fingerprint = String::from_utf8_lossy(&fp.stdout)
                    .trim()
                    .rsplit('=')
                    .next()
                    .map(str::to_owned);
            }
            return dc.with_double_from_env();
        }
        panic!("no free loopback address for a test DC");
    }

    pub fn admin_settings(&self) -> AdSettings {
        let mut s = AdSettings::new(&self.ldaps_url);
        match &self.tls_fingerprint {
            Some(pin) => s.tls_fingerprint = Some(pin.clone()),
            None => s.ca_file = Some(self.ca_file.clone()),
        }
        s
    }

    /// An LDAPS connection bound as the domain administrator.
    pub async fn admin(&self) -> AdConnection {
        self.connect_as(&self.admin_bind.clone(), &self.admin_password.clone())
            .await
    }

    pub async fn connect_as(&self, user: &str, password: &str) -> AdConnection {
        let mut c = AdConnection::connect(&self.admin_settings()).await.unwrap();
        c.bind(user, password).await.unwrap();
        c
    }

    /// `ldapsearch` as the administrator over LDAPS: an independent client.
    /// It pages, as a client of AD must (AD answers at most 1000 entries to
    /// a search that does not).
    pub fn ldapsearch(&self, base: &str, filter: &str, attrs: &[&str]) -> String {
        let out = Command::new("ldapsearch")
            .env("LDAPTLS_CACERT", &self.ca_file)
            .args([
                "-LLL",
                "-E",
                "pr=1000/noprompt",
                "-o",
                "ldif-wrap=no",
                "-x",
                "-H",
                &self.ldaps_url,
                "-D",
                &self.admin_bind,
                "-w",
                &self.admin_password,
                "-b",
                base,
                filter,
            ])
            .args(attrs)
            .output()
            .expect("run ldapsearch");
        assert!(
            out.status.success(),
            "ldapsearch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every member (DN) of a group as an independent client reads it:
    /// `ldapsearch`, window after window of `member;range=…` as AD hands
    /// out big member lists (a server that does not range sends them all).
    pub fn group_members(&self, group_dn: &str) -> std::collections::BTreeSet<String> {
        let mut members = std::collections::BTreeSet::new();
        let mut start = 0usize;
        loop {
            let ldif = self.ldapsearch(group_dn, "(objectClass=group)", &[&format!("member;range={start}-*")]);
            let mut next = None;
            for line in ldif.lines() {
                let Some((desc, dn)) = line.split_once(": ") else {
                    continue;
                };
                let Some(range) = desc.strip_prefix("member") else {
                    continue;
                };
                members.insert(dn.to_owned());
                if let Some((_, end)) = range.strip_prefix(";range=").and_then(|r| r.split_once('-')) {
                    next = end.parse::<usize>().ok().map(|e| e + 1);
                }
            }
            match next {
                Some(n) if n > start => start = n,
                _ => return members,
            }
        }
    }

    /// [`Dc::group_members`], each by its CN, lowercased (for comparing
    /// with the cloud's member names).
    pub fn group_member_cns(&self, group_dn: &str) -> std::collections::BTreeSet<String> {
        self.group_members(group_dn)
            .iter()
            .map(|dn| {
                dn.split(',')
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("CN=")
                    .to_lowercase()
            })
            .collect()
    }

    /// `ldapadd`/`ldapmodify` of an LDIF as the administrator.
    pub fn ldapmodify(&self, ldif: &str, add: bool) {
        if let Err(e) = self.try_ldapmodify(ldif, add) {
            panic!("ldapmodify failed: {e}");
        }
    }

    /// `ldapadd`/`ldapmodify` of an LDIF as the administrator; its error
    /// output when it fails.
    pub fn try_ldapmodify(&self, ldif: &str, add: bool) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ldapmodify")
            .env("LDAPTLS_CACERT", &self.ca_file)
            .args([
                "-x",
                "-H",
                &self.ldaps_url,
                "-D",
                &self.admin_bind,
                "-w",
                &self.admin_password,
            ])
            .args(if add { vec!["-a"] } else { vec![] })
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ldapmodify");
        child.stdin.take().unwrap().write_all(ldif.as_bytes()).ok();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Stops the DC: an outage (`resume` ends it). Only for a DC of the test's own.
    pub fn stop(&self) {
        assert!(self.owned, "only a test's own DC may be stopped");
        self.script("stop");
    }

    /// Starts the DC again as it was left (same address, data, certificates);
    /// returns once it answers LDAP.
    pub fn resume(&self) {
        self.script("resume");
    }

    fn script(&self, cmd: &str) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/samba-dc"))
            .arg(cmd)
            .arg(&self.dir)
            .output()
            .expect("run scripts/samba-dc");
        assert!(
            out.status.success(),
            "scripts/samba-dc {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `samba-tool` against this DC.
    pub fn samba_tool(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/python3")
            .arg("/usr/bin/samba-tool")
            .args(args)
            .args([
                "-H",
                &self.samba_ldap_url,
                "-U",
                &format!("Administrator%{}", self.admin_password),
            ])
            .output()
            .expect("run samba-tool");
        assert!(
            out.status.success(),
            "samba-tool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh OU for one test: `OU=<name>-<random>,<base>`.
    pub async fn new_ou(&self, name: &str) -> String {
        let dn = format!(
            "OU={name}-{},{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8],
            self.base_dn
        );
        self.ldapmodify(&format!("dn: {dn}\nobjectClass: organizationalUnit\n"), true);
        dn
    }
}

impl Drop for Dc {
    fn drop(&mut self) {
        // The double goes first (with the last clone holding it): it fronts the DC.
        self.double = None;
        if self.owned {
            Command::new("bash")
                .arg(repo().join("scripts/samba-dc"))
                .arg("stop")
                .arg(&self.dir)
                .status()
                .ok();
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// The Windows-AD test double in front of a DC; stopped on drop.
#[derive(Debug)]
pub struct DoubleGuard {
    pub dir: PathBuf,
    /// The DC it fronts (LDAPS URL and CA file) and the limits it was given.
    upstream: String,
    upstream_ca: PathBuf,
    limits: Vec<String>,
}

impl DoubleGuard {
    /// The shell command that stops it and removes its directory.
    fn stop_command(&self) -> String {
        format!(
            "bash '{}' stop '{}'; rm -rf '{}'",
            repo().join("scripts/ad-double").display(),
            self.dir.display(),
            self.dir.display()
        )
    }

    /// What the double logged (its refusals among it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("double.log")).unwrap_or_default()
    }
}

impl Drop for DoubleGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprint_tail("the AD double's log", &self.log(), 40);
        }
        Command::new("sh").args(["-c", &self.stop_command()]).status().ok();
    }
}

/// The last `n` lines of a log, for a failing test's output.
pub fn eprint_tail(what: &str, log: &str, n: usize) {
    let tail: Vec<&str> = log.lines().rev().take(n).collect();
    eprintln!("--- {what} (last lines) ---");
    for l in tail.iter().rev() {
        eprintln!("{l}");
    }
}

fn parse_vars(s: &str) -> HashMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The DC shared by the tests of this run.
pub fn shared() -> &'static Dc {
    static DC: OnceLock<Dc> = OnceLock::new();
    DC.get_or_init(|| {
        if let Some(dir) = std::env::var("FERRY_TEST_DC_DIR").ok().filter(|d| !d.is_empty()) {
            let vars: HashMap<String, String> = std::env::vars()
                .filter_map(|(k, v)| k.strip_prefix("FERRY_TEST_").map(|k| (format!("FERRY_{k}"), v)))
                .collect();
            assert!(Path::new(&dir).exists(), "FERRY_TEST_DC_DIR {dir} does not exist");
            let dc = Dc::from_vars(&vars, false).with_double_from_env();
            if let Some(d) = &dc.double {
                watchdog(&d.stop_command());
            }
            return dc;
        }
        let mut dc = Dc::start();
        // A static is never dropped: a watchdog stops the DC when this process ends.
        let mut stop = format!(
            "bash '{}' stop '{}'; rm -rf '{}'",
            repo().join("scripts/samba-dc").display(),
            dc.dir.display(),
            dc.dir.display()
        );
        if let Some(d) = &dc.double {
            stop = format!("{}; {stop}", d.stop_command());
        }
        watchdog(&stop);
        dc.owned = false;
        dc
    })
}

/// Runs `cleanup` (shell) once this process has ended. It must outlive us,
/// so it is never waited for.
fn watchdog(cleanup: &str) {
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("setsid")
        .args([
            "sh",
            "-c",
            &format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
                pid = std::process::id()
            ),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the watchdog");
}
