//! The HTTP mode of `trellis-test-backend`, driven through the crate's own
//! client helpers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testkit::http::{self as th, client, streaming_body};
use trellis_testkit::servers::http::bytes_pattern;
use trellis_testkit::spawn_backend;
use trellis_testkit::ws::{ws_connect, ws_echo_roundtrip};

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn http1_report() {
    let (_b, addr) = spawn_backend(&["http", "--name", "alpha"]);
    let resp =
        th::request(Method::POST, &format!("http://{addr}/some/path?q=1&r=2"), &[("X-Custom", "v1")], "body!", false)
            .await
            .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-backend"), Some("alpha"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let j = resp.json().unwrap();
    assert_eq!(j["server"], "alpha");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/some/path?q=1&r=2");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["headers"]["x-custom"], "v1");
    assert_eq!(j["headers"]["host"], addr.to_string());
    assert_eq!(j["body_bytes"], 5);
}

#[tokio::test]
async fn http2_prior_knowledge_same_port() {
    let (_b, addr) = spawn_backend(&["http", "--name", "beta"]);
    let resp = th::get_h2(&format!("http://{addr}/x")).await.unwrap();
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.header("x-backend"), Some("beta"));
    let j = resp.json().unwrap();
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["path"], "/x");
    // HTTP/1.1 on the same port still works.
    let resp = th::get(&format!("http://{addr}/x")).await.unwrap();
    assert_eq!(resp.json().unwrap()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn status_flag_status_path_and_stats() {
    let (_b, addr) = spawn_backend(&["http", "--status", "503"]);
    let base = format!("http://{addr}");
    assert_eq!(th::get(&format!("{base}/a")).await.unwrap().status, 503);
    let r = th::get(&format!("{base}/status/418")).await.unwrap();
    assert_eq!(r.status, 418);
    assert_eq!(r.json().unwrap()["path"], "/status/418");
    for bad in ["/status/99", "/status/600", "/status/abc", "/bytes/-1", "/bytes/x"] {
        let r = th::get_h2(&format!("{base}{bad}")).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let stats = th::get(&format!("{base}/__stats")).await.unwrap();
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.header("x-backend"), Some("backend"));
    // 2 above + 5 bad ones; /__stats itself is not counted.
    assert_eq!(stats.json().unwrap()["requests"], 7);
    let stats = th::get(&format!("{base}/__stats")).await.unwrap();
    assert_eq!(stats.json().unwrap()["requests"], 7);
}

#[tokio::test]
async fn delay() {
    let (_b, addr) = spawn_backend(&["http", "--delay", "300ms"]);
    let start = Instant::now();
    let r = th::get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn bad_flags_fail_fast() {
    for args in [
        &["http", "--delay", "5h"][..],
        &["http", "--status", "99"][..],
        &["http", "--listen", "not-an-address"][..],
        &["nope"][..],
    ] {
        assert!(trellis_testkit::backend::try_spawn_backend(args).is_err(), "{args:?} should fail");
    }
}

#[tokio::test]
async fn bytes_n() {
    let (_b, addr) = spawn_backend(&["http"]);
    for (n, h2) in [(0usize, false), (10, true), (200_000, false), (200_000, true)] {
        let r = th::request(Method::GET, &format!("http://{addr}/bytes/{n}"), &[], "", h2).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), n);
        assert_eq!(r.body, bytes_pattern(n));
        assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
    }
}

/// Sends chunk N+1 only after chunk N came back, which would deadlock if the
/// backend buffered the body before answering.
async fn echo_lockstep(http2: bool) {
    let (_b, addr) = spawn_backend(&["http"]);
    let (tx, body) = streaming_body();
    let req = Request::post(format!("http://{addr}/echo")).header("content-type", "text/plain").body(body).unwrap();
    tx.send(Bytes::from_static(b"chunk-0")).await.unwrap();
    let resp = tokio::time::timeout(STEP, client(http2).request(req))
        .await
        .expect("response headers before the body ended")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let mut body = resp.into_body();
    for i in 0..5 {
        let expected = format!("chunk-{i}");
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let frame = tokio::time::timeout(STEP, body.frame())
                .await
                .unwrap_or_else(|_| panic!("echo of {expected} not streamed back"))
                .expect("body ended early")
                .unwrap();
            if let Ok(d) = frame.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(got, expected.as_bytes());
        if i < 4 {
            tx.send(Bytes::from(format!("chunk-{}", i + 1))).await.unwrap();
        }
    }
    drop(tx);
    let rest = tokio::time::timeout(STEP, body.collect()).await.unwrap().unwrap();
    assert!(rest.to_bytes().is_empty());
}

#[tokio::test]
async fn echo_streams_http2() {
    echo_lockstep(true).await;
}

#[tokio::test]
async fn echo_streams_http1() {
    echo_lockstep(false).await;
}

#[tokio::test]
async fn echo_whole_body() {
    let (_b, addr) = spawn_backend(&["http"]);
    let payload = bytes_pattern(300_000);
    for h2 in [false, true] {
        let r = th::request(Method::PUT, &format!("http://{addr}/echo"), &[], payload.clone(), h2).await.unwrap();
        assert_eq!(r.header("x-backend"), Some("backend"));
        assert_eq!(r.body, payload);
    }
}

/// Reads from `s` until `needle` has been seen; returns everything read.
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains(needle) {
        let n = tokio::time::timeout(STEP, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("waiting for {needle:?}, got {:?}", String::from_utf8_lossy(&buf)))
            .unwrap();
        assert!(n > 0, "EOF waiting for {needle:?}: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn expect_100_continue() {
    let (_b, addr) = spawn_backend(&["http"]);
    for path in ["/echo", "/report"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let interim = read_until(&mut s, "\r\n\r\n").await;
        assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{path}: {interim:?}");
        s.write_all(b"hello").await.unwrap();
        let fin = read_until(&mut s, if path == "/echo" { "hello" } else { "\"body_bytes\":5" }).await;
        assert!(fin.contains("HTTP/1.1 200 OK"), "{path}: {fin:?}");
    }
}

#[tokio::test]
async fn websocket_echo() {
    let (_b, addr) = spawn_backend(&["http"]);
    let url = format!("ws://{addr}/ws");
    let echoes = ws_echo_roundtrip(&url, &["one", "two", "three"]).await.unwrap();
    assert_eq!(echoes, ["one", "two", "three"]);

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = ws_connect(&url).await.unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("expected binary echo, got {other:?}"),
    }
    ws.close(None).await.unwrap();

    // A plain GET of /ws is refused, not upgraded.
    let r = th::get(&url.replace("ws://", "http://")).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = th::get_h2(&url.replace("ws://", "http://")).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn garbage_does_not_kill_the_server() {
    let (mut b, addr) = spawn_backend(&["http"]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut sink)).await;
    assert!(b.is_running());
    assert_eq!(th::get(&format!("http://{addr}/")).await.unwrap().status, 200);
}
