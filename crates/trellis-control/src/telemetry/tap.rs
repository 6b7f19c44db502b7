//! Live taps: a watcher (the API's `/v1/tap`) opens a tap with a filter; every proxy stream
//! is told to open it on its proxy, and the events the proxies send back are delivered to
//! the watcher, tagged with the proxy that saw them. Closing the watcher closes the tap
//! everywhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Events a watcher may fall behind by before it misses some.
const QUEUE: usize = 4096;

pub struct TapHub {
    next_id: AtomicU64,
    watchers: Mutex<HashMap<String, mpsc::Sender<serde_json::Value>>>,
    /// The taps open now: id → filter JSON. Proxy streams follow it.
    open: watch::Sender<BTreeMap<String, String>>,
}

impl Default for TapHub {
    fn default() -> Self {
        TapHub { next_id: AtomicU64::new(1), watchers: Mutex::default(), open: watch::channel(BTreeMap::new()).0 }
    }
}

/// An open tap; dropping it closes the tap on every proxy.
pub struct TapSubscription {
    hub: Arc<TapHub>,
    id: String,
    pub events: mpsc::Receiver<serde_json::Value>,
}

impl Drop for TapSubscription {
    fn drop(&mut self) {
        self.hub.watchers.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.hub.open.send_modify(|open| {
            open.remove(&self.id);
        });
    }
}

impl TapHub {
    pub fn open(self: &Arc<Self>, filter_json: String) -> TapSubscription {
        let id = format!("tap-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (sender, events) = mpsc::channel(QUEUE);
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), sender);
        self.open.send_modify(|open| {
            open.insert(id.clone(), filter_json);
        });
        TapSubscription { hub: self.clone(), id, events }
    }

    /// The open taps, for proxy streams to follow.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, String>> {
        self.open.subscribe()
    }

    /// One event from `proxy` for tap `tap_id`; dropped if the watcher is gone or behind.
    pub fn deliver(&self, proxy: &str, tap_id: &str, event_json: &str) {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = watchers.get(tap_id) else { return };
        let Ok(mut event) = serde_json::from_str::<serde_json::Value>(event_json) else { return };
        if let Some(object) = event.as_object_mut() {
            object.insert("proxy".into(), serde_json::Value::String(proxy.to_string()));
        }
        let _ = sender.try_send(event);
    }
}
