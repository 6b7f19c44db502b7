//! The proxy's side of telemetry aggregation: what it tells the control plane over the push
//! stream.
//!
//! - [`Reporter`] turns the statistics table into a `TelemetryReport` every heartbeat,
//!   carrying only the series that changed since the last report on this stream (the
//!   counters are cumulative, so a lost report loses nothing).
//! - [`RemoteTaps`] opens and closes taps as the control plane asks and forwards their
//!   events in batches.

use super::Telemetry;
use super::stats::StatsKey;
use super::tap::{TapFilter, TapGuard};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use trellis_protocol::v1 as proto;

/// Per-stream memory of what was reported.
#[derive(Default)]
pub struct Reporter {
    /// Series → (requests, response bytes) when last reported.
    sent: HashMap<StatsKey, (u64, u64)>,
}

impl Reporter {
    /// The series that changed since the last report, with their cumulative counters.
    pub fn report(&mut self, telemetry: &Telemetry) -> proto::TelemetryReport {
        let unix_millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut series = Vec::new();
        for (key, counts) in telemetry.stats.snapshot() {
            let mark = (counts.total(), counts.response_bytes);
            if self.sent.get(&key) == Some(&mark) {
                continue;
            }
            self.sent.insert(key.clone(), mark);
            series.push(proto::RequestSeries {
                direction: key.direction.to_string(),
                service: key.service.to_string(),
                route: key.route.to_string(),
                upstream: key.upstream.to_string(),
                source_identity: key.source_identity.to_string(),
                destination_identity: key.destination_identity.to_string(),
                responses: counts
                    .responses
                    .iter()
                    .map(|r| proto::ResponseCount {
                        status_class: r.class as u32 + 1,
                        grpc_status: r.grpc_status.map_or(-1, i32::from),
                        count: r.count,
                    })
                    .collect(),
                latency_buckets: counts.latency.clone(),
                latency_sum_seconds: counts.latency_sum_seconds,
                request_bytes: counts.request_bytes,
                response_bytes: counts.response_bytes,
            });
        }
        let in_flight: Vec<proto::InFlight> = telemetry
            .stats
            .in_flight()
            .into_iter()
            .filter(|(_, _, n)| *n != 0)
            .map(|(direction, service, requests)| proto::InFlight {
                direction: direction.to_string(),
                service: service.to_string(),
                requests,
            })
            .collect();
        // Sent even when nothing changed: the time tells the control plane the counters
        // still stand, so rates fall to zero rather than freezing.
        proto::TelemetryReport { unix_millis, series, in_flight }
    }
}

/// Taps the control plane opened on this proxy, for the life of one stream.
pub struct RemoteTaps {
    open: HashMap<String, (TapGuard, tokio::task::JoinHandle<()>)>,
    /// Where forwarded events go (the stream's outgoing queue).
    out: mpsc::Sender<proto::ProxyMessage>,
}

/// Most events forwarded per message.
const BATCH: usize = 256;

impl RemoteTaps {
    pub fn new(out: mpsc::Sender<proto::ProxyMessage>) -> Self {
        RemoteTaps { open: HashMap::new(), out }
    }

    pub fn apply(&mut self, telemetry: &Arc<Telemetry>, control: proto::TapControl) {
        for id in control.close {
            if let Some((_guard, task)) = self.open.remove(&id) {
                task.abort();
            }
        }
        for open in control.open {
            let filter: TapFilter = match serde_json::from_str(&open.filter_json) {
                Ok(filter) => filter,
                Err(e) => {
                    tracing::warn!(tap = %open.id, error = %e, "ignoring a tap with an unreadable filter");
                    continue;
                }
            };
            let (guard, mut events) = telemetry.taps.open(filter, 4096);
            let (out, id) = (self.out.clone(), open.id.clone());
            let task = tokio::spawn(async move {
                while let Some(first) = events.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match events.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => break,
                        }
                    }
                    let events = batch
                        .iter()
                        .filter_map(|e| serde_json::to_string(e).ok())
                        .map(|event_json| proto::TapEvent { tap_id: id.clone(), event_json })
                        .collect();
                    let message = proto::ProxyMessage {
                        kind: Some(proto::proxy_message::Kind::TapEvents(proto::TapEvents { events })),
                    };
                    if out.send(message).await.is_err() {
                        return;
                    }
                }
            });
            tracing::debug!(tap = %open.id, "tap opened by the control plane");
            self.open.insert(open.id, (guard, task));
        }
    }
}

impl Drop for RemoteTaps {
    fn drop(&mut self) {
        for (_, (_guard, task)) in self.open.drain() {
            task.abort();
        }
    }
}
