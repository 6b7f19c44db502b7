//! Transparent capture: the iptables rules that steer a workload's traffic through its
//! proxy, and recovering a redirected connection's original destination.
//!
//! Like istio-init, the rules live in the workload's network namespace (nat table):
//! inbound TCP is redirected to the inbound listener, outbound TCP to the outbound listener.
//! The proxy's own upstream connections carry a socket mark (or run as a dedicated uid/gid)
//! and are left alone, so they are not captured again. Loopback destinations and listed
//! ports are excluded.

use std::fmt::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// What to capture and what to leave alone.
#[derive(Clone, Debug)]
pub struct CaptureRules {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Connections with this SO_MARK are the proxy's own and are not redirected (0 = none).
    pub proxy_mark: u32,
    pub proxy_uid: Option<u32>,
    pub proxy_gid: Option<u32>,
    /// Inbound destination ports delivered straight to the application (e.g. 22).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports to capture; empty = all except the excluded ones.
    pub include_inbound_ports: Vec<u16>,
}

const CHAINS: [&str; 4] = ["TRELLIS_INBOUND", "TRELLIS_IN_REDIRECT", "TRELLIS_OUTPUT", "TRELLIS_REDIRECT"];

impl CaptureRules {
    /// The rules as `iptables-restore --noflush` input.
    pub fn iptables_restore(&self) -> String {
        let mut s = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        let _ = writeln!(s, "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.inbound_port);
        let _ = writeln!(s, "-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port);
        // Inbound: everything arriving from the network, except excluded ports.
        let _ = writeln!(s, "-A PREROUTING -p tcp -j TRELLIS_INBOUND");
        for port in &self.exclude_inbound_ports {
            let _ = writeln!(s, "-A TRELLIS_INBOUND -p tcp --dport {port} -j RETURN");
        }
        if self.include_inbound_ports.is_empty() {
            let _ = writeln!(s, "-A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT");
        } else {
            for port in &self.include_inbound_ports {
                let _ = writeln!(s, "-A TRELLIS_INBOUND -p tcp --dport {port} -j TRELLIS_IN_REDIRECT");
            }
        }
        // Outbound: what local processes send, except the proxy's own connections.
        let _ = writeln!(s, "-A OUTPUT -p tcp -j TRELLIS_OUTPUT");
        if self.proxy_mark != 0 {
            let _ = writeln!(s, "-A TRELLIS_OUTPUT -m mark --mark {:#x} -j RETURN", self.proxy_mark);
        }
        if let Some(uid) = self.proxy_uid {
            let _ = writeln!(s, "-A TRELLIS_OUTPUT -m owner --uid-owner {uid} -j RETURN");
        }
        if let Some(gid) = self.proxy_gid {
            let _ = writeln!(s, "-A TRELLIS_OUTPUT -m owner --gid-owner {gid} -j RETURN");
        }
        let _ = writeln!(s, "-A TRELLIS_OUTPUT -d 127.0.0.0/8 -j RETURN");
        for port in &self.exclude_outbound_ports {
            let _ = writeln!(s, "-A TRELLIS_OUTPUT -p tcp --dport {port} -j RETURN");
        }
        let _ = writeln!(s, "-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT");
        s.push_str("COMMIT\n");
        s
    }

    /// Installs the rules in the current network namespace, replacing earlier Trellis rules.
    pub fn install(&self) -> anyhow::Result<()> {
        uninstall()?;
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run iptables-restore ({e}); install the `iptables` package"))?;
        use std::io::Write as _;
        child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?.write_all(self.iptables_restore().as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            anyhow::bail!("iptables-restore failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

/// Removes Trellis's rules and chains from the current network namespace (idempotent).
pub fn uninstall() -> anyhow::Result<()> {
    let iptables = |args: &[&str]| {
        Command::new("iptables")
            .args(["-w", "-t", "nat"])
            .args(args)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
    };
    match iptables(&["-L", "-n"]) {
        Err(e) => anyhow::bail!("cannot run iptables ({e}); install the `iptables` package"),
        Ok(status) if !status.success() => {
            anyhow::bail!("iptables cannot read the nat table; are you root in the right network namespace?")
        }
        Ok(_) => {}
    }
    // Jump rules first (repeat: a jump may have been added more than once), then the chains.
    while iptables(&["-D", "PREROUTING", "-p", "tcp", "-j", "TRELLIS_INBOUND"])?.success() {}
    while iptables(&["-D", "OUTPUT", "-p", "tcp", "-j", "TRELLIS_OUTPUT"])?.success() {}
    for chain in CHAINS {
        iptables(&["-F", chain])?;
    }
    for chain in CHAINS {
        iptables(&["-X", chain])?;
    }
    Ok(())
}

/// The address a redirected connection was originally sent to (SO_ORIGINAL_DST).
pub fn original_destination(stream: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    let local = stream.local_addr()?;
    // SO_ORIGINAL_DST (80) is the same number for IPv4 (SOL_IP) and IPv6 (SOL_IPV6).
    const SO_ORIGINAL_DST: libc::c_int = 80;
    if local.is_ipv4() {
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: addr and len describe a writable sockaddr_in of the given size.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, &mut addr as *mut _ as *mut libc::c_void, &mut len)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
    } else {
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, for sockaddr_in6.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_IPV6, SO_ORIGINAL_DST, &mut addr as *mut _ as *mut libc::c_void, &mut len)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ip = std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::from((ip, u16::from_be(addr.sin6_port))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exclude_the_proxy_and_listed_ports() {
        let rules = CaptureRules {
            inbound_port: 15006,
            outbound_port: 15001,
            proxy_mark: 0x539,
            proxy_uid: Some(1337),
            proxy_gid: None,
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![5432],
            include_inbound_ports: vec![],
        };
        let text = rules.iptables_restore();
        let lines: Vec<&str> = text.lines().collect();
        let pos = |needle: &str| {
            lines.iter().position(|l| *l == needle).unwrap_or_else(|| panic!("missing `{needle}` in\n{text}"))
        };
        // Exclusions come before the catch-all redirect in each chain.
        assert!(
            pos("-A TRELLIS_INBOUND -p tcp --dport 22 -j RETURN")
                < pos("-A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT")
        );
        assert!(pos("-A TRELLIS_OUTPUT -m mark --mark 0x539 -j RETURN") < pos("-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT"));
        assert!(
            pos("-A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN") < pos("-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT")
        );
        assert!(pos("-A TRELLIS_OUTPUT -p tcp --dport 5432 -j RETURN") < pos("-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT"));
        pos("-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001");
        pos("-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }
}
