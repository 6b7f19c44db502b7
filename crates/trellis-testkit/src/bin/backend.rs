//! `trellis-test-backend`: upstream servers for end-to-end tests. Each mode
//! prints `listening on ADDR` (the real bound address) once it accepts
//! connections, then serves until killed.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use http::StatusCode;
use tokio::net::TcpListener;
use trellis_testkit::servers::{self, parse_duration};

#[derive(Parser, Debug)]
#[command(name = "trellis-test-backend", about = "Backend servers for Trellis end-to-end tests")]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, global = true, default_value = "127.0.0.1:0")]
    listen: String,
    /// Name reported in responses (`server` field, `x-backend` header).
    #[arg(long, global = true, default_value = "backend")]
    name: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
    Http {
        /// Status of every non-special path.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
        /// Wait before answering, e.g. `50ms`, `5s`, `1m`.
        #[arg(long, value_parser = parse_duration, default_value = "0ms")]
        delay: Duration,
    },
    /// gRPC Echo service (trellis.testkit.v1.Echo).
    Grpc,
    /// Echoes bytes on each connection.
    TcpEcho,
    /// Writes GREETING + CRLF on connect, then echoes.
    ServerFirst {
        #[arg(long)]
        greeting: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(&cli.listen).await.with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    // Tests block on this line to learn the port, so it must not sit in a buffer.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);

    match cli.mode {
        Mode::Http { status, delay } => {
            let status = StatusCode::from_u16(status).context("invalid --status")?;
            let opts = servers::http::HttpOptions { name: cli.name, status, delay };
            servers::http::serve(listener, opts).await
        }
        Mode::Grpc => servers::grpc::serve(listener, cli.name).await,
        Mode::TcpEcho => servers::tcp::serve(listener, None).await,
        Mode::ServerFirst { greeting } => servers::tcp::serve(listener, Some(greeting)).await,
    }
}
