//! The control plane and the resource verbs, end to end: a real `trellis control` process,
//! driven by the real `trellis` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use trellis_testkit::http::free_port;
use trellis_testkit::process::{ChildProcess, cargo_bin};

struct ControlPlane {
    _child: ChildProcess,
    server: String,
    admin_token: String,
    dir: PathBuf,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> ControlPlane {
    let dir = std::env::temp_dir().join(format!("trellis-cp-{}-{}", std::process::id(), free_port()));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(cargo_bin("trellis"));
    let push = format!("127.0.0.1:{}", free_port());
    cmd.args(["control", "--listen", &listen, "--push-listen", &push, "--data-dir"]).arg(&dir);
    let mut child = ChildProcess::spawn(cmd).unwrap();
    let line = child.wait_for_line("admin token written to ", Duration::from_secs(20)).unwrap();
    let token_file = line.trim_start_matches("admin token written to ").trim().to_string();
    child.wait_for_line("control plane listening on ", Duration::from_secs(20)).unwrap();
    let admin_token = std::fs::read_to_string(token_file).unwrap().trim().to_string();
    ControlPlane { _child: child, server: format!("http://{listen}"), admin_token, dir }
}

impl ControlPlane {
    /// Runs the CLI with `token`; returns (success, stdout, stderr).
    fn cli(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(cargo_bin("trellis"))
            .args(args)
            .env("TRELLIS_SERVER", &self.server)
            .env("TRELLIS_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn admin(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.cli(&self.admin_token, args);
        assert!(ok, "trellis {args:?} failed:\n{stderr}");
        stdout
    }

    fn revision(&self) -> u64 {
        let out = self.admin(&["get", "services", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["revision"].as_u64().unwrap()
    }

    /// A status code from curl, to check the raw API.
    fn status(&self, args: &[&str], path: &str) -> u16 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.server))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "kind: Service\nname: reviews\nnamespace: shop\nsubsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}\nroutes:\n  - to: [{{subset: v1, weight: {v1}}}, {{subset: v2, weight: {v2}}}]\n"
    )
}

#[test]
fn apply_get_history_and_rollback() {
    let cp = start();
    let file = write(&cp.dir, "reviews.yaml", &split(90, 10));
    let out = cp.admin(&["apply", "-f", &file]);
    assert!(out.contains("Service/shop/reviews created"), "{out}");
    let out = cp.admin(&["apply", "-f", &file]);
    assert!(out.contains("Service/shop/reviews unchanged"), "{out}");

    let file = write(&cp.dir, "reviews.yaml", &split(50, 50));
    let out = cp.admin(&["apply", "-f", &file, "--dry-run"]);
    assert!(out.contains("Service/shop/reviews updated (dry run)"), "{out}");
    let shown = cp.admin(&["get", "service/reviews", "-n", "shop", "-o", "json"]);
    assert!(shown.contains("\"weight\": 90"), "a dry run changed the store: {shown}");
    cp.admin(&["apply", "-f", &file]);
    let shown = cp.admin(&["get", "service/reviews", "-n", "shop", "-o", "json"]);
    assert!(shown.contains("\"weight\": 50"), "{shown}");

    let history = cp.admin(&["history", "service/reviews", "-n", "shop", "-o", "json"]);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history["generations"].as_array().unwrap().len(), 2);

    cp.admin(&["rollback", "service/reviews", "-n", "shop", "--to", "1"]);
    let shown = cp.admin(&["get", "service/reviews", "-n", "shop", "-o", "json"]);
    assert!(shown.contains("\"weight\": 90"), "rollback did not restore 90/10: {shown}");
    let table = cp.admin(&["history", "service/reviews", "-n", "shop"]);
    assert_eq!(table.lines().count(), 4, "{table}");

    let listed = cp.admin(&["get", "services", "-n", "shop"]);
    assert!(listed.contains("reviews"), "{listed}");
    cp.admin(&["delete", "service/reviews", "-n", "shop"]);
    let (ok, _, stderr) = cp.cli(&cp.admin_token, &["get", "service/reviews", "-n", "shop"]);
    assert!(!ok && stderr.contains("not found"), "{stderr}");
}

#[test]
fn tokens_and_roles_guard_writes() {
    let cp = start();
    assert_eq!(cp.status(&[], "/v1/resources"), 401);
    assert_eq!(cp.status(&["-H", "Authorization: Bearer trellis_nope"], "/v1/resources"), 401);
    assert_eq!(cp.status(&["-X", "POST", "--data-binary", "kind: Service\nname: a\n"], "/v1/apply"), 401);

    let owner =
        cp.admin(&["token", "create", "alice", "--role", "service-owner", "--namespace", "shop"]).trim().to_string();
    let viewer = cp.admin(&["token", "create", "victor", "--role", "viewer"]).trim().to_string();
    let own = write(&cp.dir, "own.yaml", &split(90, 10));
    let other = write(&cp.dir, "other.yaml", "kind: Service\nname: ledger\nnamespace: billing\n");

    let (ok, stdout, stderr) = cp.cli(&owner, &["apply", "-f", &own]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, _, stderr) = cp.cli(&owner, &["apply", "-f", &other]);
    assert!(!ok && stderr.contains("(403)") && stderr.contains("may not change Service/billing/ledger"), "{stderr}");
    let (ok, _, stderr) = cp.cli(&viewer, &["apply", "-f", &own]);
    assert!(!ok && stderr.contains("(403)"), "{stderr}");
    let (ok, stdout, _) = cp.cli(&viewer, &["get", "services", "-n", "shop"]);
    assert!(ok && stdout.contains("reviews"), "{stdout}");
    let (ok, _, stderr) = cp.cli(&owner, &["token", "create", "mallory", "--role", "admin"]);
    assert!(!ok && stderr.contains("only admins create tokens"), "{stderr}");
}

#[test]
fn invalid_documents_get_specific_errors_and_change_nothing() {
    let cp = start();
    let base = write(&cp.dir, "base.yaml", &split(90, 10));
    cp.admin(&["apply", "-f", &base]);
    let revision = cp.revision();
    let svc = "kind: Service\nname: a\n";
    let cases: Vec<(String, &str)> = vec![
        (
            split(90, 10).replace("weight: 90", "weight: 120"),
            "f.yaml:6:10: routes[0].to[0].weight: 120 is out of range 0..=100",
        ),
        (format!("{svc}routes:\n  - tiemout: 2s\n"), "f.yaml:4:5: routes[0].tiemout: unknown field `tiemout`"),
        (
            "kind: Sevice\nname: a\n".into(),
            "f.yaml:1:7: kind: unknown kind `Sevice`; expected one of Service, Endpoints, Policy, Tenant, Telemetry, Proxy",
        ),
        (
            "name: a\n".into(),
            "f.yaml:1:1: kind: missing; expected one of Service, Endpoints, Policy, Tenant, Telemetry, Proxy",
        ),
        ("kind: Service\nname: Reviews\n".into(), "f.yaml:2:7: name: `Reviews` is not a valid name"),
        (split(10, 80), "routes[0].to: weights add up to 90 (10 + 80); they must add up to 100"),
        (
            split(90, 10).replace("subset: v2", "subset: v3"),
            "routes[0].to[1].subset: unknown subset `v3` of service `reviews`; defined subsets: v1, v2",
        ),
        (
            format!("{svc}routes:\n  - match: {{path: {{prefix: /}}}}\n  - match: {{path: {{prefix: /api}}}}\n"),
            "routes[1]: never matches: routes[0] matches every request it would",
        ),
        (
            format!("{svc}routes:\n  - match: {{path: {{regex: \"(\"}}}}\n"),
            "routes[0].match.path.regex: `(` is not a valid regular expression: unclosed group",
        ),
        (
            format!("{svc}routes:\n  - timeout: 5d\n"),
            "routes[0].timeout: `5d` has unknown unit `d`; valid units are ms, s, m, h",
        ),
        (format!("{svc}routes:\n  - timeout: 5\n"), "routes[0].timeout: `5` has no unit"),
        (
            format!("{svc}routes:\n  - retries: {{attempts: 0}}\n"),
            "routes[0].retries.attempts: 0 is out of range 1..=10",
        ),
        (
            format!("{svc}routes:\n  - redirect: {{status: 200}}\n"),
            "routes[0].redirect.status: 200 is not a redirect status; use 301, 302, 303, 307 or 308",
        ),
        (
            format!("{svc}routes:\n  - redirect: {{path: /x}}\n    directResponse: {{status: 200}}\n"),
            "`redirect` and `directResponse` cannot both be set",
        ),
        (
            format!("{svc}routes:\n  - directResponse: {{status: 200}}\n    to: [{{service: b}}]\n"),
            "a route that answers itself (`redirect` or `directResponse`) cannot also have `to`, `mirror` or `retries`",
        ),
        (
            format!("{svc}routes:\n  - requestHeaders: {{set: {{\"bad header\": x}}}}\n"),
            "`bad header` is not a valid header name",
        ),
        (
            format!("{svc}routes:\n  - rewrite: {{prefix: /v2}}\n"),
            "routes[0].rewrite.prefix: needs a `match.path.prefix` to replace",
        ),
        (
            "kind: Endpoints\nservice: a\nendpoints: [{address: '127.0.0.1:1', weight: 0}]\n".into(),
            "endpoints[0].weight: 0 is out of range 1..=10000",
        ),
        (
            "kind: Endpoints\nservice: a\nendpoints: [{address: localhost}]\n".into(),
            "endpoints[0].address: invalid socket address syntax",
        ),
        (format!("{svc}---\n{svc}"), "duplicate Service/default/a: each may be defined once"),
        (format!("{svc}ports: [{{port: 80}}, {{port: 80}}]\n"), "ports[1].port: port 80 is listed twice"),
        (
            format!("{svc}loadBalancer: {{algorithm: ring-hash, hashOn: {{header: x, cookie: y}}}}\n"),
            "expected exactly one of `header: NAME`, `cookie: NAME`, `sourceIp: true`",
        ),
        (
            format!("{svc}routes:\n  - match: {{path: {{prefix: api}}}}\n"),
            "routes[0].match.path: `api` must start with `/`",
        ),
        (
            format!("{svc}routes:\n  - retries: {{attempts: 2, budget: {{ratio: 150%}}}}\n"),
            "routes[0].retries.budget.ratio: 150% is out of range 0%..=100%",
        ),
        (
            format!(
                "{svc}routes:\n  - {{name: x, match: {{path: {{exact: /a}}}}}}\n  - {{name: x, match: {{path: {{exact: /b}}}}}}\n"
            ),
            "routes[1].name: duplicate route name `x`",
        ),
        (
            format!("{svc}loadBalancer: {{algorithm: fastest}}\n"),
            "loadBalancer.algorithm: unknown variant `fastest`, expected one of",
        ),
    ];
    assert!(cases.len() >= 20);
    let mut wrong = Vec::new();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write(&cp.dir, "f.yaml", text);
        let (ok, stdout, stderr) = cp.cli(&cp.admin_token, &["apply", "-f", &file]);
        if ok || !stderr.contains(expected) {
            wrong.push(format!("case {i} (accepted: {ok}): expected `{expected}` in:\n{stdout}{stderr}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(cp.revision(), revision, "an invalid apply changed the store");
}

#[test]
fn watch_streams_past_and_live_changes() {
    use std::io::{BufRead, BufReader, Write};
    let cp = start();
    let first = write(&cp.dir, "a.yaml", "kind: Service\nname: alpha\n");
    cp.admin(&["apply", "-f", &first]);
    let addr = cp.server.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET /v1/watch?since=0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        cp.admin_token
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut seen = String::new();
    let mut read_until = |needle: &str, seen: &mut String| {
        while !seen.contains(needle) {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("watch stream ended or stalled");
            assert!(n > 0, "watch stream closed; got so far:\n{seen}");
            seen.push_str(&line);
        }
    };
    // The change made before the watch started...
    read_until("\"name\":\"alpha\"", &mut seen);
    // ...and one made while it runs.
    let second = write(&cp.dir, "b.yaml", "kind: Service\nname: beta\n");
    cp.admin(&["apply", "-f", &second]);
    read_until("\"name\":\"beta\"", &mut seen);
    assert!(seen.contains("application/x-ndjson"), "{seen}");
}

#[test]
fn references_are_checked_against_what_is_stored() {
    let cp = start();
    let ratings = write(
        &cp.dir,
        "ratings.yaml",
        "kind: Service\nname: ratings\nnamespace: shop\nsubsets: {v1: {version: v1}, v2: {version: v2}}\n",
    );
    cp.admin(&["apply", "-f", &ratings]);
    // A later, separate apply may use the stored service's subsets...
    let good = write(
        &cp.dir,
        "good.yaml",
        "kind: Service\nname: reviews\nnamespace: shop\nroutes:\n  - to: [{service: ratings, subset: v2}]\n",
    );
    let out = cp.admin(&["apply", "-f", &good]);
    assert!(out.contains("created"), "{out}");
    // ...but not subsets it does not define.
    let bad = write(
        &cp.dir,
        "bad.yaml",
        "kind: Service\nname: details\nnamespace: shop\nroutes:\n  - to: [{service: ratings, subset: v9}]\n",
    );
    let (ok, _, stderr) = cp.cli(&cp.admin_token, &["apply", "-f", &bad]);
    assert!(!ok && stderr.contains("unknown subset `v9` of service `ratings`; defined subsets: v1, v2"), "{stderr}");
}
