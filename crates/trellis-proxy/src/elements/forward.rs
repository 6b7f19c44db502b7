//! `forward`: sends the request to the chosen endpoint and streams the response back.
//!
//! It picks the wire protocol per request: the client's own (HTTP/2 or HTTP/1.1), except
//! that HTTP/1.1 to a meshed endpoint of a service with `meshHttp1: multiplex` travels over
//! HTTP/2, marked with [`ORIG_PROTO_HEADER`] so the far proxy turns it back into HTTP/1.1.
//! Upgrades (WebSocket) always use HTTP/1.1; their two halves are then spliced together.

use crate::body::Body;
use crate::chain::{BoxFuture, Element, Next, RequestContext, is_grpc_request};
use crate::config::{Backend, Target};
use crate::errors::{ProxyError, Reason};
use crate::upstream::{UpstreamError, Upstreams, Wire};
use futures_util::FutureExt;
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Marks an HTTP/1.x request carried over HTTP/2 between two Trellis proxies.
pub const ORIG_PROTO_HEADER: header::HeaderName = header::HeaderName::from_static("x-trellis-orig-proto");

/// Which upstream answered, for metrics and access logs.
#[derive(Clone, Debug)]
pub struct UpstreamLabel {
    pub backend: Arc<str>,
    pub endpoint: SocketAddr,
    /// The SPIFFE ID the endpoint proved; `None` over plaintext.
    pub identity: crate::upstream::PeerIdentity,
}

/// A fixed destination, for the inbound side: the local application.
#[derive(Clone, Debug)]
pub struct ForwardTo {
    pub addr: SocketAddr,
    pub label: Arc<str>,
    pub wire: Option<Wire>,
}

pub struct Forward {
    upstreams: Arc<Upstreams>,
}

impl Forward {
    pub fn new(upstreams: Arc<Upstreams>) -> Self {
        Forward { upstreams }
    }
}

impl Element for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }

    // The destination is settled before the future is made, so the boxed future is `send`'s
    // own, not one more layer holding the request around it.
    fn call<'a>(&'a self, request: Request<Body>, _next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        let context = RequestContext::of(&request);
        if let Some(to) = &context.forward_to {
            let wire = to.wire.unwrap_or_else(|| natural_wire(&request));
            let (addr, label) = (to.addr, to.label.clone());
            return Box::pin(send(&self.upstreams, addr, None, label, wire, Duration::from_secs(1), request));
        }
        let (Some(target), Some(backend)) = (&context.target, &context.backend) else {
            let error = ProxyError::new(Reason::Internal, "forward without a chosen endpoint");
            let response = error.into_response(is_grpc_request(&request));
            return Box::pin(std::future::ready(response));
        };
        let wire = wire_to(&request, target, backend);
        let (addr, peer, label, timeout) =
            (target.addr, target.identity.clone(), backend.label.clone(), backend.connect_timeout);
        Box::pin(send(&self.upstreams, addr, peer, label, wire, timeout, request))
    }
}

/// The wire protocol to one endpoint of `backend`: the client's own, except that HTTP/1.1
/// to a meshed endpoint of a service that multiplexes it travels over HTTP/2.
pub fn wire_to<B>(request: &Request<B>, target: &Target, backend: &Backend) -> Wire {
    match natural_wire(request) {
        Wire::Http1 if target.meshed && backend.multiplex_http1 && !request.headers().contains_key(header::UPGRADE) => {
            Wire::Http2
        }
        natural => natural,
    }
}

/// The protocol the client itself used, except that upgrades always need HTTP/1.1.
fn natural_wire<B>(request: &Request<B>) -> Wire {
    if request.version() == Version::HTTP_2 && !request.headers().contains_key(header::UPGRADE) {
        Wire::Http2
    } else {
        Wire::Http1
    }
}

/// Sends `request` to `addr` over `wire` and returns the upstream's response, or the
/// proxy's own error response.
///
/// The request is prepared before the future is made, which then holds the upstream's
/// future and not the request beside it: every request's future is moved and copied.
pub fn send<'u>(
    upstreams: &'u Upstreams,
    addr: SocketAddr,
    peer: crate::upstream::PeerIdentity,
    label: Arc<str>,
    wire: Wire,
    connect_timeout: Duration,
    mut request: Request<Body>,
) -> impl Future<Output = Response<Body>> + Send + 'u {
    let grpc = is_grpc_request(&request);
    let client_upgrade = request.extensions_mut().remove::<crate::http::h1::OnUpgrade>();
    let upgrading = client_upgrade.is_some() && request.headers().contains_key(header::UPGRADE);
    if let Err(e) = prepare(&mut request, wire, upgrading) {
        let response = ProxyError::new(Reason::BadRequest, e).upstream(&label).into_response(grpc);
        return Either::Left(std::future::ready(response));
    }
    let upstream = upstreams.send(addr, peer.clone(), wire, request, connect_timeout);
    // A combinator, not an async block: that would hold the upstream's future twice (the
    // captured one and the one being awaited).
    Either::Right(upstream.map(move |result| answer(result, client_upgrade, label, addr, peer, grpc)))
}

/// The upstream's response, made ready for the client, or the proxy's answer for a failure.
fn answer(
    result: Result<Response<Body>, UpstreamError>,
    client_upgrade: Option<crate::http::h1::OnUpgrade>,
    label: Arc<str>,
    addr: SocketAddr,
    peer: crate::upstream::PeerIdentity,
    grpc: bool,
) -> Response<Body> {
    match result {
        Ok(mut response) => {
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_upgrade) = client_upgrade
            {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(client_upgrade, upstream_upgrade));
            }
            let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(response.headers_mut(), switching);
            response.extensions_mut().insert(UpstreamLabel { backend: label, endpoint: addr, identity: peer });
            response
        }
        Err(e) => {
            let reason = match &e {
                UpstreamError::Connect(_) => Reason::ConnectFailure,
                UpstreamError::ConnectTimeout(_) => Reason::ConnectTimeout,
                // The request body we were streaming failed: the client's input was bad
                // (e.g. an invalid chunk size) or cut off, not the upstream's fault.
                UpstreamError::RequestBody(_) => {
                    return ProxyError::new(Reason::BadRequest, e.to_string()).into_response(grpc);
                }
                UpstreamError::Reset(_) => Reason::UpstreamReset,
                UpstreamError::Tls(_) => Reason::UpstreamTls,
                UpstreamError::NoIdentity => Reason::NoIdentity,
            };
            ProxyError::new(reason, e.to_string()).upstream(&label).endpoint(addr).into_response(grpc)
        }
    }
}

/// Joins the client's and the upstream's upgraded connections (e.g. a WebSocket).
async fn splice(client: crate::http::h1::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = tokio::join!(client.upgraded(), upstream);
    let (Some(client), Ok(upstream)) = (client, upstream) else {
        tracing::debug!("upgrade failed: a side's connection did not switch protocols");
        return;
    };
    let (mut client_io, mut upstream) = (client.io, TokioIo::new(upstream));
    // What the client sent right after its request belongs to the new protocol.
    let result = async {
        upstream.write_all(&client.read_ahead).await?;
        tokio::io::copy_bidirectional(&mut client_io, &mut upstream).await
    };
    if let Err(e) = result.await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// Puts the request in the form `wire` needs: URI form, version, and headers that belong to
/// one connection only. The URI is assembled from its parsed parts, never re-parsed.
fn prepare(request: &mut Request<Body>, wire: Wire, upgrading: bool) -> Result<(), String> {
    let path_and_query = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    strip_hop_by_hop(request.headers_mut(), upgrading);
    match wire {
        Wire::Http1 => {
            request.headers_mut().remove(&ORIG_PROTO_HEADER);
            // HTTP/2's :authority becomes HTTP/1.1's Host.
            if !request.headers().contains_key(header::HOST)
                && let Some(authority) = request.uri().authority().filter(|a| !a.as_str().is_empty())
            {
                let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
                request.headers_mut().insert(header::HOST, host);
            }
            *request.uri_mut() = Uri::from(path_and_query);
            *request.version_mut() = Version::HTTP_11;
        }
        Wire::Http2 => {
            if request.version() != Version::HTTP_2 {
                let original = if request.version() == Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
                request.headers_mut().insert(ORIG_PROTO_HEADER, HeaderValue::from_static(original));
            }
            let authority = match request.uri().authority() {
                Some(authority) => authority.clone(),
                None => match crate::routing::authority_of(request) {
                    "" => Authority::from_static("localhost"),
                    host => Authority::try_from(host).map_err(|e| format!("bad authority `{host}`: {e}"))?,
                },
            };
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = Some(path_and_query);
            *request.uri_mut() = Uri::from_parts(uri).map_err(|e| e.to_string())?;
            request.headers_mut().remove(header::HOST);
            *request.version_mut() = Version::HTTP_2;
        }
    }
    Ok(())
}

/// Removes headers that describe one hop's connection (RFC 9110 §7.6.1); HTTP/2 forbids them.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most messages carry none of these: one pass over the names, rather than a hash and
    // lookup per hop-by-hop name, settles it.
    if !upgrading && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|name| !(upgrading && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", "transfer-encoding", "proxy-authenticate"] {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    // Only `TE: trailers` may cross HTTP/2 (gRPC needs it).
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Names that `strip_hop_by_hop` may remove or rewrite. A header named by `Connection` is
/// only hop-by-hop because of that header, which is in this list.
fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}
