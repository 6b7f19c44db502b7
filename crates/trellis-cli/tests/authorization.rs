//! Authorization beyond local rules: an external authorizer (decision cache, fail closed and
//! fail open), and tenants (calls across tenants refused unless both sides allow them).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;
use support::{Mesh, http_status, wait_until};
use trellis_testkit::backend::spawn_backend;
use trellis_testkit::http::free_port;
use trellis_testkit::process::ChildProcess;

const UP: u8 = 0;
const DOWN: u8 = 1;
const SLOW: u8 = 2;

/// A small authorization service: allows unless the forwarded URI starts with /private;
/// counts the checks it answers. DOWN closes connections unanswered; SLOW answers after 1 s.
struct Authorizer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
}

impl Authorizer {
    fn start() -> Authorizer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(AtomicU8::new(UP));
        let (c, m) = (calls.clone(), mode.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (calls, mode) = (c.clone(), m.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut uri = String::new();
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-forwarded-uri:") {
                                uri = v.trim().to_string();
                            }
                        }
                        match mode.load(Ordering::SeqCst) {
                            DOWN => return,
                            SLOW => std::thread::sleep(Duration::from_secs(1)),
                            _ => {}
                        }
                        calls.fetch_add(1, Ordering::SeqCst);
                        let status = if uri.starts_with("/private") { "403 Forbidden" } else { "200 OK" };
                        if write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Authorizer { addr, calls, mode }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// (status, x-trellis-error) of a GET through the caller's proxy.
fn get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-D", "-", "-w", "\nSTATUS:%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.rsplit("STATUS:").next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let error = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().starts_with("x-trellis-error:").then(|| l[16..].trim().to_string()))
        .unwrap_or_default();
    (status, error)
}

/// A server proxy for `service` in `namespace` in front of a backend, and a caller proxy
/// (`caller` in `caller_ns`) with an explicit listener for it; returns the processes, the
/// listener's port and the (server, caller) admin ports.
fn pair(
    mesh: &Mesh,
    service: &str,
    namespace: &str,
    caller: &str,
    caller_ns: &str,
) -> (Vec<ChildProcess>, u16, (u16, u16)) {
    let (backend, backend_addr) = spawn_backend(&["http", "--name", service]);
    mesh.join_token(service, namespace, service);
    mesh.join_token(caller, caller_ns, caller);
    let inbound = free_port();
    let (server, server_admin) = mesh.proxy(
        service,
        &format!(
            "inbound: {{listen: '127.0.0.1:{inbound}', forward: '{backend_addr}'}}\nworkload: {{service: {service}, namespace: {namespace}, address: '127.0.0.1:{inbound}'}}\n"
        ),
    );
    let explicit = free_port();
    let (client, client_admin) = mesh.proxy(
        caller,
        &format!(
            "explicit: [{{listen: '127.0.0.1:{explicit}', service: {service}.{namespace}}}]\nworkload: {{service: {caller}, namespace: {caller_ns}, address: '127.0.0.1:{}', calls: [{service}.{namespace}]}}\n",
            free_port()
        ),
    );
    for admin in [server_admin, client_admin] {
        wait_until("proxy ready", Duration::from_secs(30), || {
            http_status(&format!("http://127.0.0.1:{admin}/ready")) == Some(200)
        });
    }
    (vec![backend, server, client], explicit, (server_admin, client_admin))
}

fn external_policy(authorizer: SocketAddr, fail_open: bool) -> String {
    format!(
        "kind: Policy\nname: reviews-ext\nnamespace: shop\nservice: reviews\nexternal: {{url: 'http://{authorizer}/check', timeout: 300ms, cacheTtl: 3s, failOpen: {fail_open}}}\n"
    )
}

#[test]
fn external_authorizer_is_cached_and_fails_closed_or_open() {
    let mesh = Mesh::start("ext-authz", "1h");
    let authorizer = Authorizer::start();
    mesh.apply("kind: Service\nname: reviews\nnamespace: shop\nports: [{port: 80, protocol: http}]\n");
    mesh.apply(&external_policy(authorizer.addr, false));
    let (_processes, port, _) = pair(&mesh, "reviews", "shop", "web", "shop");
    wait_until("a first request through both proxies", Duration::from_secs(30), || get(port, "/items").0 == 200);

    // Repeated identical requests: one check per cache TTL.
    let before = authorizer.calls();
    for _ in 0..20 {
        assert_eq!(get(port, "/items").0, 200);
    }
    let during_ttl = authorizer.calls() - before;
    assert!(during_ttl <= 1, "20 identical requests within the TTL reached the authorizer {during_ttl} times");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(get(port, "/items").0, 200);
    assert_eq!(authorizer.calls() - before, during_ttl + 1, "after the TTL the authorizer is asked again");

    // A denial names the authorizer's rule; it is cached too.
    let calls = authorizer.calls();
    for _ in 0..5 {
        assert_eq!(get(port, "/private/x"), (403, "denied; rule=external".to_string()));
    }
    assert_eq!(authorizer.calls() - calls, 1);

    // The authorizer goes down: fail closed refuses what is not cached...
    authorizer.mode.store(DOWN, Ordering::SeqCst);
    assert_eq!(get(port, "/orders"), (403, "authorizer-unavailable; rule=external".to_string()));
    // ...and a slow authorizer costs at most the timeout, then the same refusal.
    authorizer.mode.store(SLOW, Ordering::SeqCst);
    assert_eq!(get(port, "/slow"), (403, "authorizer-unavailable; rule=external".to_string()));

    // Fail open lets requests through while it is down or slow.
    mesh.apply(&external_policy(authorizer.addr, true));
    authorizer.mode.store(DOWN, Ordering::SeqCst);
    wait_until("failOpen pushed", Duration::from_secs(10), || get(port, "/down-open").0 == 200);
    authorizer.mode.store(SLOW, Ordering::SeqCst);
    assert_eq!(get(port, "/slow-open").0, 200);
}

#[test]
fn calls_across_tenants_need_both_sides_to_allow_them() {
    let mesh = Mesh::start("tenants", "1h");
    mesh.apply(
        "kind: Tenant\nname: acme\nnamespaces: [shop]\n---\nkind: Tenant\nname: globex\nnamespaces: [billing]\n",
    );
    mesh.apply("kind: Service\nname: invoices\nnamespace: billing\nports: [{port: 80, protocol: http}]\n");
    let (_processes, port, (invoices_admin, web_admin)) = pair(&mesh, "invoices", "billing", "web", "shop");
    let metrics = |admin: u16| support::http_text(&format!("http://127.0.0.1:{admin}/metrics"));

    // Nothing allows it: the caller's proxy refuses to leave its tenant.
    wait_until("the invoices endpoint pushed", Duration::from_secs(30), || get(port, "/inv").0 == 403);
    assert_eq!(get(port, "/inv"), (403, "denied; rule=cross-tenant".to_string()));
    let refused_by_callee = |m: &str| {
        support::metric_value(
            m,
            r#"trellis_authz_decisions_total{policy="tenancy",rule="cross-tenant",decision="deny"}"#,
        ) > 0.0
    };
    assert!(refused_by_callee(&metrics(web_admin)), "the caller's proxy refused");
    assert!(!refused_by_callee(&metrics(invoices_admin)), "the request never reached the callee");

    // The caller's side allows egress to globex; the callee still refuses: no rule names acme.
    mesh.apply("kind: Policy\nname: shop-egress\nnamespace: shop\negress: [{name: to-billing, tenants: [globex]}]\n");
    // An allow rule for every caller does not open a tenant boundary.
    mesh.apply("kind: Policy\nname: invoices-open\nnamespace: billing\nrules: [{name: anyone, action: allow}]\n");
    wait_until("egress allowed at the caller", Duration::from_secs(10), || {
        get(port, "/inv").1 == "denied; rule=cross-tenant" && get(port, "/inv").0 == 403
    });
    assert!(
        support::metric_value(
            &metrics(web_admin),
            r#"trellis_authz_decisions_total{policy="shop-egress",rule="to-billing",decision="allow"}"#
        ) > 0.0,
        "the caller's egress rule let it out"
    );
    assert!(refused_by_callee(&metrics(invoices_admin)), "the callee refused it");

    // Both sides allow: the callee names the caller's tenant.
    mesh.apply(
        "kind: Policy\nname: invoices-open\nnamespace: billing\nrules: [{name: from-acme, action: allow, from: {tenants: [acme]}}]\n",
    );
    wait_until("both sides allow", Duration::from_secs(10), || get(port, "/inv").0 == 200);

    // Take the caller's egress away again: refused at the caller.
    mesh.cli(&["delete", "policy/shop-egress", "-n", "shop"]);
    wait_until("egress removed", Duration::from_secs(10), || {
        get(port, "/inv") == (403, "denied; rule=cross-tenant".to_string())
    });
}
