//! Retries, retry budgets, timeouts and latency-aware balancing, against real backends.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{TestProxy, free_port};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::http;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Sends `n` GETs, `concurrency` at a time; returns statuses and `x-backend` counts.
async fn load(url: &str, n: usize, concurrency: usize) -> (HashMap<u16, usize>, HashMap<String, usize>) {
    use futures_util::StreamExt;
    let client = http::client(false);
    let results: Vec<(u16, String)> = futures_util::stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            let url = url.to_string();
            async move {
                let req = ::http::Request::get(url).body(http::full_body(bytes::Bytes::new())).unwrap();
                let response = client.request(req).await.expect("request through the proxy");
                let backend =
                    response.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
                (response.status().as_u16(), backend)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut statuses = HashMap::new();
    let mut backends = HashMap::new();
    for (status, backend) in results {
        *statuses.entry(status).or_default() += 1;
        *backends.entry(backend).or_default() += 1;
    }
    (statuses, backends)
}

async fn served(addr: SocketAddr) -> u64 {
    http::get(&format!("http://{addr}/__stats")).await.unwrap().json().unwrap()["requests"].as_u64().unwrap()
}

fn two_backend_config(port: u16, a: SocketAddr, b: SocketAddr, route: &str, lb: &str) -> String {
    format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{port}', service: api}}]\n---\nkind: Service\nname: api\nloadBalancer: {{algorithm: {lb}}}\nroutes:\n  - {route}\n---\nkind: Endpoints\nservice: api\nendpoints: [{{address: '{a}'}}, {{address: '{b}'}}]\n"
    )
}

#[test]
fn retries_hide_a_failing_backend() {
    let (_good, good) = spawn_backend(&["http", "--name", "good"]);
    let (_bad, bad) = spawn_backend(&["http", "--name", "bad", "--status", "503"]);
    let port = free_port();
    // Half the first attempts fail, so the budget must allow a retry for every request.
    let proxy = TestProxy::start(&two_backend_config(
        port,
        good,
        bad,
        "{name: all, retries: {attempts: 2, on: [5xx], budget: {ratio: 100%}}}",
        "round-robin",
    ));
    rt().block_on(async {
        let (statuses, backends) = load(&format!("http://127.0.0.1:{port}/"), 400, 8).await;
        assert_eq!(statuses.get(&200), Some(&400), "statuses {statuses:?}, backends {backends:?}");
        assert!(served(bad).await > 0, "the failing backend was never tried");
    });
    assert!(proxy.metric_sum("trellis_retries_total", &["route=\"all\""]) > 0.0);
}

#[test]
fn retry_budget_caps_extra_attempts_when_everything_fails() {
    let (_a, a) = spawn_backend(&["http", "--name", "a", "--status", "503"]);
    let (_b, b) = spawn_backend(&["http", "--name", "b", "--status", "503"]);
    let port = free_port();
    let proxy = TestProxy::start(&two_backend_config(
        port,
        a,
        b,
        "{name: all, retries: {attempts: 3, on: [5xx], backoff: {base: 1ms, max: 2ms}, budget: {ratio: 20%, minPerSecond: 1}}}",
        "round-robin",
    ));
    rt().block_on(async {
        let requests = 500;
        let (statuses, _) = load(&format!("http://127.0.0.1:{port}/"), requests, 8).await;
        assert_eq!(statuses.get(&503), Some(&requests));
        let attempts = served(a).await + served(b).await;
        let extra = attempts - requests as u64;
        // 20% of the requests plus 1 per second over the 10-second window.
        let allowed = (requests as f64 * 0.2) as u64 + 10;
        println!("{requests} requests made {attempts} attempts: {extra} retries, budget {allowed}");
        assert!(extra > 0, "no retries at all");
        assert!(extra <= allowed, "{extra} retries exceed the budget of {allowed}");
    });
    assert!(proxy.metric_sum("trellis_retry_budget_exhausted_total", &[]) > 0.0, "{}", proxy.metrics());
}

#[test]
fn route_timeout_answers_504_with_its_reason() {
    let (_slow, slow) = spawn_backend(&["http", "--name", "slow", "--delay", "5s"]);
    let port = free_port();
    let _proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{port}', service: slow}}]\n---\nkind: Service\nname: slow\nroutes: [{{timeout: 200ms}}]\n---\nkind: Endpoints\nservice: slow\nendpoints: [{{address: '{slow}'}}]\n"
    ));
    rt().block_on(async {
        let started = Instant::now();
        let r = http::get(&format!("http://127.0.0.1:{port}/")).await.unwrap();
        let elapsed = started.elapsed();
        println!("timeout answered in {elapsed:?}");
        assert_eq!(r.status, 504);
        assert_eq!(r.header("x-trellis-error"), Some("request-timeout; upstream=slow.default"));
        // Far below the backend's 5 s: the proxy answered on its own deadline.
        assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    });
}

#[test]
fn peak_ewma_prefers_the_fast_backend() {
    let (_fast, fast) = spawn_backend(&["http", "--name", "fast"]);
    let (_slow, slow) = spawn_backend(&["http", "--name", "slow", "--delay", "50ms"]);
    let port = free_port();
    let _proxy = TestProxy::start(&two_backend_config(port, fast, slow, "{name: all}", "peak-ewma"));
    rt().block_on(async {
        let (statuses, backends) = load(&format!("http://127.0.0.1:{port}/"), 400, 4).await;
        assert_eq!(statuses.get(&200), Some(&400));
        let share = *backends.get("fast").unwrap_or(&0) as f64 / 400.0;
        println!("peak-EWMA split: {backends:?}");
        assert!(share >= 0.8, "fast backend got only {:.0}%: {backends:?}", share * 100.0);
    });
}

#[test]
fn per_try_timeout_moves_a_stuck_attempt_to_another_endpoint() {
    let (_fast, fast) = spawn_backend(&["http", "--name", "fast"]);
    let (_stuck, stuck) = spawn_backend(&["http", "--name", "stuck", "--delay", "5s"]);
    let port = free_port();
    let _proxy = TestProxy::start(&two_backend_config(
        port,
        fast,
        stuck,
        "{name: all, timeout: 3s, retries: {attempts: 2, on: [gateway-error], perTryTimeout: 100ms, budget: {ratio: 100%}}}",
        "round-robin",
    ));
    rt().block_on(async {
        let (statuses, backends) = load(&format!("http://127.0.0.1:{port}/"), 20, 4).await;
        assert_eq!(statuses.get(&200), Some(&20), "{statuses:?}");
        assert_eq!(backends.get("fast"), Some(&20), "{backends:?}");
        assert!(served(stuck).await > 0, "the stuck backend was never tried");
    });
}

#[test]
fn peak_ewma_steers_away_from_an_endpoint_that_is_down() {
    let (_live, live) = spawn_backend(&["http", "--name", "live"]);
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let _proxy = TestProxy::start(&two_backend_config(port, live, dead, "{name: all}", "peak-ewma"));
    rt().block_on(async {
        let (statuses, _) = load(&format!("http://127.0.0.1:{port}/"), 200, 1).await;
        let failed = statuses.get(&503).copied().unwrap_or(0);
        println!("statuses with one endpoint down: {statuses:?}");
        // The first failure marks the endpoint as very slow; later requests avoid it.
        assert!(failed <= 3, "{failed} of 200 requests went to the dead endpoint: {statuses:?}");
    });
}
