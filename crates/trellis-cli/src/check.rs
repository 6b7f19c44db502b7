//! `trellis check`: is the mesh healthy, and if not, what to do about it. It looks at this
//! machine (the tools the proxy needs for transparent capture) and at a running mesh through
//! the control plane: reachable and accepting the token, clocks in step, the CA's roots, and
//! every proxy — connected, ready, running the configuration it was sent, with a certificate
//! that is valid and not about to expire, and a clock close to the control plane's.

use crate::client::Connection;
use crate::resources::Output;
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: String,
    verdict: Verdict,
    detail: String,
    /// What to do about it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &str, verdict: Verdict, detail: impl Into<String>, fix: Option<String>) {
        self.0.push(Finding { check: check.into(), verdict, detail: detail.into(), fix });
    }
    fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Verdict::Ok, detail, None);
    }
    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Verdict::Warn, detail, Some(fix.into()));
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Verdict::Fail, detail, Some(fix.into()));
    }
}

/// Clock differences beyond this break certificate checks and proofs of possession (±5 min).
const SKEW_WARN: Duration = Duration::from_secs(2);
const SKEW_FAIL: Duration = Duration::from_secs(60);

fn now_unix() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub async fn run(conn: &Connection, expiry_warning: Duration, output: Output) -> anyhow::Result<()> {
    let mut report = Report::default();
    environment(&mut report);
    mesh(conn, expiry_warning, &mut report).await;
    let failed = report.0.iter().any(|f| f.verdict == Verdict::Fail);
    match output {
        Output::Table => {
            for f in &report.0 {
                let mark = match f.verdict {
                    Verdict::Ok => "ok  ",
                    Verdict::Warn => "WARN",
                    Verdict::Fail => "FAIL",
                };
                println!("{mark}  {:<28} {}", f.check, f.detail);
                if let Some(fix) = &f.fix {
                    println!("      {:<28} → {fix}", "");
                }
            }
        }
        _ => crate::resources::print(output, &serde_json::to_value(&report.0)?, |_| {})?,
    }
    if failed {
        anyhow::bail!("some checks failed (see above)");
    }
    Ok(())
}

/// What transparent capture needs on this machine.
fn environment(report: &mut Report) {
    for (tool, package) in [("iptables-restore", "iptables"), ("ip", "iproute2")] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).exists()));
        if found {
            report.ok(&format!("tool {tool}"), "found (needed by `trellis capture`)");
        } else {
            report.warn(
                &format!("tool {tool}"),
                "not found; `trellis capture` cannot install rules here",
                format!("apt-get install {package} (only needed for transparent capture)"),
            );
        }
    }
}

async fn mesh(conn: &Connection, expiry_warning: Duration, report: &mut Report) {
    // Reachable at all?
    let started = SystemTime::now();
    match conn.call(http::Method::GET, "/healthz", None).await {
        Ok((200, _)) => report.ok("control plane", format!("reachable at {}", conn.server)),
        Ok((status, _)) => {
            return report.fail(
                "control plane",
                format!("{} answered {status} to /healthz", conn.server),
                "is --server (TRELLIS_SERVER) the control plane's API address?",
            );
        }
        Err(e) => {
            return report.fail(
                "control plane",
                format!("{e:#}"),
                "start it with `trellis control`, or point --server / TRELLIS_SERVER at it",
            );
        }
    }

    let proxies = match conn.call(http::Method::GET, "/v1/proxies", None).await {
        Ok((200, body)) => body,
        Ok((401, body)) => {
            return report.fail(
                "token",
                body["error"].as_str().unwrap_or("refused").to_string(),
                "pass --token-file DATA_DIR/admin.token, or create one with `trellis token create NAME --role viewer`",
            );
        }
        Ok((status, body)) => {
            return report.fail("token", format!("{status}: {}", body["error"]), "check the control plane's log");
        }
        Err(e) => return report.fail("token", format!("{e:#}"), "retry; check the control plane's log"),
    };
    report.ok("token", "accepted");

    // This machine's clock against the control plane's (its idea of now, in the answer).
    let elapsed = started.elapsed().unwrap_or_default();
    if let Some(theirs) = proxies["now_unix"].as_i64() {
        let skew = (now_unix() - theirs).abs();
        let margin = elapsed.as_secs() as i64 + 1;
        if skew > SKEW_FAIL.as_secs() as i64 + margin {
            report.fail("clock", format!("this machine is {skew} s off the control plane"), "synchronise clocks (NTP)");
        } else if skew > SKEW_WARN.as_secs() as i64 + margin {
            report.warn("clock", format!("this machine is {skew} s off the control plane"), "synchronise clocks (NTP)");
        } else {
            report.ok("clock", "in step with the control plane");
        }
    }

    match conn.call(http::Method::GET, "/v1/ca", None).await {
        Ok((200, ca)) => certificate_authority(&ca, report),
        Ok((status, body)) => report.warn(
            "certificate authority",
            format!("{status}: {}", body["error"]),
            "check the control plane's log",
        ),
        Err(e) => report.warn("certificate authority", format!("{e:#}"), "retry"),
    }

    let items = proxies["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        report.warn(
            "proxies",
            "none has connected",
            "start proxies with `control:` and `workload:` in their `kind: Proxy` (see examples/sidecar.yaml)",
        );
        return;
    }
    let connected = items.iter().filter(|p| p["connected"] == true).count();
    report.ok("proxies", format!("{connected} of {} connected", items.len()));
    for proxy in &items {
        one_proxy(proxy, expiry_warning, report);
    }
}

fn certificate_authority(ca: &Value, report: &mut Report) {
    let soon = now_unix() + 30 * 86_400;
    let mut fine = true;
    for root in ca["roots"].as_array().into_iter().flatten() {
        let not_after = root["notAfter"].as_i64().unwrap_or(0);
        let fingerprint = root["fingerprint"].as_str().unwrap_or("?");
        let short = fingerprint.get(..16).unwrap_or(fingerprint);
        if not_after < now_unix() {
            fine = false;
            report.fail("certificate authority", format!("root {short}… expired"), "rotate it: `trellis ca rotate`");
        } else if not_after < soon && root["active"] == true {
            fine = false;
            report.warn(
                "certificate authority",
                format!("the signing root {short}… expires within 30 days"),
                "rotate it now: `trellis ca rotate`",
            );
        }
    }
    if fine {
        report.ok(
            "certificate authority",
            format!("trust domain {}, roots valid", ca["trustDomain"].as_str().unwrap_or("?")),
        );
    }
}

fn one_proxy(proxy: &Value, expiry_warning: Duration, report: &mut Report) {
    let id = proxy["proxy_id"].as_str().unwrap_or("?");
    let check = format!("proxy {id}");
    if proxy["connected"] != true {
        let ago = proxy["last_seen_seconds_ago"].as_u64().unwrap_or(0);
        return report.warn(
            &check,
            format!("not connected (last heard from {ago} s ago); it serves its last configuration"),
            "check that the proxy runs and reaches the control plane's push address (its log says why not)",
        );
    }
    if let Some(nack) = proxy["nack"].as_str() {
        return report.fail(
            &check,
            format!("rejected the newest configuration: {nack}"),
            "fix or roll back the document it names (`trellis history`, `trellis rollback`)",
        );
    }
    if proxy["in_sync"] != true {
        report.warn(
            &check,
            format!(
                "not yet running the version sent ({} sent, {} acknowledged)",
                proxy["sent_version"].as_str().unwrap_or("-"),
                proxy["acked_version"].as_str().unwrap_or("-")
            ),
            "wait a few seconds; if it stays, look at the proxy's log",
        );
        return;
    }
    if proxy["ready"] != true {
        return report.fail(&check, "connected but not ready", "GET /ready on its admin listener says why");
    }
    match proxy["certificate_not_after"].as_i64() {
        Some(not_after) if not_after <= now_unix() => {
            return report.fail(
                &check,
                "its workload certificate has expired: mutual TLS is refused",
                "it renews through the control plane; check its log for the renewal error",
            );
        }
        Some(not_after) if not_after - now_unix() < expiry_warning.as_secs() as i64 => {
            return report.warn(
                &check,
                format!("its certificate expires in {} s", not_after - now_unix()),
                "renewal should have happened by now; check the proxy's log",
            );
        }
        _ => {}
    }
    if let Some(skew) = proxy["clock_skew_ms"].as_i64() {
        let skew_s = skew.abs() / 1000;
        if skew_s >= SKEW_FAIL.as_secs() as i64 {
            return report.fail(
                &check,
                format!("its clock is {skew_s} s off the control plane's"),
                "synchronise clocks (NTP)",
            );
        }
        if skew.unsigned_abs() >= SKEW_WARN.as_millis() as u64 {
            return report.warn(
                &check,
                format!("its clock is {skew_s} s off the control plane's"),
                "synchronise clocks (NTP)",
            );
        }
    }
    let workload = &proxy["workload"];
    report.ok(
        &check,
        format!(
            "{}.{} ready, in sync{}",
            workload["service"].as_str().unwrap_or("?"),
            workload["namespace"].as_str().unwrap_or("?"),
            if proxy["certificate_not_after"].is_i64() { ", certificate valid" } else { "" }
        ),
    );
}
