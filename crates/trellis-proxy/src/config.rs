//! The running configuration: resource documents compiled into what the request path uses.
//!
//! [`RunningConfig::compile`] turns validated documents into services with their routes'
//! element chains and per-backend balancers. A reload compiles a new `RunningConfig` and
//! swaps it in atomically; requests in flight keep the one they started with. Endpoint load
//! statistics and upstream connections live outside it, so reloads keep them.

use crate::balance::{BalancedEndpoint, Balancer, EndpointStats};
use crate::chain::Element;
use crate::elements;
use crate::routing::RouteMatcher;
use crate::upstream::Upstreams;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_api::{Endpoints, ProxySettings, Resource, Service};

/// `NAME.NAMESPACE`.
pub type ServiceId = String;

pub fn service_id(name: &str, namespace: &str) -> ServiceId {
    format!("{name}.{namespace}")
}

/// Load statistics per endpoint address, shared by every configuration version.
#[derive(Default)]
pub struct EndpointRegistry {
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl EndpointRegistry {
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_insert_with(|| Arc::new(EndpointStats::new()))
            .clone()
    }
}

/// What compiled routes need from the proxy around them.
pub struct Runtime {
    pub upstreams: Arc<Upstreams>,
    pub endpoints: EndpointRegistry,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// External authorizers' decision caches, kept across reloads.
    pub decisions: crate::ext_authz::DecisionCaches,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

/// A configuration ready to serve.
pub struct RunningConfig {
    /// Content hash of the documents: the version `/config` reports. The documents
    /// themselves are kept once, by [`crate::Shared`], not here.
    pub version: String,
    pub settings: ProxySettings,
    pub services: HashMap<ServiceId, Arc<ServiceConfig>>,
    by_address: HashMap<SocketAddr, ServiceId>,
    by_ip: HashMap<IpAddr, ServiceId>,
    by_host: HashMap<String, ServiceId>,
    /// The policies covering this proxy's workload, for inbound traffic.
    pub authorizer: Arc<crate::authz::Authorizer>,
    /// Access logs and tracing.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// How inbound requests are labelled: the workload's service (or the proxy's name).
    pub inbound_label: Arc<str>,
}

/// One service as its callers' proxies see it.
pub struct ServiceConfig {
    pub id: ServiceId,
    /// `id`, shared by metrics and logs.
    pub label: Arc<str>,
    pub spec: Service,
    pub routes: Vec<CompiledRoute>,
    /// Used when no route matches: the whole service.
    pub default_route: CompiledRoute,
    /// All endpoints, for opaque TCP.
    pub all: Arc<Backend>,
}

impl ServiceConfig {
    /// The first route whose match holds, else the whole-service default.
    pub fn route_for<B>(&self, request: &http::Request<B>) -> &CompiledRoute {
        self.routes.iter().find(|r| r.matcher.matches(request)).unwrap_or(&self.default_route)
    }

    /// The protocol declared for `port`, if the service lists it.
    pub fn protocol(&self, port: u16) -> Option<trellis_api::Protocol> {
        self.spec.ports.iter().find(|p| p.port == port).map(|p| p.protocol)
    }
}

pub struct CompiledRoute {
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub chain: Vec<Arc<dyn Element>>,
}

/// A set of endpoints traffic can be sent to: a service, or one subset of it.
pub struct Backend {
    /// `service` or `service/subset`, as in metrics and errors (shared, so metrics can tell
    /// it apart by pointer).
    pub label: Arc<str>,
    pub endpoints: Vec<Target>,
    pub balancer: Balancer,
    pub hash_on: Option<trellis_api::HashOn>,
    pub connect_timeout: Duration,
}

/// One endpoint of a backend.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub meshed: bool,
    /// The SPIFFE ID the endpoint must prove (mutual TLS); `None`: plaintext.
    pub identity: crate::upstream::PeerIdentity,
    pub stats: Arc<EndpointStats>,
}

impl RunningConfig {
    /// Compiles documents (already validated) into a running configuration.
    pub fn compile(documents: &[Resource], runtime: &Runtime) -> anyhow::Result<RunningConfig> {
        let version = content_hash(documents);
        let mut settings = ProxySettings::default();
        let mut specs: BTreeMap<ServiceId, Service> = BTreeMap::new();
        let mut endpoint_lists: HashMap<ServiceId, Endpoints> = HashMap::new();
        let mut policies = Vec::new();
        let mut tenants = Vec::new();
        for doc in documents {
            match doc {
                Resource::Proxy(p) => settings = p.clone(),
                Resource::Policy(p) => policies.push(p),
                Resource::Tenant(t) => tenants.push(t),
                Resource::Telemetry(_) => {}
                Resource::Service(s) => {
                    specs.insert(service_id(&s.name, &s.namespace), s.clone());
                }
                Resource::Endpoints(e) => {
                    endpoint_lists.insert(service_id(&e.service, &e.namespace), e.clone());
                }
            }
        }
        // A service known only from its endpoints behaves with every default.
        for (id, e) in &endpoint_lists {
            specs.entry(id.clone()).or_insert_with(|| Service {
                name: e.service.clone(),
                namespace: e.namespace.clone(),
                addresses: vec![],
                hosts: vec![],
                ports: vec![],
                subsets: BTreeMap::new(),
                routes: vec![],
                load_balancer: Default::default(),
                resilience: Default::default(),
            });
        }

        let mut backends =
            BackendBuilder { specs: &specs, endpoint_lists: &endpoint_lists, runtime, built: HashMap::new() };
        let mut services = HashMap::new();
        let mut by_address = HashMap::new();
        let mut by_ip = HashMap::new();
        let mut by_host = HashMap::new();
        for (id, spec) in &specs {
            let all = backends.get(id, None);
            let mut routes = Vec::new();
            for (index, route) in spec.routes.iter().enumerate() {
                let name = route.name.clone().unwrap_or_else(|| format!("route-{index}"));
                let chain = elements::compile_route(spec, route, &name, &mut backends)?;
                routes.push(CompiledRoute { name: name.into(), matcher: RouteMatcher::new(&route.matches)?, chain });
            }
            let default_route = CompiledRoute {
                name: Arc::from("default"),
                matcher: RouteMatcher::any(),
                chain: elements::compile_route(spec, &Default::default(), "default", &mut backends)?,
            };
            for ip in &spec.addresses {
                by_ip.insert(*ip, id.clone());
            }
            for host in service_hosts(spec) {
                by_host.insert(host, id.clone());
            }
            for endpoint in all.endpoints.iter() {
                by_address.insert(endpoint.addr, id.clone());
            }
            services.insert(
                id.clone(),
                Arc::new(ServiceConfig {
                    id: id.clone(),
                    label: Arc::from(id.as_str()),
                    spec: spec.clone(),
                    routes,
                    default_route,
                    all,
                }),
            );
        }
        // Without a workload (static mode) the namespace-wide policies of `default` apply.
        let (namespace, own_service) = match &settings.workload {
            Some(w) => (w.namespace.clone(), Some(w.service.0.clone())),
            None => ("default".to_string(), None),
        };
        let authorizer = Arc::new(crate::authz::Authorizer::compile(
            &policies,
            &tenants,
            &namespace,
            own_service.as_deref(),
            &runtime.decisions,
            &runtime.metrics,
        )?);
        let telemetry = crate::telemetry::TelemetryConfig::compile(documents, &settings);
        let inbound_label: Arc<str> = match (&settings.workload, &settings.name) {
            (Some(w), _) => Arc::from(service_id(&w.service, &w.namespace).as_str()),
            (None, Some(name)) => Arc::from(name.as_str()),
            (None, None) => Arc::from("app"),
        };
        Ok(RunningConfig {
            version,
            settings,
            services,
            by_address,
            by_ip,
            by_host,
            authorizer,
            telemetry,
            inbound_label,
        })
    }

    /// The service a connection to `target` is meant for: by virtual IP, or by an endpoint
    /// address (a client that resolved the service to an instance).
    pub fn service_for_address(&self, target: SocketAddr) -> Option<&Arc<ServiceConfig>> {
        let id = self.by_ip.get(&target.ip()).or_else(|| self.by_address.get(&target))?;
        self.services.get(id)
    }

    /// The service named by an HTTP authority (`reviews`, `reviews.shop:9080`, ...).
    pub fn service_for_authority(&self, authority: &str) -> Option<&Arc<ServiceConfig>> {
        let host = strip_port(authority).to_ascii_lowercase();
        let id = self.by_host.get(&host)?;
        self.services.get(id)
    }

    /// A service by `NAME` or `NAME.NAMESPACE` (default namespace `default`).
    pub fn service_named(&self, reference: &str) -> Option<&Arc<ServiceConfig>> {
        let id = if reference.contains('.') { reference.to_string() } else { service_id(reference, "default") };
        self.services.get(&id)
    }
}

fn strip_port(authority: &str) -> &str {
    crate::routing::split_host_port(authority).0
}

/// Authorities that name a service.
fn service_hosts(spec: &Service) -> Vec<String> {
    let (name, ns) = (&spec.name.0, &spec.namespace);
    let mut hosts = vec![format!("{name}.{ns}"), format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")];
    if ns == "default" {
        hosts.push(name.clone());
    }
    hosts.extend(spec.hosts.iter().map(|h| h.to_ascii_lowercase()));
    hosts
}

/// The stable hash of the canonical JSON, the same function the control plane uses.
fn content_hash(documents: &[Resource]) -> String {
    trellis_protocol::content_hash(&serde_json::to_vec(documents).unwrap_or_default())
}

/// Builds each (service, subset) backend once per configuration.
pub struct BackendBuilder<'a> {
    specs: &'a BTreeMap<ServiceId, Service>,
    endpoint_lists: &'a HashMap<ServiceId, Endpoints>,
    pub runtime: &'a Runtime,
    built: HashMap<(ServiceId, Option<String>), Arc<Backend>>,
}

impl BackendBuilder<'_> {
    /// Resolves a reference relative to `namespace` into a service id.
    pub fn resolve(&self, reference: &str, namespace: &str) -> ServiceId {
        match reference.split_once('.') {
            Some((name, ns)) => service_id(name, ns),
            None => service_id(reference, namespace),
        }
    }

    pub fn get(&mut self, id: &ServiceId, subset: Option<&str>) -> Arc<Backend> {
        let key = (id.clone(), subset.map(str::to_string));
        if let Some(backend) = self.built.get(&key) {
            return backend.clone();
        }
        let spec = self.specs.get(id);
        let selector = subset.and_then(|s| spec.and_then(|spec| spec.subsets.get(s)));
        let endpoints: Vec<&trellis_api::Endpoint> = self
            .endpoint_lists
            .get(id)
            .map(|list| {
                list.endpoints
                    .iter()
                    .filter(|e| selector.is_none_or(|sel| sel.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
                    .collect()
            })
            .unwrap_or_default();
        let targets: Vec<Target> = endpoints
            .iter()
            .map(|e| Target {
                addr: e.address,
                meshed: e.meshed,
                identity: e.identity.as_ref().map(|id| Arc::from(id.0.as_str())),
                stats: self.runtime.endpoints.stats(e.address),
            })
            .collect();
        let lb = spec.map(|s| s.load_balancer.clone()).unwrap_or_default();
        let algorithm = lb.algorithm;
        let balancer = Balancer::new(
            algorithm,
            endpoints
                .iter()
                .zip(&targets)
                .map(|(e, t)| BalancedEndpoint { address: t.addr, weight: e.weight.0, stats: t.stats.clone() })
                .collect(),
        );
        let label = match subset {
            Some(s) => format!("{id}/{s}"),
            None => id.clone(),
        };
        let connect_timeout = spec.map(|s| s.resilience.connect_timeout.get()).unwrap_or(Duration::from_secs(1));
        let backend = Arc::new(Backend {
            label: label.into(),
            endpoints: targets,
            balancer,
            hash_on: lb.hash_on,
            connect_timeout,
        });
        self.built.insert(key, backend.clone());
        backend
    }
}
