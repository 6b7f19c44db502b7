//! Zero trust, end to end: a control plane with its CA, two proxies that join with tokens,
//! mutual TLS between them, and a `kind: Policy` enforced at the receiving proxy. The strict
//! inbound port is probed with curl and openssl as outsiders: no certificate, another CA's
//! certificate, an expired one, and mesh certificates of identities the policy does not allow.
//! A second mesh signs with an operator's intermediate CA and runs in permissive mode.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{Mesh, http_status, wait_until};
use trellis_identity::authority::OffsetDateTime;
use trellis_identity::{Signer, SpiffeId};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::http::free_port;

/// A certificate and key as files: `name.pem`, `name.key`.
fn write_pair(dir: &Path, name: &str, chain: &str, key: &str) -> (PathBuf, PathBuf) {
    let (cert_file, key_file) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (cert_file, key_file)
}

/// A mesh certificate for `id` with the given validity, signed by `signer`.
fn mesh_cert(dir: &Path, signer: &Signer, name: &str, id: &str, expired: bool) -> (PathBuf, PathBuf) {
    let id: SpiffeId = id.parse().unwrap();
    let (key, csr) = trellis_identity::keys::new_key_and_csr(&id).unwrap();
    let now = OffsetDateTime::now_utc();
    let (from, to) = if expired {
        (now - Duration::from_secs(7200), now - Duration::from_secs(3600))
    } else {
        (now - Duration::from_secs(60), now + Duration::from_secs(3600))
    };
    let issued = signer.issue_for(&csr, &id, from, to).unwrap();
    write_pair(dir, name, &issued.chain_pem, &key)
}

/// curl over TLS to the strict inbound port with a client certificate: (status, x-trellis-error).
/// Status 0 means the connection or handshake failed.
fn curl_mtls(
    port: u16,
    client: Option<&(PathBuf, PathBuf)>,
    method: &str,
    path: &str,
    header: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    // -k: SPIFFE certificates name no host; the proxy's identity is checked by the proxies.
    cmd.args(["-sSk", "-m", "5", "-o", "/dev/null", "-D", "-", "-w", "\nSTATUS:%{http_code}"]);
    // HEAD through -X would wait for a body that never comes.
    if method == "HEAD" {
        cmd.arg("-I")
    } else {
        cmd.args(["-X", method])
    };
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("https://127.0.0.1:{port}{path}"));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.rsplit("STATUS:").next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if status == 0 {
        eprintln!("curl {method} {path}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let error = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().starts_with("x-trellis-error:").then(|| l[16..].trim().to_string()))
        .unwrap_or_default();
    (status, error)
}

const POLICY: &str = "kind: Policy
name: reviews-access
namespace: shop
service: reviews
mtls: strict
defaultDeny: true
rules:
  - name: no-admin
    action: deny
    to: {paths: [{prefix: /admin}]}
  - name: no-debug-header
    action: deny
    to: {headers: {x-debug: {present: true}}}
  - name: web-reads
    action: allow
    from: {identities: ['spiffe://trellis.local/ns/shop/sa/web']}
    to: {methods: [GET, HEAD]}
  - name: ops-namespace
    action: allow
    from: {namespaces: [ops]}
  - name: batch-writes-orders
    action: allow
    from: {identities: ['spiffe://trellis.local/ns/shop/sa/batch*']}
    to: {methods: [POST, PUT], paths: [{prefix: /orders}]}
";

#[test]
fn strict_mtls_and_policy_between_two_joined_proxies() {
    let mesh = Mesh::start("mtls", "1h");
    let (_backend, backend_addr) = spawn_backend(&["http", "--name", "reviews"]);
    mesh.apply("kind: Service\nname: reviews\nnamespace: shop\nports: [{port: 80, protocol: http}]\n");
    mesh.apply(POLICY);
    mesh.join_token("reviews", "shop", "reviews");
    mesh.join_token("web", "shop", "web");
    let inbound = free_port();
    let (mut reviews, reviews_admin) = mesh.proxy(
        "reviews",
        &format!(
            "inbound: {{listen: '127.0.0.1:{inbound}', forward: '{backend_addr}'}}\nworkload: {{service: reviews, namespace: shop, address: '127.0.0.1:{inbound}'}}\n"
        ),
    );
    let explicit = free_port();
    let (mut web, web_admin) = mesh.proxy(
        "web",
        &format!(
            "explicit: [{{listen: '127.0.0.1:{explicit}', service: reviews.shop}}]\nworkload: {{service: web, namespace: shop, address: '127.0.0.1:{}', calls: [reviews]}}\n",
            free_port()
        ),
    );
    for (name, admin) in [("reviews", reviews_admin), ("web", web_admin)] {
        wait_until(&format!("{name} ready with a certificate"), Duration::from_secs(30), || {
            http_status(&format!("http://127.0.0.1:{admin}/ready")) == Some(200)
        });
    }
    // The caller's proxy reaches reviews over mTLS once the endpoint (with its identity) is pushed.
    let url = format!("http://127.0.0.1:{explicit}/items");
    wait_until("a request through both proxies", Duration::from_secs(30), || http_status(&url) == Some(200));
    let out = Command::new("curl").args(["-s", "-m", "3", &url]).output().unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["headers"]["x-trellis-peer-identity"], "spiffe://trellis.local/ns/shop/sa/web", "{seen}");
    // A denied request through the mesh: 403 naming the rule, nothing about the policy.
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-m", "3", &format!("http://127.0.0.1:{explicit}/admin/x")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("x-trellis-error: denied; rule=no-admin"), "{text}");
    assert!(!text.contains("reviews-access") && !text.contains("/admin"), "leaks the policy: {text}");
    // gRPC callers get PERMISSION_DENIED.
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-m",
            "3",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
        ])
        .arg(format!("http://127.0.0.1:{explicit}/admin.Service/Call"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("grpc-status: 7"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Outsiders at the strict inbound port.
    // 1. Plaintext: refused.
    assert_eq!(http_status(&format!("http://127.0.0.1:{inbound}/items")).unwrap_or(0), 0, "plaintext must be refused");
    // 2. TLS without a client certificate: refused (curl and openssl).
    assert_eq!(curl_mtls(inbound, None, "GET", "/items", None).0, 0);
    let s_client = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET /items HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | timeout 5 openssl s_client -connect 127.0.0.1:{inbound} -tls1_3 -quiet 2>&1"
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&s_client.stdout);
    assert!(!said.contains("HTTP/1.1 200"), "no client certificate must not get through: {said}");
    assert!(said.contains("alert") || said.contains("error"), "openssl should report the refusal: {said}");
    // 3. A certificate from another CA (openssl-made, with a SPIFFE URI): refused.
    let tmp = mesh.dir.0.clone();
    let other_key = tmp.join("other.key");
    let other_cert = tmp.join("other.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=intruder", "-addext", "subjectAltName=URI:spiffe://trellis.local/ns/shop/sa/web"])
        .arg("-keyout")
        .arg(&other_key)
        .arg("-out")
        .arg(&other_cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_eq!(curl_mtls(inbound, Some(&(other_cert, other_key)), "GET", "/items", None).0, 0);
    // 4. The mesh CA's certificate, but expired: refused.
    let signer = mesh.signer();
    let expired = mesh_cert(&tmp, &signer, "expired", "spiffe://trellis.local/ns/shop/sa/web", true);
    assert_eq!(curl_mtls(inbound, Some(&expired), "GET", "/items", None).0, 0);
    // 5. Valid mesh certificates: the policy decides, case by case.
    let ids = [
        ("web", "spiffe://trellis.local/ns/shop/sa/web"),
        ("batch", "spiffe://trellis.local/ns/shop/sa/batch-nightly"),
        ("ops", "spiffe://trellis.local/ns/ops/sa/oncall"),
        ("stranger", "spiffe://trellis.local/ns/shop/sa/stranger"),
        ("other-ns", "spiffe://trellis.local/ns/billing/sa/web"),
    ];
    let certs: std::collections::HashMap<&str, (PathBuf, PathBuf)> =
        ids.iter().map(|(name, id)| (*name, mesh_cert(&tmp, &signer, name, id, false))).collect();
    /// (identity, method, path, header, expected status, expected rule)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, u16, &'a str);
    let matrix: &[Case] = &[
        ("web", "GET", "/items", None, 200, ""),
        ("web", "HEAD", "/items", None, 200, ""),
        ("web", "POST", "/items", None, 403, "default-deny"),
        ("web", "DELETE", "/items", None, 403, "default-deny"),
        ("web", "GET", "/admin", None, 403, "no-admin"),
        ("web", "GET", "/admin/users", None, 403, "no-admin"),
        ("web", "GET", "/administrator", None, 403, "no-admin"),
        ("web", "GET", "/items", Some("x-debug: 1"), 403, "no-debug-header"),
        ("web", "GET", "/items", Some("x-other: 1"), 200, ""),
        ("web", "PUT", "/orders/1", None, 403, "default-deny"),
        ("batch", "POST", "/orders", None, 200, ""),
        ("batch", "PUT", "/orders/7", None, 200, ""),
        ("batch", "POST", "/items", None, 403, "default-deny"),
        ("batch", "GET", "/orders", None, 403, "default-deny"),
        ("batch", "POST", "/admin/orders", None, 403, "no-admin"),
        ("batch", "POST", "/orders", Some("x-debug: yes"), 403, "no-debug-header"),
        ("ops", "GET", "/items", None, 200, ""),
        ("ops", "POST", "/items", None, 200, ""),
        ("ops", "DELETE", "/orders/1", None, 200, ""),
        ("ops", "GET", "/admin", None, 403, "no-admin"),
        ("ops", "GET", "/items", Some("x-debug: 1"), 403, "no-debug-header"),
        ("stranger", "GET", "/items", None, 403, "default-deny"),
        ("stranger", "POST", "/orders", None, 403, "default-deny"),
        ("stranger", "GET", "/admin", None, 403, "no-admin"),
        ("other-ns", "GET", "/items", None, 403, "default-deny"),
        ("other-ns", "POST", "/orders", None, 403, "default-deny"),
        ("other-ns", "GET", "/admin", None, 403, "no-admin"),
        ("web", "OPTIONS", "/items", None, 403, "default-deny"),
        ("batch", "PUT", "/ordersx", None, 200, ""),
        ("ops", "PATCH", "/admin2", None, 403, "no-admin"),
        ("stranger", "HEAD", "/items", Some("x-debug: 1"), 403, "no-debug-header"),
        ("web", "GET", "/", None, 200, ""),
    ];
    assert!(matrix.len() >= 30);
    let mut failures = Vec::new();
    for (who, method, path, header, want, rule) in matrix {
        let (status, error) = curl_mtls(inbound, Some(&certs[who]), method, path, *header);
        let want_error = if rule.is_empty() { String::new() } else { format!("denied; rule={rule}") };
        if status != *want || error != want_error {
            failures
                .push(format!("{who} {method} {path} {header:?}: got {status} `{error}`, want {want} `{want_error}`"));
        }
    }
    assert!(failures.is_empty(), "policy matrix mismatches:\n{}", failures.join("\n"));
    // Decisions are counted by rule.
    let metrics =
        Command::new("curl").args(["-s", &format!("http://127.0.0.1:{reviews_admin}/metrics")]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    // no-admin denied 7 matrix cases and the request through the mesh (the gRPC one too).
    let no_admin = r#"trellis_authz_decisions_total{policy="reviews-access",rule="no-admin",decision="deny"}"#;
    assert!(support::metric_value(&metrics, no_admin) >= 8.0, "{metrics}");
    assert!(metrics.contains("trellis_inbound_connections_total{security=\"plaintext-refused\"}"), "{metrics}");
    assert!(metrics.contains("trellis_inbound_connections_total{security=\"mtls\"}"), "{metrics}");
    reviews.kill();
    web.kill();
}

#[test]
fn operator_intermediate_ca_and_permissive_mode() {
    // The operator's root stays offline; the control plane gets an intermediate and the root
    // as the bundle.
    let (root_cert, root_key) =
        trellis_identity::authority::new_root("prod.example", Duration::from_secs(3600)).unwrap();
    let root = Signer::from_pem("prod.example", &root_cert, &root_key, "").unwrap();
    let (inter_cert, inter_key) =
        trellis_identity::authority::new_intermediate(&root, Duration::from_secs(3600)).unwrap();
    let mesh = Mesh::start_with("operator-ca", "1h", |dir| {
        for (name, text) in [("inter.pem", &inter_cert), ("inter.key", &inter_key), ("root.pem", &root_cert)] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let path = |name: &str| dir.join(name).display().to_string();
        vec![
            "--trust-domain".into(),
            "prod.example".into(),
            "--ca-cert".into(),
            path("inter.pem"),
            "--ca-key".into(),
            path("inter.key"),
            "--ca-bundle".into(),
            path("root.pem"),
        ]
    });
    let status: serde_json::Value = serde_json::from_str(&mesh.cli(&["ca", "status", "-o", "json"])).unwrap();
    assert_eq!(status["managed"], false);
    assert_eq!(status["trustDomain"], "prod.example");
    // Rotation is the operator's with a provided CA.
    let refused = Command::new(trellis_testkit::process::cargo_bin("trellis"))
        .args(["ca", "add-root"])
        .env("TRELLIS_SERVER", format!("http://127.0.0.1:{}", mesh.api))
        .env("TRELLIS_TOKEN", &mesh.token)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("provided by the operator"));

    let (_backend, backend_addr) = spawn_backend(&["http", "--name", "reviews"]);
    mesh.apply("kind: Service\nname: reviews\nnamespace: shop\nports: [{port: 80, protocol: http}]\n");
    mesh.apply("kind: Policy\nname: shop-permissive\nnamespace: shop\nmtls: permissive\n");
    let pair = mesh.reviews_and_web(backend_addr);
    let reviews_admin = pair.reviews_admin;
    let inbound = pair.inbound;
    let explicit = pair.explicit;
    // Through the mesh: mutual TLS with a chain leaf → intermediate → operator root.
    let url = format!("http://127.0.0.1:{explicit}/items");
    wait_until("a request through both proxies", Duration::from_secs(30), || http_status(&url) == Some(200));
    let seen: serde_json::Value = serde_json::from_str(&support::http_text(&url)).unwrap();
    assert_eq!(seen["headers"]["x-trellis-peer-identity"], "spiffe://prod.example/ns/shop/sa/web");
    let chain = std::fs::read_to_string(mesh.dir.0.join("state-reviews/identity/svid.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "the leaf travels with the intermediate");
    // Permissive: a plaintext client still gets through, and the metrics say which was which.
    assert_eq!(http_status(&format!("http://127.0.0.1:{inbound}/items")), Some(200));
    let metrics = support::http_text(&format!("http://127.0.0.1:{reviews_admin}/metrics"));
    assert!(metrics.contains("trellis_inbound_connections_total{security=\"mtls\"}"), "{metrics}");
    assert!(metrics.contains("trellis_inbound_connections_total{security=\"plaintext\"}"), "{metrics}");
}
