//! Transparent capture across two network namespaces joined by a veth pair.
//!
//! Namespace A holds an unmodified client and its proxy; namespace B holds the servers and
//! theirs. Both have `trellis capture install` rules, so the client simply connects to B's
//! address and the traffic flows client → proxy A (outbound, SO_ORIGINAL_DST) → proxy B
//! (inbound, SO_ORIGINAL_DST) → server, without either side knowing.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use support::TestProxy;
use trellis_testkit::backend::spawn_backend_in_netns;
use trellis_testkit::netns::Netns;
use trellis_testkit::process::cargo_bin;

fn capture(ns: &Netns) {
    let out = ns
        .exec(cargo_bin("trellis"))
        .args([
            "capture",
            "install",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--exclude-inbound-ports",
            "22",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "capture install failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unmodified_clients_reach_servers_through_both_proxies() {
    if !Netns::available() {
        eprintln!("skipped: needs root and `ip netns`");
        return;
    }
    let (a, b) = Netns::pair("tp").expect("create namespaces");
    let server_ip = b.addr();
    let at = |port: u16| SocketAddr::from((server_ip, port));
    let (_web, web) = spawn_backend_in_netns(b.name(), at(8080), &["http", "--name", "web"]);
    let (_grpc, grpc) = spawn_backend_in_netns(b.name(), at(9090), &["grpc", "--name", "echo"]);
    let (_tcp, tcp) = spawn_backend_in_netns(b.name(), at(7000), &["tcp-echo"]);

    let server_proxy = TestProxy::start_in(
        Some(&b),
        "kind: Proxy\nadmin: '{admin}'\ninbound: {listen: '0.0.0.0:15006'}\noutbound: {listen: '127.0.0.1:15001'}\n",
    );
    let client_proxy = TestProxy::start_in(
        Some(&a),
        &format!(
            r#"
kind: Proxy
admin: '{{admin}}'
inbound: {{listen: '0.0.0.0:15006'}}
outbound: {{listen: '127.0.0.1:15001'}}
---
kind: Service
name: web
ports: [{{port: 8080, protocol: http}}]
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
endpoints: [{{address: '{web}', meshed: true}}]
---
kind: Endpoints
service: echo
endpoints: [{{address: '{grpc}', meshed: true}}]
---
kind: Endpoints
service: raw
endpoints: [{{address: '{tcp}', meshed: true}}]
"#
        ),
    );
    capture(&b);
    capture(&a);

    // HTTP/1.1 and HTTP/2 from curl, which knows nothing of the mesh.
    let body = a.run("curl", &["-s", "-S", "-m", "10", &format!("http://{web}/hello")]).expect("curl through the mesh");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["server"], "web");
    assert_eq!(json["version"], "HTTP/1.1");
    let body =
        a.run("curl", &["-s", "-S", "-m", "10", "--http2-prior-knowledge", &format!("http://{web}/h2")]).unwrap();
    assert!(body.contains("HTTP/2.0"), "{body}");

    // WebSocket, gRPC unary and bidi, raw TCP: from a thread inside namespace A.
    a.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let echoes = trellis_testkit::ws::ws_echo_roundtrip(&format!("ws://{web}/ws"), &["x", "y"]).await.unwrap();
            assert_eq!(echoes, vec!["x", "y"]);
            let mut client = trellis_testkit::grpc::echo_client(grpc).await.unwrap();
            let reply = client.unary(trellis_testkit::grpc::echo_request("hi")).await.unwrap().into_inner();
            assert_eq!(reply.server, "echo");
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let mut replies = client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
            for word in ["1", "2", "3"] {
                tx.send(trellis_testkit::grpc::echo_request(word)).await.unwrap();
                assert_eq!(replies.message().await.unwrap().unwrap().message, word);
            }
        });
    })
    .unwrap();
    let mut stream = a.tcp_connect(tcp).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(b"opaque bytes").unwrap();
    let mut buf = [0u8; 12];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"opaque bytes");
    drop(stream);

    // Both proxies really carried the traffic.
    let outbound_http =
        client_proxy.metric_sum("trellis_requests_total", &["direction=\"outbound\"", "service=\"web.default\""]);
    let outbound_grpc =
        client_proxy.metric_sum("trellis_requests_total", &["direction=\"outbound\"", "service=\"echo.default\""]);
    let inbound = server_proxy.metric_sum("trellis_requests_total", &["direction=\"inbound\""]);
    assert!(outbound_http >= 3.0, "client proxy saw {outbound_http} web requests:\n{}", client_proxy.metrics());
    assert!(outbound_grpc >= 2.0, "client proxy saw {outbound_grpc} gRPC calls");
    assert!(inbound >= 5.0, "server proxy saw {inbound} requests:\n{}", server_proxy.metrics());
    let tcp_out = client_proxy.metric_sum("trellis_tcp_connections_total", &["direction=\"outbound\""]);
    let tcp_in = server_proxy.metric_sum("trellis_tcp_connections_total", &["direction=\"inbound\""]);
    assert!(tcp_out >= 1.0 && tcp_in >= 1.0, "TCP not carried by both proxies: out {tcp_out}, in {tcp_in}");

    // Removing the rules takes the proxies out of the path.
    let out = a.exec(cargo_bin("trellis")).args(["capture", "remove"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.run("curl", &["-s", "-S", "-m", "10", &format!("http://{web}/direct")]).unwrap();
    let after =
        client_proxy.metric_sum("trellis_requests_total", &["direction=\"outbound\"", "service=\"web.default\""]);
    assert_eq!(after, outbound_http, "request still went through the client proxy after `capture remove`");
}
