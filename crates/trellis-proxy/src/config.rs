//! The running configuration: resource documents compiled into what the request path uses.
//!
//! [`RunningConfig::compile`] turns validated documents into settings, policies and the
//! tables that find a request's service; each service's routes' element chains and
//! per-backend balancers are compiled the first time the service is needed. A reload compiles
//! a new `RunningConfig` and swaps it in atomically; requests in flight keep the one they
//! started with. Endpoint load statistics and upstream connections live outside it, so
//! reloads keep them.

use crate::balance::{BalancedEndpoint, Balancer, EndpointStats};
use crate::chain::Element;
use crate::elements;
use crate::routing::RouteMatcher;
use crate::upstream::Upstreams;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use trellis_api::{Endpoints, ProxySettings, Resource, Service};

/// `NAME.NAMESPACE`. Shared, not copied: every endpoint address, virtual IP and host name
/// of a large configuration maps to its service's id.
pub type ServiceId = Arc<str>;

pub fn service_id(name: &str, namespace: &str) -> ServiceId {
    Arc::from(format!("{name}.{namespace}"))
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
///
/// It knows every service its documents describe, but compiles one (route chains, backends,
/// balancers) only when a connection or request first needs it: a sidecar told about
/// thousands of services talks to a few, and its memory grows with those. The documents
/// are shared with [`crate::Shared`], not copied; routes are checked when the configuration
/// is compiled, so a configuration that loads has no service that fails to compile later.
pub struct RunningConfig {
    /// Content hash of the documents: the version `/config` reports.
    pub version: String,
    pub settings: ProxySettings,
    catalog: Catalog,
    by_address: AddressIndex,
    by_ip: HashMap<IpAddr, ServiceId>,
    by_host: HashMap<String, ServiceId>,
    runtime: Arc<Runtime>,
    /// The policies covering this proxy's workload, for inbound traffic.
    pub authorizer: Arc<crate::authz::Authorizer>,
    /// Access logs and tracing.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// How inbound requests are labelled: the workload's service (or the proxy's name).
    pub inbound_label: Arc<str>,
}

/// The documents a configuration comes from: the file's and the control plane's, a pushed
/// document replacing a file document with the same key.
#[derive(Clone, Default)]
pub struct Documents {
    pub file: Arc<Vec<Resource>>,
    /// Held by the control client too: one parsed copy of each.
    pub pushed: Arc<Vec<Arc<Resource>>>,
}

impl Documents {
    /// The documents in force, file first.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.positions().map(|(_, d)| d)
    }

    /// The documents in force with their positions (in `file`, then `pushed`).
    fn positions(&self) -> impl Iterator<Item = (usize, &Resource)> {
        let pushed_keys: std::collections::HashSet<String> =
            if self.file.is_empty() { Default::default() } else { self.pushed.iter().map(|d| d.key()).collect() };
        let file_len = self.file.len();
        self.file
            .iter()
            .enumerate()
            .filter(move |(_, d)| !pushed_keys.contains(&d.key()))
            .chain(self.pushed.iter().enumerate().map(move |(i, d)| (i + file_len, &**d)))
    }
}

/// Where a service's documents are (positions in `Documents::file` then `pushed`), and its
/// compiled form once something needed it.
struct ServiceSlot {
    /// `None`: known only from its endpoints, so every setting is a default.
    spec: Option<usize>,
    endpoints: Option<usize>,
    compiled: OnceLock<Option<Arc<ServiceConfig>>>,
}

fn slot(slots: &mut HashMap<ServiceId, ServiceSlot>, id: ServiceId) -> &mut ServiceSlot {
    slots.entry(id).or_insert_with(|| ServiceSlot { spec: None, endpoints: None, compiled: OnceLock::new() })
}

/// Every service of a configuration, by id.
struct Catalog {
    documents: Documents,
    slots: HashMap<ServiceId, ServiceSlot>,
}

impl Catalog {
    fn document(&self, at: usize) -> &Resource {
        let file = self.documents.file.len();
        if at < file { &self.documents.file[at] } else { &self.documents.pushed[at - file] }
    }

    /// The service's document, or an all-defaults one for a service known only from its
    /// endpoints.
    fn spec(&self, id: &ServiceId) -> Option<std::borrow::Cow<'_, Service>> {
        let slot = self.slots.get(id)?;
        match slot.spec.map(|at| self.document(at)) {
            Some(Resource::Service(s)) => Some(std::borrow::Cow::Borrowed(s)),
            _ => {
                let Some(Resource::Endpoints(e)) = slot.endpoints.map(|at| self.document(at)) else { return None };
                Some(std::borrow::Cow::Owned(Service {
                    name: e.service.clone(),
                    namespace: e.namespace.clone(),
                    addresses: vec![],
                    hosts: vec![],
                    ports: vec![],
                    subsets: BTreeMap::new(),
                    routes: vec![],
                    load_balancer: Default::default(),
                    resilience: Default::default(),
                    mesh_http1: Default::default(),
                }))
            }
        }
    }

    fn endpoints(&self, id: &ServiceId) -> Option<&Endpoints> {
        match self.slots.get(id)?.endpoints.map(|at| self.document(at)) {
            Some(Resource::Endpoints(e)) => Some(e),
            _ => None,
        }
    }
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
    /// HTTP/1.1 to meshed endpoints travels over HTTP/2 (the service's `meshHttp1`).
    pub multiplex_http1: bool,
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
    /// Compiles documents (already validated) into a running configuration: settings,
    /// policies, telemetry and the service lookup tables now, each service on first use.
    pub fn compile(documents: Documents, runtime: &Arc<Runtime>) -> anyhow::Result<RunningConfig> {
        let in_force: Vec<(usize, &Resource)> = documents.positions().collect();
        let version = content_hash(&in_force.iter().map(|(_, d)| *d).collect::<Vec<_>>());
        let mut settings = ProxySettings::default();
        let mut policies = Vec::new();
        let mut tenants = Vec::new();
        let mut slots: HashMap<ServiceId, ServiceSlot> = HashMap::new();
        for &(at, doc) in &in_force {
            match doc {
                Resource::Proxy(p) => settings = (**p).clone(),
                Resource::Policy(p) => policies.push(&**p),
                Resource::Tenant(t) => tenants.push(t),
                Resource::Telemetry(_) => {}
                Resource::Service(s) => {
                    for (index, route) in s.routes.iter().enumerate() {
                        elements::check_route(route).map_err(|e| {
                            let name = route.name.clone().unwrap_or_else(|| format!("route-{index}"));
                            e.context(format!("service {}: route {name}", service_id(&s.name, &s.namespace)))
                        })?;
                    }
                    slot(&mut slots, service_id(&s.name, &s.namespace)).spec = Some(at);
                }
                Resource::Endpoints(e) => slot(&mut slots, service_id(&e.service, &e.namespace)).endpoints = Some(at),
            }
        }
        let catalog = Catalog { documents: documents.clone(), slots };

        let mut by_address = HashMap::new();
        let mut by_ip = HashMap::new();
        let mut by_host = HashMap::new();
        // In id order, so that of two services claiming one host the same one always wins.
        let mut ids: Vec<&ServiceId> = catalog.slots.keys().collect();
        ids.sort();
        for (index, id) in ids.iter().copied().enumerate() {
            if let Some(spec) = catalog.spec(id) {
                for ip in &spec.addresses {
                    by_ip.insert(*ip, id.clone());
                }
                for host in service_hosts(&spec) {
                    by_host.insert(host, id.clone());
                }
            }
            for endpoint in catalog.endpoints(id).map(|e| e.endpoints.as_slice()).unwrap_or_default() {
                by_address.insert(endpoint.address, index);
            }
        }
        let by_address = AddressIndex::new(by_address, &ids);
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
        let telemetry = crate::telemetry::TelemetryConfig::compile(in_force.iter().map(|(_, d)| *d), &settings);
        let inbound_label: Arc<str> = match (&settings.workload, &settings.name) {
            (Some(w), _) => service_id(&w.service, &w.namespace),
            (None, Some(name)) => Arc::from(name.as_str()),
            (None, None) => Arc::from("app"),
        };
        Ok(RunningConfig {
            version,
            settings,
            catalog,
            by_address,
            by_ip,
            by_host,
            runtime: runtime.clone(),
            authorizer,
            telemetry,
            inbound_label,
        })
    }

    /// The documents this configuration was compiled from.
    pub fn documents(&self) -> &Documents {
        &self.catalog.documents
    }

    /// A service by id, compiled now if this is the first time it is needed.
    pub fn service(&self, id: &str) -> Option<&Arc<ServiceConfig>> {
        let slot = self.catalog.slots.get(id)?;
        slot.compiled
            .get_or_init(|| match self.compile_service(id) {
                Ok(service) => Some(Arc::new(service)),
                Err(e) => {
                    // Routes were checked when the configuration loaded, so this is a bug.
                    tracing::error!(service = %id, "cannot compile the service: {e:#}");
                    None
                }
            })
            .as_ref()
    }

    /// Every service with its routes' element chains, for `/config`: the compiled form of
    /// those in use, and a throwaway one for the rest (so reading `/config` does not keep
    /// every service compiled).
    pub fn describe_services(&self) -> Vec<Arc<ServiceConfig>> {
        let mut ids: Vec<&ServiceId> = self.catalog.slots.keys().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| match self.catalog.slots[id].compiled.get() {
                Some(compiled) => compiled.clone(),
                None => self.compile_service(id).ok().map(Arc::new),
            })
            .collect()
    }

    fn compile_service(&self, id: &str) -> anyhow::Result<ServiceConfig> {
        let id: ServiceId = Arc::from(id);
        let spec = self.catalog.spec(&id).ok_or_else(|| anyhow::anyhow!("service {id} has no documents"))?;
        let mut backends = BackendBuilder { catalog: &self.catalog, runtime: &self.runtime, built: HashMap::new() };
        let all = backends.get(&id, None);
        let mut routes = Vec::with_capacity(spec.routes.len());
        for (index, route) in spec.routes.iter().enumerate() {
            let name = route.name.clone().unwrap_or_else(|| format!("route-{index}"));
            let chain = elements::compile_route(&spec, route, &name, &mut backends)?;
            routes.push(CompiledRoute { name: name.into(), matcher: RouteMatcher::new(&route.matches)?, chain });
        }
        let default_route = CompiledRoute {
            name: Arc::from("default"),
            matcher: RouteMatcher::any(),
            chain: elements::compile_route(&spec, &Default::default(), "default", &mut backends)?,
        };
        Ok(ServiceConfig { label: id.clone(), id, spec: spec.into_owned(), routes, default_route, all })
    }

    /// The service a connection to `target` is meant for: by virtual IP, or by an endpoint
    /// address (a client that resolved the service to an instance).
    pub fn service_for_address(&self, target: SocketAddr) -> Option<&Arc<ServiceConfig>> {
        let id = self.by_ip.get(&target.ip()).or_else(|| self.by_address.get(target))?;
        self.service(id)
    }

    /// The service named by an HTTP authority (`reviews`, `reviews.shop:9080`, ...).
    pub fn service_for_authority(&self, authority: &str) -> Option<&Arc<ServiceConfig>> {
        let host = strip_port(authority).to_ascii_lowercase();
        let id = self.by_host.get(&host).or_else(|| {
            // `NAME.NAMESPACE.svc[.cluster.local]` is held as `NAME.NAMESPACE`, the service's
            // id; a bare name or a declared host does not take the suffixes.
            let short = host.strip_suffix(".svc.cluster.local").or_else(|| host.strip_suffix(".svc"))?;
            self.by_host.get(short).filter(|id| ***id == *short)
        })?;
        self.service(id)
    }

    /// A service by `NAME` or `NAME.NAMESPACE` (default namespace `default`).
    pub fn service_named(&self, reference: &str) -> Option<&Arc<ServiceConfig>> {
        if reference.contains('.') {
            return self.service(reference);
        }
        self.service(&service_id(reference, "default"))
    }
}

/// Endpoint address → service, as sorted lists. A large configuration has an entry per
/// endpoint (10,000 for 1,000 services): an IPv4 entry is its address, port and a 4-byte
/// index into `ids`, 12 bytes, where a hash map holding the service id beside each
/// `SocketAddr` would take about five times as much.
struct AddressIndex {
    v4: Vec<((u32, u16), u32)>,
    v6: Vec<(SocketAddr, u32)>,
    ids: Vec<ServiceId>,
}

const _: () = assert!(std::mem::size_of::<((u32, u16), u32)>() == 12);

fn packed_v4(addr: SocketAddr) -> Option<(u32, u16)> {
    match addr {
        SocketAddr::V4(v4) => Some((v4.ip().to_bits(), v4.port())),
        SocketAddr::V6(_) => None,
    }
}

impl AddressIndex {
    /// From address → index into `ids`.
    fn new(map: HashMap<SocketAddr, usize>, ids: &[&ServiceId]) -> AddressIndex {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (addr, at) in map {
            let Ok(at) = u32::try_from(at) else { continue };
            match packed_v4(addr) {
                Some(key) => v4.push((key, at)),
                None => v6.push((addr, at)),
            }
        }
        // Grown by doubling, the lists could keep nearly as much room again as they hold.
        v4.shrink_to_fit();
        v6.shrink_to_fit();
        v4.sort_unstable_by_key(|(key, _)| *key);
        v6.sort_unstable_by_key(|(addr, _)| *addr);
        let ids = ids.iter().map(|id| (*id).clone()).collect();
        AddressIndex { v4, v6, ids }
    }

    fn get(&self, addr: SocketAddr) -> Option<&ServiceId> {
        let at = match packed_v4(addr) {
            Some(key) => self.v4.binary_search_by_key(&key, |(k, _)| *k).map(|i| self.v4[i].1),
            None => self.v6.binary_search_by_key(&addr, |(a, _)| *a).map(|i| self.v6[i].1),
        };
        self.ids.get(at.ok()? as usize)
    }
}

fn strip_port(authority: &str) -> &str {
    crate::routing::split_host_port(authority).0
}

/// Authorities that name a service. `NAME.NAMESPACE.svc` and `.svc.cluster.local` name it
/// too; lookups shorten them, rather than every service holding three names.
fn service_hosts(spec: &Service) -> Vec<String> {
    let (name, ns) = (&spec.name.0, &spec.namespace);
    let mut hosts = vec![format!("{name}.{ns}")];
    if ns == "default" {
        hosts.push(name.clone());
    }
    hosts.extend(spec.hosts.iter().map(|h| h.to_ascii_lowercase()));
    hosts
}

/// The stable hash of the canonical JSON, the same function the control plane uses.
fn content_hash(documents: &[&Resource]) -> String {
    // Hashed as it is written: with thousands of services the text would be megabytes.
    let mut hasher = trellis_protocol::ContentHasher::default();
    let _ = serde_json::to_writer(&mut hasher, documents);
    hasher.finish()
}

/// Builds each (service, subset) backend once per configuration.
pub struct BackendBuilder<'a> {
    catalog: &'a Catalog,
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
        let spec = self.catalog.spec(id);
        let spec = spec.as_deref();
        let selector = subset.and_then(|s| spec.and_then(|spec| spec.subsets.get(s)));
        let endpoints: Vec<&trellis_api::Endpoint> = self
            .catalog
            .endpoints(id)
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
                identity: e.identity.as_ref().map(|id| Arc::from(&*id.0)),
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
            None => id.to_string(),
        };
        let connect_timeout = spec.map(|s| s.resilience.connect_timeout.get()).unwrap_or(Duration::from_secs(1));
        let multiplex_http1 = spec.is_some_and(|s| s.mesh_http1 == trellis_api::MeshHttp1::Multiplex);
        let backend = Arc::new(Backend {
            label: label.into(),
            endpoints: targets,
            balancer,
            hash_on: lb.hash_on,
            connect_timeout,
            multiplex_http1,
        });
        self.built.insert(key, backend.clone());
        backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_index_finds_each_endpoint_and_nothing_else() {
        let ids: Vec<ServiceId> = (0..300).map(|i| service_id(&format!("svc-{i}"), "shop")).collect();
        let refs: Vec<&ServiceId> = ids.iter().collect();
        let addr = |i: usize, e: usize| SocketAddr::from(([10, (i / 256) as u8, (i % 256) as u8, e as u8 + 1], 8080));
        let mut map = HashMap::new();
        for i in 0..ids.len() {
            for e in 0..10 {
                map.insert(addr(i, e), i);
            }
        }
        let v6 = |i: usize| SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, i as u16], 8080));
        map.insert(v6(7), 7);
        let index = AddressIndex::new(map, &refs);
        assert_eq!(index.get(v6(7)).map(|id| &**id), Some(&*ids[7]));
        assert_eq!(index.get(v6(8)), None);
        // The same address and port as an IPv4 entry, written as IPv4-mapped IPv6, is another address.
        assert_eq!(index.get("[::ffff:10.0.0.1]:8080".parse().unwrap()), None);
        for i in [0, 1, 255, 256, 299] {
            for e in [0, 9] {
                assert_eq!(index.get(addr(i, e)).map(|id| &**id), Some(&*ids[i]), "{}", addr(i, e));
            }
        }
        assert_eq!(index.get(addr(0, 10)), None);
        assert_eq!(index.get(SocketAddr::from(([10, 0, 0, 1], 8081))), None);
        assert_eq!(index.get("[::1]:8080".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn a_service_is_found_by_every_name_an_authority_may_give_it() {
        let upstreams = Arc::new(Upstreams::new(crate::upstream::Connector { mark: 0, identity: Default::default() }));
        let stats = Arc::new(crate::telemetry::stats::RequestStats::default());
        let telemetry = Arc::new(crate::telemetry::Telemetry {
            stats: stats.clone(),
            access_log: crate::telemetry::access_log::AccessLog::open("stderr").unwrap(),
            spans: crate::telemetry::otlp::SpanExporter::start(upstreams.clone()),
            taps: Default::default(),
        });
        let runtime = Arc::new(Runtime {
            upstreams,
            endpoints: EndpointRegistry::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(stats, telemetry.clone())),
            decisions: Default::default(),
            telemetry,
        });
        let file = trellis_api::parse_documents(
            "kind: Service\nname: reviews\nnamespace: shop\n---\nkind: Service\nname: web\nhosts: [Shop.Example, api.other.svc]\n",
            "test.yaml",
        )
        .unwrap();
        let config = RunningConfig::compile(Documents { file: Arc::new(file), pushed: Default::default() }, &runtime).unwrap();
        let found = |authority: &str| config.service_for_authority(authority).map(|s| s.id.to_string());
        for authority in ["reviews.shop", "reviews.shop.svc:9080", "Reviews.Shop.svc.cluster.local", "reviews.shop.svc.cluster.local:80"] {
            assert_eq!(found(authority).as_deref(), Some("reviews.shop"), "{authority}");
        }
        // The default namespace's services answer to their bare name; a declared host is
        // matched as written, even when it ends like a cluster name.
        for authority in ["web", "web.default.svc", "shop.example:443", "api.other.svc"] {
            assert_eq!(found(authority).as_deref(), Some("web.default"), "{authority}");
        }
        // The suffixes belong to `NAME.NAMESPACE` only.
        for authority in
            ["reviews", "reviews.shop.svc.cluster", "reviews.shop.cluster.local", "api.other", "shop", "web.svc", "shop.example.svc"]
        {
            assert_eq!(found(authority), None, "{authority}");
        }
    }
}
