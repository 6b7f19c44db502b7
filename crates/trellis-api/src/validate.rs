//! Checks that span fields or documents: references, weights, shadowed routes, duplicates.
//!
//! Per-field range checks happen while parsing (see `service.rs`); what is here needs the
//! whole configuration. Errors point at the document's first line and the field path.

use crate::{ConfigError, ConfigErrors, Resource, Route, Service, StringMatch};
use std::collections::{BTreeMap, BTreeSet};

/// Validates a set of parsed resources as one configuration.
pub fn validate(resources: &[Resource], file: &str) -> Result<(), ConfigErrors> {
    validate_located(resources, file, &[], &[])
}

/// As [`validate`], with the line where each resource's document starts, for the errors,
/// and `context`: resources that already exist (e.g. in the control plane's store), which
/// references may name but which are not themselves checked.
pub(crate) fn validate_located(
    resources: &[Resource],
    file: &str,
    lines: &[usize],
    context: &[Resource],
) -> Result<(), ConfigErrors> {
    let mut v = Validator { file, errors: Vec::new(), doc: String::new(), line: 0 };
    // The new documents replace context documents of the same name.
    let services: BTreeMap<(String, String), &Service> = context
        .iter()
        .chain(resources.iter())
        .filter_map(|r| match r {
            Resource::Service(s) => Some(((s.namespace.clone(), s.name.0.clone()), &**s)),
            _ => None,
        })
        .collect();
    // Which tenant each namespace belongs to; new Tenant documents replace stored ones.
    let replaced: BTreeSet<String> = resources.iter().map(Resource::key).collect();
    let mut tenant_of: BTreeMap<String, String> = BTreeMap::new();
    for r in context.iter().filter(|r| !replaced.contains(&r.key())) {
        if let Resource::Tenant(t) = r {
            for ns in &t.namespaces {
                tenant_of.insert(ns.clone(), t.name.0.clone());
            }
        }
    }
    // One Telemetry document per namespace, so which one applies is never a question.
    let mut telemetry_of: BTreeMap<String, String> = context
        .iter()
        .filter(|r| !replaced.contains(&r.key()))
        .filter_map(|r| match r {
            Resource::Telemetry(t) => Some((t.namespace.clone(), t.name.0.clone())),
            _ => None,
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut proxies = 0;
    for (index, resource) in resources.iter().enumerate() {
        v.doc = resource.key();
        v.line = lines.get(index).copied().unwrap_or(0);
        if !seen.insert(resource.key()) {
            v.error("", format!("duplicate {}: each may be defined once", resource.key()));
        }
        match resource {
            Resource::Service(service) => v.service(service, &services),
            Resource::Endpoints(_) => {}
            Resource::Policy(policy) => v.policy(policy),
            Resource::Tenant(tenant) => {
                if tenant.namespaces.is_empty() {
                    v.error("namespaces", "lists no namespace; a tenant groups at least one".into());
                }
                for (i, ns) in tenant.namespaces.iter().enumerate() {
                    if let Some(other) = tenant_of.insert(ns.clone(), tenant.name.0.clone())
                        && other != tenant.name.0
                    {
                        v.error(
                            &format!("namespaces[{i}]"),
                            format!("namespace `{ns}` already belongs to tenant `{other}`; a namespace has one tenant"),
                        );
                    }
                }
            }
            Resource::Telemetry(telemetry) => {
                if let Some(other) = telemetry_of.insert(telemetry.namespace.clone(), telemetry.name.0.clone())
                    && other != telemetry.name.0
                {
                    v.error(
                        "",
                        format!(
                            "namespace `{}` already has Telemetry `{other}`; a namespace has one (edit that one, or delete it first)",
                            telemetry.namespace
                        ),
                    );
                }
            }
            Resource::Proxy(proxy) => {
                proxies += 1;
                if proxies > 1 {
                    v.error("", "more than one `kind: Proxy` document; a proxy has one".into());
                }
                // With a control plane, services arrive later by push.
                let listeners = if proxy.control.is_some() { &[][..] } else { &proxy.explicit[..] };
                for (i, listener) in listeners.iter().enumerate() {
                    let known = resolve(&listener.service, "default", &services).is_some()
                        || resources.iter().chain(context.iter()).any(|r| matches!(r, Resource::Endpoints(e) if names(&listener.service, &e.namespace, &e.service)));
                    if !known {
                        v.error(&format!("explicit[{i}].service"), format!("unknown service `{}`", listener.service));
                    }
                }
            }
        }
    }
    if v.errors.is_empty() { Ok(()) } else { Err(ConfigErrors(v.errors)) }
}

/// Finds a service by `NAME` or `NAME.NAMESPACE`, relative to `namespace`.
fn resolve<'a>(
    reference: &str,
    namespace: &str,
    services: &BTreeMap<(String, String), &'a Service>,
) -> Option<&'a Service> {
    let (name, ns) = split_reference(reference, namespace);
    services.get(&(ns.to_string(), name.to_string())).copied()
}

fn split_reference<'a>(reference: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    match reference.split_once('.') {
        Some((name, ns)) => (name, ns),
        None => (reference, namespace),
    }
}

fn names(reference: &str, namespace: &str, name: &str) -> bool {
    let (n, ns) = split_reference(reference, "default");
    n == name && ns == namespace
}

struct Validator<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
    doc: String,
    line: usize,
}

impl Validator<'_> {
    fn error(&mut self, path: &str, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: self.line,
            column: if self.line > 0 { 1 } else { 0 },
            path: if path.is_empty() { self.doc.clone() } else { format!("{} {path}", self.doc) },
            message,
        });
    }

    fn service(&mut self, service: &Service, services: &BTreeMap<(String, String), &Service>) {
        let mut ports = BTreeSet::new();
        for (i, port) in service.ports.iter().enumerate() {
            if port.port == 0 {
                self.error(&format!("ports[{i}].port"), "0 is not a valid port; use 1..=65535".into());
            }
            if !ports.insert(port.port) {
                self.error(&format!("ports[{i}].port"), format!("port {} is listed twice", port.port));
            }
        }
        let mut route_names = BTreeSet::new();
        for (i, route) in service.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if let Some(name) = &route.name
                && !route_names.insert(name.clone())
            {
                self.error(&format!("{at}.name"), format!("duplicate route name `{name}`"));
            }
            self.route(service, route, &at, services);
            if let Some(earlier) = service.routes[..i].iter().position(|r| shadows(r, route)) {
                self.error(&at, format!("never matches: routes[{earlier}] matches every request it would; put the more specific route first"));
            }
        }
    }

    fn route(&mut self, service: &Service, route: &Route, at: &str, services: &BTreeMap<(String, String), &Service>) {
        let terminal = route.redirect.is_some() as u8 + route.direct_response.is_some() as u8;
        if terminal > 1 {
            self.error(at, "`redirect` and `directResponse` cannot both be set".into());
        }
        if terminal > 0 && (!route.to.is_empty() || route.mirror.is_some() || route.retries.is_some()) {
            self.error(at, "a route that answers itself (`redirect` or `directResponse`) cannot also have `to`, `mirror` or `retries`".into());
        }
        if let Some(r) = &route.redirect {
            if ![301, 302, 303, 307, 308].contains(&r.status) {
                self.error(
                    &format!("{at}.redirect.status"),
                    format!("{} is not a redirect status; use 301, 302, 303, 307 or 308", r.status),
                );
            }
            if let Some(scheme) = &r.scheme
                && scheme != "http"
                && scheme != "https"
            {
                self.error(&format!("{at}.redirect.scheme"), format!("`{scheme}` is not valid; use http or https"));
            }
        }
        if let Some(d) = &route.direct_response {
            if !(200..=599).contains(&d.status) {
                self.error(&format!("{at}.directResponse.status"), format!("{} is out of range 200..=599", d.status));
            }
            for name in d.headers.keys() {
                self.header_name(&format!("{at}.directResponse.headers"), name);
            }
        }
        if !route.to.is_empty() {
            let total: u32 = route.to.iter().map(|d| d.weight.0).sum();
            if route.to.len() > 1 && total != 100 {
                let listed: Vec<String> = route.to.iter().map(|d| d.weight.0.to_string()).collect();
                self.error(
                    &format!("{at}.to"),
                    format!("weights add up to {total} ({}); they must add up to 100", listed.join(" + ")),
                );
            }
            if route.to.len() == 1 && total == 0 {
                self.error(
                    &format!("{at}.to[0].weight"),
                    "the only destination has weight 0, so nothing would be sent".into(),
                );
            }
        }
        for (j, dest) in route.to.iter().enumerate() {
            self.destination(
                service,
                dest.service.as_deref(),
                dest.subset.as_deref(),
                &format!("{at}.to[{j}]"),
                services,
            );
        }
        if let Some(m) = &route.mirror {
            self.destination(service, m.service.as_deref(), m.subset.as_deref(), &format!("{at}.mirror"), services);
        }
        if let Some(rw) = &route.rewrite {
            if rw.prefix.is_some() && !matches!(route.matches.path, Some(StringMatch::Prefix(_))) {
                self.error(
                    &format!("{at}.rewrite.prefix"),
                    "needs a `match.path.prefix` to replace; use `rewrite.path` to replace the whole path".into(),
                );
            }
            if rw.prefix.is_some() && rw.path.is_some() {
                self.error(&format!("{at}.rewrite"), "set either `path` or `prefix`, not both".into());
            }
            for p in rw.path.iter().chain(rw.prefix.iter()) {
                if !p.starts_with('/') {
                    self.error(&format!("{at}.rewrite"), format!("`{p}` must start with `/`"));
                }
            }
        }
        for (side, rw) in [("requestHeaders", &route.request_headers), ("responseHeaders", &route.response_headers)] {
            if let Some(rw) = rw {
                for name in rw.set.keys().chain(rw.add.keys()).chain(rw.remove.iter()) {
                    self.header_name(&format!("{at}.{side}"), name);
                }
                for value in rw.set.values().chain(rw.add.values()) {
                    if http_value_invalid(value) {
                        self.error(
                            &format!("{at}.{side}"),
                            format!("`{value}` is not a valid header value (control characters)"),
                        );
                    }
                }
            }
        }
        for name in route.matches.headers.keys() {
            self.header_name(&format!("{at}.match.headers"), name);
        }
        if let Some(StringMatch::Exact(p) | StringMatch::Prefix(p)) = &route.matches.path
            && !p.starts_with('/')
        {
            self.error(&format!("{at}.match.path"), format!("`{p}` must start with `/`"));
        }
    }

    fn destination(
        &mut self,
        service: &Service,
        other: Option<&str>,
        subset: Option<&str>,
        at: &str,
        services: &BTreeMap<(String, String), &Service>,
    ) {
        let target = match other {
            None => Some(service),
            Some(reference) => match resolve(reference, &service.namespace, services) {
                Some(s) => Some(s),
                None => {
                    // A service known only by its endpoints is fine; it has no subsets.
                    if subset.is_some() {
                        self.error(
                            &format!("{at}.service"),
                            format!(
                                "unknown service `{reference}`; declare it with `kind: Service` to use its subsets"
                            ),
                        );
                    }
                    None
                }
            },
        };
        if let (Some(target), Some(subset)) = (target, subset)
            && !target.subsets.contains_key(subset)
        {
            let known: Vec<&str> = target.subsets.keys().map(String::as_str).collect();
            let valid = if known.is_empty() {
                "it defines no subsets".to_string()
            } else {
                format!("defined subsets: {}", known.join(", "))
            };
            self.error(
                &format!("{at}.subset"),
                format!("unknown subset `{subset}` of service `{}`; {valid}", target.name),
            );
        }
    }

    fn policy(&mut self, policy: &crate::Policy) {
        let mut names = BTreeSet::new();
        for (i, rule) in policy.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if rule.name.is_empty() {
                self.error(&format!("{at}.name"), "must not be empty: denied callers are told the rule's name".into());
            }
            if !names.insert(rule.name.clone()) {
                self.error(&format!("{at}.name"), format!("duplicate rule name `{}`", rule.name));
            }
            if let Some(to) = &rule.to {
                for (j, port) in to.ports.iter().enumerate() {
                    if *port == 0 {
                        self.error(&format!("{at}.to.ports[{j}]"), "0 is not a valid port; use 1..=65535".into());
                    }
                }
                for (j, method) in to.methods.iter().enumerate() {
                    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                        self.error(
                            &format!("{at}.to.methods[{j}]"),
                            format!("`{method}` is not an HTTP method; write it in capitals, e.g. GET"),
                        );
                    }
                }
                for (j, path) in to.paths.iter().enumerate() {
                    if let StringMatch::Exact(p) | StringMatch::Prefix(p) = path
                        && !p.starts_with('/')
                    {
                        self.error(&format!("{at}.to.paths[{j}]"), format!("`{p}` must start with `/`"));
                    }
                }
                for name in to.headers.keys() {
                    self.header_name(&format!("{at}.to.headers"), name);
                }
            }
            if rule
                .from
                .as_ref()
                .is_some_and(|f| f.identities.is_empty() && f.namespaces.is_empty() && f.tenants.is_empty())
            {
                self.error(
                    &format!("{at}.from"),
                    "names no identity, namespace or tenant; omit `from` to match every caller".into(),
                );
            }
        }
        if let Some(external) = &policy.external {
            if external.name.is_empty() || !names.insert(external.name.clone()) {
                self.error(
                    "external.name",
                    format!("`{}` must be non-empty and differ from the rules' names", external.name),
                );
            }
            if external.timeout.get().is_zero() {
                self.error("external.timeout", "must be more than 0s".into());
            }
        }
        for (i, egress) in policy.egress.iter().enumerate() {
            if egress.name.is_empty() {
                self.error(
                    &format!("egress[{i}].name"),
                    "must not be empty: refused callers are told the rule's name".into(),
                );
            }
            if egress.tenants.is_empty() && egress.namespaces.is_empty() {
                self.error(&format!("egress[{i}]"), "names no tenant or namespace to allow".into());
            }
        }
        let sets_nothing = policy.rules.is_empty()
            && policy.mtls.is_none()
            && !policy.default_deny
            && policy.external.is_none()
            && policy.egress.is_empty();
        if sets_nothing {
            self.error("", "sets nothing: give `rules`, `mtls`, `defaultDeny`, `external` or `egress`".into());
        }
    }

    fn header_name(&mut self, at: &str, name: &str) {
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            self.error(at, format!("`{name}` is not a valid header name"));
        }
    }
}

fn http_value_invalid(value: &str) -> bool {
    value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// True when every request matching `later` also matches `earlier`.
fn shadows(earlier: &Route, later: &Route) -> bool {
    let (e, l) = (&earlier.matches, &later.matches);
    let path_covers = match (&e.path, &l.path) {
        (None, _) => true,
        (Some(StringMatch::Prefix(p)), Some(StringMatch::Prefix(q) | StringMatch::Exact(q))) => {
            q.starts_with(p.as_str())
        }
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    let authority_covers = e.authority.is_none() || e.authority == l.authority;
    let method_covers = e.method.is_none() || e.method == l.method;
    let headers_cover = e.headers.iter().all(|(k, v)| l.headers.get(k) == Some(v));
    let query_covers = e.query.iter().all(|(k, v)| l.query.get(k) == Some(v));
    path_covers && authority_covers && method_covers && headers_cover && query_covers
}
