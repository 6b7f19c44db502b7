//! The HTTP side: parsing the target URL, opening one keep-alive connection with hyper's
//! low-level client API (`http1::handshake`, or `http2::handshake` with prior knowledge), and
//! sending one request on it, reading the response body to the end.
//!
//! No pooling happens here; the driver (`run.rs`) owns the fixed set of connections.

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// What every request looks like.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `http://authority/path?query`, as HTTP/2 needs for `:scheme` and `:authority`.
    absolute: Uri,
    /// `/path?query`, as HTTP/1.1 sends it (with a `Host` header).
    origin: Uri,
    host: HeaderValue,
    /// `None`: GET; `Some`: POST with this body.
    body: Option<Bytes>,
    pub http2: bool,
    pub connect_timeout: Duration,
}

impl Target {
    /// Parses `url` (http only) and resolves its host once.
    pub async fn new(
        url: &str,
        body_size: Option<usize>,
        http2: bool,
        connect_timeout: Duration,
    ) -> anyhow::Result<Target> {
        let absolute: Uri = url.parse().with_context(|| format!("invalid --url {url:?}"))?;
        match absolute.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("--url: only http:// is supported, not {other}://"),
            None => bail!("--url must be absolute, like http://127.0.0.1:8080/path"),
        }
        let authority = absolute.authority().context("--url has no host")?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("resolving {}", authority.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", authority.host()))?;
        let origin: Uri = absolute.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        let host = HeaderValue::from_str(authority.as_str())?;
        let body = body_size.map(|n| Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>()));
        Ok(Target { addr, absolute, origin, host, body, http2, connect_timeout })
    }

    pub fn method(&self) -> &'static str {
        if self.body.is_some() { "POST" } else { "GET" }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let (method, body) = match &self.body {
            Some(b) => (Method::POST, b.clone()),
            None => (Method::GET, Bytes::new()),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        if self.http2 {
            *request.uri_mut() = self.absolute.clone();
        } else {
            *request.uri_mut() = self.origin.clone();
            request.headers_mut().insert(header::HOST, self.host.clone());
        }
        request
    }
}

/// One open connection.
pub enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    /// Cheap to clone; every clone multiplexes over the same connection.
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

/// Opens a connection (TCP_NODELAY) and runs its hyper task on the runtime.
pub async fn connect(target: &Target) -> anyhow::Result<Conn> {
    let stream = tokio::time::timeout(target.connect_timeout, TcpStream::connect(target.addr))
        .await
        .with_context(|| format!("connecting to {} timed out", target.addr))?
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    if target.http2 {
        let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn::H1(send))
    }
}

/// Opens a connection and sends one unmeasured request on it right away, as a client that
/// connects on demand would. A proxy that sniffs the protocol of each new connection (Trellis
/// waits `detectTimeout`, 500 ms by default, for the first bytes) would otherwise take a
/// connection that stays idle for a while for opaque TCP and never see HTTP on it.
pub async fn connect_primed(target: &Target, timeout: Duration) -> anyhow::Result<Conn> {
    let mut conn = connect(target).await?;
    match tokio::time::timeout(timeout, send(&mut conn, target)).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("first request to {}", target.addr))),
        Err(_) => bail!("first request to {} timed out", target.addr),
    }
}

/// Sends one request and reads the whole response body. Returns the status and the number
/// of body bytes; an error means the connection failed mid-request.
pub async fn send(conn: &mut Conn, target: &Target) -> Result<(u16, u64), hyper::Error> {
    let response = match conn {
        Conn::H1(s) => {
            s.ready().await?;
            s.send_request(target.request()).await?
        }
        Conn::H2(s) => {
            s.ready().await?;
            s.send_request(target.request()).await?
        }
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}
