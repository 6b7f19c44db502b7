//! `headers` and `rewrite`: change request and response headers, the path and the authority.

use crate::body::Body;
use crate::chain::{BoxFuture, Element, Next};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use trellis_api::HeaderRewrite as Spec;

/// Header operations, compiled: remove, then set, then add.
#[derive(Default)]
struct Ops {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Ops {
    fn new(spec: Option<&Spec>) -> anyhow::Result<Ops> {
        let Some(spec) = spec else { return Ok(Ops::default()) };
        let pair = |(k, v): (&String, &String)| -> anyhow::Result<(HeaderName, HeaderValue)> {
            Ok((HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())?, HeaderValue::from_str(v)?))
        };
        Ok(Ops {
            remove: spec
                .remove
                .iter()
                .map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()))
                .collect::<Result<_, _>>()?,
            set: spec.set.iter().map(pair).collect::<anyhow::Result<_>>()?,
            add: spec.add.iter().map(pair).collect::<anyhow::Result<_>>()?,
        })
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

pub struct HeaderRewrite {
    request: Ops,
    response: Ops,
}

impl HeaderRewrite {
    pub fn new(request: Option<&Spec>, response: Option<&Spec>) -> anyhow::Result<Self> {
        Ok(HeaderRewrite { request: Ops::new(request)?, response: Ops::new(response)? })
    }
}

impl Element for HeaderRewrite {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn call<'a>(&'a self, mut request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        self.request.apply(request.headers_mut());
        Box::pin(async move {
            let mut response = next.run(request).await;
            self.response.apply(response.headers_mut());
            response
        })
    }
}

pub struct Rewrite {
    spec: trellis_api::Rewrite,
    matched_prefix: Option<String>,
    authority: Option<HeaderValue>,
}

impl Rewrite {
    pub fn new(spec: trellis_api::Rewrite, matched_prefix: Option<String>) -> anyhow::Result<Self> {
        let authority = spec.authority.as_deref().map(HeaderValue::from_str).transpose()?;
        Ok(Rewrite { spec, matched_prefix, authority })
    }

    fn new_path(&self, path: &str) -> Option<String> {
        if let Some(full) = &self.spec.path {
            return Some(full.clone());
        }
        let (prefix, replacement) = (self.matched_prefix.as_deref()?, self.spec.prefix.as_deref()?);
        let rest = path.strip_prefix(prefix)?;
        // `/api` → `/` on `/api/x` must give `/x`, not `//x`.
        if replacement.ends_with('/') && rest.starts_with('/') {
            Some(format!("{replacement}{}", &rest[1..]))
        } else {
            Some(format!("{replacement}{rest}"))
        }
    }
}

impl Element for Rewrite {
    fn name(&self) -> &'static str {
        "rewrite"
    }

    fn call<'a>(&'a self, mut request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        let mut parts = request.uri().clone().into_parts();
        if let Some(path) = self.new_path(request.uri().path()) {
            let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            if let Ok(pq) = format!("{path}{query}").parse() {
                parts.path_and_query = Some(pq);
            }
        }
        if let Some(authority) = &self.authority {
            if parts.authority.is_some() {
                parts.authority = authority.to_str().ok().and_then(|a| a.parse().ok());
            }
            request.headers_mut().insert(http::header::HOST, authority.clone());
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        next.run(request)
    }
}
