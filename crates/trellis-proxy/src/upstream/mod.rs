//! Connections to upstream endpoints: connecting (with timeout and socket mark), mutual TLS
//! to endpoints with a mesh identity, pooling HTTP/1.1 keep-alive connections ([`http1`]),
//! and multiplexing HTTP/2 on one connection per endpoint ([`http2`]).
//!
//! Pools are keyed by endpoint address and expected peer identity, and outlive
//! configuration reloads.

pub mod http1;
mod http2;

use crate::body::{self, Body, BoxError};
use crate::identity::{Carried, Identity};
use futures_util::future::Either;
use http::{Request, Response};
use http1::Http1Connection;
use http2::Http2Connection;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// Idle HTTP/1.1 connections kept per endpoint. Past it, a connection is closed after its
/// request: with mutual TLS that is a handshake per request, so it is well above what one
/// endpoint usually has in flight (Envoy's default connection limit per cluster is the same).
const MAX_POOLED_PER_ENDPOINT: usize = 1024;
/// An HTTP/1.1 connection idle for longer than this is closed rather than reused: two thirds
/// of the time after which an idle Trellis proxy inbound closes a connection, so that a
/// request is not sent on a connection the far proxy is closing at that moment.
const IDLE_TIMEOUT: Duration = Duration::from_secs(crate::http::HEADER_READ_TIMEOUT.as_secs() * 2 / 3);
/// A pooled connection idle at least this long may have been closed at the far end by a
/// keep-alive timeout (Node.js's is 5 s) just as a request goes out on it: a request that may
/// be sent again keeps a copy of its head for that case. Busier connections do not pay for
/// the copy.
const RESEND_AFTER_IDLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection refused or failed: {0}")]
    Connect(std::io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection reset or closed before a response: {0}")]
    Reset(BoxError),
    /// Reading the request body from the client failed while it was being sent.
    #[error("the request body could not be read: {0}")]
    RequestBody(BoxError),
    #[error("mutual TLS with the endpoint failed: {0}")]
    Tls(String),
    #[error("the endpoint requires mutual TLS, but this proxy has no valid workload certificate")]
    NoIdentity,
}

/// The SPIFFE ID an endpoint must prove; `None`: plaintext.
pub type PeerIdentity = Option<Arc<str>>;

/// A connection to an upstream, plain or mesh TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxedIo = Box<dyn Io>;

/// Opens TCP connections for the proxy.
#[derive(Clone)]
pub struct Connector {
    /// SO_MARK on upstream sockets so capture rules let them through; 0 = none.
    pub mark: u32,
    /// Presented to endpoints that require mutual TLS.
    pub identity: Arc<Identity>,
}

impl Connector {
    /// Connects, and when `peer` is set, runs mutual TLS carrying `carried` and checks that
    /// the endpoint proved exactly `peer`. `timeout` bounds both.
    pub async fn connect_mesh(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        peer: Option<&str>,
        carried: Carried,
    ) -> Result<BoxedIo, UpstreamError> {
        let started = Instant::now();
        let Some(peer) = peer else {
            return Ok(Box::new(self.connect(addr, timeout).await?));
        };
        if !self.identity.usable() {
            return Err(UpstreamError::NoIdentity);
        }
        let stream = self.connect(addr, timeout).await?;
        let connector = tokio_rustls::TlsConnector::from(self.identity.client_config(carried));
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let left = timeout.saturating_sub(started.elapsed());
        let tls = match tokio::time::timeout(left, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(UpstreamError::Tls(e.to_string())),
            Err(_) => return Err(UpstreamError::ConnectTimeout(timeout)),
        };
        let proved = trellis_identity::tls::peer_identity(tls.get_ref().1);
        match proved {
            Some(id) if id.to_string() == peer => Ok(Box::new(tls)),
            Some(id) => Err(UpstreamError::Tls(format!("the endpoint proved {id}, not the expected {peer}"))),
            None => Err(UpstreamError::Tls("the endpoint proved no SPIFFE identity".into())),
        }
    }

    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
        let socket =
            if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(UpstreamError::Connect)?;
        if self.mark != 0 {
            // Without CAP_NET_ADMIN the mark can't be set; capture then relies on uid rules.
            if let Err(e) = socket2::SockRef::from(&socket).set_mark(self.mark) {
                tracing::debug!(error = %e, "cannot set SO_MARK on upstream socket");
            }
        }
        socket.set_nodelay(true).map_err(UpstreamError::Connect)?;
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(UpstreamError::Connect(e)),
            Err(_) => Err(UpstreamError::ConnectTimeout(timeout)),
        }
    }
}

impl UpstreamError {
    fn from_hyper(e: hyper::Error) -> Self {
        // hyper calls a failure of the body it was given to send a user error.
        if e.is_user() { UpstreamError::RequestBody(e.into()) } else { UpstreamError::Reset(e.into()) }
    }
}

/// All upstream connections of one proxy.
pub struct Upstreams {
    connector: Connector,
    http1: Mutex<PoolMap<Arc<Mutex<Vec<PooledConnection>>>>>,
    http2: Mutex<PoolMap<Http2Slot>>,
}

type PoolKey = (SocketAddr, PeerIdentity);
/// Looked up on every request: a fast hash rather than SipHash, as keys are not chosen by
/// clients (endpoints come from the configuration).
type PoolMap<V> = std::collections::HashMap<PoolKey, V, foldhash::fast::RandomState>;

/// The one HTTP/2 connection to an endpoint.
#[derive(Default)]
struct Http2Slot {
    live: Option<Http2Connection>,
    /// Held while connecting, so that concurrent first requests share a single connect.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

/// An idle HTTP/1.1 connection in the pool. It comes back when its response body has been
/// read to the end (see [`http1`]).
struct PooledConnection {
    connection: Http1Connection,
    /// When it was put back.
    since: Instant,
}

impl Upstreams {
    pub fn new(connector: Connector) -> Self {
        Upstreams { connector, http1: Mutex::default(), http2: Mutex::default() }
    }

    fn http2_pool(&self) -> std::sync::MutexGuard<'_, PoolMap<Http2Slot>> {
        self.http2.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends a request to `addr`. For HTTP/1 the request URI must be in origin form; for
    /// HTTP/2 it must carry scheme and authority.
    ///
    /// The way is chosen before the future is made, so that it is only the chosen way's:
    /// one future per layer, each holding its own copy of the request, would add up.
    pub fn send(
        &self,
        addr: SocketAddr,
        peer: PeerIdentity,
        wire: Wire,
        request: Request<Body>,
        connect_timeout: Duration,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_ {
        let key = (addr, peer);
        match wire {
            Wire::Http1 => {
                Either::Left(self.send_http1(key, request, connect_timeout))
            }
            Wire::Http2 => match self.live_http2(&key) {
                Some(connection) => Either::Right(Either::Left(connection.send(request))),
                // Boxed: connecting is the rare path.
                None => Either::Right(Either::Right(Box::pin(async move {
                    self.open_http2(key, connect_timeout).await?.send(request).await
                }))),
            },
        }
    }

    async fn send_http1(
        &self,
        key: PoolKey,
        mut request: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        if request.headers().contains_key(http::header::UPGRADE) || request.method() == http::Method::CONNECT {
            // Boxed: rare, and its state would make every request's future larger.
            return Box::pin(self.send_upgrading(key, request, connect_timeout)).await;
        }
        let pool = {
            let mut pools = self.http1.lock().unwrap_or_else(|e| e.into_inner());
            match pools.get(&key) {
                Some(pool) => pool.clone(),
                None => pools.entry(key.clone()).or_default().clone(),
            }
        };
        // Reuse a pooled connection if one is alive. A request the upstream closed a
        // long-idle connection under without answering is moved to a fresh one when it may be
        // sent again (see `RESEND_AFTER_IDLE` and `to_resend`).
        if let Some((connection, idle_for)) = take_ready(&pool) {
            let again = if idle_for >= RESEND_AFTER_IDLE { to_resend(&request) } else { None };
            match connection.send(request, PoolHome(pool.clone())).await {
                Ok(response) => return Ok(response),
                Err(failed) => match again {
                    Some(again) if failed.unanswered => {
                        tracing::debug!(addr = %key.0, error = %failed.error, "a pooled connection closed before answering; sending again on a new one");
                        request = again;
                    }
                    _ => return Err(failed.error),
                },
            }
        }
        // Boxed: connecting (TLS included) is the rare path, and inline its state would make
        // every request's future, which is moved and copied, several kilobytes larger.
        let io = Box::pin(self.connector.connect_mesh(key.0, connect_timeout, key.1.as_deref(), Carried::Http1)).await?;
        Http1Connection::new(io).send(request, PoolHome(pool)).await.map_err(|failed| failed.error)
    }

    /// A request that may switch protocols (an `Upgrade`, or CONNECT) goes on a connection of
    /// its own through hyper, whose upgrade support it needs; the connection is not pooled.
    async fn send_upgrading(
        &self,
        key: PoolKey,
        request: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let addr = key.0;
        let stream = self.connector.connect_mesh(addr, connect_timeout, key.1.as_deref(), Carried::Http1).await?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::from_hyper)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        let response = sender.send_request(request).await.map_err(UpstreamError::from_hyper)?;
        Ok(response.map(body::boxed))
    }

    /// Closes pooled HTTP/1.1 connections that have been idle too long or that the upstream
    /// closed, and forgets endpoints with none left: a pooled connection has no task that
    /// would notice. Called periodically (see [`Upstreams::start_sweeping`]).
    fn sweep_idle(&self) {
        let pools: Vec<_> = self.http1.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let now = Instant::now();
        for pool in pools {
            let closing: Vec<_> = {
                let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
                let (mut keep, mut close) = (Vec::with_capacity(pool.len()), Vec::new());
                for mut pooled in std::mem::take(&mut *pool) {
                    if now.duration_since(pooled.since) < IDLE_TIMEOUT && pooled.connection.is_usable() {
                        keep.push(pooled);
                    } else {
                        close.push(pooled);
                    }
                }
                *pool = keep;
                close
            };
            drop(closing); // closed outside the lock
        }
        // An endpoint's pool that is empty and that nothing else holds (no response body on
        // its way home) goes.
        self.http1.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, pool| {
            Arc::strong_count(pool) > 1 || !pool.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
        });
    }

    /// Runs [`Upstreams::sweep_idle`] every few seconds for as long as `self` lives.
    pub fn start_sweeping(self: &Arc<Self>) {
        let upstreams = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(IDLE_TIMEOUT / 4);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(upstreams) = upstreams.upgrade() else { return };
                upstreams.sweep_idle();
            }
        });
    }

    /// The live HTTP/2 connection to the endpoint, if there is one.
    fn live_http2(&self, key: &PoolKey) -> Option<Http2Connection> {
        self.http2_pool().get(key).and_then(|slot| slot.live.as_ref()).filter(|c| !c.is_closed()).cloned()
    }

    /// Opens the HTTP/2 connection to the endpoint, or waits for the one being opened.
    async fn open_http2(&self, key: PoolKey, connect_timeout: Duration) -> Result<Http2Connection, UpstreamError> {
        let connecting = self.http2_pool().entry(key.clone()).or_default().connecting.clone();
        let _connecting = connecting.lock().await;
        // Someone else may have connected while this request waited.
        if let Some(live) = self.http2_pool().get(&key).and_then(|slot| slot.live.as_ref()).filter(|c| !c.is_closed()) {
            return Ok(live.clone());
        }
        let (addr, peer) = &key;
        let stream = self.connector.connect_mesh(*addr, connect_timeout, peer.as_deref(), Carried::Http2).await?;
        let connection = Http2Connection::handshake(stream, *addr).await?;
        self.http2_pool().entry(key).or_default().live = Some(connection.clone());
        Ok(connection)
    }
}

/// A copy of `request` to send again if the pooled connection it goes out on turns out to be
/// closed by the upstream before any answer: only for a request that may be repeated without
/// asking (idempotent, RFC 9110 §9.2.2) and has no body, so the copy is its head alone.
fn to_resend(request: &Request<Body>) -> Option<Request<Body>> {
    use http_body::Body as _;
    if !request.method().is_idempotent() || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// A pooled connection ready for a request and how long it has been idle, closing those the
/// upstream closed and those idle for too long.
fn take_ready(pool: &Mutex<Vec<PooledConnection>>) -> Option<(Http1Connection, Duration)> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    while let Some(mut pooled) = pool.pop() {
        let idle_for = now.duration_since(pooled.since);
        if idle_for < IDLE_TIMEOUT && pooled.connection.is_usable() {
            return Some((pooled.connection, idle_for));
        }
    }
    None
}

/// Takes a connection whose response has ended back into its endpoint's pool.
struct PoolHome(Arc<Mutex<Vec<PooledConnection>>>);

impl http1::Home for PoolHome {
    fn put_back(&self, connection: Http1Connection) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_POOLED_PER_ENDPOINT {
            pool.push(PooledConnection { connection, since: Instant::now() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers one request per connection and closes it after `linger`.
    async fn answer_once_then_close(linger: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    tokio::time::sleep(linger).await;
                });
            }
        });
        addr
    }

    fn pooled(upstreams: &Upstreams, addr: SocketAddr) -> Option<usize> {
        let pools = upstreams.http1.lock().unwrap();
        pools.get(&(addr, None)).map(|pool| pool.lock().unwrap().len())
    }

    #[tokio::test]
    async fn the_sweep_closes_pooled_connections_the_upstream_closed_and_forgets_their_endpoint() {
        let upstreams = Upstreams::new(Connector { mark: 0, identity: Arc::new(Identity::default()) });
        let addr = answer_once_then_close(Duration::from_millis(100)).await;
        let request = Request::get("/").header("host", "backend").body(body::empty()).unwrap();
        let response = upstreams.send(addr, None, Wire::Http1, request, Duration::from_secs(1)).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(pooled(&upstreams, addr), Some(1), "the connection went back to the pool at the body's end");
        upstreams.sweep_idle();
        assert_eq!(pooled(&upstreams, addr), Some(1), "a live idle connection stays");
        tokio::time::sleep(Duration::from_millis(300)).await; // the backend has closed it
        upstreams.sweep_idle();
        assert_eq!(pooled(&upstreams, addr), None, "the closed connection and its endpoint's pool are gone");
    }
}
