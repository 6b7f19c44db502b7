//! Access logs: one JSON line per request, written off the request path.
//!
//! Lines go through a bounded queue to a writer task, so a slow disk never delays
//! requests; if the queue is full the line is dropped and counted instead.
//!
//! The fields are documented in `docs/observability.md`.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const QUEUE: usize = 8192;

/// One line. Identities are SPIFFE IDs (empty for plaintext); `latency_ms` runs to the
/// response headers, `duration_ms` to the end of the response body.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    pub direction: &'a str,
    pub service: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub endpoint: Option<String>,
    pub source_identity: &'a str,
    pub destination_identity: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    pub latency_ms: f64,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub attempts: u32,
    pub retries: u32,
    pub error: Option<&'a str>,
}

pub struct AccessLog {
    queue: mpsc::Sender<String>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Starts a writer for `target`: `stdout`, `stderr`, or a file path (appended to).
    pub async fn open(target: &str) -> anyhow::Result<AccessLog> {
        let mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match target {
            "stdout" => Box::new(tokio::io::stdout()),
            "stderr" => Box::new(tokio::io::stderr()),
            path => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot open access log {path}: {e}"))?,
            ),
        };
        let (queue, mut lines) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let mut batch = line;
                // Write whatever else is already queued in the same call.
                while let Ok(more) = lines.try_recv() {
                    batch.push_str(&more);
                    if batch.len() > 64 * 1024 {
                        break;
                    }
                }
                if writer.write_all(batch.as_bytes()).await.is_err() || writer.flush().await.is_err() {
                    tracing::warn!("access log write failed");
                }
            }
        });
        Ok(AccessLog { queue, dropped: AtomicU64::new(0) })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Ok(mut line) = serde_json::to_string(entry) else { return };
        line.push('\n');
        if self.queue.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `SystemTime` as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_437_123_456);
        assert_eq!(rfc3339(t), "2026-11-23T12:32:03.456Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
