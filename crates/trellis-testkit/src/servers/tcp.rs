//! Raw TCP test backends: a plain echo server, and a server-first variant
//! that greets before echoing (like SMTP or MySQL), which catches proxies
//! that wait for client bytes before connecting upstream.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Echoes bytes on every connection. With a `greeting`, first writes
/// `greeting + "\r\n"`.
pub async fn serve(listener: TcpListener, greeting: Option<String>) -> anyhow::Result<()> {
    let greeting: Option<Arc<str>> = greeting.map(|g| format!("{g}\r\n").into());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("tcp backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let greeting = greeting.clone();
        tokio::spawn(async move {
            // I/O errors just mean the peer went away.
            let _ = handle(stream, greeting).await;
        });
    }
}

async fn handle(mut stream: TcpStream, greeting: Option<Arc<str>>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    if let Some(g) = greeting {
        stream.write_all(g.as_bytes()).await?;
    }
    let (mut rd, mut wr) = stream.split();
    tokio::io::copy(&mut rd, &mut wr).await?;
    // Propagate the client's half-close so it sees EOF after the echo.
    wr.shutdown().await
}
