//! The demo's child processes: started with their output in log files, told to exit when the
//! demo process dies, watched, and stopped together.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Children {
    logs: PathBuf,
    list: Vec<(String, Child)>,
}

impl Children {
    pub fn new(logs: PathBuf) -> Children {
        Children { logs, list: Vec::new() }
    }

    pub fn spawn(&mut self, name: &str, exe: &Path, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        let mut command = Command::new(exe);
        command.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).env("TRELLIS_LOG", "info");
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Exit with the demo, however it ends (even SIGKILL).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| anyhow::anyhow!("cannot start {name} ({}): {e}", exe.display()))?;
        self.list.push((name.to_string(), child));
        Ok(())
    }

    /// The first child that has exited, described with its log's last line.
    pub fn first_exit(&mut self) -> Option<String> {
        for (name, child) in &mut self.list {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
                let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").to_string();
                return Some(format!("{name} exited ({status}): {last}"));
            }
        }
        None
    }

    /// Resolves when a child exits.
    pub async fn watch(&mut self) -> String {
        loop {
            if let Some(died) = self.first_exit() {
                return died;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGTERM to all (applications and sidecars first, the control plane last), SIGKILL to
    /// what is left after 5 s. Returns how many were stopped.
    pub fn stop_all(&mut self) -> usize {
        let count = self.list.len();
        let (control, rest): (Vec<_>, Vec<_>) = self.list.drain(..).partition(|(name, _)| name == "control");
        for group in [rest, control] {
            for (_, child) in &group {
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            for (_, mut child) in group {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
        count
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}
