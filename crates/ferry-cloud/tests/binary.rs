//! The `ferry-cloud` binary as an operator runs it: `init`, then `serve`,
//! then SIGTERM. Also proves that no secret that passed through the service
//! (admin password, API and session tokens, Connect Key, agent token, a SCIM
//! user's password) reaches its log, even at debug level.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ferry-cloud");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn init_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str], password: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("init")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .stdin(Stdio::null());
        c.env_remove("FERRY_ADMIN_PASSWORD");
        if let Some(p) = password {
            c.env("FERRY_ADMIN_PASSWORD", p);
        }
        c.output().unwrap()
    };
    let token = dir.path().join("t").display().to_string();
    let out = run(
        &["--org", "Acme", "--admin-email", "not-an-email", "--token-out", &token],
        Some("longenough"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an e-mail address"));
    let out = run(
        &["--org", "Acme", "--admin-email", "a@acme.test", "--token-out", &token],
        Some("short"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"));
    let out = run(
        &["--org", "Acme", "--admin-email", "a@acme.test", "--token-out", &token],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("FERRY_ADMIN_PASSWORD"));
    let out = run(
        &["--org", "Acme", "--admin-email", "a@acme.test", "--token-out", &token],
        Some("longenough"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(
        &["--org", "Acme", "--admin-email", "b@acme.test", "--token-out", &token],
        Some("longenough"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("an organization named \"Acme\" exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_then_sigterm_and_no_secret_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token_file = dir.path().join("admin.token");
    let admin_password = "Adm1n-Passw0rd-Xyzzy";
    let out = Command::new(BIN)
        .args(["init", "--org", "Acme", "--admin-email", "admin@acme.test"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--token-out")
        .arg(&token_file)
        .env("FERRY_ADMIN_PASSWORD", admin_password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api_token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is private");
    }
    let init_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!init_out.contains(&api_token) && !init_out.contains(admin_password));

    let port = free_port();
    let log_path = dir.path().join("serve.log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let call = |method: reqwest::Method, path: &str, token: &str, body: Value| {
        let req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (st, session) = call(
        reqwest::Method::POST,
        "/api/v1/sessions",
        "",
        json!({"email": "admin@acme.test", "password": admin_password}),
    )
    .await;
    assert_eq!(st, 201);
    let session = session["token"].as_str().unwrap().to_owned();
    let wrong_password = "Wr0ng-Guess-Plugh";
    call(
        reqwest::Method::POST,
        "/api/v1/sessions",
        "",
        json!({"email": "admin@acme.test", "password": wrong_password}),
    )
    .await;
    let (_, t) = call(
        reqwest::Method::POST,
        "/api/v1/tokens",
        &session,
        json!({"name": "scim"}),
    )
    .await;
    let second_token = t["token"].as_str().unwrap().to_owned();
    let user_password = "Us3r-Secret-Frobozz";
    let (st, _) = call(
        reqwest::Method::POST,
        "/scim/v2/Users",
        &api_token,
        json!({"userName": "ann", "password": user_password}),
    )
    .await;
    assert_eq!(st, 201);
    let (_, d) = call(
        reqwest::Method::POST,
        "/api/v1/domains",
        &api_token,
        json!({"name": "example.test"}),
    )
    .await;
    let (_, k) = call(
        reqwest::Method::POST,
        &format!("/api/v1/domains/{}/connect-keys", d["id"].as_str().unwrap()),
        &api_token,
        json!({}),
    )
    .await;
    let connect_key = k["connect_key"].as_str().unwrap().to_owned();
    let (st, r) = call(
        reqwest::Method::POST,
        "/agent/v1/register",
        "",
        json!({"connect_key": connect_key, "hostname": "dc1", "version": "0.1.0", "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    let agent_token = r["agent_token"].as_str().unwrap().to_owned();
    let (st, _) = call(reqwest::Method::POST, "/agent/v1/heartbeat", &agent_token, json!({})).await;
    assert_eq!(st, 200);
    call(
        reqwest::Method::GET,
        "/api/v1/domains?token=leak",
        &format!("{api_token}x"),
        json!({}),
    )
    .await;

    // Graceful stop on SIGTERM.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit after SIGTERM: {status}");

    let mut log = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("ferry-cloud listening"), "{log}");
    assert!(log.contains("agent registered"), "{log}");
    assert!(log.contains("ferry-cloud stopped"), "{log}");
    for (what, secret) in [
        ("admin password", admin_password),
        ("wrong password", wrong_password),
        ("API token", api_token.as_str()),
        ("second API token", second_token.as_str()),
        ("session token", session.as_str()),
        ("user password", user_password),
        ("connect key", connect_key.as_str()),
        ("agent token", agent_token.as_str()),
    ] {
        assert!(!log.contains(secret), "the log contains the {what}");
    }
    assert!(!log.contains("token=leak"), "query strings are not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_loopback_address_or_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = |extra: &[&str], token: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("serve").arg("--data-dir").arg(&data).args(extra);
        c.env_remove("FERRY_METRICS_TOKEN");
        if let Some(t) = token {
            c.env("FERRY_METRICS_TOKEN", t);
        }
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    // Not loopback, no token: refused, and told why.
    let (port, metrics_port) = (free_port(), free_port());
    let out = serve(
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("0.0.0.0:{metrics_port}"),
        ],
        None,
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a loopback address"), "{err}");

    // With a token: on the service's address only with it, and on the loopback listener.
    let metrics_token = "metrics-token-for-the-binary-test";
    let mut child = serve(
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        Some(metrics_token),
    )
    .spawn()
    .unwrap();
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(start.elapsed() < Duration::from_secs(20), "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_service = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_service.status(), 401, "the service's address wants the token");
    let with_token = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth(metrics_token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    // With a token set, --metrics-listen asks for it too.
    let listener = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .bearer_auth(metrics_token)
        .send()
        .await
        .unwrap();
    assert_eq!(listener.status(), 200);
    let text = listener.text().await.unwrap();
    assert!(
        text.contains("# TYPE ferry_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(!text.contains(metrics_token));
    child.kill().unwrap();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    child.wait().unwrap();
    assert!(!log.contains(metrics_token), "the metrics token is not logged");
}
