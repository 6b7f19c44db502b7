//! `redirect` and `direct-response`: routes the proxy answers without an upstream.

use crate::body::{self, Body};
use crate::chain::{BoxFuture, Element, Next};
use crate::routing::{authority_of, split_host_port};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

pub struct Redirect {
    spec: trellis_api::Redirect,
}

impl Redirect {
    pub fn new(spec: trellis_api::Redirect) -> Self {
        Redirect { spec }
    }

    fn location<B>(&self, request: &Request<B>) -> String {
        let authority = authority_of(request);
        let (host, port) = split_host_port(authority);
        let (host, port) = (host.to_string(), port.map(str::to_string));
        let scheme = self.spec.scheme.clone().unwrap_or_else(|| "http".into());
        let host = self.spec.host.clone().unwrap_or(host);
        let port = self
            .spec
            .port
            .map(|p| p.to_string())
            .or(if self.spec.host.is_some() || self.spec.scheme.is_some() { None } else { port });
        let path = self.spec.path.clone().unwrap_or_else(|| request.uri().path().to_string());
        let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        match port {
            Some(port) => format!("{scheme}://{host}:{port}{path}{query}"),
            None => format!("{scheme}://{host}{path}{query}"),
        }
    }
}

impl Element for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn call<'a>(&'a self, request: Request<Body>, _next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        let location = self.location(&request);
        let status = StatusCode::from_u16(self.spec.status).unwrap_or(StatusCode::FOUND);
        Box::pin(async move {
            let mut response = Response::new(body::empty());
            *response.status_mut() = status;
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(http::header::LOCATION, v);
            }
            response
        })
    }
}

pub struct DirectResponse {
    status: StatusCode,
    body: bytes::Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl DirectResponse {
    pub fn new(spec: &trellis_api::DirectResponse) -> anyhow::Result<Self> {
        Ok(DirectResponse {
            status: StatusCode::from_u16(spec.status)?,
            body: bytes::Bytes::from(spec.body.clone()),
            headers: spec
                .headers
                .iter()
                .map(|(k, v)| {
                    Ok((HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())?, HeaderValue::from_str(v)?))
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

impl Element for DirectResponse {
    fn name(&self) -> &'static str {
        "direct-response"
    }

    fn call<'a>(&'a self, _request: Request<Body>, _next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        Box::pin(async move {
            let mut response = Response::new(body::full(self.body.clone()));
            *response.status_mut() = self.status;
            for (k, v) in &self.headers {
                response.headers_mut().insert(k.clone(), v.clone());
            }
            response
        })
    }
}
