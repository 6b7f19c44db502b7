//! The workload registry: which proxies are connected, what workload each runs next to, how
//! healthy it is, and which configuration version it acknowledged.
//!
//! A proxy registers when its push stream opens, heartbeats with its readiness, and is
//! removed a grace period after its stream ends, so a proxy that reconnects quickly (or a
//! control plane blip) does not churn the endpoints every other proxy sees. Ready workloads
//! are the endpoints of their service.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What a proxy told us about its workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub service: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub zone: String,
    pub region: String,
    pub address: Option<SocketAddr>,
    pub calls: Vec<String>,
    #[serde(default)]
    pub service_account: String,
    /// The SPIFFE ID the proxy proved when it connected; `None` for unauthenticated proxies
    /// (allowed only with `--allow-unauthenticated-proxies`).
    #[serde(default)]
    pub identity: Option<String>,
}

/// One proxy, as `trellis get proxies` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub proxy_id: String,
    pub workload: Workload,
    pub connected: bool,
    pub ready: bool,
    /// The version the control plane last sent.
    pub sent_version: Option<String>,
    /// The version the proxy last accepted.
    pub acked_version: Option<String>,
    /// The reason of the last rejected update, if the newest update was rejected.
    pub nack: Option<String>,
    pub in_sync: bool,
    /// Seconds since the proxy was last heard from.
    pub last_seen_seconds_ago: u64,
    pub connected_since_unix: u64,
    /// Fingerprint of the CA that signed the proxy's current certificate.
    pub certificate_signer: Option<String>,
    /// When the proxy's certificate expires (unix seconds).
    pub certificate_not_after: Option<i64>,
}

/// A registered workload as an endpoint of its service.
pub struct RegisteredEndpoint {
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub identity: Option<String>,
}

struct Entry {
    workload: Workload,
    connected: bool,
    ready: bool,
    last_seen: Instant,
    disconnected_at: Option<Instant>,
    connected_since: SystemTime,
    sent_version: Option<String>,
    acked_version: Option<String>,
    nack: Option<String>,
    /// Distinguishes a reconnected stream from the one it replaced.
    stream: u64,
    certificate: Option<(String, i64)>,
}

/// An entry as saved on disk.
#[derive(Serialize, Deserialize)]
struct Saved {
    proxy_id: String,
    workload: Workload,
    ready: bool,
}

pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
    /// Where the registry is saved; `None` keeps it in memory only.
    path: Option<std::path::PathBuf>,
    /// Held across write and rename, so concurrent saves cannot interleave.
    saving: Mutex<()>,
    grace: Duration,
    /// Bumped whenever the endpoint set may have changed.
    changed: watch::Sender<u64>,
    streams: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// A registry kept in memory only.
    pub fn new(grace: Duration) -> Self {
        Registry {
            entries: Mutex::new(HashMap::new()),
            path: None,
            saving: Mutex::new(()),
            grace,
            changed: watch::channel(0).0,
            streams: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A registry saved in `data_dir`, starting from what was saved there.
    pub fn open(data_dir: &std::path::Path, grace: Duration) -> Self {
        let path = data_dir.join("registry.json");
        let mut registry = Registry::new(grace);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Saved>>(&bytes) {
                Ok(saved) => {
                    let now = Instant::now();
                    let mut entries = registry.entries.lock().unwrap_or_else(|e| e.into_inner());
                    for s in saved {
                        entries.insert(
                            s.proxy_id,
                            Entry {
                                workload: s.workload,
                                connected: false,
                                ready: s.ready,
                                last_seen: now,
                                disconnected_at: Some(now),
                                connected_since: SystemTime::now(),
                                sent_version: None,
                                acked_version: None,
                                nack: None,
                                stream: 0,
                                certificate: None,
                            },
                        );
                    }
                }
                Err(e) => tracing::warn!("{}: not a registry file ({e}); starting empty", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot read {}: {e}; starting empty", path.display()),
        }
        registry.path = Some(path);
        registry
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let saved: Vec<Saved> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .map(|(id, e)| Saved { proxy_id: id.clone(), workload: e.workload.clone(), ready: e.ready })
                .collect()
        };
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!("cannot save the registry to {}: {e}", path.display());
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records that the endpoint set may have changed: saves and wakes the compiler.
    fn bump(&self) {
        self.save();
        self.changed.send_modify(|n| *n += 1);
    }

    /// Registers (or re-registers) a proxy; returns its stream id.
    pub fn connect(&self, proxy_id: &str, workload: Workload, ready: bool) -> u64 {
        let stream = self.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(
            proxy_id.to_string(),
            Entry {
                workload,
                connected: true,
                ready,
                last_seen: Instant::now(),
                disconnected_at: None,
                connected_since: SystemTime::now(),
                sent_version: None,
                acked_version: None,
                nack: None,
                stream,
                certificate: None,
            },
        );
        drop(entries);
        self.bump();
        stream
    }

    fn with<T>(&self, proxy_id: &str, stream: u64, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get_mut(proxy_id).filter(|e| e.stream == stream).map(f)
    }

    pub fn heartbeat(&self, proxy_id: &str, stream: u64, ready: bool, certificate: Option<(String, i64)>) {
        let changed = self
            .with(proxy_id, stream, |e| {
                e.last_seen = Instant::now();
                e.certificate = certificate;
                std::mem::replace(&mut e.ready, ready) != ready
            })
            .unwrap_or(false);
        if changed {
            self.bump();
        }
    }

    pub fn sent(&self, proxy_id: &str, stream: u64, version: &str) {
        self.with(proxy_id, stream, |e| e.sent_version = Some(version.to_string()));
    }

    /// Records an ACK (`error` empty) or NACK of `version`.
    pub fn acked(&self, proxy_id: &str, stream: u64, version: &str, error: &str) {
        self.with(proxy_id, stream, |e| {
            e.last_seen = Instant::now();
            if error.is_empty() {
                e.acked_version = Some(version.to_string());
                e.nack = None;
            } else {
                e.nack = Some(error.to_string());
            }
        });
    }

    /// The stream ended; the workload stays an endpoint for the grace period.
    pub fn disconnect(&self, proxy_id: &str, stream: u64) {
        self.with(proxy_id, stream, |e| {
            e.connected = false;
            e.disconnected_at = Some(Instant::now());
        });
    }

    /// Drops proxies gone for longer than the grace period, or silent for three grace
    /// periods (a stream that is open but dead). Returns whether anything was dropped.
    pub fn expire(&self) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let before = entries.len();
        let grace = self.grace;
        entries.retain(|_, e| match e.disconnected_at {
            Some(at) => at.elapsed() < grace,
            None => e.last_seen.elapsed() < grace * 3,
        });
        let dropped = entries.len() != before;
        drop(entries);
        if dropped {
            self.bump();
        }
        dropped
    }

    /// Ready workloads of a service, as endpoints (address, labels).
    /// Ready workloads of a service: address, labels and proven identity.
    pub fn endpoints(&self, service: &str, namespace: &str) -> Vec<RegisteredEndpoint> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<RegisteredEndpoint> = entries
            .values()
            .filter(|e| e.ready && e.workload.service == service && e.workload.namespace == namespace)
            .filter_map(|e| {
                e.workload.address.map(|address| RegisteredEndpoint {
                    address,
                    labels: e.workload.labels.clone(),
                    identity: e.workload.identity.clone(),
                })
            })
            .collect();
        found.sort_by_key(|e| e.address);
        found.dedup_by_key(|e| e.address);
        found
    }

    /// Every registered workload's (service, namespace).
    pub fn services(&self) -> Vec<(String, String)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, String)> =
            entries.values().map(|e| (e.workload.service.clone(), e.workload.namespace.clone())).collect();
        all.sort();
        all.dedup();
        all
    }

    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<ProxyStatus> = entries
            .iter()
            .map(|(id, e)| ProxyStatus {
                proxy_id: id.clone(),
                workload: e.workload.clone(),
                connected: e.connected,
                ready: e.ready,
                sent_version: e.sent_version.clone(),
                acked_version: e.acked_version.clone(),
                nack: e.nack.clone(),
                in_sync: e.connected && e.sent_version.is_some() && e.sent_version == e.acked_version,
                last_seen_seconds_ago: e.last_seen.elapsed().as_secs(),
                connected_since_unix: e
                    .connected_since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
                certificate_signer: e.certificate.as_ref().map(|c| c.0.clone()),
                certificate_not_after: e.certificate.as_ref().map(|c| c.1),
            })
            .collect();
        all.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        all
    }
}
