//! HTTP/2 to an upstream endpoint, on the `h2` crate directly: one multiplexed connection
//! per endpoint, and each request a stream that the caller's own task opens and awaits.
//!
//! hyper's HTTP/2 client passes every request through a channel to its connection task and
//! spawns a task per request to wait for the response head. Between two proxies that is most
//! of the per-request cost, so here the connection task only drives the connection (frames,
//! flow control, keep-alive PINGs), and a task is spawned only for a request body that is
//! still streaming when the response head arrives (a client stream, e.g. gRPC).

use super::{BoxedIo, UpstreamError};
use crate::body::{Body, BoxError};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::{Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

/// How often an open connection is checked with a PING, and how long the answer may take
/// before the connection is given up as dead (a peer that vanished without a FIN or RST).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on one HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Http2Connection {
    sender: SendRequest<Bytes>,
    /// Set when the connection task ends: the next request opens a new connection.
    closed: Arc<AtomicBool>,
}

impl Http2Connection {
    /// Runs the HTTP/2 handshake on `io` and spawns the task that drives the connection.
    pub async fn handshake(io: BoxedIo, addr: SocketAddr) -> Result<Self, UpstreamError> {
        let (sender, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_send_buffer_size(1 << 20)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(reset)?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let task_closed = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                result = &mut connection => if let Err(e) = result {
                    tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
                },
                why = keep_alive(ping) => tracing::debug!(%addr, %why, "upstream HTTP/2 connection closed"),
            }
            task_closed.store(true, Ordering::Release);
        });
        Ok(Http2Connection { sender, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `request` (its URI carrying scheme and authority) on a new stream and returns the
    /// response head, its body streaming from the connection.
    pub async fn send(self, request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let mut sender = self.sender.ready().await.map_err(reset)?;
        let (mut head, body) = request.into_parts();
        let end_of_stream = body.is_end_stream();
        if !end_of_stream
            && !head.headers.contains_key(header::CONTENT_LENGTH)
            && let Some(length) = body.size_hint().exact()
        {
            head.headers.insert(header::CONTENT_LENGTH, length.into());
        }
        let (response, stream) = sender.send_request(Request::from_parts(head, ()), end_of_stream).map_err(reset)?;
        let (response, pipe) = if end_of_stream {
            (response.await.map_err(reset)?, None)
        } else {
            with_request_body(response, stream, body).await?
        };
        let (head, recv) = response.into_parts();
        let remaining = head.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        Ok(Response::from_parts(head, ResponseBody::boxed(recv, remaining, pipe)))
    }
}

/// Sends the request body while waiting for the response head. A body still streaming when
/// the head arrives goes on in a task of its own, which the response body stops when dropped.
async fn with_request_body(
    mut response: ResponseFuture,
    stream: SendStream<Bytes>,
    body: Body,
) -> Result<(Response<RecvStream>, Option<tokio::task::AbortHandle>), UpstreamError> {
    let mut pipe = Box::pin(pipe_request_body(body, stream));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        piped = &mut pipe => {
            if let Err(PipeError::Body(e)) = piped {
                return Err(UpstreamError::RequestBody(e));
            }
            // Sent in full (or the stream failed, which the response reports).
            return Ok((response.await.map_err(reset)?, None));
        }
    };
    let response = response.map_err(reset)?;
    Ok((response, Some(tokio::spawn(pipe).abort_handle())))
}

enum PipeError {
    /// Reading the client's body failed: the stream was reset.
    Body(BoxError),
    /// The stream or connection failed; the response says how.
    Stream,
}

/// Copies `body` onto `stream`, DATA frames within the peer's flow-control window, then the
/// trailers or an empty end-of-stream frame.
async fn pipe_request_body(mut body: Body, mut stream: SendStream<Bytes>) -> Result<(), PipeError> {
    loop {
        let frame = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(PipeError::Stream));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => return stream.send_data(Bytes::new(), true).map_err(|_| PipeError::Stream),
            Some(Err(e)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(PipeError::Body(e));
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end_of_stream = body.is_end_stream();
                if !data.is_empty() {
                    // Wait for some window, not all of it: h2 queues the rest and asks for it,
                    // and a claim on the whole chunk would hold connection window from others.
                    stream.reserve_capacity(1);
                    poll_fn(|cx| wait_for_capacity(&mut stream, cx)).await?;
                }
                stream.send_data(data, end_of_stream).map_err(|_| PipeError::Stream)?;
                if end_of_stream {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.reserve_capacity(0);
                    return stream.send_trailers(trailers).map_err(|_| PipeError::Stream);
                }
            }
        }
    }
}

fn wait_for_capacity(stream: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), PipeError>> {
    while stream.capacity() == 0 {
        match ready!(stream.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Poll::Ready(Err(PipeError::Stream)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Stops a request body's task when the response it belongs to is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body read from an HTTP/2 stream, returning flow-control window as it goes.
struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is left, for the size hint.
    remaining: Option<u64>,
    _pipe: Option<AbortOnDrop>,
}

impl ResponseBody {
    // Not `body::boxed`: its `Into` bound on the error type trips Send inference in the
    // async caller, and the error is already a `BoxError`.
    fn boxed(recv: RecvStream, remaining: Option<u64>, pipe: Option<tokio::task::AbortHandle>) -> Body {
        let body = ResponseBody { recv, data_done: false, remaining, _pipe: pipe.map(AbortOnDrop) };
        http_body_util::BodyExt::boxed_unsync(body)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut self.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// PINGs the peer every [`KEEP_ALIVE_INTERVAL`]; returns why the connection should close.
async fn keep_alive(ping: Option<h2::PingPong>) -> String {
    let Some(mut ping) = ping else { return std::future::pending().await };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no answer to a PING within {KEEP_ALIVE_TIMEOUT:?}"),
        }
    }
}

fn reset(e: h2::Error) -> UpstreamError {
    UpstreamError::Reset(e.into())
}
