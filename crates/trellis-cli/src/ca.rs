//! `trellis ca`: the certificate authority's status and root rotation.
//!
//! `rotate` runs the three steps with a wait after each, so that no proxy ever meets a
//! certificate its bundle does not trust: add the new root and wait until every connected
//! proxy has acknowledged the bigger bundle; activate it and wait until every connected
//! proxy reports a certificate signed by it; retire the old root.

use crate::CaAction;
use crate::client::{Connection, api_error};
use crate::resources::print;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub async fn run(conn: &Connection, action: CaAction) -> anyhow::Result<()> {
    match action {
        CaAction::Status { output } => {
            let status = call(conn, http::Method::GET, "/v1/ca").await?;
            print(output, &status, print_status)
        }
        CaAction::AddRoot => {
            let body = call(conn, http::Method::POST, "/v1/ca/roots").await?;
            println!("{}", body["fingerprint"].as_str().unwrap_or_default());
            eprintln!("root added to the trust bundle; activate it once every proxy has the new bundle");
            Ok(())
        }
        CaAction::Activate { fingerprint } => {
            call(conn, http::Method::POST, &format!("/v1/ca/roots/{fingerprint}/activate")).await?;
            eprintln!("root {fingerprint} signs new certificates; proxies renew now");
            Ok(())
        }
        CaAction::Retire { fingerprint } => {
            call(conn, http::Method::DELETE, &format!("/v1/ca/roots/{fingerprint}")).await?;
            eprintln!("root {fingerprint} retired from the trust bundle");
            Ok(())
        }
        CaAction::Rotate { timeout } => rotate(conn, timeout).await,
    }
}

async fn call(conn: &Connection, method: http::Method, path: &str) -> anyhow::Result<Value> {
    let (status, body) = conn.call(method, path, None).await?;
    if (200..300).contains(&status) { Ok(body) } else { Err(api_error(status, &body)) }
}

fn print_status(status: &Value) {
    println!("trust domain: {}", status["trustDomain"].as_str().unwrap_or("?"));
    println!("managed: {}   certificate lifetime: {} s", status["managed"], status["svidLifetimeSeconds"]);
    println!("{:<66} {:<8} {:>12}  SUBJECT", "ROOT FINGERPRINT", "SIGNS", "EXPIRES");
    for root in status["roots"].as_array().into_iter().flatten() {
        println!(
            "{:<66} {:<8} {:>12}  {}",
            root["fingerprint"].as_str().unwrap_or("?"),
            if root["active"].as_bool() == Some(true) { "yes" } else { "" },
            root["notAfter"],
            root["subject"].as_str().unwrap_or("")
        );
    }
}

async fn connected_proxies(conn: &Connection) -> anyhow::Result<Vec<Value>> {
    let body = call(conn, http::Method::GET, "/v1/proxies").await?;
    Ok(body["items"].as_array().cloned().unwrap_or_default().into_iter().filter(|p| p["connected"] == true).collect())
}

/// Polls until `done` holds for every connected proxy; names the laggards on timeout.
async fn wait_for_proxies(
    conn: &Connection,
    what: &str,
    deadline: Instant,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    loop {
        let proxies = connected_proxies(conn).await?;
        let behind: Vec<&str> = proxies.iter().filter(|p| !done(p)).filter_map(|p| p["proxy_id"].as_str()).collect();
        if behind.is_empty() {
            eprintln!("  every connected proxy ({}) {what}", proxies.len());
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out waiting until every proxy {what}; still behind: {}. \
                 Nothing is broken: the old root is still trusted. Fix those proxies and run the remaining steps by hand",
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn rotate(conn: &Connection, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let before = call(conn, http::Method::GET, "/v1/ca").await?;
    let old = before["signer"].as_str().unwrap_or_default().to_string();
    let versions: HashMap<String, Value> = connected_proxies(conn)
        .await?
        .into_iter()
        .map(|p| (p["proxy_id"].as_str().unwrap_or_default().to_string(), p["sent_version"].clone()))
        .collect();
    let added = call(conn, http::Method::POST, "/v1/ca/roots").await?;
    let new = added["fingerprint"].as_str().unwrap_or_default().to_string();
    eprintln!("1/3 added root {new}");
    wait_for_proxies(conn, "trusts the new root", deadline, |p| {
        let id = p["proxy_id"].as_str().unwrap_or_default();
        let moved = versions.get(id).is_none_or(|v| *v != p["sent_version"]);
        moved && p["in_sync"] == true
    })
    .await?;
    call(conn, http::Method::POST, &format!("/v1/ca/roots/{new}/activate")).await?;
    eprintln!("2/3 activated root {new}");
    wait_for_proxies(conn, "holds a certificate from the new root", deadline, |p| {
        p["certificate_signer"].as_str() == Some(new.as_str())
    })
    .await?;
    call(conn, http::Method::DELETE, &format!("/v1/ca/roots/{old}")).await?;
    eprintln!("3/3 retired root {old}");
    println!("{new}");
    Ok(())
}
