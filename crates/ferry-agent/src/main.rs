//! `ferry-agent`: the sync agent installed on or next to a domain controller.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_agent::ad::AdSettings;
use ferry_agent::preflight::{self, PreflightInput};

#[derive(Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Ferry sync agent: keeps one Active Directory domain and the Ferry cloud directory in step"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the domain controller and the service account (the install guide's rules), each item ✓ or ✗ with its fix.
    Check(CheckArgs),
    /// Run the sync: keep the AD domain and the cloud directory in step, until stopped.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The agent's configuration directory (agent.json and its secret files).
    #[arg(long, default_value = "/etc/ferry-agent")]
    config_dir: PathBuf,
}

#[derive(Args)]
struct DcArgs {
    /// The domain controller: ldaps://dc.example.com or ldap://dc.example.com (StartTLS).
    #[arg(long)]
    ldap_url: String,
    /// PEM file with the CA that signed the DC's certificate (default: the system's trust store).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any DC certificate. Lab use only: the connection can then be intercepted.
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// Do not upgrade ldap:// with StartTLS (plain LDAP; passwords will not be written).
    #[arg(long)]
    no_starttls: bool,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    dc: DcArgs,
    /// The service account, as DOMAIN\user.
    #[arg(long)]
    bind_user: String,
    /// A file holding the service account's password (or set FERRY_BIND_PASSWORD; else you are asked).
    #[arg(long)]
    bind_password_file: Option<PathBuf>,
    /// The Root DN, e.g. DC=example,DC=com.
    #[arg(long)]
    root_dn: String,
    /// Where the agent works (delegation is checked there); the Root DN when not given. Repeatable.
    #[arg(long = "scope")]
    scopes: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(a) => check(a).await,
        Command::Run(a) => run_sync(a).await,
    }
}

fn settings(a: &DcArgs) -> AdSettings {
    let mut s = AdSettings::new(&a.ldap_url);
    s.ca_file = a.ca_file.clone();
    s.insecure_skip_tls_verify = a.insecure_skip_tls_verify;
    s.starttls = a.ldap_url.starts_with("ldap://") && !a.no_starttls;
    s.timeout = Duration::from_secs(15);
    s
}

fn read_password(file: &Option<PathBuf>, what: &str) -> Result<String> {
    if let Some(f) = file {
        let p = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok(p.trim_end_matches(['\r', '\n']).to_owned());
    }
    if let Ok(p) = std::env::var("FERRY_BIND_PASSWORD") {
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no password for {what}: give --bind-password-file or set FERRY_BIND_PASSWORD");
    }
    Ok(rpassword::prompt_password(format!("Password for {what}: "))?)
}

async fn check(a: CheckArgs) -> Result<ExitCode> {
    let password = read_password(&a.bind_password_file, &a.bind_user)?;
    let input = PreflightInput {
        settings: settings(&a.dc),
        account: a.bind_user,
        password,
        root_dn: a.root_dn,
        scopes: a.scopes,
    };
    let report = preflight::run(&input).await;
    print!("{}", report.render());
    if report.ok() {
        println!("All checks passed.");
        Ok(ExitCode::SUCCESS)
    } else {
        let failed = report.checks.iter().filter(|c| !c.ok).count();
        println!("{failed} check(s) failed: fix them and run the check again.");
        Ok(ExitCode::from(1))
    }
}

async fn run_sync(a: RunArgs) -> Result<ExitCode> {
    use ferry_agent::config::AgentConfig;
    use ferry_agent::sync::{self, Shared};

    let c = AgentConfig::load(&a.config_dir)?;
    let token = AgentConfig::secret(&c.agent_token_file)?;
    let password = AgentConfig::secret(&c.bind_password_file)?;
    let secret_key = AgentConfig::secret(&c.agent_key_file)?;
    let cloud = ferry_agent::cloud::CloudClient::new(&c.cloud_url, &token)?;
    let mut ad = AdSettings::new(&c.ldap_url);
    ad.ca_file = c.ca_file.clone();
    ad.insecure_skip_tls_verify = c.insecure_skip_tls_verify;
    // The domain (root DN, user OU, policies) comes from the cloud.
    let mut attempt = 0;
    let first = loop {
        match cloud.heartbeat(&Default::default()).await {
            Ok(r) => break r,
            Err(e) if e.code() == Some("agent_revoked") || e.code() == Some("invalid_token") => {
                bail!("{e}: install the agent again with a new Connect Key");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the cloud yet; retrying");
                tokio::time::sleep(sync::backoff(attempt)).await;
                attempt += 1;
            }
        }
    };
    tracing::info!(domain = %first.domain.name, root = %first.domain.root_dn, primary = first.primary, "ferry-agent running");
    let shared = Shared::new(cloud, ad, c.bind_user, password, secret_key, first);
    sync::run(shared, shutdown_signal()).await;
    tracing::info!("ferry-agent stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
