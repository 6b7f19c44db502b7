//! The Trellis resource model: the documents users write and the proxy and control plane read.
//!
//! A configuration is a stream of YAML (or JSON) documents, each with a `kind`:
//!
//! - [`Service`]: one service's whole behaviour — ports, subsets, routes, load balancing,
//!   resilience settings.
//! - [`Endpoints`]: a static list of a service's instances (the control plane's registry
//!   replaces it later).
//! - [`ProxySettings`] (`kind: Proxy`): a proxy's own listeners and limits, for static mode.
//! - Kubernetes Gateway API `HTTPRoute` and `GRPCRoute` attached to a Service (mesh / GAMMA):
//!   translated while parsing into that Service's routes (see `gateway_api.rs`), so the result
//!   holds only the kinds above.
//! - [`Policy`] and [`Tenant`]: who may call whom (see `policy.rs`).
//! - [`Telemetry`]: access logs and tracing for a namespace's proxies.
//!
//! [`parse_documents`] turns text into typed [`Resource`]s and reports every problem with
//! file, line, column and field path; [`validate`] adds the checks that span fields and
//! documents (unknown subsets, duplicate names, shadowed routes).

mod duration;
mod errors;
mod gateway_api;
mod parse;
mod policy;
mod proxy;
mod reference;
mod schema;
mod service;
mod telemetry;
mod validate;

pub use duration::Duration;
pub use errors::{ConfigError, ConfigErrors};
pub use parse::{parse_documents, parse_documents_in, parse_file, parse_json_document};
pub use policy::{
    Action as PolicyAction, AuthorizerUrl, EgressRule, ExternalAuthorization, HttpUrl, MtlsMode, Operation, Policy,
    PolicyRule, Source, SpiffeId, Tenant,
};
pub use proxy::{
    ControlSettings, ExplicitListener, InboundListener, OutboundListener, ProxySettings, WorkloadSettings,
};
pub use reference::reference_markdown;
pub use service::*;
pub use telemetry::{AccessLogSettings, SamplingPercent, Telemetry, TracingSettings};
pub use validate::validate;

use serde::Serialize;

/// One document of a configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum Resource {
    /// Boxed, like the other large kinds, so that the thousands of `Endpoints` documents of
    /// a large configuration take their own size, not that of the largest kind.
    Service(Box<Service>),
    Endpoints(Endpoints),
    #[serde(rename = "Proxy")]
    Proxy(Box<ProxySettings>),
    Policy(Box<Policy>),
    Tenant(Tenant),
    Telemetry(Telemetry),
}

impl Resource {
    /// Gives back the spare capacity deserialization leaves in lists (a list grows by
    /// doubling, so a route list of one holds room for four). A proxy keeps its documents for
    /// its whole life, and with thousands of services that spare room adds up to megabytes.
    pub fn shrink_to_fit(&mut self) {
        match self {
            Resource::Service(s) => {
                s.addresses.shrink_to_fit();
                s.hosts.shrink_to_fit();
                s.ports.shrink_to_fit();
                s.routes.shrink_to_fit();
                for route in &mut s.routes {
                    route.to.shrink_to_fit();
                }
            }
            Resource::Endpoints(e) => e.endpoints.shrink_to_fit(),
            Resource::Proxy(_) | Resource::Policy(_) | Resource::Tenant(_) | Resource::Telemetry(_) => {}
        }
    }

    /// `KIND/NAMESPACE/NAME`, how errors and the CLI refer to a document.
    pub fn key(&self) -> String {
        match self {
            Resource::Service(s) => format!("Service/{}/{}", s.namespace, s.name),
            Resource::Endpoints(e) => format!("Endpoints/{}/{}", e.namespace, e.service),
            Resource::Proxy(p) => format!("Proxy/{}", p.name.as_deref().unwrap_or("-")),
            Resource::Policy(p) => format!("Policy/{}/{}", p.namespace, p.name),
            // Not namespaced: stored and pushed under the namespace `-`.
            Resource::Tenant(t) => format!("Tenant/-/{}", t.name),
            Resource::Telemetry(t) => format!("Telemetry/{}/{}", t.namespace, t.name),
        }
    }
}

/// The namespace of a document that names none.
pub(crate) fn default_namespace() -> String {
    "default".to_string()
}

/// Kinds accepted in a `kind:` field, listed in errors.
pub const KINDS: &[&str] = &["Service", "Endpoints", "Policy", "Tenant", "Telemetry", "Proxy"];

#[cfg(test)]
mod tests;
