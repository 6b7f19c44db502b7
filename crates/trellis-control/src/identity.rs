//! The `trellis.config.v1.Identity` service: signs SVIDs for proxies that prove who they
//! are — with a join token the first time, afterwards with their current certificate.

use crate::auth::Tokens;
use crate::ca::CertificateAuthority;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use trellis_identity::SpiffeId;
use trellis_protocol::v1::identity_server::{Identity, IdentityServer};
use trellis_protocol::v1::{SignRequest, SignResponse, sign_request};

pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<Tokens>,
}

impl IdentityService {
    pub fn new(ca: Arc<CertificateAuthority>, tokens: Arc<Tokens>) -> IdentityServer<IdentityService> {
        IdentityServer::new(IdentityService { ca, tokens })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let request = request.into_inner();
        // Check the CSR before spending a single-use token on it.
        trellis_identity::authority::check_csr(&request.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = match request.credential {
            Some(sign_request::Credential::JoinToken(token)) => {
                let (namespace, account) = tokio::task::block_in_place(|| self.tokens.redeem_join(&token))
                    .map_err(|e| Status::unauthenticated(format!("join refused: {e}")))?;
                SpiffeId::new(self.ca.trust_domain(), &namespace, &account)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            Some(sign_request::Credential::Possession(proof)) => trellis_identity::keys::verify_possession(
                &self.ca.bundle(),
                &proof.chain_pem,
                "renew",
                proof.unix_time,
                request.csr_pem.as_bytes(),
                &proof.signature,
            )
            .map_err(|e| Status::unauthenticated(format!("renewal refused: {e}")))?,
            None => return Err(Status::unauthenticated("a join token or a current certificate is required")),
        };
        let (issued, signer) = self.ca.issue(&request.csr_pem, &id).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(identity = %id, not_after = issued.not_after, "issued certificate");
        let bundle = self.ca.bundle_document();
        Ok(Response::new(SignResponse {
            chain_pem: issued.chain_pem,
            spiffe_id: id.to_string(),
            not_after: issued.not_after,
            trust_domain: bundle.trust_domain,
            roots_pem: bundle.roots_pem,
            signer,
        }))
    }
}
