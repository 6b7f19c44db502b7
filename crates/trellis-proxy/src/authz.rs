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

use crate::chain::PeerIdentity;
use crate::routing::{Text, Value};
use std::sync::Arc;
use trellis_api::{MtlsMode, Policy, PolicyAction};

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
    identities: Vec<IdentityPattern>,
    namespaces: Vec<String>,
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

    fn matches(&self, facts: &Facts<'_>) -> bool {
        let has_from = !self.identities.is_empty() || !self.namespaces.is_empty();
        if has_from {
            let Some(source) = facts.source else { return false };
            let by_identity = self.identities.iter().any(|p| p.matches(&source.uri));
            let by_namespace = self.namespaces.iter().any(|ns| *ns == source.id.namespace);
            if !by_identity && !by_namespace {
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
    /// Policies that set `defaultDeny`: (name, audit).
    default_deny: Vec<(Arc<str>, bool)>,
}

impl Authorizer {
    /// Compiles the policies covering `service` in `namespace` (others are ignored).
    pub fn compile(policies: &[&Policy], namespace: &str, service: Option<&str>) -> anyhow::Result<Authorizer> {
        let mut authorizer = Authorizer::default();
        let covering: Vec<&&Policy> = policies
            .iter()
            .filter(|p| p.namespace == namespace && p.service.as_ref().is_none_or(|s| Some(s.0.as_str()) == service))
            .collect();
        // A service's own policy decides the mTLS mode over its namespace's.
        let service_mode = covering.iter().filter(|p| p.service.is_some()).find_map(|p| p.mtls);
        let namespace_mode = covering.iter().filter(|p| p.service.is_none()).find_map(|p| p.mtls);
        authorizer.mtls = service_mode.or(namespace_mode);
        for policy in covering {
            let name: Arc<str> = Arc::from(policy.name.0.as_str());
            if policy.default_deny {
                authorizer.default_deny.push((name.clone(), policy.audit));
            }
            for rule in &policy.rules {
                let from = rule.from.clone().unwrap_or_default();
                let to = rule.to.clone().unwrap_or_default();
                authorizer.rules.push(CompiledRule {
                    policy: name.clone(),
                    name: rule.name.clone(),
                    deny: rule.action == PolicyAction::Deny,
                    audit: policy.audit,
                    identities: from
                        .identities
                        .iter()
                        .map(|id| match id.0.strip_suffix('*') {
                            Some(prefix) => IdentityPattern::Prefix(prefix.to_string()),
                            None => IdentityPattern::Exact(id.0.clone()),
                        })
                        .collect(),
                    namespaces: from.namespaces.clone(),
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

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.default_deny.is_empty()
    }

    /// Decides, counting the decision in `metrics` by policy and rule.
    pub fn check(&self, facts: &Facts<'_>, metrics: &crate::metrics::Metrics) -> Decision {
        if self.is_empty() {
            return Decision::Allow;
        }
        // Enforced denials first; an audit-mode denial is only noted, and evaluation goes on
        // as if that policy were not there.
        for rule in self.rules.iter().filter(|r| r.deny && r.matches(facts)) {
            if rule.audit {
                audit(facts, &rule.policy, &rule.name, metrics);
                continue;
            }
            metrics.authz_decision(&rule.policy, &rule.name, "deny");
            return Decision::Deny { policy: rule.policy.to_string(), rule: rule.name.clone() };
        }
        if let Some(rule) = self.rules.iter().find(|r| !r.deny && r.matches(facts)) {
            metrics.authz_decision(&rule.policy, &rule.name, "allow");
            return Decision::Allow;
        }
        for (policy, audit_only) in &self.default_deny {
            if *audit_only {
                audit(facts, policy, "default-deny", metrics);
                continue;
            }
            metrics.authz_decision(policy, "default-deny", "deny");
            return Decision::Deny { policy: policy.to_string(), rule: "default-deny".into() };
        }
        Decision::Allow
    }
}

fn audit(facts: &Facts<'_>, policy: &str, rule: &str, metrics: &crate::metrics::Metrics) {
    metrics.authz_decision(policy, rule, "audit-deny");
    let source = facts.source.map_or("plaintext", |s| s.uri.as_str());
    let (method, path) = facts.http.map(|p| (p.method.to_string(), p.uri.path().to_string())).unwrap_or_default();
    tracing::warn!(%policy, %rule, %source, port = facts.port, %method, %path, "audit: would deny");
}
