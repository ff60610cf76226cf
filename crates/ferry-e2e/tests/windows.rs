//! The Windows agent end to end: `ferry-agent.exe`, cross-built for
//! x86_64-pc-windows-gnu, run under Wine against a real Samba DC and a real
//! ferry-cloud. `--version`; `check` with the six tasks; the wizard in
//! Wine's console on a pseudo-terminal (the password hidden); `install
//! --non-interactive` into the Wine prefix's `%ProgramData%\Ferry\agent`
//! (the key DPAPI-protected); `run` syncing a user each way; `status`;
//! `uninstall`, which the running agent learns of and stops for good (78).
//! Then, with `FERRY_TEST_WINDOWS_MSI`, the installer and the service under
//! Wine's Service Control Manager: the MSI installs, `install
//! --non-interactive` sets up and starts the FerryAgent service, which syncs;
//! a Stop ends it cleanly (lease released at once), a start brings it back,
//! a revocation stops it with exit code 78, and uninstalling the MSI removes
//! the config, the service and the program.
//!
//! Set `FERRY_TEST_WINDOWS_AGENT` to the `.exe` (`scripts/test-windows`
//! builds it and puts the Wine-only `bcryptprimitives.dll` shim beside it);
//! unset, the test says it was skipped. What Wine does not stand in for
//! (UAC, the ACLs `icacls` sets, Windows' DPAPI machine key, the SCM's
//! failure actions) is listed in docs/install.md; those decisions are unit
//! tests in the agent's platform module, which `scripts/test-windows` also
//! runs under Wine.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;
#[allow(dead_code)] // the pty helper's Ctrl-C is for install.rs
#[path = "common/pty.rs"]
mod pty;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use ferry_agent::ad::write::NewAdUser;
use ferry_agent::preflight::Task;
use serde_json::json;

/// A Wine prefix of the test's own (a fresh `C:`), and the agent's `.exe`.
struct Wine {
    exe: PathBuf,
    prefix: tempfile::TempDir,
}

const WINE: &str = "/usr/lib/wine/wine64";

impl Wine {
    fn from_env() -> Option<Wine> {
        let exe = PathBuf::from(std::env::var_os("FERRY_TEST_WINDOWS_AGENT")?);
        assert!(
            exe.is_file(),
            "FERRY_TEST_WINDOWS_AGENT={} is not a file",
            exe.display()
        );
        Some(Wine {
            exe,
            prefix: tempfile::Builder::new().prefix("ferry-wine-").tempdir().unwrap(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        self.program(&self.exe.display().to_string(), args)
    }

    /// Any program, in the prefix.
    fn program(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(WINE);
        c.arg(program)
            .args(args)
            .env("WINEPREFIX", self.prefix.path())
            .env("WINEDEBUG", "-all")
            .env("RUST_LOG", "info");
        c
    }

    fn run_program(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.program(program, args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).replace('\r', ""),
            String::from_utf8_lossy(&out.stderr).replace('\r', ""),
        )
    }

    /// `sc query FerryAgent`.
    fn service_state(&self) -> String {
        self.run_program("cmd", &["/c", "sc query FerryAgent"]).1
    }

    /// Runs the agent to its end: exit code, stdout, stderr.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Where a Windows path of the prefix's `C:` is on this host.
    fn host_path(&self, windows: &str) -> PathBuf {
        let rest = windows.strip_prefix(r"C:\").unwrap();
        rest.split('\\')
            .fold(self.prefix.path().join("drive_c"), |p, part| p.join(part))
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // The prefix's wineserver outlives the programs by a few seconds: end it now.
        let _ = Command::new("/usr/lib/wine/wineserver")
            .arg("-k")
            .env("WINEPREFIX", self.prefix.path())
            .status();
    }
}

/// Says so on the real stderr: the test harness keeps `eprintln!` of a
/// passing test to itself.
fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "windows.rs SKIPPED: {why}");
}

/// A host path as the Windows program sees it (Wine maps `/` to `Z:`).
fn z(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_windows_agent_installs_and_syncs_both_ways_under_wine() {
    let Some(wine) = Wine::from_env() else {
        skipped("FERRY_TEST_WINDOWS_AGENT is not set (scripts/test-windows cross-builds ferry-agent.exe and sets it)");
        return;
    };

    // --version
    let (code, out, err) = wine.run(&["--version"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("ferry-agent {}", env!("CARGO_PKG_VERSION")));

    let (dc, cloud, domain) = prepare().await;
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, format!("{SVC_PW}\r\n")).unwrap();
    let account = format!("{}\\svc-sync", dc.domain);
    let ca = z(&dc.ca_file);
    let pw_file = z(&pw);

    // check: the service account, each of the six tasks ✓.
    let (code, out, err) = wine.run(&[
        "check",
        "--ldap-url",
        &dc.ldaps_url,
        "--ca-file",
        &ca,
        "--bind-user",
        &account,
        "--bind-password-file",
        &pw_file,
        "--root-dn",
        &dc.base_dn,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("All checks passed."), "{out}");
    for t in Task::ALL {
        assert!(
            out.lines().any(|l| l.starts_with('✓') && l.contains(t.title())),
            "{}: not ✓ in\n{out}",
            t.title()
        );
    }

    // The wizard in a Windows console (Wine's, on a pseudo-terminal): the
    // guide's questions, the password hidden, installed, the window kept open.
    let key = connect_key(&cloud, &domain).await;
    let wizard_dir = r"C:\wizard-agent";
    let exe = wine.exe.display().to_string();
    let prefix = wine.prefix.path().display().to_string();
    let mut t = pty::Pty::spawn(
        Path::new(WINE),
        &[&exe, "install", "--no-service", "--config-dir", wizard_dir],
        &[("WINEPREFIX", &prefix), ("WINEDEBUG", "-all"), ("RUST_LOG", "warn")],
    );
    t.expect("Press Enter to start");
    t.send_line("");
    t.expect("Ferry cloud URL (Enter to take it from the Connect Key):");
    t.send_line("");
    t.expect("Root DN (e.g. DC=example,DC=com):");
    t.send_line(&dc.base_dn);
    t.expect("Domain controller [");
    t.send_line(&dc.ldaps_url);
    t.expect("CA certificate of the domain controller");
    t.send_line(&ca);
    t.expect(&format!("serves {}", dc.base_dn));
    t.expect("Service account (DOMAIN\\user):");
    t.send_line(&account);
    t.expect("Password for");
    t.send_line(SVC_PW);
    t.expect("All checks passed.");
    t.expect("Connect Key:");
    t.send_line(&key);
    t.expect("Install now?");
    t.send_line("");
    t.expect("✓ Installed: agent");
    t.expect("Press Enter to close this window.");
    t.send_line("");
    assert_eq!(t.wait().code(), Some(0), "{}", t.transcript());
    assert!(
        !t.transcript().contains(SVC_PW),
        "the password was echoed: {}",
        t.transcript()
    );
    assert!(wine.host_path(r"C:\wizard-agent\agent.key").is_file());
    let (code, out, err) = wine.run(&["uninstall", "--config-dir", wizard_dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Revoked agent"), "{out}");

    // install --non-interactive, into %ProgramData%\Ferry\agent (the default).
    let key = connect_key(&cloud, &domain).await;
    let (code, out, err) = wine.run(&[
        "install",
        "--non-interactive",
        "--no-service",
        "--connect-key",
        &key,
        "--ldap-url",
        &dc.ldaps_url,
        "--ca-file",
        &ca,
        "--root-dn",
        &dc.base_dn,
        "--bind-user",
        &account,
        "--bind-password-file",
        &pw_file,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("✓ Installed: agent"), "{out}");
    assert!(
        out.contains(r"C:\ProgramData\Ferry\agent"),
        "installed in %ProgramData%: {out}"
    );
    let dir = wine.host_path(r"C:\ProgramData\Ferry\agent");
    let key_file = std::fs::read_to_string(dir.join("agent.key")).unwrap();
    assert!(
        key_file.starts_with("dpapi-machine-v1:"),
        "the key is DPAPI-protected: {key_file}"
    );
    let config = std::fs::read_to_string(dir.join("agent.json")).unwrap();
    assert!(!config.contains(SVC_PW) && !out.contains(SVC_PW) && !err.contains(SVC_PW));
    let printed = out
        .lines()
        .skip_while(|l| !l.contains("Start the agent with:"))
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no command printed: {out}"));
    assert!(
        printed.ends_with(r"run --config-dir C:\ProgramData\Ferry\agent"),
        "{printed}"
    );

    // run: the .exe syncs, AD → cloud and cloud → AD.
    let log = tmp.path().join("agent.log");
    let mut running = Running(
        wine.command(&["run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let agent = eventually("the Windows agent active and primary", || async {
        let (_, v) = cloud
            .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
            .await;
        v["agents"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["status"] == "active" && a["primary"] == true)
                .cloned()
        })
    })
    .await;
    eventually("the first import", || async { cloud.user("early").await }).await;

    let users = format!("CN=Users,{}", dc.base_dn);
    let mut admin = dc.admin().await;
    admin
        .create_user(
            &users,
            &NewAdUser {
                sam_account_name: "winnie".into(),
                cn: Some("Winnie Gates".into()),
                attributes: vec![("givenName".into(), "Winnie".into()), ("title".into(), "Admin".into())],
                enabled: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let winnie = eventually("a user created in AD reaches the cloud", || async {
        cloud.user("winnie").await
    })
    .await;
    assert_eq!(winnie["title"], "Admin");

    let (st, wendy) = cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "wendy", "name": {"givenName": "Wendy", "familyName": "Wu"}, "title": "Ops"})),
        )
        .await;
    assert_eq!(st, 201, "{wendy}");
    eventually("a cloud user reaches AD", || async {
        let l = dc.ldapsearch(&users, "(sAMAccountName=wendy)", &["title", "givenName"]);
        (l.contains("title: Ops") && l.contains("givenName: Wendy")).then_some(())
    })
    .await;

    // status
    let status = poll_until("status reporting a sync", std::time::Duration::from_secs(1), || async {
        let (code, out, _) = wine.run(&["status"]);
        (code == 0 && !out.contains("Last sync:  not yet")).then_some(out)
    })
    .await;
    assert!(
        status.contains("registered, active, primary") && status.contains("Errors:     none"),
        "{status}"
    );

    // uninstall: revoked, files gone; the running .exe stops for good (78).
    let (code, out, err) = wine.run(&["uninstall"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Revoked agent"), "{out}");
    assert!(!dir.exists(), "the config directory is removed");
    let code = eventually("the running agent to stop", || {
        let st = running.0.try_wait().unwrap();
        async move { st.map(|s| s.code()) }
    })
    .await;
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(78), "{agent_log}");
    assert!(agent_log.contains("no longer accepts this agent"), "{agent_log}");
    assert!(!agent_log.contains(SVC_PW), "no secret in the log");
    let (_, v) = cloud
        .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await;
    assert!(
        v["agents"].as_array().unwrap().iter().all(|a| a["id"] != agent["id"]),
        "{v}"
    );

    let Some(msi) = std::env::var_os("FERRY_TEST_WINDOWS_MSI").map(PathBuf::from) else {
        skipped("the MSI and the service: FERRY_TEST_WINDOWS_MSI is not set (scripts/test-windows builds the MSI and sets it)");
        return;
    };
    the_msi_installs_a_service_that_syncs_stops_and_stays_stopped(&wine, &msi, &dc, &cloud, &domain, &pw_file).await;
}

async fn agents(cloud: &Cloud, domain: &str) -> Vec<serde_json::Value> {
    let (_, v) = cloud
        .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await;
    v["agents"].as_array().cloned().unwrap_or_default()
}

async fn the_msi_installs_a_service_that_syncs_stops_and_stays_stopped(
    wine: &Wine,
    msi: &Path,
    dc: &Dc,
    cloud: &Cloud,
    domain: &str,
    pw_file: &str,
) {
    // WINE-ONLY TEST SHIM for the installed .exe (see scripts/wine/): into the prefix's system32.
    let shim = wine.exe.with_file_name("bcryptprimitives.dll");
    std::fs::copy(&shim, wine.host_path(r"C:\windows\system32\bcryptprimitives.dll")).unwrap();
    let (code, out, err) = wine.run_program("msiexec", &["/i", &z(msi), "/qn", "LAUNCHWIZARD=0"]);
    assert_eq!(code, 0, "msiexec /i: {out}{err}");
    let exe = r"C:\Program Files\Ferry\ferry-agent.exe";
    assert!(wine.host_path(exe).is_file());

    // The wizard's non-interactive twin, with the service this time.
    let key = connect_key(cloud, domain).await;
    let account = format!("{}\\svc-sync", dc.domain);
    let ca = z(&dc.ca_file);
    let (code, out, err) = wine.run_program(
        exe,
        &[
            "install",
            "--non-interactive",
            "--connect-key",
            &key,
            "--ldap-url",
            &dc.ldaps_url,
            "--ca-file",
            &ca,
            "--root-dn",
            &dc.base_dn,
            "--bind-user",
            &account,
            "--bind-password-file",
            pw_file,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("✓ Service FerryAgent is enabled and running"), "{out}");
    assert!(wine.service_state().contains("RUNNING"), "{}", wine.service_state());
    let primary = eventually("the service's agent active and primary", || async {
        agents(cloud, domain)
            .await
            .into_iter()
            .find(|a| a["status"] == "active" && a["primary"] == true)
    })
    .await;
    let users = format!("CN=Users,{}", dc.base_dn);
    dc.ldapmodify(
        &format!("dn: CN=Svc Made,{users}\nobjectClass: user\nsAMAccountName: svcmade\ntitle: Via the service\n"),
        true,
    );
    eventually("an AD user reaches the cloud through the service", || async {
        cloud.user("svcmade").await.filter(|u| u["title"] == "Via the service")
    })
    .await;

    // Stop: a clean stop, and the lease is released at once (not after 30 s).
    let (code, out, _) = wine.run_program("cmd", &["/c", "sc stop FerryAgent"]);
    assert_eq!(code, 0, "{out}");
    let stopped = poll_until("the service stopped", std::time::Duration::from_millis(300), || async {
        let st = wine.service_state();
        st.contains("STOPPED").then_some(st)
    })
    .await;
    assert!(stopped.contains("WIN32_EXIT_CODE    : 0 "), "a clean stop: {stopped}");
    let released = agents(cloud, domain).await;
    assert!(
        released.iter().all(|a| a["primary"] != true),
        "the lease is released on stop: {released:?}"
    );

    // Started again, it syncs again.
    let (code, out, _) = wine.run_program("cmd", &["/c", "sc start FerryAgent"]);
    assert_eq!(code, 0, "{out}");
    eventually("primary again after a start", || async {
        agents(cloud, domain)
            .await
            .into_iter()
            .find(|a| a["id"] == primary["id"] && a["primary"] == true)
    })
    .await;

    // Revoked in the console: the service stops with 78 and stays stopped.
    let (st, v) = cloud
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/domains/{domain}/agents/{}", primary["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(st < 300, "{v}");
    let revoked = poll_until(
        "the revoked service to stop",
        std::time::Duration::from_millis(500),
        || async {
            let st = wine.service_state();
            st.contains("STOPPED").then_some(st)
        },
    )
    .await;
    assert!(revoked.contains("SERVICE_EXIT_CODE  : 78 "), "{revoked}");
    let (_, status, _) = wine.run_program(exe, &["status"]);
    assert!(
        status.contains("exit 78") && status.contains("new Connect Key"),
        "{status}"
    );

    // Uninstalling the MSI: config, service and program gone.
    let (code, out, err) = wine.run_program("msiexec", &["/x", &z(msi), "/qn"]);
    assert_eq!(code, 0, "msiexec /x: {out}{err}");
    assert!(
        !wine.host_path(r"C:\ProgramData\Ferry\agent").exists(),
        "the config is removed"
    );
    assert!(
        !wine.host_path(r"C:\Program Files\Ferry").exists(),
        "the program is removed"
    );
    let (code, _, _) = wine.run_program("reg", &["query", r"HKLM\System\CurrentControlSet\Services\FerryAgent"]);
    assert_ne!(code, 0, "the service is removed");
}
