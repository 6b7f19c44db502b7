//! The compiler at this size, in process: the same documents in a fresh store, the same
//! proxies in a registry, then what the control plane's snapshot builder does after every
//! commit (`Store::list` of everything, `Snapshot::build`) and what every proxy's stream does
//! with each new snapshot (`Snapshot::for_workload`), timed. No network, no other load.

use crate::mesh::{Mesh, plan_proxies};
use crate::procfs;
use crate::stats::Summary;
use anyhow::{Context, anyhow};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_control::registry::{Registry, Workload};
use trellis_control::snapshot::Snapshot;
use trellis_control::store::Store;

#[derive(clap::Args, Clone, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub mesh: Mesh,
    /// Registered proxies (as `run` plans them).
    #[arg(long, default_value_t = 200)]
    pub proxies: usize,
    /// Rebuilds to time.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Proxies are not ready and have no address (see `run --not-ready`).
    #[arg(long)]
    pub not_ready: bool,
    /// Files the documents are split into before parsing (as the script applies them).
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
pub struct CompileReport {
    pub documents: usize,
    pub proxies: usize,
    pub rounds: usize,
    /// `Store::list(None, None)`: every current document, read and decoded.
    pub list_ms: Summary,
    /// `Snapshot::build` over that list and the registry.
    pub build_ms: Summary,
    /// `Snapshot::for_workload` for one proxy (its whole namespace).
    pub share_us: Summary,
    /// `for_workload` for every proxy once: what one new snapshot costs the streams before
    /// any of them compares hashes or sends anything.
    pub all_shares_ms: Summary,
    /// JSON text per proxy's share, and over every namespace (≈ the snapshot's documents).
    pub share_json_bytes: usize,
    pub snapshot_json_bytes: usize,
    /// This process's VmRSS before the store was filled and after the timed rebuilds.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &CompileArgs) -> anyhow::Result<CompileReport> {
    let mesh = &args.mesh;
    mesh.check()?;
    let rss_before = procfs::memory(std::process::id()).unwrap_or_default().rss_kib;
    let dir = TempDir(std::env::temp_dir().join(format!("trellis-push-scale-compile-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let store = Store::open(&dir.0.join("data"))?;
    let mut documents = 0;
    for file in mesh.write_files(&dir.0.join("mesh"), args.files)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let docs = trellis_api::parse_documents(&text, &file.display().to_string()).map_err(|e| anyhow!("{e}"))?;
        documents += docs.len();
        store.apply(&docs, "push-scale", false)?;
    }
    let registry = Arc::new(Registry::new(Duration::from_secs(30)));
    let plans = plan_proxies(mesh, args.proxies);
    for plan in &plans {
        let version = if plan.index.is_multiple_of(2) { "v1" } else { "v2" };
        let workload = Workload {
            service: mesh.service(plan.service),
            namespace: mesh.namespace(plan.namespace),
            labels: [("version".to_string(), version.to_string())].into(),
            zone: format!("zone-{}", plan.index % 3),
            region: "region-1".into(),
            address: if args.not_ready { None } else { Some(plan.address.parse()?) },
            calls: Vec::new(),
            service_account: String::new(),
            identity: None,
        };
        registry.connect(&plan.id, workload, !args.not_ready);
    }

    let (mut list_ms, mut build_ms, mut share_us, mut all_shares_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut share_json_bytes, mut snapshot_json_bytes) = (0, 0);
    for round in 0..args.rounds.max(1) {
        let t = Instant::now();
        let items = store.list(None, None)?;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let snapshot = Snapshot::build(&items, &registry);
        build_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(items);
        let all = Instant::now();
        for plan in &plans {
            let t = Instant::now();
            let share = snapshot.for_workload(&mesh.namespace(plan.namespace), Some(&mesh.service(plan.service)), &[]);
            share_us.push(t.elapsed().as_secs_f64() * 1e6);
            if round == 0 && plan.index < mesh.namespaces {
                let bytes: usize = share.values().map(|p| p.json.len()).sum();
                share_json_bytes = share_json_bytes.max(bytes);
                snapshot_json_bytes += bytes;
            }
            std::hint::black_box(share);
        }
        all_shares_ms.push(all.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(CompileReport {
        documents,
        proxies: plans.len(),
        rounds: args.rounds.max(1),
        list_ms: Summary::of(list_ms),
        build_ms: Summary::of(build_ms),
        share_us: Summary::of(share_us),
        all_shares_ms: Summary::of(all_shares_ms),
        share_json_bytes,
        snapshot_json_bytes,
        rss_before_kib: rss_before,
        rss_after_kib: procfs::memory(std::process::id()).unwrap_or_default().rss_kib,
    })
}
