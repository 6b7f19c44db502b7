//! The proxy's side of the configuration push: one long-lived `ConfigDiscovery.Stream` to the
//! control plane (see `trellis-protocol/proto/config.proto`).
//!
//! This module owns the pushed resources (name → hash and parsed document), their copy on disk
//! (`STATE_DIR/pushed.json`), and the stream: connecting with backoff, `Hello`, heartbeats,
//! and answering every `ConfigUpdate` with an ACK or a NACK. Installing documents into the
//! running configuration is [`Shared::install_pushed`]'s job; nothing here touches traffic.
//!
//! A proxy restarted while the control plane is down starts from the last configuration it
//! accepted, read from disk before the first connection attempt.

use crate::Shared;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use trellis_api::{ControlSettings, Resource, WorkloadSettings};
use trellis_protocol::TrustBundleDocument;
use trellis_protocol::v1::config_discovery_client::ConfigDiscoveryClient;
use trellis_protocol::v1::{self as proto, ConfigUpdate, ProxyMessage, proxy_message::Kind};

const STATE_FILE: &str = "pushed.json";
const STATE_TMP: &str = "pushed.json.tmp";
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Bounds both the TCP/HTTP/2 connect and waiting for the stream's response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest configuration update accepted in one message.
const MAX_UPDATE_BYTES: usize = 256 << 20;

/// A session this long-lived was healthy: the next failure starts the backoff over.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Most failing resources named in one NACK; the rest are counted.
const MAX_REPORTED: usize = 10;

/// One pushed resource as the proxy holds it. A configuration document is held parsed and
/// shared with the running configuration, not also as text: with thousands of services the
/// text would be a second copy of the configuration in every proxy's memory.
#[derive(Clone, Debug)]
pub struct Held {
    pub hash: String,
    pub kept: Kept,
}

/// What the proxy keeps of a resource.
#[derive(Clone, Debug)]
pub enum Kept {
    /// A configuration document whose JSON is exactly what it serializes to.
    Document(Arc<Resource>),
    /// A configuration document sent as text this proxy would not write byte for byte (a
    /// control plane of another version): the text is kept as sent.
    DocumentAndText(Arc<Resource>, String),
    /// The trust bundle, which is not a configuration document.
    Text(String),
}

impl Held {
    /// Checks a resource as sent (its hash; one document of the kind and name it claims, or
    /// a valid trust bundle) and parses it.
    fn parse(name: &str, hash: &str, json: &str) -> Result<Held, String> {
        let computed = trellis_protocol::content_hash(json.as_bytes());
        if computed != hash {
            return Err(format!("{name}: hash mismatch: sent {hash}, but its JSON hashes to {computed}"));
        }
        if name == trellis_protocol::TRUST_BUNDLE_RESOURCE {
            parse_bundle(name, json)?;
            return Ok(Held { hash: hash.to_string(), kept: Kept::Text(json.to_string()) });
        }
        let mut docs = trellis_api::parse_json_document(json, name).map_err(|e| e.to_string())?;
        if docs.len() != 1 {
            return Err(format!("{name}: holds {} documents, not one", docs.len()));
        }
        let mut doc = docs.remove(0);
        // Listeners and the proxy's own limits come from its file; a pushed Proxy document
        // would silently replace them.
        if let Resource::Proxy(_) = doc {
            return Err(format!("{name}: the control plane may not push kind Proxy"));
        }
        let key = doc.key();
        if key != name {
            return Err(format!("{name}: the document is {key}, not {name}"));
        }
        doc.shrink_to_fit();
        let reproduced = serializes_to(&doc, json);
        let doc = Arc::new(doc);
        let kept = if reproduced { Kept::Document(doc) } else { Kept::DocumentAndText(doc, json.to_string()) };
        Ok(Held { hash: hash.to_string(), kept })
    }

    /// The configuration document, if this is one.
    pub fn document(&self) -> Option<&Arc<Resource>> {
        match &self.kept {
            Kept::Document(doc) | Kept::DocumentAndText(doc, _) => Some(doc),
            Kept::Text(_) => None,
        }
    }

    /// The resource's JSON, byte for byte as the control plane sent it.
    fn json(&self) -> std::borrow::Cow<'_, str> {
        match &self.kept {
            Kept::Document(document) => serde_json::to_string(&**document).unwrap_or_default().into(),
            Kept::DocumentAndText(_, json) | Kept::Text(json) => json.as_str().into(),
        }
    }
}

/// The pushed resources the proxy holds, by name (`KIND/NAMESPACE/NAME`), and the control
/// plane's version for them.
#[derive(Clone, Debug, Default)]
pub struct Pushed {
    pub version: String,
    pub resources: BTreeMap<String, Held>,
}

/// Two sets are the same when they hold the same names at the same hashes.
impl PartialEq for Pushed {
    fn eq(&self, other: &Pushed) -> bool {
        self.version == other.version
            && self.resources.len() == other.resources.len()
            && self.resources.iter().zip(&other.resources).all(|((a, x), (b, y))| a == b && x.hash == y.hash)
    }
}

/// The format of `pushed.json`: every resource as the control plane sent it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Saved<'a> {
    #[serde(default)]
    version: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    resources: BTreeMap<std::borrow::Cow<'a, str>, SavedResource<'a>>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedResource<'a> {
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    json: std::borrow::Cow<'a, str>,
}

/// Writes a [`Pushed`] in the shape of [`Saved`], which reads it back: the two change
/// together (`state_file_round_trip` checks it).
struct SavingPushed<'a>(&'a Pushed);

impl serde::Serialize for SavingPushed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Resources<'a>(&'a BTreeMap<String, Held>);
        impl serde::Serialize for Resources<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(name, held)| {
                    (name, SavedResource { hash: held.hash.as_str().into(), json: held.json() })
                }))
            }
        }
        let mut saved = serializer.serialize_struct("Saved", 2)?;
        saved.serialize_field("version", &self.0.version)?;
        saved.serialize_field("resources", &Resources(&self.0.resources))?;
        saved.end()
    }
}

impl Pushed {
    /// Name → hash, what `Hello.known` carries.
    pub fn known(&self) -> HashMap<String, String> {
        self.resources.iter().map(|(name, r)| (name.clone(), r.hash.clone())).collect()
    }

    /// Reads `DIR/pushed.json` and checks every resource in it (hash, one document of the kind
    /// and name it claims) and the version. `Ok(None)` when there is none (first start).
    pub fn load(dir: &Path) -> Result<Option<Pushed>, String> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let saved: Saved<'_> =
            serde_json::from_slice(&text).map_err(|e| format!("{}: not a saved configuration: {e}", path.display()))?;
        let mut pushed = Pushed { version: saved.version.into_owned(), resources: BTreeMap::new() };
        let mut errors = Vec::new();
        for (name, resource) in &saved.resources {
            match Held::parse(name, &resource.hash, &resource.json) {
                Ok(held) => {
                    pushed.resources.insert(name.to_string(), held);
                }
                Err(e) => errors.push(e),
            }
        }
        errors.extend(pushed.version_error());
        if errors.is_empty() { Ok(Some(pushed)) } else { Err(report(errors)) }
    }

    /// Replaces `DIR/pushed.json` atomically: a crash leaves the old file or the new one,
    /// never half of one.
    pub fn persist(&self, dir: &Path) -> Result<(), String> {
        let failed = |what: &str, path: &Path, e: std::io::Error| format!("{}: cannot {what}: {e}", path.display());
        std::fs::create_dir_all(dir).map_err(|e| failed("create the directory", dir, e))?;
        let tmp = dir.join(STATE_TMP);
        let path = dir.join(STATE_FILE);
        let file = std::fs::File::create(&tmp).map_err(|e| failed("create", &tmp, e))?;
        // Streamed, each resource's text made as it is written: the whole file in memory at
        // once (megabytes with thousands of services) would leave the heap that much larger.
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut out, &SavingPushed(self)).map_err(|e| failed("write", &tmp, e.into()))?;
        let file = out.into_inner().map_err(|e| failed("write", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| failed("sync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| failed("rename into place", &path, e))?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| failed("sync the directory", dir, e))
    }

    /// The configuration documents held, for the running configuration (shared, not copied).
    pub fn documents(&self) -> Vec<Arc<Resource>> {
        self.resources.values().filter_map(|held| held.document().cloned()).collect()
    }

    /// The pushed trust bundle, if one is held.
    pub fn bundle(&self) -> Result<Option<TrustBundleDocument>, String> {
        let name = trellis_protocol::TRUST_BUNDLE_RESOURCE;
        let Some(held) = self.resources.get(name) else { return Ok(None) };
        parse_bundle(name, &held.json()).map(Some)
    }

    /// Why the held resources do not add up to the version the control plane named, if they
    /// do not.
    fn version_error(&self) -> Option<String> {
        if self.version.is_empty() {
            return None;
        }
        let computed = trellis_protocol::version_of(self.resources.iter().map(|(n, r)| (n.as_str(), r.hash.as_str())));
        (computed != self.version).then(|| {
            format!(
                "version mismatch: the update says {}, but the resources the proxy would hold hash to {computed} \
                 (the control plane and the proxy disagree on what it holds)",
                self.version
            )
        })
    }
}

fn parse_bundle(name: &str, json: &str) -> Result<TrustBundleDocument, String> {
    let document: TrustBundleDocument =
        serde_json::from_str(json).map_err(|e| format!("{name}: not a trust bundle: {e}"))?;
    trellis_identity::TrustBundle::from_pem(&document.trust_domain, &document.roots_pem)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(document)
}

/// Errors for a NACK or a log line: the first `MAX_REPORTED`, then how many more.
fn report(mut errors: Vec<String>) -> String {
    let more = errors.len().saturating_sub(MAX_REPORTED);
    errors.truncate(MAX_REPORTED);
    if more > 0 {
        errors.push(format!("and {more} more"));
    }
    errors.join("\n")
}

/// The resources the proxy would hold after `update`, checked, and its documents; the error,
/// for the NACK, names what failed. Only the upserted resources are parsed: the others are
/// held parsed already. Pure, so it is tested without a network.
pub fn apply_update(current: &Pushed, update: &ConfigUpdate) -> Result<(Pushed, Vec<Arc<Resource>>), String> {
    let mut next = Pushed { version: update.version.clone(), resources: current.resources.clone() };
    let removals: HashSet<&str> = update.removals.iter().map(String::as_str).collect();
    let mut upserted = HashSet::new();
    for resource in &update.upserts {
        if removals.contains(resource.name.as_str()) {
            return Err(format!("{}: both upserted and removed in one update", resource.name));
        }
        if !upserted.insert(resource.name.as_str()) {
            return Err(format!("{}: upserted twice in one update", resource.name));
        }
    }
    // Removing a name the proxy does not hold is a no-op: the outcome is what was asked.
    for name in &update.removals {
        next.resources.remove(name);
    }
    let mut errors = Vec::new();
    for resource in &update.upserts {
        match Held::parse(&resource.name, &resource.hash, &resource.json) {
            Ok(held) => {
                next.resources.insert(resource.name.clone(), held);
            }
            Err(e) => errors.push(e),
        }
    }
    errors.extend(next.version_error());
    if !errors.is_empty() {
        return Err(report(errors));
    }
    let documents = next.documents();
    Ok((next, documents))
}

/// How the stream to the control plane is doing, for the admin listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlStatus {
    pub connected: bool,
    /// The control plane's version of the pushed configuration in force.
    pub version: Option<String>,
    /// Why the last connection, update or save failed; cleared by the next success.
    pub last_error: Option<String>,
}

fn set_status(status: &Mutex<ControlStatus>, change: impl FnOnce(&mut ControlStatus)) {
    change(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Serves the saved pushed configuration, then keeps a stream to the control plane open
/// (reconnecting with backoff) until the proxy drains.
pub async fn run(
    shared: Arc<Shared>,
    control: ControlSettings,
    workload: Option<WorkloadSettings>,
    status: Arc<Mutex<ControlStatus>>,
) {
    let restored = {
        let (shared, dir) = (shared.clone(), control.state_dir.clone());
        tokio::task::spawn_blocking(move || restore(&shared, &dir)).await.unwrap_or_default()
    };
    let mut pushed = restored;
    if !pushed.version.is_empty() {
        set_status(&status, |s| s.version = Some(pushed.version.clone()));
    }
    let proxy_id = control.proxy_id.clone().unwrap_or_else(|| default_proxy_id(workload.as_ref()));
    let workload = workload.as_ref().map(to_proto);
    let mut drain = shared.drain_signal();
    let mut attempt = 0u32;
    loop {
        if shared.is_draining() {
            return;
        }
        let started = tokio::time::Instant::now();
        // A proxy meant to have an identity proves it in the Hello; the first certificate
        // may still be on its way.
        if shared.identity.is_configured() {
            shared.identity.wait_for_credentials(CONNECT_TIMEOUT).await;
        }
        let hello = proto::Hello {
            proxy_id: proxy_id.clone(),
            workload: workload.clone(),
            known: pushed.known(),
            ready: !shared.is_draining(),
            identity: shared.identity.hello_proof(&proxy_id),
            accepts_parts: true,
        };
        let mut updated = false;
        let reason = session(&shared, &control, hello, &mut pushed, &status, &mut drain, &mut updated).await;
        set_status(&status, |s| {
            s.connected = false;
            s.last_error = Some(reason.clone());
        });
        if shared.is_draining() {
            tracing::info!(url = %control.url, "control plane stream ended while draining: {reason}");
            return;
        }
        if updated || started.elapsed() >= HEALTHY_SESSION {
            attempt = 0;
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!(url = %control.url, retry_in_ms = delay.as_millis() as u64, "control plane: {reason}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = draining(&mut drain) => return,
        }
    }
}

/// Installs the configuration saved by the last run, if any and valid. Returns what is
/// installed (empty if nothing), which the next `Hello` reports as known.
fn restore(shared: &Shared, dir: &Path) -> Pushed {
    let saved = match Pushed::load(dir) {
        Ok(Some(saved)) => saved,
        Ok(None) => {
            tracing::info!(dir = %dir.display(), "no saved pushed configuration; waiting for the control plane");
            return Pushed::default();
        }
        Err(e) => {
            tracing::warn!("ignoring the saved pushed configuration: {e}");
            return Pushed::default();
        }
    };
    if let Ok(Some(bundle)) = saved.bundle()
        && let Err(e) = shared.identity.install_bundle(&bundle)
    {
        tracing::warn!("ignoring the saved trust bundle: {e}");
    }
    let restored = match shared.install_pushed(saved.documents()) {
        Ok(running) => {
            tracing::info!(
                version = %saved.version,
                config = %running,
                resources = saved.resources.len(),
                "serving the saved pushed configuration until the control plane answers"
            );
            saved
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "ignoring the saved pushed configuration:\n{e}");
            drop(saved);
            Pushed::default()
        }
    };
    crate::release_freed_memory();
    restored
}

/// One connection: returns why it ended (it always ends in a reconnect or the drain).
async fn session(
    shared: &Arc<Shared>,
    control: &ControlSettings,
    hello: proto::Hello,
    pushed: &mut Pushed,
    status: &Mutex<ControlStatus>,
    drain: &mut watch::Receiver<bool>,
    updated: &mut bool,
) -> String {
    let endpoint = match Endpoint::from_shared(control.url.clone()) {
        Ok(endpoint) => endpoint,
        Err(e) => return format!("invalid url {:?}: {}", control.url, error_chain(&e)),
    };
    // Keep-alive pings notice a control plane that vanished without closing the connection
    // in seconds rather than after TCP's retransmission timeout.
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return format!("cannot connect: {}", error_chain(&e)),
    };
    let (tx, mut rx) = mpsc::channel::<ProxyMessage>(16);
    // Queued before the call, so a server that waits for the Hello before answering with
    // headers does not deadlock us.
    let _ = tx.send(ProxyMessage { kind: Some(Kind::Hello(hello)) }).await;
    let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    // A first full push carries a proxy's whole share; tonic's 4 MiB default would cut off a
    // large namespace.
    let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES);
    let mut inbound = match tokio::time::timeout(CONNECT_TIMEOUT, client.stream(outbound)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(s)) => return format!("stream refused: {}", status_text(&s)),
        Err(_) => return format!("no answer to the stream within {CONNECT_TIMEOUT:?}"),
    };
    tracing::info!(url = %control.url, known = pushed.resources.len(), "connected to the control plane");
    set_status(status, |s| {
        s.connected = true;
        s.last_error = None;
    });

    let heartbeat = |ready: bool| {
        let certificate = shared.identity.live.credentials();
        ProxyMessage {
            kind: Some(Kind::Heartbeat(proto::Heartbeat {
                ready,
                certificate_signer: certificate.as_ref().map(|c| c.signer.clone()).unwrap_or_default(),
                certificate_not_after: certificate.as_ref().map(|c| c.not_after).unwrap_or_default(),
            })),
        }
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told_draining = shared.is_draining();
    let telemetry = shared.runtime.telemetry.clone();
    let mut reporter = crate::telemetry::report::Reporter::default();
    let mut taps = crate::telemetry::report::RemoteTaps::new(tx.clone());
    let mut parts = Parts::default();
    loop {
        let outgoing = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(mut update)) => {
                    if let Some(control) = update.tap.take() {
                        taps.apply(&telemetry, control);
                    }
                    if update.nonce.is_empty() {
                        continue; // a tap change only: nothing to apply or acknowledge
                    }
                    let (update, in_parts) = match parts.add(update) {
                        Ok(Some(whole)) => whole,
                        Ok(None) => continue, // more of it to come
                        Err(e) => return e,
                    };
                    *updated = true;
                    handle_update(shared, &control.state_dir, pushed, update, in_parts, status).await
                }
                Ok(None) => return "the control plane closed the stream".to_string(),
                Err(s) => return format!("stream failed: {}", status_text(&s)),
            },
            _ = ticks.tick() => {
                let report = reporter.report(&telemetry);
                if tx.send(ProxyMessage { kind: Some(Kind::Telemetry(report)) }).await.is_err() {
                    return "the stream to the control plane closed".to_string();
                }
                heartbeat(!shared.is_draining())
            }
            // Tell the control plane at once, so it stops sending traffic here.
            _ = draining(drain), if !told_draining => {
                told_draining = true;
                heartbeat(false)
            }
        };
        if tx.send(outgoing).await.is_err() {
            return "the stream to the control plane closed".to_string();
        }
    }
}

/// Puts together an update the control plane sends in parts (`ConfigUpdate.more`).
#[derive(Default)]
struct Parts {
    pending: Option<ConfigUpdate>,
    bytes: usize,
    count: usize,
}

impl Parts {
    /// Adds a message: the whole update and how many parts it came in once its last part is
    /// in, `None` while more is to come, or why the stream is broken (a part of another
    /// update before this one ended, or more than [`MAX_UPDATE_BYTES`] in all).
    fn add(&mut self, mut update: ConfigUpdate) -> Result<Option<(ConfigUpdate, usize)>, String> {
        self.bytes += update.upserts.iter().map(|r| r.json.len()).sum::<usize>();
        self.count += 1;
        if let Some(mut whole) = self.pending.take() {
            if whole.nonce != update.nonce || whole.version != update.version {
                return Err(format!(
                    "protocol error: update {} (version {}) ended without its last part; update {} (version {}) began",
                    whole.nonce, whole.version, update.nonce, update.version
                ));
            }
            whole.upserts.append(&mut update.upserts);
            whole.removals.append(&mut update.removals);
            whole.more = update.more;
            update = whole;
        }
        if self.bytes > MAX_UPDATE_BYTES {
            return Err(format!("protocol error: update {} is over {MAX_UPDATE_BYTES} bytes", update.nonce));
        }
        if update.more {
            self.pending = Some(update);
            return Ok(None);
        }
        let count = std::mem::take(&mut self.count);
        self.bytes = 0;
        Ok(Some((update, count)))
    }
}

/// Applies one update and returns its ACK (empty error) or NACK.
async fn handle_update(
    shared: &Arc<Shared>,
    dir: &Path,
    pushed: &mut Pushed,
    update: ConfigUpdate,
    parts: usize,
    status: &Mutex<ControlStatus>,
) -> ProxyMessage {
    let nonce = update.nonce.clone();
    let version = update.version.clone();
    let (upserts, removals) = (update.upserts.len(), update.removals.len());
    // Parsing, compiling and fsync are blocking work, proportional to the whole configuration.
    let work = {
        let (shared, dir, current) = (shared.clone(), dir.to_path_buf(), pushed.clone());
        move || -> Result<(Pushed, String, Option<String>), String> {
            let (next, documents) = apply_update(&current, &update)?;
            let running =
                shared.install_pushed(documents).map_err(|e| format!("the configuration does not compile: {e}"))?;
            let bundle_changed = update.upserts.iter().any(|r| r.name == trellis_protocol::TRUST_BUNDLE_RESOURCE);
            if bundle_changed && let Some(bundle) = next.bundle()? {
                shared.identity.install_bundle(&bundle)?;
            }
            let saved = if next == current { None } else { next.persist(&dir).err() };
            Ok((next, running, saved))
        }
    };
    let result = tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(format!("applying the update failed unexpectedly: {e}")));
    let (error, replaced) = match result {
        Ok((next, running, save_error)) => {
            let replaced = std::mem::replace(pushed, next);
            tracing::info!(%version, config = %running, upserts, removals, parts, "pushed configuration accepted");
            // The configuration is in force either way, so this is still an ACK; only a
            // restart before the next successful save would fall back to an older one.
            if let Some(e) = &save_error {
                tracing::warn!("cannot save the pushed configuration: {e}");
            }
            set_status(status, |s| {
                s.version = Some(version.clone());
                s.last_error = save_error;
            });
            (String::new(), Some(replaced))
        }
        Err(e) => {
            tracing::warn!(%version, %nonce, "pushed configuration rejected, keeping version {:?}:\n{e}", pushed.version);
            set_status(status, |s| s.last_error = Some(e.clone()));
            (e, None)
        }
    };
    // Parsing and compiling left garbage either way, and an accepted update the resources it
    // replaced: free them and hand the pages back, off the request path.
    tokio::task::spawn_blocking(move || {
        drop(replaced);
        crate::release_freed_memory();
    });
    ProxyMessage { kind: Some(Kind::Ack(proto::Ack { nonce, error })) }
}

/// Whether `doc` serializes to exactly `json`. Compared as it is written, without building
/// the text: a copy per resource, thousands of them while a large update is parsed, would
/// leave the heap full of holes between the documents that stay.
fn serializes_to(doc: &Resource, json: &str) -> bool {
    struct Compare<'a>(&'a [u8]);
    impl std::io::Write for Compare<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            match self.0.strip_prefix(bytes) {
                Some(rest) => {
                    self.0 = rest;
                    Ok(bytes.len())
                }
                None => Err(std::io::ErrorKind::InvalidData.into()),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut rest = Compare(json.as_bytes());
    serde_json::to_writer(&mut rest, doc).is_ok() && rest.0.is_empty()
}

/// Resolves once the proxy drains (or is gone). Drops the `watch::Ref`, which is not `Send`.
async fn draining(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|draining| *draining).await;
}

fn to_proto(w: &WorkloadSettings) -> proto::Workload {
    proto::Workload {
        service: w.service.to_string(),
        namespace: w.namespace.clone(),
        labels: w.labels.clone().into_iter().collect(),
        zone: w.zone.clone().unwrap_or_default(),
        region: w.region.clone().unwrap_or_default(),
        address: w.address.to_string(),
        calls: w.calls.clone(),
        service_account: w.service_account().to_string(),
    }
}

/// `SERVICE-HOSTNAME-PID`, or `proxy-PID` without a workload.
fn default_proxy_id(workload: Option<&WorkloadSettings>) -> String {
    let pid = std::process::id();
    let Some(workload) = workload else { return format!("proxy-{pid}") };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match host {
        Some(host) => format!("{}-{host}-{pid}", workload.service),
        None => format!("{}-{pid}", workload.service),
    }
}

/// The largest delay before attempt `attempt` (0-based): doubling from 100 ms, capped at 10 s.
fn backoff_ceiling(attempt: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).min(BACKOFF_MAX)
}

/// Full jitter: uniformly random up to the ceiling, so proxies that lost the control plane
/// together do not reconnect together.
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let ceiling = backoff_ceiling(attempt).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

fn status_text(s: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    if let Some(source) = std::error::Error::source(s) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// An error and its sources, `a: b: c` (tonic's transport error alone says only
/// "transport error").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // Wrappers often repeat their source's text; say it once.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_protocol::content_hash;

    fn service(name: &str) -> String {
        format!(r#"{{"kind":"Service","name":"{name}","namespace":"default","ports":[{{"port":80}}]}}"#)
    }

    fn resource(name: &str, json: &str) -> proto::Resource {
        proto::Resource { name: name.to_string(), hash: content_hash(json.as_bytes()), json: json.to_string() }
    }

    /// The version the control plane would send for these resources.
    fn version(resources: &[&proto::Resource]) -> String {
        trellis_protocol::version_of(resources.iter().map(|r| (r.name.as_str(), r.hash.as_str())))
    }

    fn update(upserts: Vec<proto::Resource>, removals: &[&str], version: String) -> ConfigUpdate {
        ConfigUpdate {
            nonce: "n1".to_string(),
            version,
            upserts,
            removals: removals.iter().map(|s| s.to_string()).collect(),
            tap: None,
            more: false,
        }
    }

    #[test]
    fn an_update_in_parts_is_applied_whole() {
        let (a, b) = (resource("Service/default/a", &service("a")), resource("Service/default/b", &service("b")));
        let v = version(&[&a, &b]);
        let mut first = update(vec![a.clone()], &[], v.clone());
        first.more = true;
        let mut parts = Parts::default();
        assert_eq!(parts.add(first.clone()), Ok(None));
        let (whole, count) = parts.add(update(vec![b.clone()], &["Service/default/old"], v.clone())).unwrap().unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            (whole.upserts, whole.removals, whole.more),
            (vec![a.clone(), b], vec!["Service/default/old".to_string()], false)
        );
        // And the next update starts afresh.
        let (next, count) = parts.add(update(vec![a.clone()], &[], v.clone())).unwrap().unwrap();
        assert_eq!((next.upserts, count), (vec![a.clone()], 1));

        // A part of another update before the last part is a broken stream.
        assert_eq!(parts.add(first), Ok(None));
        let mut other = update(vec![a], &[], v);
        other.nonce = "n2".to_string();
        let e = parts.add(other).unwrap_err();
        assert!(e.starts_with("protocol error: update n1"), "{e}");
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("trellis-control-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn upsert_then_remove() {
        let a = resource("Service/default/a", &service("a"));
        let b = resource("Service/default/b", &service("b"));
        let (one, docs) =
            apply_update(&Pushed::default(), &update(vec![a.clone(), b.clone()], &[], version(&[&a, &b]))).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(one.known(), HashMap::from([(a.name.clone(), a.hash.clone()), (b.name.clone(), b.hash.clone())]));

        let (two, docs) = apply_update(&one, &update(vec![], &["Service/default/a"], version(&[&b]))).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(two.resources.keys().collect::<Vec<_>>(), ["Service/default/b"]);
        assert_eq!(two.version, version(&[&b]));
    }

    #[test]
    fn hash_mismatch_is_a_nack_naming_the_resource() {
        let mut a = resource("Service/default/a", &service("a"));
        a.hash = "0000000000000000".to_string();
        let e = apply_update(&Pushed::default(), &update(vec![a], &[], String::new())).unwrap_err();
        assert!(e.starts_with("Service/default/a: hash mismatch: sent 0000000000000000"), "{e}");
    }

    #[test]
    fn invalid_document_is_a_nack_naming_the_resource() {
        let bad = r#"{"kind":"Service","name":"a","namespace":"default","bogus":1}"#;
        let e = apply_update(&Pushed::default(), &update(vec![resource("Service/default/a", bad)], &[], String::new()))
            .unwrap_err();
        assert!(e.starts_with("Service/default/a"), "{e}");
    }

    #[test]
    fn name_must_match_the_document() {
        let a = resource("Service/default/zzz", &service("a"));
        let e = apply_update(&Pushed::default(), &update(vec![a], &[], String::new())).unwrap_err();
        assert_eq!(e, "Service/default/zzz: the document is Service/default/a, not Service/default/zzz");
    }

    #[test]
    fn proxy_documents_are_refused() {
        let p = resource("Proxy/x", r#"{"kind":"Proxy","name":"x"}"#);
        let e = apply_update(&Pushed::default(), &update(vec![p], &[], String::new())).unwrap_err();
        assert!(e.contains("may not push kind Proxy"), "{e}");
    }

    #[test]
    fn version_mismatch_is_a_nack() {
        let a = resource("Service/default/a", &service("a"));
        let e = apply_update(&Pushed::default(), &update(vec![a], &[], "ffffffffffffffff".to_string())).unwrap_err();
        assert!(e.starts_with("version mismatch: the update says ffffffffffffffff"), "{e}");
    }

    #[test]
    fn conflicting_update_is_a_nack() {
        let a = resource("Service/default/a", &service("a"));
        let e = apply_update(&Pushed::default(), &update(vec![a], &["Service/default/a"], String::new())).unwrap_err();
        assert_eq!(e, "Service/default/a: both upserted and removed in one update");
    }

    #[test]
    fn nack_leaves_the_current_map_alone() {
        let a = resource("Service/default/a", &service("a"));
        let (current, _) = apply_update(&Pushed::default(), &update(vec![a.clone()], &[], version(&[&a]))).unwrap();
        let before = current.clone();
        let mut bad = resource("Service/default/b", &service("b"));
        bad.hash = "x".to_string();
        assert!(apply_update(&current, &update(vec![bad], &["Service/default/a"], String::new())).is_err());
        assert_eq!(current, before);
    }

    /// What the control plane sends is `serde_json::to_string(&Resource)`; it must parse back.
    #[test]
    fn serialized_documents_are_accepted() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/static-proxy.yaml");
        let docs = trellis_api::parse_file(Path::new(path)).unwrap();
        let upserts: Vec<_> = docs
            .iter()
            .filter(|d| !matches!(d, Resource::Proxy(_)))
            .map(|d| resource(&d.key(), &serde_json::to_string(d).unwrap()))
            .collect();
        assert!(upserts.len() >= 2);
        let v = version(&upserts.iter().collect::<Vec<_>>());
        let (_, parsed) = apply_update(&Pushed::default(), &update(upserts.clone(), &[], v)).unwrap();
        assert_eq!(parsed.len(), upserts.len());
    }

    /// Documents are held parsed, without their text, yet saved byte for byte as sent; an
    /// update parses only what it upserts and shares the rest with the configuration before.
    #[test]
    fn documents_are_held_parsed_and_saved_as_sent() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/static-proxy.yaml");
        let upserts: Vec<_> = trellis_api::parse_file(Path::new(path))
            .unwrap()
            .iter()
            .filter(|d| !matches!(d, Resource::Proxy(_)))
            .map(|d| resource(&d.key(), &serde_json::to_string(d).unwrap()))
            .collect();
        let v = version(&upserts.iter().collect::<Vec<_>>());
        let (one, _) = apply_update(&Pushed::default(), &update(upserts.clone(), &[], v)).unwrap();
        assert!(one.resources.values().all(|held| matches!(held.kept, Kept::Document(_))));

        let dir = temp_dir("as-sent");
        one.persist(&dir).unwrap();
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
        for sent in &upserts {
            assert_eq!(saved["resources"][&sent.name]["json"], sent.json.as_str(), "{}", sent.name);
        }
        assert_eq!(Pushed::load(&dir).unwrap().unwrap(), one);
        let _ = std::fs::remove_dir_all(&dir);

        // Text this proxy would not produce itself (other spacing) is kept as sent.
        let odd = resource("Service/default/odd", &service("odd"));
        let mut all = upserts.clone();
        all.push(odd.clone());
        let (two, _) =
            apply_update(&one, &update(vec![odd.clone()], &[], version(&all.iter().collect::<Vec<_>>()))).unwrap();
        let kept = &two.resources["Service/default/odd"].kept;
        assert!(matches!(kept, Kept::DocumentAndText(_, text) if *text == odd.json), "{kept:?}");
        for (name, held) in &one.resources {
            let again = &two.resources[name];
            assert!(Arc::ptr_eq(held.document().unwrap(), again.document().unwrap()), "{name} was parsed again");
        }
    }

    #[test]
    fn a_document_is_reproduced_only_by_exactly_its_own_text() {
        let doc = trellis_api::parse_documents(&service("web"), "web.json").unwrap().remove(0);
        let exact = serde_json::to_string(&doc).unwrap();
        assert!(serializes_to(&doc, &exact));
        for other in [format!("{exact} "), exact[..exact.len() - 1].to_string(), exact.replace("web", "wab"), String::new()] {
            assert!(!serializes_to(&doc, &other), "{other}");
        }
    }

    #[test]
    fn state_file_round_trip() {
        let dir = temp_dir("round-trip");
        assert_eq!(Pushed::load(&dir), Ok(None));
        let a = resource("Service/default/a", &service("a"));
        let (pushed, _) = apply_update(&Pushed::default(), &update(vec![a.clone()], &[], version(&[&a]))).unwrap();
        pushed.persist(&dir).unwrap();
        assert!(!dir.join(STATE_TMP).exists());
        let loaded = Pushed::load(&dir).unwrap().unwrap();
        assert_eq!(loaded, pushed);
        assert_eq!(loaded.documents().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_state_file_is_a_clean_error() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"{\"version\": \"1\", \"resources\": {").unwrap();
        let e = Pushed::load(&dir).unwrap_err();
        assert!(e.contains("pushed.json: not a saved configuration"), "{e}");

        // Valid JSON whose content was altered: caught by the hashes before anything installs.
        let a = resource("Service/default/a", &service("a"));
        let (mut pushed, _) = apply_update(&Pushed::default(), &update(vec![a], &[], String::new())).unwrap();
        pushed.resources.get_mut("Service/default/a").unwrap().kept = Kept::Text(service("b"));
        pushed.persist(&dir).unwrap();
        let e = Pushed::load(&dir).unwrap_err();
        assert!(e.starts_with("Service/default/a: hash mismatch"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff_ceiling(6), Duration::from_millis(6400));
        assert_eq!(backoff_ceiling(7), BACKOFF_MAX);
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_MAX);
        assert!((0..100).all(|_| backoff(3) <= Duration::from_millis(800)));
    }
}
