//! Network namespaces for tests that need real, separate hosts (e.g. a
//! client and a server with distinct addresses and their own iptables):
//! [`Netns::pair`] creates two namespaces joined by a veth pair, and drop
//! removes them along with any process left inside.
//!
//! Addresses come only from 198.18.0.0/15 (RFC 2544 benchmarking range),
//! one /24 per pair. The /24 is reserved with a `flock` on a file under the
//! temp dir, so parallel tests in this or other processes never share one,
//! and a crashed process releases its lock automatically.

use std::fs::{File, OpenOptions, TryLockError};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};

/// Interface name of the veth end inside each namespace of a pair.
pub const VETH_IFNAME: &str = "veth0";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    addr: Ipv4Addr,
    peer: Ipv4Addr,
    /// Keeps the pair's /24 reserved until both ends are dropped.
    _subnet_lock: Option<Arc<File>>,
}

impl Netns {
    /// Whether namespaces can be used here: running as root, `ip` present,
    /// and a probe namespace can actually be created (containers may deny
    /// it even to root). Checked once per process. Tests should skip, not
    /// fail, when this is false.
    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                return false;
            }
            let probe = format!("trellis-probe-{}", std::process::id());
            let created = quiet(Command::new("ip").args(["netns", "add", &probe]));
            if created {
                quiet(Command::new("ip").args(["netns", "delete", &probe]));
            }
            created
        })
    }

    /// Creates two namespaces named `{prefix}-{pid}-{n}` joined by a veth
    /// pair ([`VETH_IFNAME`] in both), with `198.18.X.1/24` on the first and
    /// `198.18.X.2/24` on the second, `lo` and the veths up.
    pub fn pair(prefix: &str) -> anyhow::Result<(Netns, Netns)> {
        let (x, lock) = reserve_subnet()?;
        let lock = Some(Arc::new(lock));
        let ip_a = Ipv4Addr::new(198, 18, x, 1);
        let ip_b = Ipv4Addr::new(198, 18, x, 2);
        // Each is deleted on drop if a later step fails.
        let a = Netns::create(prefix, ip_a, ip_b, lock.clone())?;
        let b = Netns::create(prefix, ip_b, ip_a, lock)?;
        // Created from inside `a` with the peer placed straight into `b`, so
        // the interface names never appear in the root namespace and
        // parallel pairs can all use the same name.
        ip(&[
            "-n",
            &a.name,
            "link",
            "add",
            VETH_IFNAME,
            "type",
            "veth",
            "peer",
            "name",
            VETH_IFNAME,
            "netns",
            &b.name,
        ])?;
        for ns in [&a, &b] {
            let cidr = format!("{}/24", ns.addr);
            ip(&["-n", &ns.name, "addr", "add", &cidr, "dev", VETH_IFNAME])?;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns.name, "link", "set", VETH_IFNAME, "up"])?;
        }
        Ok((a, b))
    }

    fn create(prefix: &str, addr: Ipv4Addr, peer: Ipv4Addr, lock: Option<Arc<File>>) -> anyhow::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(Netns { name, addr, peer, _subnet_lock: lock })
    }

    /// The namespace name (for `ip netns exec NAME`, `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This namespace's address on the veth.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The other namespace's address on the veth.
    pub fn peer_addr(&self) -> Ipv4Addr {
        self.peer
    }

    /// The veth interface name inside this namespace.
    pub fn ifname(&self) -> &str {
        VETH_IFNAME
    }

    /// `ip netns exec NAME program`; add arguments to the returned command.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has joined this namespace, so
    /// sockets it creates live here (they stay here when moved out, e.g.
    /// a connected `std::net::TcpStream` for a tokio test).
    pub fn enter<F, R>(&self, f: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        // iproute2 keeps its namespace mounts here (NETNS_RUN_DIR).
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsRawFd;
                    // SAFETY: a valid namespace fd; setns only changes this
                    // thread's network namespace, which ends with the thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {path}"));
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Connects to `addr` from inside this namespace.
    pub fn tcp_connect(&self, addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpStream> {
        self.enter(|| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)))?
            .with_context(|| format!("connecting to {addr} from netns {}", self.name))
    }

    /// Runs `program args` inside the namespace, failing unless it exits 0;
    /// returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .exec(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in netns {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in netns {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A process still inside would keep the namespace (and its veth)
        // alive after `ip netns delete`, and keep running.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).stderr(Stdio::null()).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: plain syscall; a stale pid only yields ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        quiet(Command::new("ip").args(["netns", "delete", &self.name]));
    }
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out =
        Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Picks a free third octet X for 198.18.X.0/24 and returns it with the
/// lock file that keeps it reserved.
fn reserve_subnet() -> anyhow::Result<(u8, File)> {
    let dir: PathBuf = std::env::temp_dir().join("trellis-testkit-netns");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Start at a pid-dependent place so processes rarely contend.
    let start = std::process::id().wrapping_mul(37).wrapping_add(COUNTER.load(Ordering::Relaxed));
    for i in 0..256u32 {
        let x = (start.wrapping_add(i) % 256) as u8;
        let path = dir.join(format!("198.18.{x}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok((x, file)),
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
    bail!("all 256 subnets of 198.18.0.0/16 are in use by other tests")
}
