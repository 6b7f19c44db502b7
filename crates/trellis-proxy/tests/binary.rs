//! The `trellis-proxy` binary as a sidecar image runs it: its arguments, its worker threads,
//! and serving from a static file with many services (each compiled when first used).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{TempDir, free_port};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::process::{ChildProcess, cargo_bin};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cargo_bin("trellis-proxy")).args(args).output().expect("run trellis-proxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn arguments_are_checked_with_clear_errors() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--workers N") && stdout.contains("--config FILE"), "{stdout}");

    let (code, _, stderr) = run(&["--workers", "0", "-c", "x.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--workers \"0\": use a whole number of threads, 1 or more"), "{stderr}");

    let (code, _, stderr) = run(&["--workers"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--workers needs a value"), "{stderr}");

    let (code, _, stderr) = run(&["--verbose"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown argument \"--verbose\""), "{stderr}");

    let (code, _, stderr) = run(&["--workers=2"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--config FILE is required"), "{stderr}");

    let (code, _, stderr) = run(&["-c", "/nonexistent/proxy.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/proxy.yaml: cannot read the file"), "{stderr}");
}

#[test]
fn serves_a_large_static_configuration_with_the_workers_asked_for() {
    let (_backend, backend) = spawn_backend(&["http"]);
    let dir = TempDir::new();
    let (admin, listen) = (free_port(), free_port());
    let mut yaml = format!(
        "kind: Proxy\nadmin: '127.0.0.1:{admin}'\nexplicit: [{{listen: '127.0.0.1:{listen}', service: web}}]\n\
         ---\nkind: Service\nname: web\nroutes: [{{name: api, match: {{path: {{prefix: /api/}}}}, timeout: 5s}}]\n\
         ---\nkind: Endpoints\nservice: web\nendpoints: [{{address: '{backend}'}}]\n"
    );
    // 300 more services the proxy never talks to.
    for s in 0..300 {
        yaml += &format!(
            "---\nkind: Service\nname: svc-{s}\nroutes: [{{name: api, match: {{path: {{prefix: /api/}}}}}}]\n"
        );
        yaml += &format!("---\nkind: Endpoints\nservice: svc-{s}\nendpoints: [");
        for e in 0..10 {
            yaml += &format!("{}{{address: '10.0.{}.{}:8080'}}", if e > 0 { ", " } else { "" }, s % 250, e + 1);
        }
        yaml += "]\n";
    }
    let config = dir.0.join("proxy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = Command::new(cargo_bin("trellis-proxy"));
    cmd.args(["--workers", "3", "-c"]).arg(&config);
    let mut proxy = ChildProcess::spawn(cmd).expect("spawn trellis-proxy");

    let (status, _) = get(&format!("http://127.0.0.1:{admin}/ready"), &mut proxy);
    assert_eq!(status, 200, "{}", proxy.output_tail());
    let (status, body) = get(&format!("http://127.0.0.1:{listen}/api/hello"), &mut proxy);
    assert_eq!(status, 200, "{body}");

    // `--workers 3`: three runtime worker threads (blocking-pool threads share the name, so
    // at least three).
    let workers = std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim() == "trellis-proxy")
        .count();
    assert!(workers >= 3, "{workers} worker threads");

    // The proxy's own exp/log/pow keep glibc's libm out of the process (main.rs): a new call
    // into libm would load all of it again, unnoticed but for this.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", proxy.pid())).unwrap();
    assert!(!maps.contains("libm.so"), "trellis-proxy loaded libm:\n{maps}");

    // Every service is known to /config, the used one and those never called alike.
    let (status, config) = get(&format!("http://127.0.0.1:{admin}/config"), &mut proxy);
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let routes = config["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 301);
    let unused = routes.iter().find(|r| r["service"] == "svc-299.default").expect("svc-299 in /config");
    assert_eq!(unused["routes"][0]["name"], "api");
    assert_eq!(config["resources"].as_array().unwrap().len(), 603);

    // Reading /config compiled those for display only; requests still flow.
    let (status, _) = get(&format!("http://127.0.0.1:{listen}/api/again"), &mut proxy);
    assert_eq!(status, 200);
    proxy.kill();
}

/// GET with curl, retried until the proxy answers (it may still be starting).
fn get(url: &str, proxy: &mut ChildProcess) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl").args(["-s", "-m", "5", "-w", "\n%{http_code}", url]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let code: u16 = code.trim().parse().unwrap_or(0);
        if code != 0 {
            return (code, body.to_string());
        }
        assert!(proxy.is_running(), "trellis-proxy exited:\n{}", proxy.output_tail());
        assert!(Instant::now() < deadline, "{url} did not answer:\n{}", proxy.output_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}
