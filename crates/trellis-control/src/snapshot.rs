//! The compiler: resources in the store plus the workload registry, turned into what each
//! proxy needs.
//!
//! A [`Snapshot`] is built once per change (of the store or of the registry) and shared by
//! every proxy's stream; [`Snapshot::for_workload`] then picks one proxy's share: the
//! services its workload calls (all of its namespace when it names none), its own service
//! for inbound settings, and the services those routes lead to (other destinations,
//! mirrors). Each service travels as its `Service` document and one `Endpoints` document
//! that merges the static endpoints in the store with the ready registered workloads, each
//! piece versioned by its content hash. Policies go to the proxies of the workloads they
//! cover, a namespace's `Telemetry` to its proxies; tenants and the trust bundle to every
//! proxy.

use crate::registry::Registry;
use crate::store::Stored;
use std::collections::{BTreeMap, BTreeSet};
use trellis_api::{Endpoint, Endpoints, Name, Resource, Service, Weight};

/// One resource as pushed: name, content hash and JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub hash: String,
    pub json: String,
}

/// `(namespace, name)` of a service.
type ServiceKey = (String, String);

#[derive(Default)]
pub struct Snapshot {
    services: BTreeMap<ServiceKey, (String, Piece, Service)>,
    endpoints: BTreeMap<ServiceKey, (String, Piece)>,
    /// (name, piece, namespace, service it is limited to)
    policies: Vec<(String, Piece, String, Option<String>)>,
    /// Every proxy needs every tenant: callers check egress, callees check callers.
    tenants: Vec<(String, Piece)>,
    /// (name, piece, namespace): access logs and tracing for that namespace's proxies.
    telemetry: Vec<(String, Piece, String)>,
    /// The store revision this snapshot was built from.
    pub revision: u64,
    /// The CA's roots and signer, sent to every proxy.
    pub bundle: Option<Piece>,
}

impl Snapshot {
    /// Builds the snapshot. Documents that no longer parse (they were valid when stored) are
    /// skipped with a log line rather than breaking every proxy.
    pub fn build(items: &[Stored], registry: &Registry) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut static_endpoints: BTreeMap<ServiceKey, Endpoints> = BTreeMap::new();
        for item in items {
            let text = item.document.to_string();
            let name = item.key.to_string();
            let parsed = match trellis_api::parse_documents(&text, &name) {
                Ok(mut docs) if docs.len() == 1 => docs.remove(0),
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!("stored document {name} does not parse any more; not pushed: {e}");
                    continue;
                }
            };
            match parsed {
                Resource::Service(s) => {
                    let key = (s.namespace.clone(), s.name.0.clone());
                    let piece = piece_of(&Resource::Service(s.clone()));
                    snapshot.services.insert(key, (name, piece, *s));
                }
                Resource::Endpoints(e) => {
                    static_endpoints.insert((e.namespace.clone(), e.service.0.clone()), e);
                }
                Resource::Policy(p) => {
                    let piece = piece_of(&Resource::Policy(p.clone()));
                    snapshot.policies.push((name, piece, p.namespace.clone(), p.service.as_ref().map(|s| s.0.clone())));
                }
                Resource::Tenant(t) => snapshot.tenants.push((name, piece_of(&Resource::Tenant(t)))),
                Resource::Telemetry(t) => {
                    let namespace = t.namespace.clone();
                    snapshot.telemetry.push((name, piece_of(&Resource::Telemetry(t)), namespace));
                }
                Resource::Proxy(_) => {}
            }
        }
        // Endpoints for every service that has any: static ones plus registered workloads.
        let mut keys: BTreeSet<ServiceKey> = static_endpoints.keys().cloned().collect();
        keys.extend(registry.services().into_iter().map(|(service, ns)| (ns, service)));
        keys.extend(snapshot.services.keys().cloned());
        for (namespace, service) in keys {
            let mut list: Vec<Endpoint> = static_endpoints
                .get(&(namespace.clone(), service.clone()))
                .map(|e| e.endpoints.clone())
                .unwrap_or_default();
            for registered in registry.endpoints(&service, &namespace) {
                if !list.iter().any(|e| e.address == registered.address) {
                    list.push(Endpoint {
                        address: registered.address,
                        labels: registered.labels.into(),
                        weight: Weight(1),
                        meshed: true,
                        identity: registered.identity.map(|id| trellis_api::SpiffeId(id.into())),
                    });
                }
            }
            if list.is_empty() && !static_endpoints.contains_key(&(namespace.clone(), service.clone())) {
                // A Service with no instances still gets an (empty) Endpoints document, so a
                // proxy answers `no-healthy-endpoints` instead of passing traffic through.
                if !snapshot.services.contains_key(&(namespace.clone(), service.clone())) {
                    continue;
                }
            }
            let Ok(name_checked) = serde_json::from_value::<Name>(serde_json::Value::String(service.clone())) else {
                continue;
            };
            let doc =
                Resource::Endpoints(Endpoints { service: name_checked, namespace: namespace.clone(), endpoints: list });
            let name = format!("Endpoints/{namespace}/{service}");
            snapshot.endpoints.insert((namespace, service), (name, piece_of(&doc)));
        }
        snapshot
    }

    /// Every stored service, parsed: what new documents may refer to.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|(_, _, s)| s)
    }

    /// The resources one workload's proxy needs, by name.
    pub fn for_workload(
        &self,
        namespace: &str,
        own_service: Option<&str>,
        calls: &[String],
    ) -> BTreeMap<String, Piece> {
        let mut wanted: BTreeSet<ServiceKey> = BTreeSet::new();
        if calls.is_empty() {
            wanted.extend(self.services.keys().filter(|(ns, _)| ns == namespace).cloned());
            wanted.extend(self.endpoints.keys().filter(|(ns, _)| ns == namespace).cloned());
        } else {
            wanted.extend(calls.iter().map(|c| resolve(c, namespace)));
        }
        if let Some(own) = own_service {
            wanted.insert((namespace.to_string(), own.to_string()));
        }
        // Routes may lead to other services (split to another service, mirrors).
        let mut queue: Vec<ServiceKey> = wanted.iter().cloned().collect();
        while let Some(key) = queue.pop() {
            if let Some((_, _, service)) = self.services.get(&key) {
                for target in referenced_services(service) {
                    if wanted.insert(target.clone()) {
                        queue.push(target);
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        if let Some(bundle) = &self.bundle {
            out.insert(trellis_protocol::TRUST_BUNDLE_RESOURCE.to_string(), bundle.clone());
        }
        out.extend(self.tenants.iter().cloned());
        // Policies are enforced where traffic arrives: those of its own namespace that
        // cover the whole namespace or its own service.
        for (name, piece, ns, service) in &self.policies {
            if ns == namespace && (service.is_none() || service.as_deref() == own_service) {
                out.insert(name.clone(), piece.clone());
            }
        }
        for (name, piece, ns) in &self.telemetry {
            if ns == namespace {
                out.insert(name.clone(), piece.clone());
            }
        }
        for key in wanted {
            if let Some((name, piece, _)) = self.services.get(&key) {
                out.insert(name.clone(), piece.clone());
            }
            if let Some((name, piece)) = self.endpoints.get(&key) {
                out.insert(name.clone(), piece.clone());
            }
        }
        out
    }
}

fn resolve(reference: &str, namespace: &str) -> ServiceKey {
    match reference.split_once('.') {
        Some((name, ns)) => (ns.to_string(), name.to_string()),
        None => (namespace.to_string(), reference.to_string()),
    }
}

fn referenced_services(service: &Service) -> Vec<ServiceKey> {
    let mut out = Vec::new();
    for route in &service.routes {
        for d in &route.to {
            if let Some(s) = &d.service {
                out.push(resolve(s, &service.namespace));
            }
        }
        if let Some(s) = route.mirror.as_ref().and_then(|m| m.service.as_ref()) {
            out.push(resolve(s, &service.namespace));
        }
    }
    out
}

/// The trust bundle as a pushed piece.
pub fn bundle_piece(document: &crate::ca::BundleDocument) -> Piece {
    let json = serde_json::to_string(document).unwrap_or_default();
    Piece { hash: trellis_protocol::content_hash(json.as_bytes()), json }
}

fn piece_of(resource: &Resource) -> Piece {
    let json = serde_json::to_string(resource).unwrap_or_default();
    Piece { hash: trellis_protocol::content_hash(json.as_bytes()), json }
}
