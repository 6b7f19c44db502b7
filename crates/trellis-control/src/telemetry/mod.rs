//! Telemetry aggregation: what the proxies' requests did, gathered from the reports they
//! send on their push streams, so that `trellis stat`, `top`, `edges` and the dashboard can
//! answer without a Prometheus server.
//!
//! - [`TelemetryStore`] keeps, per proxy and series, the cumulative counters each report
//!   carried (for [`RETENTION`]), and answers "what happened in this window" for any window
//!   inside it.
//! - [`golden`] sums windows into golden metrics (RPS, success rate, latency percentiles)
//!   per service, route, subset or edge.
//! - [`tap`] relays live requests from the proxies to whoever is watching.
//!
//! Sample times are the control plane's clock when a report arrived, so proxies with skewed
//! clocks still line up.

pub mod golden;
pub mod http;
pub mod tap;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use trellis_protocol::v1 as proto;

/// How far back windows can reach.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// Proxies report every few seconds; a series first seen in a report started at most this
/// long before it.
const REPORT_EVERY_MS: i64 = 5_000;

/// Which requests a series counts (the proxy's labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub direction: String,
    pub service: String,
    pub route: String,
    pub upstream: String,
    pub source_identity: String,
    pub destination_identity: String,
}

/// Counters of one series (cumulative in samples, differences in windows).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
    /// Per status class 1xx..5xx.
    pub by_class: [u64; 5],
    /// Per latency bucket (`trellis_protocol::LATENCY_BOUNDS`, then +Inf).
    pub latency: Vec<u64>,
    pub latency_sum_seconds: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl Counts {
    fn from_report(series: &proto::RequestSeries) -> Counts {
        let mut counts = Counts {
            latency: series.latency_buckets.clone(),
            latency_sum_seconds: series.latency_sum_seconds,
            request_bytes: series.request_bytes,
            response_bytes: series.response_bytes,
            ..Counts::default()
        };
        for r in &series.responses {
            counts.requests += r.count;
            let class = r.status_class.clamp(1, 5);
            counts.by_class[class as usize - 1] += r.count;
            let grpc = u16::try_from(r.grpc_status).ok();
            if trellis_protocol::is_failure(class, grpc) {
                counts.failures += r.count;
            }
        }
        counts
    }

    /// `self - earlier`; a counter that went down means the proxy restarted, so everything
    /// since is new.
    fn since(&self, earlier: &Counts) -> Counts {
        if self.requests < earlier.requests {
            return self.clone();
        }
        let sub = |a: u64, b: u64| a.saturating_sub(b);
        let mut by_class = [0; 5];
        for (i, slot) in by_class.iter_mut().enumerate() {
            *slot = sub(self.by_class[i], earlier.by_class[i]);
        }
        Counts {
            requests: sub(self.requests, earlier.requests),
            failures: sub(self.failures, earlier.failures),
            by_class,
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| sub(*n, earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
            latency_sum_seconds: (self.latency_sum_seconds - earlier.latency_sum_seconds).max(0.0),
            request_bytes: sub(self.request_bytes, earlier.request_bytes),
            response_bytes: sub(self.response_bytes, earlier.response_bytes),
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.failures += other.failures;
        for i in 0..5 {
            self.by_class[i] += other.by_class[i];
        }
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (i, n) in other.latency.iter().enumerate() {
            self.latency[i] += n;
        }
        self.latency_sum_seconds += other.latency_sum_seconds;
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
    }
}

struct Series {
    first_seen_ms: i64,
    /// (time, cumulative counts), oldest first.
    samples: VecDeque<(i64, Counts)>,
}

struct ProxyTelemetry {
    /// `NAME.NAMESPACE` of the proxy's workload; empty without one.
    workload: String,
    first_report_ms: i64,
    last_report_ms: i64,
    series: HashMap<SeriesKey, Series>,
    /// (direction, service) → requests in flight at the last report.
    in_flight: Vec<(String, String, i64)>,
    /// Our clock minus the proxy's when its last report arrived (network delay included).
    clock_skew_ms: i64,
}

/// One series' activity within a window.
#[derive(Clone, Debug)]
pub struct WindowSeries {
    pub proxy: String,
    /// The reporting proxy's workload (`NAME.NAMESPACE`).
    pub workload: String,
    pub key: SeriesKey,
    pub delta: Counts,
    /// The time the delta covers, in seconds.
    pub seconds: f64,
}

#[derive(Default)]
pub struct TelemetryStore {
    proxies: Mutex<HashMap<String, ProxyTelemetry>>,
    /// When proxies gone longer than RETENTION were last forgotten (ms).
    last_sweep_ms: std::sync::atomic::AtomicI64,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl TelemetryStore {
    /// Takes one report from `proxy` (whose workload is `workload`, `NAME.NAMESPACE`).
    pub fn record(&self, proxy: &str, workload: &str, report: &proto::TelemetryReport) {
        self.record_at(proxy, workload, report, now_ms());
    }

    fn record_at(&self, proxy: &str, workload: &str, report: &proto::TelemetryReport, at: i64) {
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let entry = proxies.entry(proxy.to_string()).or_insert_with(|| ProxyTelemetry {
            workload: workload.to_string(),
            first_report_ms: at,
            last_report_ms: at,
            series: HashMap::new(),
            in_flight: Vec::new(),
            clock_skew_ms: 0,
        });
        if report.unix_millis > 0 {
            entry.clock_skew_ms = at - report.unix_millis;
        }
        entry.workload = workload.to_string();
        entry.last_report_ms = at;
        entry.in_flight =
            report.in_flight.iter().map(|f| (f.direction.clone(), f.service.clone(), f.requests)).collect();
        for series in &report.series {
            let key = SeriesKey {
                direction: series.direction.clone(),
                service: series.service.clone(),
                route: series.route.clone(),
                upstream: series.upstream.clone(),
                source_identity: series.source_identity.clone(),
                destination_identity: series.destination_identity.clone(),
            };
            let stored =
                entry.series.entry(key).or_insert_with(|| Series { first_seen_ms: at, samples: VecDeque::new() });
            stored.samples.push_back((at, Counts::from_report(series)));
        }
        // Keep what windows can reach, plus one older sample as their baseline.
        let cutoff = at - RETENTION.as_millis() as i64;
        for series in entry.series.values_mut() {
            while series.samples.len() > 1 && series.samples[1].0 <= cutoff {
                series.samples.pop_front();
            }
        }
        // Forgetting proxies that stopped reporting need not happen on every report.
        let last_sweep = self.last_sweep_ms.load(std::sync::atomic::Ordering::Relaxed);
        if at - last_sweep > REPORT_EVERY_MS * 12 {
            self.last_sweep_ms.store(at, std::sync::atomic::Ordering::Relaxed);
            proxies.retain(|_, p| p.last_report_ms > cutoff);
        }
    }

    /// Activity of every series in the window of `window` ending now.
    pub fn window(&self, window: Duration) -> Vec<WindowSeries> {
        self.window_at(now_ms(), window)
    }

    /// Activity of every series in `[end - window, end]` (milliseconds since the epoch).
    pub fn window_at(&self, end: i64, window: Duration) -> Vec<WindowSeries> {
        let start = end - window.as_millis() as i64;
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (proxy_id, proxy) in proxies.iter() {
            for (key, series) in &proxy.series {
                // The counters as of `end`.
                let Some((t_end, last)) = series.samples.iter().rev().find(|(t, _)| *t <= end) else { continue };
                let baseline = series.samples.iter().rev().find(|(t, _)| *t <= start);
                let (t_base, delta) = match baseline {
                    Some((t, counts)) => (*t, last.since(counts)),
                    None if series.first_seen_ms > proxy.first_report_ms => {
                        // The series began between two reports: from zero.
                        let began = (series.first_seen_ms - REPORT_EVERY_MS).max(start);
                        (began, last.clone())
                    }
                    None => {
                        // Reported since before we knew it: count from its first sample.
                        let (t, first) = &series.samples[0];
                        (*t, last.since(first))
                    }
                };
                let seconds = (*t_end - t_base) as f64 / 1000.0;
                if seconds <= 0.0 {
                    continue;
                }
                out.push(WindowSeries {
                    proxy: proxy_id.clone(),
                    workload: proxy.workload.clone(),
                    key: key.clone(),
                    delta,
                    seconds,
                });
            }
        }
        out
    }

    /// Each proxy's clock skew (our clock minus its, in ms) from its last report.
    pub fn clock_skews(&self) -> HashMap<String, i64> {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies.iter().map(|(id, p)| (id.clone(), p.clock_skew_ms)).collect()
    }

    /// Requests in flight at the last reports, per (direction, service), summed over proxies
    /// that reported within `fresh`.
    pub fn in_flight(&self, fresh: Duration) -> HashMap<(String, String), i64> {
        let since = now_ms() - fresh.as_millis() as i64;
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::new();
        for proxy in proxies.values().filter(|p| p.last_report_ms >= since) {
            for (direction, service, n) in &proxy.in_flight {
                *out.entry((direction.clone(), service.clone())).or_insert(0) += n;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(service: &str, ok: u64, failed: u64) -> proto::TelemetryReport {
        let mut latency = vec![0; trellis_protocol::LATENCY_BOUNDS.len() + 1];
        latency[6] = ok + failed; // (5 ms, 10 ms]
        proto::TelemetryReport {
            unix_millis: 0,
            series: vec![proto::RequestSeries {
                direction: "inbound".into(),
                service: service.into(),
                route: "inbound".into(),
                responses: vec![
                    proto::ResponseCount { status_class: 2, grpc_status: -1, count: ok },
                    proto::ResponseCount { status_class: 5, grpc_status: -1, count: failed },
                ],
                latency_buckets: latency,
                ..Default::default()
            }],
            in_flight: vec![],
        }
    }

    #[test]
    fn windows_subtract_the_baseline_sample() {
        let store = TelemetryStore::default();
        // 100 req/s, 10% failing, reported every 5 s.
        for i in 0..=12i64 {
            let n = (i * 500) as u64;
            store.record_at("p1", "web.shop", &report("web.shop", n * 9 / 10, n / 10), 1_000_000 + i * 5_000);
        }
        let rows = store.window_at(1_060_000, Duration::from_secs(30));
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.seconds, 30.0);
        assert_eq!(row.delta.requests, 3_000);
        assert_eq!(row.delta.failures, 300);
        let golden = golden::Golden::of(&[row]);
        assert!((golden.rps - 100.0).abs() < 1e-9);
        assert_eq!(golden.success_rate, Some(0.9));
        let p50 = golden.p50_ms.unwrap();
        assert!(p50 > 5.0 && p50 <= 10.0, "p50 inside its bucket: {p50}");
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let store = TelemetryStore::default();
        store.record_at("p1", "web.shop", &report("web.shop", 1000, 0), 0);
        store.record_at("p1", "web.shop", &report("web.shop", 50, 0), 5_000);
        let rows = store.window_at(5_000, Duration::from_secs(5));
        assert_eq!(rows[0].delta.requests, 50);
    }
}
