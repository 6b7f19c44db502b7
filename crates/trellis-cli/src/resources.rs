//! The resource verbs: `apply`, `get`, `delete`, `history`, `rollback`, `token create`.
//! Each is one call to the control plane's API, printed as a table, JSON or YAML.

use crate::client::{Connection, api_error};
use anyhow::Context;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// `KIND/NAME`, e.g. `service/reviews`.
pub fn parse_target(target: &str, namespace: &str) -> anyhow::Result<(String, String, String)> {
    let (kind, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("`{target}`: expected KIND/NAME, e.g. service/reviews"))?;
    let kind = canonical_kind(kind)?;
    let namespace = if kind == "Proxy" || kind == "Tenant" { "-".to_string() } else { namespace.to_string() };
    Ok((kind, namespace, name.to_string()))
}

pub fn canonical_kind(kind: &str) -> anyhow::Result<String> {
    match kind.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => Ok("Service".into()),
        "endpoints" | "endpoint" | "ep" => Ok("Endpoints".into()),
        "proxy" | "proxies" => Ok("Proxy".into()),
        "policy" | "policies" | "pol" => Ok("Policy".into()),
        "tenant" | "tenants" => Ok("Tenant".into()),
        "telemetry" | "telemetries" => Ok("Telemetry".into()),
        other => {
            anyhow::bail!("unknown kind `{other}`; valid kinds: service, endpoints, policy, tenant, telemetry, proxy")
        }
    }
}

pub fn print(output: Output, value: &Value, table: impl FnOnce(&Value)) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Output::Table => table(value),
    }
    Ok(())
}

fn expect_ok(status: u16, body: Value) -> anyhow::Result<Value> {
    if (200..300).contains(&status) { Ok(body) } else { Err(api_error(status, &body)) }
}

pub async fn apply(conn: &Connection, files: &[PathBuf], dry_run: bool, output: Output) -> anyhow::Result<()> {
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.display().to_string();
        let path = format!("/v1/apply?dryRun={dry_run}&file={}", percent_encode(&name));
        let (status, body) = conn.call(http::Method::POST, &path, Some((text, "application/yaml"))).await?;
        let body = expect_ok(status, body)?;
        print(output, &body, |body| {
            for change in body["changes"].as_array().into_iter().flatten() {
                let action = change["action"].as_str().unwrap_or("?").to_ascii_lowercase();
                let suffix = if dry_run { " (dry run)" } else { "" };
                println!("{} {action}{suffix}", change["key"].as_str().unwrap_or("?"));
            }
        })?;
    }
    Ok(())
}

pub async fn get(conn: &Connection, what: &str, namespace: Option<&str>, output: Output) -> anyhow::Result<()> {
    if matches!(what, "proxies" | "proxy" | "px") {
        return proxies(conn, namespace, output).await;
    }
    if let Some(service) = what.strip_prefix("endpoints/").or_else(|| what.strip_prefix("ep/")) {
        return endpoints(conn, service, namespace.unwrap_or("default"), output).await;
    }
    if what.contains('/') {
        let (kind, ns, name) = parse_target(what, namespace.unwrap_or("default"))?;
        let (status, body) = conn.call(http::Method::GET, &format!("/v1/resources/{kind}/{ns}/{name}"), None).await?;
        let body = expect_ok(status, body)?;
        return print(output, &body["document"], |doc| print!("{}", serde_yaml_ng::to_string(doc).unwrap_or_default()));
    }
    let kind = canonical_kind(what)?;
    let mut path = format!("/v1/resources?kind={kind}");
    if let Some(ns) = namespace {
        path.push_str(&format!("&namespace={}", percent_encode(ns)));
    }
    let (status, body) = conn.call(http::Method::GET, &path, None).await?;
    let body = expect_ok(status, body)?;
    print(output, &body, |body| {
        println!("{:<16} {:<28} {:>10} {:>9}  CHANGED BY", "NAMESPACE", "NAME", "GENERATION", "REVISION");
        for item in body["items"].as_array().into_iter().flatten() {
            println!(
                "{:<16} {:<28} {:>10} {:>9}  {}",
                item["key"]["namespace"].as_str().unwrap_or("?"),
                item["key"]["name"].as_str().unwrap_or("?"),
                item["generation"],
                item["revision"],
                item["actor"].as_str().unwrap_or("?")
            );
        }
    })
}

/// Connected proxies: workload, the version they acknowledged, in sync or not, last seen.
async fn proxies(conn: &Connection, namespace: Option<&str>, output: Output) -> anyhow::Result<()> {
    let (status, body) = conn.call(http::Method::GET, "/v1/proxies", None).await?;
    let mut body = expect_ok(status, body)?;
    if let (Some(ns), Some(items)) = (namespace, body["items"].as_array_mut()) {
        items.retain(|p| p["workload"]["namespace"] == ns);
    }
    print(output, &body, |body| {
        println!(
            "{:<28} {:<24} {:<10} {:<17} {:<8} {:>9}  LAST NACK",
            "PROXY", "WORKLOAD", "STATE", "ACKED VERSION", "IN SYNC", "LAST SEEN"
        );
        for p in body["items"].as_array().into_iter().flatten() {
            let workload = format!(
                "{}.{}",
                p["workload"]["service"].as_str().unwrap_or("-"),
                p["workload"]["namespace"].as_str().unwrap_or("-")
            );
            let state = match (p["connected"].as_bool(), p["ready"].as_bool()) {
                (Some(false), _) => "gone",
                (_, Some(true)) => "ready",
                _ => "not-ready",
            };
            println!(
                "{:<28} {:<24} {:<10} {:<17} {:<8} {:>8}s  {}",
                p["proxy_id"].as_str().unwrap_or("?"),
                workload,
                state,
                p["acked_version"].as_str().unwrap_or("-"),
                if p["in_sync"].as_bool().unwrap_or(false) { "yes" } else { "no" },
                p["last_seen_seconds_ago"],
                p["nack"].as_str().unwrap_or("")
            );
        }
    })
}

/// A service's endpoints, static and registered.
async fn endpoints(conn: &Connection, service: &str, namespace: &str, output: Output) -> anyhow::Result<()> {
    let (status, body) = conn.call(http::Method::GET, &format!("/v1/endpoints/{namespace}/{service}"), None).await?;
    let body = expect_ok(status, body)?;
    print(output, &body, |body| {
        println!("{:<22} {:<11} {:<6} {:<28} LABELS", "ADDRESS", "SOURCE", "READY", "PROXY");
        for e in body["items"].as_array().into_iter().flatten() {
            let labels: Vec<String> = e["labels"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
                .unwrap_or_default();
            println!(
                "{:<22} {:<11} {:<6} {:<28} {}",
                e["address"].as_str().unwrap_or("-"),
                e["source"].as_str().unwrap_or("-"),
                if e["ready"].as_bool().unwrap_or(false) { "yes" } else { "no" },
                e["proxy"].as_str().unwrap_or("-"),
                labels.join(",")
            );
        }
    })
}

pub async fn delete(conn: &Connection, target: &str, namespace: &str) -> anyhow::Result<()> {
    let (kind, ns, name) = parse_target(target, namespace)?;
    let (status, body) = conn.call(http::Method::DELETE, &format!("/v1/resources/{kind}/{ns}/{name}"), None).await?;
    expect_ok(status, body)?;
    println!("{kind}/{ns}/{name} deleted");
    Ok(())
}

pub async fn history(conn: &Connection, target: &str, namespace: &str, output: Output) -> anyhow::Result<()> {
    let (kind, ns, name) = parse_target(target, namespace)?;
    let (status, body) =
        conn.call(http::Method::GET, &format!("/v1/resources/{kind}/{ns}/{name}/history"), None).await?;
    let body = expect_ok(status, body)?;
    print(output, &body, |body| {
        println!("{:>10} {:>9}  {:<10} {:<24} BY", "GENERATION", "REVISION", "ACTION", "TIME (UTC)");
        for g in body["generations"].as_array().into_iter().flatten() {
            let action = if g["deleted"].as_bool().unwrap_or(false) { "deleted" } else { "applied" };
            let time = g["time_unix_ms"].as_u64().map(|ms| format!("{}", ms / 1000)).unwrap_or_default();
            println!(
                "{:>10} {:>9}  {:<10} {:<24} {}",
                g["generation"],
                g["revision"],
                action,
                time,
                g["actor"].as_str().unwrap_or("?")
            );
        }
    })
}

pub async fn rollback(conn: &Connection, target: &str, namespace: &str, to: u64) -> anyhow::Result<()> {
    let (kind, ns, name) = parse_target(target, namespace)?;
    let body = json!({"to": to}).to_string();
    let (status, body) = conn
        .call(
            http::Method::POST,
            &format!("/v1/resources/{kind}/{ns}/{name}/rollback"),
            Some((body, "application/json")),
        )
        .await?;
    let body = expect_ok(status, body)?;
    println!("{kind}/{ns}/{name} rolled back to generation {to} (now generation {})", body["generation"]);
    Ok(())
}

/// What `trellis token create` asks for.
pub struct TokenRequest<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub namespace: Option<&'a str>,
    pub service_account: Option<&'a str>,
    pub ttl: Option<std::time::Duration>,
    pub single_use: bool,
}

pub async fn create_token(conn: &Connection, token: TokenRequest<'_>) -> anyhow::Result<()> {
    let name = token.name;
    let mut request = match (token.role, token.namespace, token.service_account) {
        ("admin", _, _) => json!({"name": name, "role": "admin"}),
        ("viewer", _, _) => json!({"name": name, "role": "viewer"}),
        ("service-owner", Some(ns), _) => json!({"name": name, "role": "service-owner", "namespace": ns}),
        ("service-owner", None, _) => anyhow::bail!("a service-owner token needs --namespace"),
        ("join", Some(ns), Some(sa)) => json!({"name": name, "role": "join", "namespace": ns, "service_account": sa}),
        ("join", _, _) => anyhow::bail!("a join token needs --namespace and --service-account"),
        (other, _, _) => anyhow::bail!("unknown role `{other}`; valid roles: admin, service-owner, viewer, join"),
    };
    if let Some(ttl) = token.ttl {
        request["ttlSeconds"] = json!(ttl.as_secs());
    }
    request["singleUse"] = json!(token.single_use);
    let (status, body) =
        conn.call(http::Method::POST, "/v1/tokens", Some((request.to_string(), "application/json"))).await?;
    let body = expect_ok(status, body)?;
    println!("{}", body["token"].as_str().unwrap_or_default());
    eprintln!("token `{name}` created; it is shown only once");
    Ok(())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
