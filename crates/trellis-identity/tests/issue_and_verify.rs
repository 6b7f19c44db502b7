//! A root issues SVIDs from CSRs; the bundle accepts them and refuses other CAs, expired
//! certificates and forged possession proofs.

use rustls::pki_types::UnixTime;
use std::time::Duration;
use trellis_identity::authority::new_root;
use trellis_identity::bundle::chain_from_pem;
use trellis_identity::keys::{new_key_and_csr, prove_possession, verify_possession};
use trellis_identity::tls::Credentials;
use trellis_identity::{Signer, SpiffeId, TrustBundle, VerifyError};

fn ca(domain: &str) -> (Signer, TrustBundle) {
    let (cert, key) = new_root(domain, Duration::from_secs(3600)).unwrap();
    (Signer::from_pem(domain, &cert, &key, "").unwrap(), TrustBundle::from_pem(domain, &cert).unwrap())
}

#[test]
fn issued_svid_verifies_and_names_the_identity_from_the_caller_not_the_csr() {
    let (signer, bundle) = ca("trellis.local");
    let asked = SpiffeId::new("trellis.local", "shop", "admin").unwrap();
    let granted = SpiffeId::new("trellis.local", "shop", "web").unwrap();
    let (key, csr) = new_key_and_csr(&asked).unwrap();
    let issued = signer.issue(&csr, &granted, Duration::from_secs(60)).unwrap();
    let chain = chain_from_pem(&issued.chain_pem).unwrap();
    assert_eq!(bundle.verify(&chain, true, UnixTime::now()).unwrap(), granted);
    assert_eq!(bundle.verify(&chain, false, UnixTime::now()).unwrap(), granted);
    let credentials = Credentials::from_pem(&issued.chain_pem, &key, signer.fingerprint()).unwrap();
    assert_eq!(credentials.id, granted);
    assert!((issued.not_after - trellis_identity::unix_now() - 60).abs() <= 2);

    // After expiry (clock moved past not_after) it is refused as expired.
    let later = UnixTime::since_unix_epoch(Duration::from_secs((issued.not_after + 5) as u64));
    assert!(matches!(bundle.verify(&chain, true, later), Err(VerifyError::Expired { .. })));

    // Another CA's bundle does not know the issuer.
    let (_, other) = ca("trellis.local");
    let r = other.verify(&chain, true, UnixTime::now());
    assert_eq!(r, Err(VerifyError::UnknownIssuer));

    // Another trust domain's bundle refuses it even with the same root.
    let foreign = TrustBundle::from_pem("other.domain", bundle.pem()).unwrap();
    assert!(matches!(foreign.verify(&chain, true, UnixTime::now()), Err(VerifyError::WrongTrustDomain { .. })));
}

#[test]
fn possession_proof_renews_only_with_the_matching_key() {
    let (signer, bundle) = ca("trellis.local");
    let id = SpiffeId::new("trellis.local", "shop", "web").unwrap();
    let (key, csr) = new_key_and_csr(&id).unwrap();
    let issued = signer.issue(&csr, &id, Duration::from_secs(60)).unwrap();
    let (_, next_csr) = new_key_and_csr(&id).unwrap();
    let now = trellis_identity::unix_now();
    let proof = prove_possession(&key, "renew", now, next_csr.as_bytes()).unwrap();
    let proven = verify_possession(&bundle, &issued.chain_pem, "renew", now, next_csr.as_bytes(), &proof).unwrap();
    assert_eq!(proven, id);
    // Another key, another payload, another purpose, a stale time: all refused.
    let (stranger, _) = new_key_and_csr(&id).unwrap();
    let forged = prove_possession(&stranger, "renew", now, next_csr.as_bytes()).unwrap();
    assert!(verify_possession(&bundle, &issued.chain_pem, "renew", now, next_csr.as_bytes(), &forged).is_err());
    assert!(verify_possession(&bundle, &issued.chain_pem, "renew", now, b"other", &proof).is_err());
    assert!(verify_possession(&bundle, &issued.chain_pem, "hello", now, next_csr.as_bytes(), &proof).is_err());
    let old = now - 3600;
    let stale = prove_possession(&key, "renew", old, next_csr.as_bytes()).unwrap();
    assert!(verify_possession(&bundle, &issued.chain_pem, "renew", old, next_csr.as_bytes(), &stale).is_err());
}

#[test]
fn an_intermediate_signer_appends_itself_to_the_chain() {
    let (root_cert, root_key) = new_root("trellis.local", Duration::from_secs(3600)).unwrap();
    let root = Signer::from_pem("trellis.local", &root_cert, &root_key, "").unwrap();
    let bundle = TrustBundle::from_pem("trellis.local", &root_cert).unwrap();
    // An intermediate: a CA certificate signed by the root from a CSR of a CA key.
    let (inter_cert, inter_key) =
        trellis_identity::authority::new_intermediate(&root, Duration::from_secs(3600)).unwrap();
    let inter = Signer::from_pem("trellis.local", &inter_cert, &inter_key, "").unwrap();
    let id = SpiffeId::new("trellis.local", "shop", "web").unwrap();
    let (_, csr) = new_key_and_csr(&id).unwrap();
    let issued = inter.issue(&csr, &id, Duration::from_secs(60)).unwrap();
    let chain = chain_from_pem(&issued.chain_pem).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(bundle.verify(&chain, true, UnixTime::now()).unwrap(), id);
    assert_eq!(bundle.verify(&chain[..1], true, UnixTime::now()), Err(VerifyError::UnknownIssuer));
}
