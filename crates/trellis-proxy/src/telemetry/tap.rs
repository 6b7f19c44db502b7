//! Live taps: requests as they finish, streamed to whoever asked (`trellis tap`, the
//! dashboard, or a local `GET /tap` on the admin listener).
//!
//! With no tap open the request path pays one atomic load. Each subscriber has a bounded
//! queue; a subscriber that reads too slowly misses events (they are counted) rather than
//! slowing requests down.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// One finished request, as a tap shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TapEvent {
    pub time: String,
    pub direction: String,
    pub service: String,
    pub route: String,
    pub upstream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// To response headers.
    pub latency_ms: f64,
    /// To the end of the response body.
    pub duration_ms: f64,
    pub source_identity: String,
    pub destination_identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The proxy that saw it (filled in by the control plane).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy: String,
}

/// Which requests a tap wants; every field set must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapFilter {
    /// `NAME.NAMESPACE` or `NAME`: the service called (outbound) or serving (inbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Only responses with at least this status (e.g. 500 for server errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_status: Option<u16>,
    /// Source or destination SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl TapFilter {
    pub fn matches(&self, e: &TapEvent) -> bool {
        let service_ok = self
            .service
            .as_deref()
            .is_none_or(|s| e.service == s || e.service.split_once('.').is_some_and(|(name, _)| name == s));
        service_ok
            && self.direction.as_deref().is_none_or(|d| e.direction == d)
            && self.route.as_deref().is_none_or(|r| e.route == r)
            && self.method.as_deref().is_none_or(|m| e.method.eq_ignore_ascii_case(m))
            && self.path_prefix.as_deref().is_none_or(|p| e.path.starts_with(p))
            && self.min_status.is_none_or(|s| e.status >= s)
            && self.identity.as_deref().is_none_or(|i| e.source_identity == i || e.destination_identity == i)
    }
}

struct Subscriber {
    id: u64,
    filter: TapFilter,
    events: mpsc::Sender<TapEvent>,
}

#[derive(Default)]
pub struct Taps {
    open: AtomicUsize,
    next_id: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
    pub missed: AtomicU64,
}

/// Closes its tap when dropped.
pub struct TapGuard {
    taps: std::sync::Arc<Taps>,
    id: u64,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.taps.close(self.id);
    }
}

impl Taps {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// Opens a tap; events arrive on the receiver until the guard drops.
    pub fn open(self: &std::sync::Arc<Self>, filter: TapFilter, queue: usize) -> (TapGuard, mpsc::Receiver<TapEvent>) {
        let (events, receiver) = mpsc::channel(queue.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.push(Subscriber { id, filter, events });
        self.open.store(subscribers.len(), Ordering::Relaxed);
        (TapGuard { taps: self.clone(), id }, receiver)
    }

    fn close(&self, id: u64) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|s| s.id != id);
        self.open.store(subscribers.len(), Ordering::Relaxed);
    }

    pub fn publish(&self, event: &TapEvent) {
        let subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for subscriber in subscribers.iter().filter(|s| s.filter.matches(event)) {
            if subscriber.events.try_send(event.clone()).is_err() {
                self.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
