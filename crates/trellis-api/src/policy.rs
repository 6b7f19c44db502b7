//! `kind: Policy`: who may call what, and how strictly traffic must be mutually
//! authenticated, for a namespace or one service in it.
//!
//! The control plane stores, validates and distributes policies; the receiving proxy enforces
//! them. Deny rules win over allow rules; `defaultDeny` refuses what no rule allows; `audit`
//! logs would-be denials instead of enforcing them; `external` then asks an authorization
//! service. `egress` says which other tenants this namespace may call (`kind: Tenant`).

use crate::{Name, StringMatch, ValueMatch};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub name: Name,
    #[serde(default = "crate::default_namespace")]
    pub namespace: String,
    /// The service it applies to; the whole namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
    /// Refuse requests that no allow rule matches.
    #[serde(default)]
    pub default_deny: bool,
    /// Log would-be denials without enforcing them.
    #[serde(default)]
    pub audit: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// Asked after the rules allow a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalAuthorization>,
    /// Calls out of this namespace to other tenants that are allowed (across tenants,
    /// traffic needs this on the caller's side and an allow rule on the callee's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// An external authorization service, asked in the manner of nginx `auth_request` and
/// Envoy's HTTP `ext_authz`: a GET to `url` carrying the request's method, URI, host,
/// `authorization` and `cookie` headers and the caller's SPIFFE ID; 2xx allows, 401/403 (any
/// other 4xx) denies, anything else — 5xx, a timeout, no connection — is an error that
/// `failOpen` decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalAuthorization {
    /// Named in metrics and in the 403 a denied caller gets.
    #[serde(default = "ExternalAuthorization::default_name")]
    pub name: String,
    /// `http://IP:PORT/PATH`.
    pub url: AuthorizerUrl,
    #[serde(default = "ExternalAuthorization::default_timeout")]
    pub timeout: crate::Duration,
    /// How long a decision for the same caller, method and path is reused; 0s disables.
    #[serde(default = "ExternalAuthorization::default_cache_ttl")]
    pub cache_ttl: crate::Duration,
    /// Let requests through when the authorizer cannot answer (default: refuse them).
    #[serde(default)]
    pub fail_open: bool,
}

impl ExternalAuthorization {
    fn default_name() -> String {
        "external".into()
    }
    fn default_timeout() -> crate::Duration {
        crate::Duration::from_millis(200)
    }
    fn default_cache_ttl() -> crate::Duration {
        crate::Duration::from_millis(10_000)
    }
}

/// `http://IP:PORT/PATH`: an address, not a name, since proxies resolve no DNS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HttpUrl(pub String);

/// The external authorizer's address.
pub type AuthorizerUrl = HttpUrl;

impl HttpUrl {
    /// The address and path.
    pub fn parts(&self) -> (std::net::SocketAddr, &str) {
        let rest = self.0.strip_prefix("http://").unwrap_or(&self.0);
        let (address, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        (
            address.parse().unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            if path.is_empty() { "/" } else { path },
        )
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let url = String::deserialize(d)?;
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| serde::de::Error::custom(format!("`{url}`: write it as http://IP:PORT/PATH")))?;
        let address = &rest[..rest.find('/').unwrap_or(rest.len())];
        if address.parse::<std::net::SocketAddr>().is_err() {
            return Err(serde::de::Error::custom(format!(
                "`{url}`: `{address}` is not IP:PORT (proxies resolve no DNS names), e.g. http://127.0.0.1:9000/check"
            )));
        }
        Ok(HttpUrl(url))
    }
}

/// Other tenants (or namespaces of other tenants) this namespace may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// `kind: Tenant`: a group of namespaces. Traffic between tenants is refused unless the
/// caller's namespace allows it (`Policy.egress`) and the callee's policy has an allow rule
/// naming the caller (identity, namespace or tenant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenant {
    pub name: Name,
    pub namespaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Refuse plaintext.
    Strict,
    /// Accept mutual TLS and plaintext (metrics say which).
    Permissive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Named in metrics and in the 403 a denied caller gets.
    pub name: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Operation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Who calls: any of the identities or namespaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<SpiffeId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
}

/// What is called: every given condition must hold (a list holds if any entry matches).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatch>,
}

/// `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT`; a trailing `*` matches a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SpiffeId(pub Box<str>);

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        let rest = id.strip_prefix("spiffe://").ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{id}` is not a SPIFFE ID; write spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT"
            ))
        })?;
        let domain = rest.split('/').next().unwrap_or_default();
        if domain.is_empty() || id.contains(char::is_whitespace) {
            return Err(serde::de::Error::custom(format!("`{id}` has no trust domain or contains spaces")));
        }
        Ok(SpiffeId(id.into()))
    }
}
