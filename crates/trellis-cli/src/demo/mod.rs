//! `trellis demo`: a whole mesh on this machine — a control plane, the demo shop (five
//! services, seven workloads, each with its own sidecar and identity), traffic, and the
//! dashboard — started with one command and stopped with Ctrl-C or `trellis demo down`.
//!
//! Everything runs as child processes of this one (the `trellis` binary itself, in its
//! `control`, `proxy` and `demo-app` roles) on loopback, on free ports, with its state in one
//! temporary directory that is removed at the end. Children are told to exit if this
//! process dies (`PR_SET_PDEATHSIG`), so even a killed demo leaves nothing running.

mod plan;
mod processes;

use crate::client::Connection;
use anyhow::Context;
use plan::{NAMESPACE, Plan};
use processes::Children;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a running demo says who it is, for `trellis demo down`.
fn marker() -> PathBuf {
    std::env::temp_dir().join("trellis-demo.json")
}

pub struct DemoArgs {
    /// Requests per second the traffic generator sends to web.
    pub rate: f64,
    /// Open the dashboard in a browser once ready.
    pub open: bool,
    /// Stop by itself after this long (for scripts and tests); otherwise until Ctrl-C.
    pub duration: Option<Duration>,
    /// For scripts and tests without a terminal: the summary is one JSON line on stdout.
    pub headless: bool,
}

fn step(text: &str) {
    eprintln!("  • {text}");
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(running) = running_demo() {
        anyhow::bail!(
            "a demo is already running (pid {}, state in {}); stop it with `trellis demo down`",
            running.0,
            running.1.display()
        );
    }
    let exe = std::env::current_exe().context("cannot find the trellis binary itself")?;
    let dir = std::env::temp_dir().join(format!("trellis-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(marker(), json!({"pid": std::process::id(), "dir": dir}).to_string())
        .context("cannot write the demo marker")?;
    eprintln!("Starting the Trellis demo (state and logs in {})", dir.display());
    let mut children = Children::new(dir.join("logs"));
    // Ctrl-C and SIGTERM stop the demo at any moment, also while it starts.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let outcome = tokio::select! {
        outcome = start_and_wait(&exe, &dir, &mut children, &args) => outcome,
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    };
    eprintln!("\nStopping the demo…");
    let stopped = children.stop_all();
    let _ = std::fs::remove_file(marker());
    if outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("  • stopped {stopped} processes and removed {}", dir.display());
    } else {
        // Keep the logs of a failed demo for whoever wants to know why.
        eprintln!("  • stopped {stopped} processes; logs kept in {}", dir.join("logs").display());
    }
    outcome
}

async fn start_and_wait(exe: &Path, dir: &Path, children: &mut Children, args: &DemoArgs) -> anyhow::Result<()> {
    let plan = Plan::new(dir)?;

    // The control plane, with its own data directory.
    let api = format!("http://{}", plan.api);
    children.spawn(
        "control",
        exe,
        &[
            "control",
            "--data-dir",
            &dir.join("control").display().to_string(),
            "--listen",
            &plan.api.to_string(),
            "--push-listen",
            &plan.push.to_string(),
        ],
    )?;
    wait_http(children, &format!("{api}/healthz"), "the control plane", Duration::from_secs(30)).await?;
    let token_file = dir.join("control/admin.token");
    let conn = Connection { server: api.clone(), token: None, token_file: Some(token_file.clone()) };
    step(&format!("control plane on {api}"));

    let (status, body) = conn
        .call(http::Method::POST, "/v1/apply?file=demo.yaml", Some((plan.services_yaml(), "application/yaml")))
        .await?;
    anyhow::ensure!(
        (200..300).contains(&status),
        "applying the demo services failed: {}",
        crate::client::api_error(status, &body)
    );
    step("services web, catalog, inventory (gRPC), reviews v1/v2/v3, ratings (gRPC) declared in namespace shop");

    for workload in &plan.workloads {
        let request = json!({
            "name": format!("demo-{}", workload.name),
            "role": "join",
            "namespace": NAMESPACE,
            "service_account": workload.role.service(),
            "ttlSeconds": 600,
            "singleUse": true,
        });
        let (status, body) =
            conn.call(http::Method::POST, "/v1/tokens", Some((request.to_string(), "application/json"))).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "creating a join token failed: {}",
            crate::client::api_error(status, &body)
        );
        std::fs::write(&workload.token_file, body["token"].as_str().unwrap_or_default())?;
        std::fs::write(&workload.proxy_config, plan.proxy_yaml(workload))?;
        let calls: Vec<String> = workload.calls.iter().map(|(svc, addr)| format!("{svc}=http://{addr}")).collect();
        let mut app_args =
            vec!["demo-app".to_string(), workload.role_name.clone(), "--listen".into(), workload.app.to_string()];
        for call in calls {
            app_args.push("--call".into());
            app_args.push(call);
        }
        let app_args: Vec<&str> = app_args.iter().map(String::as_str).collect();
        children.spawn(&format!("{}-app", workload.name), exe, &app_args)?;
        children.spawn(
            &format!("{}-proxy", workload.name),
            exe,
            &["proxy", "-c", &workload.proxy_config.display().to_string()],
        )?;
    }
    for workload in &plan.workloads {
        let what = format!("the {} sidecar", workload.name);
        wait_http(children, &format!("http://{}/ready", workload.admin), &what, Duration::from_secs(60)).await?;
    }
    step(&format!("{} workloads running, each with its sidecar and a SPIFFE identity", plan.workloads.len()));

    let entry = format!("http://{}", plan.web_inbound());
    wait_http(
        children,
        &format!("{entry}/product/1"),
        "the shop's front page through the mesh",
        Duration::from_secs(60),
    )
    .await?;
    let traffic = tokio::spawn(traffic(entry.clone(), args.rate));
    step(&format!("traffic generator: {} req/s to web", args.rate));
    // Proxies report every 5 s; wait for the first reports, so `trellis stat` shows traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((200, body)) = conn.call(http::Method::GET, "/v1/stats?namespace=shop&window=10s", None).await
            && body["items"].as_array().is_some_and(|rows| rows.iter().any(|r| r["rps"].as_f64().unwrap_or(0.0) > 0.0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    step("the proxies report their traffic to the control plane");

    let token = std::fs::read_to_string(&token_file).unwrap_or_default();
    let dashboard = format!("{api}/dashboard/#token={}", token.trim());
    if args.headless {
        let summary =
            json!({"server": api, "tokenFile": token_file, "dashboard": dashboard, "shop": entry, "stateDir": dir});
        println!("{summary}");
    } else {
        print_summary(exe, &api, &token_file, &dashboard, &entry);
    }
    if args.open {
        let _ = crate::observe::open_in_browser(&dashboard);
    }

    // Runs until `--duration` passes (signals are handled by the caller) or a child dies.
    let limit = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let watch = children.watch();
    tokio::select! {
        _ = limit => {}
        died = watch => anyhow::bail!("{died}"),
    }
    traffic.abort();
    Ok(())
}

/// The summary for people: where things are and what to try.
fn print_summary(exe: &Path, api: &str, token_file: &Path, dashboard: &str, entry: &str) {
    println!();
    println!("Trellis demo is running.");
    println!();
    println!("  Dashboard:  {dashboard}");
    println!("  The shop:   curl {entry}/product/2");
    println!();
    println!("  Try, in another terminal:");
    if !on_path(exe) {
        println!("    alias trellis={}", exe.display());
    }
    println!("    export TRELLIS_SERVER={api} TRELLIS_TOKEN_FILE={}", token_file.display());
    println!("    trellis stat -n shop                       # success rate, RPS, latency per service");
    println!(
        "    trellis apply -f examples/canary.yaml      # reviews: 90% v1, 10% v2; watch `trellis stat reviews -n shop --by subset`"
    );
    println!("    trellis tap reviews -n shop                # live requests with their mTLS identities");
    println!("    trellis edges -n shop                      # who calls whom");
    println!();
    println!("  Stop: Ctrl-C here, or `trellis demo down`.");
}

/// Whether `trellis` on the PATH is this binary (else the summary suggests an alias).
fn on_path(exe: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join("trellis");
            candidate.canonicalize().ok().as_deref() == exe.canonicalize().ok().as_deref() && candidate.exists()
        })
    })
}

/// GET `url` until it answers 200, or fail once `limit` passes or a child died.
async fn wait_http(children: &mut Children, url: &str, what: &str, limit: Duration) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(died) = children.first_exit() {
            anyhow::bail!("{died} while waiting for {what}");
        }
        let request = http::Request::get(url).body(http_body_util::Empty::<bytes::Bytes>::new())?;
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await
            && response.status() == http::StatusCode::OK
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} did not answer at {url} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shop's customers: `rate` requests per second over the four products.
async fn traffic(entry: String, rate: f64) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0u64.. {
        ticks.tick().await;
        let Ok(request) = http::Request::get(format!("{entry}/product/{}", i % 4 + 1))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
        else {
            continue;
        };
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(response) = client.request(request).await {
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            }
        });
    }
}

/// (pid, dir) of a demo that is still running.
fn running_demo() -> Option<(u32, PathBuf)> {
    let text = std::fs::read_to_string(marker()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = value["pid"].as_u64()? as u32;
    let dir = PathBuf::from(value["dir"].as_str()?);
    if alive(pid) {
        Some((pid, dir))
    } else {
        let _ = std::fs::remove_file(marker());
        None
    }
}

/// Whether `pid` runs: it exists and has not exited (a zombie waits only for its parent to
/// notice).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `trellis demo down`: asks a running demo to stop and waits until it has cleaned up.
pub fn down() -> anyhow::Result<()> {
    let Some((pid, dir)) = running_demo() else {
        println!("no demo is running");
        return Ok(());
    };
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        anyhow::ensure!(Instant::now() < deadline, "the demo (pid {pid}) did not stop within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("demo stopped (pid {pid}); {} removed", dir.display());
    Ok(())
}
