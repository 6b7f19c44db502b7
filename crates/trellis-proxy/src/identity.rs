//! The proxy's workload identity: obtaining, keeping and renewing its SPIFFE certificate,
//! and the mesh TLS configurations that use it.
//!
//! The first certificate is obtained with a join token; every later one with the current
//! certificate (proof of possession), at about half its lifetime with jitter, or at once
//! when the pushed trust bundle names a new signing CA (root rotation). A fresh key is made
//! for each certificate and never leaves the proxy. The certificate, key and bundle are kept
//! in `STATE_DIR/identity/`, so a restarted proxy serves mTLS while the control plane is
//! away — until the certificate expires: then mTLS is refused, the log says why, and
//! `/ready` fails.

use crate::Shared;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Endpoint;
use trellis_api::{ControlSettings, WorkloadSettings};
use trellis_identity::tls::{self, Credentials, LiveIdentity};
use trellis_identity::{SpiffeId, TrustBundle};
use trellis_protocol::TrustBundleDocument;
use trellis_protocol::v1::identity_client::IdentityClient;
use trellis_protocol::v1::{Possession, SignRequest, SignResponse, sign_request};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What `/config` and `/ready` show about the identity.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    pub spiffe_id: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub signer: Option<String>,
    pub renewals: u64,
    pub last_error: Option<String>,
}

/// The proxy's identity and the TLS configurations built on it.
pub struct Identity {
    pub live: Arc<LiveIdentity>,
    server: Arc<rustls::ServerConfig>,
    client_h2: Arc<rustls::ClientConfig>,
    client_http1: Arc<rustls::ClientConfig>,
    client_tcp: Arc<rustls::ClientConfig>,
    /// Whether this proxy is meant to have one (it runs with a control plane and a join
    /// token or a saved certificate).
    configured: std::sync::atomic::AtomicBool,
    status: Mutex<IdentityStatus>,
    /// The SPIFFE ID as metrics and spans label it, read on every request.
    uri: std::sync::RwLock<Arc<str>>,
    renew_now: Notify,
    obtained: Notify,
}

/// The protocol carried inside a mesh TLS connection (its ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    Http2,
    Http1,
    Tcp,
}

impl Default for Identity {
    fn default() -> Self {
        let live = Arc::new(LiveIdentity::default());
        Identity {
            server: tls::server_config(live.clone()),
            client_h2: tls::client_config(live.clone(), tls::ALPN_MESH_H2),
            client_http1: tls::client_config(live.clone(), tls::ALPN_MESH_HTTP1),
            client_tcp: tls::client_config(live.clone(), tls::ALPN_MESH_TCP),
            live,
            configured: Default::default(),
            status: Mutex::default(),
            uri: std::sync::RwLock::new(Arc::from("")),
            renew_now: Notify::new(),
            obtained: Notify::new(),
        }
    }
}

impl Identity {
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    pub fn client_config(&self, carried: Carried) -> Arc<rustls::ClientConfig> {
        match carried {
            Carried::Http2 => self.client_h2.clone(),
            Carried::Http1 => self.client_http1.clone(),
            Carried::Tcp => self.client_tcp.clone(),
        }
    }

    pub fn usable(&self) -> bool {
        self.live.usable()
    }

    pub fn set_configured(&self) {
        self.configured.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_configured(&self) -> bool {
        self.configured.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `spiffe://…` of this workload, empty without a certificate.
    pub fn uri(&self) -> Arc<str> {
        self.uri.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> IdentityStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_status(&self, change: impl FnOnce(&mut IdentityStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Why the proxy is not ready because of its identity, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.is_configured() {
            return None;
        }
        let last = self.status().last_error.map(|e| format!("; last error: {e}")).unwrap_or_default();
        match self.live.credentials() {
            None => Some(format!("no workload certificate yet{last}")),
            Some(c) if c.expired() => {
                Some(format!("the workload certificate {} expired at {} (unix){last}", c.id, c.not_after))
            }
            Some(_) if self.live.bundle().is_none() => Some("no trust bundle yet".into()),
            Some(_) => None,
        }
    }

    /// Installs a pushed trust bundle; renews at once if it names another signer.
    pub fn install_bundle(&self, document: &TrustBundleDocument) -> Result<(), String> {
        let bundle = TrustBundle::from_pem(&document.trust_domain, &document.roots_pem)
            .map_err(|e| format!("{}: {e}", trellis_protocol::TRUST_BUNDLE_RESOURCE))?;
        self.live.set_bundle(bundle);
        if self.live.credentials().is_some_and(|c| c.signer != document.signer) {
            tracing::info!(signer = %document.signer, "the mesh CA changed signer; renewing the certificate now");
            self.renew_now.notify_one();
        }
        Ok(())
    }

    /// Waits up to `limit` for a first certificate.
    pub async fn wait_for_credentials(&self, limit: Duration) {
        let obtained = self.obtained.notified();
        if self.live.credentials().is_some() {
            return;
        }
        let _ = tokio::time::timeout(limit, obtained).await;
    }

    /// A possession proof for the stream's Hello, if the proxy has a valid certificate.
    pub fn hello_proof(&self, proxy_id: &str) -> Option<Possession> {
        let credentials = self.live.credentials().filter(|c| !c.expired())?;
        let now = trellis_identity::unix_now();
        let signature =
            trellis_identity::keys::prove_possession(&credentials.key_pem, "hello", now, proxy_id.as_bytes()).ok()?;
        Some(Possession { chain_pem: credentials.chain_pem.clone(), unix_time: now, signature })
    }

    fn install(&self, credentials: Credentials) {
        let (id, not_after, signer) = (credentials.id.to_string(), credentials.not_after, credentials.signer.clone());
        self.live.set_credentials(credentials);
        *self.uri.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(id.as_str());
        self.set_status(|s| {
            s.spiffe_id = Some(id);
            s.not_after = Some(not_after);
            s.signer = Some(signer);
            s.last_error = None;
        });
        self.obtained.notify_waiters();
    }
}

/// Files in `STATE_DIR/identity/`.
struct Saved {
    dir: PathBuf,
}

impl Saved {
    fn load(&self) -> Option<(Credentials, TrustBundleDocument)> {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).ok();
        let (chain, key, bundle) = (read("svid.pem")?, read("svid.key")?, read("bundle.json")?);
        let bundle: TrustBundleDocument = serde_json::from_str(&bundle).ok()?;
        let signer = read("signer").unwrap_or_default();
        match Credentials::from_pem(&chain, &key, signer.trim()) {
            Ok(credentials) => Some((credentials, bundle)),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "ignoring the saved certificate: {e}");
                None
            }
        }
    }

    fn store(&self, credentials: &Credentials, bundle: &TrustBundleDocument) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&self.dir)?;
        let write = |name: &str, text: &str, mode: u32| -> std::io::Result<()> {
            use std::io::Write;
            let tmp = self.dir.join(format!("{name}.tmp"));
            let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(name))
        };
        // The key first: a crash between the two leaves a key without its certificate,
        // which `load` ignores, never a certificate with the wrong key.
        write("svid.key", &credentials.key_pem, 0o600)?;
        write("svid.pem", &credentials.chain_pem, 0o644)?;
        write("signer", &credentials.signer, 0o644)?;
        write("bundle.json", &serde_json::to_string(bundle).unwrap_or_default(), 0o644)
    }
}

fn join_token(control: &ControlSettings) -> Result<Option<String>, String> {
    if let Some(path) = &control.join_token_file {
        return std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("control.joinTokenFile {}: {e}", path.display()));
    }
    Ok(control.join_token.clone())
}

/// Whether a proxy with these control settings is meant to have an identity: it has a join
/// token, or a certificate saved by an earlier run.
pub fn expected(control: &ControlSettings) -> bool {
    control.join_token.is_some()
        || control.join_token_file.is_some()
        || control.state_dir.join("identity").join("svid.pem").exists()
}

/// Keeps the proxy's certificate current until the proxy drains.
pub async fn run(shared: Arc<Shared>, control: ControlSettings, workload: WorkloadSettings) {
    let identity = shared.identity.clone();
    let saved = Saved { dir: control.state_dir.join("identity") };
    let token = match join_token(&control) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    };
    if let Some((credentials, bundle)) = saved.load() {
        if let Err(e) = identity.install_bundle(&bundle) {
            tracing::warn!("ignoring the saved trust bundle: {e}");
        }
        tracing::info!(identity = %credentials.id, not_after = credentials.not_after, "using the saved certificate");
        shared.runtime.metrics.certificate_expiry(credentials.not_after);
        identity.install(credentials);
    } else if token.is_none() {
        tracing::info!("no join token and no saved certificate: this proxy has no identity and speaks no mTLS");
        return;
    }
    // Only a hint in the CSR: the CA writes the identity the proxy proved. The trust domain
    // is the saved bundle's when there is one.
    let trust_domain = identity.live.bundle().map_or("trellis.local".to_string(), |b| b.trust_domain().to_string());
    let requested = match SpiffeId::new(&trust_domain, &workload.namespace, workload.service_account()) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!("the workload cannot have an identity: {e}");
            return;
        }
    };
    let mut drain = shared.drain_signal();
    let mut failures = 0u32;
    let mut warned_expired = false;
    loop {
        let current = identity.live.credentials();
        // When to act: now without a certificate, else at about half of what is left.
        let wait = match &current {
            None => Duration::ZERO,
            Some(_) if failures > 0 => retry_delay(failures, current.as_deref()),
            Some(c) => renewal_delay(c),
        };
        let expires_in =
            current.as_ref().map(|c| Duration::from_secs((c.not_after - trellis_identity::unix_now()).max(0) as u64));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = identity.renew_now.notified() => {}
            // Say so the moment the certificate lapses, not at the next attempt.
            _ = tokio::time::sleep(expires_in.unwrap_or(Duration::MAX)), if expires_in.is_some() && !warned_expired => {
                warned_expired = true;
                let last = identity.status().last_error.unwrap_or_default();
                tracing::error!(
                    identity = %requested, url = %control.url,
                    "the workload certificate has expired and could not be renewed ({last}); \
                     mutual TLS is refused until the control plane issues a new one"
                );
                continue;
            }
            _ = drain.wait_for(|d| *d) => return,
        }
        let result = obtain(&control, &requested, current.as_deref(), token.as_deref()).await;
        match result {
            Ok((credentials, bundle)) => {
                failures = 0;
                warned_expired = false;
                if let Err(e) = saved.store(&credentials, &bundle) {
                    tracing::warn!(dir = %saved.dir.display(), "cannot save the certificate: {e}");
                }
                tracing::info!(
                    identity = %credentials.id, not_after = credentials.not_after,
                    renewal = current.is_some(), "workload certificate obtained"
                );
                if let Err(e) = identity.install_bundle(&bundle) {
                    tracing::warn!("{e}");
                }
                shared.runtime.metrics.certificate_expiry(credentials.not_after);
                identity.install(credentials);
                if current.is_some() {
                    identity.set_status(|s| s.renewals += 1);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(url = %control.url, attempt = failures, "cannot obtain a workload certificate: {e}");
                identity.set_status(|s| s.last_error = Some(e));
                if current.is_none() {
                    tokio::select! {
                        _ = tokio::time::sleep(retry_delay(failures, None)) => {}
                        _ = drain.wait_for(|d| *d) => return,
                    }
                }
            }
        }
    }
}

/// About half of the remaining lifetime, ±10% of it, so a fleet does not renew in step.
fn renewal_delay(credentials: &Credentials) -> Duration {
    let left = (credentials.not_after - trellis_identity::unix_now()).max(0) as f64;
    let factor = 0.5 + (rand::random::<f64>() - 0.5) * 0.2;
    Duration::from_secs_f64(left * factor)
}

/// Doubling from 500 ms to 10 s, and never past a tenth of what is left of the certificate.
fn retry_delay(failures: u32, current: Option<&Credentials>) -> Duration {
    let doubling = RETRY_MIN.saturating_mul(1u32 << failures.min(5)).min(RETRY_MAX);
    match current {
        Some(c) => {
            let left = Duration::from_secs((c.not_after - trellis_identity::unix_now()).max(0) as u64);
            doubling.min(left / 10).max(RETRY_MIN)
        }
        None => doubling,
    }
}

/// One Sign call: with the current certificate if there is a valid one, else the join token.
async fn obtain(
    control: &ControlSettings,
    requested: &SpiffeId,
    current: Option<&Credentials>,
    token: Option<&str>,
) -> Result<(Credentials, TrustBundleDocument), String> {
    let (key_pem, csr_pem) = trellis_identity::keys::new_key_and_csr(requested)?;
    let credential = match (current.filter(|c| !c.expired()), token) {
        (Some(c), _) => {
            let now = trellis_identity::unix_now();
            let signature = trellis_identity::keys::prove_possession(&c.key_pem, "renew", now, csr_pem.as_bytes())?;
            sign_request::Credential::Possession(Possession {
                chain_pem: c.chain_pem.clone(),
                unix_time: now,
                signature,
            })
        }
        (None, Some(token)) => sign_request::Credential::JoinToken(token.to_string()),
        (None, None) => {
            return Err("the certificate expired and there is no join token to get a new one; \
                        give the proxy a new join token (control.joinTokenFile)"
                .into());
        }
    };
    let endpoint = Endpoint::from_shared(control.url.clone()).map_err(|e| format!("invalid url: {e}"))?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {}", control.url, crate::control_client::error_chain(&e)))?;
    let response: SignResponse = IdentityClient::new(channel)
        .sign(SignRequest { csr_pem, credential: Some(credential) })
        .await
        .map_err(|s| format!("the control plane refused: {}", s.message()))?
        .into_inner();
    let credentials = Credentials::from_pem(&response.chain_pem, &key_pem, &response.signer)
        .map_err(|e| format!("the issued certificate is unusable: {e}"))?;
    let bundle = TrustBundleDocument {
        trust_domain: response.trust_domain,
        roots_pem: response.roots_pem,
        signer: response.signer,
    };
    // The issued chain must verify against the bundle that came with it.
    let check = TrustBundle::from_pem(&bundle.trust_domain, &bundle.roots_pem).map_err(|e| e.to_string())?;
    let chain = trellis_identity::bundle::chain_from_pem(&credentials.chain_pem).map_err(|e| e.to_string())?;
    check
        .verify(&chain, true, rustls::pki_types::UnixTime::now())
        .map_err(|e| format!("the issued certificate does not verify against the bundle: {e}"))?;
    Ok((credentials, bundle))
}
