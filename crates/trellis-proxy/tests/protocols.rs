//! Every protocol passes through two proxies in explicit mode on loopback:
//! client → proxy A (explicit port bound to a service) → proxy B (inbound) → backend.
//! Endpoints are `meshed`: HTTP/1.1 crosses between the proxies as HTTP/1.1, or multiplexed
//! over HTTP/2 where the service says `meshHttp1: multiplex`.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use support::{TestProxy, free_port};
use trellis_testkit::backend::spawn_backend;

/// A server-side proxy whose inbound listener forwards to `app`.
fn inbound_proxy(app: SocketAddr) -> (TestProxy, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\ninbound: {{listen: '{listen}', forward: '{app}'}}\n"
    ));
    (proxy, listen)
}

struct Mesh {
    client_proxy: TestProxy,
    server_proxies: Vec<TestProxy>,
    http: SocketAddr,
    grpc: SocketAddr,
    tcp: SocketAddr,
    _backends: Vec<trellis_testkit::process::ChildProcess>,
}

/// The three services behind their inbound proxies; `mesh_http1` is the web service's
/// `meshHttp1`.
fn mesh(mesh_http1: &str) -> Mesh {
    let (http_backend, http_addr) = spawn_backend(&["http", "--name", "web"]);
    let (grpc_backend, grpc_addr) = spawn_backend(&["grpc", "--name", "echo"]);
    let (tcp_backend, tcp_addr) = spawn_backend(&["tcp-echo"]);
    let (web_in, web_in_addr) = inbound_proxy(http_addr);
    let (grpc_in, grpc_in_addr) = inbound_proxy(grpc_addr);
    let (tcp_in, tcp_in_addr) = inbound_proxy(tcp_addr);
    let (http, grpc, tcp) = (free_port(), free_port(), free_port());
    let client_proxy = TestProxy::start(&format!(
        r#"
kind: Proxy
admin: '{{admin}}'
explicit:
  - {{listen: '127.0.0.1:{http}', service: web}}
  - {{listen: '127.0.0.1:{grpc}', service: echo}}
  - {{listen: '127.0.0.1:{tcp}', service: raw}}
---
kind: Service
name: web
meshHttp1: {mesh_http1}
---
kind: Service
name: echo
ports: [{{port: 9090, protocol: grpc}}]
---
kind: Service
name: raw
ports: [{{port: 7000, protocol: tcp}}]
---
kind: Endpoints
service: web
endpoints: [{{address: '{web_in_addr}', meshed: true}}]
---
kind: Endpoints
service: echo
endpoints: [{{address: '{grpc_in_addr}', meshed: true}}]
---
kind: Endpoints
service: raw
endpoints: [{{address: '{tcp_in_addr}', meshed: true}}]
"#
    ));
    Mesh {
        client_proxy,
        server_proxies: vec![web_in, grpc_in, tcp_in],
        http: format!("127.0.0.1:{http}").parse().unwrap(),
        grpc: format!("127.0.0.1:{grpc}").parse().unwrap(),
        tcp: format!("127.0.0.1:{tcp}").parse().unwrap(),
        _backends: vec![http_backend, grpc_backend, tcp_backend],
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-s", "-S", "-m", "20"]).args(args).output().expect("run curl");
    assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Inbound connections proxy B detected as `outcome`.
fn hop_connections(proxy: &TestProxy, outcome: &str) -> f64 {
    proxy.metric_sum("trellis_protocol_detections_total", &["direction=\"inbound\"", &format!("outcome=\"{outcome}\"")])
}

#[test]
fn every_protocol_crosses_two_proxies_in_explicit_mode() {
    let mesh = mesh("keep");
    http1_crosses(&mesh);
    let web_in = &mesh.server_proxies[0];
    assert!(hop_connections(web_in, "http1") >= 1.0, "HTTP/1.1 did not cross as HTTP/1.1:\n{}", web_in.metrics());
    assert_eq!(hop_connections(web_in, "http2"), 0.0, "{}", web_in.metrics());

    // HTTP/2 prior knowledge from curl stays HTTP/2.
    let (body, _) = curl(&["--http2-prior-knowledge", &format!("http://{}/h2", mesh.http)]);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["version"], "HTTP/2.0");
    assert_eq!(hop_connections(web_in, "http2"), 1.0, "{}", web_in.metrics());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // gRPC unary and bidirectional streaming.
        let mut client = trellis_testkit::grpc::echo_client(mesh.grpc).await.unwrap();
        let reply = client.unary(trellis_testkit::grpc::echo_request("ping")).await.unwrap().into_inner();
        assert_eq!((reply.message.as_str(), reply.server.as_str()), ("ping", "echo"));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut replies = client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        for word in ["a", "b", "c"] {
            // Each message is sent only after the previous reply arrived: truly streaming.
            tx.send(trellis_testkit::grpc::echo_request(word)).await.unwrap();
            let reply = replies.message().await.unwrap().expect("a reply");
            assert_eq!(reply.message, word);
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
        // Server streaming ends with trailers carrying status OK.
        let mut stream = client
            .server_stream(trellis_testkit::echo_proto::EchoRequest { message: "s".into(), count: 3, fail_code: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(_reply) = stream.message().await.unwrap() {
            n += 1;
        }
        assert_eq!(n, 3);
        // A gRPC error status travels in the trailers to the client.
        let status = client
            .unary(trellis_testkit::echo_proto::EchoRequest { message: "x".into(), count: 0, fail_code: 5 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    });

    // Raw TCP.
    let mut stream = std::net::TcpStream::connect(mesh.tcp).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(b"hello over tcp").unwrap();
    let mut buf = [0u8; 14];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello over tcp");
    drop(stream);
    let _ = &mesh.client_proxy;
}

#[test]
fn http1_can_cross_between_proxies_multiplexed_over_http2() {
    let mesh = mesh("multiplex");
    http1_crosses(&mesh);
    let web_in = &mesh.server_proxies[0];
    // One multiplexed connection carried the requests; the WebSocket upgrade had its own.
    assert_eq!(hop_connections(web_in, "http2"), 1.0, "HTTP/1.1 was not multiplexed:\n{}", web_in.metrics());
    assert_eq!(hop_connections(web_in, "http1"), 1.0, "{}", web_in.metrics());
}

/// HTTP/1.1 through the web service: the app sees HTTP/1.1 (whatever crossed between the
/// proxies), a chunked upload streams, keep-alive holds, and a WebSocket upgrade works.
fn http1_crosses(mesh: &Mesh) {
    let base = format!("http://{}", mesh.http);
    let (body, _) = curl(&[&format!("{base}/hello?x=1"), "-H", "x-test: 1"]);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["server"], "web");
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["path"], "/hello?x=1");
    assert_eq!(json["headers"]["x-test"], "1");
    assert!(json["headers"].get("x-trellis-orig-proto").is_none(), "marker header leaked to the app: {json}");

    // A chunked upload (curl adds Expect: 100-continue for a large body) streams to /echo.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let dir = support::TempDir::new();
    let file = dir.0.join("payload");
    std::fs::write(&file, &payload).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-S", "-m", "20", "-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("{base}/echo"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), payload.len());
    assert!(out.stdout == payload, "echoed body differs");

    // Keep-alive: several requests on one connection.
    let (body, stderr) = curl(&["-v", &format!("{base}/a"), &format!("{base}/b"), &format!("{base}/c")]);
    assert_eq!(body.matches("\"server\":\"web\"").count() + body.matches("\"server\": \"web\"").count(), 3, "{body}");
    assert!(
        stderr.contains("Re-using existing connection") || stderr.contains("Reusing existing connection"),
        "curl did not reuse the connection:\n{stderr}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // WebSocket upgrade.
        let echoes =
            trellis_testkit::ws::ws_echo_roundtrip(&format!("ws://{}/ws", mesh.http), &["one", "two"]).await.unwrap();
        assert_eq!(echoes, vec!["one", "two"]);
    });
}

#[test]
fn server_speaks_first_protocols_do_not_stall() {
    let (_backend, addr) = spawn_backend(&["server-first", "--greeting", "220 smtp.example ready"]);
    let port = free_port();
    let proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\ndetectTimeout: 200ms\nexplicit: [{{listen: '127.0.0.1:{port}', service: smtp}}]\n---\nkind: Endpoints\nservice: smtp\nendpoints: [{{address: '{addr}'}}]\n"
    ));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 24];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 smtp.example ready\r\n");
    stream.write_all(b"EHLO me\r\n").unwrap();
    let mut echo = [0u8; 9];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"EHLO me\r\n");
    assert_eq!(
        proxy.metric_sum("trellis_protocol_detections_total", &["outcome=\"timeout\""]),
        1.0,
        "{}",
        proxy.metrics()
    );
}

#[test]
fn declared_http_ports_wait_for_a_slow_first_request() {
    let (_backend, addr) = spawn_backend(&["http", "--name", "web"]);
    let port = free_port();
    let proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\ndetectTimeout: 100ms\nexplicit: [{{listen: '127.0.0.1:{port}', service: web}}]\n---\nkind: Service\nname: web\nports: [{{port: 80, protocol: http}}]\n---\nkind: Endpoints\nservice: web\nendpoints: [{{address: '{addr}'}}]\n"
    ));
    // A pooled client connection opened ahead of use: silent for longer than detectTimeout.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /late HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"path\":\"/late\"") || response.contains("\"path\": \"/late\""), "{response}");
    assert_eq!(
        proxy.metric_sum("trellis_protocol_detections_total", &["outcome=\"http1\""]),
        1.0,
        "{}",
        proxy.metrics()
    );
}

/// A minimal HTTP/1.1 keep-alive server that counts the connections it accepts.
fn counting_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A backend that answers the first request on each connection (keep-alive) and closes the
/// connection on the next one without answering, as a server closing an idle connection just
/// as a request arrives does. Counts the connections it accepted and those it closed so.
fn closing_backend() -> (SocketAddr, [std::sync::Arc<std::sync::atomic::AtomicUsize>; 2]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = [std::sync::Arc::new(AtomicUsize::new(0)), std::sync::Arc::new(AtomicUsize::new(0))];
    let [accepted, closed] = counters.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            let closed = closed.clone();
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = false;
                loop {
                    if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        if answered {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return; // closes without answering
                        }
                        buffer.drain(..end + 4);
                        answered = true;
                        if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                        continue;
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, counters)
}

#[test]
fn a_request_the_upstream_closes_an_idle_pooled_connection_under_is_sent_again_if_it_may_be() {
    let (backend, [accepted, closed]) = closing_backend();
    let count = |counter: &std::sync::atomic::AtomicUsize| counter.load(std::sync::atomic::Ordering::SeqCst);
    let listen = free_port();
    let _proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{listen}', service: web}}]\n---\nkind: Endpoints\nservice: web\nendpoints: [{{address: '{backend}'}}]\n"
    ));
    let status = |args: &[&str]| {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        curl(&all).0
    };
    let url = format!("http://127.0.0.1:{listen}/");
    assert_eq!(status(&[&url]), "200");
    // Idle long enough that the proxy expects the far side may close it (1 s).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The pooled connection is closed under the second GET: it goes again on a new one.
    assert_eq!(status(&[&url]), "200", "a GET on a connection the upstream closed was not sent again");
    assert_eq!((count(&accepted), count(&closed)), (2, 1), "(connections, closed under a request)");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A POST with a body is never sent twice: the client learns the upstream reset it.
    assert_eq!(status(&["--data", "x", &url]), "502");
    assert_eq!((count(&accepted), count(&closed)), (2, 2), "the POST was sent again");
}

#[test]
fn upstream_connections_are_reused_on_both_hops() {
    // Kept HTTP/1.1 between the proxies: pooled like the backend's connections.
    let (proxies, backend) = reuse_between_proxies("keep");
    assert!((1..=9).contains(&proxies), "54 requests, at most 8 at a time, opened {proxies} connections between the proxies");
    assert!((1..=9).contains(&backend), "54 requests, at most 8 at a time, opened {backend} backend connections");
    // Multiplexed: one HTTP/2 connection between the proxies carried all of them.
    let (proxies, backend) = reuse_between_proxies("multiplex");
    assert_eq!(proxies, 1, "HTTP/2 connections between the proxies");
    assert!((1..=9).contains(&backend), "54 requests, at most 8 at a time, opened {backend} backend connections");
}

/// Sends 30 requests one after another, each on a new client connection, then 3 rounds of 8
/// at once, through two proxies (the service's `meshHttp1` set to `mesh_http1`). Returns how
/// many connections were opened between the proxies and to the backend.
fn reuse_between_proxies(mesh_http1: &str) -> (usize, usize) {
    let (backend, accepted) = counting_backend();
    let (server_proxy, inbound) = inbound_proxy(backend);
    let listen = free_port();
    let _client_proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{listen}', service: web}}]\n---\nkind: Service\nname: web\nmeshHttp1: {mesh_http1}\n---\nkind: Endpoints\nservice: web\nendpoints: [{{address: '{inbound}', meshed: true}}]\n"
    ));
    for i in 0..30 {
        let (body, _) = curl(&[&format!("http://127.0.0.1:{listen}/seq/{i}")]);
        assert_eq!(body, "ok");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sequential requests did not reuse the backend connection"
    );
    assert_eq!(
        hop_connections(&server_proxy, "http1") + hop_connections(&server_proxy, "http2"),
        1.0,
        "sequential requests did not reuse the connection between the proxies:\n{}",
        server_proxy.metrics()
    );
    for _ in 0..3 {
        let urls: Vec<String> = (0..8).map(|i| format!("http://127.0.0.1:{listen}/par/{i}")).collect();
        let mut args = vec!["--parallel", "--parallel-immediate", "--parallel-max", "8"];
        args.extend(urls.iter().map(String::as_str));
        let (body, _) = curl(&args);
        assert_eq!(body, "ok".repeat(8));
    }
    let between = hop_connections(&server_proxy, "http1") + hop_connections(&server_proxy, "http2");
    (between as usize, accepted.load(std::sync::atomic::Ordering::SeqCst))
}
