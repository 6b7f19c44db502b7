//! HTTP test backend: HTTP/1.1 and prior-knowledge HTTP/2 on one port. It
//! reports what it received as JSON so tests can check what the mesh
//! forwarded, and has special paths for streaming, sized bodies, status
//! codes, WebSocket and request counting.
//!
//! | path          | response                                                    |
//! |---------------|-------------------------------------------------------------|
//! | `/echo`       | streams the request body back as it arrives                 |
//! | `/bytes/N`    | `N` bytes of [`bytes_pattern`]                              |
//! | `/status/N`   | the JSON report with status `N` (200..=599)                 |
//! | `/ws`         | WebSocket echo (HTTP/1.1 Upgrade), text and binary frames   |
//! | `/__stats`    | `{"requests": N}`: requests served so far, excluding these  |
//! | anything else | the JSON report with the configured status                  |
//!
//! The JSON report is `{"server", "method", "path" (with query), "version",
//! "headers": {lowercase name: value}, "body_bytes"}`; repeated headers are
//! joined with ", ". Every response carries `x-backend: NAME`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, EXPECT, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::BoxError;

type RespBody = BoxBody<Bytes, BoxError>;

/// Settings of the HTTP backend.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Reported as `server` and in the `x-backend` header.
    pub name: String,
    /// Status of every non-special path.
    pub status: StatusCode,
    /// Waited before answering any request but `/__stats`.
    pub delay: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { name: "backend".into(), status: StatusCode::OK, delay: Duration::ZERO }
    }
}

struct State {
    opts: HttpOptions,
    name_header: HeaderValue,
    requests: AtomicU64,
}

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, opts: HttpOptions) -> anyhow::Result<()> {
    let name_header = HeaderValue::from_str(&opts.name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
    let state = Arc::new(State { opts, name_header, requests: AtomicU64::new(0) });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually EMFILE or a connection reset before accept; keep serving.
                eprintln!("http backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            // Errors here are peers going away mid-request; nothing to do.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_owned();
    let head = req.method() == hyper::Method::HEAD;
    let mut resp = if path == "/__stats" {
        let n = state.requests.load(Ordering::SeqCst);
        json_response(StatusCode::OK, &json!({ "requests": n }))
    } else {
        state.requests.fetch_add(1, Ordering::SeqCst);
        if !state.opts.delay.is_zero() {
            tokio::time::sleep(state.opts.delay).await;
        }
        if path == "/echo" {
            echo(req).await
        } else if path == "/ws" {
            websocket(req)
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            match n.parse::<u64>() {
                Ok(n) => sized(n),
                Err(_) => error_response(StatusCode::BAD_REQUEST, "bad byte count"),
            }
        } else if let Some(code) = path.strip_prefix("/status/") {
            match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
                Some(c) => match StatusCode::from_u16(c) {
                    Ok(status) => report(state, req, status).await,
                    Err(_) => error_response(StatusCode::BAD_REQUEST, "bad status"),
                },
                None => error_response(StatusCode::BAD_REQUEST, "status must be 200..=599"),
            }
        } else {
            report(state, req, state.opts.status).await
        }
    };
    resp.headers_mut().insert("x-backend", state.name_header.clone());
    if head {
        // The headers a GET would get, no body (HTTP/2 forbids DATA on a HEAD response).
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    resp
}

/// The JSON description of the request. The body is read (and discarded)
/// first so keep-alive connections stay usable and `Expect: 100-continue`
/// is answered.
async fn report(state: &State, req: Request<Incoming>, status: StatusCode) -> Response<RespBody> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let value = json!({
        "server": state.opts.name,
        "method": parts.method.as_str(),
        "path": path,
        "version": version_str(parts.version),
        "headers": headers_json(&parts.headers),
        "body_bytes": body_bytes,
    });
    json_response(status, &value)
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(map)
}

fn json_response(status: StatusCode, value: &Value) -> Response<RespBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(status: StatusCode, msg: &str) -> Response<RespBody> {
    json_response(status, &json!({ "error": msg }))
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Streams the request body back frame by frame.
async fn echo(req: Request<Incoming>) -> Response<RespBody> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let expects_continue =
        req.headers().get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    let body: RespBody = if expects_continue {
        // Polling the body makes hyper send `100 Continue`; it must go out
        // before our final response headers or the client never sends the body.
        let first = body.frame().await;
        let rest = BodyStream::new(body);
        let stream = futures_util::stream::iter(first).chain(rest).map(|r| r.map_err(BoxError::from));
        BodyExt::boxed(StreamBody::new(stream))
    } else {
        body.map_err(BoxError::from).boxed()
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp
}

const PATTERN_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const CHUNK_LEN: usize = 64 * 1024;

static CHUNK: [u8; CHUNK_LEN] = {
    let mut a = [0u8; CHUNK_LEN];
    let mut i = 0;
    while i < CHUNK_LEN {
        a[i] = PATTERN_ALPHABET[i % 64];
        i += 1;
    }
    a
};

/// The first `n` bytes that `/bytes/N` returns: printable ASCII cycling
/// through 64 symbols, so a shifted or dropped chunk shows up in a compare.
pub fn bytes_pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| PATTERN_ALPHABET[i % 64]).collect()
}

/// A body of exactly `remaining` pattern bytes, produced lazily so a huge
/// `N` costs no memory; the exact size hint gives it a content-length.
struct PatternBody {
    remaining: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        // CHUNK_LEN is a multiple of the alphabet size, so every chunk
        // starts at the same phase and the pattern stays continuous.
        let n = self.remaining.min(CHUNK_LEN as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn sized(n: u64) -> Response<RespBody> {
    let mut resp = Response::new(PatternBody { remaining: n }.boxed());
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}

fn header_has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// Accepts an HTTP/1.1 WebSocket upgrade and echoes on the upgraded socket.
fn websocket(mut req: Request<Incoming>) -> Response<RespBody> {
    let headers = req.headers();
    if req.version() != Version::HTTP_11
        || !header_has_token(headers, CONNECTION, "upgrade")
        || !header_has_token(headers, UPGRADE, "websocket")
    {
        return error_response(StatusCode::BAD_REQUEST, "expected an HTTP/1.1 WebSocket upgrade");
    }
    let Some(key) = headers.get("sec-websocket-key") else {
        return error_response(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "bad accept key");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        ws_echo(ws).await;
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert("sec-websocket-accept", accept);
    resp
}

async fn ws_echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            // tungstenite answers pings and closes itself while we poll.
            Ok(_) => {}
            Err(_) => break,
        }
    }
}
