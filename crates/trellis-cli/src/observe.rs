//! `trellis stat`, `top`, `edges`, `tap` and `dashboard`: what the mesh is doing, from the
//! control plane's telemetry API. Tables for people, `-o json` for scripts.

use crate::client::{Connection, api_error};
use crate::resources::Output;
use http_body_util::BodyExt;
use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

async fn get(conn: &Connection, path: &str) -> anyhow::Result<Value> {
    let (status, body) = conn.call(http::Method::GET, path, None).await?;
    if (200..300).contains(&status) { Ok(body) } else { Err(api_error(status, &body)) }
}

/// `key=value&…` with values percent-encoded; `None`s are left out.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        let Some(value) = value else { continue };
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(key);
        out.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn percent(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |f| format!("{:.2}%", f * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |f| if f < 10.0 { format!("{f:.2}ms") } else { format!("{f:.0}ms") })
}

fn rps(v: &Value) -> String {
    format!("{:.1}", v.as_f64().unwrap_or(0.0))
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// Only this service (`NAME` or `NAME.NAMESPACE`).
    pub service: Option<String>,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[arg(long, value_parser = ["service", "route", "subset"], default_value = "service")]
    pub by: String,
    #[arg(long, short = 'w', default_value = "30s")]
    pub window: String,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

pub async fn stat(conn: &Connection, args: StatArgs) -> anyhow::Result<()> {
    let path = format!(
        "/v1/stats{}",
        query(&[
            ("window", Some(args.window.clone())),
            ("by", Some(args.by.clone())),
            ("namespace", args.namespace.clone()),
            ("service", args.service.clone()),
        ])
    );
    let body = get(conn, &path).await?;
    if args.output != Output::Table {
        return crate::resources::print(args.output, &body, |_| {});
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no traffic reported in the last {} (proxies report every 5 s)", args.window);
        return Ok(());
    }
    let extra = match args.by.as_str() {
        "route" => "ROUTE",
        "subset" => "SUBSET",
        _ => "",
    };
    println!(
        "{:<24} {:<12} {:<16} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "SERVICE", "NAMESPACE", extra, "MESHED", "SUCCESS", "RPS", "P50", "P95", "P99"
    );
    for row in items {
        let group = row["route"].as_str().or(row["subset"].as_str()).unwrap_or("");
        println!(
            "{:<24} {:<12} {:<16} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9}",
            row["service"].as_str().unwrap_or("?"),
            row["namespace"].as_str().unwrap_or(""),
            group,
            row["meshed"],
            percent(&row["successRate"]),
            rps(&row["rps"]),
            ms(&row["p50Ms"]),
            ms(&row["p95Ms"]),
            ms(&row["p99Ms"]),
        );
    }
    Ok(())
}

pub async fn edges(conn: &Connection, namespace: Option<String>, window: String, output: Output) -> anyhow::Result<()> {
    let body = get(conn, &format!("/v1/edges{}", query(&[("window", Some(window.clone())), ("namespace", namespace)])))
        .await?;
    if output != Output::Table {
        return crate::resources::print(output, &body, |_| {});
    }
    let items = body["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no calls reported in the last {window}");
        return Ok(());
    }
    println!("{:<24} {:<24} {:>8} {:>9} {:<5}  IDENTITIES (caller → callee)", "FROM", "TO", "RPS", "SUCCESS", "MTLS");
    for edge in items {
        let join = |v: &Value| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().filter(|s| !s.is_empty()).unwrap_or("plaintext").to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{:<24} {:<24} {:>8} {:>9} {:<5}  {} → {}",
            edge["from"].as_str().unwrap_or("?"),
            edge["to"].as_str().unwrap_or("?"),
            rps(&edge["rps"]),
            percent(&edge["successRate"]),
            if edge["mtls"].as_bool() == Some(true) { "yes" } else { "no" },
            join(&edge["sourceIdentities"]),
            join(&edge["destinationIdentities"]),
        );
    }
    Ok(())
}

/// The busiest routes, refreshed every `interval` (once with `-o json`).
pub async fn top(
    conn: &Connection,
    namespace: Option<String>,
    window: String,
    interval: Duration,
    output: Output,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/stats{}",
        query(&[("by", Some("route".into())), ("window", Some(window.clone())), ("namespace", namespace)])
    );
    loop {
        let body = get(conn, &path).await?;
        let mut items = body["items"].as_array().cloned().unwrap_or_default();
        items.sort_by(|a, b| b["rps"].as_f64().unwrap_or(0.0).total_cmp(&a["rps"].as_f64().unwrap_or(0.0)));
        if output != Output::Table {
            return crate::resources::print(output, &Value::Array(items), |_| {});
        }
        // Clear the screen and go home, as `top` does.
        print!("\x1b[2J\x1b[H");
        println!("busiest routes over the last {window}   (every {}s; Ctrl-C to stop)\n", interval.as_secs());
        println!("{:<24} {:<16} {:>8} {:>9} {:>9} {:>9}", "SERVICE", "ROUTE", "RPS", "SUCCESS", "P50", "P99");
        for row in items.iter().take(30) {
            println!(
                "{:<24} {:<16} {:>8} {:>9} {:>9} {:>9}",
                format!("{}.{}", row["service"].as_str().unwrap_or("?"), row["namespace"].as_str().unwrap_or("")),
                row["route"].as_str().unwrap_or(""),
                rps(&row["rps"]),
                percent(&row["successRate"]),
                ms(&row["p50Ms"]),
                ms(&row["p99Ms"]),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[derive(clap::Args)]
pub struct TapArgs {
    /// The service (`NAME` or `NAME.NAMESPACE`); every service when left out.
    pub service: Option<String>,
    #[arg(long, value_parser = ["inbound", "outbound"])]
    pub direction: Option<String>,
    #[arg(long)]
    pub route: Option<String>,
    #[arg(long)]
    pub method: Option<String>,
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Only responses with at least this status, e.g. 500.
    #[arg(long)]
    pub min_status: Option<u16>,
    /// Only requests from or to this SPIFFE ID.
    #[arg(long)]
    pub identity: Option<String>,
    /// Stop after this many requests.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop after this long, e.g. 30s (default 10m).
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
}

/// Streams live requests until `max`, `duration` or Ctrl-C.
pub async fn tap(conn: &Connection, args: TapArgs) -> anyhow::Result<()> {
    let path = format!(
        "/v1/tap{}",
        query(&[
            ("service", args.service),
            ("direction", args.direction),
            ("route", args.route),
            ("method", args.method),
            ("pathPrefix", args.path_prefix),
            ("minStatus", args.min_status.map(|s| s.to_string())),
            ("identity", args.identity),
            ("max", args.max.map(|m| m.to_string())),
            ("duration", args.duration),
        ])
    );
    let response = conn.stream(&path).await?;
    let mut body = response.into_body();
    let mut pending = Vec::new();
    if args.output == Output::Table {
        eprintln!("watching live requests (Ctrl-C to stop)…");
    }
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let Ok(data) = frame?.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).trim().to_string();
            if text.is_empty() {
                continue;
            }
            match args.output {
                Output::Json => println!("{text}"),
                Output::Yaml => {
                    let value: Value = serde_json::from_str(&text)?;
                    print!("---\n{}", serde_yaml_ng::to_string(&value)?);
                }
                Output::Table => print_tap_line(&serde_json::from_str(&text)?),
            }
        }
    }
}

fn print_tap_line(e: &Value) {
    let identity = |v: &Value| v.as_str().filter(|s| !s.is_empty()).unwrap_or("plaintext").to_string();
    let grpc = e["grpcStatus"].as_u64().map(|g| format!(" grpc={g}")).unwrap_or_default();
    let error = e["error"].as_str().map(|r| format!(" error={r}")).unwrap_or_default();
    println!(
        "{} {:<8} {} {} {}{} :status={}{grpc} latency={} {} → {}{error}",
        e["time"].as_str().unwrap_or(""),
        e["direction"].as_str().unwrap_or(""),
        e["service"].as_str().unwrap_or(""),
        e["method"].as_str().unwrap_or(""),
        e["authority"].as_str().unwrap_or(""),
        e["path"].as_str().unwrap_or(""),
        e["status"],
        ms(&e["latencyMs"]),
        identity(&e["sourceIdentity"]),
        identity(&e["destinationIdentity"]),
    );
}

/// Prints the dashboard's address (with the token in the fragment, which browsers never
/// send to the server), and opens it when asked.
pub async fn dashboard(conn: &Connection, open: bool) -> anyhow::Result<()> {
    // Fail early and clearly if the control plane is not there.
    get(conn, "/v1/stats?window=30s").await?;
    let base = conn.server.trim_end_matches('/');
    let url = match conn.token()? {
        Some(token) => format!("{base}/dashboard/#token={token}"),
        None => format!("{base}/dashboard/"),
    };
    println!("{url}");
    if open {
        open_in_browser(&url);
    }
    Ok(())
}

/// Asks the desktop to open `url`; says so when there is no browser to ask.
pub fn open_in_browser(url: &str) -> bool {
    let opened = ["xdg-open", "open"].iter().any(|opener| {
        std::process::Command::new(opener)
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !opened {
        eprintln!("could not open a browser here; open the address above yourself");
    }
    opened
}
