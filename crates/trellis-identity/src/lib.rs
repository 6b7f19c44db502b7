//! Workload identity for Trellis.
//!
//! - [`spiffe`]: SPIFFE IDs, `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT`.
//! - [`authority`]: what a certificate authority does — make a root, load an operator's root
//!   or intermediate, and issue short-lived X.509 SVIDs from certificate signing requests.
//! - [`bundle`]: the trust bundle (the roots a mesh trusts) and verifying a certificate chain
//!   against it, which yields the peer's SPIFFE ID.
//! - [`keys`]: the proxy's side — generating a key and a CSR (the key never leaves the
//!   proxy), and proving possession of a current certificate to renew it.
//! - [`tls`]: rustls configurations for mutual TLS between proxies, reading the current
//!   certificate and bundle at each handshake so that renewal and root rotation need no
//!   restart.
//!
//! All cryptography is rustls' aws-lc-rs provider; keys are ECDSA P-256.

pub mod authority;
pub mod bundle;
pub mod keys;
pub mod spiffe;
pub mod tls;

pub use authority::{Issued, Signer};
pub use bundle::{TrustBundle, VerifyError};
pub use spiffe::SpiffeId;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Lowercase hex SHA-256 of `bytes`, used as a root's fingerprint.
pub fn fingerprint(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The crypto provider every Trellis TLS configuration uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}
