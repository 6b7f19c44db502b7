//! What the proxy records about the requests it carries: statistics ([`stats`], behind
//! `/metrics` and the control plane's reports), access logs ([`access_log`]), spans
//! ([`trace_context`] for propagation, [`otlp`] for export) and live taps ([`tap`]).
//!
//! A request is observed from its headers to the end of its response body: [`Observation`]
//! starts when the request arrives (trace context, request body counting) and, once the
//! response headers are known, wraps the response body so that everything is recorded when
//! the body ends or is dropped — bytes, gRPC status from the trailers, full duration.
//! Which of logs and traces are on comes from the namespace's `kind: Telemetry` (compiled
//! into [`TelemetryConfig`] with each configuration); the hub itself ([`Telemetry`]) lives
//! across reloads.

pub mod access_log;
pub mod otlp;
pub mod report;
pub mod stats;
pub mod tap;
pub mod trace_context;

use crate::body::{self, Body};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use trellis_api::{ProxySettings, Resource};

/// The recorders, shared by every configuration version.
pub struct Telemetry {
    pub stats: Arc<stats::RequestStats>,
    /// Opened at start where the `kind: Proxy` settings say (stdout by default); written to
    /// only while the configuration turns access logs on.
    pub access_log: access_log::AccessLog,
    pub spans: otlp::SpanExporter,
    pub taps: Arc<tap::Taps>,
}

/// Access logs and tracing as the current configuration sets them.
#[derive(Debug, Default, PartialEq)]
pub struct TelemetryConfig {
    pub request_metrics: bool,
    pub access_log: Option<AccessLogChoice>,
    pub tracing: Option<Tracing>,
}

#[derive(Debug, PartialEq)]
pub struct AccessLogChoice {
    pub errors_only: bool,
}

#[derive(Debug, PartialEq)]
pub struct Tracing {
    pub collector: Arc<otlp::Collector>,
    /// Probability that a new trace is recorded, 0..=1.
    pub sampling: f64,
}

impl TelemetryConfig {
    /// The `kind: Telemetry` of the workload's namespace (`default` in static mode) decides;
    /// without one, the proxy's `accessLog` setting turns logs on and nothing is traced.
    pub fn compile<'a>(documents: impl IntoIterator<Item = &'a Resource>, settings: &ProxySettings) -> TelemetryConfig {
        let namespace = settings.workload.as_ref().map_or("default", |w| w.namespace.as_str());
        let doc = documents.into_iter().find_map(|d| match d {
            Resource::Telemetry(t) if t.namespace == namespace => Some(t),
            _ => None,
        });
        let from_settings = settings.access_log.is_some().then_some(AccessLogChoice { errors_only: false });
        let access_log = match doc.and_then(|t| t.access_log.as_ref()) {
            Some(choice) if choice.enabled => Some(AccessLogChoice { errors_only: choice.errors_only }),
            Some(_) => None,
            None => from_settings,
        };
        let tracing = doc.and_then(|t| t.tracing.as_ref()).map(|t| {
            let (addr, path) = t.endpoint.parts();
            let service = settings
                .workload
                .as_ref()
                .map(|w| w.service.0.clone())
                .or_else(|| settings.name.clone())
                .unwrap_or_else(|| "trellis-proxy".into());
            let mut resource = vec![("service.name", service), ("service.namespace", namespace.to_string())];
            if let Some(name) = &settings.name {
                resource.push(("trellis.proxy", name.clone()));
            }
            Tracing {
                collector: Arc::new(otlp::Collector { addr, path: path.to_string(), resource }),
                sampling: t.sampling_percent.0 / 100.0,
            }
        });
        TelemetryConfig { request_metrics: settings.request_metrics, access_log, tracing }
    }
}

/// This proxy's span for one request.
struct SpanContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
}

/// The request as logs, spans and taps describe it; only captured when one of them wants it.
struct RequestFacts {
    method: http::Method,
    /// Cheap to keep: both share the request's buffers.
    uri: http::Uri,
    host: Option<http::HeaderValue>,
    version: http::Version,
    start: SystemTime,
}

impl RequestFacts {
    fn authority(&self) -> &str {
        match self.uri.authority() {
            Some(authority) => authority.as_str(),
            None => self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
        }
    }

    fn path(&self) -> &str {
        self.uri.path()
    }
}

/// A request being observed, from its arrival to the end of its response.
pub struct Observation {
    started: Instant,
    span: Option<SpanContext>,
    /// The caller's trace id when this proxy does not trace (for the access log).
    trace_id: Option<[u8; 16]>,
    facts: Option<RequestFacts>,
    request_bytes: Option<Arc<AtomicU64>>,
    grpc: bool,
    /// Whether the statistics table counts this request.
    metrics: bool,
}

/// The labels of a finished request, known once the response headers are.
pub struct Outcome {
    /// Direction, service, route, upstream and identities: the statistics' labels.
    pub labels: stats::StatsKey,
    pub endpoint: Option<SocketAddr>,
    /// The client's address (the downstream peer of this proxy).
    pub client: SocketAddr,
    pub error: Option<&'static str>,
    pub attempts: u32,
    pub in_flight: Option<stats::InFlightGuard>,
    /// The connection's cache of where its requests are counted.
    pub connection: Arc<stats::ConnectionStats>,
}

impl Observation {
    /// Starts observing `request`: reads (and for the next hop, rewrites) its trace
    /// context and counts its body. `None` when nothing is recorded at all (statistics,
    /// logs and tracing off, no tap open).
    pub fn begin(request: &mut Request<Body>, config: &TelemetryConfig, telemetry: &Telemetry) -> Option<Observation> {
        let tapped = telemetry.taps.is_open();
        if !config.request_metrics && config.access_log.is_none() && config.tracing.is_none() && !tapped {
            return None;
        }
        let started = Instant::now();
        let grpc = crate::chain::is_grpc_request(request);
        let mut span = None;
        let mut trace_id = None;
        match &config.tracing {
            Some(tracing) => span = Some(begin_span(request.headers_mut(), tracing.sampling)),
            None if config.access_log.is_some() => {
                trace_id = trace_context::extract(request.headers()).map(|c| c.trace_id);
            }
            None => {}
        }
        let wants_facts = config.access_log.is_some() || tapped || span.as_ref().is_some_and(|s| s.sampled);
        let facts = wants_facts.then(|| RequestFacts {
            method: request.method().clone(),
            uri: request.uri().clone(),
            host: request.headers().get(http::header::HOST).cloned(),
            version: request.version(),
            start: SystemTime::now(),
        });
        // Most requests (GET, HEAD) end with their headers: nothing to count.
        let request_bytes = (!request.body().is_end_stream()).then(|| {
            let counter = Arc::new(AtomicU64::new(0));
            let body = std::mem::replace(request.body_mut(), body::empty());
            *request.body_mut() = body::boxed(Counted { inner: body, bytes: counter.clone() });
            counter
        });
        Some(Observation { started, span, trace_id, facts, request_bytes, grpc, metrics: config.request_metrics })
    }

    fn request_bytes(&self) -> u64 {
        self.request_bytes.as_ref().map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Wraps the response so the request is recorded when its body ends.
    pub fn finish(
        self,
        response: Response<Body>,
        outcome: Outcome,
        config: &TelemetryConfig,
        telemetry: &Arc<Telemetry>,
    ) -> Response<Body> {
        let latency = self.started.elapsed();
        let grpc_status = self.grpc.then(|| grpc_status_of(response.headers())).flatten();
        let status = response.status().as_u16();
        let record = Record {
            observation: self,
            outcome,
            status,
            latency,
            grpc_status,
            access_log: config.access_log.as_ref().map(|c| c.errors_only),
            collector: config.tracing.as_ref().map(|t| t.collector.clone()),
            telemetry: telemetry.clone(),
        };
        let (parts, inner) = response.into_parts();
        let observed = Observed { inner, bytes: 0, grpc_status, ended: false, record: Some(record) };
        Response::from_parts(parts, body::boxed(observed))
    }
}

/// Reads the caller's context, decides sampling, and writes this proxy's span as the parent
/// for the next hop.
fn begin_span(headers: &mut HeaderMap, sampling: f64) -> SpanContext {
    let incoming = trace_context::extract(headers);
    let span_id = trace_context::new_span_id();
    let (trace_id, parent, sampled, b3) = match &incoming {
        Some(c) => (c.trace_id, Some(c.parent_span_id), c.sampled, c.b3),
        None => (trace_context::new_trace_id(), None, rand::random::<f64>() < sampling, trace_context::B3Form::None),
    };
    trace_context::inject(headers, &trace_id, &span_id, parent.as_ref(), sampled, b3);
    SpanContext { trace_id, span_id, parent, sampled }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn grpc_status_of(headers: &HeaderMap) -> Option<u16> {
    headers.get(GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Counts the bytes of a request body as they pass.
struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records its request when it ends or is dropped.
struct Observed {
    inner: Body,
    bytes: u64,
    grpc_status: Option<u16>,
    ended: bool,
    record: Option<Record>,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_status_of(trailers)
                {
                    self.grpc_status = Some(code);
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        if self.inner.is_end_stream() {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let ended = self.ended || self.inner.is_end_stream();
            record.complete(self.bytes, self.grpc_status, ended);
        }
    }
}

/// Everything needed to record one request once its response is over.
struct Record {
    observation: Observation,
    outcome: Outcome,
    status: u16,
    latency: std::time::Duration,
    grpc_status: Option<u16>,
    /// `Some(errors_only)` when access logs are on.
    access_log: Option<bool>,
    collector: Option<Arc<otlp::Collector>>,
    telemetry: Arc<Telemetry>,
}

impl Record {
    fn complete(self, response_bytes: u64, trailer_status: Option<u16>, ended: bool) {
        let Record { observation, outcome, status, latency, grpc_status, access_log, collector, telemetry } = self;
        let duration = observation.started.elapsed();
        // gRPC without a status: cut off by the client (CANCELLED) or ended without one (UNKNOWN).
        let grpc_status = match (observation.grpc, trailer_status.or(grpc_status)) {
            (false, _) => None,
            (true, Some(code)) => Some(code),
            (true, None) if !ended => Some(1),
            (true, None) => Some(2),
        };
        let failed = stats::is_failure(status, grpc_status) || outcome.error.is_some();
        if observation.metrics {
            outcome.connection.record(
                &telemetry.stats,
                &outcome.labels,
                &stats::Outcome {
                    status,
                    grpc_status,
                    latency,
                    request_bytes: observation.request_bytes(),
                    response_bytes,
                },
            );
        }
        drop(outcome.in_flight);
        let Some(facts) = &observation.facts else { return };
        let trace_id = observation.span.as_ref().map(|s| s.trace_id).or(observation.trace_id);
        if let Some(errors_only) = access_log
            && (!errors_only || failed)
        {
            telemetry.access_log.record(&access_log::Entry {
                time: facts.start,
                trace_id: trace_id.as_ref(),
                span_id: observation.span.as_ref().filter(|s| s.sampled).map(|s| &s.span_id),
                direction: outcome.labels.direction,
                service: &outcome.labels.service,
                route: &outcome.labels.route,
                upstream: &outcome.labels.upstream,
                endpoint: outcome.endpoint,
                client: outcome.client,
                source_identity: &outcome.labels.source_identity,
                destination_identity: &outcome.labels.destination_identity,
                method: facts.method.as_str(),
                authority: facts.authority(),
                path: facts.path(),
                protocol: protocol_name(facts.version),
                status,
                grpc_status,
                latency,
                duration,
                request_bytes: observation.request_bytes(),
                response_bytes,
                attempts: outcome.attempts,
                error: outcome.error,
            });
        }
        if let (Some(span), Some(collector)) = (&observation.span, collector)
            && span.sampled
        {
            let mut attributes = vec![
                ("http.request.method", otlp::Value::Str(facts.method.to_string())),
                ("url.path", otlp::Value::Str(facts.path().to_string())),
                ("server.address", otlp::Value::Str(facts.authority().to_string())),
                ("http.response.status_code", otlp::Value::Int(status as i64)),
                ("network.protocol.name", otlp::Value::Str(protocol_name(facts.version).into())),
                ("trellis.direction", otlp::Value::Str(outcome.labels.direction.into())),
                ("trellis.service", otlp::Value::Str(outcome.labels.service.to_string())),
                ("trellis.route", otlp::Value::Str(outcome.labels.route.to_string())),
                ("trellis.upstream", otlp::Value::Str(outcome.labels.upstream.to_string())),
                ("trellis.source_identity", otlp::Value::Str(outcome.labels.source_identity.to_string())),
                ("trellis.destination_identity", otlp::Value::Str(outcome.labels.destination_identity.to_string())),
                ("trellis.attempts", otlp::Value::Int(outcome.attempts as i64)),
                ("http.request.body.size", otlp::Value::Int(observation.request_bytes() as i64)),
                ("http.response.body.size", otlp::Value::Int(response_bytes as i64)),
            ];
            if let Some(endpoint) = outcome.endpoint {
                attributes.push(("network.peer.address", otlp::Value::Str(endpoint.ip().to_string())));
                attributes.push(("network.peer.port", otlp::Value::Int(endpoint.port() as i64)));
            }
            if let Some(code) = grpc_status {
                attributes.push(("rpc.grpc.status_code", otlp::Value::Int(code as i64)));
            }
            if let Some(reason) = outcome.error {
                attributes.push(("trellis.error", otlp::Value::Str(reason.into())));
            }
            let kind =
                if outcome.labels.direction == "inbound" { otlp::SpanKind::Server } else { otlp::SpanKind::Client };
            telemetry.spans.submit(otlp::SpanRecord {
                collector,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: span.parent,
                name: format!("{} {}", facts.method, outcome.labels.service),
                kind,
                start: facts.start,
                end: facts.start + duration,
                attributes,
                error: failed.then(|| outcome.error.map_or_else(|| format!("status {status}"), str::to_string)),
            });
        }
        if telemetry.taps.is_open() {
            telemetry.taps.publish(&tap::TapEvent {
                time: access_log::rfc3339(facts.start),
                direction: outcome.labels.direction.into(),
                service: outcome.labels.service.to_string(),
                route: outcome.labels.route.to_string(),
                upstream: outcome.labels.upstream.to_string(),
                endpoint: outcome.endpoint.map(|e| e.to_string()),
                method: facts.method.to_string(),
                authority: facts.authority().to_string(),
                path: facts.path().to_string(),
                status,
                grpc_status,
                latency_ms: latency.as_secs_f64() * 1000.0,
                duration_ms: duration.as_secs_f64() * 1000.0,
                source_identity: outcome.labels.source_identity.to_string(),
                destination_identity: outcome.labels.destination_identity.to_string(),
                error: outcome.error.map(str::to_string),
                trace_id: trace_id.map(|t| trace_context::hex(&t)),
                proxy: String::new(),
            });
        }
    }
}

fn protocol_name(version: http::Version) -> &'static str {
    if version == http::Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" }
}
