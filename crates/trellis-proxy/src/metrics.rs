//! The proxy's Prometheus metrics, served on the admin `/metrics`: the request statistics
//! table ([`RequestStats`], registered as a collector) plus counters of everything else.
//!
//! Labels are bounded: services, route names, backends and reasons come from configuration
//! or fixed lists, never from raw paths or client input.

use crate::telemetry::Telemetry;
use crate::telemetry::stats::RequestStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    service: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    service: String,
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectLabels {
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    direction: &'static str,
    service: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    direction: &'static str,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpBytesLabels {
    direction: &'static str,
    service: String,
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecurityLabels {
    /// mtls, plaintext, plaintext-refused, tls-refused, handshake-failed
    security: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    policy: String,
    rule: String,
    /// allow, deny, audit-deny
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExtAuthzLabels {
    /// allow, deny, cached-allow, cached-deny, error-allow (fail open), error-deny (fail closed)
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabels {
    version: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    retries: Family<RouteLabels, Counter>,
    retry_budget_exhausted: Family<RouteLabels, Counter>,
    mirrors: Family<MirrorLabels, Counter>,
    detections: Family<DetectLabels, Counter>,
    proxy_errors: Family<ErrorLabels, Counter>,
    tcp_connections: Family<TcpLabels, Counter>,
    tcp_bytes: Family<TcpBytesLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    config_info: Family<ConfigLabels, Gauge>,
    inbound_security: Family<SecurityLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    ext_authz: Family<ExtAuthzLabels, Counter>,
    certificate_expiry: Gauge,
    current_version: Mutex<Option<String>>,
}

impl Metrics {
    /// Metrics for one proxy: request statistics come from `stats`, the export queues'
    /// counters from `telemetry`.
    pub fn new(stats: Arc<RequestStats>, telemetry: Arc<Telemetry>) -> Self {
        let mut registry = Registry::with_prefix("trellis");
        registry.register_collector(Box::new(stats));
        registry.register_collector(Box::new(TelemetryCounters(telemetry)));
        let retries = Family::default();
        let retry_budget_exhausted = Family::default();
        let mirrors = Family::default();
        let detections = Family::default();
        let proxy_errors = Family::default();
        let tcp_connections = Family::default();
        let tcp_bytes = Family::default();
        let reloads = Family::default();
        let config_info = Family::default();
        registry.register("retries", "Extra attempts made by the retry element", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        registry.register("mirror_requests", "Copies sent by the mirror element, by outcome", mirrors.clone());
        registry.register(
            "protocol_detections",
            "Accepted connections by detected protocol or detection outcome",
            detections.clone(),
        );
        registry.register("proxy_errors", "Responses the proxy produced itself, by reason", proxy_errors.clone());
        registry.register("tcp_connections", "Opaque TCP connections forwarded", tcp_connections.clone());
        registry.register(
            "tcp_bytes",
            "Bytes forwarded on opaque TCP connections (flow: sent to upstream, received from upstream)",
            tcp_bytes.clone(),
        );
        registry.register("config_reloads", "Configuration reloads by result", reloads.clone());
        registry.register("config_info", "The running configuration version (value 1)", config_info.clone());
        let inbound_security = Family::default();
        let authz = Family::default();
        let ext_authz = Family::default();
        let certificate_expiry = Gauge::default();
        registry.register(
            "inbound_connections",
            "Inbound connections by transport security (mtls, plaintext, or why refused)",
            inbound_security.clone(),
        );
        registry.register(
            "authz_decisions",
            "Authorization decisions on inbound requests and connections, by policy and rule",
            authz.clone(),
        );
        registry.register("ext_authz_checks", "External authorization outcomes, incl. cache hits", ext_authz.clone());
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the workload certificate expires (unix seconds; 0 without one)",
            certificate_expiry.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            retries,
            retry_budget_exhausted,
            mirrors,
            detections,
            proxy_errors,
            tcp_connections,
            tcp_bytes,
            reloads,
            config_info,
            inbound_security,
            authz,
            ext_authz,
            certificate_expiry,
            current_version: Mutex::new(None),
        }
    }

    pub fn retry(&self, service: &str, route: &str) {
        self.retries.get_or_create(&RouteLabels { service: service.into(), route: route.into() }).inc();
    }

    pub fn retry_budget_exhausted(&self, service: &str, route: &str) {
        self.retry_budget_exhausted.get_or_create(&RouteLabels { service: service.into(), route: route.into() }).inc();
    }

    pub fn mirror(&self, service: &str, route: &str, outcome: &'static str) {
        self.mirrors.get_or_create(&MirrorLabels { service: service.into(), route: route.into(), outcome }).inc();
    }

    pub fn detection(&self, direction: &'static str, outcome: &'static str) {
        self.detections.get_or_create(&DetectLabels { direction, outcome }).inc();
    }

    pub fn proxy_error(&self, direction: &'static str, service: &str, reason: &'static str) {
        self.proxy_errors.get_or_create(&ErrorLabels { direction, service: service.to_string(), reason }).inc();
    }

    pub fn tcp_connection(&self, direction: &'static str, service: &str, sent: u64, received: u64) {
        let service = service.to_string();
        self.tcp_connections.get_or_create(&TcpLabels { direction, service: service.clone() }).inc();
        self.tcp_bytes
            .get_or_create(&TcpBytesLabels { direction, service: service.clone(), flow: "sent" })
            .inc_by(sent);
        self.tcp_bytes.get_or_create(&TcpBytesLabels { direction, service, flow: "received" }).inc_by(received);
    }

    pub fn inbound_connection(&self, security: &'static str) {
        self.inbound_security.get_or_create(&SecurityLabels { security }).inc();
    }

    /// The counter of one authorization outcome, to keep and increment without a lookup.
    pub fn authz_counter(&self, policy: &str, rule: &str, decision: &'static str) -> Counter {
        self.authz.get_or_create(&AuthzLabels { policy: policy.into(), rule: rule.into(), decision }).clone()
    }

    pub fn ext_authz(&self, outcome: &'static str) {
        self.ext_authz.get_or_create(&ExtAuthzLabels { outcome }).inc();
    }

    pub fn certificate_expiry(&self, unix: i64) {
        self.certificate_expiry.set(unix);
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadLabels { result: if ok { "applied" } else { "rejected" } }).inc();
    }

    pub fn config_version(&self, version: &str) {
        let mut current = self.current_version.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            self.config_info.remove(&ConfigLabels { version: old });
        }
        self.config_info.get_or_create(&ConfigLabels { version: version.to_string() }).set(1);
        *current = Some(version.to_string());
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
    /// OpenMetrics (promtool, older agents): counters are named with their `_total` suffix
    /// in HELP and TYPE, and there is no `# EOF`.
    pub fn encode_classic(&self) -> String {
        let open = self.encode();
        let mut counters = std::collections::HashSet::new();
        for line in open.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ")
                && let Some((name, "counter")) = rest.split_once(' ')
            {
                counters.insert(name.to_string());
            }
        }
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the access-log, span and tap queues did: dropped lines and spans, export results.
#[derive(Debug)]
struct TelemetryCounters(Arc<Telemetry>);

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Collector for TelemetryCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.0;
        let family = encoder.encode_descriptor(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(t.access_log.dropped.load(Ordering::Relaxed)).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "spans",
            "Spans by export result (exported, failed, dropped)",
            None,
            MetricType::Counter,
        )?;
        for (result, value) in [
            ("exported", t.spans.exported.load(Ordering::Relaxed)),
            ("failed", t.spans.failed.load(Ordering::Relaxed)),
            ("dropped", t.spans.dropped.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&ResultLabels { result })?)?;
        }
        let family = encoder.encode_descriptor(
            "tap_events_missed",
            "Tap events a slow reader missed",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(t.taps.missed.load(Ordering::Relaxed)).encode(family)?;
        Ok(())
    }
}
