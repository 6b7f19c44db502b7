//! Small HTTP helpers for tests: free ports, waiting for a listener, and a
//! plain-text HTTP/1.1 / prior-knowledge HTTP/2 client (hyper_util's legacy
//! client, no TLS) that returns whole responses.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::BoxError;

/// Request body type of [`client`].
pub type ClientBody = BoxBody<Bytes, BoxError>;

/// Upper bound on one request in the helpers below, so a broken proxy fails
/// the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A fully read response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    /// A header value as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Ports [`free_port`] hands out: below Linux's ephemeral range (32768 and up by default),
/// so no outgoing connection's source port takes one between the test choosing it and a
/// server binding it.
const TEST_PORTS: std::ops::Range<u16> = 20000..32768;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts (prefer
/// `--listen 127.0.0.1:0` where the server supports it). It is reserved for as long as this
/// process lives with a `flock` on a file under the temp dir, so parallel tests in other
/// processes never get the same one; it comes from [`TEST_PORTS`], which outgoing
/// connections do not use (`bind(0)` picks from the range they do use, and one of the many
/// connections a test suite makes did take such a port before the server bound it).
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join("trellis-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let count = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    // Processes start at different points, so they seldom try the same files.
    let start = std::process::id().wrapping_mul(2_654_435_761) ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for i in 0..count {
        let port = TEST_PORTS.start + ((start.wrapping_add(i)) % count) as u16;
        let path = dir.join(port.to_string());
        let Ok(file) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) else { continue };
        if file.try_lock().is_err() {
            continue; // another test process holds it
        }
        // Something outside the tests may be listening there.
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        return port;
    }
    panic!("no free port in {TEST_PORTS:?} on 127.0.0.1");
}

/// Waits until a TCP connection to `addr` succeeds.
pub async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await;
        match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                bail!("{addr} not accepting connections after {timeout:?}: {e}")
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                bail!("{addr} not accepting connections after {timeout:?}: connect timed out")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Blocking [`wait_for_tcp`], for code outside a tokio runtime.
pub fn wait_for_tcp_blocking(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("{addr} not accepting connections after {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A fresh client (no pooling shared with other tests). `http2` selects
/// prior-knowledge HTTP/2 (h2c); otherwise HTTP/1.1.
pub fn client(http2: bool) -> Client<HttpConnector, ClientBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).http2_only(http2).build(connector)
}

/// A complete request body.
pub fn full_body(body: impl Into<Bytes>) -> ClientBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

/// A request body fed chunk by chunk through the returned sender; it ends
/// when the sender is dropped.
pub fn streaming_body() -> (mpsc::Sender<Bytes>, ClientBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// GET over HTTP/1.1.
pub async fn get(url: &str) -> anyhow::Result<HttpResponse> {
    request(Method::GET, url, &[], Bytes::new(), false).await
}

/// GET over prior-knowledge HTTP/2.
pub async fn get_h2(url: &str) -> anyhow::Result<HttpResponse> {
    request(Method::GET, url, &[], Bytes::new(), true).await
}

/// Sends one request (`http://` URLs only) and reads the whole response.
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    http2: bool,
) -> anyhow::Result<HttpResponse> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(full_body(body)).with_context(|| format!("building request for {url}"))?;
    send(req, http2).await
}

/// Sends a prepared request on a fresh [`client`] and reads the whole
/// response, within [`REQUEST_TIMEOUT`].
pub async fn send(req: Request<ClientBody>, http2: bool) -> anyhow::Result<HttpResponse> {
    let what = format!("{} {}", req.method(), req.uri());
    let fut = async {
        let resp = client(http2).request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(HttpResponse { status: parts.status, version: parts.version, headers: parts.headers, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what} timed out after {REQUEST_TIMEOUT:?}"))?
        .with_context(|| what)
}
