//! `ChildProcess`, `cargo_bin` and `Netns`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use trellis_testkit::backend::{BACKEND_BIN, spawn_backend_in_netns};
use trellis_testkit::http::wait_for_tcp_blocking;
use trellis_testkit::{ChildProcess, Netns, cargo_bin};

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

#[test]
fn cargo_bin_finds_the_backend() {
    let path = cargo_bin(BACKEND_BIN);
    assert!(path.is_file(), "{path:?}");
    assert_eq!(path, std::path::Path::new(env!("CARGO_BIN_EXE_trellis-test-backend")));
    assert!(trellis_testkit::process::try_cargo_bin("no-such-binary").is_none());
}

#[test]
fn wait_for_line_skips_earlier_lines_and_keeps_draining() {
    // Far more output than a pipe buffer holds after the awaited line: the
    // child must still run to the end, which it can only do if drained.
    let mut p = ChildProcess::spawn(sh("echo one; echo 'ready: 42' >&1; echo err >&2; \
         i=0; while [ $i -lt 20000 ]; do echo filler-line-$i; i=$((i+1)); done; echo done"))
    .unwrap();
    let line = p.wait_for_line("ready:", Duration::from_secs(10)).unwrap();
    assert_eq!(line, "ready: 42");
    let line = p.wait_for_line("done", Duration::from_secs(30)).unwrap();
    assert_eq!(line, "done");
    let tail = p.output_tail();
    assert!(tail.lines().count() <= 200, "{tail}");
    assert!(tail.ends_with("done"), "{tail}");
}

#[test]
fn wait_for_line_fails_on_exit_and_timeout() {
    let mut p = ChildProcess::spawn(sh("echo hello; echo oops >&2; exit 3")).unwrap();
    let err = p.wait_for_line("never", Duration::from_secs(10)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("closed stdout") && msg.contains("hello"), "{msg}");
    // stderr is read by another thread; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.output_tail().contains("[stderr] oops") {
        assert!(Instant::now() < deadline, "{}", p.output_tail());
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut p = ChildProcess::spawn(sh("echo started; sleep 30")).unwrap();
    let start = Instant::now();
    let err = p.wait_for_line("never", Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
}

#[test]
fn drop_kills_the_child() {
    let p = ChildProcess::spawn(sh("echo up; exec sleep 60")).unwrap();
    let pid = p.pid();
    drop(p);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived drop");
    assert!(ChildProcess::spawn(Command::new("/no/such/binary")).is_err());
}

#[test]
fn netns_pair_with_backend() {
    if !Netns::available() {
        eprintln!("skipping netns test: needs root and iproute2 with netns support");
        return;
    }
    let (a, b) = Netns::pair("tktest").unwrap();
    let (a2, b2) = Netns::pair("tktest").unwrap();
    assert_ne!(a.name(), b.name());
    assert_ne!(a.addr().octets()[2], a2.addr().octets()[2], "pairs share a subnet");
    for ns in [&a, &b, &a2, &b2] {
        let o = ns.addr().octets();
        assert_eq!((o[0], o[1]), (198, 18));
    }
    assert_eq!(a.addr().octets()[3], 1);
    assert_eq!(b.addr().octets()[3], 2);
    assert_eq!(a.peer_addr(), b.addr());

    let out = a.run("ip", &["-4", "-o", "addr", "show", "dev", a.ifname()]).unwrap();
    assert!(out.contains(&format!("{}/24", a.addr())), "{out}");

    // A backend in b, reached from a over the veth.
    let (_backend, addr) = spawn_backend_in_netns(b.name(), SocketAddr::from((b.addr(), 0)), &["tcp-echo"]);
    assert_eq!(addr.ip(), b.addr());
    let mut s = a.tcp_connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"across").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"across");

    // The root namespace has no route to it.
    assert!(wait_for_tcp_blocking(addr, Duration::from_millis(200)).is_err());
    // And b's loopback is its own.
    assert!(b.tcp_connect(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))).is_err());

    // A stray process left in a namespace is killed when it is dropped.
    let stray = b.exec("sleep").arg("60").spawn().unwrap();
    let stray_pid = stray.id();
    let names = [a.name().to_owned(), b.name().to_owned()];
    drop((a, b));
    let mut stray = stray;
    let status = stray.wait().unwrap();
    assert!(!status.success(), "stray {stray_pid} should have been killed");
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(&n)), "{n} left behind");
    }
}
