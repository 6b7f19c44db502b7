//! Routing as a user relies on it: weighted splits, header matches, mirroring, rewrites,
//! redirects, direct responses, and the proxy's own error answers.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use support::{TestProxy, free_port};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::http;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Sends `n` GETs (up to 16 at a time) and counts responses by `x-backend`.
async fn spread(url: &str, n: usize, headers: &'static [(&'static str, &'static str)]) -> HashMap<String, usize> {
    let client = http::client(false);
    let mut counts = HashMap::new();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt;
    for i in 0..n {
        let mut req = ::http::Request::get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(http::full_body(bytes::Bytes::new())).unwrap();
        pending.push(client.request(req));
        if pending.len() >= 16 || i == n - 1 {
            while let Some(result) = pending.next().await {
                let response = result.expect("request through the proxy");
                assert_eq!(response.status(), 200);
                let backend =
                    response.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                *counts.entry(backend).or_default() += 1;
                if pending.len() < 8 {
                    break;
                }
            }
        }
    }
    while let Some(result) = futures_util::StreamExt::next(&mut pending).await {
        let response = result.expect("request through the proxy");
        let backend = response.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
        *counts.entry(backend).or_default() += 1;
    }
    counts
}

fn reviews_config(port: u16, v1: SocketAddr, v2: SocketAddr, shadow: SocketAddr) -> String {
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
  - name: canary
    match: {{headers: {{x-canary: "1"}}}}
    to: [{{subset: v2}}]
  - name: mirrored
    match: {{path: {{prefix: /mirror}}}}
    to: [{{subset: v1}}]
    mirror: {{service: shadow, percent: 100}}
  - name: rewritten
    match: {{path: {{prefix: /old-api}}}}
    rewrite: {{prefix: /api}}
    to: [{{subset: v1}}]
    requestHeaders: {{set: {{x-route: rewritten}}, remove: [x-secret]}}
    responseHeaders: {{add: {{x-served-by: trellis}}}}
  - name: moved
    match: {{path: {{exact: /moved}}}}
    redirect: {{path: /new-home, status: 301}}
  - name: health
    match: {{path: {{exact: /healthz}}, method: GET}}
    directResponse: {{status: 200, body: "ok", headers: {{content-type: text/plain}}}}
  - name: split
    to: [{{subset: v1, weight: 90}}, {{subset: v2, weight: 10}}]
---
kind: Endpoints
service: reviews
endpoints:
  - {{address: '{v1}', labels: {{version: v1}}}}
  - {{address: '{v2}', labels: {{version: v2}}}}
---
kind: Endpoints
service: shadow
endpoints: [{{address: '{shadow}'}}]
"#
    )
}

#[test]
fn weighted_split_header_match_and_mirror() {
    let (_v1, v1) = spawn_backend(&["http", "--name", "v1"]);
    let (_v2, v2) = spawn_backend(&["http", "--name", "v2"]);
    let (_shadow, shadow) = spawn_backend(&["http", "--name", "shadow"]);
    let port = free_port();
    let proxy = TestProxy::start(&reviews_config(port, v1, v2, shadow));
    let base = format!("http://127.0.0.1:{port}");
    rt().block_on(async {
        // 90/10 over 2,000 requests, within ±3 points.
        let counts = spread(&format!("{base}/split"), 2000, &[]).await;
        let v2_share = *counts.get("v2").unwrap_or(&0) as f64 / 2000.0 * 100.0;
        println!("split counts: {counts:?} (v2 {v2_share:.1}%)");
        assert!((7.0..=13.0).contains(&v2_share), "v2 got {v2_share:.1}% of traffic, expected 10 ± 3: {counts:?}");
        assert_eq!(counts.get("v1").unwrap_or(&0) + counts.get("v2").unwrap_or(&0), 2000);

        // A header match routes deterministically.
        let counts = spread(&format!("{base}/split"), 200, &[("x-canary", "1")]).await;
        assert_eq!(counts.get("v2"), Some(&200), "{counts:?}");

        // Mirroring: clients see only the primary; the mirror gets a copy of each request.
        let before = shadow_requests(shadow).await;
        let counts = spread(&format!("{base}/mirror/x"), 50, &[]).await;
        assert_eq!(counts.get("v1"), Some(&50), "clients must only see the primary: {counts:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shadow_requests(shadow).await - before < 50 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(shadow_requests(shadow).await - before, 50);
    });
    assert_eq!(proxy.metric_sum("trellis_mirror_requests_total", &["outcome=\"sent\""]), 50.0, "{}", proxy.metrics());
}

async fn shadow_requests(addr: SocketAddr) -> u64 {
    let r = http::get(&format!("http://{addr}/__stats")).await.unwrap();
    r.json().unwrap()["requests"].as_u64().unwrap()
}

#[test]
fn rewrites_redirects_and_direct_responses() {
    let (_v1, v1) = spawn_backend(&["http", "--name", "v1"]);
    let (_v2, v2) = spawn_backend(&["http", "--name", "v2"]);
    let port = free_port();
    let _proxy = TestProxy::start(&reviews_config(port, v1, v2, v2));
    let base = format!("http://127.0.0.1:{port}");
    rt().block_on(async {
        let r = http::request(
            ::http::Method::GET,
            &format!("{base}/old-api/items?page=2"),
            &[("x-secret", "s")],
            bytes::Bytes::new(),
            false,
        )
        .await
        .unwrap();
        let json = r.json().unwrap();
        assert_eq!(json["path"], "/api/items?page=2");
        assert_eq!(json["headers"]["x-route"], "rewritten");
        assert!(json["headers"].get("x-secret").is_none());
        assert_eq!(r.header("x-served-by"), Some("trellis"));

        let r = http::get(&format!("{base}/moved?a=b")).await.unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.header("location"), Some(format!("http://127.0.0.1:{port}/new-home?a=b").as_str()));

        let r = http::get(&format!("{base}/healthz")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str(), r.header("content-type")), (200, "ok", Some("text/plain")));
    });
}

#[test]
fn proxy_errors_name_their_reason() {
    let dead = free_port(); // nothing listens here
    let (port, empty_port) = (free_port(), free_port());
    let logs = support::TempDir::new();
    let log_path = logs.0.join("access.log");
    let proxy = TestProxy::start(&format!(
        r#"
kind: Proxy
admin: '{{admin}}'
accessLog: '{}'
explicit:
  - {{listen: '127.0.0.1:{port}', service: gone}}
  - {{listen: '127.0.0.1:{empty_port}', service: empty}}
---
kind: Endpoints
service: gone
endpoints: [{{address: '127.0.0.1:{dead}'}}]
---
kind: Endpoints
service: empty
endpoints: []
"#,
        log_path.display()
    ));
    rt().block_on(async {
        let r = http::get(&format!("http://127.0.0.1:{port}/")).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(
            r.header("x-trellis-error"),
            Some(format!("connect-failure; upstream=gone.default; endpoint=127.0.0.1:{dead}").as_str())
        );
        assert!(r.text().contains("connect-failure"), "{}", r.text());

        let r = http::get(&format!("http://127.0.0.1:{empty_port}/")).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-trellis-error"), Some("no-healthy-endpoints; upstream=empty.default"));

        // gRPC callers get a gRPC status instead.
        let r = http::request(
            ::http::Method::POST,
            &format!("http://127.0.0.1:{empty_port}/pkg.Svc/Call"),
            &[("content-type", "application/grpc")],
            bytes::Bytes::new(),
            true,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("grpc-status"), Some("14"));
    });
    assert_eq!(proxy.metric_sum("trellis_proxy_errors_total", &["reason=\"connect-failure\""]), 1.0);
    assert_eq!(proxy.metric_sum("trellis_proxy_errors_total", &["reason=\"no-healthy-endpoints\""]), 2.0);

    // The access log carries the same reasons, one JSON line per request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["error"], "connect-failure");
    assert_eq!(lines[0]["endpoint"], format!("127.0.0.1:{dead}"));
    assert_eq!(lines[0]["status"], 503);
    assert_eq!(lines[0]["service"], "gone.default");
    assert_eq!(lines[2]["error"], "no-healthy-endpoints");
    assert_eq!(lines[2]["protocol"], "HTTP/2");
}

#[test]
fn consistent_hashing_keeps_a_key_on_one_endpoint() {
    let backends: Vec<_> = ["a", "b", "c"].iter().map(|n| spawn_backend(&["http", "--name", n])).collect();
    for algorithm in ["ring-hash", "maglev"] {
        let port = free_port();
        let endpoints: Vec<String> = backends.iter().map(|(_, addr)| format!("{{address: '{addr}'}}")).collect();
        let _proxy = TestProxy::start(&format!(
            "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{port}', service: carts}}]\n---\nkind: Service\nname: carts\nloadBalancer: {{algorithm: {algorithm}, hashOn: {{header: x-user}}}}\n---\nkind: Endpoints\nservice: carts\nendpoints: [{}]\n",
            endpoints.join(", ")
        ));
        rt().block_on(async {
            let mut owners = std::collections::HashSet::new();
            for user in 0..20 {
                let user = format!("user-{user}");
                let mut seen = std::collections::HashSet::new();
                for _ in 0..10 {
                    let r = http::request(
                        ::http::Method::GET,
                        &format!("http://127.0.0.1:{port}/cart"),
                        &[("x-user", &user)],
                        bytes::Bytes::new(),
                        false,
                    )
                    .await
                    .unwrap();
                    seen.insert(r.header("x-backend").unwrap().to_string());
                }
                assert_eq!(seen.len(), 1, "{algorithm}: {user} was spread over {seen:?}");
                owners.extend(seen);
            }
            assert!(owners.len() >= 2, "{algorithm}: 20 users all landed on {owners:?}");
        });
    }
}

#[test]
fn tls_passes_through_by_sni_untouched() {
    let dir = support::TempDir::new();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=secure.default"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let tls_port = free_port();
    let mut server = std::process::Command::new("openssl");
    server
        .args(["s_server", "-quiet", "-www", "-accept", &tls_port.to_string()])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let _server = trellis_testkit::process::ChildProcess::spawn(server).unwrap();
    trellis_testkit::http::wait_for_tcp_blocking(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();

    // Clients reach the outbound listener directly here; with capture it is the same path.
    let outbound = free_port();
    let proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\noutbound: {{listen: '127.0.0.1:{outbound}'}}\n---\nkind: Service\nname: secure\nnamespace: default\nports: [{{port: 443, protocol: tls}}]\n---\nkind: Endpoints\nservice: secure\nendpoints: [{{address: '127.0.0.1:{tls_port}'}}]\n"
    ));
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "-m", "10", "--cacert"])
        .arg(&cert)
        .args([
            "--resolve",
            &format!("secure.default:{outbound}:127.0.0.1"),
            &format!("https://secure.default:{outbound}/"),
        ])
        .output()
        .unwrap();
    // The certificate verified against the server's own CA: the proxy did not terminate TLS.
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("s_server"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(proxy.metric_sum("trellis_protocol_detections_total", &["outcome=\"tls\""]), 1.0);
    assert_eq!(
        proxy.metric_sum("trellis_tcp_connections_total", &["service=\"secure.default\""]),
        1.0,
        "{}",
        proxy.metrics()
    );
}
