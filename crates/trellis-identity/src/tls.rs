//! Mutual TLS between proxies.
//!
//! [`LiveIdentity`] holds the proxy's current certificate and trust bundle; the rustls
//! configurations built here read it at every handshake, so a renewed certificate or a
//! rotated bundle is used by the next connection without rebuilding anything. Only TLS 1.3.
//!
//! SPIFFE certificates carry no DNS name, so both verifiers check the chain against the
//! bundle and the SPIFFE ID's trust domain; the client then compares the server's SPIFFE ID
//! with the identity expected for the destination ([`peer_identity`]) before sending a byte.
//!
//! ALPN names the protocol carried inside the tunnel: `trellis-h2`, `trellis-http/1.1`,
//! `trellis-tcp`. Plain `h2` and `http/1.1` are accepted too, so that curl or any TLS client
//! with a mesh certificate can talk to a strict inbound port.

use crate::SpiffeId;
use crate::bundle::{TrustBundle, VerifyError, chain_from_pem, spiffe_id_of};
use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

pub const ALPN_MESH_H2: &[u8] = b"trellis-h2";
pub const ALPN_MESH_HTTP1: &[u8] = b"trellis-http/1.1";
pub const ALPN_MESH_TCP: &[u8] = b"trellis-tcp";
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A certificate chain and its private key, ready for handshakes.
#[derive(Debug)]
pub struct Credentials {
    pub id: SpiffeId,
    pub chain_pem: String,
    pub key_pem: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Fingerprint of the CA certificate that signed it.
    pub signer: String,
    certified: Arc<CertifiedKey>,
}

impl Credentials {
    pub fn from_pem(chain_pem: &str, key_pem: &str, signer: &str) -> Result<Credentials, VerifyError> {
        let chain = chain_from_pem(chain_pem)?;
        let leaf = chain.first().ok_or(VerifyError::NoCertificate)?;
        let id = spiffe_id_of(leaf)?;
        let not_after = crate::bundle::not_after_of(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| VerifyError::Invalid(format!("private key: {e}")))?;
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| VerifyError::Invalid(format!("private key: {e}")))?;
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
        certified.keys_match().map_err(|e| VerifyError::Invalid(format!("key does not match certificate: {e}")))?;
        Ok(Credentials {
            id,
            chain_pem: chain_pem.to_string(),
            key_pem: key_pem.to_string(),
            not_after,
            signer: signer.to_string(),
            certified,
        })
    }

    pub fn expired(&self) -> bool {
        crate::unix_now() >= self.not_after
    }
}

/// The proxy's current certificate and trust bundle, swapped atomically.
#[derive(Debug, Default)]
pub struct LiveIdentity {
    credentials: ArcSwapOption<Credentials>,
    bundle: ArcSwapOption<TrustBundle>,
}

impl LiveIdentity {
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.credentials.load_full()
    }

    pub fn bundle(&self) -> Option<Arc<TrustBundle>> {
        self.bundle.load_full()
    }

    pub fn set_credentials(&self, credentials: Credentials) {
        self.credentials.store(Some(Arc::new(credentials)));
    }

    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Some(Arc::new(bundle)));
    }

    /// Whether mutual TLS can be spoken now: a certificate that has not expired and a bundle.
    pub fn usable(&self) -> bool {
        self.bundle.load().is_some() && self.credentials.load().as_ref().is_some_and(|c| !c.expired())
    }

    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.credentials.load().as_ref().filter(|c| !c.expired()).map(|c| c.certified.clone())
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        client: bool,
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let bundle = self.bundle.load_full().ok_or_else(|| rustls::Error::General("no trust bundle yet".into()))?;
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        bundle.verify(&chain, client, now).map_err(to_rustls_error)
    }
}

fn to_rustls_error(e: VerifyError) -> rustls::Error {
    use rustls::CertificateError;
    rustls::Error::InvalidCertificate(match e {
        VerifyError::Expired { .. } => CertificateError::Expired,
        VerifyError::NotYetValid { .. } => CertificateError::NotValidYet,
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        VerifyError::NoCertificate => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// Server side of mesh TLS: presents the current certificate, requires a client certificate
/// chained to the bundle.
pub fn server_config(live: Arc<LiveIdentity>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the aws-lc-rs provider")
        .with_client_cert_verifier(Arc::new(SpiffeVerifier { live: live.clone() }))
        .with_cert_resolver(Arc::new(Resolver { live }));
    config.alpn_protocols = vec![
        ALPN_MESH_H2.to_vec(),
        ALPN_MESH_HTTP1.to_vec(),
        ALPN_MESH_TCP.to_vec(),
        ALPN_H2.to_vec(),
        ALPN_HTTP1.to_vec(),
    ];
    Arc::new(config)
}

/// Client side of mesh TLS offering `alpn`. Check [`peer_identity`] after the handshake.
pub fn client_config(live: Arc<LiveIdentity>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the aws-lc-rs provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier { live: live.clone() }))
        .with_client_cert_resolver(Arc::new(Resolver { live }));
    config.alpn_protocols = vec![alpn.to_vec()];
    // Resumption would skip certificate checks against a bundle that may have changed.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The SPIFFE ID of the peer of an established connection.
pub fn peer_identity(connection: &rustls::CommonState) -> Option<SpiffeId> {
    connection.peer_certificates().and_then(|chain| chain.first()).and_then(|leaf| spiffe_id_of(leaf).ok())
}

#[derive(Debug)]
struct Resolver {
    live: Arc<LiveIdentity>,
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.live.certified()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.live.certified()
    }

    fn has_certs(&self) -> bool {
        self.live.certified().is_some()
    }
}

/// Both directions' verifier: the chain must lead to the bundle; the SPIFFE ID is checked
/// by the caller ([`peer_identity`]) or by authorization.
#[derive(Debug)]
struct SpiffeVerifier {
    live: Arc<LiveIdentity>,
}

impl SpiffeVerifier {
    fn signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &crate::provider().signature_verification_algorithms;
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        } else {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }
    }

    fn schemes() -> Vec<SignatureScheme> {
        crate::provider().signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.live.verify(end_entity, intermediates, true, now).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.live.verify(end_entity, intermediates, false, now).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}
