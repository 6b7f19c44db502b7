//! The store's public vocabulary: which resource ([`ResourceKey`]), one stored generation of
//! it ([`Stored`]), and what a write did to it ([`Change`], [`Action`]).
//!
//! These are also the JSON the API returns (`docs/api/openapi.yaml`): a [`Stored`] carries its
//! key as an object `{kind, namespace, name}`; a [`Change`] carries it as the string
//! `KIND/NAMESPACE/NAME`.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use trellis_api::Resource;

/// Names one resource: `KIND/NAMESPACE/NAME`. Documents that are not namespaced (`Proxy`) use
/// the namespace `-`; a `Proxy` document without a name is named `-`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ResourceKey { kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }

    /// The key a document is stored under (`Endpoints` are named after their service).
    pub fn of(resource: &Resource) -> Self {
        match resource {
            Resource::Service(s) => ResourceKey::new("Service", s.namespace.as_str(), s.name.0.as_str()),
            Resource::Endpoints(e) => ResourceKey::new("Endpoints", e.namespace.as_str(), e.service.0.as_str()),
            Resource::Proxy(p) => ResourceKey::new("Proxy", "-", p.name.as_deref().unwrap_or("-")),
            Resource::Policy(p) => ResourceKey::new("Policy", p.namespace.as_str(), p.name.0.as_str()),
            Resource::Tenant(t) => ResourceKey::new("Tenant", "-", t.name.0.as_str()),
            Resource::Telemetry(t) => ResourceKey::new("Telemetry", t.namespace.as_str(), t.name.0.as_str()),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One generation of a resource, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub key: ResourceKey,
    /// The global revision of the commit that wrote this generation.
    pub revision: u64,
    /// This resource's own counter: 1, 2, 3... Deletions and rollbacks are generations too.
    pub generation: u64,
    /// The resource as JSON (with its `kind` tag). For a deletion: the document as it was
    /// when it was deleted.
    pub document: serde_json::Value,
    pub deleted: bool,
    /// Who made the change (the API token's name).
    pub actor: String,
    pub time_unix_ms: u64,
}

/// What a write did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Created,
    Updated,
    /// The document equals the current generation: nothing was written.
    Unchanged,
    Deleted,
    RolledBack,
}

/// The outcome of a write for one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(serialize_with = "key_as_string")]
    pub key: ResourceKey,
    pub action: Action,
    /// The commit's revision; for [`Action::Unchanged`], the revision of the current
    /// generation (unchanged documents do not bump it).
    pub revision: u64,
    /// The resource's generation after the write.
    pub generation: u64,
}

fn key_as_string<S: Serializer>(key: &ResourceKey, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(key)
}
