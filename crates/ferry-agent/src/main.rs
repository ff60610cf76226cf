//! `ferry-agent`: the sync agent installed on or next to a domain controller.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_agent::ad::AdSettings;
use ferry_agent::platform;
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
    /// Print a script that creates the service account and delegates it the six tasks (PowerShell for Windows; --samba for samba-tool).
    Prepare(PrepareArgs),
    /// Check the domain controller and the service account (the install guide's rules), each item ✓ or ✗ with its fix.
    Check(CheckArgs),
    /// Install the agent: a wizard in the terminal, or --non-interactive for automation.
    Install(Box<InstallArgs>),
    /// Run the sync: keep the AD domain and the cloud directory in step, until stopped.
    Run(RunArgs),
    /// Show the installed agent's state: registered, primary, last sync, counts, errors.
    Status(StatusArgs),
    /// Stop the agent's service, revoke the agent in the cloud and remove its files.
    Uninstall(UninstallArgs),
    /// Pin the TLS key the cloud presents now (after a key change the old key did not vouch for).
    Trust(TrustArgs),
    /// Run as the Windows service (the Service Control Manager starts this; in a console use `run`).
    #[cfg(windows)]
    #[command(hide = true)]
    Service(RunArgs),
}

#[derive(Args)]
struct InstallArgs {
    /// Ask nothing: every value comes from the flags; exit non-zero at the first failed check
    /// (2 bad input, 3 domain controller or service account, 4 Connect Key, 5 cloud unreachable, 6 install).
    #[arg(long)]
    non_interactive: bool,
    /// The cloud's URL (default: the one the Connect Key carries).
    #[arg(long)]
    cloud_url: Option<String>,
    /// The Connect Key from the console (or set FERRY_CONNECT_KEY).
    #[arg(long, env = "FERRY_CONNECT_KEY", hide_env_values = true)]
    connect_key: Option<String>,
    /// The domain controller: ldaps://dc.example.com or ldap://dc.example.com (StartTLS).
    #[arg(long)]
    ldap_url: Option<String>,
    /// PEM file with the CA that signed the DC's certificate (default: the system's trust store).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Trust exactly the DC certificate with this SHA-256 fingerprint (e.g. a self-signed one), instead of a CA.
    #[arg(long, value_name = "SHA256", conflicts_with = "ca_file")]
    tls_fingerprint: Option<String>,
    /// Accept any DC certificate. Lab use only: the connection can then be intercepted.
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// The Root DN, e.g. DC=example,DC=com.
    #[arg(long)]
    root_dn: Option<String>,
    /// The service account, as DOMAIN\user.
    #[arg(long)]
    bind_user: Option<String>,
    /// A file holding the service account's password (or set FERRY_BIND_PASSWORD).
    #[arg(long)]
    bind_password_file: Option<PathBuf>,
    /// Where the agent's config goes.
    #[arg(long, default_value_os_t = platform::default_config_dir())]
    config_dir: PathBuf,
    /// Do not set up the service (systemd; on Windows the FerryAgent service); print the command that runs the agent instead.
    #[arg(long)]
    no_service: bool,
    /// Replace an agent already installed in the config directory (it is revoked).
    #[arg(long)]
    replace: bool,
}

#[derive(Args)]
struct PrepareArgs {
    /// The Root DN, e.g. DC=example,DC=com.
    #[arg(long)]
    root_dn: String,
    /// The domain's NetBIOS name (default: the Root DN's first part, upper-cased).
    #[arg(long)]
    netbios: Option<String>,
    /// The service account's name.
    #[arg(long, default_value = ferry_proto::delegation::DEFAULT_ACCOUNT)]
    account: String,
    /// Where to delegate the tasks (default: the Root DN).
    #[arg(long)]
    scope: Option<String>,
    /// A bash script with samba-tool, for a Samba DC.
    #[arg(long)]
    samba: bool,
    /// The DC samba-tool talks to (default: ldap://<the domain's DNS name>).
    #[arg(long)]
    ldap_url: Option<String>,
}

#[derive(Args)]
struct StatusArgs {
    /// The agent's configuration directory.
    #[arg(long, default_value_os_t = platform::default_config_dir())]
    config_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UninstallArgs {
    /// The agent's configuration directory.
    #[arg(long, default_value_os_t = platform::default_config_dir())]
    config_dir: PathBuf,
    /// Remove the files even when the cloud cannot be told (revoke the agent in the console then).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct TrustArgs {
    /// The agent's configuration directory.
    #[arg(long, default_value_os_t = platform::default_config_dir())]
    config_dir: PathBuf,
    /// The key's SHA-256 as the cloud shows it (its log's "serving HTTPS … pin"): pinned only
    /// if the cloud presents exactly this key. Without it, you are shown the key and asked.
    #[arg(long, value_name = "SHA256")]
    pin: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The agent's configuration directory (agent.json and its secret files).
    #[arg(long, default_value_os_t = platform::default_config_dir())]
    config_dir: PathBuf,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9465 (loopback only by default).
    #[arg(long, env = "FERRY_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on an address that is not loopback (keep it behind a firewall).
    #[arg(long)]
    metrics_allow_remote: bool,
}

#[derive(Args)]
struct DcArgs {
    /// The domain controller: ldaps://dc.example.com or ldap://dc.example.com (StartTLS).
    #[arg(long)]
    ldap_url: String,
    /// PEM file with the CA that signed the DC's certificate (default: the system's trust store).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Trust exactly the DC certificate with this SHA-256 fingerprint (e.g. a self-signed one), instead of a CA.
    #[arg(long, value_name = "SHA256", conflicts_with = "ca_file")]
    tls_fingerprint: Option<String>,
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

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(windows)]
    if let Command::Service(a) = &cli.command {
        return windows_service_main(a.config_dir.clone());
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        // Colour only for a person at a terminal: not in a log file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
        Command::Prepare(a) => Ok(prepare(a)),
        Command::Check(a) => check(a).await,
        Command::Install(a) => install(*a).await,
        Command::Run(a) => run_sync(a).await,
        Command::Status(a) => status(a).await,
        Command::Uninstall(a) => uninstall(a).await,
        Command::Trust(a) => trust(a).await,
        #[cfg(windows)]
        Command::Service(_) => Ok(ExitCode::FAILURE), // handled in main, before the runtime
    }
}

/// The Windows service: logs go to a file (a service has no console), and
/// the SCM drives the process from here on.
#[cfg(windows)]
fn windows_service_main(config_dir: PathBuf) -> ExitCode {
    let log = platform::service::log_file(&config_dir);
    let file = log
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(&log));
    match file {
        Ok(f) => tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        Err(_) => tracing_subscriber::fmt().with_env_filter(log_filter()).init(),
    }
    match platform::service::run_as_service(config_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(a: &DcArgs) -> AdSettings {
    let mut s = AdSettings::new(&a.ldap_url);
    s.ca_file = a.ca_file.clone();
    s.tls_fingerprint = a.tls_fingerprint.clone();
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

fn prepare(a: PrepareArgs) -> ExitCode {
    use ferry_agent::install::prepare::{script, Platform, PrepareInput};
    let input = PrepareInput {
        root_dn: a.root_dn,
        netbios: a.netbios,
        account: a.account,
        scope: a.scope,
        ldap_url: a.ldap_url,
        platform: if a.samba { Platform::Samba } else { Platform::Windows },
    };
    match script(&input) {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(m) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
    }
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

async fn install(a: InstallArgs) -> Result<ExitCode> {
    use ferry_agent::install::{self, wizard, NonInteractive};
    if !a.non_interactive {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!("the install wizard needs a terminal: run it in one, or pass --non-interactive with the values as flags (see --help)");
        }
        let code = wizard::run(wizard::Options {
            config_dir: a.config_dir,
            service: !a.no_service,
            insecure_skip_tls_verify: a.insecure_skip_tls_verify,
            tls_fingerprint: a.tls_fingerprint,
        })
        .await;
        return Ok(ExitCode::from(code));
    }
    let mut missing = Vec::new();
    for (flag, v) in [
        ("--connect-key", a.connect_key.is_none()),
        ("--ldap-url", a.ldap_url.is_none()),
        ("--root-dn", a.root_dn.is_none()),
        ("--bind-user", a.bind_user.is_none()),
    ] {
        if v {
            missing.push(flag);
        }
    }
    if !missing.is_empty() {
        eprintln!("error: --non-interactive needs {}", missing.join(", "));
        return Ok(ExitCode::from(2));
    }
    let bind_user = a.bind_user.unwrap_or_default();
    let password = if a.bind_password_file.is_some() || std::env::var_os("FERRY_BIND_PASSWORD").is_some() {
        read_password(&a.bind_password_file, &bind_user)?
    } else {
        eprintln!("error: --non-interactive needs --bind-password-file (or FERRY_BIND_PASSWORD)");
        return Ok(ExitCode::from(2));
    };
    let dc = DcArgs {
        ldap_url: a.ldap_url.unwrap_or_default(),
        ca_file: a.ca_file,
        tls_fingerprint: a.tls_fingerprint,
        insecure_skip_tls_verify: a.insecure_skip_tls_verify,
        no_starttls: false,
    };
    let n = NonInteractive {
        answers: install::Answers {
            cloud_url: a.cloud_url.unwrap_or_default(),
            connect_key: zeroize::Zeroizing::new(a.connect_key.unwrap_or_default()),
            ad: settings(&dc),
            root_dn: a.root_dn.unwrap_or_default(),
            bind_user,
            bind_password: zeroize::Zeroizing::new(password),
            config_dir: a.config_dir,
            service: !a.no_service,
        },
        replace: a.replace,
    };
    match install::non_interactive(n, |step| println!("{step}")).await {
        Ok(done) => {
            print!("{}", install::summary(&done));
            Ok(ExitCode::SUCCESS)
        }
        Err(p) => {
            eprintln!("error: {}", p.message);
            Ok(ExitCode::from(p.step.exit_code()))
        }
    }
}

async fn status(a: StatusArgs) -> Result<ExitCode> {
    let s = ferry_agent::install::manage::status(&a.config_dir).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s.json)?);
    } else {
        print!("{}", s.text);
    }
    Ok(if s.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn uninstall(a: UninstallArgs) -> Result<ExitCode> {
    for line in ferry_agent::install::manage::uninstall(&a.config_dir, a.force).await? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn trust(a: TrustArgs) -> Result<ExitCode> {
    use ferry_agent::install::manage::{pin_cloud_key, presented_key};
    use ferry_proto::cloud_pin::Pin;
    let expected = a.pin.as_deref().map(Pin::parse).transpose()?;
    let p = presented_key(&a.config_dir).await?;
    println!(
        "The cloud at {} presents this certificate:\n{}",
        p.cloud_url, p.certificate
    );
    println!("    Key SHA-256 (the pin): {}", p.pin);
    if p.trusted {
        println!("This key is already trusted: nothing to do.");
        return Ok(ExitCode::SUCCESS);
    }
    match expected {
        Some(e) if e != p.pin => {
            eprintln!(
                "error: the cloud presents the key {}, not the {e} given: nothing was pinned. If you are sure of the cloud's key, something between this host and the cloud is presenting another one.",
                p.pin
            );
            return Ok(ExitCode::from(1));
        }
        Some(_) => {}
        None => {
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!(
                    "error: compare the key above with the cloud's (its log says \"serving HTTPS\" with the pin), then run again with --pin {}",
                    p.pin
                );
                return Ok(ExitCode::from(2));
            }
            print!("Compare it with the cloud's (its log says \"serving HTTPS\" with the pin). Trust this key? [y/N] ");
            std::io::Write::flush(&mut std::io::stdout())?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                println!("Nothing was pinned.");
                return Ok(ExitCode::from(1));
            }
        }
    }
    pin_cloud_key(&a.config_dir, p.pin)?;
    println!(
        "✓ Pinned. The agent trusts this key from its next call to the cloud (check with: ferry-agent status --config-dir {}).",
        a.config_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_sync(a: RunArgs) -> Result<ExitCode> {
    use ferry_agent::run::{installed_agent, Exit};
    let _metrics = match a.metrics_listen {
        Some(addr) => {
            ferry_agent::metrics::check_address(addr, a.metrics_allow_remote).map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics (in use?)"))?;
            tracing::info!(%addr, "metrics at /metrics");
            Some(AbortOnDrop(tokio::spawn(ferry_agent::metrics::serve(listener))))
        }
        None => None,
    };
    // The reason is logged (stderr; the journal under systemd).
    match installed_agent(&a.config_dir, platform::shutdown_signal()).await? {
        Exit::Stopped => Ok(ExitCode::SUCCESS),
        Exit::NotAccepted => Ok(ExitCode::from(platform::EXIT_NOT_ACCEPTED)),
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
