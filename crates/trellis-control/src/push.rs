//! Config push: one long-lived gRPC stream per proxy (`trellis.config.v1.ConfigDiscovery`).
//!
//! A builder task rebuilds the shared [`Snapshot`] whenever the store commits or the registry
//! changes. Each proxy's stream task then computes that proxy's share, compares it with what
//! the proxy holds, and sends only the difference — nothing at all when its share did not
//! change — with a nonce and the version of the proxy's whole configuration, a large update
//! in parts of at most 16 KiB to proxies that accept parts. The proxy's
//! ACK or NACK is recorded in the registry; after a NACK the next update is computed
//! against what the proxy last accepted.

use crate::ca::CertificateAuthority;
use crate::registry::{Registry, Workload};
use crate::snapshot::{Piece, Snapshot};
use crate::store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_protocol::v1::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use trellis_protocol::v1::{ConfigUpdate, Hello, ProxyMessage, Resource, TapControl, TapOpen, proxy_message};

/// Keeps the snapshot current: rebuilt after every store commit and registry change, and
/// expires proxies gone past their grace period.
pub fn spawn_snapshot_builder(
    store: Store,
    registry: Arc<Registry>,
    ca: Arc<CertificateAuthority>,
) -> watch::Receiver<Arc<Snapshot>> {
    let build = |store: &Store, registry: &Registry, ca: &CertificateAuthority| {
        // Read the revision first: the snapshot is at least this new.
        let revision = store.revision();
        let items = store.list(None, None).unwrap_or_else(|e| {
            tracing::error!("cannot read the store to build proxy configuration: {e}");
            Vec::new()
        });
        let mut snapshot = Snapshot::build(&items, registry);
        snapshot.revision = revision;
        snapshot.bundle = Some(crate::snapshot::bundle_piece(&ca.bundle_document()));
        Arc::new(snapshot)
    };
    let (tx, rx) = watch::channel(build(&store, &registry, &ca));
    let mut commits = store.subscribe();
    let mut registry_changes = registry.subscribe();
    let mut ca_changes = ca.subscribe();
    tokio::spawn(async move {
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                commit = commits.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = commit {
                        return;
                    }
                }
                changed = registry_changes.changed() => if changed.is_err() { return },
                changed = ca_changes.changed() => if changed.is_err() { return },
                _ = expiry.tick() => {
                    if !registry.expire() {
                        continue;
                    }
                }
            }
            // Coalesce a burst of changes into one rebuild.
            tokio::time::sleep(Duration::from_millis(10)).await;
            while commits.try_recv().is_ok() {}
            registry_changes.borrow_and_update();
            ca_changes.borrow_and_update();
            let snapshot = tokio::task::block_in_place(|| build(&store, &registry, &ca));
            if tx.send(snapshot).is_err() {
                return;
            }
        }
    });
    rx
}

pub struct PushService {
    registry: Arc<Registry>,
    telemetry: Arc<crate::telemetry::TelemetryStore>,
    taps: Arc<crate::telemetry::tap::TapHub>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ca: Arc<CertificateAuthority>,
    /// Accept proxies that prove no identity (they get no mTLS identity either).
    allow_unauthenticated: bool,
}

impl PushService {
    pub fn new(
        registry: Arc<Registry>,
        telemetry: Arc<crate::telemetry::TelemetryStore>,
        taps: Arc<crate::telemetry::tap::TapHub>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        ca: Arc<CertificateAuthority>,
        allow_unauthenticated: bool,
    ) -> ConfigDiscoveryServer<PushService> {
        ConfigDiscoveryServer::new(PushService { registry, telemetry, taps, snapshots, ca, allow_unauthenticated })
    }

    /// The SPIFFE ID the Hello proves, checked against the workload it claims.
    fn authenticate(&self, hello: &Hello, workload: &Workload) -> Result<Option<String>, Status> {
        let Some(proof) = &hello.identity else {
            if self.allow_unauthenticated {
                return Ok(None);
            }
            return Err(Status::unauthenticated(
                "this control plane requires proxies to prove their identity: give the proxy a join token \
                 (control.joinToken or control.joinTokenFile; `trellis token create NAME --join ...`)",
            ));
        };
        let id = trellis_identity::keys::verify_possession(
            &self.ca.bundle(),
            &proof.chain_pem,
            "hello",
            proof.unix_time,
            hello.proxy_id.as_bytes(),
            &proof.signature,
        )
        .map_err(|e| Status::unauthenticated(format!("identity proof refused: {e}")))?;
        if id.namespace != workload.namespace {
            return Err(Status::permission_denied(format!(
                "identity {id} may not register a workload in namespace `{}`",
                workload.namespace
            )));
        }
        if !workload.service_account.is_empty() && id.service_account != workload.service_account {
            return Err(Status::permission_denied(format!(
                "identity {id} may not register as service account `{}`",
                workload.service_account
            )));
        }
        Ok(Some(id.to_string()))
    }
}

#[tonic::async_trait]
impl ConfigDiscovery for PushService {
    type StreamStream = ReceiverStream<Result<ConfigUpdate, Status>>;

    async fn stream(&self, request: Request<Streaming<ProxyMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(ProxyMessage { kind: Some(proxy_message::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("the first message of a stream must be a Hello")),
        };
        if hello.proxy_id.is_empty() {
            return Err(Status::invalid_argument("Hello.proxy_id is empty"));
        }
        let mut workload = workload_of(&hello)?;
        workload.identity = self.authenticate(&hello, &workload)?;
        let stream = self.registry.connect(&hello.proxy_id, workload.clone(), hello.ready);
        tracing::info!(proxy = %hello.proxy_id, service = %workload.service, namespace = %workload.namespace, "proxy connected");
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            proxy_id: hello.proxy_id.clone(),
            stream,
            workload,
            registry: self.registry.clone(),
            telemetry: self.telemetry.clone(),
            taps: self.taps.clone(),
            taps_sent: BTreeMap::new(),
            accepts_parts: hello.accepts_parts,
            held: hello.known.clone().into_iter().collect(),
            accepted: hello.known.into_iter().collect(),
            pending: BTreeMap::new(),
            nonce: 0,
        };
        tokio::spawn(session.run(inbound, self.snapshots.clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn workload_of(hello: &Hello) -> Result<Workload, Status> {
    let w = hello.workload.clone().unwrap_or_default();
    let address = if w.address.is_empty() {
        None
    } else {
        Some(
            w.address
                .parse()
                .map_err(|_| Status::invalid_argument(format!("workload address `{}` is not IP:PORT", w.address)))?,
        )
    };
    Ok(Workload {
        service: w.service,
        namespace: if w.namespace.is_empty() { "default".into() } else { w.namespace },
        labels: w.labels.into_iter().collect(),
        zone: w.zone,
        region: w.region,
        address,
        calls: w.calls,
        service_account: w.service_account,
        identity: None,
    })
}

/// One proxy's stream.
struct Session {
    proxy_id: String,
    stream: u64,
    workload: Workload,
    registry: Arc<Registry>,
    telemetry: Arc<crate::telemetry::TelemetryStore>,
    taps: Arc<crate::telemetry::tap::TapHub>,
    /// Taps opened on this proxy: id → filter.
    taps_sent: BTreeMap<String, String>,
    /// The proxy takes an update in parts of at most [`PART_BYTES`].
    accepts_parts: bool,
    /// What the proxy holds once every update sent so far is applied: name → hash.
    held: BTreeMap<String, String>,
    /// What the proxy last accepted, to fall back to after a NACK.
    accepted: BTreeMap<String, String>,
    /// Updates awaiting an answer: nonce → (version, resulting holdings).
    pending: BTreeMap<String, (String, BTreeMap<String, String>)>,
    nonce: u64,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<ProxyMessage>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        tx: mpsc::Sender<Result<ConfigUpdate, Status>>,
    ) {
        let snapshot = snapshots.borrow_and_update().clone();
        let mut open_taps = self.taps.subscribe();
        if self.push(&snapshot, &tx).await.is_err() || self.follow_taps(&mut open_taps, &tx).await.is_err() {
            self.registry.disconnect(&self.proxy_id, self.stream);
            return;
        }
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.receive(message),
                    Ok(None) | Err(_) => break,
                },
                changed = open_taps.changed() => {
                    if changed.is_err() || self.follow_taps(&mut open_taps, &tx).await.is_err() {
                        break;
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    if self.push(&snapshot, &tx).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::info!(proxy = %self.proxy_id, "proxy disconnected");
        self.registry.disconnect(&self.proxy_id, self.stream);
    }

    fn receive(&mut self, message: ProxyMessage) {
        match message.kind {
            Some(proxy_message::Kind::Ack(ack)) => {
                let Some((version, holdings)) = self.pending.remove(&ack.nonce) else { return };
                if ack.error.is_empty() {
                    self.accepted = holdings;
                } else {
                    tracing::warn!(proxy = %self.proxy_id, %version, error = %ack.error, "proxy rejected configuration");
                    // The proxy stays on what it accepted; later updates start from there.
                    self.held = self.accepted.clone();
                }
                self.registry.acked(&self.proxy_id, self.stream, &version, &ack.error);
            }
            Some(proxy_message::Kind::Heartbeat(beat)) => {
                let certificate = (!beat.certificate_signer.is_empty())
                    .then(|| (beat.certificate_signer.clone(), beat.certificate_not_after));
                self.registry.heartbeat(&self.proxy_id, self.stream, beat.ready, certificate)
            }
            Some(proxy_message::Kind::Telemetry(report)) => {
                let workload = if self.workload.service.is_empty() {
                    String::new()
                } else {
                    format!("{}.{}", self.workload.service, self.workload.namespace)
                };
                self.telemetry.record(&self.proxy_id, &workload, &report);
            }
            Some(proxy_message::Kind::TapEvents(batch)) => {
                for event in batch.events {
                    self.taps.deliver(&self.proxy_id, &event.tap_id, &event.event_json);
                }
            }
            Some(proxy_message::Kind::Hello(_)) | None => {}
        }
    }

    /// Opens and closes taps on the proxy to match the hub's open taps.
    async fn follow_taps(
        &mut self,
        open_taps: &mut watch::Receiver<BTreeMap<String, String>>,
        tx: &mpsc::Sender<Result<ConfigUpdate, Status>>,
    ) -> Result<(), ()> {
        let wanted = open_taps.borrow_and_update().clone();
        let open: Vec<TapOpen> = wanted
            .iter()
            .filter(|(id, _)| !self.taps_sent.contains_key(*id))
            .map(|(id, filter)| TapOpen { id: id.clone(), filter_json: filter.clone() })
            .collect();
        let close: Vec<String> = self.taps_sent.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        if open.is_empty() && close.is_empty() {
            return Ok(());
        }
        self.taps_sent = wanted;
        let update = ConfigUpdate { tap: Some(TapControl { open, close }), ..Default::default() };
        tx.send(Ok(update)).await.map_err(|_| ())
    }

    /// Sends the difference between the proxy's share of `snapshot` and what it holds.
    async fn push(&mut self, snapshot: &Snapshot, tx: &mpsc::Sender<Result<ConfigUpdate, Status>>) -> Result<(), ()> {
        let own = (!self.workload.service.is_empty()).then_some(self.workload.service.as_str());
        let share: BTreeMap<String, Piece> = snapshot.for_workload(&self.workload.namespace, own, &self.workload.calls);
        let upserts: Vec<Resource> = share
            .iter()
            .filter(|(name, piece)| self.held.get(*name) != Some(&piece.hash))
            .map(|(name, piece)| Resource { name: name.clone(), hash: piece.hash.clone(), json: piece.json.clone() })
            .collect();
        let removals: Vec<String> = self.held.keys().filter(|name| !share.contains_key(*name)).cloned().collect();
        let first = self.nonce == 0;
        if upserts.is_empty() && removals.is_empty() && !first {
            return Ok(());
        }
        let holdings: BTreeMap<String, String> = share.iter().map(|(n, p)| (n.clone(), p.hash.clone())).collect();
        let version = trellis_protocol::version_of(holdings.iter().map(|(n, h)| (n.as_str(), h.as_str())));
        self.nonce += 1;
        let nonce = format!("{}-{}", self.stream, self.nonce);
        self.pending.insert(nonce.clone(), (version.clone(), holdings.clone()));
        self.held = holdings;
        self.registry.sent(&self.proxy_id, self.stream, &version);
        tracing::debug!(proxy = %self.proxy_id, %version, upserts = upserts.len(), removals = removals.len(), "pushing");
        let update = ConfigUpdate { nonce, version, upserts, removals, tap: None, more: false };
        let parts = if self.accepts_parts { in_parts(update, PART_BYTES) } else { vec![update] };
        for part in parts {
            tx.send(Ok(part)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}

/// The most resource text one message of an update carries, for proxies that take updates
/// in parts. gRPC on both ends keeps a buffer as large as the largest message it has
/// handled, for the life of the stream: with whole updates, every proxy stream held the size
/// of that proxy's whole share twice over, once on each side.
const PART_BYTES: usize = 16 << 10;

/// Splits an update into messages of about `limit` bytes of resource text each (at least one
/// resource each), every one with the update's nonce and version and all but the last
/// marked `more`. The removals travel in the last part.
fn in_parts(update: ConfigUpdate, limit: usize) -> Vec<ConfigUpdate> {
    let ConfigUpdate { nonce, version, upserts, removals, tap, .. } = update;
    let part = |upserts: Vec<Resource>| ConfigUpdate {
        nonce: nonce.clone(),
        version: version.clone(),
        upserts,
        removals: Vec::new(),
        tap: None,
        more: true,
    };
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for resource in upserts {
        let size = resource.json.len() + resource.name.len() + resource.hash.len();
        if !current.is_empty() && bytes + size > limit {
            parts.push(part(std::mem::take(&mut current)));
            bytes = 0;
        }
        bytes += size;
        current.push(resource);
    }
    let mut last = part(current);
    last.removals = removals;
    last.tap = tap;
    last.more = false;
    parts.push(last);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(n: usize, size: usize) -> Resource {
        Resource { name: format!("Service/default/s{n}"), hash: format!("{n:016x}"), json: "x".repeat(size) }
    }

    fn update(upserts: Vec<Resource>, removals: &[&str]) -> ConfigUpdate {
        ConfigUpdate {
            nonce: "1-1".into(),
            version: "v".into(),
            upserts,
            removals: removals.iter().map(|s| s.to_string()).collect(),
            tap: None,
            more: false,
        }
    }

    #[test]
    fn large_updates_go_in_parts_that_add_up_to_the_whole() {
        let upserts: Vec<Resource> = (0..100).map(|n| resource(n, 1000)).collect();
        let parts = in_parts(update(upserts.clone(), &["Service/default/gone"]), 10_000);
        assert!(parts.len() >= 10, "{} parts", parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i == parts.len() - 1;
            assert_eq!((part.nonce.as_str(), part.version.as_str(), part.more), ("1-1", "v", !last));
            let bytes: usize = part.upserts.iter().map(|r| r.json.len() + r.name.len() + r.hash.len()).sum();
            assert!(bytes <= 10_000, "part {i}: {bytes} bytes");
            assert_eq!(part.removals.is_empty(), !last);
        }
        let rejoined: Vec<Resource> = parts.into_iter().flat_map(|p| p.upserts).collect();
        assert_eq!(rejoined, upserts);
    }

    #[test]
    fn small_and_empty_updates_stay_whole() {
        let parts = in_parts(update(vec![resource(1, 10)], &[]), 10_000);
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].more);
        let parts = in_parts(update(vec![], &["Service/default/gone"]), 10_000);
        assert_eq!((parts.len(), parts[0].removals.len(), parts[0].more), (1, 1, false));
    }

    #[test]
    fn a_resource_larger_than_a_part_travels_alone() {
        let parts = in_parts(update(vec![resource(1, 10), resource(2, 50_000), resource(3, 10)], &[]), 10_000);
        let sizes: Vec<usize> = parts.iter().map(|p| p.upserts.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
