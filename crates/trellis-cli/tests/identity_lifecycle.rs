//! Certificates over time, under steady traffic: one-minute certificates renewed again and
//! again with no failed request; the control plane stopped, the proxies serving until their
//! certificates expire and then refusing, saying why; and a root rotation with no failed
//! request.
//!
//! The service is declared `tcp`, so every client connection makes a new mutual TLS
//! connection between the proxies: each request is a fresh handshake that must verify
//! against the certificates and bundle of that moment.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Mesh, ReviewsAndWeb, admin_config, http_status, http_text, wait_until};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::process::ChildProcess;

struct Sidecars {
    reviews: ChildProcess,
    web: ChildProcess,
    reviews_admin: u16,
    web_admin: u16,
    /// The web proxy's explicit listener for `reviews`.
    entry: SocketAddr,
    _backend: ChildProcess,
}

fn sidecars(mesh: &Mesh) -> Sidecars {
    let (backend, backend_addr) = spawn_backend(&["http", "--name", "reviews"]);
    mesh.apply("kind: Service\nname: reviews\nnamespace: shop\nports: [{port: 80, protocol: tcp}]\n");
    mesh.apply("kind: Policy\nname: shop-strict\nnamespace: shop\nmtls: strict\n");
    let pair = mesh.reviews_and_web(backend_addr);
    let entry: SocketAddr = format!("127.0.0.1:{}", pair.explicit).parse().unwrap();
    wait_until("a first request through both proxies", Duration::from_secs(30), || one_request(entry));
    let ReviewsAndWeb { reviews, web, reviews_admin, web_admin, .. } = pair;
    Sidecars { reviews, web, reviews_admin, web_admin, entry, _backend: backend }
}

/// One HTTP/1.1 request on a new connection; true on a 200.
fn one_request(entry: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&entry, Duration::from_secs(2)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    if stream.write_all(b"GET /items HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

fn unix_now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Steady traffic (about 25 new connections a second) until stopped; each request's start
/// time (unix seconds) and outcome.
struct Traffic {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(f64, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(entry: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = unix_now_f64();
                    let ok = one_request(entry);
                    results.lock().unwrap().push((started, ok));
                    std::thread::sleep(Duration::from_millis(40));
                }
            })
        };
        Traffic { stop, results, thread: Some(thread) }
    }

    fn snapshot(&self) -> Vec<(f64, bool)> {
        self.results.lock().unwrap().clone()
    }

    fn stop(mut self) -> Vec<(f64, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.snapshot()
    }
}

fn identity_status(admin: u16) -> serde_json::Value {
    admin_config(admin).map(|c| c["identity"].clone()).unwrap_or_default()
}

#[test]
fn one_minute_certificates_renew_under_traffic_then_expire_without_the_control_plane() {
    let mut mesh = Mesh::start("renewal", "60s");
    let mut sidecars = sidecars(&mesh);
    let traffic = Traffic::start(sidecars.entry);

    // Three minutes of traffic across several renewals of both certificates.
    std::thread::sleep(Duration::from_secs(180));
    let during = traffic.snapshot();
    let failed: Vec<_> = during.iter().filter(|(_, ok)| !ok).collect();
    let renewals: Vec<u64> = [sidecars.reviews_admin, sidecars.web_admin]
        .iter()
        .map(|admin| identity_status(*admin)["renewals"].as_u64().unwrap_or(0))
        .collect();
    println!("3 minutes: {} requests, {} failed; renewals reviews/web: {renewals:?}", during.len(), failed.len());
    assert!(during.len() > 1500, "too little traffic: {}", during.len());
    assert!(failed.is_empty(), "{} of {} requests failed while certificates renewed", failed.len(), during.len());
    assert!(renewals.iter().all(|r| *r >= 3), "each proxy should have renewed at least 3 times: {renewals:?}");

    // The control plane goes away: both keep serving until the first certificate expires.
    mesh.stop_control();
    let stopped_at = unix_now_f64();
    let expiry = [sidecars.reviews_admin, sidecars.web_admin]
        .iter()
        .map(|admin| identity_status(*admin)["notAfter"].as_i64().expect("notAfter"))
        .min()
        .unwrap() as f64;
    assert!(expiry > stopped_at + 1.0, "a certificate was about to expire already");
    let (admin, proxy) = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(Instant::now() < deadline, "no proxy became unready after its certificate expired");
            if http_status(&format!("http://127.0.0.1:{}/ready", sidecars.reviews_admin)) == Some(503) {
                break (sidecars.reviews_admin, &mut sidecars.reviews);
            }
            if http_status(&format!("http://127.0.0.1:{}/ready", sidecars.web_admin)) == Some(503) {
                break (sidecars.web_admin, &mut sidecars.web);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let became_unready = unix_now_f64();
    let said_why = "the workload certificate has expired and could not be renewed";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.output_tail().contains(said_why) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = proxy.output_tail();
    let ready = http_text(&format!("http://127.0.0.1:{admin}/ready"));
    std::thread::sleep(Duration::from_secs(2));
    let all = traffic.stop();
    println!(
        "control plane stopped at {stopped_at:.1}; first expiry {expiry:.0}; unready at {became_unready:.1}; /ready: {}",
        ready.trim()
    );
    assert!(became_unready >= expiry - 1.0, "unready before the certificate expired");
    assert!(ready.contains("expired"), "/ready should say the certificate expired: {ready}");
    assert!(log.contains(said_why), "the log should say why mTLS stops: {log}");
    // Served until expiry...
    let before: Vec<_> = all.iter().filter(|(t, _)| *t > stopped_at && *t < expiry - 2.0).collect();
    assert!(!before.is_empty());
    assert!(before.iter().all(|(_, ok)| *ok), "requests failed before the certificate expired");
    // ...then refused.
    let after: Vec<_> = all.iter().filter(|(t, _)| *t > expiry + 1.0).collect();
    assert!(!after.is_empty() && after.iter().all(|(_, ok)| !ok), "requests after expiry must be refused");
    sidecars.reviews.kill();
    sidecars.web.kill();
}

#[test]
fn root_rotation_under_traffic_fails_no_request() {
    let mesh = Mesh::start("rotation", "1h");
    let mut sidecars = sidecars(&mesh);
    let before: serde_json::Value = serde_json::from_str(&mesh.cli(&["ca", "status", "-o", "json"])).unwrap();
    let old = before["signer"].as_str().unwrap().to_string();
    let traffic = Traffic::start(sidecars.entry);
    std::thread::sleep(Duration::from_secs(2));
    let new = mesh.cli(&["ca", "rotate", "--timeout", "90s"]).trim().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let results = traffic.stop();
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    println!("rotation {old} -> {new}: {} requests, {failed} failed", results.len());
    assert_ne!(old, new);
    assert!(results.len() > 50, "too little traffic: {}", results.len());
    assert_eq!(failed, 0, "requests failed during root rotation");
    let after: serde_json::Value = serde_json::from_str(&mesh.cli(&["ca", "status", "-o", "json"])).unwrap();
    let roots: Vec<&str> =
        after["roots"].as_array().unwrap().iter().map(|r| r["fingerprint"].as_str().unwrap()).collect();
    assert_eq!(roots, vec![new.as_str()], "only the new root is trusted");
    for admin in [sidecars.reviews_admin, sidecars.web_admin] {
        assert_eq!(identity_status(admin)["signer"], new.as_str(), "proxy renewed under the new root");
    }
    // New connections still work with the old root gone.
    assert!(one_request(sidecars.entry));
    sidecars.reviews.kill();
    sidecars.web.kill();
}
