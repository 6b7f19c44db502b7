//! Route matching: which of a service's routes a request belongs to.
//!
//! Conditions are compiled once per configuration (regexes anchored to the whole value);
//! matching a request costs a few string comparisons per route.

use http::Request;
use trellis_api::{RouteMatch, StringMatch, ValueMatch};

pub struct RouteMatcher {
    authority: Option<Text>,
    path: Option<Text>,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, Value)>,
    query: Vec<(String, Value)>,
}

pub(crate) enum Text {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

pub(crate) enum Value {
    Text(Text),
    Present(bool),
}

impl Text {
    pub(crate) fn new(m: &StringMatch) -> anyhow::Result<Text> {
        Ok(match m {
            StringMatch::Exact(s) => Text::Exact(s.clone()),
            StringMatch::Prefix(s) => Text::Prefix(s.clone()),
            StringMatch::Regex(r) => Text::Regex(regex::Regex::new(&format!("^(?:{})$", r.0))?),
        })
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Text::Exact(s) => value == s,
            Text::Prefix(p) => value.starts_with(p.as_str()),
            Text::Regex(r) => r.is_match(value),
        }
    }
}

impl Value {
    pub(crate) fn new(m: &ValueMatch) -> anyhow::Result<Value> {
        Ok(match m {
            ValueMatch::Exact(s) => Value::Text(Text::Exact(s.clone())),
            ValueMatch::Match(m) => Value::Text(Text::new(m)?),
            ValueMatch::Present { present } => Value::Present(*present),
        })
    }

    pub(crate) fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Value::Present(want), v) => v.is_some() == *want,
            (Value::Text(t), Some(v)) => t.matches(v),
            (Value::Text(_), None) => false,
        }
    }
}

impl RouteMatcher {
    pub fn new(m: &RouteMatch) -> anyhow::Result<Self> {
        Ok(RouteMatcher {
            authority: m.authority.as_ref().map(Text::new).transpose()?,
            path: m.path.as_ref().map(Text::new).transpose()?,
            method: m
                .method
                .as_ref()
                .map(|s| http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()))
                .transpose()?,
            headers: m
                .headers
                .iter()
                .map(|(k, v)| Ok((http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())?, Value::new(v)?)))
                .collect::<anyhow::Result<_>>()?,
            query: m.query.iter().map(|(k, v)| Ok((k.clone(), Value::new(v)?))).collect::<anyhow::Result<_>>()?,
        })
    }

    /// Matches every request.
    pub fn any() -> Self {
        RouteMatcher { authority: None, path: None, method: None, headers: vec![], query: vec![] }
    }

    pub fn matches<B>(&self, request: &Request<B>) -> bool {
        if let Some(method) = &self.method
            && request.method() != method
        {
            return false;
        }
        if let Some(path) = &self.path
            && !path.matches(request.uri().path())
        {
            return false;
        }
        if let Some(authority) = &self.authority
            && !authority.matches(authority_of(request))
        {
            return false;
        }
        for (name, value) in &self.headers {
            // Several values of one header are matched as the comma-joined list, as HTTP defines.
            let joined: Option<String> = {
                let mut all = request.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).peekable();
                if all.peek().is_none() { None } else { Some(all.collect::<Vec<_>>().join(",")) }
            };
            if !value.matches(joined.as_deref()) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = request.uri().query().unwrap_or("");
            for (name, value) in &self.query {
                let found = query
                    .split('&')
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == name).then_some(v)
                    })
                    .next();
                if !value.matches(found) {
                    return false;
                }
            }
        }
        true
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or else the Host header.
pub fn authority_of<B>(request: &Request<B>) -> &str {
    if let Some(a) = request.uri().authority() {
        return a.as_str();
    }
    request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("")
}

/// Splits `host:port`, `[v6]:port` or a bare host.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(yaml: &str) -> RouteMatcher {
        let m: RouteMatch = serde_json::from_value(serde_json::from_str::<serde_json::Value>(yaml).unwrap()).unwrap();
        RouteMatcher::new(&m).unwrap()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn matches_path_headers_query_method_authority() {
        let m = matcher(
            r#"{"path": {"prefix": "/api"}, "headers": {"x-canary": "1"}, "query": {"v": {"regex": "[0-9]+"}}, "method": "get", "authority": {"exact": "reviews"}}"#,
        );
        assert!(m.matches(&req("/api/x?v=12", &[("x-canary", "1"), ("host", "reviews")])));
        assert!(!m.matches(&req("/api/x?v=1a", &[("x-canary", "1"), ("host", "reviews")])));
        assert!(!m.matches(&req("/api/x?v=12", &[("x-canary", "2"), ("host", "reviews")])));
        assert!(!m.matches(&req("/other?v=12", &[("x-canary", "1"), ("host", "reviews")])));
        assert!(!m.matches(&req("/api?v=12", &[("x-canary", "1"), ("host", "ratings")])));
    }

    #[test]
    fn regex_is_anchored_and_presence_works() {
        let m = matcher(r#"{"path": {"regex": "/a+"}, "headers": {"x-debug": {"present": false}}}"#);
        assert!(m.matches(&req("/aaa", &[])));
        assert!(!m.matches(&req("/aaab", &[])));
        assert!(!m.matches(&req("/aaa", &[("x-debug", "")])));
    }
}
