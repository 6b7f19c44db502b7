//! Test support for Trellis end-to-end tests: backend servers that play the
//! upstream side of the mesh (HTTP/1.1 + HTTP/2, WebSocket, gRPC, raw TCP),
//! helpers to run them as child processes (optionally inside network
//! namespaces), and small clients to talk to them.
//!
//! Binaries used by tests (`trellis-test-backend`, `trellis`) are located
//! with [`process::cargo_bin`]; they must have been built beforehand
//! (`cargo build --workspace` before `cargo test`).

pub mod backend;
pub mod grpc;
pub mod http;
pub mod netns;
pub mod process;
pub mod servers;
pub mod ws;

/// Code generated from `proto/echo.proto` (package `trellis.testkit.v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod echo_proto {
    tonic::include_proto!("trellis.testkit.v1");
}

/// Boxed error used by HTTP bodies built here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use backend::{spawn_backend, spawn_backend_in_netns};
pub use netns::Netns;
pub use process::{ChildProcess, cargo_bin};
