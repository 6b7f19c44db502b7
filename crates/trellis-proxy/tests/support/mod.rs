//! Running real `trellis proxy` processes for end-to-end tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use trellis_testkit::netns::Netns;
use trellis_testkit::process::{ChildProcess, cargo_bin};

pub use trellis_testkit::http::free_port;

/// A proxy process with its configuration file and admin address.
pub struct TestProxy {
    pub child: ChildProcess,
    pub admin: SocketAddr,
    pub config: PathBuf,
    netns: Option<String>,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("trellis-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestProxy {
    /// Starts a proxy on loopback. `{admin}` in `yaml` is replaced by a free admin address.
    pub fn start(yaml: &str) -> TestProxy {
        Self::start_in(None, yaml)
    }

    /// Starts a proxy inside a network namespace (its admin listener is on that namespace's
    /// loopback).
    pub fn start_in(netns: Option<&Netns>, yaml: &str) -> TestProxy {
        let dir = TempDir::new();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.0.join("proxy.yaml");
        std::fs::write(&config, yaml.replace("{admin}", &admin.to_string())).unwrap();
        let mut cmd = match netns {
            Some(ns) => ns.exec(cargo_bin("trellis")),
            None => Command::new(cargo_bin("trellis")),
        };
        cmd.args(["proxy", "-c"]).arg(&config).env("TRELLIS_LOG", "info,trellis_proxy=debug");
        let child = ChildProcess::spawn(cmd).expect("spawn trellis proxy");
        let proxy = TestProxy { child, admin, config, netns: netns.map(|n| n.name().to_string()), _dir: dir };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.admin_get("/ready").map(|(status, _)| status == 200).unwrap_or(false) {
                return;
            }
            if Instant::now() > deadline {
                panic!("proxy did not become ready; output:\n{}", self.child.output_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the admin listener with curl (inside the namespace if there is one).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.admin);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => Command::new("curl"),
        };
        let out = cmd.args(["-s", "-m", "5", "-w", "\n%{http_code}", &url]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// Sum of every sample of `name` whose labels contain all of `labels` (`key="value"`).
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    pub fn config_version(&self) -> String {
        let (_, body) = self.admin_get("/config").expect("admin /config");
        let json: serde_json::Value = serde_json::from_str(&body).expect("config JSON");
        json["version"].as_str().unwrap_or_default().to_string()
    }

    /// Replaces the configuration file (same `{admin}`) and waits until the proxy runs it.
    pub fn reconfigure(&self, yaml: &str) {
        let before = self.config_version();
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, yaml.replace("{admin}", &self.admin.to_string())).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.config_version() == before {
            assert!(
                Instant::now() < deadline,
                "proxy did not pick up the new configuration:\n{}",
                self.child.output_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`HUP`, `TERM`) to the proxy process.
    pub fn signal(&self, name: &str) {
        // Under `ip netns exec`, the proxy is the exec'd process itself (same pid).
        let _ = Command::new("kill").arg(format!("-{name}")).arg(self.child.pid().to_string()).status();
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
