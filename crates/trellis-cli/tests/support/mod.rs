//! Shared by the identity tests: a control plane in a temporary directory, proxies that
//! join it with tokens, and small HTTP helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use trellis_identity::Signer;
use trellis_testkit::http::free_port;
use trellis_testkit::process::{ChildProcess, cargo_bin};

pub struct Dir(pub PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Mesh {
    pub dir: Dir,
    pub api: u16,
    pub push: u16,
    pub token: String,
    pub control: Option<ChildProcess>,
    /// Extra `trellis control` arguments, kept for restarts.
    pub control_args: Vec<String>,
}

impl Mesh {
    pub fn start(name: &str, svid_lifetime: &str) -> Mesh {
        Mesh::start_with(name, svid_lifetime, |_| Vec::new())
    }

    /// Like [`Mesh::start`], with extra control-plane arguments made from the mesh's directory
    /// (e.g. CA files written there first).
    pub fn start_with(name: &str, svid_lifetime: &str, args: impl FnOnce(&std::path::Path) -> Vec<String>) -> Mesh {
        let dir = Dir(std::env::temp_dir().join(format!("trellis-{name}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let control_args = args(&dir.0);
        let (api, push) = (free_port(), free_port());
        let mut mesh = Mesh { dir, api, push, token: String::new(), control: None, control_args };
        mesh.start_control(svid_lifetime);
        mesh.token = std::fs::read_to_string(mesh.data().join("admin.token")).unwrap().trim().to_string();
        mesh
    }

    pub fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    pub fn start_control(&mut self, svid_lifetime: &str) {
        let mut cmd = Command::new(cargo_bin("trellis"));
        cmd.args(["control", "--listen", &format!("127.0.0.1:{}", self.api)])
            .args(["--push-listen", &format!("127.0.0.1:{}", self.push), "--svid-lifetime", svid_lifetime])
            .args(&self.control_args)
            .arg("--data-dir")
            .arg(self.data());
        let mut child = ChildProcess::spawn(cmd).unwrap();
        child.wait_for_line("control plane listening on ", Duration::from_secs(20)).unwrap();
        self.control = Some(child);
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(cargo_bin("trellis"))
            .args(args)
            .env("TRELLIS_SERVER", format!("http://127.0.0.1:{}", self.api))
            .env("TRELLIS_TOKEN", &self.token)
            .output()
            .unwrap();
        assert!(out.status.success(), "trellis {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let file = self.dir.0.join(format!("apply-{}.yaml", rand_suffix()));
        std::fs::write(&file, yaml).unwrap();
        self.cli(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// A join token for `namespace`/`account`, written to a file.
    pub fn join_token(&self, name: &str, namespace: &str, account: &str) -> PathBuf {
        let token = self.cli(&[
            "token",
            "create",
            name,
            "--role",
            "join",
            "--namespace",
            namespace,
            "--service-account",
            account,
            "--ttl",
            "10m",
            "--single-use",
        ]);
        let file = self.dir.0.join(format!("{name}.token"));
        std::fs::write(&file, token.trim()).unwrap();
        file
    }

    pub fn proxy(&self, name: &str, body: &str) -> (ChildProcess, u16) {
        let admin = free_port();
        let yaml = format!(
            "kind: Proxy\nadmin: '127.0.0.1:{admin}'\ncontrol: {{url: 'http://127.0.0.1:{}', stateDir: '{}', proxyId: {name}, joinTokenFile: '{}'}}\n{body}",
            self.push,
            self.dir.0.join(format!("state-{name}")).display(),
            self.dir.0.join(format!("{name}.token")).display(),
        );
        let file = self.dir.0.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let mut cmd = Command::new(cargo_bin("trellis"));
        cmd.args(["proxy", "-c"]).arg(&file).env("TRELLIS_LOG", "info");
        (ChildProcess::spawn(cmd).unwrap(), admin)
    }

    /// The mesh CA's signer, read from the data directory as an operator with disk access could.
    pub fn signer(&self) -> Signer {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.data().join("ca/state.json")).unwrap()).unwrap();
        let active = state["active"].as_str().unwrap();
        let root = state["roots"].as_array().unwrap().iter().find(|r| r["fingerprint"] == active).unwrap();
        let key = std::fs::read_to_string(self.data().join(format!("ca/{active}.key"))).unwrap();
        Signer::from_pem("trellis.local", root["cert_pem"].as_str().unwrap(), &key, "").unwrap()
    }
}

pub fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn http_status(url: &str) -> Option<u16> {
    let out =
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3", url]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).parse().ok()
}

/// The two workloads most tests need, in namespace `shop`: `reviews` (its sidecar's inbound
/// listener forwards to an application) and `web` (its sidecar's explicit listener calls
/// `reviews.shop`), each joined with its own token.
pub struct ReviewsAndWeb {
    pub reviews: ChildProcess,
    pub web: ChildProcess,
    pub reviews_admin: u16,
    pub web_admin: u16,
    /// The reviews sidecar's inbound port.
    pub inbound: u16,
    /// The web sidecar's explicit listener for reviews.
    pub explicit: u16,
}

impl Mesh {
    /// Starts the `reviews` (in front of `app`) and `web` sidecars and waits until both are
    /// ready (joined, with a certificate).
    pub fn reviews_and_web(&self, app: std::net::SocketAddr) -> ReviewsAndWeb {
        self.join_token("reviews", "shop", "reviews");
        self.join_token("web", "shop", "web");
        let inbound = free_port();
        let (reviews, reviews_admin) = self.proxy(
            "reviews",
            &format!(
                "inbound: {{listen: '127.0.0.1:{inbound}', forward: '{app}'}}\nworkload: {{service: reviews, namespace: shop, address: '127.0.0.1:{inbound}'}}\n"
            ),
        );
        let explicit = free_port();
        let (web, web_admin) = self.proxy(
            "web",
            &format!(
                "explicit: [{{listen: '127.0.0.1:{explicit}', service: reviews.shop}}]\nworkload: {{service: web, namespace: shop, address: '127.0.0.1:{}', calls: [reviews]}}\n",
                free_port()
            ),
        );
        for admin in [reviews_admin, web_admin] {
            wait_until("proxy ready with a certificate", Duration::from_secs(30), || {
                http_status(&format!("http://127.0.0.1:{admin}/ready")) == Some(200)
            });
        }
        ReviewsAndWeb { reviews, web, reviews_admin, web_admin, inbound, explicit }
    }

    /// Stops the control plane (SIGKILL), as an outage would.
    pub fn stop_control(&mut self) {
        if let Some(mut control) = self.control.take() {
            control.kill();
        }
    }
}

/// The proxy's admin `/config` document.
pub fn admin_config(admin: u16) -> Option<serde_json::Value> {
    let out =
        Command::new("curl").args(["-s", "-m", "2", &format!("http://127.0.0.1:{admin}/config")]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The body of a GET (empty when it fails).
pub fn http_text(url: &str) -> String {
    Command::new("curl")
        .args(["-s", "-m", "3", url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The value of one exact series (`name{labels}`) in a Prometheus exposition; 0 if absent.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}
