//! The Trellis data-plane proxy.
//!
//! A proxy runs listeners — inbound (to its application), outbound (from it, captured
//! transparently) and explicit (a local port bound to one service) — plus an admin listener.
//! Each accepted connection has its protocol detected ([`detect`]); HTTP is served by
//! [`http`] and every request runs through its route's chain of elements ([`chain`],
//! [`elements`]); anything else is forwarded as opaque TCP ([`tcp`]).
//!
//! The configuration ([`config`]) is swapped atomically on reload; requests in flight finish
//! on the version they started with. On SIGTERM the proxy drains: it stops accepting, lets
//! connections finish up to a deadline (an idle HTTP/1.1 connection still answers a request
//! for a second, with `Connection: close`), then exits.

pub mod admin;
pub mod authz;
pub mod balance;
pub mod body;
pub mod capture;
pub mod chain;
pub mod config;
pub mod control_client;
pub mod detect;
pub mod elements;
pub mod errors;
pub mod ext_authz;
pub mod http;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod routing;
pub mod run;
pub mod tcp;
pub mod telemetry;
pub mod upstream;

use arc_swap::ArcSwap;
use config::{EndpointRegistry, RunningConfig, Runtime};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// State shared by every listener and connection of one proxy.
pub struct Shared {
    config: ArcSwap<RunningConfig>,
    pub runtime: Arc<Runtime>,
    /// The chain for requests to a fixed address (inbound and pass-through).
    pub inbound_chain: Vec<Arc<dyn chain::Element>>,
    /// Fixed application address for inbound traffic; `None` = original destination.
    pub inbound_forward: Option<SocketAddr>,
    /// How the stream to the control plane is doing (`None` in static mode).
    pub control_status: Option<Arc<Mutex<control_client::ControlStatus>>>,
    /// The workload's certificate and the mesh TLS configurations (empty without one).
    pub identity: Arc<identity::Identity>,
    drain: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
    source: PathBuf,
    loaded_at: Mutex<SystemTime>,
    last_reload_error: Mutex<Option<String>>,
    /// Digest of the file text last tried; also serializes reloads.
    last_tried: Mutex<Option<String>>,
    /// The configuration file's documents, as last loaded (shared with the running
    /// configuration, which reads its services from them).
    file_documents: Mutex<Arc<Vec<trellis_api::Resource>>>,
    /// Documents pushed by the control plane (shared the same way).
    pushed: Mutex<Arc<Vec<Arc<trellis_api::Resource>>>>,
}

impl Shared {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<RunningConfig> {
        self.config.load_full()
    }

    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    pub fn source_description(&self) -> String {
        self.source.display().to_string()
    }

    pub fn loaded_at(&self) -> String {
        let at = *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
        let secs = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        format!("{secs}")
    }

    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts a live connection until the guard drops; draining waits for the count to reach 0.
    pub fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard { shared: self.clone() }
    }

    /// Reads the configuration file again and switches to it if it is valid. An invalid
    /// file leaves the running configuration in place. SIGHUP and the file watcher both
    /// land here; a file identical to the last one tried is not tried again, so one edit
    /// is one reload whichever trigger saw it first.
    pub fn reload(&self) -> Result<String, String> {
        let mut last_tried = self.last_tried.lock().unwrap_or_else(|e| e.into_inner());
        let name = self.source.display().to_string();
        let text = match std::fs::read_to_string(&self.source) {
            Ok(text) => text,
            Err(e) => {
                let e = format!("{name}: cannot read the file: {e}");
                tracing::error!("configuration rejected, keeping version {}: {e}", self.config().version);
                *self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                return Err(e);
            }
        };
        let digest = trellis_protocol::content_hash(text.as_bytes());
        if last_tried.as_deref() == Some(digest.as_str()) {
            return match self.last_reload_error() {
                Some(e) => Err(e),
                None => Ok(self.config().version.clone()),
            };
        }
        *last_tried = Some(digest);
        let result = trellis_api::parse_documents(&text, &name).map_err(|e| e.to_string()).and_then(|docs| {
            let file = Arc::new(docs);
            let pushed = self.pushed.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let compiled = RunningConfig::compile(config::Documents { file: file.clone(), pushed }, &self.runtime)
                .map_err(|e| e.to_string())?;
            *self.file_documents.lock().unwrap_or_else(|e| e.into_inner()) = file;
            Ok(compiled)
        });
        match result {
            Ok(new) => {
                let version = new.version.clone();
                if version != self.config().version {
                    self.config.store(Arc::new(new));
                    *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
                    self.runtime.metrics.config_version(&version);
                    tracing::info!(%version, "configuration reloaded");
                }
                self.runtime.metrics.reload(true);
                *self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                release_freed_memory();
                Ok(version)
            }
            Err(e) => {
                self.runtime.metrics.reload(false);
                tracing::error!("configuration rejected, keeping version {}:\n{e}", self.config().version);
                *self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// Hands the memory that parsing and compiling a configuration used and freed back to the
/// system. glibc's allocator keeps freed heap pages mapped; after a large configuration
/// (thousands of services) that garbage would stay in the proxy's resident memory for good.
/// Blocking work (it walks every arena): call it off the request path.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Shared {
    /// Switches to the documents the control plane pushed (with the file's own), if they
    /// compile; otherwise keeps the running configuration and says why (for the NACK). The
    /// caller hands the freed memory back once what this replaced is dropped.
    pub fn install_pushed(&self, documents: Vec<Arc<trellis_api::Resource>>) -> Result<String, String> {
        let _serialized = self.last_tried.lock().unwrap_or_else(|e| e.into_inner());
        let file = self.file_documents.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let documents = Arc::new(documents);
        let compiled = RunningConfig::compile(config::Documents { file, pushed: documents.clone() }, &self.runtime)
            .map_err(|e| e.to_string())?;
        let version = compiled.version.clone();
        if version != self.config().version {
            self.config.store(Arc::new(compiled));
            *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = SystemTime::now();
            self.runtime.metrics.config_version(&version);
            tracing::info!(%version, "pushed configuration applied");
        }
        *self.pushed.lock().unwrap_or_else(|e| e.into_inner()) = documents;
        Ok(version)
    }
}

pub struct ConnectionGuard {
    shared: Arc<Shared>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

/// A proxy started from a static configuration file.
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// Loads `path`, binds every listener it declares, and starts serving.
    pub async fn start(path: PathBuf) -> anyhow::Result<Proxy> {
        let initial_text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the file: {e}", path.display()))?;
        let documents = trellis_api::parse_documents(&initial_text, &path.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let settings = documents
            .iter()
            .find_map(|d| match d {
                trellis_api::Resource::Proxy(p) => Some(p.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let identity = Arc::new(identity::Identity::default());
        let upstreams =
            Arc::new(upstream::Upstreams::new(upstream::Connector { mark: settings.mark, identity: identity.clone() }));
        upstreams.start_sweeping();
        let stats = Arc::new(telemetry::stats::RequestStats::default());
        let telemetry = Arc::new(telemetry::Telemetry {
            stats: stats.clone(),
            access_log: telemetry::access_log::AccessLog::open(settings.access_log.as_deref().unwrap_or("stdout"))?,
            spans: telemetry::otlp::SpanExporter::start(upstreams.clone()),
            taps: Default::default(),
        });
        let metrics = Arc::new(metrics::Metrics::new(stats, telemetry.clone()));
        let runtime = Arc::new(Runtime {
            upstreams: upstreams.clone(),
            endpoints: EndpointRegistry::default(),
            metrics: metrics.clone(),
            decisions: Default::default(),
            telemetry,
        });
        let documents = Arc::new(documents);
        let running = RunningConfig::compile(
            config::Documents { file: documents.clone(), pushed: Default::default() },
            &runtime,
        )?;
        metrics.config_version(&running.version);
        let (drain, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(running),
            runtime,
            inbound_chain: http::direct_chain(upstreams),
            inbound_forward: settings.inbound.as_ref().and_then(|i| i.forward),
            control_status: settings
                .control
                .as_ref()
                .map(|_| Arc::new(Mutex::new(control_client::ControlStatus::default()))),
            identity,
            drain,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            source: path,
            loaded_at: Mutex::new(SystemTime::now()),
            last_reload_error: Mutex::new(None),
            last_tried: Mutex::new(Some(trellis_protocol::content_hash(initial_text.as_bytes()))),
            file_documents: Mutex::new(documents),
            pushed: Mutex::new(Default::default()),
        });
        drop(initial_text);
        release_freed_memory();

        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {what} listener: {e}"))
        };
        let admin = bind(settings.admin, "admin").await?;
        let mut listeners = Vec::new();
        if let Some(inbound) = &settings.inbound {
            let l = bind(inbound.listen, "inbound").await?;
            listeners.push((l, http::Side::Inbound { app: inbound.forward.unwrap_or(inbound.listen) }));
        }
        if let Some(outbound) = &settings.outbound {
            let l = bind(outbound.listen, "outbound").await?;
            let listener = l.local_addr()?;
            listeners.push((l, http::Side::Outbound { listener }));
        }
        for explicit in &settings.explicit {
            let l = bind(explicit.listen, "explicit").await?;
            listeners.push((l, http::Side::Explicit { service: explicit.service.clone() }));
        }
        for (listener, side) in listeners {
            tracing::info!(addr = %listener.local_addr()?, side = ?side, "listening");
            tokio::spawn(listener::accept_loop(listener, side, shared.clone()));
        }
        tracing::info!(addr = %admin.local_addr()?, "admin listening");
        tokio::spawn(admin::serve(admin, shared.clone()));
        tokio::spawn(watch_file(shared.clone()));
        if let (Some(control), Some(workload)) = (&settings.control, &settings.workload)
            && identity::expected(control)
        {
            shared.identity.set_configured();
            tokio::spawn(identity::run(shared.clone(), control.clone(), workload.clone()));
        }
        if let (Some(control), Some(status)) = (settings.control.clone(), shared.control_status.clone()) {
            tokio::spawn(control_client::run(shared.clone(), control, settings.workload.clone(), status));
        }
        Ok(Proxy { shared })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets open connections finish for up to the drain timeout, and returns
    /// how many were still open when it gave up.
    pub async fn drain(&self) -> usize {
        let deadline = self.shared.config().settings.drain_timeout.get();
        let _ = self.shared.drain.send(true);
        let wait = async {
            loop {
                let idle = self.shared.idle.notified();
                if self.shared.active.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.shared.active.load(Ordering::SeqCst)
    }
}

/// Reloads the configuration file on a blocking-pool thread: parsing and compiling a large
/// configuration must not stall the requests of a single-threaded runtime meanwhile.
pub(crate) async fn reload_off_the_request_path(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
}

/// Reloads when the configuration file changes (checked every second).
async fn watch_file(shared: Arc<Shared>) {
    let stamp = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut last = stamp(&shared.source);
    let mut drain = shared.drain_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = drain.changed() => return,
        }
        let now = stamp(&shared.source);
        if now != last {
            last = now;
            reload_off_the_request_path(&shared).await;
        }
    }
}
