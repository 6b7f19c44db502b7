//! The simulator: many lightweight proxies on one runtime, each a `ConfigDiscovery/Stream`
//! that says Hello, ACKs every update at once and heartbeats, recording per update its
//! arrival time and encoded size. Then the measured changes: one modified Service at a time
//! through the HTTP API, timed from the API's answer until every proxy of its namespace has
//! ACKed an update that carries it.

use crate::api::Api;
use crate::mesh::{Mesh, ProxyPlan, Variant, plan_proxies};
use crate::procfs;
use crate::stats::Summary;
use anyhow::{Context, bail};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use trellis_protocol::v1::config_discovery_client::ConfigDiscoveryClient;
use trellis_protocol::v1::proxy_message::Kind;
use trellis_protocol::v1::{Ack, Heartbeat, Hello, ProxyMessage, Workload};

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub mesh: Mesh,
    /// The control plane's HTTP API, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    pub api: String,
    /// Where proxies open their streams, e.g. http://127.0.0.1:7071.
    #[arg(long)]
    pub push: String,
    /// A file holding an admin token (DATA_DIR/admin.token).
    #[arg(long)]
    pub token_file: std::path::PathBuf,
    /// The control plane's process id, for its CPU time and memory (from /proc).
    #[arg(long)]
    pub control_pid: u32,
    /// Simulated proxies, spread round-robin over the namespaces.
    #[arg(long, default_value_t = 200)]
    pub proxies: usize,
    /// Measured changes, one after the other.
    #[arg(long, default_value_t = 50)]
    pub changes: usize,
    /// Seed of the choice of namespace, service and weight of each change.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After every affected proxy ACKed a change, wait this long (ms) for stray updates
    /// before counting what each proxy received for it.
    #[arg(long, default_value_t = 300)]
    pub settle_ms: u64,
    /// Initial sync is reached when every proxy holds its whole share, the control plane
    /// lists all of them in sync, and no update arrived anywhere for this long (ms).
    #[arg(long, default_value_t = 1000)]
    pub quiet_ms: u64,
    /// Give up on the initial sync after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub sync_timeout: u64,
    /// Stop waiting for a change's ACKs after this many seconds (counted as not delivered).
    #[arg(long, default_value_t = 30)]
    pub change_timeout: u64,
    /// Proxies say `ready: false` and give no address, so they are not endpoints (by default
    /// each is a ready instance of a service of its namespace, as real sidecars are).
    #[arg(long)]
    pub not_ready: bool,
    /// Worker threads of the simulator's runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write the markdown tables here (they are printed to stdout as well).
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
}

const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Counters {
    updates: u64,
    bytes: u64,
    upserts: u64,
    removals: u64,
}

impl Counters {
    fn minus(self, earlier: Counters) -> Counters {
        Counters {
            updates: self.updates - earlier.updates,
            bytes: self.bytes - earlier.bytes,
            upserts: self.upserts - earlier.upserts,
            removals: self.removals - earlier.removals,
        }
    }
}

#[derive(Default)]
struct ProxyStats {
    counters: Counters,
    /// Arrival, encoded size and resources of the first update (the full push).
    first: Option<(Instant, usize, usize)>,
    last: Option<Instant>,
    /// Resources held after every update so far.
    held: usize,
    /// Why the stream ended, if it did before the end of the run.
    ended: Option<String>,
}

struct Proxy {
    plan: ProxyPlan,
    stats: Mutex<ProxyStats>,
}

impl Proxy {
    fn stats<T>(&self, f: impl FnOnce(&mut ProxyStats) -> T) -> T {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The change the coordinator is waiting for.
struct Awaited {
    change: usize,
    namespace: usize,
    name: String,
    marker: String,
}

/// A proxy ACKed an update carrying the awaited change.
struct Seen {
    change: usize,
    proxy: usize,
    received: Instant,
    acked: Instant,
    /// Encoded size of the changed resource as received.
    resource_bytes: usize,
}

struct Shared {
    push: String,
    ready: bool,
    awaited: watch::Receiver<Option<Arc<Awaited>>>,
    seen: mpsc::UnboundedSender<Seen>,
    stop: watch::Receiver<bool>,
}

async fn proxy_task(proxy: Arc<Proxy>, mesh: Arc<Mesh>, shared: Arc<Shared>) {
    if let Err(e) = proxy_session(&proxy, &mesh, &shared).await {
        proxy.stats(|s| s.ended = Some(e));
    }
}

async fn proxy_session(proxy: &Proxy, mesh: &Mesh, shared: &Shared) -> Result<(), String> {
    let plan = &proxy.plan;
    let endpoint = Endpoint::from_shared(shared.push.clone()).map_err(|e| format!("bad push url: {e}"))?;
    // As the proxy's control client: keep-alive pings, a bounded connect.
    let channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let version = if plan.index.is_multiple_of(2) { "v1" } else { "v2" };
    let hello = Hello {
        proxy_id: plan.id.clone(),
        workload: Some(Workload {
            service: mesh.service(plan.service),
            namespace: mesh.namespace(plan.namespace),
            labels: [("version".to_string(), version.to_string())].into(),
            zone: format!("zone-{}", plan.index % 3),
            region: "region-1".into(),
            address: if shared.ready { plan.address.clone() } else { String::new() },
            calls: Vec::new(),
            service_account: String::new(),
        }),
        // Simulated proxies prove no identity: the control plane runs with
        // --allow-unauthenticated-proxies for this benchmark.
        identity: None,
        known: HashMap::new(),
        ready: shared.ready,
        // Like the proxy: large updates come in parts, acknowledged once whole.
        accepts_parts: true,
    };
    let (tx, rx) = mpsc::channel::<ProxyMessage>(16);
    let _ = tx.send(ProxyMessage { kind: Some(Kind::Hello(hello)) }).await;
    // The same default limits as the proxy's client (tonic's 4 MiB per decoded message).
    let mut client = ConfigDiscoveryClient::new(channel);
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("stream refused: {} {}", s.code(), s.message()))?
        .into_inner();
    let mut held: HashSet<String> = HashSet::new();
    // The update being received: when its first part came, its bytes and upserts so far, and
    // the awaited change it carries.
    let mut whole = None;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(update)) => {
                    let (received, bytes, upserts, earlier_hit) = whole.take().unwrap_or((Instant::now(), 0, 0, None));
                    let (bytes, upserts) = (bytes + update.encoded_len(), upserts + update.upserts.len());
                    let hit = shared.awaited.borrow().as_ref().filter(|a| a.namespace == plan.namespace).and_then(|a| {
                        update
                            .upserts
                            .iter()
                            .find(|r| r.name == a.name && r.json.contains(&a.marker))
                            .map(|r| (a.change, r.encoded_len()))
                    });
                    // The mesh's documents; the trust bundle the control plane adds is not one.
                    for r in update.upserts.iter().filter(|r| r.name != trellis_protocol::TRUST_BUNDLE_RESOURCE) {
                        if !held.contains(&r.name) {
                            held.insert(r.name.clone());
                        }
                    }
                    for name in &update.removals {
                        held.remove(name);
                    }
                    let hit = hit.or(earlier_hit);
                    if update.more {
                        whole = Some((received, bytes, upserts, hit));
                        continue;
                    }
                    let ack = ProxyMessage { kind: Some(Kind::Ack(Ack { nonce: update.nonce.clone(), error: String::new() })) };
                    tx.send(ack).await.map_err(|_| "the outbound stream closed".to_string())?;
                    let acked = Instant::now();
                    proxy.stats(|s| {
                        s.counters.updates += 1;
                        s.counters.bytes += bytes as u64;
                        s.counters.upserts += upserts as u64;
                        s.counters.removals += update.removals.len() as u64;
                        if s.first.is_none() {
                            s.first = Some((received, bytes, upserts));
                        }
                        s.last = Some(received);
                        s.held = held.len();
                    });
                    if let Some((change, resource_bytes)) = hit {
                        let _ = shared.seen.send(Seen { change, proxy: plan.index, received, acked, resource_bytes });
                    }
                }
                Ok(None) => return Err("the control plane closed the stream".into()),
                Err(s) => return Err(format!("stream failed: {} {}", s.code(), s.message())),
            },
            _ = ticks.tick() => {
                let beat = ProxyMessage { kind: Some(Kind::Heartbeat(Heartbeat { ready: shared.ready, ..Default::default() })) };
                tx.send(beat).await.map_err(|_| "the outbound stream closed".to_string())?;
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

// ------------------------------------------------------------------------------------ results

#[derive(Serialize)]
pub struct RunReport {
    pub machine: String,
    pub mesh: MeshInfo,
    pub proxies: usize,
    pub proxies_ready: bool,
    pub seed: u64,
    pub initial: InitialSync,
    pub changes: Vec<ChangeResult>,
    pub control: ControlProcess,
    pub simulator_cpu_seconds: f64,
    pub simulator_threads: usize,
}

#[derive(Serialize)]
pub struct MeshInfo {
    pub namespaces: usize,
    pub services: usize,
    pub endpoints: usize,
    pub resources_per_proxy: usize,
}

#[derive(Serialize)]
pub struct InitialSync {
    /// From the start of connecting until the last update of the sync arrived.
    pub seconds: f64,
    /// From the start of connecting until each proxy's first update (the full push).
    pub first_update_ms: Summary,
    /// Encoded size of the first update (the full push) per proxy.
    pub full_push_bytes: Summary,
    pub full_push_resources: Summary,
    /// Everything a proxy received until the sync was reached (the full push plus the
    /// Endpoints updates caused by other proxies registering).
    pub total_bytes: Summary,
    pub updates: Summary,
    pub control_cpu_seconds: f64,
}

#[derive(Serialize)]
pub struct ChangeResult {
    pub change: usize,
    pub namespace: String,
    pub service: String,
    /// POST /v1/apply, request sent → answer read.
    pub apply_ms: f64,
    /// Answer read → first affected proxy ACKed (negative: before the answer was read).
    pub first_ack_ms: Option<f64>,
    /// Answer read → the last affected proxy ACKed; None if some never did.
    pub all_ack_ms: Option<f64>,
    /// Request sent → the last affected proxy ACKed.
    pub all_ack_from_request_ms: Option<f64>,
    /// Earliest arrival → latest arrival among the affected proxies (the fan-out).
    pub spread_ms: Option<f64>,
    pub affected: usize,
    pub reached: usize,
    /// Encoded size of the changed Service as a `Resource`.
    pub resource_bytes: usize,
    /// What each affected proxy received for this change.
    pub affected_bytes: Summary,
    pub affected_updates_max: u64,
    pub affected_upserts_max: u64,
    pub affected_removals_max: u64,
    /// Proxies of other namespaces that received anything during the change.
    pub unaffected_with_updates: usize,
    pub unaffected_bytes: u64,
    /// The control plane's VmRSS after the change settled.
    pub control_rss_kib: u64,
}

#[derive(Serialize)]
pub struct ControlProcess {
    pub pid: u32,
    pub before_proxies: procfs::Memory,
    pub after_initial_sync: procfs::Memory,
    pub at_end: procfs::Memory,
    pub change_phase_cpu_seconds: f64,
    pub change_phase_seconds: f64,
    /// CPU the rest of the machine used during the change phase (all busy CPU time minus the
    /// control plane's and the simulator's): other work that shared the CPUs.
    pub change_phase_other_cpu_seconds: f64,
}

// ------------------------------------------------------------------------------------ the run

pub async fn run(args: &RunArgs) -> anyhow::Result<RunReport> {
    let mesh = Arc::new(args.mesh.clone());
    mesh.check()?;
    if args.proxies == 0 {
        bail!("--proxies must be at least 1");
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?
        .trim()
        .to_string();
    let api = Api::new(&args.api, token);
    api.healthz().await?;
    let pid = args.control_pid;
    let memory = || {
        procfs::memory(pid).with_context(|| format!("cannot read /proc/{pid}/status: is the control plane running?"))
    };
    let cpu = || procfs::cpu_seconds(pid).with_context(|| format!("cannot read /proc/{pid}/stat"));
    let before_proxies = memory()?;

    // ---------------------------------------------------------------- initial sync
    let plans = plan_proxies(&mesh, args.proxies);
    let ids: HashSet<String> = plans.iter().map(|p| p.id.clone()).collect();
    let (awaited_tx, awaited_rx) = watch::channel(None);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        push: args.push.clone(),
        ready: !args.not_ready,
        awaited: awaited_rx,
        seen: seen_tx,
        stop: stop_rx,
    });
    let proxies: Vec<Arc<Proxy>> =
        plans.into_iter().map(|plan| Arc::new(Proxy { plan, stats: Mutex::new(ProxyStats::default()) })).collect();
    eprintln!(
        "push-scale: connecting {} proxies ({} per namespace, {} resources each)…",
        proxies.len(),
        proxies.len().div_ceil(mesh.namespaces),
        mesh.resources_per_proxy()
    );
    let cpu_sync_start = cpu()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for proxy in &proxies {
        tasks.push(tokio::spawn(proxy_task(proxy.clone(), mesh.clone(), shared.clone())));
    }
    let expected = mesh.resources_per_proxy();
    let quiet = Duration::from_millis(args.quiet_ms);
    let mut next_progress = Instant::now() + Duration::from_secs(5);
    let synced_at = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        check_streams(&proxies)?;
        let (complete, last) = proxies.iter().fold((0, None::<Instant>), |(n, last), p| {
            p.stats(|s| (n + usize::from(s.first.is_some() && s.held == expected), last.max(s.last)))
        });
        if complete == proxies.len()
            && let Some(last) = last
            && last.elapsed() >= quiet
            && api.in_sync(&ids).await? >= proxies.len()
        {
            // Quiet and in sync: make sure nothing arrived while we asked.
            let again = proxies.iter().filter_map(|p| p.stats(|s| s.last)).max();
            if again == Some(last) {
                break last;
            }
        }
        if started.elapsed() > Duration::from_secs(args.sync_timeout) {
            bail!(
                "no initial sync after {} s: {complete} of {} proxies hold their {expected} resources",
                args.sync_timeout,
                proxies.len()
            );
        }
        if Instant::now() >= next_progress {
            eprintln!("push-scale: {complete} of {} proxies hold their whole share…", proxies.len());
            next_progress += Duration::from_secs(5);
        }
    };
    let control_sync_cpu = cpu()? - cpu_sync_start;
    let after_sync = memory()?;
    let collect = |f: &dyn Fn(&ProxyStats) -> f64| -> Summary {
        Summary::of(proxies.iter().map(|p| p.stats(|s| f(s))).collect())
    };
    let initial = InitialSync {
        seconds: (synced_at - started).as_secs_f64(),
        first_update_ms: collect(&|s| s.first.map_or(f64::NAN, |f| ms(f.0 - started))),
        full_push_bytes: collect(&|s| s.first.map_or(f64::NAN, |f| f.1 as f64)),
        full_push_resources: collect(&|s| s.first.map_or(f64::NAN, |f| f.2 as f64)),
        total_bytes: collect(&|s| s.counters.bytes as f64),
        updates: collect(&|s| s.counters.updates as f64),
        control_cpu_seconds: control_sync_cpu,
    };
    eprintln!(
        "push-scale: all {} proxies in sync after {:.2} s; control plane RSS {:.1} MiB",
        proxies.len(),
        initial.seconds,
        after_sync.rss_kib as f64 / 1024.0
    );

    // ---------------------------------------------------------------- changes
    let mut rng = StdRng::seed_from_u64(args.seed);
    let namespaces_with_proxies: Vec<usize> = {
        let mut v: Vec<usize> = proxies.iter().map(|p| p.plan.namespace).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    // Unique per run, so a change is never equal to what the store holds.
    let run_tag =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0) % 1_000_000_000;
    let mut variants: HashMap<(usize, usize), Variant> = HashMap::new();
    let mut results = Vec::new();
    let cpu_changes_start = cpu()?;
    let busy_start = procfs::machine_busy_seconds().unwrap_or(0.0) - procfs::own_cpu_seconds();
    let changes_started = Instant::now();
    for change in 1..=args.changes {
        let ns = namespaces_with_proxies[rng.random_range(0..namespaces_with_proxies.len())];
        let index = rng.random_range(0..mesh.per_namespace());
        let variant = variants.entry((ns, index)).or_insert_with(Variant::initial);
        let mut weight = variant.weight_v2;
        while weight == variant.weight_v2 {
            weight = rng.random_range(1..=99);
        }
        variant.weight_v2 = weight;
        variant.marker = format!("bench-{run_tag}-{change}");
        let yaml = mesh.service_yaml(ns, index, variant);
        let affected: Vec<usize> = proxies.iter().filter(|p| p.plan.namespace == ns).map(|p| p.plan.index).collect();
        let before: Vec<Counters> = proxies.iter().map(|p| p.stats(|s| s.counters)).collect();
        awaited_tx.send_replace(Some(Arc::new(Awaited {
            change,
            namespace: ns,
            name: mesh.service_key(ns, index),
            marker: variant.marker.clone(),
        })));
        while seen_rx.try_recv().is_ok() {}

        let requested = Instant::now();
        let actions = api.apply(yaml, "bench-change.yaml").await?;
        let answered = Instant::now();
        if actions != ["Updated"] {
            bail!("change {change}: the apply answered {actions:?}, expected one Updated");
        }
        let mut seen: HashMap<usize, Seen> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.change_timeout);
        while seen.len() < affected.len() {
            match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
                Ok(Some(s)) if s.change == change => {
                    seen.entry(s.proxy).or_insert(s);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("every proxy task ended"),
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        check_streams(&proxies)?;
        let after: Vec<Counters> = proxies.iter().map(|p| p.stats(|s| s.counters)).collect();
        let delta: Vec<Counters> = after.iter().zip(&before).map(|(a, b)| a.minus(*b)).collect();

        let affected_set: HashSet<usize> = affected.iter().copied().collect();
        let first = seen.values().map(|s| s.acked).min();
        let last = seen.values().map(|s| s.acked).max();
        let complete = seen.len() == affected.len();
        let signed_ms = |t: Instant| if t >= answered { ms(t - answered) } else { -ms(answered - t) };
        let result = ChangeResult {
            change,
            namespace: mesh.namespace(ns),
            service: mesh.service(index),
            apply_ms: ms(answered - requested),
            first_ack_ms: first.map(signed_ms),
            all_ack_ms: last.filter(|_| complete).map(signed_ms),
            all_ack_from_request_ms: last.filter(|_| complete).map(|t| ms(t - requested)),
            spread_ms: match (seen.values().map(|s| s.received).min(), seen.values().map(|s| s.received).max()) {
                (Some(a), Some(b)) => Some(ms(b - a)),
                _ => None,
            },
            affected: affected.len(),
            reached: seen.len(),
            resource_bytes: seen.values().map(|s| s.resource_bytes).max().unwrap_or(0),
            affected_bytes: Summary::of(affected.iter().map(|&p| delta[p].bytes as f64).collect()),
            affected_updates_max: affected.iter().map(|&p| delta[p].updates).max().unwrap_or(0),
            affected_upserts_max: affected.iter().map(|&p| delta[p].upserts).max().unwrap_or(0),
            affected_removals_max: affected.iter().map(|&p| delta[p].removals).max().unwrap_or(0),
            unaffected_with_updates: (0..proxies.len())
                .filter(|p| !affected_set.contains(p) && delta[*p].updates > 0)
                .count(),
            unaffected_bytes: (0..proxies.len()).filter(|p| !affected_set.contains(p)).map(|p| delta[p].bytes).sum(),
            control_rss_kib: memory()?.rss_kib,
        };
        eprintln!(
            "push-scale: change {change}/{}: {}/{} apply {:.1} ms, all {} ACKed {} ms after the answer, {} B per proxy",
            args.changes,
            result.namespace,
            result.service,
            result.apply_ms,
            result.affected,
            result.all_ack_ms.map_or("— (not all)".to_string(), |v| format!("{v:.1}")),
            result.affected_bytes.p50 as u64,
        );
        results.push(result);
    }
    let change_phase_seconds = changes_started.elapsed().as_secs_f64();
    let change_cpu = cpu()? - cpu_changes_start;
    let others = procfs::machine_busy_seconds().unwrap_or(0.0) - procfs::own_cpu_seconds() - busy_start - change_cpu;
    let at_end = memory()?;

    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(RunReport {
        machine: procfs::machine(),
        mesh: MeshInfo {
            namespaces: mesh.namespaces,
            services: mesh.services,
            endpoints: mesh.services * mesh.endpoints_per_service,
            resources_per_proxy: expected,
        },
        proxies: proxies.len(),
        proxies_ready: !args.not_ready,
        seed: args.seed,
        initial,
        changes: results,
        control: ControlProcess {
            pid,
            before_proxies,
            after_initial_sync: after_sync,
            at_end,
            change_phase_cpu_seconds: change_cpu,
            change_phase_seconds,
            change_phase_other_cpu_seconds: others.max(0.0),
        },
        simulator_cpu_seconds: procfs::own_cpu_seconds(),
        simulator_threads: args.threads,
    })
}

fn check_streams(proxies: &[Arc<Proxy>]) -> anyhow::Result<()> {
    let ended: Vec<String> =
        proxies.iter().filter_map(|p| p.stats(|s| s.ended.clone()).map(|e| format!("{}: {e}", p.plan.id))).collect();
    if !ended.is_empty() {
        bail!("{} stream(s) ended, e.g. {}", ended.len(), ended[0]);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
