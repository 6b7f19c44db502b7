//! Span export over OTLP/HTTP (protobuf), the way OpenTelemetry collectors, Jaeger and
//! Tempo receive traces.
//!
//! Requests hand finished spans to a bounded queue and never wait: when the queue is full
//! the span is dropped and counted. A background task sends them in batches (up to
//! [`BATCH`] spans, or whatever arrived within [`FLUSH_EVERY`]) through the proxy's own
//! upstream pools, so collector connections are reused and marked like all proxy traffic.

use crate::body;
use crate::upstream::{Upstreams, Wire};
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use trellis_protocol::otlp;

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go and what they say about their source; compiled with the configuration.
#[derive(Debug, PartialEq)]
pub struct Collector {
    pub addr: SocketAddr,
    pub path: String,
    /// Resource attributes: `service.name`, `service.namespace`, `trellis.proxy`.
    pub resource: Vec<(&'static str, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The inbound proxy: the callee's side.
    Server,
    /// The outbound proxy: the caller's side.
    Client,
}

pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span.
pub struct SpanRecord {
    pub collector: Arc<Collector>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: Option<String>,
}

pub struct SpanExporter {
    queue: mpsc::Sender<SpanRecord>,
    pub dropped: AtomicU64,
    pub exported: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl SpanExporter {
    /// Starts the export task. Must run inside the proxy's runtime.
    pub fn start(upstreams: Arc<Upstreams>) -> SpanExporter {
        let (queue, spans) = mpsc::channel(QUEUE);
        let exported = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        tokio::spawn(export_loop(spans, upstreams, exported.clone(), failed.clone()));
        SpanExporter { queue, dropped: AtomicU64::new(0), exported, failed }
    }

    pub fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn export_loop(
    mut spans: mpsc::Receiver<SpanRecord>,
    upstreams: Arc<Upstreams>,
    exported: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let mut failing = false;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                _ => break,
            }
        }
        // Usually one collector; a reload that changed it splits the batch.
        let mut by_collector: Vec<(Arc<Collector>, Vec<SpanRecord>)> = Vec::new();
        for span in batch {
            match by_collector.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &span.collector) || **c == *span.collector) {
                Some((_, list)) => list.push(span),
                None => by_collector.push((span.collector.clone(), vec![span])),
            }
        }
        for (collector, list) in by_collector {
            let count = list.len() as u64;
            match send(&upstreams, &collector, list).await {
                Ok(()) => {
                    exported.fetch_add(count, Ordering::Relaxed);
                    if failing {
                        tracing::info!(collector = %collector.addr, "span export works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    failed.fetch_add(count, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(collector = %collector.addr, path = %collector.path, error = %e, "span export failed; spans are dropped until the collector answers");
                        failing = true;
                    }
                }
            }
        }
    }
}

async fn send(upstreams: &Upstreams, collector: &Collector, spans: Vec<SpanRecord>) -> Result<(), String> {
    let message = encode(collector, spans);
    let request = http::Request::post(format!("http://{}{}", collector.addr, collector.path))
        .header(http::header::HOST, collector.addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(body::full(message.encode_to_vec()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(
        EXPORT_TIMEOUT,
        upstreams.send(collector.addr, None, Wire::Http1, request, EXPORT_TIMEOUT),
    )
    .await
    .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the body so the connection goes back to the pool.
    body::discard(response.into_body(), 64 * 1024).await;
    if status.is_success() { Ok(()) } else { Err(format!("the collector answered {status}")) }
}

fn key_value(key: &str, value: &Value) -> otlp::KeyValue {
    let value = match value {
        Value::Str(s) => otlp::any_value::Value::StringValue(s.clone()),
        Value::Int(i) => otlp::any_value::Value::IntValue(*i),
    };
    otlp::KeyValue { key: key.to_string(), value: Some(otlp::AnyValue { value: Some(value) }) }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn encode(collector: &Collector, spans: Vec<SpanRecord>) -> otlp::ExportTraceServiceRequest {
    let spans = spans
        .into_iter()
        .map(|span| otlp::Span {
            trace_id: span.trace_id.to_vec(),
            span_id: span.span_id.to_vec(),
            trace_state: String::new(),
            parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: span.name,
            kind: match span.kind {
                SpanKind::Server => otlp::span::SpanKind::Server,
                SpanKind::Client => otlp::span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(span.start),
            end_time_unix_nano: nanos(span.end),
            attributes: span.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
            status: Some(match span.error {
                Some(message) => otlp::Status { message, code: otlp::status::StatusCode::Error as i32 },
                None => otlp::Status { message: String::new(), code: otlp::status::StatusCode::Unset as i32 },
            }),
            // Low byte: the W3C trace flags (sampled). 0x100: whether the parent is remote is
            // known; 0x200: it is (another process made it).
            flags: 1 | 0x100 | if span.parent_span_id.is_some() { 0x200 } else { 0 },
        })
        .collect();
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes: collector.resource.iter().map(|(k, v)| key_value(k, &Value::Str(v.clone()))).collect(),
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "trellis-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}
