//! The request statistics table: one cell of counters per (direction, service, route,
//! upstream, source identity, destination identity).
//!
//! It is the single record of what requests did. `/metrics` encodes it (a Prometheus
//! collector, so there is no second copy), and the control-plane reports read it for
//! `trellis stat`, `top`, `edges` and the dashboard. A request costs one map lookup and a
//! few relaxed atomic increments. Every label comes from configuration or a verified
//! certificate, never from the request line, so the number of cells stays bounded.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use trellis_protocol::LATENCY_BOUNDS;

/// Status classes 1xx..5xx, indexed 0..5.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index 0 is "not gRPC"; 1 + code for gRPC codes 0..=16.
const GRPC_SLOTS: usize = 18;
const GRPC_LABELS: [&str; GRPC_SLOTS] =
    ["", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// Which requests a cell counts. Cloning is cheap: the strings are shared.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct StatsKey {
    pub direction: &'static str,
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// `service` or `service/subset` that answered; empty when the proxy answered itself.
    pub upstream: Arc<str>,
    /// SPIFFE ID of the caller; empty for plaintext callers.
    pub source_identity: Arc<str>,
    /// SPIFFE ID of the callee (proved by its certificate); empty without mTLS.
    pub destination_identity: Arc<str>,
}

/// The counters of one key.
#[derive(Default)]
pub struct Cell {
    /// Responses by status class and gRPC status.
    responses: [[AtomicU64; GRPC_SLOTS]; 5],
    /// Latency to response headers; not cumulative: slot i counts (bound[i-1], bound[i]], the
    /// last slot is +Inf.
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_micros: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

/// What one finished request adds to its cell.
pub struct Outcome {
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub latency: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// Whether a response counts as a failure in success rates (see [`trellis_protocol::is_failure`]).
pub fn is_failure(status: u16, grpc_status: Option<u16>) -> bool {
    trellis_protocol::is_failure(if status >= 500 { 5 } else { 1 }, grpc_status)
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn latency_slot(seconds: f64) -> usize {
    LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BOUNDS.len())
}

impl Cell {
    pub fn record(&self, outcome: &Outcome) {
        let grpc = outcome.grpc_status.map_or(0, |code| 1 + code.min(16) as usize);
        self.responses[class_index(outcome.status)][grpc].fetch_add(1, Ordering::Relaxed);
        self.latency[latency_slot(outcome.latency.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(outcome.latency.as_micros() as u64, Ordering::Relaxed);
        self.request_bytes.fetch_add(outcome.request_bytes, Ordering::Relaxed);
        self.response_bytes.fetch_add(outcome.response_bytes, Ordering::Relaxed);
    }

    /// The cell's counters as plain numbers.
    pub fn read(&self) -> CellCounts {
        let mut counts = CellCounts::default();
        for (class, row) in self.responses.iter().enumerate() {
            for (slot, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let grpc_status = (slot > 0).then(|| slot as u16 - 1);
                counts.responses.push(ResponseCount { class: class as u8, grpc_status, count: n });
            }
        }
        counts.latency = self.latency.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        counts.latency_sum_seconds = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        counts.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        counts.response_bytes = self.response_bytes.load(Ordering::Relaxed);
        counts
    }
}

/// A snapshot of one cell.
#[derive(Clone, Debug, Default)]
pub struct CellCounts {
    pub responses: Vec<ResponseCount>,
    /// Per latency slot (see [`LATENCY_BOUNDS`]; the last is +Inf), not cumulative.
    pub latency: Vec<u64>,
    pub latency_sum_seconds: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct ResponseCount {
    /// 0..5 for 1xx..5xx.
    pub class: u8,
    pub grpc_status: Option<u16>,
    pub count: u64,
}

impl CellCounts {
    pub fn total(&self) -> u64 {
        self.responses.iter().map(|r| r.count).sum()
    }
}

/// (direction, service) of an in-flight gauge.
type GaugeKey = (&'static str, Arc<str>);

/// Requests in flight per (direction, service): the saturation signal for autoscalers.
#[derive(Default)]
struct InFlight {
    gauges: RwLock<HashMap<GaugeKey, Arc<AtomicI64>>>,
}

/// Decrements its in-flight gauge when dropped (when the response has been sent).
pub struct InFlightGuard(Arc<AtomicI64>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one connection's requests were last counted in. Consecutive requests on a connection
/// almost always share their labels, and the labels are shared strings from the
/// configuration, so comparing their pointers replaces hashing them.
#[derive(Default)]
pub struct ConnectionStats {
    cell: Mutex<Option<(StatsKey, Arc<Cell>)>>,
    gauge: Mutex<Option<(GaugeKey, Arc<AtomicI64>)>>,
}

fn same_labels(a: &StatsKey, b: &StatsKey) -> bool {
    a.direction == b.direction
        && Arc::ptr_eq(&a.service, &b.service)
        && Arc::ptr_eq(&a.route, &b.route)
        && Arc::ptr_eq(&a.upstream, &b.upstream)
        && Arc::ptr_eq(&a.source_identity, &b.source_identity)
        && Arc::ptr_eq(&a.destination_identity, &b.destination_identity)
}

impl ConnectionStats {
    pub fn record(&self, stats: &RequestStats, key: &StatsKey, outcome: &Outcome) {
        let mut last = self.cell.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((cached, cell)) if same_labels(cached, key) => cell.record(outcome),
            _ => {
                let cell = stats.cell(key);
                cell.record(outcome);
                *last = Some((key.clone(), cell));
            }
        }
    }

    /// Counts a request in flight to or from `service` until the guard drops.
    pub fn start(&self, stats: &RequestStats, direction: &'static str, service: &Arc<str>) -> InFlightGuard {
        let mut last = self.gauge.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = match &*last {
            Some(((d, s), gauge)) if *d == direction && Arc::ptr_eq(s, service) => gauge.clone(),
            _ => {
                let gauge = stats.gauge(direction, service);
                *last = Some(((direction, service.clone()), gauge.clone()));
                gauge
            }
        };
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(gauge)
    }
}

/// The table of every cell, shared by the request path, `/metrics` and the reporter.
#[derive(Default)]
pub struct RequestStats {
    cells: RwLock<HashMap<StatsKey, Arc<Cell>>>,
    in_flight: InFlight,
}

impl std::fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestStats")
    }
}

impl RequestStats {
    pub fn cell(&self, key: &StatsKey) -> Arc<Cell> {
        if let Some(cell) = self.cells.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return cell.clone();
        }
        let mut cells = self.cells.write().unwrap_or_else(|e| e.into_inner());
        cells.entry(key.clone()).or_default().clone()
    }

    fn gauge(&self, direction: &'static str, service: &Arc<str>) -> Arc<AtomicI64> {
        let key = (direction, service.clone());
        let found = self.in_flight.gauges.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        match found {
            Some(gauge) => gauge,
            None => self.in_flight.gauges.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone(),
        }
    }

    /// Every cell's key and counts, in no particular order.
    pub fn snapshot(&self) -> Vec<(StatsKey, CellCounts)> {
        let cells = self.cells.read().unwrap_or_else(|e| e.into_inner());
        cells.iter().map(|(key, cell)| (key.clone(), cell.read())).collect()
    }

    /// Requests in flight now, per (direction, service).
    pub fn in_flight(&self) -> Vec<(&'static str, Arc<str>, i64)> {
        let gauges = self.in_flight.gauges.read().unwrap_or_else(|e| e.into_inner());
        gauges.iter().map(|((d, s), g)| (*d, s.clone(), g.load(Ordering::Relaxed))).collect()
    }
}

/// The labels every request series has, in exposition order.
fn base_labels(key: &StatsKey) -> [(&'static str, &str); 6] {
    [
        ("direction", key.direction),
        ("service", &key.service),
        ("route", &key.route),
        ("upstream", &key.upstream),
        ("source_identity", &key.source_identity),
        ("destination_identity", &key.destination_identity),
    ]
}

impl Collector for RequestStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut snapshot = self.snapshot();
        // Stable output order, so consecutive scrapes diff cleanly.
        snapshot.sort_by(|a, b| {
            (a.0.direction, &a.0.service, &a.0.route, &a.0.upstream, &a.0.source_identity, &a.0.destination_identity)
                .cmp(&(
                    b.0.direction,
                    &b.0.service,
                    &b.0.route,
                    &b.0.upstream,
                    &b.0.source_identity,
                    &b.0.destination_identity,
                ))
        });

        let mut family = encoder.encode_descriptor(
            "requests",
            "HTTP requests handled, by status class and gRPC status",
            None,
            MetricType::Counter,
        )?;
        for (key, counts) in &snapshot {
            for response in &counts.responses {
                let grpc = response.grpc_status.map_or(0, |c| 1 + c as usize);
                let extra =
                    [("status_class", STATUS_CLASSES[response.class as usize]), ("grpc_status", GRPC_LABELS[grpc])];
                let labels = (base_labels(key), extra);
                ConstCounter::new(response.count).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time from request to response headers",
            None,
            MetricType::Histogram,
        )?;
        for (key, counts) in &snapshot {
            // The encoder accumulates bucket counts itself: pass them per bucket.
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(counts.latency.iter().copied())
                .collect();
            family.encode_family(&base_labels(key))?.encode_histogram::<NoLabelSet>(
                counts.latency_sum_seconds,
                counts.latency.iter().sum(),
                &buckets,
                None,
            )?;
        }

        for (name, help, pick) in [
            (
                "request_bytes",
                "Request body bytes received from clients",
                (|c: &CellCounts| c.request_bytes) as fn(&CellCounts) -> u64,
            ),
            ("response_bytes", "Response body bytes sent to clients", |c: &CellCounts| c.response_bytes),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, counts) in &snapshot {
                ConstCounter::new(pick(counts)).encode(family.encode_family(&base_labels(key))?)?;
            }
        }

        let mut in_flight = self.in_flight();
        in_flight.sort();
        let mut family = encoder.encode_descriptor(
            "requests_in_flight",
            "Requests started and not yet answered in full, per direction and service",
            None,
            MetricType::Gauge,
        )?;
        for (direction, service, value) in &in_flight {
            ConstGauge::new(*value)
                .encode(family.encode_family(&[("direction", *direction), ("service", &**service)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(route: &str) -> StatsKey {
        StatsKey {
            direction: "outbound",
            service: "reviews.shop".into(),
            route: route.into(),
            upstream: "reviews.shop/v2".into(),
            source_identity: "spiffe://td/ns/shop/sa/web".into(),
            destination_identity: "".into(),
        }
    }

    #[test]
    fn counts_by_class_grpc_status_and_latency_slot() {
        let stats = RequestStats::default();
        let ok = Outcome {
            status: 200,
            grpc_status: None,
            latency: Duration::from_micros(700),
            request_bytes: 10,
            response_bytes: 100,
        };
        stats.cell(&key("r")).record(&ok);
        stats.cell(&key("r")).record(&ok);
        stats.cell(&key("r")).record(&Outcome {
            status: 200,
            grpc_status: Some(14),
            latency: Duration::from_secs(20),
            ..ok
        });
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.len(), 1);
        let counts = &snapshot[0].1;
        assert_eq!(counts.total(), 3);
        assert_eq!(counts.latency[latency_slot(0.0007)], 2);
        assert_eq!(latency_slot(0.0007), 3, "0.7 ms falls in (0.5 ms, 1 ms]");
        assert_eq!(counts.latency[LATENCY_BOUNDS.len()], 1, "20 s goes to +Inf");
        assert_eq!(counts.response_bytes, 300);
        assert!(is_failure(200, Some(14)));
        assert!(!is_failure(404, None));
        assert!(!is_failure(200, Some(5)), "NOT_FOUND is the caller's problem");
    }

    #[test]
    fn exposition_is_cumulative_and_labelled() {
        let stats = RequestStats::default();
        let ok = Outcome {
            status: 503,
            grpc_status: None,
            latency: Duration::from_millis(3),
            request_bytes: 0,
            response_bytes: 5,
        };
        stats.cell(&key("r")).record(&ok);
        let _guard = ConnectionStats::default().start(&stats, "inbound", &Arc::from("reviews"));
        let mut registry = prometheus_client::registry::Registry::with_prefix("trellis");
        registry.register_collector(Box::new(std::sync::Arc::new(stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"trellis_requests_total{direction="outbound",service="reviews.shop",route="r",upstream="reviews.shop/v2",source_identity="spiffe://td/ns/shop/sa/web",destination_identity="",status_class="5xx",grpc_status=""} 1"#), "{text}");
        let bucket = |le: &str| {
            let prefix = format!("trellis_request_duration_seconds_bucket{{le=\"{le}\",");
            text.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.rsplit(' ').next()).map(str::to_string)
        };
        assert_eq!(bucket("0.0025").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("0.005").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("+Inf").as_deref(), Some("1"), "{text}");
        assert!(text.contains(r#"trellis_requests_in_flight{direction="inbound",service="reviews"} 1"#), "{text}");
    }
}
