//! Configuration push, end to end: a control plane, a client proxy and two registered
//! server-side proxies in front of two backend versions. Applies change the traffic split
//! within a second, rollback restores it, and the data plane keeps serving — even across
//! its own restart — while the control plane is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::http::free_port;
use trellis_testkit::process::{ChildProcess, cargo_bin};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_control(dir: &std::path::Path, api: u16, push: u16) -> ChildProcess {
    let mut cmd = Command::new(cargo_bin("trellis"));
    cmd.args([
        "control",
        "--listen",
        &format!("127.0.0.1:{api}"),
        "--push-listen",
        &format!("127.0.0.1:{push}"),
        "--registry-grace",
        "30s",
        // This test is about configuration push; tests/mtls.rs covers proxies with identities.
        "--allow-unauthenticated-proxies",
        "--data-dir",
    ])
    .arg(dir);
    let mut child = ChildProcess::spawn(cmd).unwrap();
    child.wait_for_line("control plane listening on ", Duration::from_secs(20)).unwrap();
    child
}

fn start_proxy(dir: &std::path::Path, name: &str, yaml: &str) -> ChildProcess {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = Command::new(cargo_bin("trellis"));
    cmd.args(["proxy", "-c"]).arg(&file).env("TRELLIS_LOG", "info");
    ChildProcess::spawn(cmd).unwrap()
}

fn proxy_yaml(dir: &std::path::Path, name: &str, admin: u16, push: u16, rest: &str) -> String {
    format!(
        "kind: Proxy\nadmin: '127.0.0.1:{admin}'\ncontrol: {{url: 'http://127.0.0.1:{push}', stateDir: '{}', proxyId: {name}}}\n{rest}",
        dir.join(format!("state-{name}")).display()
    )
}

fn cli(api: u16, token: &str, args: &[&str]) -> String {
    let out = Command::new(cargo_bin("trellis"))
        .args(args)
        .env("TRELLIS_SERVER", format!("http://127.0.0.1:{api}"))
        .env("TRELLIS_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "trellis {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "kind: Service\nname: reviews\nnamespace: shop\nsubsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}\nroutes:\n  - name: split\n    to: [{{subset: v1, weight: {v1}}}, {{subset: v2, weight: {v2}}}]\n"
    )
}

/// Share of `n` requests answered by v2, failing the test on any error.
fn v2_share(rt: &tokio::runtime::Runtime, port: u16, n: usize) -> f64 {
    rt.block_on(async {
        let mut v2 = 0;
        for _ in 0..n {
            let r = trellis_testkit::http::get(&format!("http://127.0.0.1:{port}/"))
                .await
                .expect("request through the mesh");
            assert_eq!(r.status, 200, "{:?} {}", r.header("x-trellis-error"), r.text());
            if r.header("x-backend") == Some("v2") {
                v2 += 1;
            }
        }
        v2 as f64 / n as f64 * 100.0
    })
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn admin_json(admin: u16) -> Option<serde_json::Value> {
    let out =
        Command::new("curl").args(["-s", "-m", "2", &format!("http://127.0.0.1:{admin}/config")]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn admin_version(admin: u16) -> Option<String> {
    admin_json(admin)?["version"].as_str().map(str::to_string)
}

#[test]
fn pushed_configuration_steers_traffic_and_survives_the_control_plane() {
    let dir = Dir(std::env::temp_dir().join(format!("trellis-push-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (api, push) = (free_port(), free_port());
    let mut control = start_control(&dir.0.join("cp"), api, push);
    let token = std::fs::read_to_string(dir.0.join("cp/admin.token")).unwrap().trim().to_string();

    // Two versions of reviews, each behind its own registered server-side proxy.
    let (_b1, b1) = spawn_backend(&["http", "--name", "v1"]);
    let (_b2, b2) = spawn_backend(&["http", "--name", "v2"]);
    let mut servers = Vec::new();
    for (version, backend) in [("v1", b1), ("v2", b2)] {
        let inbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let yaml = proxy_yaml(
            &dir.0,
            &format!("reviews-{version}"),
            free_port(),
            push,
            &format!(
                "inbound: {{listen: '{inbound}', forward: '{backend}'}}\nworkload: {{service: reviews, namespace: shop, labels: {{version: {version}}}, address: '{inbound}'}}\n"
            ),
        );
        servers.push(start_proxy(&dir.0, &format!("reviews-{version}"), &yaml));
    }
    let (admin, port) = (free_port(), free_port());
    let client_yaml = proxy_yaml(
        &dir.0,
        "frontend",
        admin,
        push,
        &format!(
            "explicit: [{{listen: '127.0.0.1:{port}', service: reviews.shop}}]\nworkload: {{service: frontend, namespace: shop, address: '127.0.0.1:1', calls: [reviews]}}\n"
        ),
    );
    let mut client = start_proxy(&dir.0, "frontend", &client_yaml);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let file = dir.0.join("reviews.yaml");
    std::fs::write(&file, split(90, 10)).unwrap();
    let before = admin_version(admin);
    cli(api, &token, &["apply", "-f", file.to_str().unwrap()]);
    wait_until("the 90/10 split to reach the client proxy", Duration::from_secs(10), || {
        admin_version(admin) != before && proxies_in_sync(api, &token, 3)
    });
    let config = admin_json(admin).expect("admin /config");
    assert_eq!(config["control"]["connected"], true, "{}", config["control"]);
    let endpoints = cli(api, &token, &["get", "endpoints/reviews", "-n", "shop"]);
    assert_eq!(endpoints.lines().filter(|l| l.contains("registered") && l.contains(" yes ")).count(), 2, "{endpoints}");
    assert!(endpoints.contains("version=v1") && endpoints.contains("version=v2"), "{endpoints}");
    let share = v2_share(&rt, port, 1000);
    println!("90/10 applied: v2 got {share:.1}%");
    assert!((6.0..=14.0).contains(&share), "v2 got {share:.1}%, expected about 10%");

    // 50/50: the client proxy runs it within a second of the apply.
    std::fs::write(&file, split(50, 50)).unwrap();
    let before = admin_version(admin);
    cli(api, &token, &["apply", "-f", file.to_str().unwrap()]);
    let took = wait_until("the 50/50 split", Duration::from_secs(5), || admin_version(admin) != before);
    println!("50/50 reached the proxy {took:?} after the apply returned");
    let share = v2_share(&rt, port, 1000);
    assert!((44.0..=56.0).contains(&share), "v2 got {share:.1}% after 50/50");

    // Rollback restores 90/10.
    let before = admin_version(admin);
    cli(api, &token, &["rollback", "service/reviews", "-n", "shop", "--to", "1"]);
    wait_until("the rollback", Duration::from_secs(5), || admin_version(admin) != before);
    let share = v2_share(&rt, port, 1000);
    assert!((6.0..=14.0).contains(&share), "v2 got {share:.1}% after rollback");
    let listed = cli(api, &token, &["get", "proxies"]);
    assert_eq!(listed.lines().filter(|l| l.contains(" yes ")).count(), 3, "not every proxy in sync:\n{listed}");

    // Kill the control plane: traffic continues with no failures.
    control.kill();
    let load = |seconds: u64| {
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut ticker = tokio::time::interval(Duration::from_millis(4)); // 250 req/s
            let mut sent = 0;
            while Instant::now() < deadline {
                ticker.tick().await;
                let r = trellis_testkit::http::get(&format!("http://127.0.0.1:{port}/")).await.expect("request");
                assert_eq!(r.status, 200, "request failed while the control plane was down: {}", r.text());
                sent += 1;
            }
            sent
        })
    };
    let sent = load(30);
    println!("{sent} requests in 30 s with the control plane down, all 200");
    let config = admin_json(admin).expect("admin /config");
    assert_eq!(config["control"]["connected"], false, "{}", config["control"]);

    // Restart the client proxy while the control plane is still down: it serves from disk.
    drop(client);
    client = start_proxy(&dir.0, "frontend", &client_yaml);
    wait_until("the restarted proxy to serve", Duration::from_secs(10), || {
        rt.block_on(trellis_testkit::http::get(&format!("http://127.0.0.1:{port}/"))).is_ok_and(|r| r.status == 200)
    });
    let share = v2_share(&rt, port, 500);
    assert!((5.0..=15.0).contains(&share), "restarted proxy did not keep 90/10 from disk: v2 {share:.1}%");

    // The control plane comes back: everything resyncs, with no failed request meanwhile.
    let _control = start_control(&dir.0.join("cp"), api, push);
    let resync = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| load(8));
        let took = wait_until("proxies to resync", Duration::from_secs(30), || proxies_in_sync(api, &token, 3));
        traffic.join().unwrap();
        took
    });
    println!("proxies resynced {resync:?} after the control plane restarted");
    drop(client);
    drop(servers);
}

/// A share far larger than one message (hundreds of services) reaches the proxy in parts and
/// is applied whole: one version, every service routable, the proxy in sync; a small change
/// afterwards is one message.
#[test]
fn a_large_share_arrives_in_parts_and_applies_whole() {
    let dir = Dir(std::env::temp_dir().join(format!("trellis-push-parts-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (api, push) = (free_port(), free_port());
    let _control = start_control(&dir.0.join("cp"), api, push);
    let token = std::fs::read_to_string(dir.0.join("cp/admin.token")).unwrap().trim().to_string();
    let (_backend, backend) = spawn_backend(&["http", "--name", "big"]);

    // 400 services with an endpoint each: about 150 KiB of documents, several 64 KiB parts.
    const SERVICES: usize = 400;
    let mut mesh = String::new();
    for i in 0..SERVICES {
        mesh.push_str(&format!(
            "kind: Service\nname: svc-{i}\nnamespace: big\nports: [{{port: 80, protocol: http}}]\nroutes: [{{name: api, match: {{path: {{prefix: /}}}}, timeout: 5s}}]\n---\nkind: Endpoints\nservice: svc-{i}\nnamespace: big\nendpoints: [{{address: '{backend}'}}]\n---\n"
        ));
    }
    let file = dir.0.join("mesh.yaml");
    std::fs::write(&file, &mesh).unwrap();
    cli(api, &token, &["apply", "-f", file.to_str().unwrap()]);

    let (admin, port) = (free_port(), free_port());
    let last = SERVICES - 1;
    let yaml = proxy_yaml(
        &dir.0,
        "caller",
        admin,
        push,
        &format!(
            "explicit: [{{listen: '127.0.0.1:{port}', service: svc-{last}.big}}]\nworkload: {{service: caller, namespace: big, address: '127.0.0.1:1'}}\n"
        ),
    );
    let proxy = start_proxy(&dir.0, "caller", &yaml);
    let accepted = |proxy: &ChildProcess| -> Vec<String> {
        proxy.output_tail().lines().map(strip_ansi).filter(|l| l.contains("pushed configuration accepted")).collect()
    };
    let field = |line: &str, name: &str| -> usize {
        let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 2;
        line[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    // The share may come in one update or two (the trust bundle first, if the proxy connects
    // before the control plane's snapshot holds the applied documents).
    let large = |proxy: &ChildProcess| accepted(proxy).into_iter().find(|l| field(l, "upserts") >= 2 * SERVICES);
    wait_until("the whole share to be applied", Duration::from_secs(20), || {
        large(&proxy).is_some() && proxies_in_sync(api, &token, 1)
    });
    let first = large(&proxy).unwrap();
    println!("{first}");
    assert!(field(&first, "parts") >= 3, "{first}");
    let config = admin_json(admin).expect("admin /config");
    let held = config["resources"].as_array().expect("resources").iter();
    let services =
        held.filter(|r| r["name"].as_str().or(r["service"].as_str()).is_some_and(|n| n.starts_with("svc-"))).count();
    assert_eq!(services, 2 * SERVICES, "every Service and Endpoints document of the share is in force");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(trellis_testkit::http::get(&format!("http://127.0.0.1:{port}/"))).expect("request");
    assert_eq!(r.status, 200, "{}", r.text());

    // One changed service: one message.
    std::fs::write(&file, "kind: Service\nname: svc-0\nnamespace: big\nports: [{port: 80, protocol: http}]\n").unwrap();
    cli(api, &token, &["apply", "-f", file.to_str().unwrap()]);
    let before = accepted(&proxy).len();
    wait_until("the change to be applied", Duration::from_secs(10), || accepted(&proxy).len() > before);
    let second = accepted(&proxy).remove(before);
    assert_eq!((field(&second, "upserts"), field(&second, "parts")), (1, 1), "{second}");
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn proxies_in_sync(api: u16, token: &str, n: usize) -> bool {
    let out = Command::new(cargo_bin("trellis"))
        .args(["get", "proxies", "-o", "json"])
        .env("TRELLIS_SERVER", format!("http://127.0.0.1:{api}"))
        .env("TRELLIS_TOKEN", token)
        .output();
    let Ok(out) = out else { return false };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return false };
    json["items"].as_array().is_some_and(|items| items.iter().filter(|p| p["in_sync"] == true).count() >= n)
}
