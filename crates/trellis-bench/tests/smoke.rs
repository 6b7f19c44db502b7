//! The load generator's smoke run: a second of load in every mode against real backends,
//! so the benchmarks cannot rot. Not a measurement: it only checks that every request is
//! answered and counted, and that the report has its percentiles.

use std::process::Command;
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::process::cargo_bin;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(cargo_bin("trellis-bench"))
        .args(["--rate", "200", "--duration", "1s", "--connections", "4", "--output", "json"])
        .args(args)
        .output()
        .expect("run trellis-bench");
    assert!(out.status.success(), "trellis-bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn assert_clean(report: &serde_json::Value, what: &str) {
    assert_eq!(report["ok"], 200, "{what}: {report:#}");
    assert_eq!(report["errors"], 0, "{what}: {report:#}");
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(report["latency_ms"][q].as_f64().is_some_and(|v| v > 0.0), "{what}: {q} in {report:#}");
    }
}

#[test]
fn every_mode_runs_against_real_backends() {
    let (_http, http_addr) = spawn_backend(&["http"]);
    let (_grpc, grpc_addr) = spawn_backend(&["grpc"]);
    let url = format!("http://{http_addr}/bytes/1024");
    assert_clean(&bench(&["--url", &url]), "HTTP/1.1");
    assert_clean(&bench(&["--url", &url, "--http2"]), "HTTP/2");
    assert_clean(&bench(&["--url", &url, "--body-size", "4096"]), "HTTP/1.1 POST");
    let grpc = format!("http://{grpc_addr}/");
    assert_clean(&bench(&["--url", &grpc, "--grpc", "unary", "--body-size", "512"]), "gRPC unary");
    let stream = bench(&["--url", &grpc, "--grpc", "server-stream", "--stream-messages", "5", "--body-size", "100"]);
    assert_clean(&stream, "gRPC server stream");
    // Five replies of a 100-byte message each came back (framing and the server's name on top).
    assert!(stream["mean_body_bytes"].as_f64().unwrap() > 500.0, "{stream:#}");
}

#[test]
fn grpc_answers_without_an_ok_status_are_not_successes() {
    // An HTTP server answers the gRPC path with 200 and JSON, but no `grpc-status: 0`.
    let (_http, http_addr) = spawn_backend(&["http"]);
    let report = bench(&["--url", &format!("http://{http_addr}/"), "--grpc", "unary"]);
    assert_eq!(report["ok"], 0, "{report:#}");
    assert_eq!(report["non_2xx"], 200, "{report:#}");
}

#[test]
fn closed_loop_counts_every_answer_of_its_window() {
    let (_http, http_addr) = spawn_backend(&["http"]);
    for extra in [&[][..], &["--http2"][..]] {
        let out = Command::new(cargo_bin("trellis-bench"))
            .args(["--url", &format!("http://{http_addr}/bytes/64"), "--rate", "max", "--duration", "1s"])
            .args(["--warmup", "200ms", "--connections", "4", "--output", "json"])
            .args(extra)
            .output()
            .expect("run trellis-bench");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["target_rate"].is_null(), "{report:#}");
        assert_eq!(report["errors"], 0, "{extra:?}: {report:#}");
        let ok = report["ok"].as_u64().unwrap();
        assert!(ok > 0, "{report:#}");
        assert_eq!(report["intended"].as_u64(), Some(ok), "{report:#}");
        assert!(report["achieved_rate"].as_f64().unwrap() > 0.0, "{report:#}");
    }
    let out = Command::new(cargo_bin("trellis-bench"))
        .args(["--url", "http://127.0.0.1:1/", "--rate", "fast"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use a positive number of requests per second, or max"));
}
