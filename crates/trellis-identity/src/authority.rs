//! Issuing certificates: a root made at first start or an operator's root or intermediate,
//! and short-lived SVIDs signed from certificate signing requests.
//!
//! The identity written into an SVID comes from the caller's proof (a join token or a
//! current certificate), never from the CSR: the CSR contributes only the public key, and
//! its self-signature shows the requester holds the matching private key.

use crate::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::time::Duration;
pub use time::OffsetDateTime;

/// Tolerated clock difference between the control plane and proxies.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("the certificate signing request is invalid or its signature does not verify: {0}")]
    BadCsr(String),
    #[error("the CA certificate or key cannot be read: {0}")]
    BadCa(String),
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// A newly issued SVID.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf followed by the intermediates up to (not including) a root, PEM.
    pub chain_pem: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// Makes a self-signed root CA for `trust_domain`; returns (certificate PEM, key PEM).
pub fn new_root(trust_domain: &str, lifetime: Duration) -> Result<(String, String), AuthorityError> {
    let key = KeyPair::generate().map_err(|e| AuthorityError::Signing(e.to_string()))?;
    let name = format!("Trellis root CA for {trust_domain} {}", unique_suffix()?);
    let params = ca_params(name, BasicConstraints::Unconstrained, lifetime)?;
    let cert = params.self_signed(&key).map_err(|e| AuthorityError::Signing(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What every CA certificate we make has: the name, CA constraints, CA key usages, validity
/// from slightly in the past, a random serial.
fn ca_params(
    common_name: String,
    constraints: BasicConstraints,
    lifetime: Duration,
) -> Result<CertificateParams, AuthorityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Trellis");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// The CA certificate and key that sign SVIDs.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The signer's certificate and any intermediates above it (PEM), appended to each leaf
    /// when the signer is not itself a root.
    chain_above_leaf: String,
    fingerprint: String,
    trust_domain: String,
}

impl Signer {
    /// `cert_pem` signs; `chain_pem` holds any certificates between it and a root (empty when
    /// `cert_pem` is a root, or when it is an intermediate directly under one).
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<Signer, AuthorityError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| AuthorityError::BadCa(format!("key: {e}")))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| AuthorityError::BadCa(format!("certificate: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|e| AuthorityError::BadCa(format!("certificate: {e}")))?;
        let self_signed = is_self_signed(&der)?;
        let chain_above_leaf =
            if self_signed { String::new() } else { format!("{}\n{}", cert_pem.trim(), chain_pem.trim()) };
        Ok(Signer {
            issuer,
            chain_above_leaf: chain_above_leaf.trim().to_string(),
            fingerprint: crate::fingerprint(&der),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// SHA-256 of the signing certificate (DER), hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs the public key of `csr_pem` into an SVID for `id`, valid for `lifetime`.
    pub fn issue(&self, csr_pem: &str, id: &SpiffeId, lifetime: Duration) -> Result<Issued, AuthorityError> {
        let now = OffsetDateTime::now_utc();
        self.issue_for(csr_pem, id, now - BACKDATE, now + lifetime)
    }

    /// Like [`Signer::issue`] with an explicit validity window (tests use it to make an
    /// already expired certificate).
    pub fn issue_for(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, AuthorityError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| AuthorityError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(id.uri().try_into().map_err(|e: rcgen::Error| AuthorityError::Signing(e.to_string()))?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert =
            params.signed_by(&csr.public_key, &self.issuer).map_err(|e| AuthorityError::Signing(e.to_string()))?;
        let chain_pem = if self.chain_above_leaf.is_empty() {
            cert.pem()
        } else {
            format!("{}\n{}\n", cert.pem().trim(), self.chain_above_leaf)
        };
        Ok(Issued { chain_pem, not_after: params.not_after.unix_timestamp() })
    }
}

fn is_self_signed(der: &CertificateDer<'_>) -> Result<bool, AuthorityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| AuthorityError::BadCa(format!("certificate: {e}")))?;
    Ok(cert.subject() == cert.issuer())
}

fn random_serial() -> Result<SerialNumber, AuthorityError> {
    let mut bytes = [0u8; 16];
    crate::provider().secure_random.fill(&mut bytes).map_err(|_| AuthorityError::Signing("no randomness".into()))?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// An intermediate CA signed by `parent` (for operators who keep the root offline, and for
/// tests); returns (certificate PEM, key PEM).
pub fn new_intermediate(parent: &Signer, lifetime: Duration) -> Result<(String, String), AuthorityError> {
    let key = KeyPair::generate().map_err(|e| AuthorityError::Signing(e.to_string()))?;
    let name = format!("Trellis intermediate CA for {} {}", parent.trust_domain, unique_suffix()?);
    let mut params = ca_params(name, BasicConstraints::Constrained(0), lifetime)?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &parent.issuer).map_err(|e| AuthorityError::Signing(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Distinguishes CAs made in the same second, so that issuer names never collide.
fn unique_suffix() -> Result<String, AuthorityError> {
    let mut bytes = [0u8; 6];
    crate::provider().secure_random.fill(&mut bytes).map_err(|_| AuthorityError::Signing("no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Parses `csr_pem` and checks its self-signature.
pub fn check_csr(csr_pem: &str) -> Result<(), AuthorityError> {
    CertificateSigningRequestParams::from_pem(csr_pem).map(|_| ()).map_err(|e| AuthorityError::BadCsr(e.to_string()))
}
