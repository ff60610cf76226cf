//! TLS on both sides: the double's own certificate for clients, and a
//! verified LDAPS connection to the DC behind it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A setup error, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A certificate or key file cannot be used.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The upstream URL is not one the double can use.
    #[error("--upstream {0}: give the DC as ldaps://HOST[:PORT] (the double always talks to the DC over LDAPS)")]
    UpstreamUrl(String),
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let file_err = |detail: String| SetupError::File {
        path: path.display().to_string(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The acceptor for clients: `cert` (PEM chain) and `key` (PEM private key).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, SetupError> {
    let chain = read_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| SetupError::File {
        path: key.display().to_string(),
        detail: format!("cannot read: {e}"),
    })?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| SetupError::File {
            path: key.display().to_string(),
            detail: "holds no PEM private key".into(),
        })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The DC behind the double.
#[derive(Clone)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub addr: String,
    name: ServerName<'static>,
    connector: TlsConnector,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("addr", &self.addr).finish()
    }
}

impl Upstream {
    /// `ldaps://host[:port]`, verified against the CA certificates in `ca`.
    pub fn new(url: &str, ca: &Path) -> Result<Upstream, SetupError> {
        let rest = url
            .strip_prefix("ldaps://")
            .ok_or_else(|| SetupError::UpstreamUrl(url.into()))?
            .trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(SetupError::UpstreamUrl(url.into()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| SetupError::UpstreamUrl(url.into()))?),
            None => (rest, 636),
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|_| SetupError::UpstreamUrl(url.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(ca)? {
            roots.add(c).map_err(|e| SetupError::File {
                path: ca.display().to_string(),
                detail: format!("a certificate is not usable as a CA: {e}"),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Upstream {
            addr: format!("{host}:{port}"),
            name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// A new LDAPS connection to the DC.
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.name.clone(), tcp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_must_be_ldaps() {
        let ca = Path::new("/nonexistent");
        for bad in [
            "ldap://127.0.0.2",
            "http://x",
            "ldaps://",
            "ldaps://h:notaport",
            "ldaps://h/x",
        ] {
            assert!(
                matches!(Upstream::new(bad, ca), Err(SetupError::UpstreamUrl(_))),
                "{bad} accepted"
            );
        }
        // A good URL gets as far as reading the CA file.
        assert!(matches!(
            Upstream::new("ldaps://127.0.0.2", ca),
            Err(SetupError::File { .. })
        ));
    }
}
