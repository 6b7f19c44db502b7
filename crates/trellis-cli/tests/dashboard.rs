//! The web dashboard in a real browser: headless Chromium (Debian's) driven by Playwright
//! loads the dashboard of a running mesh with traffic, and must show the services in the
//! graph with non-zero request rates and the edge between them. A screenshot is saved in
//! `test-artifacts/dashboard.png`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::{Mesh, http_status, wait_until};
use trellis_testkit::backend::spawn_backend;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[test]
fn dashboard_shows_the_services_with_traffic() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}; scripts/test runs `npm ci` there",
        dir.display()
    );
    assert!(Path::new("/usr/bin/chromium").exists(), "Chromium is missing; scripts/test installs the Debian package");

    let mesh = Mesh::start("dashboard", "1h");
    mesh.apply("kind: Service\nname: reviews\nnamespace: shop\n");
    let (_backend, backend_addr) = spawn_backend(&["http", "--name", "reviews"]);
    let pair = mesh.reviews_and_web(backend_addr);
    let explicit = pair.explicit;
    let url = format!("http://127.0.0.1:{explicit}/items");
    wait_until("reviews reachable", Duration::from_secs(30), || http_status(&url) == Some(200));

    // Traffic for the whole test: ~20 requests per second.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                http_status(&url);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let address = mesh.cli(&["dashboard"]).trim().to_string();
    assert!(address.contains("/dashboard/#token="), "{address}");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .current_dir(&dir)
        .args(["dashboard.mjs", &address])
        .arg(&screenshot)
        .arg("reviews.shop")
        .output()
        .expect("run node (scripts/test installs nodejs)");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("browser script output ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "browser check failed: {report:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report["seen"]["reviews.shop"].as_f64().unwrap() > 0.0, "{report:#}");
    let edges: Vec<&str> = report["seen"]["edges"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(edges.contains(&"web.shop->reviews.shop"), "the graph shows web → reviews: {report:#}");
    assert!(report["seen"]["history"].as_u64().unwrap() >= 1, "configuration history lists the applied Service");
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    eprintln!("dashboard screenshot: {}", screenshot.display());
}
