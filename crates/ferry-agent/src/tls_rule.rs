//! TLS client configurations whose acceptance of the server's certificate
//! is a rule of Ferry's own — a pinned DC certificate, a pinned cloud key,
//! or "record what is presented" — instead of a CA. The handshake's
//! signature is verified as always, so only the holder of the certificate's
//! key can present it. Used for the DC ([`crate::ad::tls`]) and the cloud
//! ([`crate::cloud::trust`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Whether to accept the server's certificate (its chain and name are not
/// looked at: the rule is the identity).
pub trait CertificateRule: std::fmt::Debug + Send + Sync {
    /// Accepts `end_entity`, or says why not.
    fn accept(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error>;
}

/// A rustls verifier that applies a [`CertificateRule`].
#[derive(Debug)]
pub struct RuleVerifier<R> {
    rule: R,
    provider: Arc<CryptoProvider>,
}

impl<R> RuleVerifier<R> {
    /// The rule.
    pub fn rule(&self) -> &R {
        &self.rule
    }
}

/// A client configuration (ring, safe protocol versions, no client
/// certificate) that accepts what `rule` accepts, and its verifier (to read
/// what a recording rule saw).
pub fn config_with_rule<R: CertificateRule + 'static>(
    rule: R,
) -> Result<(rustls::ClientConfig, Arc<RuleVerifier<R>>), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RuleVerifier {
        rule,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((config, verifier))
}

impl<R: CertificateRule> ServerCertVerifier for RuleVerifier<R> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.rule.accept(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
