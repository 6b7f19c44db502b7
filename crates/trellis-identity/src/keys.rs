//! The proxy's side of issuance: a fresh key and CSR for every certificate (the private key
//! never leaves the proxy), and proof of possession of the current certificate, which is how
//! a proxy renews without its (possibly single-use) join token.
//!
//! A possession proof signs `trellis-possession:v1|PURPOSE|UNIX-TIME|PAYLOAD` with the key
//! of a currently valid SVID; the verifier checks the chain against its trust bundle, the
//! signature with the leaf's public key, and that the time is within a few minutes of its own.

use crate::SpiffeId;
use crate::bundle::{TrustBundle, VerifyError, chain_from_pem};
use rcgen::{CertificateParams, KeyPair, SanType, SigningKey};
use rustls::pki_types::UnixTime;

/// How far a proof's timestamp may be from the verifier's clock.
pub const POSSESSION_SKEW_SECS: i64 = 300;

/// A new P-256 key (PKCS#8 PEM) and a CSR for `id` signed by it (PEM).
pub fn new_key_and_csr(id: &SpiffeId) -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.uri().try_into().map_err(|e: rcgen::Error| e.to_string())?)];
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr.pem().map_err(|e| e.to_string())?))
}

fn possession_message(purpose: &str, unix_time: i64, payload: &[u8]) -> Vec<u8> {
    let mut message = format!("trellis-possession:v1|{purpose}|{unix_time}|").into_bytes();
    message.extend_from_slice(payload);
    message
}

/// Signs a possession proof with `key_pem` (the key of the current certificate).
pub fn prove_possession(key_pem: &str, purpose: &str, unix_time: i64, payload: &[u8]) -> Result<Vec<u8>, String> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
    key.sign(&possession_message(purpose, unix_time, payload)).map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum PossessionError {
    #[error("the presented certificate is not valid: {0}")]
    Certificate(#[from] VerifyError),
    #[error(
        "the proof's time {0} is more than {POSSESSION_SKEW_SECS} s from the control plane's clock ({1}); check clock sync"
    )]
    Skew(i64, i64),
    #[error("the proof's signature does not match the presented certificate")]
    Signature,
}

/// Verifies a possession proof and returns the SPIFFE ID it proves.
pub fn verify_possession(
    bundle: &TrustBundle,
    chain_pem: &str,
    purpose: &str,
    unix_time: i64,
    payload: &[u8],
    signature: &[u8],
) -> Result<SpiffeId, PossessionError> {
    let now = crate::unix_now();
    if (now - unix_time).abs() > POSSESSION_SKEW_SECS {
        return Err(PossessionError::Skew(unix_time, now));
    }
    let chain = chain_from_pem(chain_pem)?;
    let id = bundle.verify(&chain, true, UnixTime::now())?;
    let leaf = webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| VerifyError::Invalid(format!("{e:?}")))?;
    leaf.verify_signature(
        webpki::aws_lc_rs::ECDSA_P256_SHA256,
        &possession_message(purpose, unix_time, payload),
        signature,
    )
    .map_err(|_| PossessionError::Signature)?;
    Ok(id)
}
