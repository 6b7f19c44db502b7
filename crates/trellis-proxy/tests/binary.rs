//! The `trellis-proxy` binary as a sidecar image runs it: its arguments, its worker threads,
//! serving from a static file with many services (each compiled when first used), and the
//! build that ships (glibc linked in) serving and resolving host names.

mod support;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{TempDir, free_port};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::netns::Netns;
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

/// The sidecar binary as it ships (`scripts/build-proxy`): glibc linked in statically, it
/// still serves, and still resolves host names through /etc/hosts and DNS (glibc's built-in
/// `files` and `dns` sources), here for the control plane's URL. CI builds it once and
/// passes it in `TRELLIS_SIDECAR_BINARY`; without that, this test builds it.
#[test]
fn the_shipped_static_binary_serves_and_resolves_host_names() {
    let binary = sidecar_binary();
    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    assert!(!has_interpreter(&binary), "{} is dynamically linked", binary.display());

    let (_backend, backend) = spawn_backend(&["http"]);
    let dir = TempDir::new();
    let (admin, listen) = (free_port(), free_port());
    let config = dir.0.join("static.yaml");
    std::fs::write(
        &config,
        format!(
            "kind: Proxy\nadmin: '127.0.0.1:{admin}'\nexplicit: [{{listen: '127.0.0.1:{listen}', service: web}}]\n\
             ---\nkind: Service\nname: web\n---\nkind: Endpoints\nservice: web\nendpoints: [{{address: '{backend}'}}]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&binary);
    cmd.arg("-c").arg(&config);
    let mut proxy = ChildProcess::spawn(cmd).expect("spawn the sidecar binary");
    let (status, body) = get(&format!("http://127.0.0.1:{listen}/bytes/5"), &mut proxy);
    assert_eq!((status, body.len()), (200, 5), "{body}");
    proxy.kill();

    if !Netns::available() {
        eprintln!("name resolution not checked: network namespaces are not available here (root and `ip` needed)");
        return;
    }
    // A namespace of its own, where `ip netns exec` puts /etc/netns/NAME/{hosts,resolv.conf}
    // in place of the machine's: one name from the hosts file, one only a DNS server here
    // knows, each for an address of its own on which a stand-in control plane listens.
    let (ns, _other) = Netns::pair("trellis-dns").expect("network namespaces");
    let etc = EtcOverride::new(ns.name());
    std::fs::write(etc.0.join("hosts"), "127.0.0.1 localhost\n127.0.0.2 control-by-hosts\n").unwrap();
    std::fs::write(etc.0.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n").unwrap();
    let (dns, by_hosts, by_dns) = ns
        .enter(|| {
            (
                UdpSocket::bind("127.0.0.1:53").unwrap(),
                TcpListener::bind("127.0.0.2:7071").unwrap(),
                TcpListener::bind("127.0.0.3:7071").unwrap(),
            )
        })
        .unwrap();
    std::thread::spawn(move || answer_dns(dns, "control-by-dns.trellis.test", [127, 0, 0, 3]));

    for (host, listener) in [("control-by-hosts", by_hosts), ("control-by-dns.trellis.test", by_dns)] {
        let config = dir.0.join(format!("{host}.yaml"));
        std::fs::write(
            &config,
            format!(
                "kind: Proxy\nadmin: '127.0.0.1:15000'\ncontrol: {{url: 'http://{host}:7071', stateDir: '{}'}}\n\
                 workload: {{service: reviews, address: '127.0.0.1:15006'}}\n",
                dir.0.join(format!("state-{host}")).display()
            ),
        )
        .unwrap();
        let mut cmd = ns.exec(&binary);
        cmd.arg("-c").arg(&config);
        let mut proxy = ChildProcess::spawn(cmd).expect("spawn the sidecar binary in the namespace");
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while listener.accept().is_err() {
            assert!(proxy.is_running(), "the proxy exited:\n{}", proxy.output_tail());
            assert!(Instant::now() < deadline, "never connected to {host}:\n{}", proxy.output_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy.kill();
    }
}

/// `TRELLIS_SIDECAR_BINARY`, or what `scripts/build-proxy` builds.
fn sidecar_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TRELLIS_SIDECAR_BINARY") {
        return PathBuf::from(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-proxy");
    let out = Command::new(&script).stderr(Stdio::inherit()).output().expect("run scripts/build-proxy");
    assert!(out.status.success(), "scripts/build-proxy failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Whether an ELF executable names a program interpreter (the dynamic loader).
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn has_interpreter(binary: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(binary).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| u32::from_le_bytes(elf[phoff + i * size..][..4].try_into().unwrap()) == PT_INTERP)
}

/// /etc/netns/NAME, which `ip netns exec NAME` mounts over /etc's files of the same names;
/// removed on drop.
struct EtcOverride(PathBuf);

impl EtcOverride {
    fn new(netns: &str) -> EtcOverride {
        let dir = PathBuf::from("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).unwrap();
        EtcOverride(dir)
    }
}

impl Drop for EtcOverride {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A DNS server for one name: an A record with `addr` for it, an empty answer for anything
/// else (the AAAA query glibc sends beside the A query).
fn answer_dns(socket: UdpSocket, name: &str, addr: [u8; 4]) {
    let mut buf = [0u8; 512];
    while let Ok((len, from)) = socket.recv_from(&mut buf) {
        let query = &buf[..len];
        // The question: labels from byte 12 to a zero length, then type and class.
        let mut at = 12;
        let mut labels = Vec::new();
        while at < len && query[at] != 0 {
            let n = query[at] as usize;
            labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + n).unwrap_or_default()).into_owned());
            at += 1 + n;
        }
        if at + 5 > len {
            continue;
        }
        let question = &query[12..at + 5];
        let is_a = query[at + 1..at + 3] == [0, 1];
        let found = is_a && labels.join(".") == name;
        let mut answer = Vec::with_capacity(64);
        answer.extend_from_slice(&query[..2]); // the query's id
        answer.extend_from_slice(&[0x81, 0x80, 0, 1, 0, found as u8, 0, 0, 0, 0]);
        answer.extend_from_slice(question);
        if found {
            // A pointer to the question's name, type A, class IN, TTL 60, 4 bytes of address.
            answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            answer.extend_from_slice(&addr);
        }
        let _ = socket.send_to(&answer, from);
    }
}
