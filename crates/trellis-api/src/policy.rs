//! `kind: Policy`: who may call what, and how strictly traffic must be mutually
//! authenticated, for a namespace or one service in it.
//!
//! The control plane stores, validates and distributes policies; proxies enforce them once
//! workload identities exist (the zero-trust work). Deny rules win over allow rules;
//! `defaultDeny` refuses what no rule allows; `audit` logs would-be denials instead of
//! enforcing them.

use crate::{Name, StringMatch, ValueMatch};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Refuse plaintext.
    Strict,
    /// Accept mutual TLS and plaintext (metrics say which).
    Permissive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Who calls: any of the identities or namespaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<SpiffeId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// What is called: every given condition must hold (a list holds if any entry matches).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
pub struct SpiffeId(pub String);

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
        Ok(SpiffeId(id))
    }
}
