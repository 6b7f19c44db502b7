//! The raw TCP modes of `trellis-test-backend`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testkit::spawn_backend;

const STEP: Duration = Duration::from_secs(10);

async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(STEP, s.read_exact(&mut buf)).await.expect("read timed out").unwrap();
    buf
}

#[tokio::test]
async fn tcp_echo() {
    let (_b, addr) = spawn_backend(&["tcp-echo"]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    for msg in [&b"ping"[..], b"second", &[0u8, 255, 10, 13]] {
        s.write_all(msg).await.unwrap();
        assert_eq!(read_exact(&mut s, msg.len()).await, msg);
    }
    // Half-close: the backend echoes what is left, then closes its side.
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(rest, b"bye");
}

#[tokio::test]
async fn tcp_echo_large_and_concurrent() {
    let (_b, addr) = spawn_backend(&["tcp-echo"]);
    let tasks: Vec<_> = (0..4u8)
        .map(|i| {
            tokio::spawn(async move {
                let data: Vec<u8> = (0..1_000_000u32).map(|j| (j as u8) ^ i).collect();
                let s = TcpStream::connect(addr).await.unwrap();
                let (mut rd, mut wr) = s.into_split();
                let expected = data.clone();
                let writer = tokio::spawn(async move {
                    wr.write_all(&data).await.unwrap();
                    wr.shutdown().await.unwrap();
                });
                let mut got = Vec::new();
                tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got)).await.unwrap().unwrap();
                writer.await.unwrap();
                assert!(got == expected, "stream {i} corrupted");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn server_first_greets_before_client_speaks() {
    let (_b, addr) = spawn_backend(&["server-first", "--greeting", "220 trellis ESMTP"]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let greeting = read_exact(&mut s, "220 trellis ESMTP\r\n".len()).await;
    assert_eq!(greeting, b"220 trellis ESMTP\r\n");
    s.write_all(b"EHLO x\r\n").await.unwrap();
    assert_eq!(read_exact(&mut s, 8).await, b"EHLO x\r\n");
}
