//! The mesh's certificate authority: which roots are trusted, which CA certificate signs, and
//! issuing SVIDs to proxies that proved who they are.
//!
//! Two sources:
//! - **Managed** (default): a root is generated at first start and kept in `ca/` in the data
//!   directory (keys mode 0600). Rotation is three steps, each safe under traffic: `add` a new
//!   root (trusted, not yet signing; proxies receive the bigger bundle), `activate` it
//!   (proxies see the new signer in the bundle and renew at once), `retire` the old one.
//! - **Provided**: the operator's CA certificate and key (a root, or an intermediate with
//!   `--ca-bundle` naming the roots) are read from files at start; rotation is the
//!   operator's (new files, restart).
//!
//! Subscribers are told of every change, so the snapshot builder pushes the bundle.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use trellis_identity::authority::{AuthorityError, new_root};
use trellis_identity::{Issued, Signer, SpiffeId, TrustBundle};

/// How long generated roots live.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Where the CA comes from and how long the SVIDs it issues live.
#[derive(Clone, Debug)]
pub struct CaSettings {
    pub trust_domain: String,
    pub svid_lifetime: Duration,
    pub provided: Option<ProvidedCa>,
}

/// An operator's CA, as PEM files.
#[derive(Clone, Debug)]
pub struct ProvidedCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificates between `cert` and a root, if any.
    pub chain: Option<PathBuf>,
    /// The roots to trust; `cert` itself when unset (it must then be a root).
    pub bundle: Option<PathBuf>,
}

/// One trusted root as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootInfo {
    pub fingerprint: String,
    pub subject: String,
    pub not_after: i64,
    /// It (or, for a provided intermediate, the CA under it) signs new certificates.
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    pub trust_domain: String,
    pub managed: bool,
    pub svid_lifetime_seconds: u64,
    /// Fingerprint of the certificate that signs.
    pub signer: String,
    pub roots: Vec<RootInfo>,
}

pub use trellis_protocol::TrustBundleDocument as BundleDocument;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Authority(#[from] AuthorityError),
    #[error("{0}")]
    Verify(#[from] trellis_identity::VerifyError),
    #[error("CA files in {path}: {message}")]
    Files { path: String, message: String },
    #[error("no root with fingerprint `{0}`; `trellis ca roots` lists them")]
    UnknownRoot(String),
    #[error("{0}")]
    Refused(String),
}

/// A managed root as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRoot {
    fingerprint: String,
    cert_pem: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredState {
    active: String,
    roots: Vec<StoredRoot>,
}

struct Current {
    signer: Arc<Signer>,
    bundle: Arc<TrustBundle>,
    roots: Vec<StoredRoot>,
}

pub struct CertificateAuthority {
    settings: CaSettings,
    dir: PathBuf,
    current: RwLock<Current>,
    changes: watch::Sender<u64>,
}

impl CertificateAuthority {
    /// Opens the CA in `data_dir/ca`, making a root at first start (managed), or reads the
    /// operator's files.
    pub fn open(data_dir: &Path, settings: CaSettings) -> Result<CertificateAuthority, CaError> {
        let dir = data_dir.join("ca");
        let current = match &settings.provided {
            Some(provided) => load_provided(&settings.trust_domain, provided)?,
            None => load_managed(&dir, &settings.trust_domain)?,
        };
        Ok(CertificateAuthority { settings, dir, current: RwLock::new(current), changes: watch::channel(0).0 })
    }

    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.read().bundle.clone()
    }

    pub fn bundle_document(&self) -> BundleDocument {
        let current = self.read();
        BundleDocument {
            trust_domain: self.settings.trust_domain.clone(),
            roots_pem: current.bundle.pem().to_string(),
            signer: current.signer.fingerprint().to_string(),
        }
    }

    /// Issues an SVID for `id` from `csr_pem`; returns it with the signer's fingerprint.
    pub fn issue(&self, csr_pem: &str, id: &SpiffeId) -> Result<(Issued, String), CaError> {
        let signer = self.read().signer.clone();
        let issued = signer.issue(csr_pem, id, self.settings.svid_lifetime)?;
        Ok((issued, signer.fingerprint().to_string()))
    }

    pub fn status(&self) -> CaStatus {
        let current = self.read();
        let roots = current
            .bundle
            .fingerprints()
            .into_iter()
            .zip(trellis_identity::bundle::chain_from_pem(current.bundle.pem()).unwrap_or_default())
            .map(|(fingerprint, der)| {
                let (subject, not_after) = describe(&der);
                RootInfo { active: fingerprint == current.signer.fingerprint(), fingerprint, subject, not_after }
            })
            .collect();
        CaStatus {
            trust_domain: self.settings.trust_domain.clone(),
            managed: self.settings.provided.is_none(),
            svid_lifetime_seconds: self.settings.svid_lifetime.as_secs(),
            signer: current.signer.fingerprint().to_string(),
            roots,
        }
    }

    /// Rotation step 1: a new root, trusted by everyone but not signing yet.
    pub fn add_root(&self) -> Result<String, CaError> {
        self.managed_only()?;
        let (cert_pem, key_pem) = new_root(&self.settings.trust_domain, ROOT_LIFETIME)?;
        let der = first_der(&cert_pem)?;
        let fingerprint = trellis_identity::fingerprint(&der);
        write_private(&self.dir.join(format!("{fingerprint}.key")), &key_pem)?;
        self.change(|current| {
            current.roots.push(StoredRoot { fingerprint: fingerprint.clone(), cert_pem });
            Ok(())
        })?;
        tracing::info!(%fingerprint, "new root added to the trust bundle");
        Ok(fingerprint)
    }

    /// Rotation step 2: the root `fingerprint` signs from now on.
    pub fn activate(&self, fingerprint: &str) -> Result<(), CaError> {
        self.managed_only()?;
        let root = self.find(fingerprint)?;
        let key_pem = std::fs::read_to_string(self.dir.join(format!("{fingerprint}.key")))
            .map_err(|e| self.files_error(format!("key of root {fingerprint}: {e}")))?;
        let signer = Arc::new(Signer::from_pem(&self.settings.trust_domain, &root.cert_pem, &key_pem, "")?);
        self.change(|current| {
            current.signer = signer;
            Ok(())
        })?;
        tracing::info!(%fingerprint, "root activated: it signs new certificates");
        Ok(())
    }

    /// Rotation step 3: stop trusting `fingerprint` (not the signing root).
    pub fn retire(&self, fingerprint: &str) -> Result<(), CaError> {
        self.managed_only()?;
        self.find(fingerprint)?;
        self.change(|current| {
            if current.signer.fingerprint() == fingerprint {
                return Err(CaError::Refused(format!(
                    "root {fingerprint} signs certificates; activate another root before retiring it"
                )));
            }
            current.roots.retain(|r| r.fingerprint != fingerprint);
            Ok(())
        })?;
        let _ = std::fs::remove_file(self.dir.join(format!("{fingerprint}.key")));
        tracing::info!(%fingerprint, "root retired from the trust bundle");
        Ok(())
    }

    fn find(&self, fingerprint: &str) -> Result<StoredRoot, CaError> {
        self.read()
            .roots
            .iter()
            .find(|r| r.fingerprint == fingerprint)
            .cloned()
            .ok_or_else(|| CaError::UnknownRoot(fingerprint.to_string()))
    }

    fn managed_only(&self) -> Result<(), CaError> {
        match self.settings.provided {
            None => Ok(()),
            Some(_) => Err(CaError::Refused(
                "the CA is provided by the operator (--ca-cert); rotate by replacing its files and restarting".into(),
            )),
        }
    }

    /// Applies `edit`, rebuilds the bundle, persists and notifies.
    fn change(&self, edit: impl FnOnce(&mut Current) -> Result<(), CaError>) -> Result<(), CaError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut next =
            Current { signer: current.signer.clone(), bundle: current.bundle.clone(), roots: current.roots.clone() };
        edit(&mut next)?;
        next.bundle = Arc::new(bundle_of(&self.settings.trust_domain, &next.roots)?);
        let state = StoredState { active: next.signer.fingerprint().to_string(), roots: next.roots.clone() };
        save_state(&self.dir, &state)?;
        *current = next;
        drop(current);
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn files_error(&self, message: String) -> CaError {
        CaError::Files { path: self.dir.display().to_string(), message }
    }
}

fn load_managed(dir: &Path, trust_domain: &str) -> Result<Current, CaError> {
    let files = |message: String| CaError::Files { path: dir.display().to_string(), message };
    let state_path = dir.join("state.json");
    let state = if state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| files(format!("state.json: {e}")))?;
        serde_json::from_str::<StoredState>(&text).map_err(|e| files(format!("state.json is not valid: {e}")))?
    } else {
        std::fs::create_dir_all(dir).map_err(|e| files(e.to_string()))?;
        let (cert_pem, key_pem) = new_root(trust_domain, ROOT_LIFETIME)?;
        let fingerprint = trellis_identity::fingerprint(&first_der(&cert_pem)?);
        write_private(&dir.join(format!("{fingerprint}.key")), &key_pem)?;
        let state = StoredState { active: fingerprint.clone(), roots: vec![StoredRoot { fingerprint, cert_pem }] };
        save_state(dir, &state)?;
        tracing::info!(fingerprint = %state.active, "created the mesh's root CA");
        state
    };
    let active = state
        .roots
        .iter()
        .find(|r| r.fingerprint == state.active)
        .ok_or_else(|| files(format!("state.json names active root {} but holds no such root", state.active)))?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{}.key", active.fingerprint)))
        .map_err(|e| files(format!("key of the active root: {e}")))?;
    let signer = Arc::new(Signer::from_pem(trust_domain, &active.cert_pem, &key_pem, "")?);
    let bundle = Arc::new(bundle_of(trust_domain, &state.roots)?);
    Ok(Current { signer, bundle, roots: state.roots })
}

fn load_provided(trust_domain: &str, provided: &ProvidedCa) -> Result<Current, CaError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| CaError::Files { path: path.display().to_string(), message: e.to_string() })
    };
    let cert_pem = read(&provided.cert)?;
    let key_pem = read(&provided.key)?;
    let chain_pem = match &provided.chain {
        Some(path) => read(path)?,
        None => String::new(),
    };
    let bundle_pem = match &provided.bundle {
        Some(path) => read(path)?,
        None => cert_pem.clone(),
    };
    let signer = Arc::new(Signer::from_pem(trust_domain, &cert_pem, &key_pem, &chain_pem)?);
    let bundle = Arc::new(TrustBundle::from_pem(trust_domain, &bundle_pem)?);
    let roots = trellis_identity::bundle::chain_from_pem(&bundle_pem)?
        .iter()
        .map(|der| StoredRoot { fingerprint: trellis_identity::fingerprint(der), cert_pem: String::new() })
        .collect();
    Ok(Current { signer, bundle, roots })
}

fn bundle_of(trust_domain: &str, roots: &[StoredRoot]) -> Result<TrustBundle, CaError> {
    let pem: String = roots.iter().map(|r| format!("{}\n", r.cert_pem.trim())).collect();
    Ok(TrustBundle::from_pem(trust_domain, &pem)?)
}

fn first_der(pem: &str) -> Result<Vec<u8>, CaError> {
    let chain = trellis_identity::bundle::chain_from_pem(pem)?;
    chain.first().map(|d| d.to_vec()).ok_or(CaError::Verify(trellis_identity::VerifyError::NoCertificate))
}

fn describe(der: &[u8]) -> (String, i64) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => (cert.subject().to_string(), cert.validity().not_after.timestamp()),
        Err(_) => (String::new(), 0),
    }
}

fn save_state(dir: &Path, state: &StoredState) -> Result<(), CaError> {
    let files = |message: String| CaError::Files { path: dir.display().to_string(), message };
    let text = serde_json::to_string_pretty(state).map_err(|e| files(e.to_string()))?;
    let tmp = dir.join("state.json.tmp");
    write_private(&tmp, &text)?;
    std::fs::rename(&tmp, dir.join("state.json")).map_err(|e| files(e.to_string()))
}

fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    crate::auth::write_private(path, text)
        .map_err(|e| CaError::Files { path: path.display().to_string(), message: e.to_string() })
}
