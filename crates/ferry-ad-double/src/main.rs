//! `ferry-ad-double`: the Windows-AD test double in front of a Samba DC.
//! Started by `scripts/ad-double`; see `docs/ad-double.md`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ferry_ad_double::{serve, tls, Double, Limits};
use tokio::net::TcpListener;

/// A rule that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Rule {
    /// MaxPageSize
    Paging,
    /// MaxValRange
    Ranges,
    /// sAMAccountName and RDN lengths
    Names,
    /// Group nesting by scope
    Nesting,
    /// AdminSDHolder-protected objects
    Protected,
    /// Non-leaf deletes without the tree-delete control
    TreeDelete,
}

/// A test double of Windows Server AD's limits in front of a real Samba AD DC.
#[derive(Debug, Parser)]
#[command(version, args_override_self = true)]
struct Args {
    /// The DC behind the double: ldaps://HOST[:PORT].
    #[arg(long)]
    upstream: String,
    /// The CA certificate(s) that signed the DC's certificate (PEM).
    #[arg(long)]
    upstream_ca: PathBuf,
    /// The loopback address to listen on.
    #[arg(long)]
    listen: IpAddr,
    /// Plain LDAP (StartTLS) port.
    #[arg(long, default_value_t = 389)]
    ldap_port: u16,
    /// LDAPS port.
    #[arg(long, default_value_t = 636)]
    ldaps_port: u16,
    /// The double's certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// The double's private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// MaxPageSize (Windows: 1000).
    #[arg(long, default_value_t = 1000)]
    page_size: usize,
    /// MaxValRange (Windows: 1500).
    #[arg(long, default_value_t = 1500)]
    value_range: usize,
    /// Answer each page of a paged search this many milliseconds later, as
    /// a DC far away or busy does (not one of AD's limits; default 0).
    #[arg(long, default_value_t = 0)]
    page_delay_ms: u64,
    /// Answer the Nth paged search request (counted over every connection,
    /// from 1) `busy` instead of forwarding it, once: a read cut part way
    /// (not one of AD's limits).
    #[arg(long)]
    busy_page: Option<usize>,
    /// Close the Nth client connection (counted over both ports, from 1) as
    /// soon as it is accepted, once: a DC at its MaxConnections or a
    /// proxy's per-client limit (not one of AD's defaults).
    #[arg(long)]
    refuse_connection: Option<usize>,
    /// Rules to switch off (repeat, or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    off: Vec<Rule>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    if !args.listen.is_loopback() {
        anyhow::bail!(
            "--listen {}: the AD double is a test tool and listens on loopback addresses only",
            args.listen
        );
    }
    if args.page_size == 0 || args.value_range == 0 {
        anyhow::bail!("--page-size and --value-range must be at least 1");
    }
    let on = |r: Rule| !args.off.contains(&r);
    let limits = Limits {
        max_page_size: on(Rule::Paging).then_some(args.page_size),
        max_val_range: on(Rule::Ranges).then_some(args.value_range),
        names: on(Rule::Names),
        nesting: on(Rule::Nesting),
        protected_objects: on(Rule::Protected),
        tree_delete: on(Rule::TreeDelete),
        page_delay: std::time::Duration::from_millis(args.page_delay_ms),
        busy_page: args.busy_page,
        refuse_connection: args.refuse_connection,
    };
    let upstream = tls::Upstream::new(&args.upstream, &args.upstream_ca)?;
    let acceptor = tls::acceptor(&args.tls_cert, &args.tls_key)?;
    let ldap = TcpListener::bind((args.listen, args.ldap_port))
        .await
        .with_context(|| format!("listen on {}:{}", args.listen, args.ldap_port))?;
    let ldaps = TcpListener::bind((args.listen, args.ldaps_port))
        .await
        .with_context(|| format!("listen on {}:{}", args.listen, args.ldaps_port))?;
    tracing::info!(
        listen = %args.listen, upstream = %args.upstream, ?limits,
        "AD double ready (a test double of Windows AD's limits; the directory is the Samba DC behind it)"
    );
    let double = Arc::new(Double::new(limits, upstream, acceptor));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    serve(Some(ldap), Some(ldaps), double, shutdown).await;
    Ok(())
}
