//! The agent trusts the cloud by the key its Connect Key pins: installed
//! with nothing but the key from a `ferry-cloud` that serves a self-signed
//! certificate, it syncs both ways; it follows a new key the old one vouched
//! for (a certificate replaced and SIGHUP); it refuses a key that changed
//! without a vouch, saying what to do; `ferry-agent trust` re-pins.
//! Everything real: the `ferry-cloud` and `ferry-agent` binaries, a Samba DC.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferry_agent::cloud::Pins;
use ferry_cloud::store::Store;
use ferry_proto::cloud_pin::Pin;
use ferry_proto::connect_key::parse_connect_key;
use serde_json::{json, Value};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// `ferry-cloud serve` over `work/db` with the certificate in `work/cloud.pem`.
fn serve(work: &Path, port: u16) -> Killed {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("cloud.log"))
        .unwrap();
    Killed(
        Command::new(cloud_binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(work.join("db"))
            .env("FERRY_TLS_CERT", work.join("cloud.pem"))
            .env("FERRY_TLS_KEY", work.join("cloud-key.pem"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Puts `files` where the cloud reads its certificate.
fn install_certificate(work: &Path, files: &certs::CertFiles) {
    std::fs::copy(&files.cert, work.join("cloud.pem")).unwrap();
    std::fs::copy(&files.key, work.join("cloud-key.pem")).unwrap();
}

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(agent_binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn pins_in(dir: &Path) -> Vec<Pin> {
    ferry_agent::config::AgentConfig::load(dir).unwrap().cloud_pins()
}

async fn until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_pins_the_clouds_key_follows_a_vouched_rotation_and_refuses_an_unvouched_one() {
    let dc = delegated_dc().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = init_cloud_binary(w);
    // A self-signed certificate for a name the agent never connects by: only the pin can make it trusted.
    let first = certs::self_signed(w, "first");
    install_certificate(w, &first);
    let port = free_port();
    let mut server = serve(w, port);
    let base = format!("https://127.0.0.1:{port}");
    // The admin's client trusts the same pin (test harness; the agent is under test).
    let admin_http = |pin: Pin| {
        let tls = ferry_agent::cloud::trust::pinned_config(Pins::new(vec![pin], None)).unwrap();
        reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
    };
    let store_dir = tempfile::tempdir().unwrap();
    let mut cloud = Cloud {
        base: base.clone(),
        token,
        // Not used for this cloud (it runs in its own process); keeps the helper type.
        store: Store::open(&format!("sqlite://{}", store_dir.path().join("unused.db").display()))
            .await
            .unwrap(),
        http: admin_http(first.pin()),
        pin: first.pin(),
        ca_file: first.cert.clone(),
        _dir: store_dir,
    };
    let up = |http: reqwest::Client| {
        let url = format!("{base}/healthz");
        async move {
            let start = Instant::now();
            while http.get(&url).send().await.is_err() {
                assert!(start.elapsed() < Duration::from_secs(20), "the cloud did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    up(cloud.http.clone()).await;
    let domain = add_domain(&cloud, &dc).await;
    let key = connect_key(&cloud, &domain).await;
    let carried = parse_connect_key(&key).unwrap();
    assert!(key.starts_with("fck2."), "{key}");
    assert_eq!(
        (carried.cloud_url.as_str(), carried.pin),
        (base.as_str(), Some(first.pin()))
    );

    // Installed with the Connect Key alone: no cloud URL, no CA for the cloud.
    let dir = w.join("agent");
    let pw = w.join("pw");
    std::fs::write(&pw, SVC_PW).unwrap();
    let (code, out) = agent(&[
        "install",
        "--non-interactive",
        "--no-service",
        "--connect-key",
        &key,
        "--ldap-url",
        &dc.ldaps_url,
        "--ca-file",
        dc.ca_file.to_str().unwrap(),
        "--root-dn",
        &dc.base_dn,
        "--bind-user",
        &format!("{}\\svc-sync", dc.domain),
        "--bind-password-file",
        pw.to_str().unwrap(),
        "--config-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "TLS key is pinned from the Connect Key (SHA-256 of its public key {}",
            first.pin()
        )),
        "{out}"
    );
    assert_eq!(pins_in(&dir), vec![first.pin()]);
    let config: Value = serde_json::from_slice(&std::fs::read(dir.join("agent.json")).unwrap()).unwrap();
    assert_eq!(config["cloud_pins"], json!([first.pin().to_hex()]), "{config}");
    let agent_log = w.join("agent.log");
    let _running = Killed(
        Command::new(agent_binary())
            .args(["run", "--config-dir", dir.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Both ways.
    eventually("AD → cloud through the pinned key", || async {
        cloud.user("early").await
    })
    .await;
    let in_ad = |sam: &'static str| {
        let dc = &dc;
        async move {
            dc.ldapsearch(&dc.base_dn, &format!("(sAMAccountName={sam})"), &["cn"])
                .contains("dn: ")
                .then_some(())
        }
    };
    scim_create_user(&cloud, json!({"userName": "pinned1", "displayName": "Pinned One"})).await;
    eventually("cloud → AD through the pinned key", || in_ad("pinned1")).await;
    let (code, out) = agent(&["status", "--config-dir", dir.to_str().unwrap()]);
    assert!(
        out.contains(&format!("pinned, SHA-256 of its public key {}", first.pin())),
        "{code} {out}"
    );

    // A new key, the files replaced, SIGHUP: the old key vouches for the new
    // one, and an agent connecting afresh moves to it and records it.
    let second = certs::self_signed(w, "second");
    install_certificate(w, &second);
    let hup = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    cloud.http = admin_http(second.pin());
    cloud.pin = second.pin();
    up(cloud.http.clone()).await;
    let (code, out) = agent(&["status", "--config-dir", dir.to_str().unwrap()]);
    assert!(out.contains("registered"), "{code} {out}");
    assert!(
        out.contains(&format!("pinned, SHA-256 of its public key {}", second.pin())),
        "{out}"
    );
    assert_eq!(pins_in(&dir), vec![second.pin()], "the vouched key is recorded");

    // A key that changed while the cloud was stopped: no vouch leads to it.
    server.0.kill().ok();
    server.0.wait().ok();
    let third = certs::self_signed(w, "third");
    install_certificate(w, &third);
    server = serve(w, port);
    cloud.http = admin_http(third.pin());
    cloud.pin = third.pin();
    up(cloud.http.clone()).await;
    let (code, out) = agent(&["status", "--config-dir", dir.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    for part in [
        format!("presents the TLS key {}", third.pin()),
        format!("not the pinned {}", second.pin()),
        "did not vouch for it".into(),
        "ferry-agent trust".into(),
    ] {
        assert!(out.contains(&part), "{part:?} missing from:\n{out}");
    }
    assert_eq!(pins_in(&dir), vec![second.pin()], "nothing was re-pinned");
    // The running agent refuses it too (it reconnects after the restart), and says why.
    until("the running agent to refuse the unvouched key", || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .contains("did not vouch for it")
    })
    .await;
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(!log.contains(&installed_token(&dir)), "no token in the agent's log");
    // A change made in the cloud while the agent refuses it: it lands once re-pinned.
    scim_create_user(&cloud, json!({"userName": "waiting1"})).await;

    // `trust`: the key shown, a wrong --pin refused, the right one pinned.
    let (code, out) = agent(&[
        "trust",
        "--config-dir",
        dir.to_str().unwrap(),
        "--pin",
        &second.pin().to_hex(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("Key SHA-256 (the pin): {}", third.pin())) && out.contains("nothing was pinned"),
        "{out}"
    );
    let (code, out) = agent(&["trust", "--config-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 2, "without a terminal or --pin nothing is pinned: {out}");
    assert!(out.contains(&format!("--pin {}", third.pin())), "{out}");
    assert_eq!(pins_in(&dir), vec![second.pin()]);
    let (code, out) = agent(&[
        "trust",
        "--config-dir",
        dir.to_str().unwrap(),
        "--pin",
        &third.pin().to_base64(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Pinned"), "{out}");
    assert_eq!(pins_in(&dir), vec![third.pin()]);
    // The running agent takes the new pin from its config and syncs again.
    eventually("the held-back change reaches AD once re-pinned", || in_ad("waiting1")).await;
    let (_, out) = agent(&["status", "--config-dir", dir.to_str().unwrap()]);
    assert!(
        out.contains(&format!("pinned, SHA-256 of its public key {}", third.pin())),
        "{out}"
    );
    drop(server);
}

fn installed_token(dir: &Path) -> String {
    let c = ferry_agent::config::AgentConfig::load(dir).unwrap();
    c.secrets(dir).unwrap().agent_token.to_string()
}
