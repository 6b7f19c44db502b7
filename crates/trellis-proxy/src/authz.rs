//! Authorization of inbound traffic: the `kind: Policy` documents that cover this proxy's
//! workload, compiled once per configuration.
//!
//! Evaluation, per request (or per connection for opaque TCP):
//! 1. A matching **deny** rule refuses — deny wins over allow.
//! 2. A matching **allow** rule admits.
//! 3. Otherwise, if any covering policy sets `defaultDeny`, the request is refused by the
//!    rule `default-deny`; else it is admitted.
//!
//! A refusal from a policy in `audit` mode is logged and counted as `audit-deny` but the
//! request goes through. A rule with a `from` never matches a plaintext caller (it has no
//! identity); rules with HTTP conditions (methods, paths, headers) never match opaque TCP.
//! The mTLS mode is the service policy's if it sets one, else the namespace policy's, else
//! permissive.
//!
//! Tenants (`kind: Tenant`): a caller from another tenant than this workload's is admitted
//! only by an allow rule whose `from` names it (identity, namespace or tenant) — a rule for
//! every caller does not open a tenant boundary — else refused by the rule `cross-tenant`.
//! On the calling side, [`Authorizer::egress`] refuses calls into another tenant unless a
//! policy of the caller's namespace lists it under `egress`. A namespace in no tenant counts
//! as a tenant of its own for this.

use crate::chain::PeerIdentity;
use crate::metrics::Metrics;
use crate::routing::{Text, Value};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::Arc;
use trellis_api::{EgressRule, MtlsMode, Policy, PolicyAction, Tenant};

/// The rule name given to refusals at a tenant boundary.
pub const CROSS_TENANT: &str = "cross-tenant";

/// What a rule is checked against.
pub struct Facts<'a> {
    pub source: Option<&'a PeerIdentity>,
    pub port: u16,
    /// `None` for opaque TCP.
    pub http: Option<&'a http::request::Parts>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused by `rule` of `policy`.
    Deny {
        policy: String,
        rule: String,
    },
}

struct CompiledRule {
    policy: Arc<str>,
    name: String,
    deny: bool,
    audit: bool,
    /// `trellis_authz_decisions_total` for this rule's outcome, looked up once per
    /// configuration instead of per request.
    counter: Counter,
    identities: Vec<IdentityPattern>,
    namespaces: Vec<String>,
    tenants: Vec<String>,
    ports: Vec<u16>,
    methods: Vec<http::Method>,
    paths: Vec<Text>,
    headers: Vec<(http::HeaderName, Value)>,
}

/// An exact SPIFFE ID, or a prefix when written with a trailing `*`.
enum IdentityPattern {
    Exact(String),
    Prefix(String),
}

impl IdentityPattern {
    fn matches(&self, id: &str) -> bool {
        match self {
            IdentityPattern::Exact(e) => e == id,
            IdentityPattern::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

impl CompiledRule {
    fn has_http_conditions(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty() || !self.headers.is_empty()
    }

    fn has_from(&self) -> bool {
        !self.identities.is_empty() || !self.namespaces.is_empty() || !self.tenants.is_empty()
    }

    fn matches(&self, facts: &Facts<'_>, source_tenant: Option<&str>) -> bool {
        if self.has_from() {
            let Some(source) = facts.source else { return false };
            let by_identity = self.identities.iter().any(|p| p.matches(&source.uri));
            let by_namespace = self.namespaces.contains(&source.id.namespace);
            let by_tenant = source_tenant.is_some_and(|t| self.tenants.iter().any(|want| want == t));
            if !by_identity && !by_namespace && !by_tenant {
                return false;
            }
        }
        if !self.ports.is_empty() && !self.ports.contains(&facts.port) {
            return false;
        }
        let Some(parts) = facts.http else { return !self.has_http_conditions() };
        if !self.methods.is_empty() && !self.methods.contains(&parts.method) {
            return false;
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| p.matches(parts.uri.path())) {
            return false;
        }
        self.headers.iter().all(|(name, value)| value.matches(parts.headers.get(name).and_then(|v| v.to_str().ok())))
    }
}

/// The compiled policies of one workload.
#[derive(Default)]
pub struct Authorizer {
    mtls: Option<MtlsMode>,
    rules: Vec<CompiledRule>,
    /// Policies that set `defaultDeny`: (name, audit, counter).
    default_deny: Vec<(Arc<str>, bool, Counter)>,
    /// Namespace → tenant, for every tenant.
    tenant_of: HashMap<String, String>,
    own_tenant: Option<String>,
    /// Egress rules of the covering policies, each with its `allow` counter.
    egress: Vec<(EgressRule, Counter)>,
    cross_tenant: Counter,
    /// Asked once the rules allow; the service's policy's if it names one, else the namespace's.
    external: Option<crate::ext_authz::ExternalCheck>,
}

impl Authorizer {
    /// Compiles the policies covering `service` in `namespace` (others are ignored).
    pub fn compile(
        policies: &[&Policy],
        tenants: &[&Tenant],
        namespace: &str,
        service: Option<&str>,
        decisions: &crate::ext_authz::DecisionCaches,
        metrics: &Metrics,
    ) -> anyhow::Result<Authorizer> {
        let mut authorizer =
            Authorizer { cross_tenant: metrics.authz_counter("tenancy", CROSS_TENANT, "deny"), ..Default::default() };
        for tenant in tenants {
            for ns in &tenant.namespaces {
                authorizer.tenant_of.insert(ns.clone(), tenant.name.0.clone());
            }
        }
        authorizer.own_tenant = authorizer.tenant_of.get(namespace).cloned();
        let covering: Vec<&&Policy> = policies
            .iter()
            .filter(|p| p.namespace == namespace && p.service.as_ref().is_none_or(|s| Some(s.0.as_str()) == service))
            .collect();
        // A service's own policy decides the mTLS mode over its namespace's.
        let service_mode = covering.iter().filter(|p| p.service.is_some()).find_map(|p| p.mtls);
        let namespace_mode = covering.iter().filter(|p| p.service.is_none()).find_map(|p| p.mtls);
        authorizer.mtls = service_mode.or(namespace_mode);
        let external = covering
            .iter()
            .filter(|p| p.service.is_some())
            .chain(covering.iter().filter(|p| p.service.is_none()))
            .find_map(|p| p.external.as_ref().map(|e| (p.name.0.as_str(), e)));
        authorizer.external =
            external.map(|(policy, spec)| crate::ext_authz::ExternalCheck::new(policy, spec, decisions));
        for policy in covering {
            let name: Arc<str> = Arc::from(policy.name.0.as_str());
            let denied = if policy.audit { "audit-deny" } else { "deny" };
            if policy.default_deny {
                let counter = metrics.authz_counter(&name, "default-deny", denied);
                authorizer.default_deny.push((name.clone(), policy.audit, counter));
            }
            authorizer
                .egress
                .extend(policy.egress.iter().map(|e| (e.clone(), metrics.authz_counter(&name, &e.name, "allow"))));
            for rule in &policy.rules {
                let from = rule.from.clone().unwrap_or_default();
                let to = rule.to.clone().unwrap_or_default();
                let deny = rule.action == PolicyAction::Deny;
                authorizer.rules.push(CompiledRule {
                    counter: metrics.authz_counter(&name, &rule.name, if deny { denied } else { "allow" }),
                    policy: name.clone(),
                    name: rule.name.clone(),
                    deny,
                    audit: policy.audit,
                    identities: from
                        .identities
                        .iter()
                        .map(|id| match id.0.strip_suffix('*') {
                            Some(prefix) => IdentityPattern::Prefix(prefix.to_string()),
                            None => IdentityPattern::Exact(id.0.to_string()),
                        })
                        .collect(),
                    namespaces: from.namespaces.clone(),
                    tenants: from.tenants.clone(),
                    ports: to.ports.clone(),
                    methods: to
                        .methods
                        .iter()
                        .map(|m| http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()))
                        .collect::<Result<_, _>>()?,
                    paths: to.paths.iter().map(Text::new).collect::<anyhow::Result<_>>()?,
                    headers: to
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            Ok((http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())?, Value::new(v)?))
                        })
                        .collect::<anyhow::Result<_>>()?,
                });
            }
        }
        Ok(authorizer)
    }

    /// Strict refuses plaintext; the default is permissive.
    pub fn mtls_mode(&self) -> MtlsMode {
        self.mtls.unwrap_or(MtlsMode::Permissive)
    }

    pub fn external(&self) -> Option<&crate::ext_authz::ExternalCheck> {
        self.external.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.default_deny.is_empty() && self.tenant_of.is_empty()
    }

    /// Whether `a` and `b` are namespaces of different tenants.
    fn crosses(&self, a: &str, b: Option<&str>) -> bool {
        self.tenant_of.get(a).map(String::as_str) != b
    }

    /// Decides, counting the decision by policy and rule.
    pub fn check(&self, facts: &Facts<'_>) -> Decision {
        if self.is_empty() {
            return Decision::Allow;
        }
        let source_tenant = facts.source.and_then(|s| self.tenant_of.get(&s.id.namespace)).map(String::as_str);
        let cross_tenant = facts.source.is_some_and(|s| self.crosses(&s.id.namespace, self.own_tenant.as_deref()));
        // Enforced denials first; an audit-mode denial is only noted, and evaluation goes on
        // as if that policy were not there.
        for rule in self.rules.iter().filter(|r| r.deny && r.matches(facts, source_tenant)) {
            rule.counter.inc();
            if rule.audit {
                audit(facts, &rule.policy, &rule.name);
                continue;
            }
            return Decision::Deny { policy: rule.policy.to_string(), rule: rule.name.clone() };
        }
        let admits = |r: &&CompiledRule| !r.deny && (!cross_tenant || r.has_from()) && r.matches(facts, source_tenant);
        if let Some(rule) = self.rules.iter().find(admits) {
            rule.counter.inc();
            return Decision::Allow;
        }
        if cross_tenant {
            self.cross_tenant.inc();
            return Decision::Deny { policy: "tenancy".into(), rule: CROSS_TENANT.into() };
        }
        for (policy, audit_only, counter) in &self.default_deny {
            counter.inc();
            if *audit_only {
                audit(facts, policy, "default-deny");
                continue;
            }
            return Decision::Deny { policy: policy.to_string(), rule: "default-deny".into() };
        }
        Decision::Allow
    }
}

impl Authorizer {
    /// Caller side: may this workload call into `namespace`? Free within its tenant; across
    /// tenants only with an `egress` rule naming the other tenant or namespace.
    pub fn egress(&self, namespace: &str) -> Decision {
        if !self.crosses(namespace, self.own_tenant.as_deref()) {
            return Decision::Allow;
        }
        let tenant = self.tenant_of.get(namespace);
        let allowed = self.egress.iter().find(|(rule, _)| {
            rule.namespaces.iter().any(|ns| ns == namespace) || tenant.is_some_and(|t| rule.tenants.contains(t))
        });
        match allowed {
            Some((_, counter)) => {
                counter.inc();
                Decision::Allow
            }
            None => {
                self.cross_tenant.inc();
                Decision::Deny { policy: "tenancy".into(), rule: CROSS_TENANT.into() }
            }
        }
    }
}

fn audit(facts: &Facts<'_>, policy: &str, rule: &str) {
    let source = facts.source.map_or("plaintext", |s| &*s.uri);
    let (method, path) = facts.http.map(|p| (p.method.to_string(), p.uri.path().to_string())).unwrap_or_default();
    tracing::warn!(%policy, %rule, %source, port = facts.port, %method, %path, "audit: would deny");
}
