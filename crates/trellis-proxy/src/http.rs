//! Serving HTTP on accepted connections and handing each request to its chain.
//!
//! Outbound, a request's service comes from the listener (explicit mode), the original
//! destination, or the authority; the first matching route's chain handles it, and a
//! request for no known service passes through to where the client was going. Inbound,
//! requests go to the local application, with HTTP/1.1 restored for requests that another
//! Trellis proxy carried over HTTP/2.
//!
//! HTTP/2 is served by hyper; HTTP/1.x by [`h1`], the proxy's own server side.

use crate::Shared;
use crate::body::{self, Body};
use crate::chain::{Connection, Element, Next, RequestContext};
use crate::elements::{ForwardTo, ORIG_PROTO_HEADER, UpstreamLabel};
use crate::errors::{ProxyError, Reason, is_grpc};
use crate::telemetry::stats::{ConnectionStats, StatsKey};
use crate::telemetry::{Observation, Outcome};
use crate::upstream::Wire;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

pub mod h1;

/// Largest request head (request line and headers) accepted.
const MAX_HEADER_BYTES: usize = h1::codec::MAX_HEAD;
/// How long a client may take to send a request head; a keep-alive connection idle this long
/// is closed too, so the upstream pool stops reusing connections before it.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a draining proxy keeps an idle HTTP/1.1 connection open, answering a request
/// that arrives on it with `Connection: close`. A client (another proxy's pool) may be
/// sending on it at that moment; closing it at once would reset that request. Meanwhile the
/// control plane hears that this proxy is draining and tells its callers.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Which side of the application a connection is on, and what it is bound to.
#[derive(Clone, Debug)]
pub enum Side {
    /// From the local application; the service is found per request.
    Outbound { listener: SocketAddr },
    /// From the local application, to one service (explicit mode).
    Explicit { service: String },
    /// To the local application at `app`.
    Inbound { app: SocketAddr },
}

impl Side {
    pub fn direction(&self) -> &'static str {
        match self {
            Side::Inbound { .. } => "inbound",
            _ => "outbound",
        }
    }
}

/// Serves one connection already detected as HTTP/1.x (`http2 == false`) or HTTP/2.
pub async fn serve<IO>(io: IO, http2: bool, side: Side, connection: Connection, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut drain = shared.drain_signal();
    let handler = Arc::new(Handler {
        side,
        connection,
        shared: shared.clone(),
        stats: Default::default(),
    });
    if http2 {
        let io = TokioIo::new(io);
        // hyper spawns a task per HTTP/2 stream and moves the request's future into it by
        // value; boxed, that is a pointer rather than its few kilobytes of state. (HTTP/1.1
        // awaits it in place, in the connection's own task.)
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            // Most requests (GET, HEAD) end with their headers: their empty body needs no box.
            let request =
                request.map(|incoming| if incoming.is_end_stream() { body::empty() } else { body::boxed(incoming) });
            Box::pin(async move { Ok::<_, Infallible>(handler.handle(request).await) })
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(1000)
            .keep_alive_interval(Duration::from_secs(30))
            .serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => log_end(result),
            _ = drain.changed() => {
                connection.as_mut().graceful_shutdown();
                log_end(connection.await);
            }
        }
    } else {
        h1::serve(io, handler, drain).await;
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

struct Handler {
    side: Side,
    connection: Connection,
    shared: Arc<Shared>,
    stats: Arc<ConnectionStats>,
}

/// Labels used for many requests, shared so metrics compare them by pointer.
static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
static PASSTHROUGH: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("passthrough"));
static INBOUND: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("inbound"));

/// The verified SPIFFE ID of the caller, set on requests to the application; a value sent
/// by the client is always removed first.
pub const PEER_IDENTITY_HEADER: http::HeaderName = http::HeaderName::from_static("x-trellis-peer-identity");

impl Handler {
    /// Inbound authorization — the policies' rules, then the external authorizer if one is
    /// set: the request, marked with the caller's identity, or the error naming the rule that
    /// denied it (never the policy's contents).
    async fn authorize(
        &self,
        config: &crate::config::RunningConfig,
        request: Request<Body>,
    ) -> Result<Request<Body>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        parts.headers.remove(&PEER_IDENTITY_HEADER);
        let source = self.connection.peer_identity.as_deref();
        let caller = source.map_or("plaintext", |s| &*s.uri);
        let metrics = &self.shared.runtime.metrics;
        let facts = crate::authz::Facts { source, port: self.connection.target.port(), http: Some(&parts) };
        if let crate::authz::Decision::Deny { policy, rule } = config.authorizer.check(&facts) {
            tracing::info!(%policy, %rule, %caller, method = %parts.method, path = parts.uri.path(), "request denied");
            return Err(ProxyError::new(Reason::Denied, "").rule(&rule));
        }
        if let Some(external) = config.authorizer.external() {
            let upstreams = &self.shared.runtime.upstreams;
            // Boxed: an outside call (connect, TLS, HTTP) would make every request's future,
            // which is moved and copied, kilobytes larger for a feature most routes lack.
            if let Err(denied) = Box::pin(external.check(upstreams, source, &parts, metrics)).await {
                tracing::info!(%caller, method = %parts.method, path = parts.uri.path(), "request denied by the external authorizer");
                return Err(denied);
            }
        }
        if let Some(peer) = source {
            parts.headers.insert(PEER_IDENTITY_HEADER, peer.header.clone());
        }
        Ok(Request::from_parts(parts, body))
    }

    /// A request to a mesh service: checked at the tenant boundary, then its route's chain.
    async fn to_service(
        &self,
        config: &crate::config::RunningConfig,
        svc: &crate::config::ServiceConfig,
        request: Request<Body>,
        grpc: bool,
    ) -> Handled {
        let route = svc.route_for(&request);
        let in_flight = config
            .telemetry
            .request_metrics
            .then(|| self.stats.start(&self.shared.runtime.telemetry.stats, "outbound", &svc.label));
        let decision = config.authorizer.egress(&svc.spec.namespace);
        let response = if let crate::authz::Decision::Deny { rule, .. } = decision {
            tracing::info!(service = %svc.id, %rule, "call into another tenant refused");
            ProxyError::new(Reason::Denied, "").rule(&rule).into_response(grpc)
        } else {
            Next::new(&route.chain).run(request).await
        };
        Handled { service: svc.label.clone(), route: route.name.clone(), in_flight, response }
    }

    async fn handle(&self, mut request: Request<Body>) -> Response<Body> {
        let config = self.shared.config();
        let telemetry = &self.shared.runtime.telemetry;
        let grpc = is_grpc(request.headers());
        let context = RequestContext::of_mut(&mut request);
        context.connection = Some(self.connection.clone());
        context.grpc = Some(grpc);
        let head = request.method() == http::Method::HEAD;
        let direction = self.side.direction();
        let observation = Observation::begin(&mut request, &config.telemetry, telemetry);

        let handled = match &self.side {
            Side::Inbound { app } => {
                let label = config.inbound_label.clone();
                let in_flight =
                    config.telemetry.request_metrics.then(|| self.stats.start(&telemetry.stats, "inbound", &label));
                let response = match self.authorize(&config, request).await {
                    Err(denied) => denied.into_response(grpc),
                    Ok(mut request) => {
                        // A request another Trellis proxy upgraded to HTTP/2 goes to the app as HTTP/1.1.
                        let wire = request.headers().contains_key(&ORIG_PROTO_HEADER).then_some(Wire::Http1);
                        RequestContext::of_mut(&mut request).forward_to =
                            Some(ForwardTo { addr: *app, label: label.clone(), wire });
                        Next::new(&self.shared.inbound_chain).run(request).await
                    }
                };
                Handled { service: label, route: INBOUND.clone(), in_flight, response }
            }
            Side::Explicit { service } => match config.service_named(service) {
                Some(svc) => self.to_service(&config, svc, request, grpc).await,
                None => Handled {
                    service: Arc::from(service.as_str()),
                    route: EMPTY.clone(),
                    in_flight: None,
                    response: ProxyError::new(
                        Reason::UnknownService,
                        format!("service `{service}` is not in the configuration"),
                    )
                    .into_response(grpc),
                },
            },
            Side::Outbound { listener } => {
                // Most captured requests are found by address; the authority is only read when not.
                let svc = config
                    .service_for_address(self.connection.target)
                    .or_else(|| config.service_for_authority(crate::routing::authority_of(&request)))
                    .cloned();
                match svc {
                    Some(svc) => self.to_service(&config, &svc, request, grpc).await,
                    None if self.connection.target != *listener => {
                        // Not a mesh service: pass through to where the client was going.
                        RequestContext::of_mut(&mut request).forward_to =
                            Some(ForwardTo { addr: self.connection.target, label: PASSTHROUGH.clone(), wire: None });
                        Handled {
                            service: PASSTHROUGH.clone(),
                            route: EMPTY.clone(),
                            in_flight: None,
                            response: Next::new(&self.shared.inbound_chain).run(request).await,
                        }
                    }
                    None => {
                        let authority = crate::routing::authority_of(&request);
                        let detail = format!(
                            "no service is named by authority `{authority}` or address {}; declare one with `kind: Service` (its name, `hosts` or `addresses`)",
                            self.connection.target
                        );
                        Handled {
                            service: EMPTY.clone(),
                            route: EMPTY.clone(),
                            in_flight: None,
                            response: ProxyError::new(Reason::UnknownService, detail).into_response(grpc),
                        }
                    }
                }
            }
        };

        let Handled { service, route, in_flight, response } = handled;
        let error = response.extensions().get::<ProxyError>();
        if let Some(error) = error {
            self.shared.runtime.metrics.proxy_error(direction, &service, error.reason.as_str());
            tracing::info!(direction, service = %service, route = %route, peer = %self.connection.peer, error = %error, "proxy answered with an error");
        }
        let Some(observation) = observation else { return bodiless_if_head(response, head) };
        let answered_by = response.extensions().get::<UpstreamLabel>();
        let upstream: Arc<str> = match (answered_by, error) {
            (Some(u), _) => u.backend.clone(),
            (None, Some(e)) => e.upstream.as_deref().map_or_else(|| EMPTY.clone(), Arc::from),
            (None, None) => EMPTY.clone(),
        };
        let endpoint = answered_by.map(|u| u.endpoint).or_else(|| error.and_then(|e| e.endpoint));
        let own = self.shared.identity.uri();
        let caller = self.connection.peer_identity.as_ref().map_or_else(|| EMPTY.clone(), |p| p.uri.clone());
        let (source_identity, destination_identity) = match self.side {
            Side::Inbound { .. } => (caller, own),
            _ => (own, answered_by.and_then(|u| u.identity.clone()).unwrap_or_else(|| EMPTY.clone())),
        };
        let outcome = Outcome {
            labels: StatsKey { direction, service, route, upstream, source_identity, destination_identity },
            endpoint,
            client: self.connection.peer,
            error: error.map(|e| e.reason.as_str()),
            attempts: response.extensions().get::<crate::elements::Attempts>().map(|a| a.0).unwrap_or(1),
            in_flight,
            connection: self.stats.clone(),
        };
        observation.finish(bodiless_if_head(response, head), outcome, &config.telemetry, telemetry)
    }
}

/// A HEAD response has no body, including the proxy's own answers; HTTP/1 drops one by
/// itself, but HTTP/2 would send it as DATA, which clients reject.
fn bodiless_if_head(response: Response<Body>, head: bool) -> Response<Body> {
    if !head {
        return response;
    }
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, body::empty())
}

/// A request's service and route, and the response the chain gave.
struct Handled {
    service: Arc<str>,
    route: Arc<str>,
    in_flight: Option<crate::telemetry::stats::InFlightGuard>,
    response: Response<Body>,
}

/// The chain used for inbound and pass-through requests: straight to a fixed address.
pub fn direct_chain(shared_upstreams: Arc<crate::upstream::Upstreams>) -> Vec<Arc<dyn Element>> {
    vec![Arc::new(crate::elements::Forward::new(shared_upstreams))]
}
