//! The demo shop that `trellis demo` runs: five services, each a small server that calls the
//! others through its own sidecar (so every hop is meshed, mutually authenticated and
//! observed):
//!
//! ```text
//!  traffic ─► web ──HTTP──► catalog ──gRPC──► inventory
//!              └───HTTP──► reviews v1 | v2 | v3 ──gRPC──► ratings   (v2 and v3 only)
//! ```
//!
//! A service learns where its dependencies are as URLs of its sidecar's explicit listeners
//! (`--call catalog=http://127.0.0.1:PORT`); it never talks to another service directly.

pub mod grpc {
    tonic::include_proto!("trellis.demo.v1");
}

mod http_service;
mod products;

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Which demo service a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Web,
    Catalog,
    Inventory,
    Reviews { version: u8 },
    Ratings,
}

impl Role {
    pub fn parse(text: &str) -> anyhow::Result<Role> {
        Ok(match text {
            "web" => Role::Web,
            "catalog" => Role::Catalog,
            "inventory" => Role::Inventory,
            "ratings" => Role::Ratings,
            "reviews-v1" => Role::Reviews { version: 1 },
            "reviews-v2" => Role::Reviews { version: 2 },
            "reviews-v3" => Role::Reviews { version: 3 },
            other => anyhow::bail!(
                "unknown demo role `{other}`; use web, catalog, inventory, ratings, reviews-v1, reviews-v2 or reviews-v3"
            ),
        })
    }

    /// The mesh service this role is an instance of.
    pub fn service(self) -> &'static str {
        match self {
            Role::Web => "web",
            Role::Catalog => "catalog",
            Role::Inventory => "inventory",
            Role::Reviews { .. } => "reviews",
            Role::Ratings => "ratings",
        }
    }

    /// The services it calls.
    pub fn calls(self) -> &'static [&'static str] {
        match self {
            Role::Web => &["catalog", "reviews"],
            Role::Catalog => &["inventory"],
            Role::Reviews { version: 2 | 3 } => &["ratings"],
            _ => &[],
        }
    }

    /// Whether it speaks gRPC (otherwise HTTP/1.1).
    pub fn grpc(self) -> bool {
        matches!(self, Role::Inventory | Role::Ratings)
    }
}

/// Serves `role` on `listen` until the process is stopped. `calls` maps each dependency's
/// service name to its sidecar URL.
pub async fn serve(role: Role, listen: SocketAddr, calls: BTreeMap<String, String>) -> anyhow::Result<()> {
    for needed in role.calls() {
        anyhow::ensure!(calls.contains_key(*needed), "{} needs --call {needed}=URL", role.service());
    }
    match role {
        Role::Inventory => {
            let service = grpc::inventory_server::InventoryServer::new(products::InventoryService);
            tonic::transport::Server::builder().add_service(service).serve(listen).await?;
        }
        Role::Ratings => {
            let service = grpc::ratings_server::RatingsServer::new(products::RatingsService);
            tonic::transport::Server::builder().add_service(service).serve(listen).await?;
        }
        _ => http_service::serve(role, listen, calls).await?,
    }
    Ok(())
}
