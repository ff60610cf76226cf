//! The service: shared state, the router of every HTTP surface, and
//! `serve(listener, state, shutdown)` so tests bind `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::ratelimit::RateLimiter;
use crate::store::{Store, StoreResult, Tx};
use crate::tls::ServerTls;

/// Settings of a running service.
#[derive(Debug, Clone)]
pub struct Config {
    /// The URL clients use to reach this service (`https://ferry.example.com`);
    /// when unset, the request's Host header is used.
    pub public_url: Option<String>,
    /// The `ferry-agent` binary served at `/downloads/ferry-agent`.
    pub agent_binary: Option<PathBuf>,
    /// The Windows installer served at `/downloads/ferry-agent.msi`.
    pub agent_msi: Option<PathBuf>,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Largest AD push (`POST /agent/v1/changes`): agents bound theirs to
    /// 2 MiB and split on 413.
    pub agent_push_limit: usize,
    /// Console session lifetime.
    pub session_ttl_ms: i64,
    /// Connect Key lifetime.
    pub connect_key_ttl_ms: i64,
    /// Primary lease lifetime (renewed by each heartbeat).
    pub lease_ttl_ms: i64,
    /// Longest feed long-poll.
    pub max_poll_ms: u64,
    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client (the
    /// TCP peer is the client otherwise).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time a connection has to send a request's headers, counted from the
    /// end of the previous answer: a half-open or idle connection is closed
    /// after it (clients reconnect; agents call every few seconds).
    pub header_read_timeout: Duration,
    /// Time a request's body may go without a byte arriving.
    pub body_timeout: Duration,
    /// Time a request has to be answered (beyond the longest long-poll).
    pub handler_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How often a waiting feed long-poll re-reads the feed anyway: the
    /// fallback should a wake-up be missed (another instance's write while
    /// the PostgreSQL listener was reconnecting).
    pub feed_reread: Duration,
    /// SHA-256 (hex) of the bearer token that may read `/metrics` on the
    /// service's address; without it `/metrics` is served only on
    /// `--metrics-listen`. A hash, so printing the config shows no secret.
    pub metrics_token_hash: Option<String>,
    /// What retention keeps.
    pub retention: crate::store::RetentionPolicy,
    /// How often retention runs; `None`: never (tests that count rows).
    pub retention_interval: Option<Duration>,
    /// HTTPS served by this process (`--tls-cert`/`--tls-key`); plain HTTP when unset.
    pub tls: Option<Arc<ServerTls>>,
    /// Time a connection has to complete its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Plain HTTP on an address other than loopback (`--insecure-http`,
    /// behind a TLS proxy): the console shows a warning.
    pub insecure_http: bool,
}

impl Config {
    /// Whether clients reach this service over HTTPS: it serves TLS itself,
    /// or its public URL says https (a TLS proxy in front).
    pub fn https(&self) -> bool {
        self.tls.is_some()
            || self
                .public_url
                .as_deref()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            public_url: None,
            agent_binary: None,
            agent_msi: None,
            body_limit: 1024 * 1024,
            agent_push_limit: 16 * 1024 * 1024,
            session_ttl_ms: 12 * 3600 * 1000,
            connect_key_ttl_ms: 7 * 24 * 3600 * 1000,
            lease_ttl_ms: 30_000,
            max_poll_ms: 30_000,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(60),
            max_connections: 1024,
            feed_reread: Duration::from_secs(1),
            metrics_token_hash: None,
            retention: crate::store::RetentionPolicy::default(),
            retention_interval: Some(Duration::from_secs(3600)),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            insecure_http: false,
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The parts of [`AppState`].
pub struct Inner {
    /// The database.
    pub store: Store,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Settings.
    pub config: Config,
    /// Failed admin sign-ins, per (address, account).
    pub login_limiter: RateLimiter,
    /// Failed Connect Key uses, per address.
    pub connect_key_limiter: RateLimiter,
    /// Requests with unknown bearer tokens, per (address, kind of token).
    pub token_limiter: RateLimiter,
    /// Woken when the change feed grows (long-polls wait on it).
    pub feed_grew: Notify,
    /// SHA-256 (hex) and size of the agent binary, computed on first download.
    pub agent_checksum: tokio::sync::OnceCell<(String, u64)>,
    /// The same for the Windows installer.
    pub agent_msi_checksum: tokio::sync::OnceCell<(String, u64)>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// State over a store, with a clock and settings.
    pub fn new(store: Store, clock: Arc<dyn Clock>, config: Config) -> Self {
        AppState(Arc::new(Inner {
            store,
            clock,
            config,
            // After N failures a key waits 1 s, twice as long after each
            // later failure, up to the cap (ratelimit.rs).
            login_limiter: RateLimiter::new(5, 1000, 15 * 60 * 1000),
            connect_key_limiter: RateLimiter::new(10, 1000, 15 * 60 * 1000),
            token_limiter: RateLimiter::new(30, 1000, 5 * 60 * 1000),
            feed_grew: Notify::new(),
            agent_checksum: tokio::sync::OnceCell::new(),
            agent_msi_checksum: tokio::sync::OnceCell::new(),
        }))
    }

    /// Now, unix ms.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Commits a transaction that may have grown the feed, and wakes long-polls.
    pub async fn commit(&self, tx: Tx) -> StoreResult<()> {
        tx.commit().await?;
        self.feed_grew.notify_waiters();
        Ok(())
    }
}

/// Every route of the service: the APIs and the console.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    let c = &state.config;
    // A long-poll may wait `max_poll_ms`; the handler bound comes on top.
    let answer_within = c.handler_timeout + Duration::from_millis(c.max_poll_ms);
    let hsts = state.config.https();
    api_routes(&state.config)
        .route(ferry_proto::cloud_pin::VOUCHES_PATH, get(key_vouches))
        .merge(crate::console::router().layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::console::notices,
        )))
        .fallback(crate::console::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(c.body_timeout))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            answer_within,
        ))
        .layer(axum::middleware::from_fn(crate::surface_errors::json_errors))
        .layer(axum::middleware::from_fn(crate::metrics_endpoint::track_requests))
        .layer(axum::middleware::map_response(move |mut r: axum::response::Response| async move {
            // Browsers that reached us over HTTPS never try clear text again.
            if hsts {
                r.headers_mut().insert(
                    axum::http::header::STRICT_TRANSPORT_SECURITY,
                    axum::http::HeaderValue::from_static("max-age=31536000"),
                );
            }
            r
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(
            // Method and path only: query strings and headers may carry secrets.
            |req: &axum::http::Request<_>| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()),
        ))
        .with_state(state)
}

/// The APIs alone, as the console calls them in process.
pub fn api_router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    api_routes(&state.config)
        .fallback(crate::surface_errors::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(crate::surface_errors::json_errors))
        .with_state(state)
}

fn api_routes(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api/v1", crate::api::router())
        .nest("/agent/v1", crate::agent_api::router(config.agent_push_limit))
        .nest("/scim/v2", crate::scim::router())
        .nest("/downloads", crate::downloads::router())
        .route("/metrics", get(crate::metrics_endpoint::scrape_with_token))
}

/// `GET /metrics` alone, for `--metrics-listen` (no token: who can reach the
/// address may read).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::metrics_endpoint::scrape))
        .with_state(state)
}

/// `GET /metrics` alone, with the metrics token (a `--metrics-listen`
/// address that is not loopback).
pub fn metrics_router_with_token(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(crate::metrics_endpoint::scrape_with_token))
        .with_state(state)
}

/// The service's background work: waking long-polls on other instances'
/// writes (PostgreSQL) and retention. Stopped when the value is dropped.
pub struct BackgroundTasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the [`BackgroundTasks`].
pub fn spawn_background(state: &AppState) -> BackgroundTasks {
    BackgroundTasks(vec![
        tokio::spawn(crate::feed_wakeup::listen(state.clone())),
        tokio::spawn(crate::retention::run(state.clone())),
    ])
}

/// `GET /.well-known/ferry/key-vouches`: the old keys' signatures over the
/// keys this service moved to (empty without TLS), so a pinned agent can
/// follow a rotation. Public: each statement proves itself.
async fn key_vouches(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<ferry_proto::cloud_pin::KeyVouches> {
    axum::Json(state.config.tls.as_ref().map(|t| t.vouches()).unwrap_or_default())
}

async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.store.begin().await {
        Ok(_) => (
            axum::http::StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unavailable");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "store unavailable"})),
            )
                .into_response()
        }
    }
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
///
/// Each connection has `tls_handshake_timeout` to complete its TLS
/// handshake (when the service serves TLS) and `header_read_timeout` to
/// send a request's headers (so half-open connections are released), and at
/// most `max_connections` are served at once.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tower::ServiceExt;

    let _background = spawn_background(&state);
    let header_timeout = state.config.header_read_timeout;
    let handshake_timeout = state.config.tls_handshake_timeout;
    let tls = match &state.config.tls {
        Some(t) => Some(t.acceptor().map_err(std::io::Error::other)?),
        None => None,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(state.config.max_connections.max(1)));
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req)
        });
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => serve_connection(stream, service, header_timeout, watcher).await,
                // The handshake is bounded too: a client that opens a
                // connection and sends nothing holds a slot only this long.
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => serve_connection(tls_stream, service, header_timeout, watcher).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One HTTP/1.1 connection over a plain or TLS stream, until it closes or
/// the service shuts down.
async fn serve_connection<S, I>(
    io: I,
    service: S,
    header_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    watcher.watch(http.serve_connection(TokioIo::new(io), service)).await
}
