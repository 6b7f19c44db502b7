//! The per-request chain of elements (DESIGN.md: "elements, the unit of processing").
//!
//! A route compiles into an ordered list of [`Element`]s. Each element gets the request and
//! the rest of the chain ([`Next`]); it may change the request, answer by itself, call the
//! rest once (timeouts, header rewriting), several times (retries) or in the background as
//! well (mirroring), and change the response on its way back. The last element is a
//! terminal one (forwarding, redirect, direct response) that never calls `next`.
//!
//! Elements talk to each other through the request's [`RequestContext`] (e.g. the split
//! element records the chosen [`crate::config::Backend`] for the balancer) and response
//! extensions (the [`crate::errors::ProxyError`] of a proxy-made answer).

use crate::body::Body;
use crate::errors::{ProxyError, Reason};
use http::{Request, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One step of request processing.
pub trait Element: Send + Sync + 'static {
    /// The element's kind, for `/config` and logs.
    fn name(&self) -> &'static str;
    fn call<'a>(&'a self, request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>>;
}

/// The rest of a chain. Cheap to copy, so an element may call it more than once.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Element>],
}

impl<'a> Next<'a> {
    pub fn new(chain: &'a [Arc<dyn Element>]) -> Self {
        Next { rest: chain }
    }

    pub fn run(self, request: Request<Body>) -> BoxFuture<'a, Response<Body>> {
        match self.rest.split_first() {
            Some((element, rest)) => element.call(request, Next { rest }),
            None => {
                let grpc = is_grpc_request(&request);
                Box::pin(async move {
                    ProxyError::new(Reason::Internal, "the element chain has no terminal element").into_response(grpc)
                })
            }
        }
    }
}

/// What one request's elements learn and tell each other. One request extension holds it
/// all: each extension is an allocation of its own, made again for every retry attempt's
/// copy of the request, and these facts are set on nearly every request.
#[derive(Clone, Default)]
pub struct RequestContext {
    /// The client's connection, set by the listener's handler.
    pub connection: Option<Connection>,
    /// A fixed destination (the local application, a pass-through address): `forward`
    /// sends there and no backend or endpoint is chosen.
    pub forward_to: Option<crate::elements::ForwardTo>,
    /// The destination `split` chose, read by `balance` and `timeout`.
    pub backend: Option<Arc<crate::config::Backend>>,
    /// The endpoint `balance` chose, read by `forward`.
    pub target: Option<crate::config::Target>,
    /// Endpoints earlier attempts went to, shared by `retry`'s attempts.
    pub tried: Option<crate::elements::TriedEndpoints>,
    /// Whether the request is gRPC, noted once when it arrived: every element that answers
    /// with an error needs to know, and a header lookup each time costs more than this.
    pub grpc: Option<bool>,
}

static NO_CONTEXT: RequestContext =
    RequestContext { connection: None, forward_to: None, backend: None, target: None, tried: None, grpc: None };

/// Whether `request` is gRPC (its content type), as noted when it arrived.
pub fn is_grpc_request<B>(request: &Request<B>) -> bool {
    RequestContext::of(request).grpc.unwrap_or_else(|| crate::errors::is_grpc(request.headers()))
}

impl RequestContext {
    /// The request's context (empty if nothing set one).
    pub fn of<B>(request: &Request<B>) -> &RequestContext {
        request.extensions().get().unwrap_or(&NO_CONTEXT)
    }

    /// The request's context, to change it (created if missing).
    pub fn of_mut<B>(request: &mut Request<B>) -> &mut RequestContext {
        request.extensions_mut().get_or_insert_default()
    }
}

/// Facts about the request's connection, put in the request's context by the listener.
#[derive(Clone, Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Where the client meant to connect (the original destination when captured).
    pub target: SocketAddr,
    /// Who the client proved to be with mutual TLS; `None` for plaintext.
    pub peer_identity: Option<std::sync::Arc<PeerIdentity>>,
}

/// A verified client identity, with the forms requests need prepared once per connection.
#[derive(Debug)]
pub struct PeerIdentity {
    pub id: trellis_identity::SpiffeId,
    /// `spiffe://...`, what rules match and logs and metrics print.
    pub uri: std::sync::Arc<str>,
    /// The same, as the value of the header the application receives.
    pub header: http::HeaderValue,
}

impl PeerIdentity {
    pub fn new(id: trellis_identity::SpiffeId) -> Option<PeerIdentity> {
        let uri: std::sync::Arc<str> = id.to_string().into();
        let header = http::HeaderValue::from_str(&uri).ok()?;
        Some(PeerIdentity { id, uri, header })
    }
}
