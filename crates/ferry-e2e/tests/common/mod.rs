//! What the end-to-end suites share: a real ferry-cloud on loopback, a
//! delegated Samba DC, enrolment, polling, and the built binaries.
#![allow(dead_code)] // each suite uses its own part

#[path = "../../../ferry-cloud/tests/common/certs.rs"]
pub mod certs;
#[path = "../../../ferry-agent/tests/common/mod.rs"]
pub mod dc;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use dc::{eprint_tail, Dc};
use ferry_agent::ad::write::NewAdUser;
use ferry_agent::ad::AdSettings;
use ferry_agent::cloud::{CloudClient, Pins};
use ferry_agent::preflight::Task;
use ferry_agent::sync::{self, Shared};
use ferry_cloud::app::{serve, AppState, Config};
use ferry_cloud::clock::SystemClock;
use ferry_cloud::secrets::{hash_password, new_token, token_hash, API_TOKEN_PREFIX};
use ferry_cloud::store::{Store, TokenKind};
use serde_json::{json, Value};

pub const SVC_PW: &str = "Svc-Sync-Pa55";

/// A ferry-cloud serving HTTPS itself, with a certificate from a test CA
/// that only the admin's client (`http`) is given: agents trust it by the
/// pin their Connect Key carries, as a private cloud's would.
pub struct Cloud {
    pub base: String,
    pub token: String,
    pub store: Store,
    pub http: reqwest::Client,
    /// The pin of the cloud's TLS key.
    pub pin: ferry_proto::cloud_pin::Pin,
    /// The test CA that signed its certificate.
    pub ca_file: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Cloud {
    pub async fn start() -> Cloud {
        Cloud::start_with(Config::default()).await
    }

    pub async fn start_with(mut config: Config) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = certs::ca(dir.path());
        let cert = certs::signed(dir.path(), "cloud");
        let tls = ferry_cloud::tls::ServerTls::load(&cert.cert, &cert.key, None).unwrap();
        let pin = tls.pin();
        config.tls = Some(tls);
        let store = Store::open(&format!("sqlite://{}", dir.path().join("f.db").display()))
            .await
            .unwrap();
        let token = new_token(API_TOKEN_PREFIX);
        let mut tx = store.begin().await.unwrap();
        let org = tx.insert_org("Acme", 1).await.unwrap();
        let admin = tx
            .insert_admin(org.id, "admin@acme.test", &hash_password("x-password").unwrap(), 1)
            .await
            .unwrap();
        tx.insert_token(org.id, admin.id, TokenKind::Api, "t", &token_hash(&token), 1, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let state = AppState::new(store.clone(), Arc::new(SystemClock), config);
        tokio::spawn(async move { serve(listener, state, std::future::pending()).await.unwrap() });
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_file).unwrap()).unwrap();
        Cloud {
            base,
            token,
            store,
            http: reqwest::Client::builder().add_root_certificate(ca).build().unwrap(),
            pin,
            ca_file,
            _dir: dir,
        }
    }

    /// A `Cloud` for a `ferry-cloud` process over `work` on `port` (see
    /// [`CloudProcess`]): a certificate from a test CA is put where the
    /// process reads it, and the admin's client trusts that CA.
    pub async fn for_process(work: &std::path::Path, port: u16, token: String) -> Cloud {
        let ca_file = certs::ca(work);
        // cloud.pem and cloud-key.pem, where CloudProcess has the service read them.
        let cert = certs::signed(work, "cloud");
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_file).unwrap()).unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        Cloud {
            base: format!("https://127.0.0.1:{port}"),
            token,
            // Not used: this cloud runs in its own process.
            store: Store::open(&format!("sqlite://{}", store_dir.path().join("unused.db").display()))
                .await
                .unwrap(),
            http: reqwest::Client::builder().add_root_certificate(ca).build().unwrap(),
            pin: cert.pin(),
            ca_file,
            _dir: store_dir,
        }
    }

    /// An agent's client for this cloud, trusting its key by the pin.
    pub fn agent_client(&self, token: &str) -> CloudClient {
        CloudClient::with_pins(&self.base, token, Some(Pins::new(vec![self.pin], None))).unwrap()
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(method, path, body).await.unwrap()
    }

    /// A call that may find the cloud down.
    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let st = resp.status().as_u16();
        Ok((st, resp.json().await.unwrap_or(Value::Null)))
    }

    /// The SCIM user with this userName.
    pub async fn user(&self, name: &str) -> Option<Value> {
        self.scim_find("Users", "userName", name).await
    }

    /// The SCIM group with this displayName.
    pub async fn group(&self, name: &str) -> Option<Value> {
        self.scim_find("Groups", "displayName", name).await
    }

    async fn scim_find(&self, resource: &str, attr: &str, value: &str) -> Option<Value> {
        let (_, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/scim/v2/{resource}?filter={attr}%20eq%20%22{value}%22"),
                None,
            )
            .await;
        v["Resources"].as_array().and_then(|a| a.first().cloned())
    }

    pub async fn feed_head(&self) -> i64 {
        let mut tx = self.store.begin().await.unwrap();
        let orgs = tx.list_orgs().await.unwrap();
        tx.feed_head(orgs[0].id).await.unwrap()
    }
}

/// Asks for a comparison now and returns the agent's report of it.
pub async fn audit_now(cloud: &Cloud, domain: &str) -> Value {
    let since = unix_ms();
    let (st, v) = cloud
        .call(reqwest::Method::POST, &format!("/api/v1/domains/{domain}/audit"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    eventually("the agent's report of the comparison", || async {
        let (_, v) = cloud
            .call(reqwest::Method::GET, &format!("/api/v1/domains/{domain}/agents"), None)
            .await;
        let report = v["agents"][0]["audit"].clone();
        (report["at"].as_i64().unwrap_or(0) > since).then_some(report)
    })
    .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Now, in unix milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn eventually<F, Fut, T>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until(what, Duration::from_millis(200), f).await
}

/// Polls `f` every `every` until it answers, for at most 45 s.
pub async fn poll_until<F, Fut, T>(what: &str, every: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A registered agent's identity.
pub struct Enrolled {
    pub agent_id: uuid::Uuid,
    pub token: String,
    pub secret_key: String,
}

/// A fresh DC with a delegated service account (and one user).
pub async fn delegated_dc() -> Dc {
    delegated(Dc::start()).await
}

/// `dc` with a delegated service account (and one user).
pub async fn delegated(dc: Dc) -> Dc {
    let mut admin = dc.admin().await;
    let svc = NewAdUser {
        sam_account_name: "svc-sync".into(),
        password: Some(SVC_PW.into()),
        enabled: true,
        ..Default::default()
    };
    let svc_dn = admin
        .create_user(&format!("CN=Users,{}", dc.base_dn), &svc)
        .await
        .unwrap();
    admin
        .set_attributes(&svc_dn, &[("userAccountControl", Some("66048"))])
        .await
        .unwrap();
    let ldif = dc.ldapsearch(&dc.base_dn, "(sAMAccountName=svc-sync)", &["objectSid"]);
    let raw = {
        use base64::Engine as _;
        let b64 = ldif.lines().find_map(|l| l.strip_prefix("objectSid:: ")).unwrap();
        base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap()
    };
    let sid = ferry_agent::preflight::sd::sid_to_string(&raw).unwrap();
    let sddl: String = Task::ALL.iter().map(|t| t.sddl(&sid)).collect();
    dc.samba_tool(&["dsacl", "set", "--objectdn", &dc.base_dn, "--sddl", &sddl]);
    // An AD user that exists before the agent starts.
    dc.ldapmodify(
        &format!("dn: CN=Early Bird,CN=Users,{}\nobjectClass: user\nsAMAccountName: early\ngivenName: Early\nsn: Bird\nmail: early@example.test\n", dc.base_dn),
        true,
    );

    dc
}

/// A fresh delegated DC, and a cloud with the domain.
pub async fn prepare() -> (Dc, Cloud, String) {
    let dc = delegated_dc().await;
    let cloud = Cloud::start().await;
    let domain = add_domain(&cloud, &dc).await;
    (dc, cloud, domain)
}

/// Adds the DC's domain in the cloud; returns its id.
pub async fn add_domain(cloud: &Cloud, dc: &Dc) -> String {
    let (st, d) = cloud
        .call(
            reqwest::Method::POST,
            "/api/v1/domains",
            Some(json!({"name": dc.realm.to_lowercase(), "netbios_name": dc.domain})),
        )
        .await;
    assert_eq!(st, 201, "{d}");
    d["id"].as_str().unwrap().to_owned()
}

/// A fresh Connect Key for the domain, as the console's install dialog shows it.
pub async fn connect_key(cloud: &Cloud, domain: &str) -> String {
    let (st, k) = cloud
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/connect-keys"),
            None,
        )
        .await;
    assert_eq!(st, 201, "{k}");
    k["connect_key"].as_str().unwrap().to_owned()
}

pub async fn enrol(cloud: &Cloud, domain: &str) -> Enrolled {
    let key = connect_key(cloud, domain).await;
    let (secret_key, public_key) = ferry_proto::seal::generate_keypair();
    let reg = json!({"connect_key": key, "hostname": "dc1", "version": "0.1.0", "public_key": public_key});
    let r: Value = cloud
        .http
        .post(format!("{}/agent/v1/register", cloud.base))
        .json(&reg)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Enrolled {
        agent_id: r["agent_id"].as_str().unwrap().parse().unwrap(),
        token: r["agent_token"].as_str().unwrap().to_owned(),
        secret_key,
    }
}

/// The `ferry-agent` binary cargo built next to this test.
pub fn agent_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("ferry-agent");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ferry-cloud init` into `work/db` (org "Acme", admin@acme.test); returns
/// the admin API token.
pub fn init_cloud_binary(work: &std::path::Path) -> String {
    let token_file = work.join("admin.token");
    let out = std::process::Command::new(cloud_binary())
        .args([
            "init",
            "--org",
            "Acme",
            "--admin-email",
            "admin@acme.test",
            "--data-dir",
        ])
        .arg(work.join("db"))
        .arg("--token-out")
        .arg(&token_file)
        .env("FERRY_ADMIN_PASSWORD", "Admin-Pa55-word")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(&token_file).unwrap().trim().to_owned()
}

/// The `ferry-cloud` binary cargo built next to this test.
pub fn cloud_binary() -> std::path::PathBuf {
    agent_binary().with_file_name("ferry-cloud")
}

/// Runs a sync engine in this process; it stops when the sender drops.
pub async fn run_engine(dc: &Dc, cloud: &Cloud, agent: &Enrolled) -> Engine {
    let shared = engine_shared(dc, cloud, agent).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sync::run(shared.clone(), async {
        stop_rx.await.ok();
    }));
    Engine {
        stop: Some(stop_tx),
        task: Some(task),
        shared,
    }
}

/// An engine running in this process.
pub struct Engine {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<sync::Ended>>,
    /// The engine's state (its counters).
    #[allow(dead_code)]
    pub shared: Arc<Shared>,
}

impl Engine {
    /// Stops cleanly (the engine releases its lease).
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            t.await.ok();
        }
    }
}

/// The engine's shared state for an enrolled agent of `dc`, bound as svc-sync.
pub async fn engine_shared(dc: &Dc, cloud: &Cloud, agent: &Enrolled) -> Arc<Shared> {
    let client = cloud.agent_client(&agent.token);
    let first = client.heartbeat(&Default::default()).await.unwrap();
    let mut ad = AdSettings::new(&dc.ldaps_url);
    ad.ca_file = Some(dc.ca_file.clone());
    Shared::new(
        client,
        ad,
        format!("{}\\svc-sync", dc.domain),
        SVC_PW.into(),
        agent.secret_key.clone(),
        first,
    )
}

/// Creates a user over SCIM (201 expected).
pub async fn scim_create_user(cloud: &Cloud, body: serde_json::Value) -> serde_json::Value {
    let (st, u) = cloud.call(reqwest::Method::POST, "/scim/v2/Users", Some(body)).await;
    assert_eq!(st, 201, "{u}");
    u
}

/// A domain's open sync errors, from the admin API.
pub async fn sync_errors(cloud: &Cloud, domain: &str) -> Vec<serde_json::Value> {
    let (st, v) = cloud
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/domains/{domain}/sync-errors"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v["sync_errors"].as_array().cloned().unwrap_or_default()
}

/// A domain's quarantine entries still waiting for a decision.
pub async fn pending_quarantine(cloud: &Cloud, domain: &str) -> Vec<Value> {
    let (st, q) = cloud
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/domains/{domain}/quarantine"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{q}");
    q["quarantine"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["status"] == "pending")
        .collect()
}

/// Every cloud user, read page by page over SCIM.
pub async fn all_cloud_users(cloud: &Cloud) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    loop {
        let (st, v) = cloud
            .call(
                reqwest::Method::GET,
                &format!("/scim/v2/Users?count=1000&startIndex={}", out.len() + 1),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let page = v["Resources"].as_array().cloned().unwrap_or_default();
        let last = page.len() < 1000;
        out.extend(page);
        if last {
            return out;
        }
    }
}

/// An agent config directory as the installer writes it.
pub fn write_config(dir: &std::path::Path, dc: &Dc, cloud: &Cloud, agent: &Enrolled) {
    use ferry_agent::config::{write_dir, AgentConfig};
    let (agent_token, bind_password) =
        AgentConfig::seal_secrets(&agent.secret_key, agent.agent_id, &agent.token, SVC_PW).unwrap();
    let config = AgentConfig {
        version: 1,
        cloud_url: cloud.base.clone(),
        cloud_pins: vec![cloud.pin.to_string()],
        agent_id: agent.agent_id,
        domain: dc.realm.to_lowercase(),
        root_dn: dc.base_dn.clone(),
        ldap_url: dc.ldaps_url.clone(),
        ca_file: None,
        tls_fingerprint: None,
        insecure_skip_tls_verify: false,
        bind_user: format!("{}\\svc-sync", dc.domain),
        agent_token,
        bind_password,
        service: None,
        installed_at: 0,
    };
    write_dir(dir, &config, &agent.secret_key, Some(&dc.ca_file)).unwrap();
}

/// `ferry-agent run` as a process of its own (SIGKILL when dropped; a
/// failing test shows the end of its log).
pub struct AgentProcess(pub std::process::Child, std::path::PathBuf);

impl AgentProcess {
    pub fn spawn(dir: &std::path::Path, log: &str) -> AgentProcess {
        let path = dir.join(log);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        AgentProcess(
            std::process::Command::new(agent_binary())
                .args(["run", "--config-dir"])
                .arg(dir)
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(file)
                .spawn()
                .unwrap(),
            path,
        )
    }

    pub fn kill9(&mut self) {
        self.0.kill().ok(); // SIGKILL
        self.0.wait().ok();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprint_tail("the agent's log", &log, 60);
        }
    }
}

/// `ferry-cloud serve` as a process of its own (SIGKILL when dropped),
/// serving HTTPS with `data/cloud.pem` and `data/cloud-key.pem`.
pub struct CloudProcess(pub std::process::Child);

impl CloudProcess {
    pub fn spawn(data: &std::path::Path, port: u16) -> CloudProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("cloud.log"))
            .unwrap();
        CloudProcess(
            std::process::Command::new(cloud_binary())
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(data.join("db"))
                .arg("--tls-cert")
                .arg(data.join("cloud.pem"))
                .arg("--tls-key")
                .arg(data.join("cloud-key.pem"))
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// The cloud in a process of its own, so it can be killed and stopped.
pub struct CloudServer {
    pub work: tempfile::TempDir,
    port: u16,
    proc: Option<CloudProcess>,
    pub cloud: Cloud,
}

impl CloudServer {
    /// `ferry-cloud init`, then `serve` on a free loopback port.
    pub async fn start() -> CloudServer {
        let work = tempfile::tempdir().unwrap();
        let token = init_cloud_binary(work.path());
        let port = free_port();
        let cloud = Cloud::for_process(work.path(), port, token).await;
        let mut s = CloudServer {
            work,
            port,
            proc: None,
            cloud,
        };
        s.up().await;
        s
    }

    /// Starts (again) the process, and waits for it to answer.
    pub async fn up(&mut self) {
        self.proc = Some(CloudProcess::spawn(self.work.path(), self.port));
        let start = Instant::now();
        while self
            .cloud
            .http
            .get(format!("{}/healthz", self.cloud.base))
            .send()
            .await
            .is_err()
        {
            assert!(start.elapsed() < Duration::from_secs(30), "the cloud did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().ok();
            p.0.wait().ok();
        }
    }
}
