//! Kubernetes Gateway API routes (`HTTPRoute`, `GRPCRoute`, `gateway.networking.k8s.io`) in
//! their mesh form (GAMMA), translated into the routes of Trellis `Service`s.
//!
//! A route whose `spec.parentRefs` names a Service (`group: ""` or `core`, `kind: Service`)
//! attaches to that Service. Each entry of a rule's `matches` becomes one Trellis route named
//! `<route-name>-<rule#>-<match#>` (Gateway API ORs the entries; a Trellis route has one match).
//! The routes are appended after the Service's own routes when the same input has a
//! `kind: Service` for it; otherwise a Service with that name and namespace is synthesised.
//! The result is ordinary [`Resource`]s, validated like any other.
//!
//! Semantics kept from the Gateway API (and how):
//!
//! - **Precedence.** Gateway API does not go by rule order: exact paths beat regular
//!   expressions, which beat prefixes (longest first); then a method match, then more header
//!   matches, then more query matches; then routes alphabetically by `namespace/name`, then
//!   rule order, then match order. The routes are sorted that way, since Trellis takes the
//!   first route that matches. (Where regular expressions rank is implementation-specific in
//!   the Gateway API; this is Envoy Gateway's order. `creationTimestamp` is not used.)
//!   GRPCRoute: longer service, then longer method, then more header matches.
//! - **PathPrefix** matches whole path segments (`/api` matches `/api` and `/api/x`, not
//!   `/apix`), so it becomes the regex `/api(?:/.*)?`; `/` (the default) becomes no condition.
//!   With a `URLRewrite` `ReplacePrefixMatch` it becomes two routes, exact `/api` (rewritten to
//!   the replacement) and prefix `/api/` (named `...-prefix`, prefix rewritten).
//! - **Route presence.** Attaching a route replaces a Service's implicit routing, so requests
//!   that match no rule get 404: a route `gateway-api-unmatched` answering 404 is appended
//!   unless some route already matches everything.
//! - **Weights** are relative; they become percentages adding up to exactly 100 (largest
//!   remainder). A rule with no `backendRefs` (or all weights 0) and no `RequestRedirect`
//!   answers 500, as the Gateway API requires.
//! - `timeouts.request` (`10s`, `500ms`, `1h30m`; `0s` disables) becomes the route timeout.
//!
//! Accepted and deliberately without effect: `hostnames` (GAMMA says meshes must not infer
//! anything from them), a backendRef's `port` (Trellis endpoints carry their ports), a rule's
//! `name`, `metadata` other than `name`/`namespace`, and `status`. Cross-namespace
//! `backendRefs` need no ReferenceGrant in a mesh (GEP-1294).
//!
//! Rejected, each with its position and what would be valid: parents other than Services
//! (a Gateway included), consumer routes (a parent in another namespace), `sectionName`,
//! a parent `port` on a Service declared with other ports, filters other than
//! RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite and
//! RequestMirror (GRPCRoute: the header modifiers and RequestMirror), a second mirror,
//! redirects with `ReplacePrefixMatch`, filters on a backendRef, `retry`,
//! `sessionPersistence`, `timeouts.backendRequest`, and HTTPRoutes and GRPCRoutes on the
//! same Service.

use crate::parse::{locate_top_level_key, typed};
use crate::{
    ConfigError, Destination, DirectResponse, Duration, HeaderRewrite, Mirror, Name, Percent, Ratio, Redirect, Regex,
    Resource, Rewrite, Route, RouteMatch, Service, StringMatch, ValueMatch,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Gateway API kinds accepted in a `kind:` field, listed in errors.
pub(crate) const ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute"];

/// The name of the route appended so that unmatched requests get 404 (route presence).
pub(crate) const UNMATCHED_ROUTE: &str = "gateway-api-unmatched";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    fn versions(self) -> &'static [&'static str] {
        match self {
            RouteKind::Http => &["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"],
            RouteKind::Grpc => &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
                "gateway.networking.k8s.io/v1alpha2",
            ],
        }
    }

    fn filter_types(self) -> &'static [&'static str] {
        match self {
            RouteKind::Http => {
                &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "RequestMirror"]
            }
            RouteKind::Grpc => &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror"],
        }
    }
}

/// Filter types the Gateway API defines (across route kinds and channels).
const KNOWN_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
    "ExtensionRef",
    "CORS",
    "ExternalAuth",
];

// ---------------------------------------------------------------------------------------------
// The documents, as written. Unknown fields are errors (with their position); fields that are
// known but unsupported are read and rejected during translation, with a specific message.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteDocument<R> {
    api_version: String,
    metadata: Metadata,
    spec: Spec<R>,
    /// Written by controllers; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

/// Kubernetes object metadata: only `name` and `namespace` matter; the rest (as `kubectl get
/// -o yaml` prints it) is accepted and ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<IgnoredAny>,
    #[serde(default)]
    annotations: Option<IgnoredAny>,
    #[serde(default)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    owner_references: Option<IgnoredAny>,
    #[serde(default)]
    finalizers: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec<R> {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    /// Ignored in a mesh (GEP-1294: implementations should not infer anything from it).
    #[serde(default)]
    #[allow(dead_code)]
    hostnames: Vec<String>,
    #[serde(default = "Vec::new")]
    rules: Vec<R>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRule {
    /// A name for policies to attach to; no effect on routing.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<HttpMatch>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    #[serde(default)]
    timeouts: Option<Timeouts>,
    #[serde(default)]
    retry: Option<IgnoredAny>,
    #[serde(default)]
    session_persistence: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpMatch {
    #[serde(default)]
    path: Option<PathMatch>,
    #[serde(default)]
    headers: Vec<NameValueMatch>,
    #[serde(default)]
    query_params: Vec<NameValueMatch>,
    #[serde(default)]
    method: Option<Method>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathMatch {
    #[serde(default, rename = "type")]
    kind: PathType,
    #[serde(default = "root_path")]
    value: String,
}

fn root_path() -> String {
    "/".to_string()
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
enum PathType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NameValueMatch {
    #[serde(default, rename = "type")]
    kind: MatchType,
    name: String,
    value: String,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    request_redirect: Option<RequestRedirect>,
    #[serde(default)]
    url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    request_mirror: Option<RequestMirror>,
    #[serde(default)]
    extension_ref: Option<IgnoredAny>,
    #[serde(default)]
    cors: Option<IgnoredAny>,
    #[serde(default)]
    external_auth: Option<IgnoredAny>,
}

impl Filter {
    /// The configuration fields present, by their YAML names.
    fn fields(&self) -> Vec<&'static str> {
        [
            ("requestHeaderModifier", self.request_header_modifier.is_some()),
            ("responseHeaderModifier", self.response_header_modifier.is_some()),
            ("requestRedirect", self.request_redirect.is_some()),
            ("urlRewrite", self.url_rewrite.is_some()),
            ("requestMirror", self.request_mirror.is_some()),
            ("extensionRef", self.extension_ref.is_some()),
            ("cors", self.cors.is_some()),
            ("externalAuth", self.external_auth.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }
}

/// The field that configures a filter of the given type.
fn filter_field(kind: &str) -> &'static str {
    match kind {
        "RequestHeaderModifier" => "requestHeaderModifier",
        "ResponseHeaderModifier" => "responseHeaderModifier",
        "RequestRedirect" => "requestRedirect",
        "URLRewrite" => "urlRewrite",
        _ => "requestMirror",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderModifier {
    #[serde(default)]
    set: Vec<HeaderValue>,
    #[serde(default)]
    add: Vec<HeaderValue>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderValue {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestRedirect {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifier>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UrlRewrite {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifier>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathModifier {
    #[serde(rename = "type")]
    kind: PathModifierType,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestMirror {
    backend_ref: ObjectRef,
    #[serde(default)]
    percent: Option<u32>,
    #[serde(default)]
    fraction: Option<Fraction>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Fraction {
    numerator: u32,
    #[serde(default = "Fraction::default_denominator")]
    denominator: u32,
}

impl Fraction {
    fn default_denominator() -> u32 {
        100
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackendRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// Accepted and not used: a Trellis service's endpoints carry their own ports.
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    filters: Vec<IgnoredAny>,
}

impl BackendRef {
    fn object(&self) -> ObjectRef {
        ObjectRef {
            group: self.group.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            port: self.port,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Timeouts {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRule {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<GrpcMatch>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    #[serde(default)]
    session_persistence: Option<IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcMatch {
    #[serde(default)]
    method: Option<GrpcMethodMatch>,
    #[serde(default)]
    headers: Vec<NameValueMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    kind: MatchType,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    method: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Collecting documents and merging them into Services.

/// Where a document is, for its errors and for placing a synthesised Service.
#[derive(Clone, Copy)]
pub(crate) struct Doc<'a> {
    pub text: &'a str,
    pub file: &'a str,
    /// Index of the document in the YAML stream.
    pub index: usize,
    /// Line where the document starts.
    pub line: usize,
    /// How many resources came before it: where a Service synthesised for it goes.
    pub insert_at: usize,
}

/// The Gateway API routes of one configuration, translated, waiting to be merged.
#[derive(Default)]
pub(crate) struct GatewayRoutes {
    attachments: Vec<Attachment>,
    seen: BTreeSet<String>,
    /// How many errors have been located precisely (each costs a re-read of the input).
    located: Cell<usize>,
}

/// Errors beyond this many in one input point at their document's line, not their field's,
/// so that a huge input full of errors cannot make parsing quadratic.
const MAX_LOCATED: usize = 50;

/// One route document attached to one parent Service.
struct Attachment {
    kind: RouteKind,
    /// (namespace, name) of the parent Service.
    parent: (String, String),
    /// `namespace/name` of the route: the tie-breaker between routes.
    route: String,
    index: usize,
    line: usize,
    insert_at: usize,
    /// The `spec.parentRefs[i]` entry, for errors found while merging.
    parent_ref: P,
    port: Option<u16>,
    routes: Vec<Keyed>,
}

/// A translated route with what orders it (smaller first).
#[derive(Clone)]
struct Keyed {
    precedence: [usize; 5],
    rule: usize,
    matched: usize,
    route: Route,
}

impl GatewayRoutes {
    /// Reads one `HTTPRoute` or `GRPCRoute` document and translates it; problems go to `errors`.
    pub(crate) fn read(
        &mut self,
        kind: RouteKind,
        document: serde_yaml_ng::Deserializer<'_>,
        doc: Doc<'_>,
        errors: &mut Vec<ConfigError>,
    ) {
        let located = &self.located;
        let mut tx = Tx { doc, kind, name: String::new(), namespace: String::new(), errors: Vec::new(), located };
        let attachments = match kind {
            RouteKind::Http => {
                typed::<RouteDocument<HttpRule>>(document, doc.file).map(|d| tx.document(d, &mut self.seen))
            }
            RouteKind::Grpc => {
                typed::<RouteDocument<GrpcRule>>(document, doc.file).map(|d| tx.document(d, &mut self.seen))
            }
        };
        match attachments {
            Err(e) => errors.push(locate_top_level_key(e, doc.text)),
            Ok(_) if !tx.errors.is_empty() => {
                tx.errors.sort_by_key(|e| (e.line, e.column)); // in file order
                errors.append(&mut tx.errors);
            }
            Ok(attachments) => self.attachments.extend(attachments),
        }
    }

    /// Adds the translated routes to their Services in `resources` (synthesising the Services
    /// the input does not declare), in Gateway API precedence order.
    pub(crate) fn merge(
        self,
        text: &str,
        file: &str,
        resources: &mut Vec<Resource>,
        lines: &mut Vec<usize>,
        errors: &mut Vec<ConfigError>,
    ) {
        let mut parents: Vec<&(String, String)> = Vec::new();
        for a in &self.attachments {
            if !parents.contains(&&a.parent) {
                parents.push(&a.parent);
            }
        }
        let mut synthesised = Vec::new();
        for parent in parents {
            let group: Vec<&Attachment> = self.attachments.iter().filter(|a| &a.parent == parent).collect();
            let (namespace, name) = parent;
            let existing = resources
                .iter()
                .position(|r| matches!(r, Resource::Service(s) if s.namespace == *namespace && s.name.0 == *name));
            let before = errors.len();
            let mut error = |a: &Attachment, at: &P, message: String| {
                let (line, column) = locate(text, a.index, at, &self.located).unwrap_or((a.line, 1));
                errors.push(ConfigError { file: file.to_string(), line, column, path: at.to_string(), message });
            };
            if let Some(grpc) = group.iter().find(|a| a.kind == RouteKind::Grpc) {
                for a in group.iter().filter(|a| a.kind == RouteKind::Http) {
                    error(
                        a,
                        &a.parent_ref,
                        format!(
                            "Service `{namespace}/{name}` also has GRPCRoute `{}`; a Service takes either \
                             HTTPRoutes or GRPCRoutes (the Gateway API applies only the GRPCRoute to a port, and \
                             Trellis routes cover every port); route gRPC methods with HTTPRoute path matches instead",
                            grpc.route
                        ),
                    );
                }
            }
            if let Some(Resource::Service(service)) = existing.map(|i| &resources[i]) {
                let ports: Vec<u16> = service.ports.iter().map(|p| p.port).collect();
                for a in &group {
                    let Some(port) = a.port else { continue };
                    let listed = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
                    if !ports.is_empty() && !ports.contains(&port) {
                        error(
                            a,
                            &a.parent_ref.k("port"),
                            format!("Service `{namespace}/{name}` has no port {port}; its ports: {listed}"),
                        );
                    } else if ports.len() > 1 {
                        error(
                            a,
                            &a.parent_ref.k("port"),
                            format!(
                                "a route for port {port} alone is not supported: Trellis routes apply to every port \
                                 of a Service, and `{namespace}/{name}` has ports {listed}; remove `port` to attach \
                                 the route to all of them"
                            ),
                        );
                    }
                }
            }
            if errors.len() > before {
                continue;
            }

            let own = format!("{name}.{namespace}");
            // Precedence, then route `namespace/name`, rule, match, and the order emitted.
            let mut all: Vec<(Order, Route)> = Vec::new();
            for a in &group {
                for (seq, k) in a.routes.iter().enumerate() {
                    all.push(((&k.precedence, &a.route, k.rule, k.matched, seq), for_parent(&k.route, &own)));
                }
            }
            all.sort_by(|x, y| x.0.cmp(&y.0));
            let translated = all.into_iter().map(|x| x.1);
            match existing {
                Some(i) => {
                    if let Resource::Service(service) = &mut resources[i] {
                        service.routes.extend(translated);
                        add_unmatched(&mut service.routes);
                    }
                }
                None => {
                    let mut routes: Vec<Route> = translated.collect();
                    add_unmatched(&mut routes);
                    let first = group[0];
                    synthesised.push((first.insert_at, first.line, service(name, namespace, routes)));
                }
            }
        }
        synthesised.sort_by_key(|s| s.0);
        for (at, line, service) in synthesised.into_iter().rev() {
            resources.insert(at, Resource::Service(Box::new(service)));
            lines.insert(at, line);
        }
    }
}

type Order<'a> = (&'a [usize; 5], &'a str, usize, usize, usize);

fn service(name: &str, namespace: &str, routes: Vec<Route>) -> Service {
    Service {
        name: Name(name.to_string()),
        namespace: namespace.to_string(),
        addresses: Vec::new(),
        hosts: Vec::new(),
        ports: Vec::new(),
        subsets: BTreeMap::new(),
        routes,
        load_balancer: Default::default(),
        resilience: Default::default(),
        mesh_http1: Default::default(),
    }
}

/// Routes name every backend `NAME.NAMESPACE`; for the parent itself that is "this service".
fn for_parent(route: &Route, own: &str) -> Route {
    let mut route = route.clone();
    for d in &mut route.to {
        if d.service.as_deref() == Some(own) {
            d.service = None;
        }
    }
    if let [only] = route.to.as_slice()
        && only.service.is_none()
        && only.weight == Percent::full()
    {
        route.to.clear();
    }
    if let Some(m) = &mut route.mirror
        && m.service.as_deref() == Some(own)
    {
        m.service = None;
    }
    route
}

/// Route presence (GEP-1294): with routes attached, a request that matches none gets 404
/// instead of going to the whole service.
fn add_unmatched(routes: &mut Vec<Route>) {
    let everything = |m: &RouteMatch| {
        let all_paths = match &m.path {
            None => true,
            Some(StringMatch::Prefix(p)) => p == "/",
            Some(_) => false,
        };
        all_paths && RouteMatch { path: None, ..m.clone() } == RouteMatch::default()
    };
    if routes.iter().any(|r| everything(&r.matches)) {
        return;
    }
    routes.push(Route {
        name: Some(UNMATCHED_ROUTE.to_string()),
        direct_response: Some(Box::new(DirectResponse { status: 404, body: String::new(), headers: BTreeMap::new() })),
        ..Route::default()
    });
}

// ---------------------------------------------------------------------------------------------
// Translation of one document.

/// What a rule's filters and backends say, shared by its matches.
#[derive(Default)]
struct Actions {
    request_headers: Option<HeaderRewrite>,
    response_headers: Option<HeaderRewrite>,
    redirect: Option<Redirect>,
    authority: Option<String>,
    path_rewrite: Option<(PathModifierType, String)>,
    /// Where the path rewrite was written, for errors about it.
    path_rewrite_at: Option<P>,
    mirror: Option<Mirror>,
    to: Vec<Destination>,
    /// No backend to send to: the Gateway API answers 500.
    no_backend: bool,
}

struct Tx<'a> {
    doc: Doc<'a>,
    kind: RouteKind,
    name: String,
    namespace: String,
    errors: Vec<ConfigError>,
    located: &'a Cell<usize>,
}

trait Rule: Default {
    fn translate(&self, tx: &mut Tx, at: &P, rule: usize, out: &mut Vec<Keyed>);
}

impl Tx<'_> {
    fn error(&mut self, at: &P, message: impl Into<String>) {
        let (line, column) = locate(self.doc.text, self.doc.index, at, self.located).unwrap_or((self.doc.line, 1));
        self.errors.push(ConfigError {
            file: self.doc.file.to_string(),
            line,
            column,
            path: at.to_string(),
            message: message.into(),
        });
    }

    fn document<R: Rule>(&mut self, d: RouteDocument<R>, seen: &mut BTreeSet<String>) -> Vec<Attachment> {
        let kind = self.kind;
        if !kind.versions().contains(&d.api_version.as_str()) {
            let message = format!(
                "`{}` is not a supported {} version; expected one of {}",
                d.api_version,
                kind.name(),
                kind.versions().join(", ")
            );
            self.error(&P::key("apiVersion"), message);
            return Vec::new();
        }
        self.namespace = d.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
        self.name = d.metadata.name.clone();
        if d.metadata.namespace.is_some() {
            self.check_name(&self.namespace.clone(), &P::key("metadata").k("namespace"));
        }
        if self.name.is_empty() {
            self.error(&P::key("metadata").k("name"), "must not be empty");
        }
        let key = format!("{}/{}/{}", kind.name(), self.namespace, self.name);
        if !seen.insert(key.clone()) {
            self.error(&P::key("metadata").k("name"), format!("duplicate {key}: each may be defined once"));
        }
        let parents = self.parents(&d.spec.parent_refs);

        let mut routes = Vec::new();
        let rules = P::key("spec").k("rules");
        if d.spec.rules.is_empty() {
            // The Gateway API's default: one rule matching every request, with no backend.
            R::default().translate(self, &rules, 0, &mut routes);
        }
        for (i, rule) in d.spec.rules.iter().enumerate() {
            rule.translate(self, &rules.i(i), i, &mut routes);
        }
        parents
            .into_iter()
            .map(|(name, parent_ref, port)| Attachment {
                kind,
                parent: (self.namespace.clone(), name),
                route: format!("{}/{}", self.namespace, self.name),
                index: self.doc.index,
                line: self.doc.line,
                insert_at: self.doc.insert_at,
                parent_ref,
                port,
                routes: routes.clone(),
            })
            .collect()
    }

    /// The Services this route attaches to: (name, where its parentRef is, port).
    fn parents(&mut self, refs: &[ParentRef]) -> Vec<(String, P, Option<u16>)> {
        const USE_SERVICE: &str = "Trellis is a service mesh and attaches routes to Services (GAMMA); write \
                                   `group: \"\"` and `kind: Service`";
        let at = P::key("spec").k("parentRefs");
        if refs.is_empty() {
            let message = format!(
                "a mesh route needs `parentRefs` naming its Service, e.g. `parentRefs: [{{group: \"\", kind: Service, \
                 name: NAME}}]`; {} `{}` has none",
                self.kind.name(),
                self.name
            );
            self.error(&P::key("spec"), message);
        }
        let mut parents: Vec<(String, P, Option<u16>)> = Vec::new();
        for (i, parent) in refs.iter().enumerate() {
            let at = at.i(i);
            let before = self.errors.len();
            match parent.kind.as_deref() {
                Some("Service") => {}
                Some(kind) => {
                    self.error(&at.k("kind"), format!("a `{kind}` parent is not supported: {USE_SERVICE}"));
                    continue;
                }
                None => {
                    self.error(
                        &at,
                        format!("`kind` is unset, so it defaults to `Gateway`, which is not supported: {USE_SERVICE}"),
                    );
                    continue;
                }
            }
            match parent.group.as_deref() {
                Some("" | "core") => {}
                Some(group) => self.error(
                    &at.k("group"),
                    format!("a Service parent is in the core group, not `{group}`; write `group: \"\"`"),
                ),
                None => self.error(
                    &at,
                    "`group` is unset, so it defaults to `gateway.networking.k8s.io`; a Service parent needs \
                     `group: \"\"` (the core group)",
                ),
            }
            self.check_name(&parent.name, &at.k("name"));
            if let Some(namespace) = &parent.namespace
                && *namespace != self.namespace
            {
                let message = format!(
                    "Service `{namespace}/{}` is in another namespace than the route (`{}`): consumer routes, which \
                     apply only to clients in the route's namespace, are not supported; put the route in namespace \
                     `{namespace}`",
                    parent.name, self.namespace
                );
                self.error(&at.k("namespace"), message);
            }
            if parent.section_name.is_some() {
                self.error(
                    &at.k("sectionName"),
                    "`sectionName` is not supported: Trellis routes apply to every port of a Service; remove it",
                );
            }
            if parent.port == Some(0) {
                self.error(&at.k("port"), "0 is not a valid port; use 1..=65535");
            }
            if let Some(first) = parents.iter().position(|p| p.0 == parent.name) {
                let message = format!(
                    "Service `{}/{}` is already a parent (parentRefs[{first}]); list it once",
                    self.namespace, parent.name
                );
                self.error(&at, message);
            }
            if self.errors.len() == before {
                parents.push((parent.name.clone(), at, parent.port));
            }
        }
        parents
    }

    fn check_name(&mut self, name: &str, at: &P) -> bool {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = name.into_deserializer();
        match Name::deserialize(d) {
            Ok(_) => true,
            Err(e) => {
                self.error(at, e.to_string());
                false
            }
        }
    }

    fn regex(&mut self, text: &str, at: &P) -> Option<Regex> {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = text.into_deserializer();
        match Regex::deserialize(d) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(at, e.to_string());
                None
            }
        }
    }

    /// Header or query parameter conditions.
    fn value_matches(
        &mut self,
        list: &[NameValueMatch],
        at: &P,
        headers: bool,
    ) -> Option<BTreeMap<String, ValueMatch>> {
        let before = self.errors.len();
        let mut map = BTreeMap::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, m) in list.iter().enumerate() {
            let at = at.i(i);
            if headers && !is_token(&m.name) {
                self.error(&at.k("name"), format!("`{}` is not a valid header name", m.name));
            } else if m.name.is_empty() {
                self.error(&at.k("name"), "must not be empty");
            }
            let key = if headers { m.name.to_ascii_lowercase() } else { m.name.clone() };
            if let Some(first) = seen.insert(key, i) {
                let what = if headers { "header" } else { "query parameter" };
                self.error(
                    &at.k("name"),
                    format!("{what} `{}` is already matched by entry {first}; list it once", m.name),
                );
            }
            let value = match m.kind {
                MatchType::Exact => ValueMatch::Exact(m.value.clone()),
                MatchType::RegularExpression => match self.regex(&m.value, &at.k("value")) {
                    Some(r) => ValueMatch::Match(StringMatch::Regex(r)),
                    None => continue,
                },
            };
            map.insert(m.name.clone(), value);
        }
        (self.errors.len() == before).then_some(map)
    }

    /// A rule's filters and backends.
    fn actions(&mut self, filters: &[Filter], backends: &[BackendRef], rule: &P) -> Option<Actions> {
        let before = self.errors.len();
        let mut a = Actions::default();
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        let (mut redirect_at, mut rewrite_at, mut mirror_at) = (None, None, None);
        for (i, filter) in filters.iter().enumerate() {
            let at = rule.k("filters").i(i);
            let Some(kind) = self.filter_kind(filter, &at) else { continue };
            if let Some(first) = seen.insert(kind, i) {
                let message = if kind == "RequestMirror" {
                    format!(
                        "a second `RequestMirror` filter is not supported: Trellis mirrors a route to one \
                         destination (see filters[{first}])"
                    )
                } else {
                    format!("`{kind}` is already set by filters[{first}]; each filter type may appear once in a rule")
                };
                self.error(&at.k("type"), message);
                continue;
            }
            match kind {
                "RequestHeaderModifier" => {
                    a.request_headers = filter
                        .request_header_modifier
                        .as_ref()
                        .map(|m| self.header_modifier(m, &at.k("requestHeaderModifier")));
                }
                "ResponseHeaderModifier" => {
                    a.response_headers = filter
                        .response_header_modifier
                        .as_ref()
                        .map(|m| self.header_modifier(m, &at.k("responseHeaderModifier")));
                }
                "RequestRedirect" => {
                    if let Some(r) = &filter.request_redirect {
                        a.redirect = Some(self.redirect(r, &at.k("requestRedirect")));
                    }
                    redirect_at = Some(at);
                }
                "URLRewrite" => {
                    if let Some(r) = &filter.url_rewrite {
                        a.authority = r.hostname.clone();
                        if let Some(hostname) = &r.hostname {
                            self.hostname(hostname, &at.k("urlRewrite").k("hostname"));
                        }
                        if let Some(path) = &r.path {
                            let path_at = at.k("urlRewrite").k("path");
                            a.path_rewrite = self.path_modifier(path, &path_at);
                            a.path_rewrite_at = Some(path_at);
                        }
                    }
                    rewrite_at = Some(at);
                }
                _ => {
                    if let Some(m) = &filter.request_mirror {
                        a.mirror = self.mirror(m, &at.k("requestMirror"));
                    }
                    mirror_at = Some(at);
                }
            }
        }
        if let Some(redirect_at) = &redirect_at {
            if let Some(at) = &rewrite_at {
                self.error(&at.k("type"), "`URLRewrite` cannot be combined with `RequestRedirect` in one rule");
            }
            if let Some(at) = &mirror_at {
                self.error(
                    &at.k("type"),
                    "`RequestMirror` cannot be combined with `RequestRedirect`: a redirect answers the request itself",
                );
            }
            if !backends.is_empty() {
                self.error(
                    &rule.k("backendRefs"),
                    format!(
                        "a rule with a `RequestRedirect` filter (filters[{}]) answers requests itself; remove its \
                         `backendRefs`",
                        redirect_at.0.last().map(Seg::index).unwrap_or(0)
                    ),
                );
            }
        } else {
            match self.backends(backends, &rule.k("backendRefs")) {
                Some(Some(to)) => a.to = to,
                Some(None) => {
                    a.no_backend = true;
                    if let Some(at) = &mirror_at {
                        self.error(
                            &at.k("type"),
                            "this rule has no backend (no `backendRefs`, or all weights 0), so it answers 500 and \
                             cannot mirror; add a backendRef",
                        );
                    }
                }
                None => {}
            }
        }
        (self.errors.len() == before).then_some(a)
    }

    /// Checks a filter's `type` and that only the field it names is set.
    fn filter_kind(&mut self, filter: &Filter, at: &P) -> Option<&'static str> {
        let supported = self.kind.filter_types();
        let Some(&kind) = supported.iter().find(|k| **k == filter.kind) else {
            let list = supported.join(", ");
            let message = if KNOWN_FILTERS.contains(&filter.kind.as_str()) {
                format!(
                    "`{}` filters are not supported; supported filter types for {}: {list}",
                    filter.kind,
                    self.kind.name()
                )
            } else {
                format!(
                    "unknown filter type `{}`; supported filter types for {}: {list}",
                    filter.kind,
                    self.kind.name()
                )
            };
            self.error(&at.k("type"), message);
            return None;
        };
        let wanted = filter_field(kind);
        let fields = filter.fields();
        let before = self.errors.len();
        if !fields.contains(&wanted) {
            self.error(at, format!("a `{kind}` filter needs its `{wanted}` field"));
        }
        for other in fields.into_iter().filter(|f| *f != wanted) {
            self.error(&at.k(other), format!("does not belong in a `{kind}` filter; set only `{wanted}`"));
        }
        (self.errors.len() == before).then_some(kind)
    }

    fn header_modifier(&mut self, m: &HeaderModifier, at: &P) -> HeaderRewrite {
        let mut rewrite = HeaderRewrite::default();
        for (list, name, target) in [(&m.set, "set", &mut rewrite.set), (&m.add, "add", &mut rewrite.add)] {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for (i, h) in list.iter().enumerate() {
                let at = at.k(name).i(i);
                if !is_token(&h.name) {
                    self.error(&at.k("name"), format!("`{}` is not a valid header name", h.name));
                }
                if h.value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    self.error(
                        &at.k("value"),
                        format!("`{}` is not a valid header value (control characters)", h.value),
                    );
                }
                if let Some(first) = seen.insert(h.name.to_ascii_lowercase(), i) {
                    self.error(
                        &at.k("name"),
                        format!("header `{}` is already listed in {name}[{first}]; list it once", h.name),
                    );
                }
                target.insert(h.name.clone(), h.value.clone());
            }
        }
        for (i, name) in m.remove.iter().enumerate() {
            if !is_token(name) {
                self.error(&at.k("remove").i(i), format!("`{name}` is not a valid header name"));
            }
        }
        rewrite.remove = m.remove.clone();
        rewrite
    }

    fn hostname(&mut self, hostname: &str, at: &P) {
        let valid = !hostname.is_empty()
            && hostname.len() <= 253
            && hostname.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            self.error(at, format!("`{hostname}` is not a valid hostname; use lowercase letters, digits, `-` and `.`"));
        }
    }

    fn path_modifier(&mut self, m: &PathModifier, at: &P) -> Option<(PathModifierType, String)> {
        let (wanted, other, value) = match m.kind {
            PathModifierType::ReplaceFullPath => {
                ("replaceFullPath", m.replace_prefix_match.is_some(), &m.replace_full_path)
            }
            PathModifierType::ReplacePrefixMatch => {
                ("replacePrefixMatch", m.replace_full_path.is_some(), &m.replace_prefix_match)
            }
        };
        let kind = if m.kind == PathModifierType::ReplaceFullPath { "ReplaceFullPath" } else { "ReplacePrefixMatch" };
        if other {
            let unwanted = if wanted == "replaceFullPath" { "replacePrefixMatch" } else { "replaceFullPath" };
            self.error(&at.k(unwanted), format!("does not belong with `type: {kind}`; set only `{wanted}`"));
            return None;
        }
        let Some(value) = value else {
            self.error(at, format!("`type: {kind}` needs `{wanted}`"));
            return None;
        };
        let empty_prefix = value.is_empty() && m.kind == PathModifierType::ReplacePrefixMatch; // `/a/b` → `/b`
        if !value.starts_with('/') && !empty_prefix {
            self.error(&at.k(wanted), format!("`{value}` must start with `/`"));
            return None;
        }
        Some((m.kind, value.clone()))
    }

    fn redirect(&mut self, r: &RequestRedirect, at: &P) -> Redirect {
        if let Some(scheme) = &r.scheme
            && scheme != "http"
            && scheme != "https"
        {
            self.error(&at.k("scheme"), format!("`{scheme}` is not valid; use http or https"));
        }
        if let Some(hostname) = &r.hostname {
            self.hostname(hostname, &at.k("hostname"));
        }
        if r.port == Some(0) {
            self.error(&at.k("port"), "0 is not a valid port; use 1..=65535");
        }
        let status = r.status_code.unwrap_or(302);
        if ![301, 302, 303, 307, 308].contains(&status) {
            self.error(
                &at.k("statusCode"),
                format!("{status} is not a redirect status; use 301, 302, 303, 307 or 308"),
            );
        }
        let path = match &r.path {
            Some(m) if m.kind == PathModifierType::ReplacePrefixMatch => {
                self.error(
                    &at.k("path").k("type"),
                    "`ReplacePrefixMatch` is not supported in a redirect; supported: ReplaceFullPath",
                );
                None
            }
            Some(m) => self.path_modifier(m, &at.k("path")).map(|(_, path)| path),
            None => None,
        };
        Redirect { scheme: r.scheme.clone(), host: r.hostname.clone(), port: r.port, path, status }
    }

    fn mirror(&mut self, m: &RequestMirror, at: &P) -> Option<Mirror> {
        let service = self.backend(&m.backend_ref, &at.k("backendRef"));
        let percent = match (m.percent, &m.fraction) {
            (Some(_), Some(_)) => {
                self.error(at, "set either `percent` or `fraction`, not both");
                return None;
            }
            (Some(p), None) if p > 100 => {
                self.error(&at.k("percent"), format!("{p} is out of range 0..=100"));
                return None;
            }
            (Some(p), None) => Ratio(f64::from(p) / 100.0),
            (None, Some(f)) if f.denominator == 0 => {
                self.error(&at.k("fraction").k("denominator"), "must be at least 1");
                return None;
            }
            (None, Some(f)) if f.numerator > f.denominator => {
                self.error(&at.k("fraction"), format!("{}/{} is more than 1", f.numerator, f.denominator));
                return None;
            }
            (None, Some(f)) => Ratio(f64::from(f.numerator) / f64::from(f.denominator)),
            (None, None) => Ratio(1.0),
        };
        Some(Mirror { service: Some(service?), subset: None, percent })
    }

    /// A backend: a Service, named `NAME.NAMESPACE`.
    fn backend(&mut self, r: &ObjectRef, at: &P) -> Option<String> {
        let before = self.errors.len();
        if let Some(group) = &r.group
            && !group.is_empty()
            && group != "core"
        {
            self.error(
                &at.k("group"),
                format!("a backend in group `{group}` is not supported; backends are Services (`group: \"\"`)"),
            );
        }
        if let Some(kind) = &r.kind
            && kind != "Service"
        {
            self.error(
                &at.k("kind"),
                format!("a `{kind}` backend is not supported; backends are Services (`kind: Service`)"),
            );
        }
        self.check_name(&r.name, &at.k("name"));
        let namespace = r.namespace.clone().unwrap_or_else(|| self.namespace.clone());
        if r.namespace.is_some() {
            self.check_name(&namespace, &at.k("namespace"));
        }
        if r.port == Some(0) {
            self.error(&at.k("port"), "0 is not a valid port; use 1..=65535");
        }
        (self.errors.len() == before).then(|| format!("{}.{namespace}", r.name))
    }

    /// The destinations, with weights as percentages; `Some(None)` when there is no backend to
    /// send to (none listed, or all weights 0).
    fn backends(&mut self, refs: &[BackendRef], at: &P) -> Option<Option<Vec<Destination>>> {
        let before = self.errors.len();
        let mut services = Vec::new();
        let mut weights = Vec::new();
        for (j, r) in refs.iter().enumerate() {
            let at = at.i(j);
            if !r.filters.is_empty() {
                self.error(
                    &at.k("filters"),
                    "filters on a backendRef are not supported; put them in the rule's `filters` (they apply to \
                     every backend of the rule)",
                );
            }
            let weight = r.weight.unwrap_or(1);
            if weight > 1_000_000 {
                self.error(&at.k("weight"), format!("{weight} is out of range 0..=1000000"));
            }
            if let Some(service) = self.backend(&r.object(), &at) {
                services.push(service);
                weights.push(u64::from(weight));
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(percentages(&weights).map(|shares| {
            services
                .into_iter()
                .zip(shares)
                .map(|(service, share)| Destination { service: Some(service), subset: None, weight: Percent(share) })
                .collect()
        }))
    }

    fn timeout(&mut self, t: &Timeouts, at: &P) -> Option<Duration> {
        let timeout = match t.request.as_deref().map(gateway_duration) {
            None => None,
            Some(Ok(d)) if d.is_zero() => None, // `0s` disables the timeout
            Some(Ok(d)) => Some(Duration(d)),
            Some(Err(message)) => {
                self.error(&at.k("request"), message);
                None
            }
        };
        if t.backend_request.is_some() {
            self.error(
                &at.k("backendRequest"),
                "`backendRequest` is not supported (Trellis has no per-attempt timeout without retries); use `request`",
            );
        }
        timeout
    }

    /// Emits the route(s) for one match entry.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        out: &mut Vec<Keyed>,
        (rule, matched): (usize, usize),
        matches: RouteMatch,
        precedence: [usize; 5],
        prefix: Option<&str>,
        actions: &Actions,
        timeout: Option<Duration>,
    ) {
        let name = format!("{}-{rule}-{matched}", self.name);
        let route = Route {
            name: Some(name.clone()),
            matches,
            to: actions.to.clone(),
            timeout,
            retries: None,
            request_headers: actions.request_headers.clone().map(Box::new),
            response_headers: actions.response_headers.clone().map(Box::new),
            rewrite: None,
            redirect: actions.redirect.clone().map(Box::new),
            direct_response: actions
                .no_backend
                .then(|| Box::new(DirectResponse { status: 500, body: String::new(), headers: BTreeMap::new() })),
            mirror: actions.mirror.clone().map(Box::new),
        };
        let rewrite = |path: Option<String>, prefix: Option<String>| {
            (path.is_some() || prefix.is_some() || actions.authority.is_some())
                .then(|| Box::new(Rewrite { path, prefix, authority: actions.authority.clone() }))
        };
        let mut push = |route: Route| out.push(Keyed { precedence, rule, matched, route });
        match (&actions.path_rewrite, prefix) {
            (Some((PathModifierType::ReplacePrefixMatch, replacement)), Some(prefix)) => {
                // `/a` → `/x` on `/a/b` gives `/x/b`; a trailing `/` on either side is ignored.
                let with_slash = format!("{}/", replacement.trim_end_matches('/'));
                if prefix.is_empty() {
                    let mut root = route;
                    root.matches.path = Some(StringMatch::Prefix("/".into()));
                    root.rewrite = rewrite(None, Some(with_slash));
                    push(root);
                } else {
                    let mut exact = route.clone();
                    exact.matches.path = Some(StringMatch::Exact(prefix.to_string()));
                    let whole = if replacement.is_empty() { "/".to_string() } else { replacement.clone() };
                    exact.rewrite = rewrite(Some(whole), None);
                    push(exact);
                    let mut below = route;
                    below.name = Some(format!("{name}-prefix"));
                    below.matches.path = Some(StringMatch::Prefix(format!("{prefix}/")));
                    below.rewrite = rewrite(None, Some(with_slash));
                    push(below);
                }
            }
            (Some((_, path)), _) => {
                let mut route = route;
                route.rewrite = rewrite(Some(path.clone()), None);
                push(route);
            }
            (None, _) => {
                let mut route = route;
                route.rewrite = rewrite(None, None);
                push(route);
            }
        }
    }

    /// An HTTPRoute match: the Trellis match, its precedence, and for a PathPrefix its value
    /// without trailing `/` (empty for `/`).
    fn http_match(&mut self, m: &HttpMatch, at: &P) -> Option<(RouteMatch, [usize; 5], Option<String>)> {
        let before = self.errors.len();
        let mut out = RouteMatch::default();
        let mut prefix = None;
        let (class, length) = match &m.path {
            None => {
                prefix = Some(String::new());
                (2, 0)
            }
            Some(path) => {
                let value_at = at.k("path").k("value");
                let value = &path.value;
                if path.kind != PathType::RegularExpression && !value.starts_with('/') {
                    self.error(&value_at, format!("`{value}` must start with `/`"));
                }
                match path.kind {
                    PathType::Exact => {
                        out.path = Some(StringMatch::Exact(value.clone()));
                        (0, value.len())
                    }
                    PathType::RegularExpression => {
                        out.path = self.regex(value, &value_at).map(StringMatch::Regex);
                        (1, value.len())
                    }
                    PathType::PathPrefix => {
                        // Whole segments: `/api` matches `/api` and `/api/x` but not `/apix`.
                        let trimmed = value.trim_end_matches('/');
                        if !trimmed.is_empty() {
                            out.path = Some(StringMatch::Regex(Regex(format!("{}(?:/.*)?", regex::escape(trimmed)))));
                        }
                        prefix = Some(trimmed.to_string());
                        (2, trimmed.len())
                    }
                }
            }
        };
        out.headers = self.value_matches(&m.headers, &at.k("headers"), true).unwrap_or_default();
        out.query = self.value_matches(&m.query_params, &at.k("queryParams"), false).unwrap_or_default();
        out.method = m.method.map(|method| method.as_str().to_string());
        let precedence = [
            class,
            usize::MAX - length,
            usize::from(out.method.is_none()),
            usize::MAX - out.headers.len(),
            usize::MAX - out.query.len(),
        ];
        (self.errors.len() == before).then_some((out, precedence, prefix))
    }

    /// A GRPCRoute match and its precedence.
    fn grpc_match(&mut self, m: &GrpcMatch, at: &P) -> Option<(RouteMatch, [usize; 5])> {
        let before = self.errors.len();
        let mut out = RouteMatch::default();
        let (mut service_length, mut method_length) = (0, 0);
        if let Some(mm) = &m.method {
            let at = at.k("method");
            let service = mm.service.as_deref().filter(|s| !s.is_empty());
            let method = mm.method.as_deref().filter(|s| !s.is_empty());
            service_length = service.map_or(0, str::len);
            method_length = method.map_or(0, str::len);
            match mm.kind {
                MatchType::Exact => {
                    if let Some(s) = service
                        && !is_grpc_service(s)
                    {
                        self.error(
                            &at.k("service"),
                            format!("`{s}` is not a valid gRPC service name, e.g. `helloworld.Greeter`"),
                        );
                    }
                    if let Some(m) = method
                        && !is_grpc_identifier(m)
                    {
                        self.error(&at.k("method"), format!("`{m}` is not a valid gRPC method name, e.g. `SayHello`"));
                    }
                    out.path = match (service, method) {
                        (Some(s), Some(m)) => Some(StringMatch::Exact(format!("/{s}/{m}"))),
                        (Some(s), None) => Some(StringMatch::Prefix(format!("/{s}/"))),
                        (None, Some(m)) => Some(StringMatch::Regex(Regex(format!("/[^/]+/{}", regex::escape(m))))),
                        (None, None) => None,
                    };
                }
                MatchType::RegularExpression => {
                    let s = service.map(|s| self.regex(s, &at.k("service")));
                    let m = method.map(|m| self.regex(m, &at.k("method")));
                    let part = |r: Option<Option<Regex>>| r.flatten().map_or_else(|| "[^/]+".to_string(), |r| r.0);
                    out.path = Some(StringMatch::Regex(Regex(format!("/(?:{})/(?:{})", part(s), part(m)))));
                }
            }
            if service.is_none() && method.is_none() {
                self.error(&at, "set `service`, `method` or both");
            }
        }
        out.headers = self.value_matches(&m.headers, &at.k("headers"), true).unwrap_or_default();
        let precedence =
            [0, usize::MAX - service_length, usize::MAX - method_length, usize::MAX - out.headers.len(), 0];
        (self.errors.len() == before).then_some((out, precedence))
    }
}

impl Rule for HttpRule {
    fn translate(&self, tx: &mut Tx, at: &P, rule: usize, out: &mut Vec<Keyed>) {
        if self.retry.is_some() {
            tx.error(
                &at.k("retry"),
                "`retry` is not supported on an HTTPRoute; declare the route in a `kind: Service` document to use \
                 `retries`",
            );
        }
        if self.session_persistence.is_some() {
            tx.error(&at.k("sessionPersistence"), SESSION_PERSISTENCE);
        }
        let timeout = self.timeouts.as_ref().and_then(|t| tx.timeout(t, &at.k("timeouts")));
        // Matches come first in the document, but the filters decide how they translate; an
        // error in either still lets the other be checked.
        let actions = tx.actions(&self.filters, &self.backend_refs, at);
        let default = [HttpMatch::default()];
        let listed = !self.matches.is_empty();
        let matches = if listed { &self.matches[..] } else { &default[..] };
        if let Some(Actions {
            path_rewrite: Some((PathModifierType::ReplacePrefixMatch, _)),
            path_rewrite_at: Some(path_at),
            ..
        }) = &actions
        {
            let one_prefix =
                matches.len() == 1 && matches[0].path.as_ref().is_none_or(|p| p.kind == PathType::PathPrefix);
            if !one_prefix {
                tx.error(
                    &path_at.k("type"),
                    "`ReplacePrefixMatch` needs the rule to have exactly one match, with a `PathPrefix` path",
                );
                return;
            }
        }
        for (m, entry) in matches.iter().enumerate() {
            let match_at = if listed { at.k("matches").i(m) } else { at.clone() };
            if let (Some((route_match, precedence, prefix)), Some(actions)) =
                (tx.http_match(entry, &match_at), &actions)
            {
                tx.emit(out, (rule, m), route_match, precedence, prefix.as_deref(), actions, timeout);
            }
        }
    }
}

impl Rule for GrpcRule {
    fn translate(&self, tx: &mut Tx, at: &P, rule: usize, out: &mut Vec<Keyed>) {
        if self.session_persistence.is_some() {
            tx.error(&at.k("sessionPersistence"), SESSION_PERSISTENCE);
        }
        let actions = tx.actions(&self.filters, &self.backend_refs, at);
        let default = [GrpcMatch::default()];
        let listed = !self.matches.is_empty();
        let matches = if listed { &self.matches[..] } else { &default[..] };
        for (m, entry) in matches.iter().enumerate() {
            let match_at = if listed { at.k("matches").i(m) } else { at.clone() };
            if let (Some((route_match, precedence)), Some(actions)) = (tx.grpc_match(entry, &match_at), &actions) {
                tx.emit(out, (rule, m), route_match, precedence, None, actions, None);
            }
        }
    }
}

const SESSION_PERSISTENCE: &str = "`sessionPersistence` is not supported; for affinity declare a `kind: Service` \
                                   with `loadBalancer: {algorithm: ring-hash, hashOn: {cookie: NAME}}`";

/// Relative weights as whole percentages adding up to exactly 100: each gets its share rounded
/// down, and the points left go to the largest remainders (earlier first on ties). `None` when
/// all weights are 0.
fn percentages(weights: &[u64]) -> Option<Vec<u32>> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return None;
    }
    let mut shares: Vec<u32> = weights.iter().map(|w| (w * 100 / total) as u32).collect();
    let mut left = 100 - shares.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i] * 100 % total));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    Some(shares)
}

/// A Gateway API duration (GEP-2257): 1 to 4 parts, each 1 to 5 digits and a unit `h`, `m`,
/// `s` or `ms`, e.g. `10s`, `500ms`, `1h30m`.
fn gateway_duration(text: &str) -> Result<std::time::Duration, String> {
    let wrong = || {
        format!(
            "`{text}` is not a Gateway API duration; write 1 to 4 parts of up to 5 digits and a unit (h, m, s, ms), \
             e.g. `10s`, `500ms` or `1h30m`"
        )
    };
    let (mut rest, mut parts, mut millis) = (text, 0, 0u64);
    if rest.is_empty() {
        return Err(wrong());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(wrong());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| wrong())?;
        rest = &rest[digits..];
        let (unit, length) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(wrong());
        };
        rest = &rest[length..];
        millis += number * unit;
        parts += 1;
        if parts > 4 {
            return Err(wrong());
        }
    }
    if millis > 365 * 24 * 3_600_000 {
        return Err(format!("`{text}` is out of range (at most one year)"));
    }
    Ok(std::time::Duration::from_millis(millis))
}

fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_grpc_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `pkg.Service`: dot-separated identifiers, optionally with a leading dot.
fn is_grpc_service(s: &str) -> bool {
    s.strip_prefix('.').unwrap_or(s).split('.').all(is_grpc_identifier)
}

// ---------------------------------------------------------------------------------------------
// Positions of translation errors: the document is read again, up to the field in question.

/// A field path inside a document, printed like serde_path_to_error's: `spec.rules[0].type`.
#[derive(Clone, Debug, Default)]
struct P(Vec<Seg>);

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    fn index(&self) -> usize {
        match self {
            Seg::Index(i) => *i,
            Seg::Key(_) => 0,
        }
    }
}

impl P {
    fn key(key: &str) -> P {
        P(vec![Seg::Key(key.to_string())])
    }
    fn k(&self, key: &str) -> P {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }
    fn i(&self, index: usize) -> P {
        let mut p = self.clone();
        p.0.push(Seg::Index(index));
        p
    }
}

impl fmt::Display for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

const FOUND: &str = "\u{1}trellis: found";

/// The line and column of the field at `path` in document `index` of `text`, or of its nearest
/// ancestor that is written out (a defaulted field has no position of its own). `None` once
/// [`MAX_LOCATED`] errors have been located.
fn locate(text: &str, index: usize, path: &P, located: &Cell<usize>) -> Option<(usize, usize)> {
    if located.get() >= MAX_LOCATED {
        return None;
    }
    located.set(located.get() + 1);
    let document = serde_yaml_ng::Deserializer::from_str(text).nth(index)?;
    match serde::de::DeserializeSeed::deserialize(Find(&path.0), document) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// Walks a document down `path` and fails with [`FOUND`] at the node it names, or at the
/// deepest node on the way that exists, so that the YAML deserializer stamps the error with
/// that node's position.
struct Find<'p>(&'p [Seg]);

impl<'de> serde::de::DeserializeSeed<'de> for Find<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

fn found<E: serde::de::Error>() -> E {
    E::custom(FOUND)
}

impl<'de> serde::de::Visitor<'de> for Find<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some((Seg::Key(key), rest)) = self.0.split_first() {
            while let Some(k) = map.next_key::<serde_yaml_ng::Value>()? {
                if k.as_str() == Some(key.as_str()) {
                    return map.next_value_seed(Find(rest));
                }
                map.next_value::<IgnoredAny>()?;
            }
        }
        Err(found())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some((Seg::Index(index), rest)) = self.0.split_first() {
            for _ in 0..*index {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Err(found());
                }
            }
            if seq.next_element_seed(Find(rest))?.is_some() {
                return Ok(()); // not reached: `Find` always fails
            }
        }
        Err(found())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Err(found())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Err(found())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Err(found())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(found())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Err(found())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(found())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Err(found())
    }
}

#[cfg(test)]
#[path = "gateway_api_tests.rs"]
mod tests;
