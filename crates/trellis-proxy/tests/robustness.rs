//! Robustness against hostile clients and operational events: malformed HTTP/1.1 and
//! HTTP/2, reloads under load, draining on SIGTERM, and invalid configuration reloads.
//! Every test runs a real proxy process (explicit mode, loopback) in front of real backends.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{TestProxy, free_port};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::http;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Upper bound on any single wait on a raw socket, so a hanging proxy fails the test.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn one_backend_config(port: u16, backend: SocketAddr) -> String {
    format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{port}', service: api}}]\n---\nkind: Endpoints\nservice: api\nendpoints: [{{address: '{backend}'}}]\n"
    )
}

fn split_config(port: u16, v1: SocketAddr, v2: SocketAddr, route: &str, w1: u32, w2: u32) -> String {
    format!(
        r#"
kind: Proxy
admin: '{{admin}}'
explicit: [{{listen: '127.0.0.1:{port}', service: reviews}}]
---
kind: Service
name: reviews
subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}
routes:
  - name: {route}
    to: [{{subset: v1, weight: {w1}}}, {{subset: v2, weight: {w2}}}]
---
kind: Endpoints
service: reviews
endpoints:
  - {{address: '{v1}', labels: {{version: v1}}}}
  - {{address: '{v2}', labels: {{version: v2}}}}
"#
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// How the proxy ended a raw exchange.
#[derive(Debug, PartialEq)]
enum End {
    /// Orderly close (FIN).
    Closed,
    /// Connection reset after whatever bytes were received.
    Reset,
}

/// Sends `request` on a fresh connection (write errors are tolerated: the proxy may close
/// before reading everything) and reads until the proxy closes. Panics if it neither
/// answers nor closes in time.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, End) {
    let mut stream = connect(addr);
    if let Err(e) = stream.write_all(request) {
        println!("write to {addr} stopped early: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        assert!(
            Instant::now() < deadline,
            "the proxy neither answered nor closed; got so far: {:?}",
            String::from_utf8_lossy(&received)
        );
        match stream.read(&mut buf) {
            Ok(0) => return (received, End::Closed),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (received, End::Reset),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "the proxy hung: no answer and no close within {READ_TIMEOUT:?}; got so far: {:?}",
                    String::from_utf8_lossy(&received)
                )
            }
            Err(e) => panic!("reading from the proxy: {e}"),
        }
    }
}

/// A parsed HTTP/1.1 response head plus body.
struct RawResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn parse_head(head: &[u8]) -> (u16, HashMap<String, String>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "not an HTTP/1.1 status line: {status_line:?}");
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete response (as read until close) with a `content-length` body.
fn parse_response(bytes: &[u8]) -> RawResponse {
    let end =
        head_end(bytes).unwrap_or_else(|| panic!("no complete response head in {:?}", String::from_utf8_lossy(bytes)));
    let (status, headers) = parse_head(&bytes[..end]);
    RawResponse { status, headers, body: bytes[end..].to_vec() }
}

/// Reads one `content-length` response from a keep-alive connection.
fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(&received) {
            break end;
        }
        let n = stream.read(&mut buf).expect("reading a response head");
        assert!(n > 0, "connection closed before a response head; got {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    };
    let (status, headers) = parse_head(&received[..end]);
    let length: usize = headers.get("content-length").expect("content-length").parse().unwrap();
    while received.len() < end + length {
        let n = stream.read(&mut buf).expect("reading a response body");
        assert!(n > 0, "connection closed inside a response body");
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received.len(), end + length, "unexpected bytes after the response");
    RawResponse { status, headers, body: received[end..].to_vec() }
}

/// One GET on an open keep-alive connection; checks it reached the backend.
fn keep_alive_get(stream: &mut TcpStream, path: &str) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: api\r\n\r\n").as_bytes())
        .expect("writing on the keep-alive connection");
    let response = read_response(stream);
    assert_eq!(response.status, 200, "{:?}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.headers.get("x-backend").map(String::as_str), Some("a"));
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(json["path"], path);
}

#[test]
fn malformed_http1_gets_400_and_other_connections_carry_on() {
    let (_backend, backend) = spawn_backend(&["http", "--name", "a"]);
    let port = free_port();
    let mut proxy = TestProxy::start(&one_backend_config(port, backend));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut a = connect(addr);
    keep_alive_get(&mut a, "/before");
    keep_alive_get(&mut a, "/before-again");

    // (a) A chunked body with an invalid chunk size: the proxy fails reading the body and
    // answers 400 itself, naming the reason, then closes the connection.
    let (bytes, end) = raw_exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    let r = parse_response(&bytes);
    println!("invalid chunk size: {} {:?}, then {end:?}", r.status, r.headers.get("x-trellis-error"));
    assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&bytes));
    assert!(r.headers.get("x-trellis-error").is_some_and(|v| v.starts_with("bad-request")), "{:?}", r.headers);
    assert_eq!(end, End::Closed);

    // (b) Over 100 KiB of headers (the proxy's limit is 64 KiB): 431 and close.
    let mut big = b"GET / HTTP/1.1\r\nhost: api\r\n".to_vec();
    for i in 0..110 {
        big.extend_from_slice(format!("x-filler-{i}: {}\r\n", "f".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert!(big.len() > 100 * 1024);
    let (bytes, end) = raw_exchange(addr, &big);
    let r = parse_response(&bytes);
    println!("oversized head: {}, then {end:?}", r.status);
    assert_eq!(r.status, 431, "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(r.headers.get("connection").map(String::as_str), Some("close"));
    // The proxy stops reading at its limit, so the rest of what was sent may cause a reset.
    assert!(matches!(end, End::Closed | End::Reset));

    // (c) Looks like HTTP/1 to detection, but is not valid HTTP/1.1: 400 and close.
    for garbage in
        [&b"GET / HTTP/9.9\r\n\r\n"[..], b"GET /no-version\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"]
    {
        let (bytes, end) = raw_exchange(addr, garbage);
        let r = parse_response(&bytes);
        println!("{:?}: {}, then {end:?}", String::from_utf8_lossy(garbage), r.status);
        assert_eq!(r.status, 400, "{:?} got {:?}", String::from_utf8_lossy(garbage), String::from_utf8_lossy(&bytes));
        assert_eq!(r.headers.get("connection").map(String::as_str), Some("close"));
        assert!(r.body.is_empty());
        assert_eq!(end, End::Closed);
    }

    // The first connection and a new one are unaffected.
    keep_alive_get(&mut a, "/after");
    let mut b = connect(addr);
    keep_alive_get(&mut b, "/new-connection");
    assert!(proxy.child.is_running(), "the proxy exited:\n{}", proxy.child.output_tail());
}

/// An HTTP/2 frame header (RFC 9113 §4.1) and its payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const FRAME_DATA: u8 = 0x0;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const PROTOCOL_ERROR: u32 = 0x1;
const FRAME_SIZE_ERROR: u32 = 0x6;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends the preface and `frames`, then reads frames until a GOAWAY (returned with the
/// frames before it) and checks the proxy then closes the connection.
fn expect_goaway(addr: SocketAddr, frames: &[u8]) -> (Frame, Vec<Frame>) {
    let mut stream = connect(addr);
    let mut out = trellis_proxy::detect::HTTP2_PREFACE.to_vec();
    out.extend_from_slice(frames);
    stream.write_all(&out).unwrap();
    let mut seen = Vec::new();
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).unwrap_or_else(|e| {
            panic!("no GOAWAY (saw frame types {:?}): {e}", seen.iter().map(|f: &Frame| f.kind).collect::<Vec<_>>())
        });
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).expect("frame payload");
        let f = Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        };
        if f.kind == FRAME_GOAWAY {
            // After a connection error the proxy closes (RFC 9113 §5.4.1).
            let mut rest = Vec::new();
            match stream.read_to_end(&mut rest) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("the proxy did not close after GOAWAY: {e}"),
            }
            return (f, seen);
        }
        seen.push(f);
    }
}

fn goaway_fields(goaway: &Frame) -> (u32, u32) {
    assert_eq!(goaway.stream, 0, "GOAWAY is a connection frame");
    assert!(goaway.payload.len() >= 8, "GOAWAY payload too short: {:?}", goaway.payload);
    let p = &goaway.payload;
    let last_stream = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
    let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    (last_stream, code)
}

#[test]
fn invalid_http2_frames_get_goaway() {
    let (_backend, backend) = spawn_backend(&["http", "--name", "a"]);
    let port = free_port();
    let mut proxy = TestProxy::start(&one_backend_config(port, backend));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // A SETTINGS frame whose length is not a multiple of 6. RFC 9113 §6.5 calls for
    // FRAME_SIZE_ERROR; the h2 library answers PROTOCOL_ERROR. Either is a connection error.
    let (goaway, before) = expect_goaway(addr, &frame(FRAME_SETTINGS, 0, 0, &[0; 5]));
    let (last_stream, code) = goaway_fields(&goaway);
    println!(
        "bad SETTINGS length: GOAWAY last_stream={last_stream} code={code} after frame types {:?}",
        before.iter().map(|f| f.kind).collect::<Vec<_>>()
    );
    assert!(before.iter().all(|f| f.kind == FRAME_SETTINGS), "only the server's SETTINGS may precede the GOAWAY");
    assert!(code == PROTOCOL_ERROR || code == FRAME_SIZE_ERROR, "GOAWAY error code {code}");
    assert_eq!(last_stream, 0);

    // A DATA frame on stream 0 after a valid SETTINGS: PROTOCOL_ERROR (RFC 9113 §6.1).
    let mut frames = frame(FRAME_SETTINGS, 0, 0, &[]);
    frames.extend(frame(FRAME_DATA, 0, 0, b"abc"));
    let (goaway, before) = expect_goaway(addr, &frames);
    let (last_stream, code) = goaway_fields(&goaway);
    println!("DATA on stream 0: GOAWAY last_stream={last_stream} code={code}");
    assert_eq!(code, PROTOCOL_ERROR);
    assert_eq!(last_stream, 0);
    assert!(
        before.iter().any(|f| f.kind == FRAME_SETTINGS && f.flags & 0x1 == 0x1),
        "the proxy acknowledged the valid SETTINGS first"
    );

    // Other connections, HTTP/2 and HTTP/1.1, still work.
    rt().block_on(async {
        let r = http::get_h2(&format!("http://{addr}/after")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.version, r.header("x-backend")), (200, ::http::Version::HTTP_2, Some("a")));
        let r = http::get(&format!("http://{addr}/after")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.header("x-backend")), (200, Some("a")));
    });
    assert!(proxy.child.is_running(), "the proxy exited:\n{}", proxy.child.output_tail());
}

#[derive(Default)]
struct LoadCounts {
    sent: AtomicUsize,
    ok: AtomicUsize,
    v1: AtomicUsize,
    v2: AtomicUsize,
    other_status: AtomicUsize,
    errors: AtomicUsize,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl LoadCounts {
    fn fail(&self, what: String) {
        let mut first = self.first_failure.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

#[test]
fn reloads_under_load_fail_no_request() {
    let (_v1, v1) = spawn_backend(&["http", "--name", "v1"]);
    let (_v2, v2) = spawn_backend(&["http", "--name", "v2"]);
    let port = free_port();
    let proxy = TestProxy::start(&split_config(port, v1, v2, "split-0", 90, 10));
    let url = format!("http://127.0.0.1:{port}/load");

    // Open loop: a request every 2 ms for 10 s (5,000), at most 128 in flight (the rest wait
    // their turn), each bounded by a timeout.
    const REQUESTS: usize = 5000;
    let counts = Arc::new(LoadCounts::default());
    let runtime = rt();
    let load = {
        let counts = counts.clone();
        runtime.spawn(async move {
            let client = http::client(false);
            let limit = Arc::new(tokio::sync::Semaphore::new(128));
            let mut ticker = tokio::time::interval(Duration::from_millis(2));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..REQUESTS {
                ticker.tick().await;
                let (client, url, counts, limit) = (client.clone(), url.clone(), counts.clone(), limit.clone());
                counts.sent.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await.unwrap();
                    let req = ::http::Request::get(url).body(http::full_body(bytes::Bytes::new())).unwrap();
                    let result = tokio::time::timeout(http::REQUEST_TIMEOUT, async {
                        let response = client.request(req).await?;
                        let status = response.status();
                        let backend = response
                            .headers()
                            .get("x-backend")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let body = http_body_util::BodyExt::collect(response.into_body()).await?;
                        anyhow::Ok((status, backend, body.to_bytes()))
                    })
                    .await;
                    match result {
                        Ok(Ok((status, backend, _))) if status == 200 => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            match backend.as_str() {
                                "v1" => counts.v1.fetch_add(1, Ordering::Relaxed),
                                "v2" => counts.v2.fetch_add(1, Ordering::Relaxed),
                                _ => 0,
                            };
                        }
                        Ok(Ok((status, _, body))) => {
                            counts.other_status.fetch_add(1, Ordering::Relaxed);
                            counts.fail(format!("status {status}: {}", String::from_utf8_lossy(&body)));
                        }
                        Ok(Err(e)) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            counts.fail(format!("error: {e:#}"));
                        }
                        Err(_) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            counts.fail(format!("timed out after {:?}", http::REQUEST_TIMEOUT));
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    // Meanwhile: 10 reloads about a second apart, flipping the split and renaming the route.
    let started = Instant::now();
    let mut versions = vec![proxy.config_version()];
    for i in 1..=10 {
        std::thread::sleep(Duration::from_millis(900));
        let (w1, w2) = if i % 2 == 1 { (10, 90) } else { (90, 10) };
        proxy.reconfigure(&split_config(port, v1, v2, &format!("split-{i}"), w1, w2));
        versions.push(proxy.config_version());
    }
    let reload_time = started.elapsed();
    runtime.block_on(load).expect("load task");

    let c = &counts;
    let (sent, ok, errors, other) = (
        c.sent.load(Ordering::Relaxed),
        c.ok.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.other_status.load(Ordering::Relaxed),
    );
    println!(
        "{sent} requests over {:?} ({} reloads in {reload_time:?}): {ok} × 200 (v1 {}, v2 {}), {other} other statuses, {errors} errors; first failure: {:?}",
        started.elapsed(),
        versions.len() - 1,
        c.v1.load(Ordering::Relaxed),
        c.v2.load(Ordering::Relaxed),
        c.first_failure.lock().unwrap()
    );
    let distinct: std::collections::HashSet<_> = versions.iter().collect();
    assert_eq!(distinct.len(), 11, "every reload must produce a new version: {versions:?}");
    assert!(sent >= 5000, "only {sent} requests sent");
    assert_eq!(errors, 0, "requests failed: {:?}", c.first_failure.lock().unwrap());
    assert_eq!(other, 0, "non-200 answers: {:?}", c.first_failure.lock().unwrap());
    assert_eq!(ok, sent);
    assert!(c.v1.load(Ordering::Relaxed) > 0 && c.v2.load(Ordering::Relaxed) > 0, "both subsets must have served");
    // The last configuration is the one in force, with its route name.
    let (_, config) = proxy.admin_get("/config").unwrap();
    assert!(config.contains("split-10"), "{config}");
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let (_slow, slow) = spawn_backend(&["http", "--name", "slow", "--delay", "1s"]);
    let port = free_port();
    let mut proxy = TestProxy::start(&one_backend_config(port, slow));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let runtime = rt();

    let url = format!("http://{addr}/in-flight");
    let in_flight = runtime.spawn(async move { http::get(&url).await });
    std::thread::sleep(Duration::from_millis(200));
    proxy.signal("TERM");

    // The request that was in flight completes normally.
    let r = runtime.block_on(in_flight).unwrap().expect("the in-flight request must complete");
    assert_eq!((r.status.as_u16(), r.header("x-backend")), (200, Some("slow")), "{}", r.text());

    // New connections are refused once the proxy stops accepting.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "the proxy still accepts connections after SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    // And the proxy exits by itself, successfully.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = proxy.child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy did not exit after draining:\n{}", proxy.child.output_tail());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}:\n{}", proxy.child.output_tail());
    assert!(proxy.child.output_tail().contains("drained"), "{}", proxy.child.output_tail());
}

#[test]
fn a_draining_proxy_still_answers_on_an_idle_keep_alive_connection_then_closes_it() {
    let (_backend, backend) = spawn_backend(&["http", "--name", "web"]);
    let port = free_port();
    let proxy = TestProxy::start(&one_backend_config(port, backend));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = b"GET /bytes/16 HTTP/1.1\r\nhost: web\r\n\r\n";
    stream.write_all(request).unwrap();
    let response = read_response(&mut stream);
    assert_eq!((response.status, response.body.len()), (200, 16));

    // Another proxy's pool may send on an idle connection just as this proxy starts to
    // drain: the request is still answered, and the answer closes the connection.
    proxy.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(request).unwrap();
    let response = read_response(&mut stream);
    assert_eq!((response.status, response.body.len()), (200, 16));
    assert_eq!(response.headers.get("connection").map(String::as_str), Some("close"), "{:?}", response.headers);
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "the connection stays open: {rest:?}");
}

/// The split of `split_config` with `weight: 120`: line 11 of the file (counting the leading
/// blank line); errors point at column 10, where the destination `{subset: v1, ...}` starts
/// (as in trellis-api's own tests).
fn hostile_config(port: u16, v1: SocketAddr, v2: SocketAddr) -> String {
    split_config(port, v1, v2, "split", 90, 10).replace("weight: 90", "weight: 120")
}

/// Writes `yaml` as the proxy's file (like `reconfigure`) and sends SIGHUP, without
/// waiting for a new version.
fn write_and_hup(proxy: &TestProxy, yaml: &str) {
    let tmp = proxy.config.with_extension("tmp");
    std::fs::write(&tmp, yaml.replace("{admin}", &proxy.admin.to_string())).unwrap();
    std::fs::rename(&tmp, &proxy.config).unwrap();
    proxy.signal("HUP");
}

fn config_json(proxy: &TestProxy) -> serde_json::Value {
    serde_json::from_str(&proxy.admin_get("/config").expect("admin /config").1).expect("config JSON")
}

/// Waits until `/config` reports a reload error and returns the document.
fn wait_for_reload_error(proxy: &TestProxy) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config = config_json(proxy);
        if !config["lastReloadError"].is_null() {
            return config;
        }
        assert!(Instant::now() < deadline, "no reload error reported:\n{}", proxy.child.output_tail());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_config_reload_keeps_the_running_version() {
    let (_v1, v1) = spawn_backend(&["http", "--name", "v1"]);
    let (_v2, v2) = spawn_backend(&["http", "--name", "v2"]);
    let port = free_port();
    let mut proxy = TestProxy::start(&split_config(port, v1, v2, "split", 90, 10));
    let url = format!("http://127.0.0.1:{port}/");
    let version = proxy.config_version();
    assert_eq!(proxy.metric_sum("trellis_config_reloads_total", &["result=\"rejected\""]), 0.0);

    write_and_hup(&proxy, &hostile_config(port, v1, v2));
    let config = wait_for_reload_error(&proxy);
    let error = config["lastReloadError"].as_str().unwrap().to_string();
    println!("lastReloadError: {error}");
    assert_eq!(config["version"], version.as_str(), "the running version must be kept");
    let file = proxy.config.display().to_string();
    assert_eq!(error, format!("{file}:11:10: routes[0].to[0].weight: 120 is out of range 0..=100"));
    assert!(proxy.metric_sum("trellis_config_reloads_total", &["result=\"rejected\""]) >= 1.0, "{}", proxy.metrics());

    // Traffic keeps flowing on the old configuration.
    rt().block_on(async {
        for _ in 0..50 {
            let r = http::get(&url).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(matches!(r.header("x-backend"), Some("v1" | "v2")));
        }
    });
    assert_eq!(proxy.config_version(), version);
    assert!(proxy.child.is_running());
}

/// One bad edit followed by SIGHUP is one rejected reload: the proxy sees the
/// file from both the SIGHUP handler and the mtime watcher; only the first may count.
#[test]
fn hostile_config_reload_is_counted_once() {
    let (_v1, v1) = spawn_backend(&["http", "--name", "v1"]);
    let (_v2, v2) = spawn_backend(&["http", "--name", "v2"]);
    let port = free_port();
    let proxy = TestProxy::start(&split_config(port, v1, v2, "split", 90, 10));
    write_and_hup(&proxy, &hostile_config(port, v1, v2));
    wait_for_reload_error(&proxy);
    // Give the file watcher (1 s period) time to look at the file too.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(proxy.metric_sum("trellis_config_reloads_total", &["result=\"rejected\""]), 1.0, "{}", proxy.metrics());
    assert_eq!(proxy.metric_sum("trellis_config_reloads_total", &["result=\"applied\""]), 0.0);
}
