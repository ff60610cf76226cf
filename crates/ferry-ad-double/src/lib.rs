//! **A test double of Windows Server AD's limits**, in front of a real Samba
//! AD DC.
//!
//! Samba is a real directory and every Ferry test runs against it, but it is
//! more lenient than Windows AD in ways every customer's domain is not: it
//! pages nothing unless asked, returns every value of a big attribute, takes
//! a 25-character `sAMAccountName`, a 70-character CN, any group nesting, a
//! delegated write to the built-in Administrator and a delete of an object
//! with children. Windows AD cannot run here, so this LDAP proxy stands in
//! for those limits: it speaks LDAPS and StartTLS with its own certificate,
//! forwards every operation to the Samba DC over LDAPS (clients bind with the
//! DC's own accounts), and answers as Windows AD does where a rule applies.
//! Samba stays the directory; the double only refuses, caps and splits.
//!
//! Each rule is switchable and its limit configurable ([`Limits`]); the table
//! of rules with their sources is `docs/ad-double.md`, and every AD answer the
//! double gives is built in [`answers`].

pub mod answers;
mod codec;
mod dirsync;
mod rules;
mod session;
pub mod tls;
pub mod values;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use session::STARTTLS_OID;

/// Which of Windows AD's limits the double enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// MaxPageSize: at most this many entries a page (paged searches), and a
    /// non-paged search over it ends with sizeLimitExceeded. AD: 1000.
    pub max_page_size: Option<usize>,
    /// MaxValRange: at most this many values of one attribute in one answer;
    /// more come back as `attr;range=low-high` (searches) or in later rounds
    /// (DirSync). AD: 1500.
    pub max_val_range: Option<usize>,
    /// `sAMAccountName` ≤ 20 characters for users and computers; RDN ≤ 64.
    pub names: bool,
    /// Group nesting rules of global, universal and domain-local groups.
    pub nesting: bool,
    /// AdminSDHolder: objects with `adminCount=1` refuse writes from accounts
    /// that are not privileged themselves.
    pub protected_objects: bool,
    /// A delete of an object with children needs the tree-delete control.
    pub tree_delete: bool,
    /// Not one of AD's limits but how a DC far away or busy answers: each
    /// paged search request is forwarded this much later (0: at once), so a
    /// client's read of the directory takes time the client may use.
    pub page_delay: std::time::Duration,
    /// Not one of AD's limits either but what a busy DC does to a long
    /// read: the Nth paged search request the double sees (counted over
    /// every connection, from 1) is answered `busy` (LDAP 51) instead of
    /// being forwarded, once. A client's read then fails part way.
    pub busy_page: Option<usize>,
    /// Not one of AD's limits: the Nth client connection (counted over
    /// both ports, from 1) is closed as soon as it is accepted, once, as
    /// a DC at its `MaxConnections` or a proxy's per-client limit does.
    /// A client's second connection then fails.
    pub refuse_connection: Option<usize>,
}

impl Limits {
    /// Windows Server's defaults: MaxPageSize 1000, MaxValRange 1500, every rule on.
    pub fn windows_defaults() -> Limits {
        Limits {
            max_page_size: Some(1000),
            max_val_range: Some(1500),
            names: true,
            nesting: true,
            protected_objects: true,
            tree_delete: true,
            page_delay: std::time::Duration::ZERO,
            busy_page: None,
            refuse_connection: None,
        }
    }
}

/// The double: its limits, the DC behind it, and its own TLS identity.
pub struct Double {
    /// The limits enforced.
    pub limits: Limits,
    /// How to reach the Samba DC.
    pub upstream: tls::Upstream,
    /// TLS for clients (LDAPS and StartTLS).
    pub acceptor: TlsAcceptor,
    dirsync: dirsync::Held,
    /// Paged search requests seen, for [`Limits::busy_page`].
    pages: std::sync::atomic::AtomicUsize,
    /// Connections accepted, for [`Limits::refuse_connection`].
    connections: std::sync::atomic::AtomicUsize,
}

impl Double {
    /// Counts a paged search request; `true` when it is the one
    /// [`Limits::busy_page`] names.
    pub(crate) fn busy_now(&self) -> bool {
        let n = self.pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.limits.busy_page == Some(n)
    }

    /// Counts an accepted connection; `true` when it is the one
    /// [`Limits::refuse_connection`] names.
    fn refuse_now(&self) -> bool {
        let n = self.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.limits.refuse_connection == Some(n)
    }

    /// A double with these limits in front of `upstream`.
    pub fn new(limits: Limits, upstream: tls::Upstream, acceptor: TlsAcceptor) -> Double {
        Double {
            limits,
            upstream,
            acceptor,
            dirsync: dirsync::Held::default(),
            pages: std::sync::atomic::AtomicUsize::new(0),
            connections: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Serves LDAP (with StartTLS) on `ldap` and LDAPS on `ldaps` until
/// `shutdown` completes. Each client connection gets its own connection to
/// the DC.
pub async fn serve(
    ldap: Option<TcpListener>,
    ldaps: Option<TcpListener>,
    double: Arc<Double>,
    shutdown: impl Future<Output = ()>,
) {
    let plain = ldap.map(|l| tokio::spawn(accept_loop(l, double.clone(), false)));
    let secure = ldaps.map(|l| tokio::spawn(accept_loop(l, double.clone(), true)));
    shutdown.await;
    for task in [plain, secure].into_iter().flatten() {
        task.abort();
    }
}

async fn accept_loop(listener: TcpListener, double: Arc<Double>, tls: bool) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if double.refuse_now() {
            tracing::info!(%peer, "refused a connection (--refuse-connection)");
            drop(stream);
            continue;
        }
        let double = double.clone();
        tokio::spawn(async move {
            let result = if tls {
                session::serve_ldaps(stream, double).await
            } else {
                session::serve_ldap(stream, double).await
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended");
            }
        });
    }
}
