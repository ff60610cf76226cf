//! Test fixture: real Samba AD DCs started by `scripts/samba-dc`.
//!
//! `shared()` is one DC per test run: the one `scripts/test` started (named
//! in `FERRY_TEST_DC_*`), or one this process starts, with a watchdog that
//! stops it when the process ends. `Dc::start()` starts a further DC on its
//! own address (a copy of the provisioned template), stopped on drop.
//! Tests isolate themselves in OUs of their own.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

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
            owned,
        }
    }

    /// Starts a new DC on a free loopback address of this process's own range.
    pub fn start() -> Dc {
        let pid = std::process::id();
        for _ in 0..50 {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let ip = format!("127.{}.{}.{}", 100 + (pid / 250) % 100, pid % 250, n % 250 + 1);
            let dir = std::env::temp_dir().join(format!("ferry-dc-{pid}-{n}"));
            let out = Command::new("bash")
                .arg(repo().join("scripts/samba-dc"))
                .args(["start"])
                .arg(&dir)
                .arg(&ip)
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
            return Dc::from_vars(&vars, true);
        }
        panic!("no free loopback address for a test DC");
    }

    pub fn admin_settings(&self) -> AdSettings {
        let mut s = AdSettings::new(&self.ldaps_url);
        s.ca_file = Some(self.ca_file.clone());
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
    pub fn ldapsearch(&self, base: &str, filter: &str, attrs: &[&str]) -> String {
        let out = Command::new("ldapsearch")
            .env("LDAPTLS_CACERT", &self.ca_file)
            .args([
                "-LLL",
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

    /// `ldapadd`/`ldapmodify` of an LDIF as the administrator.
    pub fn ldapmodify(&self, ldif: &str, add: bool) {
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
        child.stdin.take().unwrap().write_all(ldif.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify failed: {}",
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
                &self.ldap_url,
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
            return Dc::from_vars(&vars, false);
        }
        let mut dc = Dc::start();
        // A static is never dropped: a watchdog stops the DC when this process
        // ends. It must outlive us, so it is never waited for.
        let script = repo().join("scripts/samba-dc");
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("setsid")
            .args([
                "sh",
                "-c",
                &format!(
                    "while kill -0 {pid} 2>/dev/null; do sleep 1; done; bash '{}' stop '{}'; rm -rf '{}'",
                    script.display(),
                    dc.dir.display(),
                    dc.dir.display(),
                    pid = std::process::id()
                ),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the DC watchdog");
        dc.owned = false;
        dc
    })
}
