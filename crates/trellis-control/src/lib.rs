//! The Trellis control plane.
//!
//! - [`store`]: the embedded, ACID resource store with every revision kept (redb, one file
//!   in the data directory), so that `history` and `rollback` work and a crash loses nothing
//!   that was acknowledged.
//! - [`auth`]: bearer tokens and roles (`admin`, `service-owner` of one namespace, `viewer`).
//! - [`api`]: the HTTP/JSON API the CLI uses (apply, get, list, delete, history, rollback),
//!   described in `docs/api/openapi.yaml`.

pub mod api;
pub mod auth;
pub mod store;
