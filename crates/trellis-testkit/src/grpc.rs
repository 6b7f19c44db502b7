//! gRPC client helpers for the Echo service served by
//! `trellis-test-backend grpc` (or by a proxy in front of it).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

pub use crate::echo_proto::echo_client::EchoClient;
pub use crate::echo_proto::{EchoReply, EchoRequest};

/// Connects an Echo client to `http://ADDR` (plain-text HTTP/2).
pub async fn echo_client(addr: SocketAddr) -> anyhow::Result<EchoClient<Channel>> {
    echo_client_url(&format!("http://{addr}")).await
}

/// Connects an Echo client to `url` (e.g. `http://127.0.0.1:8080`).
pub async fn echo_client_url(url: &str) -> anyhow::Result<EchoClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid gRPC endpoint {url}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(EchoClient::new(channel))
}

/// An [`EchoRequest`] with just a message.
pub fn echo_request(message: &str) -> EchoRequest {
    EchoRequest { message: message.to_owned(), ..Default::default() }
}
