//! HTTPS served by ferry-cloud itself (`serve --tls-cert --tls-key`): the
//! certificate chain and key from PEM files, re-read on SIGHUP or when the
//! files change; the key pin that Connect Keys carry; and the statements by
//! which an old key vouches for the next (see `ferry_proto::cloud_pin`).
//!
//! A reload that fails (a file half written, a key that does not match the
//! certificate) keeps the certificate in use and is tried again. A reload
//! that brings a new key signs, with the old key still in memory, a
//! [`KeyVouch`] for the new one; the vouches are served at
//! [`VOUCHES_PATH`](ferry_proto::cloud_pin::VOUCHES_PATH) and kept in a file
//! of the data directory, so a restart keeps serving them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ferry_proto::cloud_pin::{b64, spki_of_certificate, vouch_message, KeyVouch, KeyVouches, Pin};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// How many key changes are remembered (an agent offline through more
/// rotations than this is re-pinned with `ferry-agent trust`).
const KEPT_VOUCHES: usize = 16;

/// Schemes a vouch may be signed with: TLS 1.3's, which the agent verifies
/// with the old key alone.
const VOUCH_SCHEMES: [SignatureScheme; 5] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA512,
];

/// A TLS problem of the service, said so an admin can act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the certificate or the key.
    #[error("the certificate and key cannot be used: {0}")]
    Unusable(String),
}

/// The service's certificate, kept current.
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    vouch_file: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    vouches: RwLock<Vec<KeyVouch>>,
}

/// One loaded certificate and key.
struct Loaded {
    certified: Arc<CertifiedKey>,
    pin: Pin,
    spki: Vec<u8>,
    stamp: Option<(FileStamp, FileStamp)>,
}

/// What tells a file changed: its modification time and length.
type FileStamp = (Option<SystemTime>, u64);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert_path)
            .field("pin", &self.pin())
            .finish()
    }
}

impl ServerTls {
    /// Loads `cert` (PEM chain, leaf first) and `key` (PEM private key).
    /// `vouch_file`: where vouches for new keys are kept (JSON, public).
    pub fn load(cert: &Path, key: &Path, vouch_file: Option<PathBuf>) -> Result<Arc<ServerTls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load_pair(&provider, cert, key)?;
        let vouches = vouch_file.as_deref().map(read_vouches).unwrap_or_default();
        Ok(Arc::new(ServerTls {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            vouch_file,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            vouches: RwLock::new(vouches),
        }))
    }

    /// The pin of the key in use.
    pub fn pin(&self) -> Pin {
        self.loaded().pin
    }

    /// The vouches for the keys this service moved to.
    pub fn vouches(&self) -> KeyVouches {
        KeyVouches {
            vouches: self.vouches.read().map(|v| v.clone()).unwrap_or_default(),
        }
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A TLS acceptor that always presents the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Unusable(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Whether the files changed since they were loaded.
    pub fn files_changed(&self) -> bool {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        self.loaded().stamp != Some(now)
    }

    /// Reads the files again. A new key is vouched for by the old one
    /// (`now_ms`: when). Returns the pin in use afterwards; on error the
    /// certificate in use stays.
    pub fn reload(&self, now_ms: i64) -> Result<Pin, TlsError> {
        let new = load_pair(&self.provider, &self.cert_path, &self.key_path)?;
        let old = self.loaded();
        let pin = new.pin;
        if new.pin != old.pin {
            let vouch = vouch(&old, &new, now_ms)?;
            let kept = {
                let mut v = self
                    .vouches
                    .write()
                    .map_err(|_| TlsError::Unusable("lock poisoned".into()))?;
                v.push(vouch);
                let excess = v.len().saturating_sub(KEPT_VOUCHES);
                v.drain(..excess);
                v.clone()
            };
            if let Some(f) = &self.vouch_file {
                if let Err(e) = write_vouches(f, &kept) {
                    tracing::warn!(file = %f.display(), error = %e, "cannot keep the key vouches; they are served until this process stops");
                }
            }
        }
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        Ok(pin)
    }

    /// Keeps the certificate current until the process ends: re-reads the
    /// files on SIGHUP, and when they change (checked every `every`).
    pub fn watch(self: Arc<Self>, clock: Arc<dyn crate::clock::Clock>, every: Duration) {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = {
                    let hup_recv = async {
                        match hup.as_mut() {
                            Some(h) => {
                                h.recv().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = hup_recv => true,
                        _ = tokio::time::sleep(every) => false,
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    tokio::time::sleep(every).await;
                    false
                };
                if !forced && !self.files_changed() {
                    continue;
                }
                let before = self.pin();
                match self.reload(clock.now_ms()) {
                    Ok(pin) if pin == before => tracing::info!(pin = %pin, "TLS certificate re-read (same key)"),
                    Ok(pin) => {
                        tracing::info!(old_pin = %before, pin = %pin, "TLS certificate re-read: a new key, vouched for by the old one")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the TLS certificate could not be re-read; the one in use stays")
                    }
                }
            }
        });
    }
}

/// Presents the current certificate to every client.
#[derive(Debug)]
struct Resolver(Arc<ServerTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.loaded().certified.clone())
    }
}

fn stamp(path: &Path) -> FileStamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

fn load_pair(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let stamps = (stamp(cert), stamp(key));
    let file_err = |p: &Path, detail: String| TlsError::File {
        path: p.display().to_string(),
        detail,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| file_err(cert, format!("cannot read the certificate: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate file: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_err(cert, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()))?;
    let spki = spki_of_certificate(leaf.as_ref()).map_err(|e| file_err(cert, e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| file_err(key, format!("cannot read the key: {e}")))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(key, format!("not a PEM key file: {e}")))?
        .ok_or_else(|| file_err(key, "holds no PEM private key".into()))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_err(key, format!("the key cannot be used: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::Unusable(format!(
            "the key in {} is not the certificate's in {} ({e})",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Loaded {
        certified: Arc::new(certified),
        pin: Pin::of_spki(&spki),
        spki,
        stamp: Some(stamps),
    })
}

/// The old key's signature over the new key's pin.
fn vouch(old: &Loaded, new: &Loaded, now_ms: i64) -> Result<KeyVouch, TlsError> {
    let signer = old.certified.key.choose_scheme(&VOUCH_SCHEMES).ok_or_else(|| {
        TlsError::Unusable("the old key cannot sign a vouch for the new one (not an ECDSA, Ed25519 or RSA key)".into())
    })?;
    let signature = signer
        .sign(&vouch_message(&old.pin, &new.pin))
        .map_err(|e| TlsError::Unusable(format!("signing the vouch for the new key failed: {e}")))?;
    Ok(KeyVouch {
        old_key: b64(&old.spki),
        new_pin: new.pin.to_base64(),
        scheme: u16::from(signer.scheme()),
        signature: b64(&signature),
        made_at: now_ms,
    })
}

fn read_vouches(path: &Path) -> Vec<KeyVouch> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<KeyVouches>(&bytes) {
            Ok(v) => v.vouches,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the key vouches file cannot be read; starting without it");
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    }
}

fn write_vouches(path: &Path, vouches: &[KeyVouch]) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(&KeyVouches {
        vouches: vouches.to_vec(),
    })
    .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
