//! `trellis demo` as a newcomer runs it, but without a terminal: it must bring up every
//! demo service with traffic that succeeds, and `trellis demo down` must leave no process
//! and no temporary directory behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trellis_testkit::process::cargo_bin;

const SERVICES: [&str; 5] = ["web", "catalog", "inventory", "reviews", "ratings"];

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // Fields after "pid (comm) ": state, ppid, ...
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        if rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; its parent just has not collected it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn demo_runs_every_service_with_traffic_and_leaves_nothing_behind() {
    // A private temporary directory: the demo's state and its marker live there.
    let tmp = std::env::temp_dir().join(format!("trellis-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut demo = Command::new(cargo_bin("trellis"))
        .args(["demo", "--headless", "--rate", "20", "--duration", "5m"])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = demo.id();
    let stdout = BufReader::new(demo.stdout.take().unwrap());
    let stderr = demo.stderr.take().unwrap();
    let progress = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    // Headless, the summary is one JSON line naming the control plane and the token to use.
    let summary =
        stdout.lines().map_while(Result::ok).next().and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
    let Some(summary) = summary else {
        let _ = demo.kill();
        panic!("the demo printed no summary; progress:\n{}", progress.join().unwrap());
    };
    let server = summary["server"].as_str().unwrap().to_string();
    let token_file = summary["tokenFile"].as_str().unwrap().to_string();
    assert!(summary["dashboard"].as_str().unwrap().contains("/dashboard/#token="), "{summary}");
    let state_dir = Path::new(&token_file).parent().unwrap().parent().unwrap().to_path_buf();
    assert!(state_dir.starts_with(&tmp), "state in the temporary directory: {}", state_dir.display());

    // Every service appears in `trellis stat` with traffic and at least 99% success.
    let stat = || {
        let out = Command::new(cargo_bin("trellis"))
            .args(["stat", "-n", "shop", "--window", "10s", "-o", "json"])
            .env("TRELLIS_SERVER", &server)
            .env("TRELLIS_TOKEN_FILE", &token_file)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let last = loop {
        let value = stat();
        let rows = value["items"].as_array().cloned().unwrap_or_default();
        let healthy = |service: &str| {
            rows.iter().any(|r| {
                r["service"] == service
                    && r["rps"].as_f64().unwrap_or(0.0) > 0.0
                    && r["successRate"].as_f64().unwrap_or(0.0) >= 0.99
            })
        };
        if SERVICES.iter().all(|s| healthy(s)) {
            break value;
        }
        assert!(Instant::now() < deadline, "not every demo service is healthy with traffic: {value:#}");
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("{last:#}");
    let reviews = last["items"].as_array().unwrap().iter().find(|r| r["service"] == "reviews").unwrap();
    assert_eq!(reviews["meshed"], 3, "three versions of reviews");

    // `trellis check` finds nothing wrong with a running demo, and says what a bad token needs.
    let check = |token: Option<&str>| {
        let mut command = Command::new(cargo_bin("trellis"));
        command.args(["check", "-o", "json"]).env("TRELLIS_SERVER", &server);
        match token {
            Some(t) => command.env("TRELLIS_TOKEN", t),
            None => command.env("TRELLIS_TOKEN_FILE", &token_file),
        };
        let out = command.output().unwrap();
        (out.status.success(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default())
    };
    let (ok, findings) = check(None);
    assert!(ok, "{findings:#}");
    let proxies: Vec<&serde_json::Value> =
        findings.as_array().unwrap().iter().filter(|f| f["check"].as_str().unwrap().starts_with("proxy ")).collect();
    assert_eq!(proxies.len(), 7, "{findings:#}");
    assert!(
        proxies.iter().all(|f| f["verdict"] == "ok" && f["detail"].as_str().unwrap().contains("certificate valid")),
        "{findings:#}"
    );
    let (ok, findings) = check(Some("not-a-token"));
    assert!(!ok);
    let token = findings.as_array().unwrap().iter().find(|f| f["check"] == "token").unwrap();
    assert_eq!(token["verdict"], "fail");
    assert!(token["fix"].as_str().unwrap().contains("--token-file"), "{token}");

    // `trellis demo down` stops it: every process it started is gone, and its state too.
    let children = children_of(pid);
    assert!(children.len() >= 15, "control plane + 7 apps + 7 sidecars: {children:?}");
    let down = Command::new(cargo_bin("trellis")).args(["demo", "down"]).env("TMPDIR", &tmp).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let status = demo.wait().unwrap();
    assert!(status.success(), "the demo exits cleanly when stopped: {status}");
    let progress = progress.join().unwrap();
    assert!(progress.contains("stopped 15 processes"), "{progress}");
    let left: Vec<u32> = children.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "left in the temporary directory: {leftovers:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
