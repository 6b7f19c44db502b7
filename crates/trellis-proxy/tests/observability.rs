//! Observability as an operator relies on it, through two real proxies:
//! client → proxy A (explicit listener for `web`) → proxy B (inbound) → backend.
//!
//! - `/metrics` passes `promtool check metrics`, and a real Prometheus server scraping both
//!   proxies answers PromQL with the request counts that were sent.
//! - Spans reach an OTLP/HTTP receiver with the right parent/child links across both hops,
//!   for W3C `traceparent` and B3 callers, and the application sees the context.
//! - Access logs follow the namespace's `kind: Telemetry`, one JSON line per request.

mod support;

use prost::Message;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{TempDir, TestProxy, free_port};
use trellis_protocol::otlp;
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::process::ChildProcess;

struct TwoHops {
    a: TestProxy,
    b: TestProxy,
    /// Proxy A's explicit listener for `web`.
    entry: SocketAddr,
    _backend: ChildProcess,
}

/// `telemetry` is added to both proxies' configurations (a `kind: Telemetry` document or
/// nothing); `a_extra` to proxy A's `kind: Proxy` document.
fn two_hops(telemetry: &str, a_extra: &str) -> TwoHops {
    let (backend, app) = spawn_backend(&["http", "--name", "web"]);
    let inbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b = TestProxy::start(&format!(
        "kind: Proxy\nname: web-proxy\nadmin: '{{admin}}'\ninbound: {{listen: '{inbound}', forward: '{app}'}}\n{telemetry}"
    ));
    let port = free_port();
    let a = TestProxy::start(&format!(
        r#"
kind: Proxy
name: client-proxy
admin: '{{admin}}'
explicit: [{{listen: '127.0.0.1:{port}', service: web}}]
{a_extra}
---
kind: Service
name: web
routes:
  - name: api
    match: {{path: {{prefix: /api}}}}
  - name: failing
    match: {{path: {{prefix: /status}}}}
---
kind: Endpoints
service: web
endpoints: [{{address: '{inbound}', meshed: true}}]
{telemetry}
"#
    ));
    TwoHops { a, b, entry: format!("127.0.0.1:{port}").parse().unwrap(), _backend: backend }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-s", "-m", "10"]).args(args).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("`{name}` is not installed; scripts/test installs it (apt-get install prometheus)");
}

#[test]
fn prometheus_scrapes_the_request_counts_that_were_sent() {
    let mesh = two_hops("", "");
    let (ok, failing) = (50, 7);
    for i in 0..ok {
        let path = if i % 2 == 0 { "/api/items" } else { "/" };
        assert!(curl(&[&format!("http://{}{path}", mesh.entry)]).contains("\"server\":\"web\""));
    }
    for _ in 0..failing {
        curl(&[&format!("http://{}/status/503", mesh.entry)]);
    }

    // The exposition is valid for Prometheus' own linter, on both proxies.
    let dir = TempDir::new();
    for proxy in [&mesh.a, &mesh.b] {
        let file = dir.0.join("metrics.txt");
        std::fs::write(&file, proxy.metrics()).unwrap();
        let out = Command::new(tool("promtool"))
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .expect("run promtool");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
    }

    // A real Prometheus scrapes both admin listeners; PromQL sees exactly what was sent.
    let web = free_port();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: trellis\n    static_configs: [{{targets: ['{}', '{}']}}]\n",
            mesh.a.admin, mesh.b.admin
        ),
    )
    .unwrap();
    let mut command = Command::new(tool("prometheus"));
    command.arg(format!("--config.file={}", config.display()));
    command.arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()));
    command.arg(format!("--web.listen-address=127.0.0.1:{web}"));
    let prometheus = ChildProcess::spawn(command).expect("start prometheus");
    let query = |promql: &str| -> Option<f64> {
        let out = curl(&[
            "-G",
            &format!("http://127.0.0.1:{web}/api/v1/query"),
            "--data-urlencode",
            &format!("query={promql}"),
        ]);
        let json: serde_json::Value = serde_json::from_str(&out).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let expectations = [
        (r#"sum(trellis_requests_total{direction="outbound",service="web.default"})"#, (ok + failing) as f64),
        (r#"sum(trellis_requests_total{direction="outbound",service="web.default",route="api"})"#, (ok / 2) as f64),
        (r#"sum(trellis_requests_total{direction="inbound",status_class="5xx"})"#, failing as f64),
        (r#"sum(trellis_request_duration_seconds_count{direction="inbound"})"#, (ok + failing) as f64),
        (r#"count(up{job="trellis"} == 1)"#, 2.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (promql, want) in expectations {
        loop {
            let got = query(promql);
            if got == Some(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PromQL `{promql}` gave {got:?}, expected {want}; prometheus output:\n{}",
                prometheus.output_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Spans received by the test's OTLP/HTTP receiver.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ResourceSpan>>>);

/// A span with its resource's attributes.
type ResourceSpan = (Vec<otlp::KeyValue>, otlp::Span);

impl Received {
    fn spans(&self) -> Vec<ResourceSpan> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until spans of `trace` from both proxies arrived: (client span, server span).
    fn pair(&self, trace: &[u8]) -> (otlp::Span, otlp::Span) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<otlp::Span> =
                self.spans().into_iter().map(|(_, s)| s).filter(|s| s.trace_id == trace).collect();
            let client = spans.iter().find(|s| s.kind == otlp::span::SpanKind::Client as i32);
            let server = spans.iter().find(|s| s.kind == otlp::span::SpanKind::Server as i32);
            if let (Some(c), Some(s)) = (client, server) {
                assert_eq!(spans.len(), 2, "one span per proxy: {spans:#?}");
                return (c.clone(), s.clone());
            }
            assert!(Instant::now() < deadline, "spans of trace {} did not arrive: {spans:#?}", hex(trace));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A minimal OTLP/HTTP receiver: POST /v1/traces with a protobuf body.
fn otlp_receiver() -> (SocketAddr, Received, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let store = received.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let path_ok = request.uri().path() == "/v1/traces"
                                && request.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let status = match otlp::ExportTraceServiceRequest::decode(body) {
                                Ok(export) if path_ok => {
                                    for resource_spans in export.resource_spans {
                                        let resource =
                                            resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
                                        for scope in resource_spans.scope_spans {
                                            for span in scope.spans {
                                                store.0.lock().unwrap().push((resource.clone(), span));
                                            }
                                        }
                                    }
                                    200
                                }
                                _ => 400,
                            };
                            let reply = otlp::ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (addr, received, thread)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn attribute<'a>(attributes: &'a [otlp::KeyValue], key: &str) -> Option<&'a otlp::any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

/// The request headers the backend reported.
fn backend_headers(json: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("backend JSON {json:?}: {e}"));
    value["headers"].clone()
}

fn header<'a>(headers: &'a serde_json::Value, name: &str) -> &'a str {
    let value = &headers[name];
    value.as_str().or_else(|| value[0].as_str()).unwrap_or_else(|| panic!("header {name} missing in {headers}"))
}

#[test]
fn spans_link_parent_and_child_across_two_hops() {
    let (collector, received, _thread) = otlp_receiver();
    let telemetry = format!(
        "---\nkind: Telemetry\nname: default\ntracing: {{endpoint: 'http://{collector}/v1/traces', samplingPercent: 100}}\n"
    );
    let mesh = two_hops(&telemetry, "");

    // W3C: the caller's span is the parent of proxy A's client span, which is the parent of
    // proxy B's server span, which the application sees as its parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let out = curl(&[
        "-H",
        &format!("traceparent: 00-{trace}-{caller_span}-01"),
        "-H",
        "tracestate: vendor=opaque",
        &format!("http://{}/api/items", mesh.entry),
    ]);
    let seen = backend_headers(&out);
    let (client, server) = received.pair(&unhex(trace));
    assert_eq!(hex(&client.parent_span_id), caller_span);
    assert_eq!(server.parent_span_id, client.span_id, "B's server span is a child of A's client span");
    assert_eq!(header(&seen, "traceparent"), format!("00-{trace}-{}-01", hex(&server.span_id)));
    assert_eq!(header(&seen, "tracestate"), "vendor=opaque", "tracestate passes through");
    assert_eq!(client.name, "GET web.default");
    assert!(client.start_time_unix_nano <= server.start_time_unix_nano);
    assert!(server.end_time_unix_nano <= client.end_time_unix_nano, "the server span ends within the client span");
    assert!(
        matches!(attribute(&client.attributes, "trellis.route"), Some(otlp::any_value::Value::StringValue(r)) if r == "api")
    );
    assert!(matches!(
        attribute(&server.attributes, "http.response.status_code"),
        Some(otlp::any_value::Value::IntValue(200))
    ));
    let resources: Vec<String> = received
        .spans()
        .iter()
        .filter_map(|(resource, _)| match attribute(resource, "service.name") {
            Some(otlp::any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(
        resources.contains(&"client-proxy".to_string()) && resources.contains(&"web-proxy".to_string()),
        "{resources:?}"
    );

    // B3 (multi-header, 64-bit trace id): the same links, and the app gets B3 headers back.
    curl(&[
        "-H",
        "x-b3-traceid: a3ce929d0e0e4736",
        "-H",
        "x-b3-spanid: 1111111111111111",
        "-H",
        "x-b3-sampled: 1",
        &format!("http://{}/status/500", mesh.entry),
    ]);
    let b3_trace = unhex("0000000000000000a3ce929d0e0e4736");
    let (client, server) = received.pair(&b3_trace);
    assert_eq!(hex(&client.parent_span_id), "1111111111111111");
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(
        client.status.as_ref().map(|s| s.code),
        Some(otlp::status::StatusCode::Error as i32),
        "a 500 marks the span as an error"
    );

    // No context: proxy A starts the trace (sampled at 100%) and B continues it.
    let out = curl(&[&format!("http://{}/api/new", mesh.entry)]);
    let seen = backend_headers(&out);
    let traceparent = header(&seen, "traceparent").to_string();
    let new_trace = unhex(traceparent.split('-').nth(1).unwrap());
    let (client, server) = received.pair(&new_trace);
    assert!(client.parent_span_id.is_empty(), "A's span is the root");
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(header(&seen, "x-b3-spanid"), hex(&server.span_id), "B3 headers are added for the app too");
    assert_eq!(header(&seen, "x-b3-parentspanid"), hex(&client.span_id));

    // A caller that decided not to sample is obeyed by both proxies, and the decision travels on.
    let unsampled = "11111111111111111111111111111111";
    let out =
        curl(&["-H", &format!("traceparent: 00-{unsampled}-00f067aa0ba902b7-00"), &format!("http://{}/", mesh.entry)]);
    assert!(header(&backend_headers(&out), "traceparent").ends_with("-00"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(received.spans().iter().all(|(_, s)| s.trace_id != unhex(unsampled)), "an unsampled trace exports nothing");
    let exported = mesh.a.metric_sum("trellis_spans_total", &["result=\"exported\""]);
    assert!(exported >= 3.0, "A counts exported spans: {exported}");
}

#[test]
fn access_logs_follow_the_namespace_telemetry() {
    let dir = TempDir::new();
    let log = dir.0.join("access.log");
    let a_extra = format!("accessLog: '{}'", log.display());
    // The proxy's setting turns logs on, but the namespace's Telemetry turns them off.
    let off = "---\nkind: Telemetry\nname: default\naccessLog: {enabled: false}\n";
    let mesh = two_hops(off, &a_extra);
    curl(&[&format!("http://{}/api/quiet", mesh.entry)]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "", "logging is off for the namespace");

    // Errors only: a success is not logged, a failure is, with every documented field.
    let a_config = std::fs::read_to_string(&mesh.a.config).unwrap();
    let errors_only = a_config.replace("accessLog: {enabled: false}", "accessLog: {errorsOnly: true}");
    mesh.a.reconfigure(&errors_only.replace(&mesh.a.admin.to_string(), "{admin}"));
    curl(&[&format!("http://{}/api/fine", mesh.entry)]);
    curl(&[
        "-H",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "--data-binary",
        "12345",
        &format!("http://{}/status/502", mesh.entry),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "only the failure is logged");
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["status"], 502);
    assert_eq!(entry["path"], "/status/502");
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["route"], "failing");
    assert_eq!(entry["service"], "web.default");
    assert_eq!(entry["upstream"], "web.default");
    assert_eq!(entry["direction"], "outbound");
    assert_eq!(entry["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(entry["request_bytes"], 5);
    assert!(entry["response_bytes"].as_u64().unwrap() > 0);
    assert_eq!(entry["retries"], 0);
    for field in [
        "time",
        "endpoint",
        "source_identity",
        "destination_identity",
        "latency_ms",
        "duration_ms",
        "protocol",
        "attempts",
        "error",
    ] {
        assert!(entry.get(field).is_some(), "field {field} missing: {entry}");
    }
}
