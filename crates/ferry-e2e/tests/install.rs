//! The install flow end to end (install guide steps 2–18): the agent
//! downloaded through the console in headless Chromium, then the real
//! `ferry-agent` binary driven through a pseudo-terminal or with flags,
//! against a real Samba DC and a real ferry-cloud; the result checked in the
//! cloud's admin API, in the files written, and by `status`/`uninstall`.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

#[path = "../../ferry-cloud/tests/common/browser.rs"]
mod browser;
mod common;
#[path = "common/pty.rs"]
mod pty;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use ferry_agent::ad::write::NewAdUser;
use pty::Pty;
use serde_json::{json, Value};

/// A key another agent has already used.
async fn used_key(cloud: &Cloud, domain: &str) -> String {
    let key = connect_key(cloud, domain).await;
    let (_, pk) = ferry_proto::seal::generate_keypair();
    let r = cloud
        .http
        .post(format!("{}/agent/v1/register", cloud.base))
        .json(&json!({"connect_key": key, "hostname": "other-host", "version": "0.1.0", "public_key": pk}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    key
}

async fn agents(cloud: &Cloud, domain: &str) -> Vec<Value> {
    let (st, v) = cloud
        .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v["agents"].as_array().cloned().unwrap_or_default()
}

/// Every file under `dir`, with no plaintext secret in any, each private.
fn assert_no_plaintext(dir: &Path, secrets: &[&str]) {
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in secrets {
            assert!(!text.contains(s), "{} holds a secret in plaintext", p.display());
        }
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
        files += 1;
    }
    assert!(files >= 2, "the config directory is incomplete");
    let json: Value = serde_json::from_slice(&std::fs::read(dir.join("agent.json")).unwrap()).unwrap();
    assert!(
        json["bind_password"]["ct"].is_string(),
        "the password is sealed: {json}"
    );
    let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
}

/// The agent's token, read back as the agent reads it.
fn installed_token(dir: &Path) -> String {
    let c = ferry_agent::config::AgentConfig::load(dir).unwrap();
    c.secrets(dir).unwrap().agent_token.to_string()
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Runs the command line the installer printed.
fn run_printed(command: &str, log: &Path) -> Running {
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_owned())
        .collect();
    let log = std::fs::File::create(log).unwrap();
    Running(
        Command::new(&words[0])
            .args(&words[1..])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Guide steps 2–4 in Chromium: sign in, open the domain, "Install a new
/// Sync Agent". The download starts by itself with only the session cookie;
/// the dialog's commands are run as printed (checksum, `chmod +x`), the
/// binary answers `--version`. Returns it and the dialog's Connect Key.
async fn download_through_the_console(cloud: &Cloud, domain: &str, into: &Path) -> (PathBuf, String) {
    std::fs::create_dir_all(into).unwrap();
    // The cloud's test certificate comes from a CA the browser does not know.
    let b = browser::Browser::start_for_test_certificate("install-download", into).await;
    b.goto(&format!("{}/signin", cloud.base)).await;
    b.fill("input[name=email]", "admin@acme.test").await;
    b.fill("input[name=password]", "x-password").await;
    b.click("form[action='/signin'] button[type=submit]").await;
    b.wait_text("Directories").await;
    b.click(&format!("a[href='/directories/{domain}']")).await;
    b.click("#install-agent").await;
    b.find("dialog[open]").await;
    let key = b.value("#connect-key").await;
    let commands = b.text("pre.commands.linux").await;
    let file = into.join("ferry-agent");
    eventually("the download to finish in the browser", || {
        let file = file.clone();
        async move {
            let partial = std::fs::read_dir(file.parent().unwrap())
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".crdownload"));
            (!partial && file.exists()).then_some(())
        }
    })
    .await;
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(agent_binary()).unwrap(),
        "the browser downloaded the agent whole"
    );

    // Only the session cookie: without it the same URL is refused, and says why.
    let url = format!("{}/downloads/ferry-agent", cloud.base);
    let session = b.cookie("ferry_session").await.unwrap();
    let with_cookie = cloud
        .http
        .get(format!("{url}.sha256"))
        .header("cookie", format!("ferry_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status().as_u16(), 200);
    let published = with_cookie.text().await.unwrap();
    let refused = cloud.http.get(&url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let why = refused.text().await.unwrap();
    assert!(why.contains("sign in to the console"), "{why}");
    assert!(
        !why.contains("create one with ferry-cloud init or the console"),
        "{why}"
    );

    // The dialog's commands, as printed: checksum, executable, install.
    let lines: Vec<&str> = commands.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 3, "{commands}");
    assert!(
        lines[0].ends_with("| sha256sum -c") && lines[0].contains(published.trim()),
        "the checksum line checks the published SHA-256 ({published}): {commands}"
    );
    assert_eq!(&lines[1..], ["chmod +x ferry-agent", "sudo ./ferry-agent install"]);
    for line in &lines[..2] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(into)
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        if line.contains("sha256sum") {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("ferry-agent: OK"),
                "{out:?}"
            );
        }
    }
    let out = Command::new("./ferry-agent")
        .arg("--version")
        .current_dir(into)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{out:?}"
    );
    (file, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wizard_installs_an_agent_that_shows_active() {
    let dc = delegated_dc().await;
    let cloud = Cloud::start_with(ferry_cloud::app::Config {
        agent_binary: Some(agent_binary()),
        ..Default::default()
    })
    .await;
    let domain = add_domain(&cloud, &dc).await;
    let used = used_key(&cloud, &domain).await;
    let tmp = tempfile::tempdir().unwrap();
    let (downloaded, fresh) = download_through_the_console(&cloud, &domain, &tmp.path().join("Downloads")).await;
    let dir = tmp.path().join("ferry-agent");
    let dir_s = dir.to_str().unwrap();
    let ca = dc.ca_file.to_str().unwrap();
    let account = format!("{}\\svc-sync", dc.domain);

    let mut t = Pty::spawn(
        &downloaded,
        &["install", "--config-dir", dir_s, "--no-service"],
        &[("RUST_LOG", "warn")],
    );
    t.expect("Press Enter to start");
    t.send_line("");
    t.expect("Ferry cloud URL (Enter to take it from the Connect Key):");
    t.send_line("");

    // A wrong Root DN: the DC names the right one, offered as the default.
    t.expect("Root DN (e.g. DC=example,DC=com):");
    t.send_line("DC=wrong,DC=test");
    t.expect("Domain controller [ldaps://wrong.test]:");
    t.send_line(&dc.ldaps_url);
    t.expect("CA certificate of the domain controller");
    t.send_line(ca);
    let said = t.expect(&format!("Root DN (e.g. DC=example,DC=com) [{}]:", dc.base_dn));
    assert!(
        said.contains("\"DC=wrong,DC=test\" is not this domain's Root DN")
            && said.contains(&format!("serves {}. Enter {}", dc.base_dn, dc.base_dn)),
        "{said}"
    );
    t.send_line("");
    t.expect(&format!("✓ {} serves {}", dc.ldaps_url, dc.base_dn));

    // A user name without the domain in front.
    t.expect("Service account (DOMAIN\\user):");
    t.send_line("svc-sync");
    let said = t.expect("Service account (DOMAIN\\user):");
    assert!(
        said.contains("\"svc-sync\" has no domain: write it as DOMAIN\\svc-sync"),
        "{said}"
    );
    t.send_line(&account);
    t.expect(&format!("Password for {account}:"));
    t.send_secret(SVC_PW);
    let checks = t.expect("All checks passed.");
    assert!(checks.contains("✓ Sign-in as the service account"), "{checks}");
    assert!(!checks.contains(SVC_PW), "the password was echoed: {checks}");

    // A used Connect Key, then a fresh one.
    t.expect("Connect Key:");
    t.send_line(&used);
    let said = t.expect("Connect Key:");
    assert!(said.contains("✗ the Connect Key was already used"), "{said}");
    t.send_line(&fresh);
    t.expect(&format!("✓ the key is for {}", dc.realm.to_lowercase()));
    t.expect("Install now? [Y/n]:");
    t.send_line("");
    t.expect("✓ Installed: agent");
    let said = t.expect("Next:");
    assert_eq!(t.wait().code(), Some(0), "{}", t.transcript());
    let command = said
        .lines()
        .skip_while(|l| !l.contains("Start the agent with:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no command printed: {said}"))
        .trim()
        .to_owned();
    assert!(command.ends_with(&format!("run --config-dir {dir_s}")), "{command}");
    assert!(!t.transcript().contains(SVC_PW));

    let token = installed_token(&dir);
    assert_no_plaintext(&dir, &[SVC_PW, &token]);

    // The admin's view: the agent registered and, once running, active.
    let mut running = run_printed(&command, &tmp.path().join("agent.log"));
    let listed = eventually("the agent active and primary in the console's API", || async {
        agents(&cloud, &domain)
            .await
            .into_iter()
            .find(|a| a["hostname"] != "other-host" && a["status"] == "active" && a["primary"] == true)
    })
    .await;
    assert_eq!(listed["version"], env!("CARGO_PKG_VERSION"));
    // And it syncs: the user that was in AD before the install reaches the cloud.
    eventually("the first import", || async { cloud.user("early").await }).await;
    // Its log, written to a file, carries no colour codes.
    let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    assert!(log.contains(" INFO "), "the agent logged: {log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a log file:\n{log}");

    // `status` tells the same story.
    let status = eventually("status reporting a sync", || async {
        let (code, out, _) = agent(&["status", "--config-dir", dir_s]);
        (code == 0 && out.contains("Last sync:") && !out.contains("Last sync:  not yet")).then_some(out)
    })
    .await;
    assert!(
        status.contains("registered, active, primary") && status.contains("Errors:     none"),
        "{status}"
    );

    // `uninstall` revokes it and removes its files.
    let (code, out, err) = agent(&["uninstall", "--config-dir", dir_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Revoked agent"), "{out}");
    assert!(!dir.exists());
    let left = agents(&cloud, &domain).await;
    assert!(
        left.iter().all(|a| a["id"] != listed["id"]),
        "the uninstalled agent is gone from the console: {left:?}"
    );
    let r = cloud
        .http
        .post(format!("{}/agent/v1/heartbeat", cloud.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the uninstalled agent's token no longer works"
    );
    // The agent still running learns it at its next heartbeat and stops for
    // good (exit 78: systemd's unit does not restart it).
    let code = eventually("the running agent to stop", || {
        let st = running.0.try_wait().unwrap();
        async move { st.map(|s| s.code()) }
    })
    .await;
    assert_eq!(
        code,
        Some(78),
        "{}",
        std::fs::read_to_string(tmp.path().join("agent.log")).unwrap()
    );
}

/// The wizard started for `dir` on a terminal `columns` wide, answered up to
/// the DC's CA file, which it asks for now.
fn wizard_up_to_the_ca(dir: &Path, dc: &Dc, columns: u16) -> Pty {
    let mut t = wizard_up_to_the_dc(dir, dc, columns, &[]);
    t.expect("CA certificate");
    t
}

/// The wizard (with `extra` flags) started for `dir` on a terminal
/// `columns` wide, answered up to the domain controller's URL.
fn wizard_up_to_the_dc(dir: &Path, dc: &Dc, columns: u16, extra: &[&str]) -> Pty {
    let mut args = vec!["install", "--config-dir", dir.to_str().unwrap(), "--no-service"];
    args.extend_from_slice(extra);
    let mut t = Pty::spawn_sized(&agent_binary(), &args, &[("RUST_LOG", "warn")], columns);
    let intro = t.expect("Press Enter to start");
    // The text fits the terminal, wrapped between words.
    assert!(
        intro.lines().all(|l| l.chars().count() <= usize::from(columns)),
        "wrapped at {columns} columns:\n{intro}"
    );
    assert!(
        words(&intro)
            .contains("a Connect Key from the console (Directories → your domain → Install a new Sync Agent)."),
        "{intro}"
    );
    t.send_line("");
    t.expect("Ferry cloud URL");
    t.send_line("");
    t.expect("Root DN (e.g. DC=example,DC=com):");
    t.send_line(&dc.base_dn);
    t.expect("Domain controller");
    t.send_line(&dc.ldaps_url);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_in_the_wizard_leaves_nothing_installed() {
    let (dc, cloud, domain) = prepare().await;
    let key = connect_key(&cloud, &domain).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ferry-agent");
    let mut t = wizard_up_to_the_ca(&dir, &dc, 60);
    t.send_line(dc.ca_file.to_str().unwrap());
    t.expect("Service account (DOMAIN\\user):");
    t.send_line(&format!("{}\\svc-sync", dc.domain));
    // Interrupted at the hidden password prompt.
    t.expect("Password for");
    std::thread::sleep(Duration::from_millis(300));
    t.ctrl_c();
    t.expect("Cancelled: nothing was installed.");
    let st = t.wait();
    assert_eq!(st.code(), Some(130), "{}", t.transcript());
    assert!(!dir.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing staged is left"
    );
    // The key was not used: it still registers.
    let r = cloud
        .http
        .post(format!("{}/agent/v1/connect-key", cloud.base))
        .json(&json!({"connect_key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// `install --non-interactive` with these flags (and the password file).
struct Flags {
    cloud_url: Option<String>,
    key: String,
    ldap_url: String,
    ca: Option<PathBuf>,
    root_dn: String,
    user: String,
    password_file: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Flags {
    fn run(&self) -> (i32, String, String) {
        let mut args: Vec<String> = vec![
            "install".into(),
            "--non-interactive".into(),
            "--no-service".into(),
            "--connect-key".into(),
            self.key.clone(),
            "--ldap-url".into(),
            self.ldap_url.clone(),
            "--root-dn".into(),
            self.root_dn.clone(),
            "--bind-user".into(),
            self.user.clone(),
            "--bind-password-file".into(),
            self.password_file.display().to_string(),
            "--config-dir".into(),
            self.dir.display().to_string(),
        ];
        if let Some(u) = &self.cloud_url {
            args.extend(["--cloud-url".into(), u.clone()]);
        }
        if let Some(c) = &self.ca {
            args.extend(["--ca-file".into(), c.display().to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(&refs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_non_interactive_install_checks_everything_and_says_what_failed() {
    let (dc, cloud, domain) = prepare().await;
    // An account that exists but was delegated nothing.
    let mut admin = dc.admin().await;
    admin
        .create_user(
            &format!("CN=Users,{}", dc.base_dn),
            &NewAdUser {
                sam_account_name: "svc-plain".into(),
                password: Some(SVC_PW.into()),
                enabled: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (st, other) = cloud
        .call(
            reqwest::Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "other.test", "netbios_name": "OTHER"})),
        )
        .await;
    assert_eq!(st, 201, "{other}");
    let other_key = connect_key(&cloud, other["id"].as_str().unwrap()).await;
    let used = used_key(&cloud, &domain).await;
    let expired = {
        use ferry_cloud::secrets::token_hash;
        use ferry_proto::connect_key::new_pinned_connect_key;
        let key = new_pinned_connect_key(&cloud.base, &cloud.pin);
        let mut tx = cloud.store.begin().await.unwrap();
        let org = tx.list_orgs().await.unwrap()[0].id;
        tx.insert_connect_key(org, domain.parse().unwrap(), &token_hash(&key), 1, 2)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        key
    };
    let key = connect_key(&cloud, &domain).await;
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, format!("{SVC_PW}\n")).unwrap();
    let bad_pw = tmp.path().join("bad-pw");
    std::fs::write(&bad_pw, "Not-The-Pa55").unwrap();
    let good = || Flags {
        cloud_url: None,
        key: key.clone(),
        ldap_url: dc.ldaps_url.clone(),
        ca: Some(dc.ca_file.clone()),
        root_dn: dc.base_dn.clone(),
        user: format!("{}\\svc-sync", dc.domain),
        password_file: pw.clone(),
        dir: tmp.path().join("agent"),
        extra: vec![],
    };
    let nb = dc.domain.clone();
    let cases: Vec<(&str, Flags, i32, String)> = vec![
        (
            "Root DN that is not a DN",
            Flags {
                root_dn: "example.test".into(),
                ..good()
            },
            2,
            "is not a distinguished name".into(),
        ),
        (
            "account without the domain",
            Flags {
                user: "svc-sync".into(),
                ..good()
            },
            2,
            "\"svc-sync\" has no domain: write it as DOMAIN\\svc-sync".into(),
        ),
        (
            "account named like Ferry's own",
            Flags {
                user: format!("{nb}\\ferry-sync"),
                ..good()
            },
            2,
            "contains \"ferry\": the install guide asks for a service account named otherwise".into(),
        ),
        (
            "not a Connect Key",
            Flags {
                key: "fca_pasted-the-wrong-thing".into(),
                ..good()
            },
            4,
            "this is not a Connect Key".into(),
        ),
        (
            "Root DN of another domain",
            Flags {
                root_dn: "DC=wrong,DC=test".into(),
                ..good()
            },
            3,
            format!("the domain controller at {} serves {}", dc.ldaps_url, dc.base_dn),
        ),
        (
            "DC certificate from an unknown CA",
            Flags { ca: None, ..good() },
            3,
            "Give the CA certificate".into(),
        ),
        (
            "DC not listening",
            Flags {
                ldap_url: "ldaps://127.0.0.1:1".into(),
                ..good()
            },
            3,
            "Check the DC's address".into(),
        ),
        (
            "wrong password",
            Flags {
                password_file: bad_pw.clone(),
                ..good()
            },
            3,
            "✗ Sign-in as the service account".into(),
        ),
        (
            "wrong NetBIOS prefix with the right password",
            Flags {
                user: format!("{}\\svc-sync", &nb[..nb.len() - 1]),
                ..good()
            },
            3,
            format!(
                "\"{}\" is not this domain's NetBIOS name \"{nb}\" (the password is right: it signs in as svc-sync@{})",
                &nb[..nb.len() - 1],
                dc.realm.to_lowercase()
            ),
        ),
        (
            "Root DN that is not a DN, explained with a Root DN",
            Flags {
                root_dn: "DC=example,,DC=test".into(),
                ..good()
            },
            2,
            "a Root DN has only DC= parts, e.g. DC=example,DC=com".into(),
        ),
        (
            "account not delegated",
            Flags {
                user: format!("{nb}\\svc-plain"),
                ..good()
            },
            3,
            "Delegate \"Create, delete, and manage user accounts\" to".into(),
        ),
        (
            "mistyped Connect Key",
            Flags {
                key: ferry_proto::connect_key::new_pinned_connect_key(&cloud.base, &cloud.pin),
                ..good()
            },
            4,
            "the Connect Key is not valid".into(),
        ),
        (
            "used Connect Key",
            Flags {
                key: used.clone(),
                ..good()
            },
            4,
            "the Connect Key was already used".into(),
        ),
        (
            "expired Connect Key",
            Flags {
                key: expired.clone(),
                ..good()
            },
            4,
            "the Connect Key has expired".into(),
        ),
        (
            "Connect Key of another domain",
            Flags {
                key: other_key.clone(),
                ..good()
            },
            4,
            format!("this Connect Key belongs to the domain other.test (Root DN DC=other,DC=test), but this domain controller serves {}", dc.base_dn),
        ),
        (
            "cloud not reachable",
            Flags {
                cloud_url: Some("http://127.0.0.1:1".into()),
                ..good()
            },
            5,
            "cannot reach the cloud at http://127.0.0.1:1".into(),
        ),
    ];
    for (what, flags, code, message) in &cases {
        let (got, out, err) = flags.run();
        assert_eq!(got, *code, "{what}: exit code\n{out}{err}");
        assert!(
            err.contains(message.as_str()),
            "{what}: expected {message:?} in:\n{err}"
        );
        assert!(!flags.dir.exists(), "{what}: nothing is written");
    }
    // A Root DN's example is a Root DN (not an OU, which the rule refuses).
    let (_, _, err) = Flags {
        root_dn: "example.test".into(),
        ..good()
    }
    .run();
    assert!(err.contains("e.g. DC=example,DC=com") && !err.contains("OU="), "{err}");
    let (got, _, err) = agent(&["install", "--non-interactive", "--connect-key", &key]);
    assert_eq!(got, 2);
    assert!(
        err.contains("--non-interactive needs --ldap-url, --root-dn, --bind-user"),
        "{err}"
    );
    assert_eq!(
        agents(&cloud, &domain).await.len(),
        1,
        "only the 'used' key registered an agent"
    );

    // With every check passing, the same key (not used up by the failures) installs.
    let (got, out, err) = good().run();
    assert_eq!(got, 0, "{out}{err}");
    assert!(out.contains("✓ Installed: agent"), "{out}");
    assert!(out.contains("Start the agent with:"), "{out}");
    let dir = tmp.path().join("agent");
    assert_no_plaintext(&dir, &[SVC_PW, &installed_token(&dir)]);
    assert_eq!(agents(&cloud, &domain).await.len(), 2);

    // Again: refused while installed; with --replace the old agent is revoked.
    let again = connect_key(&cloud, &domain).await;
    let (got, _, err) = Flags {
        key: again.clone(),
        ..good()
    }
    .run();
    assert_eq!(got, 2);
    assert!(
        err.contains("is already installed in") && err.contains("--replace"),
        "{err}"
    );
    let old_token = installed_token(&dir);
    let (got, out, err) = Flags {
        key: again,
        extra: vec!["--replace".into()],
        ..good()
    }
    .run();
    assert_eq!(got, 0, "{out}{err}");
    assert_ne!(installed_token(&dir), old_token);
    assert_eq!(agents(&cloud, &domain).await.len(), 2, "the replaced agent was revoked");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        3,
        "nothing staged is left beside the config (pw, bad-pw, agent)"
    );
}

/// Text with its line breaks and indentation undone (the wizard wraps to the terminal).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `ferry-agent check` of `account` (its password in `pw`) on the DC, with `extra` flags.
fn check_as(dc: &Dc, account: &str, pw: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "check",
        "--ldap-url",
        &dc.ldaps_url,
        "--bind-user",
        account,
        "--bind-password-file",
        pw.to_str().unwrap(),
        "--root-dn",
        &dc.base_dn,
    ];
    args.extend_from_slice(extra);
    agent(&args)
}

/// The SHA-256 fingerprint of a PEM certificate, as `openssl` prints it.
fn openssl_fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_owned()
}

/// A DC whose certificate is self-signed as `openssl req -x509` makes it
/// (CA:TRUE): given as the CA file it is refused, and the wizard says why
/// (not "give the CA file"); the admin sees its subject, issuer, names and
/// fingerprint, pins it, and the agent syncs. `check` explains it too and
/// passes with `--tls-fingerprint`; a wrong fingerprint is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_self_signed_dc_certificate_is_shown_pinned_and_the_agent_syncs() {
    let dc = delegated(Dc::start_self_signed()).await;
    let cloud = Cloud::start().await;
    let domain = add_domain(&cloud, &dc).await;
    let key = connect_key(&cloud, &domain).await;
    let cert = dc.ca_file.to_str().unwrap().to_owned();
    let fingerprint = openssl_fingerprint(&dc.ca_file);
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ferry-agent");
    let account = format!("{}\\svc-sync", dc.domain);

    // The certificate itself as the CA file: refused, and explained for what it is.
    let mut t = wizard_up_to_the_ca(&dir, &dc, 160);
    t.send_line(&cert);
    let said = t.expect("Trust this certificate? (its SHA-256 is pinned in the agent's config) [y/N]:");
    for part in [
        "CaUsedAsEndEntity",
        "a CA certificate (CA:TRUE) used as the server's own",
        "Subject:  CN=dc.example.test",
        "Issuer:   CN=dc.example.test (self-signed)",
        &format!("IP:{}", dc.ip),
        "DNS:dc.example.test",
        "CA:       yes (CA:TRUE)",
        &format!("SHA-256:  {fingerprint}"),
    ] {
        assert!(words(&said).contains(&words(part)), "{part:?} missing from:\n{said}");
    }
    assert!(
        !said.contains("--ca-file") && !said.contains("name the host"),
        "the wizard names no flag and does not blame the name:\n{said}"
    );
    t.send_line("n");
    t.expect("Not trusted: give the CA certificate that signed it");
    // Then with the system's trust store, and trusted this time.
    t.expect("Domain controller");
    t.send_line(&dc.ldaps_url);
    t.expect("CA certificate");
    t.send_line("");
    let said = t.expect("Trust this certificate?");
    assert!(said.contains(&format!("SHA-256:  {fingerprint}")), "{said}");
    t.send_line("y");
    t.expect(&format!("✓ {} serves {}", dc.ldaps_url, dc.base_dn));
    t.expect("Service account (DOMAIN\\user):");
    t.send_line(&account);
    t.expect(&format!("Password for {account}:"));
    t.send_secret(SVC_PW);
    t.expect("All checks passed.");
    t.expect("Connect Key:");
    t.send_line(&key);
    t.expect("Install now? [Y/n]:");
    t.send_line("");
    t.expect("✓ Installed: agent");
    let said = t.expect("Next:");
    assert_eq!(t.wait().code(), Some(0), "{}", t.transcript());
    let config: Value = serde_json::from_slice(&std::fs::read(dir.join("agent.json")).unwrap()).unwrap();
    assert_eq!(config["tls_fingerprint"], fingerprint.as_str(), "{config}");
    assert!(config["ca_file"].is_null(), "{config}");
    assert_eq!(config["insecure_skip_tls_verify"], false);

    // The agent syncs through the pinned certificate.
    let command = said
        .lines()
        .skip_while(|l| !l.contains("Start the agent with:"))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let _running = run_printed(&command, &tmp.path().join("agent.log"));
    eventually("the first import through the pinned certificate", || async {
        cloud.user("early").await
    })
    .await;

    // `check`: the certificate as CA file is explained; the pin passes; another pin is refused.
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, SVC_PW).unwrap();
    let check = |extra: &[&str]| check_as(&dc, &account, &pw, extra);
    let (code, out, err) = check(&["--ca-file", &cert]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("a CA certificate (CA:TRUE) used as the server's own")
            && out.contains("--tls-fingerprint")
            && out.contains(&fingerprint),
        "{out}"
    );
    let (code, out, err) = check(&["--tls-fingerprint", &fingerprint]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("All checks passed."), "{out}");
    // The wizard with --tls-fingerprint asks for no CA and connects.
    let mut t = wizard_up_to_the_dc(
        &tmp.path().join("second"),
        &dc,
        160,
        &["--tls-fingerprint", &fingerprint],
    );
    let said = t.expect(&format!("✓ {} serves {}", dc.ldaps_url, dc.base_dn));
    assert!(
        !said.contains("CA certificate") && said.contains("(--tls-fingerprint)"),
        "{said}"
    );
    t.expect("Service account (DOMAIN\\user):");
    t.ctrl_c();
    t.expect("Cancelled: nothing was installed.");
    assert_eq!(t.wait().code(), Some(130));

    let other = "00:".repeat(31) + "00";
    let (code, out, _) = check(&["--tls-fingerprint", &other]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not the pinned one"), "{out}");
}

/// "Prepare the service account" (guide steps 6–14): the samba-tool script
/// `ferry-agent prepare --samba` prints, run as printed against a fresh DC
/// (it asks for the Administrator's password, then the new account's), makes
/// an account that passes every check with nothing else to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prepare_script_makes_an_account_that_passes_every_check() {
    let dc = Dc::start();
    let (code, script, err) = agent(&[
        "prepare",
        "--root-dn",
        &dc.base_dn,
        "--samba",
        "--ldap-url",
        &dc.ldaps_url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(script.lines().all(|l| l.len() <= 100), "each line is short:\n{script}");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prepare.sh");
    std::fs::write(&file, &script).unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, SVC_PW).unwrap();
    let account = format!("{}\\svc-dirsync", dc.domain);
    let check = || check_as(&dc, &account, &pw, &["--ca-file", dc.ca_file.to_str().unwrap()]);
    let (code, out, _) = check();
    assert_eq!(code, 1, "no such account yet: {out}");

    let mut t = Pty::spawn(Path::new("/bin/bash"), &[file.to_str().unwrap()], &[]);
    t.expect(&format!("Password of {}\\Administrator:", dc.domain));
    t.send_secret(&dc.admin_password);
    t.expect("New Password:");
    t.send_secret(SVC_PW);
    t.expect("Retype Password:");
    t.send_secret(SVC_PW);
    t.expect(&format!("Done: enter {account} and its password"));
    assert_eq!(t.wait().code(), Some(0), "{}", t.transcript());
    let said = t.transcript();
    assert!(
        !said.contains(SVC_PW) && !said.contains(&dc.admin_password),
        "no password echoed:\n{said}"
    );

    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("All checks passed."), "{out}");

    // The Windows variant names the same account, with the flags the checks want.
    let (code, ps, _) = agent(&["prepare", "--root-dn", &dc.base_dn, "--netbios", &dc.domain]);
    assert_eq!(code, 0);
    assert!(
        ps.contains(&format!("$Trustee = '{account}'"))
            && ps.contains("-PasswordNeverExpires $true -ChangePasswordAtLogon $false")
            && ps.lines().filter(|l| l.starts_with("dsacls $Scope ")).count() == 10,
        "{ps}"
    );
    // A name the checks refuse is refused here first.
    let (code, _, err) = agent(&["prepare", "--root-dn", &dc.base_dn, "--account", "ferry-sync"]);
    assert_eq!(code, 2);
    assert!(err.contains("contains \"ferry\""), "{err}");
}
