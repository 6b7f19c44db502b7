//! Access logs: one JSON line per request, written off the request path.
//!
//! Each line is formatted into a shared buffer that a writer thread empties, so a slow disk
//! never delays requests; when 4 MiB are waiting, lines are dropped and counted instead. The
//! writer lets lines gather for a few milliseconds and writes them together.
//!
//! The fields are documented in `docs/observability.md`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

/// Most bytes waiting for the writer; lines beyond are dropped and counted.
const PENDING_LIMIT: usize = 4 << 20;

/// How long the writer lets lines gather before writing them: one write and one wake-up
/// per batch instead of per request.
const GATHER: Duration = Duration::from_millis(20);

/// One line. Identities are SPIFFE IDs (empty for plaintext); `latency` runs to the
/// response headers, `duration` to the end of the response body.
pub struct Entry<'a> {
    pub time: SystemTime,
    pub trace_id: Option<&'a [u8; 16]>,
    pub span_id: Option<&'a [u8; 8]>,
    pub direction: &'a str,
    pub service: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub client: SocketAddr,
    pub source_identity: &'a str,
    pub destination_identity: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub latency: Duration,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub attempts: u32,
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    /// Appends the entry as one JSON line. Written by hand rather than through serde: this
    /// runs for every request, and knowing each field's type avoids most of the work.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_rfc3339(out, self.time);
        out.push(b'"');
        if let Some(trace) = self.trace_id {
            out.extend_from_slice(b",\"trace_id\":\"");
            push_hex(out, trace);
            out.push(b'"');
        }
        if let Some(span) = self.span_id {
            out.extend_from_slice(b",\"span_id\":\"");
            push_hex(out, span);
            out.push(b'"');
        }
        // Fixed words hold nothing JSON must escape; everything else is escaped (namespaces,
        // route names and configured identities are free text).
        field_raw(out, "direction", self.direction);
        field_str(out, "service", self.service);
        field_str(out, "route", self.route);
        field_str(out, "upstream", self.upstream);
        match self.endpoint {
            Some(endpoint) => {
                out.extend_from_slice(b",\"endpoint\":\"");
                push_socket_addr(out, endpoint);
                out.push(b'"');
            }
            None => out.extend_from_slice(b",\"endpoint\":null"),
        }
        out.extend_from_slice(b",\"client\":\"");
        push_socket_addr(out, self.client);
        out.push(b'"');
        field_str(out, "source_identity", self.source_identity);
        field_str(out, "destination_identity", self.destination_identity);
        field_str(out, "method", self.method);
        field_str(out, "authority", self.authority);
        field_str(out, "path", self.path);
        field_raw(out, "protocol", self.protocol);
        field_int(out, "status", self.status as u64);
        if let Some(code) = self.grpc_status {
            field_int(out, "grpc_status", code as u64);
        }
        field_millis(out, "latency_ms", self.latency);
        field_millis(out, "duration_ms", self.duration);
        field_int(out, "request_bytes", self.request_bytes);
        field_int(out, "response_bytes", self.response_bytes);
        field_int(out, "attempts", self.attempts as u64);
        field_int(out, "retries", self.attempts.saturating_sub(1) as u64);
        match self.error {
            Some(reason) => field_raw(out, "error", reason),
            None => out.extend_from_slice(b",\"error\":null"),
        }
        out.extend_from_slice(b"}\n");
    }
}

fn field_str(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    push_escaped(out, value);
    out.push(b'"');
}

/// A string known to need no escaping.
fn field_raw(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `IP:PORT` (`[IP]:PORT` for IPv6) without the formatting machinery for the common IPv4 case.
fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(*octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn field_int(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Milliseconds with three decimals (microsecond resolution), without float formatting.
fn field_millis(out: &mut Vec<u8>, name: &str, value: Duration) {
    let micros = value.as_micros() as u64;
    field_int(out, name, micros / 1000);
    let fraction = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// A JSON string's contents: most values need no escaping and are copied as they are.
fn push_escaped(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    if !bytes.iter().any(|b| *b < 0x20 || *b == b'"' || *b == b'\\' || *b == 0x7f) {
        out.extend_from_slice(bytes);
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

/// Lines waiting for the writer thread.
struct Pending {
    lines: Mutex<Vec<u8>>,
    ready: Condvar,
}

pub struct AccessLog {
    pending: Arc<Pending>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Starts a writer thread for `target`: `stdout`, `stderr`, or a file path (appended to).
    pub fn open(target: &str) -> anyhow::Result<AccessLog> {
        let writer: Box<dyn Write + Send> = match target {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open access log {path}: {e}"))?,
            ),
        };
        let pending = Arc::new(Pending { lines: Mutex::new(Vec::with_capacity(64 * 1024)), ready: Condvar::new() });
        // A thread of its own: writes block, and must not hold up the proxy's runtime.
        let shared = pending.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&shared, writer))
            .map_err(|e| anyhow::anyhow!("cannot start the access log writer: {e}"))?;
        Ok(AccessLog { pending, dropped: AtomicU64::new(0) })
    }

    /// Queues one line; never waits for the disk.
    pub fn record(&self, entry: &Entry<'_>) {
        let mut lines = self.pending.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= PENDING_LIMIT {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = lines.is_empty();
        entry.write_json(&mut lines);
        drop(lines);
        if was_empty {
            self.pending.ready.notify_one();
        }
    }
}

/// Takes what has gathered, writes it, waits a little so the next batch is worth a write.
fn write_lines(pending: &Pending, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        {
            let mut lines = pending.lines.lock().unwrap_or_else(|e| e.into_inner());
            while lines.is_empty() {
                lines = pending.ready.wait(lines).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::swap(&mut *lines, &mut batch);
        }
        let result = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        match (result, failing) {
            (Err(e), false) => {
                tracing::warn!(error = %e, "access log write failed; lines are lost until it works again");
                failing = true;
            }
            (Ok(()), true) => failing = false,
            _ => {}
        }
        std::thread::sleep(GATHER);
    }
}

/// The time as RFC 3339 with milliseconds, UTC, appended to `out`.
pub fn write_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    let two = |out: &mut Vec<u8>, n: i64| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    let year = year.clamp(0, 9999);
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem % 3600 / 60);
    out.push(b':');
    two(out, rem % 60);
    let millis = since.subsec_millis() as i64;
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + if month <= 2 { 1 } else { 0 }, month, day)
}

/// `SystemTime` as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339(&mut out, time);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_json_with_escaped_strings() {
        let trace = [0xab; 16];
        let entry = Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_437_123_456),
            trace_id: Some(&trace),
            span_id: None,
            direction: "outbound",
            service: "reviews.shop",
            route: "api",
            upstream: "reviews.shop/v2",
            endpoint: Some("127.0.0.1:9080".parse().unwrap()),
            client: "[::1]:40000".parse().unwrap(),
            source_identity: "spiffe://td/ns/shop/sa/web",
            destination_identity: "",
            method: "GET",
            authority: "reviews",
            path: "/a\"b\\c\u{1}\u{e9}",
            protocol: "HTTP/1.1",
            status: 503,
            grpc_status: Some(14),
            latency: Duration::from_micros(1_234),
            duration: Duration::from_micros(12_005_678),
            request_bytes: 5,
            response_bytes: 0,
            attempts: 3,
            error: None,
        };
        let mut out = Vec::new();
        entry.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["time"], "2026-11-23T12:32:03.456Z");
        assert_eq!(value["trace_id"], "ab".repeat(16));
        assert!(value.get("span_id").is_none());
        assert_eq!(value["path"], "/a\"b\\c\u{1}\u{e9}");
        assert_eq!(value["endpoint"], "127.0.0.1:9080");
        assert_eq!(value["client"], "[::1]:40000");
        assert_eq!(value["latency_ms"], 1.234);
        assert_eq!(value["duration_ms"], 12005.678);
        assert_eq!(value["grpc_status"], 14);
        assert_eq!(value["retries"], 2);
        assert!(value["error"].is_null());
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_437_123_456);
        assert_eq!(rfc3339(t), "2026-11-23T12:32:03.456Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
