//! `ferry-cloud`: the cloud directory service.
//!
//! `ferry-cloud init …` creates an organization and its first admin;
//! `ferry-cloud serve …` runs the service.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_cloud::app::{self, AppState, Config};
use ferry_cloud::clock::{Clock, SystemClock};
use ferry_cloud::secrets::{hash_password, new_token, token_hash, API_TOKEN_PREFIX};
use ferry_cloud::store::{redact_url, Store, TokenKind};
use ferry_cloud::tls::ServerTls;

#[derive(Parser)]
#[command(
    name = "ferry-cloud",
    version,
    about = "Ferry cloud directory: admin API, SCIM 2.0, agent API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Create an organization, its first admin and an admin API token.
    Init(InitArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// Where Ferry keeps its files (the SQLite database by default).
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
    data_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite: postgres://user:pass@host/db
    #[arg(long, env = "FERRY_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The URL agents and browsers use to reach this service (put in Connect Keys and SCIM locations).
    #[arg(long, env = "FERRY_PUBLIC_URL")]
    public_url: Option<String>,
    /// The ferry-agent binary to offer for download.
    #[arg(long, env = "FERRY_AGENT_BINARY")]
    agent_binary: Option<PathBuf>,
    /// The ferry-agent.msi (Windows installer) to offer for download (scripts/build-msi builds it).
    #[arg(long, env = "FERRY_AGENT_MSI")]
    agent_msi: Option<PathBuf>,
    /// Proxies (addresses or CIDR ranges) whose Forwarded / X-Forwarded-For headers
    /// name the client; repeat it or separate with commas. Without it the TCP peer is the client.
    #[arg(long = "trusted-proxy", env = "FERRY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Serve Prometheus metrics (GET /metrics) on this address too, without
    /// a token: a loopback address (127.0.0.1:9464), unless --metrics-token is set.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// A bearer token that may read GET /metrics on the service's own
    /// address (and is required on a non-loopback --metrics-listen). Prefer
    /// the environment variable: a command line is visible to every user.
    #[arg(long, env = "FERRY_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Audit entries older than this many days are deleted; 0 keeps them forever.
    #[arg(long, env = "FERRY_AUDIT_RETENTION_DAYS", default_value_t = 365)]
    audit_retention_days: u32,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first);
    /// re-read on SIGHUP and when the file changes.
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback: only behind a TLS proxy
    /// (the console then shows a warning). Without TLS the service listens on loopback only.
    #[arg(long, env = "FERRY_INSECURE_HTTP", conflicts_with = "tls_cert")]
    insecure_http: bool,
}

/// How often the certificate files are checked for a change.
const TLS_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `10.0.0.0/8`, or one address (`10.0.0.7`, `::1`).
fn parse_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR range (such as 10.0.0.0/8)"))
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Organization name.
    #[arg(long)]
    org: String,
    /// The first admin's e-mail (their sign-in name).
    #[arg(long)]
    admin_email: String,
    /// Write a new admin API token to this file (mode 0600).
    #[arg(long)]
    token_out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(a) => serve(a).await,
        Command::Init(a) => init(a).await,
    }
}

async fn open_store(a: &StoreArgs) -> Result<Store> {
    let url = match &a.database_url {
        Some(u) => u.clone(),
        None => {
            create_private_dir(&a.data_dir)?;
            format!("sqlite://{}", a.data_dir.join("ferry.db").display())
        }
    };
    Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&url)))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<()> {
    let store = open_store(&a.store).await?;
    let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (in use, or not an address of this host?)",
            a.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            create_private_dir(&a.store.data_dir)?;
            let vouches = a.store.data_dir.join("tls-key-vouches.json");
            let tls = ServerTls::load(cert, key, Some(vouches)).context("cannot serve TLS")?;
            tracing::info!(cert = %cert.display(), pin = %tls.pin(), "serving HTTPS; Connect Keys pin this key");
            tls.clone().watch(Arc::new(SystemClock), TLS_WATCH_EVERY);
            Some(tls)
        }
        _ => None,
    };
    if let Some(refusal) = clear_text_refusal(addr, tls.is_some(), a.insecure_http) {
        bail!(refusal);
    }
    if a.insecure_http && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plain HTTP on a network address (--insecure-http): only safe behind a TLS proxy");
    }
    // By default, offer the ferry-agent installed next to this binary.
    let agent_binary = a.agent_binary.or_else(|| {
        let sibling = std::env::current_exe().ok()?.with_file_name("ferry-agent");
        sibling.exists().then_some(sibling)
    });
    match &agent_binary {
        Some(p) => tracing::info!(path = %p.display(), "offering the agent binary at /downloads/ferry-agent"),
        None => tracing::warn!("no ferry-agent binary to offer at /downloads/ferry-agent (see --agent-binary)"),
    }
    // And the Windows installer, likewise.
    let agent_msi = a.agent_msi.or_else(|| {
        let sibling = std::env::current_exe().ok()?.with_file_name("ferry-agent.msi");
        sibling.exists().then_some(sibling)
    });
    match &agent_msi {
        Some(p) => tracing::info!(path = %p.display(), "offering the Windows installer at /downloads/ferry-agent.msi"),
        None => tracing::info!("no ferry-agent.msi to offer for Windows (see --agent-msi)"),
    }
    if !a.trusted_proxies.is_empty() {
        let list: Vec<String> = a.trusted_proxies.iter().map(ToString::to_string).collect();
        tracing::info!(proxies = %list.join(","), "client addresses from Forwarded / X-Forwarded-For of these proxies");
    }
    let metrics_token = a.metrics_token.map(|t| t.trim().to_owned());
    if metrics_token.as_deref().is_some_and(|t| t.len() < 16) {
        bail!("--metrics-token must be at least 16 characters (try: openssl rand -hex 32)");
    }
    let retention = ferry_cloud::store::RetentionPolicy {
        audit_max_age_ms: (a.audit_retention_days > 0).then(|| i64::from(a.audit_retention_days) * 24 * 3600 * 1000),
        ..Default::default()
    };
    let config = Config {
        public_url: a.public_url,
        trusted_proxies: a.trusted_proxies,
        agent_binary,
        agent_msi,
        metrics_token_hash: metrics_token.as_deref().map(token_hash),
        retention,
        tls,
        insecure_http: a.insecure_http && !addr.ip().is_loopback(),
        ..Config::default()
    };
    let state = AppState::new(store.clone(), Arc::new(SystemClock), config);
    let metrics = match &a.metrics_listen {
        Some(at) => Some(serve_metrics(at, metrics_token.is_some(), state.clone()).await?),
        None => None,
    };
    tracing::info!(%addr, "ferry-cloud listening (admin API /api/v1, SCIM /scim/v2, agents /agent/v1)");
    app::serve(listener, state, shutdown_signal()).await?;
    if let Some(m) = metrics {
        m.abort();
    }
    store.close().await;
    tracing::info!("ferry-cloud stopped");
    Ok(())
}

/// `--metrics-listen`: GET /metrics on an address of its own. Without a
/// token, only on loopback: the figures name the org's domains.
async fn serve_metrics(at: &str, has_token: bool, state: AppState) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("cannot listen on {at} for metrics (in use, or not an address of this host?)"))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !has_token {
        bail!("--metrics-listen {addr} is not a loopback address: use 127.0.0.1:PORT, or set --metrics-token (FERRY_METRICS_TOKEN) so scrapers must present it");
    }
    let router = if has_token {
        app::metrics_router_with_token(state)
    } else {
        app::metrics_router(state)
    };
    tracing::info!(%addr, "metrics at /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }))
}

/// Why the service may not listen where it was asked to, if it may not:
/// plain HTTP goes to loopback only, unless `--insecure-http` says a TLS
/// proxy is in front.
fn clear_text_refusal(addr: std::net::SocketAddr, tls: bool, insecure_http: bool) -> Option<String> {
    if tls || insecure_http || addr.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "refusing to serve plain HTTP on {addr}, a network address: everything (sign-ins, tokens, directory data) would cross the network in clear. \
         Serve HTTPS with --tls-cert FILE --tls-key FILE, listen on loopback (127.0.0.1) behind a TLS proxy, \
         or, only when a TLS proxy is the sole way in, add --insecure-http"
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

async fn init(a: InitArgs) -> Result<()> {
    let org = a.org.trim();
    if org.is_empty() || org.chars().count() > 200 {
        bail!("--org must be 1 to 200 characters");
    }
    let email = a.admin_email.trim().to_lowercase();
    if !looks_like_email(&email) {
        bail!("--admin-email {:?} is not an e-mail address", a.admin_email);
    }
    let password = admin_password()?;
    let store = open_store(&a.store).await?;
    let phc = hash_password(&password).map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    let now = SystemClock.now_ms();
    let token = new_token(API_TOKEN_PREFIX);
    let mut tx = store.begin().await?;
    let o = tx.insert_org(org, now).await?;
    let admin = tx.insert_admin(o.id, &email, &phc, now).await?;
    tx.insert_token(
        o.id,
        admin.id,
        TokenKind::Api,
        "created by ferry-cloud init",
        &token_hash(&token),
        now,
        None,
    )
    .await?;
    tx.append_audit(
        o.id,
        "system",
        "org.create",
        &format!("org:{}", o.id),
        &serde_json::json!({"name": org, "admin": email}),
        now,
    )
    .await?;
    write_secret_file(&a.token_out, &token)?;
    tx.commit().await?;
    store.close().await;
    println!("Created organization {:?} ({})", o.name, o.id);
    println!("Admin: {email}");
    println!("Admin API token written to {} (mode 0600)", a.token_out.display());
    Ok(())
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn admin_password() -> Result<String> {
    if let Ok(p) = std::env::var("FERRY_ADMIN_PASSWORD") {
        check_password(&p)?;
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no admin password: set FERRY_ADMIN_PASSWORD, or run init in a terminal to be asked");
    }
    let p = rpassword::prompt_password("Admin password: ")?;
    check_password(&p)?;
    let again = rpassword::prompt_password("Again: ")?;
    if p != again {
        bail!("the two passwords differ");
    }
    Ok(p)
}

fn check_password(p: &str) -> Result<()> {
    if p.chars().count() < 8 {
        bail!("the admin password must be at least 8 characters");
    }
    Ok(())
}

fn write_secret_file(path: &Path, secret: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write the token file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_text_stays_on_loopback_unless_told() {
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(clear_text_refusal(at("127.0.0.1:8080"), false, false), None);
        assert_eq!(clear_text_refusal(at("127.3.4.5:8080"), false, false), None);
        assert_eq!(clear_text_refusal(at("[::1]:8080"), false, false), None);
        let refused = clear_text_refusal(at("0.0.0.0:8080"), false, false).unwrap();
        assert!(
            refused.contains("--tls-cert") && refused.contains("--insecure-http"),
            "{refused}"
        );
        assert!(clear_text_refusal(at("10.0.0.5:8080"), false, false).is_some());
        assert_eq!(clear_text_refusal(at("0.0.0.0:8443"), true, false), None);
        assert_eq!(clear_text_refusal(at("0.0.0.0:8080"), false, true), None);
    }
}
