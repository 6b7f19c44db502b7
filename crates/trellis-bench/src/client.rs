//! The HTTP side: parsing the target URL, opening one keep-alive connection with hyper's
//! low-level client API (`http1::handshake`, or `http2::handshake` with prior knowledge), and
//! sending one request on it, reading the response body to the end.
//!
//! No pooling happens here; the driver (`run.rs`) owns the fixed set of connections.
//!
//! gRPC calls (`Grpc`) speak to the `trellis.testkit.v1.Echo` service of
//! `trellis-test-backend grpc`: a unary call, or a server stream of N replies (its latency
//! runs to the last message). The message is an `EchoRequest` encoded by hand, so the
//! generator needs no generated code; a call succeeds when its trailers say `grpc-status: 0`.

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
    pub grpc: Option<Grpc>,
}

/// Which Echo call to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grpc {
    Unary,
    /// A server stream of this many replies.
    ServerStream(u32),
}

impl Grpc {
    fn path(self) -> &'static str {
        match self {
            Grpc::Unary => "/trellis.testkit.v1.Echo/Unary",
            Grpc::ServerStream(_) => "/trellis.testkit.v1.Echo/ServerStream",
        }
    }

    /// A length-prefixed `EchoRequest { message, count }`.
    fn frame(self, payload: usize) -> Bytes {
        let mut message = Vec::with_capacity(payload + 16);
        message.push(0x0a); // field 1, length-delimited
        varint(&mut message, payload as u64);
        message.extend((0..payload).map(|i| b'a' + (i % 26) as u8));
        if let Grpc::ServerStream(count) = self {
            message.push(0x10); // field 2, varint
            varint(&mut message, count as u64);
        }
        let mut frame = Vec::with_capacity(message.len() + 5);
        frame.push(0); // not compressed
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        Bytes::from(frame)
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Target {
    /// Parses `url` (http only) and resolves its host once.
    pub async fn new(
        url: &str,
        body_size: Option<usize>,
        http2: bool,
        connect_timeout: Duration,
        grpc: Option<Grpc>,
    ) -> anyhow::Result<Target> {
        let mut absolute: Uri = url.parse().with_context(|| format!("invalid --url {url:?}"))?;
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
        let body = match grpc {
            // The call's path replaces the URL's; gRPC always travels over HTTP/2.
            Some(call) => {
                absolute = format!("http://{authority}{}", call.path()).parse()?;
                Some(call.frame(body_size.unwrap_or(0)))
            }
            None => body_size.map(|n| Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())),
        };
        let origin: Uri = absolute.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        let host = HeaderValue::from_str(authority.as_str())?;
        Ok(Target { addr, absolute, origin, host, body, http2: http2 || grpc.is_some(), connect_timeout, grpc })
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
        if self.grpc.is_some() {
            request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            request.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
        }
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
    let mut status = response.status().as_u16();
    // gRPC: a trailers-only answer carries grpc-status in the headers.
    let mut grpc_status = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        } else if let Some(trailers) = frame.trailers_ref() {
            grpc_status = trailers.get("grpc-status").cloned().or(grpc_status);
        }
    }
    // A failed gRPC call arrives as HTTP 200; count it as the server error it is.
    if target.grpc.is_some() && status == 200 && grpc_status.as_ref().is_none_or(|s| s != "0") {
        status = 500;
    }
    Ok((status, bytes))
}
