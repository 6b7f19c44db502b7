//! The markdown tables of `run` and `compile`.

use crate::compile::CompileReport;
use crate::sim::RunReport;
use crate::stats::Summary;
use std::fmt::Write as _;

/// Target of the issue: apply → every affected proxy ACKed, p99.
pub const TARGET_P99_MS: f64 = 500.0;
/// Target of the issue: control-plane memory.
pub const TARGET_RSS_MIB: f64 = 300.0;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn kib(bytes: f64) -> String {
    if bytes >= 10.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else if bytes >= 10.0 * 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

fn ms_row(out: &mut String, what: &str, s: &Summary) {
    let _ = writeln!(out, "| {what} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |", s.p50, s.p90, s.p99, s.max, s.mean);
}

pub fn run_markdown(r: &RunReport) -> String {
    let mut out = String::new();
    let i = &r.initial;
    let w = |out: &mut String, line: &str| {
        out.push_str(line);
        out.push('\n');
    };
    let _ = writeln!(
        out,
        "Mesh: {} Services in {} namespaces ({} per namespace), {} static endpoints ({} per service), \
         {} simulated proxies ({} per namespace), each calling its whole namespace: {} resources per proxy \
         (a Service and an Endpoints document per service). Proxies {}.",
        r.mesh.services,
        r.mesh.namespaces,
        r.mesh.services / r.mesh.namespaces,
        r.mesh.endpoints,
        r.mesh.endpoints / r.mesh.services,
        r.proxies,
        r.proxies.div_ceil(r.mesh.namespaces),
        r.mesh.resources_per_proxy,
        if r.proxies_ready {
            "are ready and registered with an address, each an instance of a service of its namespace (so \
             every connection changes one Endpoints document, as real sidecars do)"
        } else {
            "are not ready and give no address (they change no Endpoints)"
        }
    );
    w(&mut out, "");
    w(&mut out, "### Initial sync");
    w(&mut out, "");
    w(&mut out, "All proxies connect at once (one HTTP/2 connection and stream each). In sync: every proxy holds its");
    w(&mut out, "whole share, the control plane lists every one as in sync, and no update arrived for a quiet period.");
    w(&mut out, "");
    w(&mut out, "| | p50 | max |");
    w(&mut out, "|---|---:|---:|");
    let _ = writeln!(out, "| all in sync after (connect start → last update) | {:.2} s | |", i.seconds);
    let _ = writeln!(
        out,
        "| first update after connect start, ms | {:.0} | {:.0} |",
        i.first_update_ms.p50, i.first_update_ms.max
    );
    let _ = writeln!(
        out,
        "| full push (first update) per proxy | {} ({:.0} resources) | {} |",
        kib(i.full_push_bytes.p50),
        i.full_push_resources.p50,
        kib(i.full_push_bytes.max)
    );
    let _ =
        writeln!(out, "| bytes per proxy until in sync | {} | {} |", kib(i.total_bytes.p50), kib(i.total_bytes.max));
    let _ = writeln!(out, "| updates per proxy until in sync | {:.0} | {:.0} |", i.updates.p50, i.updates.max);
    let _ = writeln!(out, "| control-plane CPU during the sync | {:.2} s | |", i.control_cpu_seconds);
    w(&mut out, "");

    let changes = &r.changes;
    let _ = writeln!(out, "### {} changes, one at a time", changes.len());
    w(&mut out, "");
    w(&mut out, "Each: one modified Service (canary weight and a request header of its `api` route) in a random");
    w(&mut out, "namespace, `POST /v1/apply`; then waiting until every proxy of that namespace has ACKed an update");
    w(&mut out, "carrying it, then a settle period before counting what every proxy received. Percentiles are");
    if changes.len() < 100 {
        let _ = writeln!(out, "nearest-rank over {} changes (with fewer than 100, p99 is the maximum).", changes.len());
    } else {
        let _ = writeln!(out, "nearest-rank over {} changes.", changes.len());
    }
    w(&mut out, "");
    let reached: Vec<&crate::sim::ChangeResult> = changes.iter().filter(|c| c.all_ack_ms.is_some()).collect();
    let summary =
        |f: &dyn Fn(&crate::sim::ChangeResult) -> Option<f64>| Summary::of(changes.iter().filter_map(f).collect());
    let all_ack = summary(&|c| c.all_ack_ms);
    w(&mut out, "| ms | p50 | p90 | p99 | max | mean |");
    w(&mut out, "|---|---:|---:|---:|---:|---:|");
    ms_row(&mut out, "apply call (request → answer; includes the store's fsync)", &summary(&|c| Some(c.apply_ms)));
    ms_row(&mut out, "answer → first affected proxy ACKed", &summary(&|c| c.first_ack_ms));
    ms_row(&mut out, &format!("**answer → every affected proxy ACKed** (target p99 ≤ {TARGET_P99_MS:.0})"), &all_ack);
    ms_row(&mut out, "request → every affected proxy ACKed", &summary(&|c| c.all_ack_from_request_ms));
    ms_row(&mut out, "fan-out: first → last arrival among affected proxies", &summary(&|c| c.spread_ms));
    w(&mut out, "");
    let per_proxy = Summary::of(changes.iter().flat_map(|c| [c.affected_bytes.min, c.affected_bytes.max]).collect());
    let resource = Summary::of(changes.iter().map(|c| c.resource_bytes as f64).collect());
    let unaffected: usize = changes.iter().map(|c| c.unaffected_with_updates).sum();
    let unaffected_bytes: u64 = changes.iter().map(|c| c.unaffected_bytes).sum();
    let max_updates = changes.iter().map(|c| c.affected_updates_max).max().unwrap_or(0);
    let max_upserts = changes.iter().map(|c| c.affected_upserts_max).max().unwrap_or(0);
    let max_removals = changes.iter().map(|c| c.affected_removals_max).max().unwrap_or(0);
    w(&mut out, "| per change | value |");
    w(&mut out, "|---|---:|");
    let _ = writeln!(
        out,
        "| bytes per affected proxy (min – max over all changes and proxies) | {:.0} – {:.0} B |",
        per_proxy.min, per_proxy.max
    );
    let _ = writeln!(
        out,
        "| the changed Service alone, as an encoded `Resource` | {:.0} – {:.0} B |",
        resource.min, resource.max
    );
    let _ = writeln!(out, "| a proxy's full share, for comparison | {} |", kib(i.full_push_bytes.p50));
    let _ = writeln!(
        out,
        "| updates / upserts / removals per affected proxy (max) | {max_updates} / {max_upserts} / {max_removals} |"
    );
    let _ = writeln!(out, "| affected proxies per change | {} |", changes.first().map_or(0, |c| c.affected));
    let _ = writeln!(
        out,
        "| changes not delivered to every affected proxy within the timeout | {} |",
        changes.len() - reached.len()
    );
    let _ = writeln!(
        out,
        "| **unaffected proxies that got anything** (sum over changes; want 0) | {unaffected} ({unaffected_bytes} B) |"
    );
    w(&mut out, "");

    let c = &r.control;
    w(&mut out, "### Control-plane process");
    w(&mut out, "");
    w(&mut out, "| | VmRSS MiB |");
    w(&mut out, "|---|---:|");
    let _ = writeln!(out, "| store loaded, no proxies | {:.1} |", mib(c.before_proxies.rss_kib));
    let _ = writeln!(out, "| after the initial sync | {:.1} |", mib(c.after_initial_sync.rss_kib));
    let _ = writeln!(out, "| at the end | {:.1} |", mib(c.at_end.rss_kib));
    let _ = writeln!(out, "| peak over its life (VmHWM) | {:.1} |", mib(c.at_end.hwm_kib));
    w(&mut out, "");
    if changes.len() >= 4 {
        let at = |q: usize| changes[(changes.len() * q / 4).saturating_sub(1)].control_rss_kib;
        let _ = writeln!(
            out,
            "VmRSS after 1/4, 1/2, 3/4 and all of the changes: {:.1}, {:.1}, {:.1}, {:.1} MiB.",
            mib(at(1)),
            mib(at(2)),
            mib(at(3)),
            mib(at(4))
        );
        w(&mut out, "");
    }
    let per_change = if changes.is_empty() { 0.0 } else { c.change_phase_cpu_seconds / changes.len() as f64 * 1000.0 };
    let _ = writeln!(
        out,
        "CPU (utime+stime) over the change phase: **{:.2} s** in {:.1} s of wall time ({:.0}% of one core; \
         {:.0} ms per change, settle time included). The simulator itself used {:.2} s of CPU over the whole run \
         ({} runtime thread(s)); everything else on the machine used {:.2} s of CPU during the change phase.",
        c.change_phase_cpu_seconds,
        c.change_phase_seconds,
        c.change_phase_cpu_seconds / c.change_phase_seconds.max(1e-9) * 100.0,
        per_change,
        r.simulator_cpu_seconds,
        r.simulator_threads,
        c.change_phase_other_cpu_seconds
    );
    w(&mut out, "");

    w(&mut out, "### Targets");
    w(&mut out, "");
    w(&mut out, "| target | measured | met |");
    w(&mut out, "|---|---:|:---:|");
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let p99_ok = reached.len() == changes.len() && all_ack.p99 <= TARGET_P99_MS;
    let _ =
        writeln!(out, "| apply → all ACKed, p99 ≤ {TARGET_P99_MS:.0} ms | {:.1} ms | {} |", all_ack.p99, yes(p99_ok));
    let peak = mib(c.at_end.hwm_kib.max(c.at_end.rss_kib).max(c.after_initial_sync.rss_kib));
    let _ = writeln!(
        out,
        "| control-plane RSS ≤ {TARGET_RSS_MIB:.0} MiB (peak) | {peak:.1} MiB | {} |",
        yes(peak <= TARGET_RSS_MIB)
    );
    let minimal = max_updates == 1 && max_upserts == 1 && max_removals == 0 && unaffected == 0;
    let _ = writeln!(
        out,
        "| bytes per change grow with the change, not the mesh (1 update with 1 upsert per affected proxy, nothing elsewhere) | {:.0} B per proxy | {} |",
        per_proxy.max,
        yes(minimal)
    );
    w(&mut out, "");

    let mut notes = Vec::new();
    for ch in changes {
        if ch.all_ack_ms.is_none() {
            notes.push(format!(
                "change {} ({}/{}): only {} of {} affected proxies ACKed it within the timeout",
                ch.change, ch.namespace, ch.service, ch.reached, ch.affected
            ));
        }
        if ch.first_ack_ms.is_some_and(|v| v < 0.0) {
            notes.push(format!("change {}: a proxy ACKed it before the API's answer was read", ch.change));
        }
        if ch.unaffected_with_updates > 0 {
            notes.push(format!(
                "change {}: {} proxies of other namespaces received {} B",
                ch.change, ch.unaffected_with_updates, ch.unaffected_bytes
            ));
        }
        if ch.affected_updates_max > 1 {
            notes.push(format!("change {}: an affected proxy got {} updates", ch.change, ch.affected_updates_max));
        }
    }
    if c.change_phase_other_cpu_seconds > 0.1 * c.change_phase_seconds {
        notes.push(format!(
            "other processes used {:.1} s of CPU during the {:.1} s change phase: the numbers include their interference",
            c.change_phase_other_cpu_seconds, c.change_phase_seconds
        ));
    }
    if r.simulator_cpu_seconds > 0.5 * (c.change_phase_seconds + i.seconds) {
        notes.push("the simulator was busy for more than half of the run: it may have delayed ACKs".into());
    }
    if !notes.is_empty() {
        w(&mut out, "**Check:**");
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
        w(&mut out, "");
    }

    w(&mut out, "<details><summary>Every change</summary>");
    w(&mut out, "");
    w(
        &mut out,
        "| # | service | apply ms | → first ACK ms | → all ACKed ms | fan-out ms | reached | B per affected proxy | other proxies updated | control RSS MiB |",
    );
    w(&mut out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let opt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
    for ch in changes {
        let _ = writeln!(
            out,
            "| {} | {}/{} | {:.1} | {} | {} | {} | {}/{} | {:.0} | {} | {:.1} |",
            ch.change,
            ch.namespace,
            ch.service,
            ch.apply_ms,
            opt(ch.first_ack_ms),
            opt(ch.all_ack_ms),
            opt(ch.spread_ms),
            ch.reached,
            ch.affected,
            ch.affected_bytes.p50,
            ch.unaffected_with_updates,
            mib(ch.control_rss_kib)
        );
    }
    w(&mut out, "");
    w(&mut out, "</details>");
    out
}

pub fn compile_markdown(r: &CompileReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "The same {} documents loaded into a fresh store in a separate process (the control plane stopped), {} \
         proxies registered; what the snapshot builder does after every commit (list everything, build), \
         timed {} times on one thread:",
        r.documents, r.proxies, r.rounds
    );
    out.push('\n');
    out.push_str("| step | p50 | max |\n|---|---:|---:|\n");
    let _ = writeln!(
        out,
        "| `Store::list(None, None)` (every current document) | {:.1} ms | {:.1} ms |",
        r.list_ms.p50, r.list_ms.max
    );
    let _ = writeln!(out, "| `Snapshot::build` | {:.1} ms | {:.1} ms |", r.build_ms.p50, r.build_ms.max);
    let _ = writeln!(
        out,
        "| **one rebuild** (list + build, per commit or registry change) | **{:.1} ms** | |",
        r.list_ms.p50 + r.build_ms.p50
    );
    let _ =
        writeln!(out, "| `Snapshot::for_workload`, one proxy | {:.0} µs | {:.0} µs |", r.share_us.p50, r.share_us.max);
    let _ = writeln!(
        out,
        "| `for_workload` for all {} proxies (every stream, every new snapshot) | {:.1} ms | {:.1} ms |",
        r.proxies, r.all_shares_ms.p50, r.all_shares_ms.max
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "JSON text in one proxy's share: {}; in the whole snapshot: {}. This process's RSS: {:.1} MiB \
         before loading, {:.1} MiB after the rebuilds.",
        kib(r.share_json_bytes as f64),
        kib(r.snapshot_json_bytes as f64),
        mib(r.rss_before_kib),
        mib(r.rss_after_kib)
    );
    out
}
