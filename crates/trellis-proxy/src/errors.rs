//! Answers the proxy gives itself, with a reason a person can act on.
//!
//! Whenever the proxy, not the upstream, produces a response, it carries
//! `x-trellis-error: REASON; upstream=...; endpoint=...` and a one-line body saying the same.
//! The response also holds the [`ProxyError`] as an extension, so that retries, metrics and
//! access logs see the same reason. gRPC callers get the matching `grpc-status` instead of an
//! HTTP error status, as gRPC clients expect.

use crate::body::{self, Body};
use http::{HeaderValue, Response, StatusCode};
use std::fmt;

pub const ERROR_HEADER: &str = "x-trellis-error";

/// Why the proxy answered instead of the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    NoRoute,
    UnknownService,
    NoHealthyEndpoints,
    ConnectFailure,
    ConnectTimeout,
    UpstreamReset,
    RequestTimeout,
    PerTryTimeout,
    BadRequest,
    Internal,
    /// The mutual TLS handshake with the upstream failed, or it proved another identity.
    UpstreamTls,
    /// Mutual TLS is required but this proxy has no valid certificate.
    NoIdentity,
    /// An authorization rule (or default deny) refused the request.
    Denied,
    /// The external authorizer could not be asked and the policy fails closed.
    AuthorizerUnavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no-route",
            Reason::UnknownService => "unknown-service",
            Reason::NoHealthyEndpoints => "no-healthy-endpoints",
            Reason::ConnectFailure => "connect-failure",
            Reason::ConnectTimeout => "connect-timeout",
            Reason::UpstreamReset => "upstream-reset",
            Reason::RequestTimeout => "request-timeout",
            Reason::PerTryTimeout => "per-try-timeout",
            Reason::BadRequest => "bad-request",
            Reason::Internal => "internal",
            Reason::UpstreamTls => "upstream-tls-failure",
            Reason::NoIdentity => "no-workload-identity",
            Reason::Denied => "denied",
            Reason::AuthorizerUnavailable => "authorizer-unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Reason::NoRoute | Reason::UnknownService => StatusCode::NOT_FOUND,
            Reason::NoHealthyEndpoints
            | Reason::ConnectFailure
            | Reason::ConnectTimeout
            | Reason::UpstreamTls
            | Reason::NoIdentity => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Denied | Reason::AuthorizerUnavailable => StatusCode::FORBIDDEN,
            Reason::UpstreamReset => StatusCode::BAD_GATEWAY,
            Reason::RequestTimeout | Reason::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status a gRPC client should see for this reason.
    fn grpc_status(self) -> u32 {
        match self {
            Reason::NoRoute | Reason::UnknownService => 12,      // UNIMPLEMENTED
            Reason::RequestTimeout | Reason::PerTryTimeout => 4, // DEADLINE_EXCEEDED
            Reason::BadRequest => 3,                             // INVALID_ARGUMENT
            Reason::Internal => 13,                              // INTERNAL
            Reason::Denied | Reason::AuthorizerUnavailable => 7, // PERMISSION_DENIED
            _ => 14,                                             // UNAVAILABLE
        }
    }
}

/// A proxy-generated failure: the reason, where it happened and what was seen.
#[derive(Clone, Debug)]
pub struct ProxyError {
    pub reason: Reason,
    /// The upstream (`service` or `service/subset`) involved, if any.
    pub upstream: Option<String>,
    pub endpoint: Option<std::net::SocketAddr>,
    /// The authorization rule that denied the request.
    pub rule: Option<String>,
    pub detail: String,
}

impl ProxyError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        ProxyError { reason, upstream: None, endpoint: None, rule: None, detail: detail.into() }
    }

    pub fn upstream(mut self, upstream: &str) -> Self {
        self.upstream = Some(upstream.to_string());
        self
    }

    pub fn endpoint(mut self, endpoint: std::net::SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    pub fn rule(mut self, rule: &str) -> Self {
        self.rule = Some(rule.to_string());
        self
    }

    /// The `x-trellis-error` header value.
    pub fn header_value(&self) -> String {
        let mut value = self.reason.as_str().to_string();
        if let Some(upstream) = &self.upstream {
            value.push_str("; upstream=");
            value.push_str(upstream);
        }
        if let Some(endpoint) = self.endpoint {
            value.push_str(&format!("; endpoint={endpoint}"));
        }
        if let Some(rule) = &self.rule {
            value.push_str("; rule=");
            value.push_str(rule);
        }
        value
    }

    /// Turns the error into the response the client sees.
    pub fn into_response(self, grpc: bool) -> Response<Body> {
        let header = HeaderValue::from_str(&self.header_value()).unwrap_or(HeaderValue::from_static("internal"));
        let text = self.to_string();
        let mut response = if grpc {
            let mut r = Response::new(body::empty());
            r.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
            r.headers_mut().insert("grpc-status", HeaderValue::from(self.reason.grpc_status()));
            let message = percent_encode_grpc(&text);
            if let Ok(v) = HeaderValue::from_str(&message) {
                r.headers_mut().insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(body::full(format!("{text}\n")));
            *r.status_mut() = self.reason.status();
            r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        };
        response.headers_mut().insert(ERROR_HEADER, header);
        response.extensions_mut().insert(self);
        response
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trellis: {}", self.reason.as_str())?;
        if let Some(upstream) = &self.upstream {
            write!(f, " (upstream {upstream}")?;
            if let Some(endpoint) = self.endpoint {
                write!(f, ", endpoint {endpoint}")?;
            }
            write!(f, ")")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, " by rule \"{rule}\"")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// gRPC's grpc-message is percent-encoded outside printable ASCII.
fn percent_encode_grpc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True when the request is a gRPC call, which wants errors as grpc-status.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
