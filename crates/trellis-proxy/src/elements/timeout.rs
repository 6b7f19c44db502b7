//! `timeout`: bounds the time from request to response headers, retries included.
//!
//! Streaming responses are not cut once their headers arrived: a gRPC stream or a download
//! may legitimately outlive the route timeout.

use crate::body::Body;
use crate::chain::{BoxFuture, Element, Next, RequestContext, is_grpc_request};
use crate::errors::{ProxyError, Reason};
use http::{Request, Response};
use std::time::Duration;

pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    pub fn new(limit: Duration) -> Self {
        Timeout { limit }
    }
}

impl Element for Timeout {
    fn name(&self) -> &'static str {
        "timeout"
    }

    fn call<'a>(&'a self, request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        let grpc = is_grpc_request(&request);
        let backend = RequestContext::of(&request).backend.clone();
        Box::pin(async move {
            match tokio::time::timeout(self.limit, next.run(request)).await {
                Ok(response) => response,
                Err(_) => {
                    let mut error = ProxyError::new(
                        Reason::RequestTimeout,
                        format!("no response within the route timeout of {:?}", self.limit),
                    );
                    error.upstream = backend.map(|b| b.label.to_string());
                    error.into_response(grpc)
                }
            }
        })
    }
}
