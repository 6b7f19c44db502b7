//! Spawning `trellis-test-backend` as a child process, on loopback or inside
//! a network namespace, and learning the address it actually bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::{ChildProcess, cargo_bin};

/// Name of the backend binary target.
pub const BACKEND_BIN: &str = "trellis-test-backend";

/// Generous, since CI machines have two cores and may be compiling.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the `trellis-test-backend` binary (see [`cargo_bin`]).
pub fn backend_bin() -> PathBuf {
    cargo_bin(BACKEND_BIN)
}

/// Runs `trellis-test-backend ARGS --listen 127.0.0.1:0` (e.g.
/// `&["http", "--name", "a"]`) and returns it with its bound address. If
/// `args` already has `--listen`, it is used as is.
///
/// # Panics
/// If the backend does not start; the message includes its output.
pub fn spawn_backend(args: &[&str]) -> (ChildProcess, SocketAddr) {
    try_spawn_backend(args).unwrap_or_else(|e| panic!("starting backend {args:?}: {e:#}"))
}

/// Fallible [`spawn_backend`].
pub fn try_spawn_backend(args: &[&str]) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let mut cmd = Command::new(backend_bin());
    cmd.args(args);
    if !has_listen(args) {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    start(cmd)
}

/// Runs the backend inside network namespace `netns` (via
/// `ip netns exec`) listening on `listen` (port 0 allowed). The returned
/// address is the real bound one, reachable from inside that namespace.
///
/// # Panics
/// If the backend does not start; the message includes its output.
pub fn spawn_backend_in_netns(netns: &str, listen: SocketAddr, args: &[&str]) -> (ChildProcess, SocketAddr) {
    try_spawn_backend_in_netns(netns, listen, args)
        .unwrap_or_else(|e| panic!("starting backend {args:?} in netns {netns}: {e:#}"))
}

/// Fallible [`spawn_backend_in_netns`].
pub fn try_spawn_backend_in_netns(
    netns: &str,
    listen: SocketAddr,
    args: &[&str],
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(backend_bin()).args(args).arg("--listen").arg(listen.to_string());
    start(cmd)
}

fn has_listen(args: &[&str]) -> bool {
    args.iter().any(|a| *a == "--listen" || a.starts_with("--listen="))
}

fn start(cmd: Command) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let mut child = ChildProcess::spawn(cmd)?;
    let line = child.wait_for_line("listening on ", STARTUP_TIMEOUT)?;
    let addr =
        line["listening on ".len()..].trim().parse().with_context(|| format!("unparsable address in {line:?}"))?;
    Ok((child, addr))
}
