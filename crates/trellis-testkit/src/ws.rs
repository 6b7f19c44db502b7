//! WebSocket client helpers for the `/ws` echo endpoint of the HTTP backend.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// A connected client socket.
pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound on connecting and on each echo, so a broken proxy fails the test
/// instead of hanging it.
pub const WS_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a WebSocket to `url` (e.g. `ws://127.0.0.1:8080/ws`).
pub async fn ws_connect(url: &str) -> anyhow::Result<WsClient> {
    let (ws, _resp) = tokio::time::timeout(WS_TIMEOUT, connect_async(url))
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(ws)
}

/// Connects to `url`, sends each message as a text frame and waits for its
/// echo before sending the next, then closes cleanly. Returns the echoes.
pub async fn ws_echo_roundtrip(url: &str, messages: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut ws = ws_connect(url).await?;
    let mut echoes = Vec::with_capacity(messages.len());
    for msg in messages {
        ws.send(Message::text(*msg)).await.context("sending")?;
        let echo = tokio::time::timeout(WS_TIMEOUT, next_text(&mut ws))
            .await
            .with_context(|| format!("no echo of {msg:?} within {WS_TIMEOUT:?}"))??;
        echoes.push(echo);
    }
    ws.close(None).await.context("closing")?;
    // Read until the server's close reply so the close handshake completes.
    let _ = tokio::time::timeout(WS_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    Ok(echoes)
}

async fn next_text(ws: &mut WsClient) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("server closed the WebSocket: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("reading"),
            None => bail!("WebSocket ended without an echo"),
        }
    }
}
