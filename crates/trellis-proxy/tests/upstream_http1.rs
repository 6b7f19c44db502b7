//! What the proxy makes of what an HTTP/1.1 upstream sends: every way a response body may
//! be delimited, interim responses, malformed responses, and keep-alive connections the
//! upstream closes while they sit in the pool. The upstream is a raw socket server that
//! answers with bytes the test chooses.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{TestProxy, free_port};

/// What the scripted upstream answers to a request line starting with `METHOD /path`.
fn scripted_answer(request_line: &str) -> (&'static [u8], bool) {
    // (response bytes, close the connection after it)
    let path = request_line.split(' ').nth(1).unwrap_or("/");
    match path {
        "/chunked" => (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n", false),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nread until the upstream closes", true),
        "/continue" => (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncontinued", false),
        "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nx-head: yes\r\n\r\n", false),
        "/no-content" => (b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n", false),
        "/two-lengths" => (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", true),
        "/not-http" => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", true),
        "/short" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
        "/old" => (b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold", true),
        // Closes after it (so it says so), as a server not reading a body must.
        "/too-large" => (b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large", true),
        _ => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    }
}

/// A raw HTTP/1.1 upstream answering by `scripted_answer`, reading request bodies by their
/// content-length. Counts the connections it accepted; closes a connection idle for
/// `idle_close` (a keep-alive timeout).
fn scripted_upstream(idle_close: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve_scripted(stream, idle_close));
        }
    });
    (addr, accepted)
}

fn serve_scripted(mut stream: TcpStream, idle_close: Duration) {
    stream.set_read_timeout(Some(idle_close)).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let body_length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let answers_early = head.starts_with("post /too-large ") || head.starts_with("post /echo-stream ");
            if buffer.len() < end + 4 + body_length && !answers_early {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            let request_line = head.lines().next().unwrap_or_default().to_string();
            if request_line.contains(" /echo-stream ") {
                // Echoes the body as it arrives, before the request has ended: both ways at
                // once, as a streaming server does.
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                let mut left = body_length;
                let mut pending = buffer.split_off(end + 4);
                loop {
                    if !pending.is_empty() {
                        let take = pending.len().min(left);
                        let chunk_head = format!("{take:x}\r\n");
                        let _ = stream.write_all(chunk_head.as_bytes());
                        let _ = stream.write_all(&pending[..take]);
                        let _ = stream.write_all(b"\r\n");
                        left -= take;
                        pending.clear();
                    }
                    if left == 0 {
                        let _ = stream.write_all(b"0\r\n\r\n");
                        return;
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    }
                }
            }
            if request_line.contains(" /too-large ") {
                // Answers at once, without reading the body, then reads and drops the rest
                // (a lingering close, as nginx does, so the client is not reset).
                let _ = stream.write_all(scripted_answer(&request_line).0);
                while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
                return;
            }
            buffer.drain(..end + 4 + body_length);
            let (answer, close) = scripted_answer(&request_line);
            if stream.write_all(answer).is_err() || close {
                return;
            }
            continue;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return, // closed, or idle past `idle_close`
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn proxy_to(upstream: SocketAddr) -> (TestProxy, String) {
    let listen = free_port();
    let proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{listen}', service: web}}]\n---\nkind: Endpoints\nservice: web\nendpoints: [{{address: '{upstream}'}}]\n"
    ));
    (proxy, format!("http://127.0.0.1:{listen}"))
}

/// curl's exit code, status, headers and body.
fn curl(args: &[&str]) -> (i32, String, String, String) {
    let headers = tempfile_path();
    let mut all = vec!["-s", "--max-time", "5", "-D", headers.as_str(), "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let output = std::process::Command::new("curl").args(&all).output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let head = std::fs::read_to_string(&headers).unwrap_or_default().to_lowercase();
    let _ = std::fs::remove_file(&headers);
    (output.status.code().unwrap_or(-1), status.to_string(), head, body.to_string())
}

fn tempfile_path() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("/tmp/trellis-upstream-http1-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

#[test]
fn every_way_an_upstream_delimits_a_body_reaches_the_client_whole() {
    let (upstream, accepted) = scripted_upstream(Duration::from_secs(30));
    let (_proxy, base) = proxy_to(upstream);
    let connections = || accepted.load(Ordering::SeqCst);

    let (code, status, _, body) = curl(&[&format!("{base}/chunked")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "200", "hello world"), "chunked, with extensions and trailers");
    let (code, status, _, body) = curl(&[&format!("{base}/plain")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "200", "ok"));
    assert_eq!(connections(), 1, "the connection a chunked response ended on is reused");

    // (Waiting for the 100 bytes the content-length announces would time curl out: 28.)
    let (code, status, head, _) = curl(&["-I", &format!("{base}/head")]);
    assert_eq!((code, status.as_str()), (0, "200"), "a HEAD response has no body, whatever its content-length");
    assert!(head.contains("x-head: yes") && head.contains("content-length: 100"), "{head}");
    let (code, status, _, body) = curl(&[&format!("{base}/no-content")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "204", ""));
    let (code, status, _, body) = curl(&["-H", "expect: 100-continue", "--data", "x", &format!("{base}/continue")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "200", "continued"), "the interim 100 is passed over");
    let (_, status, _, body) = curl(&[&format!("{base}/plain")]);
    assert_eq!((status.as_str(), body.as_str()), ("200", "ok"));
    assert_eq!(connections(), 1, "HEAD, 204 and an interim 100 leave the connection reusable");

    let (code, status, _, body) = curl(&[&format!("{base}/until-close")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "200", "read until the upstream closes"));
    let (code, status, _, body) = curl(&[&format!("{base}/old")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "200", "old"), "HTTP/1.0");
    let (_, status, _, _) = curl(&[&format!("{base}/plain")]);
    assert_eq!(status, "200");
    assert_eq!(connections(), 3, "a body delimited by the close, and HTTP/1.0, end their connections");
}

#[test]
fn a_malformed_upstream_response_is_a_named_502_and_a_cut_body_an_error() {
    let (upstream, _) = scripted_upstream(Duration::from_secs(30));
    let (_proxy, base) = proxy_to(upstream);
    for path in ["/two-lengths", "/not-http"] {
        let (_, status, head, body) = curl(&[&format!("{base}{path}")]);
        assert_eq!(status, "502", "{path}: {body}");
        assert!(head.contains("x-trellis-error: upstream-reset") || body.contains("upstream-reset"), "{path}: {head}{body}");
    }
    let (_, _, _, body) = curl(&[&format!("{base}/two-lengths")]);
    assert!(body.contains("content-length"), "the error names what was wrong: {body}");
    // The head was good; the body then stopped short: the client must not take the response
    // for complete. (Whether the head was written out before the connection is cut depends on
    // timing: curl says 18, partial file, or 52, nothing received.)
    let (code, _, _, body) = curl(&[&format!("{base}/short")]);
    assert!(matches!(code, 18 | 52), "curl exit {code}: {body}");
    let (code, status, _, body) = curl(&[&format!("{base}/plain")]);
    assert_eq!((code, status.as_str(), body.as_str()), (0, "200", "ok"), "the proxy carries on");
}

#[test]
fn a_pooled_connection_the_upstream_closed_while_idle_is_not_used() {
    // The upstream closes keep-alive connections idle for 200 ms (Node.js's default is 5 s).
    let (upstream, accepted) = scripted_upstream(Duration::from_millis(200));
    let (_proxy, base) = proxy_to(upstream);
    for round in 1..=3 {
        let (_, status, _, body) = curl(&[&format!("{base}/plain")]);
        assert_eq!((status.as_str(), body.as_str()), ("200", "ok"), "round {round}");
        std::thread::sleep(Duration::from_millis(500));
        // A POST is never sent twice, so it must not go out on the closed connection at all.
        let (_, status, _, body) = curl(&["--data", "payload", &format!("{base}/plain")]);
        assert_eq!((status.as_str(), body.as_str()), ("200", "ok"), "round {round}: a POST after the upstream closed the idle connection");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6, "one connection per request, each after the last was closed");
}

#[test]
fn an_upstream_answering_before_it_read_the_upload_is_heard() {
    let (upstream, _) = scripted_upstream(Duration::from_secs(30));
    let (_proxy, base) = proxy_to(upstream);
    let upload = format!("/tmp/trellis-upload-{}", std::process::id());
    std::fs::write(&upload, vec![b'x'; 4 << 20]).unwrap();
    let data = format!("@{upload}");
    // With `Expect: 100-continue` (curl's way for large bodies) and without (the body
    // follows the head at once).
    for expect in ["expect: 100-continue", "expect:", "expect:"] {
        let (_, status, _, body) = curl(&["-H", expect, "--data-binary", &data, &format!("{base}/too-large")]);
        assert_eq!((status.as_str(), body.as_str()), ("413", "too large"), "{expect}: the early answer to a 4 MiB upload");
    }
    let _ = std::fs::remove_file(&upload);
    let (_, status, _, _) = curl(&[&format!("{base}/plain")]);
    assert_eq!(status, "200");
}

#[test]
fn an_upstream_streaming_its_answer_while_it_reads_the_upload_gets_both_ways_at_once() {
    let (upstream, _) = scripted_upstream(Duration::from_secs(30));
    let (_proxy, base) = proxy_to(upstream);
    // Larger than loopback's socket buffers: sending the whole upload before reading any of
    // the answer would stall both ends.
    let upload = format!("/tmp/trellis-duplex-{}", std::process::id());
    let sent: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &sent).unwrap();
    let received = format!("{upload}.out");
    let output = std::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "-H", "expect:", "--data-binary", &format!("@{upload}"), "-o", &received])
        .args(["-w", "%{http_code}", &format!("{base}/echo-stream")])
        .output()
        .unwrap();
    let echoed = std::fs::read(&received).unwrap_or_default();
    let _ = (std::fs::remove_file(&upload), std::fs::remove_file(&received));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
    assert!(echoed == sent, "echoed {} of {} bytes, or different ones", echoed.len(), sent.len());
}
