//! Test harness: a real `ferry-cloud` on 127.0.0.1:0 over a real database
//! (a fresh SQLite file, or a fresh database in the PostgreSQL that
//! `scripts/test` starts and names in `FERRY_TEST_POSTGRES_URL`).
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

pub mod certs;

use std::sync::Arc;

use ferry_cloud::app::{serve, AppState, Config};
use ferry_cloud::clock::OffsetClock;
use ferry_cloud::secrets::{hash_password, new_token, token_hash, API_TOKEN_PREFIX};
use ferry_cloud::store::{Store, TokenKind};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

/// Which engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh, empty database that lives as long as this value.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(engine: Engine) -> TestDb {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
                TestDb { url, _dir: Some(dir) }
            }
            Engine::Postgres => {
                let admin_url = std::env::var("FERRY_TEST_POSTGRES_URL").expect(
                    "FERRY_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
                );
                let name = format!("ferry_test_{}", Uuid::new_v4().simple());
                sqlx::any::install_default_drivers();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url)
                    .await
                    .expect("connect to the test PostgreSQL");
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create a test database");
                let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
                TestDb {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.url).await.expect("open store")
    }
}

/// An org with an admin and an API token.
#[derive(Debug, Clone)]
pub struct TestOrg {
    pub id: Uuid,
    pub admin_email: String,
    pub admin_password: String,
    pub token: String,
}

pub async fn create_org(store: &Store, name: &str) -> TestOrg {
    let email = format!("admin@{}.test", name.to_lowercase());
    let password = format!("pw-{}", Uuid::new_v4());
    let phc = hash_password(&password).expect("hash");
    let token = new_token(API_TOKEN_PREFIX);
    let mut tx = store.begin().await.expect("begin");
    let org = tx.insert_org(name, 1).await.expect("org");
    let admin = tx.insert_admin(org.id, &email, &phc, 1).await.expect("admin");
    tx.insert_token(org.id, admin.id, TokenKind::Api, "test", &token_hash(&token), 1, None)
        .await
        .expect("token");
    tx.commit().await.expect("commit");
    TestOrg {
        id: org.id,
        admin_email: email,
        admin_password: password,
        token,
    }
}

/// A running server.
pub struct TestServer {
    pub base: String,
    pub store: Store,
    pub clock: Arc<OffsetClock>,
    pub org: TestOrg,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _db: TestDb,
}

impl TestServer {
    pub async fn start(engine: Engine) -> TestServer {
        Self::start_with(engine, Config::default()).await
    }

    pub async fn start_with(engine: Engine, config: Config) -> TestServer {
        Self::start_inner(engine, config, true).await
    }

    /// A server with no organization yet (the console's first run); `org`
    /// is a placeholder.
    pub async fn start_empty(engine: Engine) -> TestServer {
        Self::start_inner(engine, Config::default(), false).await
    }

    async fn start_inner(engine: Engine, config: Config, with_org: bool) -> TestServer {
        let db = TestDb::new(engine).await;
        let store = db.open().await;
        let org = if with_org {
            create_org(&store, "Acme").await
        } else {
            TestOrg {
                id: Uuid::nil(),
                admin_email: String::new(),
                admin_password: String::new(),
                token: String::new(),
            }
        };
        let clock = Arc::new(OffsetClock::default());
        let state = AppState::new(store.clone(), clock.clone(), config);
        let (base, tx) = spawn_server(state).await;
        TestServer {
            base,
            store,
            clock,
            org,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            _db: db,
        }
    }

    /// A request with the org's admin token.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let token = self.org.token.clone();
        self.call_as(&token, method, path, body).await
    }

    /// A request with a given bearer token.
    pub async fn call_as(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Another `ferry-cloud` instance on the same database (as a second
    /// instance behind a load balancer), with its own settings; it stops
    /// when the returned value is dropped.
    pub async fn another_instance(&self, config: Config) -> Instance {
        let store = Store::open(&self._db.url).await.expect("open store");
        let state = AppState::new(store.clone(), self.clock.clone(), config);
        let (base, tx) = spawn_server(state).await;
        Instance {
            base,
            store,
            url: self._db.url.clone(),
            _shutdown: tx,
        }
    }

    /// Enrols an agent in `domain` with a new Connect Key.
    pub async fn enrol(&self, domain: &str) -> TestAgent {
        use base64::Engine as _;
        let (_, k) = self
            .call(Method::POST, &format!("/api/v1/domains/{domain}/connect-keys"), None)
            .await;
        let body = serde_json::json!({"connect_key": k["connect_key"], "hostname": "dc", "version": "0.1.0",
                          "public_key": base64::engine::general_purpose::STANDARD.encode([1u8; 32])});
        let (st, r) = self.call_as("", Method::POST, "/agent/v1/register", Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        TestAgent {
            token: r["agent_token"].as_str().unwrap().to_owned(),
            id: r["agent_id"].as_str().unwrap().to_owned(),
        }
    }

    /// An agent's heartbeat (which takes the primary lease when it is free).
    pub async fn heartbeat(&self, a: &TestAgent) -> Value {
        let body = serde_json::json!({"state": "idle"});
        let (st, v) = self
            .call_as(&a.token, Method::POST, "/agent/v1/heartbeat", Some(body))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    /// Creates a user over SCIM; returns its id.
    pub async fn create_user(&self, name: &str) -> String {
        let body = serde_json::json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
        let (st, v) = self.call(Method::POST, "/scim/v2/Users", Some(body)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    /// A second org with its own token (for isolation tests).
    pub async fn other_org(&self, name: &str) -> TestOrg {
        create_org(&self.store, name).await
    }
}

/// Serves `state` on 127.0.0.1:0 until the sender is dropped or fires.
async fn spawn_server(state: AppState) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(listener, state, async {
            rx.await.ok();
        })
        .await
        .expect("serve");
    });
    (base, tx)
}

/// An agent enrolled with a Connect Key.
pub struct TestAgent {
    pub token: String,
    pub id: String,
}

/// A further instance of the service (see [`TestServer::another_instance`]).
pub struct Instance {
    pub base: String,
    pub store: Store,
    /// The database both instances use.
    pub url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }
}

/// Runs a test body on SQLite and on PostgreSQL: `both_engines!(name, |engine| async move { … });`
#[macro_export]
macro_rules! both_engines {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::common::Engine::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::common::Engine::Postgres).await;
            }
        }
    };
}
