//! Running a proxy as a process: the Tokio runtime it gets, and its life from start-up to a
//! drained exit on SIGTERM or SIGINT (SIGHUP reloads the configuration file).
//!
//! Shared by the slim `trellis-proxy` binary (what a sidecar image ships) and the all-in-one
//! `trellis proxy` subcommand, so the two behave the same.

use std::path::PathBuf;

/// A runtime with `workers` worker threads, or one per core when `None`: the proxy's
/// concurrency, like Envoy's `--concurrency`.
///
/// One worker is the usual sidecar share, and then the proxy runs on a single-threaded
/// scheduler on the main thread: no work-stealing queues or cross-thread wake-ups to pay for
/// on every request.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    limit_malloc_arenas(workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())));
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.thread_name("trellis-proxy").enable_all().build()
}

/// One malloc arena per worker thread. glibc's default (eight per core) gives nearly every
/// thread that allocates an arena of its own, the blocking threads that parse a pushed
/// configuration among them, and each arena keeps its own freed fragments: with a
/// 1,000-service configuration that was 1–2 MiB of resident memory holding nothing. Call it
/// before any thread starts; `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas(workers: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let arenas = libc::c_int::try_from(workers.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes an allocator setting; no allocation is in flight.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Starts the proxy from `config` and serves until SIGTERM or SIGINT, then drains.
pub async fn serve_until_signalled(config: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let proxy = crate::Proxy::start(config).await?;
    let version = proxy.shared().config().version.clone();
    tracing::info!(%version, "proxy ready");
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => crate::reload_off_the_request_path(proxy.shared()).await,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("draining");
    let left = proxy.drain().await;
    if left > 0 {
        tracing::warn!(connections = left, "drain deadline reached; closing the rest");
    } else {
        tracing::info!("drained");
    }
    Ok(())
}
