//! SPIFFE IDs of Trellis workloads: `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{id}` is not a Trellis SPIFFE ID ({why}); expected spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT")]
pub struct ParseError {
    pub id: String,
    pub why: &'static str,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId, ParseError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = ParseError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let fail = |why| ParseError { id: id.to_string(), why };
        let rest = id.strip_prefix("spiffe://").ok_or_else(|| fail("no spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "ns", namespace, "sa", account] = parts.as_slice() else {
            return Err(fail("the path is not /ns/NAMESPACE/sa/SERVICE-ACCOUNT"));
        };
        // Trust domains are lowercase DNS-like names; path segments a conservative charset.
        let domain_ok = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
        };
        let segment_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !domain_ok(trust_domain) {
            return Err(fail("the trust domain must be lowercase letters, digits, `-`, `.` or `_`"));
        }
        if !segment_ok(namespace) || !segment_ok(account) {
            return Err(fail("namespace and service account must be letters, digits, `-`, `.` or `_`"));
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: account.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let id: SpiffeId = "spiffe://trellis.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.to_string(), "spiffe://trellis.local/ns/shop/sa/web");
        for bad in [
            "http://x/ns/a/sa/b",
            "spiffe://x/ns/a",
            "spiffe://X/ns/a/sa/b",
            "spiffe://x/ns/a/sa/b/c",
            "spiffe:///ns/a/sa/b",
            "spiffe://x/ns//sa/b",
            "spiffe://x/ns/a b/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
