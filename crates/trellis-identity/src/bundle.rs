//! The trust bundle: the root certificates a mesh trusts, and verifying a peer's chain
//! against them.

use crate::SpiffeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};

/// Why a certificate was not accepted.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    #[error("no certificate was presented")]
    NoCertificate,
    #[error("the certificate expired at {not_after} (unix), now is {now}")]
    Expired { not_after: i64, now: i64 },
    #[error("the certificate is not valid before {not_before} (unix), now is {now}")]
    NotYetValid { not_before: i64, now: i64 },
    #[error("the certificate was not issued by a root in the trust bundle")]
    UnknownIssuer,
    #[error("the certificate carries no SPIFFE ID (exactly one spiffe:// URI SAN is required)")]
    NoSpiffeId,
    #[error("the certificate's SPIFFE ID is invalid: {0}")]
    BadSpiffeId(String),
    #[error("the certificate's trust domain `{got}` is not `{want}`")]
    WrongTrustDomain { got: String, want: String },
    #[error("the certificate is rejected: {0}")]
    Invalid(String),
    #[error("the trust bundle is unusable: {0}")]
    BadBundle(String),
}

/// The roots a proxy or control plane trusts.
#[derive(Debug)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    pem: String,
}

impl TrustBundle {
    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<TrustBundle, VerifyError> {
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| VerifyError::BadBundle(e.to_string()))?;
        if roots.is_empty() {
            return Err(VerifyError::BadBundle("it holds no certificate".into()));
        }
        let anchors = roots
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| VerifyError::BadBundle(format!("{e:?}")))?;
        Ok(TrustBundle { trust_domain: trust_domain.to_string(), roots, anchors, pem: pem.to_string() })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Fingerprints of the roots, in bundle order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots.iter().map(|r| crate::fingerprint(r)).collect()
    }

    pub fn root_subjects(&self) -> Vec<rustls::DistinguishedName> {
        self.anchors.iter().map(|a| rustls::DistinguishedName::from(a.subject.to_vec())).collect()
    }

    /// Verifies `chain` (leaf first) for use as a client (`client == true`) or server
    /// certificate at `now`, and returns its SPIFFE ID.
    pub fn verify(&self, chain: &[CertificateDer<'_>], client: bool, now: UnixTime) -> Result<SpiffeId, VerifyError> {
        let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| VerifyError::Invalid(format!("{e:?}")))?;
        let usage = if client { webpki::KeyUsage::client_auth() } else { webpki::KeyUsage::server_auth() };
        cert.verify_for_usage(
            crate::provider().signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| webpki_error(e, now))?;
        let id = spiffe_id_of(leaf)?;
        if id.trust_domain != self.trust_domain {
            return Err(VerifyError::WrongTrustDomain { got: id.trust_domain, want: self.trust_domain.clone() });
        }
        Ok(id)
    }
}

fn webpki_error(e: webpki::Error, now: UnixTime) -> VerifyError {
    let now = now.as_secs() as i64;
    match e {
        webpki::Error::CertExpired { not_after, .. } => {
            VerifyError::Expired { not_after: not_after.as_secs() as i64, now }
        }
        webpki::Error::CertNotValidYet { not_before, .. } => {
            VerifyError::NotYetValid { not_before: not_before.as_secs() as i64, now }
        }
        // A root with the issuer's name but another key is no issuer of this certificate either.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => VerifyError::UnknownIssuer,
        other => VerifyError::Invalid(format!("{other:?}")),
    }
}

/// The SPIFFE ID in a certificate's URI SAN.
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [one] => one.parse().map_err(|e: crate::spiffe::ParseError| VerifyError::BadSpiffeId(e.to_string())),
        _ => Err(VerifyError::NoSpiffeId),
    }
}

/// Unix seconds at which the first certificate in `chain_pem` expires.
pub fn not_after_of(chain_pem: &str) -> Result<i64, VerifyError> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or(VerifyError::NoCertificate)?
        .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| VerifyError::Invalid(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Parses a PEM chain into DER certificates.
pub fn chain_from_pem(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, VerifyError> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VerifyError::Invalid(e.to_string()))
}
