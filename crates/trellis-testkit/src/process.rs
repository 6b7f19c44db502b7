//! Child processes for tests: [`ChildProcess`] owns a spawned binary, reads
//! its output in the background (so it never blocks on a full pipe), lets a
//! test wait for a line such as `listening on ADDR`, keeps the last lines
//! for failure messages, and kills the child when dropped.
//! [`cargo_bin`] finds workspace binaries.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Lines kept for [`ChildProcess::output_tail`].
const TAIL_LINES: usize = 200;
/// Unconsumed stdout lines kept for [`ChildProcess::wait_for_line`]; older
/// ones are dropped so a chatty child cannot grow memory without bound.
const PENDING_LINES: usize = 10_000;

#[derive(Default)]
struct OutputState {
    /// stdout lines not yet looked at by `wait_for_line`.
    pending: VecDeque<String>,
    /// Last lines of stdout and stderr (stderr prefixed), for diagnostics.
    tail: VecDeque<String>,
    stdout_closed: bool,
}

#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, OutputState> {
        // A panic in a reader thread must not hide the output from the test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn tail_text(st: &OutputState) -> String {
    st.tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
}

fn spawn_reader(out: Arc<Output>, pipe: impl Read + Send + 'static, is_stdout: bool) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\n', '\r']).to_owned();
            let mut st = out.lock();
            if st.tail.len() >= TAIL_LINES {
                st.tail.pop_front();
            }
            if is_stdout {
                st.tail.push_back(line.clone());
                if st.pending.len() >= PENDING_LINES {
                    st.pending.pop_front();
                }
                st.pending.push_back(line);
            } else {
                st.tail.push_back(format!("[stderr] {line}"));
            }
            drop(st);
            out.changed.notify_all();
        }
        if is_stdout {
            out.lock().stdout_closed = true;
            out.changed.notify_all();
        }
    });
}

/// A spawned child process, SIGKILLed and reaped on drop.
pub struct ChildProcess {
    child: Child,
    description: String,
    output: Arc<Output>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess").field("pid", &self.child.id()).field("command", &self.description).finish()
    }
}

impl ChildProcess {
    /// Spawns `cmd` with stdout and stderr piped (and stdin null). Both are
    /// drained by background threads; stdout lines feed
    /// [`wait_for_line`](Self::wait_for_line), both feed
    /// [`output_tail`](Self::output_tail). A `tokio::process::Command` can
    /// be used by building the equivalent `std::process::Command`.
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let description = format!("{cmd:?}");
        let mut child = cmd.spawn().with_context(|| format!("spawning {description}"))?;
        let output = Arc::new(Output::default());
        if let Some(stdout) = child.stdout.take() {
            spawn_reader(output.clone(), stdout, true);
        }
        if let Some(stderr) = child.stderr.take() {
            spawn_reader(output.clone(), stderr, false);
        }
        Ok(Self { child, description, output })
    }

    /// Blocks until a stdout line starting with `prefix` arrives and returns
    /// that whole line. Earlier lines are consumed (but stay in the tail).
    /// Fails with the output tail if the child closes stdout or `timeout`
    /// passes first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.output.lock();
        loop {
            while let Some(line) = st.pending.pop_front() {
                if line.starts_with(prefix) {
                    return Ok(line);
                }
            }
            if st.stdout_closed {
                let tail = tail_text(&st);
                drop(st);
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "{} closed stdout (exit status {status:?}) before printing a line starting \
                     with {prefix:?}; output:\n{tail}",
                    self.description
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {} to print a line starting with \
                     {prefix:?}; output:\n{}",
                    self.description,
                    tail_text(&st)
                );
            }
            st = self.output.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The last ~200 lines of stdout and stderr (stderr lines prefixed with
    /// `[stderr] `).
    pub fn output_tail(&self) -> String {
        tail_text(&self.output.lock())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends SIGKILL and reaps the child. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Access to the underlying [`Child`] (e.g. to send other signals by pid).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last output of {} (pid {}) ----\n{}\n---- end ----",
                self.description,
                self.child.id(),
                self.output_tail()
            );
        }
        self.kill();
    }
}

/// Locates a binary target of this workspace, e.g. `trellis-test-backend`
/// or `trellis` (from trellis-cli).
///
/// Uses `CARGO_BIN_EXE_<name>` when set at run time; otherwise looks next to
/// the running test executable (`target/<profile>/deps/..`). Cargo builds a
/// package's own binaries before that package's integration tests, but
/// not other packages' binaries: tests that use binaries from other crates
/// need them built first (`cargo build --workspace` before `cargo test`).
///
/// # Panics
/// If the binary cannot be found; the message says how to build it.
pub fn cargo_bin(name: &str) -> PathBuf {
    try_cargo_bin(name).unwrap_or_else(|| {
        panic!(
            "binary {name:?} not found next to {:?}; build it first \
             (cargo build --workspace, or cargo build --bin {name})",
            std::env::current_exe().ok()
        )
    })
}

/// Like [`cargo_bin`] but returns `None` when the binary is missing.
pub fn try_cargo_bin(name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    // Test executables live in target/<profile>/deps; binaries one level up.
    [dir.parent(), Some(dir)].into_iter().flatten().map(|d| d.join(&file)).find(|p| p.is_file())
}
