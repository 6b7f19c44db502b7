//! The Trellis control plane.
//!
//! - [`store`]: the embedded, ACID resource store with every revision kept (redb, one file
//!   in the data directory), so that `history` and `rollback` work and a crash loses nothing
//!   that was acknowledged.
//! - [`auth`]: bearer tokens and roles (`admin`, `service-owner` of one namespace, `viewer`).
//! - [`api`]: the HTTP/JSON API the CLI uses (apply, get, list, delete, history, rollback,
//!   proxies), described in `docs/api/openapi.yaml`.
//! - [`registry`]: connected proxies, their workloads, health and acknowledged versions.
//! - [`snapshot`]: the compiler from resources + registry to each proxy's configuration.
//! - [`ca`]: the certificate authority (managed root with rotation, or the operator's CA).
//! - [`identity`]: the gRPC service that signs SVIDs for proxies that proved who they are.
//! - [`push`]: the per-proxy gRPC stream that sends incremental updates and records ACK/NACK,
//!   and carries the proxies' telemetry reports and tap events back.
//! - [`telemetry`]: aggregation of those reports into golden metrics, edges and live taps.
//! - [`dashboard`]: the web dashboard's embedded assets.

pub mod api;
pub mod auth;
pub mod ca;
pub mod dashboard;
pub mod identity;
pub mod push;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod telemetry;
