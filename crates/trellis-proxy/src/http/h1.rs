//! Serving HTTP/1.1 to clients, one connection per task, one request at a time.
//!
//! The connection's task reads a request head, runs the request's handler itself, and writes
//! the response as its body arrives; a request body is read from the connection as the
//! handler's side polls it. Nothing crosses a channel or wakes another task, and a
//! keep-alive connection waiting for its next request holds only its buffers and a timer
//! that is pushed back, not remade, for each request. (hyper's server dispatcher made a
//! timer and a read buffer per request, and each connection's task several kilobytes.)
//!
//! A request that asks to switch protocols (WebSocket) carries an [`OnUpgrade`]; once the
//! response with status 101 is written, the connection itself is handed over through it.

pub mod codec;

use super::{DRAIN_IDLE_GRACE, HEADER_READ_TIMEOUT, Handler};
use crate::body::{self, Body, BoxError};
use crate::upstream::BoxedIo;
use crate::upstream::http1::codec::{ChunkedDecoder, Decoded, RequestFraming, encode_chunk, encode_chunked_end};
use crate::upstream::http1::poll_read_into;
use bytes::{Buf, Bytes, BytesMut};
use codec::{Asked, Delimited, RequestHead};
use http::{Method, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

/// Response bytes gathered before they are written: a small body goes out with its head in
/// one write, a large one in pieces of this size.
const WRITE_BATCH: usize = 64 * 1024;
/// The interim answer to a request that waits for it before sending its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// How long closing a connection may take (a TLS close_notify to a client that stopped
/// reading).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection closed with a request body unread still reads (and drops) what the
/// client sends, so that its response is not lost to a reset.
const LINGER: Duration = Duration::from_secs(2);

/// A client connection switched to another protocol after a 101 response.
pub struct Upgraded {
    pub io: BoxedIo,
    /// What the client sent after the request head, which belongs to the new protocol.
    pub read_ahead: Bytes,
}

/// Set on a request that asks to switch protocols: yields the connection once the
/// response that switches has been written.
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// The upgraded connection, or `None` if the response did not switch protocols.
    pub async fn upgraded(self) -> Option<Upgraded> {
        let receiver = self.0.lock().ok()?.take()?;
        receiver.await.ok()
    }
}

/// The connection as both the server loop and a streaming request body use it.
struct Wire<IO> {
    io: IO,
    read_buf: BytesMut,
    /// The client has closed its side.
    read_closed: bool,
    /// The current request's body has been read to its end (or it had none).
    body_done: bool,
    /// `100 Continue` still to be written before the request body is read.
    interim: &'static [u8],
    /// Written, but not yet flushed.
    interim_unflushed: bool,
}

type SharedWire<IO> = Arc<Mutex<Wire<IO>>>;

fn lock<IO>(wire: &SharedWire<IO>) -> MutexGuard<'_, Wire<IO>> {
    // Never held across an await, so never poisoned by a panic elsewhere; recover anyway.
    wire.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Wire<IO> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = ready!(poll_read_into(&mut self.io, cx, &mut self.read_buf))?;
        if read == 0 {
            self.read_closed = true;
        }
        Poll::Ready(Ok(read))
    }

    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.interim.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, self.interim))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.interim = &self.interim[written..];
            self.interim_unflushed = true;
        }
        // Flushed until done, even past a Pending: TLS may still hold the bytes.
        if self.interim_unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.interim_unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Why a connection stopped before its next request.
enum Stop {
    /// The client sent something that is not a request: answer with this status, then close.
    Refuse(codec::BadRequest),
    Io(io::Error),
}

/// What follows a response on its connection.
enum After {
    NextRequest,
    Close,
    /// Writing failed or the response was cut short: nothing more can be said.
    Abort,
    /// The response switched protocols: the connection goes to whoever waits on it.
    Upgrade(oneshot::Sender<Upgraded>),
}

struct Server<IO> {
    wire: SharedWire<IO>,
    write_buf: BytesMut,
    handler: Arc<Handler>,
    drain: watch::Receiver<bool>,
    /// The proxy is draining: the next response closes the connection.
    closing: bool,
    /// Fires when the client has taken too long to send a request head, or has been idle
    /// too long between requests.
    idle: Pin<Box<Sleep>>,
}

/// Serves HTTP/1.x on `io` until the client closes it, it fails, or the proxy drains.
pub(super) async fn serve<IO>(io: IO, handler: Arc<Handler>, drain: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire =
        Wire { io, read_buf: BytesMut::new(), read_closed: false, body_done: true, interim: b"", interim_unflushed: false };
    let mut server = Server {
        wire: Arc::new(Mutex::new(wire)),
        write_buf: BytesMut::new(),
        handler,
        drain,
        closing: false,
        idle: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
    };
    loop {
        let head = match server.next_head().await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(Stop::Refuse(bad)) => {
                tracing::debug!(error = %bad, peer = %server.handler.connection.peer, "refused a request that is not valid HTTP/1.1");
                let status = bad.status();
                with_date(|date| codec::encode_refusal(status, date, &mut server.write_buf));
                if poll_fn(|cx| server.poll_write_all(cx)).await.is_err() {
                    return;
                }
                break;
            }
            Err(Stop::Io(e)) => {
                tracing::debug!(error = %e, "client connection ended with an error");
                return;
            }
        };
        match server.exchange(head).await {
            After::NextRequest => continue,
            After::Close => break,
            After::Abort => return,
            After::Upgrade(to) => {
                let Server { wire, .. } = server;
                // Only this task holds the connection once an upgrade's (bodiless) request is done.
                let Ok(wire) = Arc::try_unwrap(wire) else {
                    tracing::debug!("an upgrade request's body was still being read: the connection is closed");
                    return;
                };
                let wire = wire.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = to.send(Upgraded { io: Box::new(wire.io), read_ahead: wire.read_buf.freeze() });
                return;
            }
        }
    }
    let shutdown = poll_fn(|cx| Pin::new(&mut lock(&server.wire).io).poll_shutdown(cx));
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, shutdown).await;
    // Closing with the client's bytes unread would reset the connection, and a reset can
    // destroy the response before the client reads it (an early 413 to a large upload).
    let unread = {
        let wire = lock(&server.wire);
        !wire.body_done || !wire.read_buf.is_empty()
    };
    if unread {
        let discard = poll_fn(|cx| {
            let mut wire = lock(&server.wire);
            loop {
                wire.read_buf.clear();
                if let Ok(0) | Err(_) = ready!(wire.poll_fill(cx)) {
                    return Poll::Ready(());
                }
            }
        });
        let _ = tokio::time::timeout(LINGER, discard).await;
    }
}

impl<IO> Server<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Waits for the next request head; `None` when the client closed the connection, was
    /// idle too long, or the proxy is draining and no request came in its grace time.
    async fn next_head(&mut self) -> Result<Option<RequestHead>, Stop> {
        let mut armed = false;
        loop {
            {
                let mut wire = lock(&self.wire);
                if !wire.read_buf.is_empty()
                    && let Some(head) = codec::parse_request_head(&mut wire.read_buf).map_err(Stop::Refuse)?
                {
                    return Ok(Some(head));
                }
                if wire.read_closed {
                    return Ok(None);
                }
            }
            if !armed {
                // Pushing a pending deadline later is cheap: the timer is not re-registered.
                self.idle.as_mut().reset(Instant::now() + HEADER_READ_TIMEOUT);
                armed = true;
            }
            let Server { wire, idle, drain, closing, .. } = self;
            tokio::select! {
                biased;
                read = poll_fn(|cx| lock(wire).poll_fill(cx)) => {
                    read.map_err(Stop::Io)?;
                }
                () = idle.as_mut() => return Ok(None),
                _ = drain.changed(), if !*closing => {
                    // A client (another proxy's pool) may be sending on this idle connection
                    // right now: answer what comes in the grace time, with `Connection: close`.
                    *closing = true;
                    if lock(wire).read_buf.is_empty() {
                        idle.as_mut().reset(Instant::now() + DRAIN_IDLE_GRACE);
                    }
                }
            }
        }
    }

    /// Handles one request and writes its response.
    async fn exchange(&mut self, head: RequestHead) -> After {
        let RequestHead { request, framing, keep_alive, expect_continue, upgrade } = head;
        let asked = Asked { head: request.method() == Method::HEAD, http10: request.version() == Version::HTTP_10, keep_alive };
        let connect = request.method() == Method::CONNECT;
        let body = self.request_body(framing, expect_continue);
        let mut request = request.map(|()| body);
        let mut upgrade_to = None;
        if upgrade {
            let (to, on) = oneshot::channel();
            request.extensions_mut().insert(OnUpgrade(Arc::new(Mutex::new(Some(on)))));
            upgrade_to = Some(to);
        }

        let response = self.handler.handle(request).await;

        let unread = {
            // A `100 Continue` not yet written must not follow the final answer; one cut short
            // is finished first.
            let mut wire = lock(&self.wire);
            if wire.interim.len() < CONTINUE.len() {
                self.write_buf.extend_from_slice(wire.interim);
            }
            wire.interim = b"";
            // The request body is dropped (only this task holds the connection) unfinished.
            Arc::strong_count(&self.wire) == 1 && !wire.body_done
        };
        let (head, body) = response.into_parts();
        let switching = upgrade_to.is_some() && head.status == StatusCode::SWITCHING_PROTOCOLS;
        // A tunnel the proxy does not carry ends with the answer; so does an interim status
        // that did not switch protocols (the client may think it did), and a request whose
        // body nobody will read any more (say so rather than close unannounced).
        let close = !switching
            && (self.closing
                || connect
                || head.status.is_informational()
                || unread
                || self.drain.has_changed().unwrap_or(true));
        let written = with_date(|date| {
            let (empty, length) = (body.is_end_stream(), body.size_hint().exact());
            codec::encode_response_head(&head, asked, empty, length, close, date, &mut self.write_buf)
        });
        drop(head);
        let mut out = Outgoing::new(written.body);
        let mut body = Some(body);
        let result = poll_fn(|cx| self.poll_write_response(cx, &mut body, &mut out)).await;
        drop(body);
        if let Err(e) = result {
            tracing::debug!(error = %e, "the response to a client could not be written whole");
            return After::Abort;
        }
        if switching && let Some(to) = upgrade_to {
            return After::Upgrade(to);
        }
        // A request body the handler left unread would be taken for the next request. (Its
        // response may still have been streaming while it was read, so this is only known now.)
        if written.keep_alive && lock(&self.wire).body_done { After::NextRequest } else { After::Close }
    }

    /// The request's body: none, the bytes already read, or a body that reads from the
    /// connection as it is polled.
    fn request_body(&mut self, framing: RequestFraming, expect_continue: bool) -> Body {
        let mut wire = lock(&self.wire);
        wire.body_done = true;
        let framing = match framing {
            RequestFraming::Empty => return body::empty(),
            RequestFraming::Length(n) if wire.read_buf.len() as u64 >= n => {
                return body::full(wire.read_buf.split_to(n as usize).freeze());
            }
            RequestFraming::Length(n) => BodyFraming::Length(n),
            RequestFraming::Chunked => BodyFraming::Chunked(ChunkedDecoder::strict()),
        };
        wire.body_done = false;
        if expect_continue {
            wire.interim = CONTINUE;
        }
        drop(wire);
        body::boxed(RequestBody { wire: Some(self.wire.clone()), framing })
    }

    /// Writes the response head already in `write_buf` and the body after it. The body is
    /// dropped as soon as it has ended, which records the request as finished, before its
    /// last bytes are written (as the next hop sees its end).
    fn poll_write_response(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Option<Body>,
        out: &mut Outgoing,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            if let Some(b) = body {
                out.gather(cx, b, &mut self.write_buf)?;
                if out.ended {
                    *body = None;
                }
            }
            if !self.write_buf.is_empty() {
                ready!(self.poll_write_all(cx))?;
                out.flushed = false;
                continue;
            }
            if !out.flushed {
                ready!(Pin::new(&mut lock(&self.wire).io).poll_flush(cx))?;
                out.flushed = true;
            }
            return if out.ended { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
    }

    /// Writes all of `write_buf` (without flushing).
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wire = lock(&self.wire);
        while !self.write_buf.is_empty() {
            let written = ready!(Pin::new(&mut wire.io).poll_write(cx, &self.write_buf))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_buf.advance(written);
        }
        self.write_buf.clear();
        Poll::Ready(Ok(()))
    }
}

/// A response body on its way out: how it is delimited and how far it has got.
struct Outgoing {
    delimited: Delimited,
    /// Bytes a `Length` body still owes.
    left: u64,
    ended: bool,
    flushed: bool,
}

impl Outgoing {
    fn new(delimited: Delimited) -> Self {
        let left = if let Delimited::Length(n) = delimited { n } else { 0 };
        Outgoing { delimited, left, ended: delimited == Delimited::None, flushed: false }
    }

    /// Moves what the body has ready into `out`, framed, until a batch is gathered.
    fn gather(&mut self, cx: &mut Context<'_>, body: &mut Body, out: &mut BytesMut) -> Result<(), BoxError> {
        while !self.ended && out.len() < WRITE_BATCH {
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => return self.end(None, out),
            };
            match frame.into_data() {
                Ok(data) => match self.delimited {
                    Delimited::Chunked => encode_chunk(&data, out),
                    Delimited::Length(_) => {
                        self.left = self
                            .left
                            .checked_sub(data.len() as u64)
                            .ok_or("the response body is longer than its content-length")?;
                        out.extend_from_slice(&data);
                    }
                    _ => out.extend_from_slice(&data),
                },
                // Trailers end a body; only a chunked one can carry them.
                Err(frame) => return self.end(frame.trailers_ref(), out),
            }
            if body.is_end_stream() {
                return self.end(None, out);
            }
        }
        Ok(())
    }

    fn end(&mut self, trailers: Option<&http::HeaderMap>, out: &mut BytesMut) -> Result<(), BoxError> {
        self.ended = true;
        match self.delimited {
            Delimited::Chunked => encode_chunked_end(trailers, out),
            Delimited::Length(_) if self.left > 0 => {
                return Err(format!("the response body ended {} bytes short of its content-length", self.left).into());
            }
            _ => {}
        }
        Ok(())
    }
}

enum BodyFraming {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// A request body read from the client's connection as it is polled.
struct RequestBody<IO> {
    /// `None` once the body has ended.
    wire: Option<SharedWire<IO>>,
    framing: BodyFraming,
}

#[derive(Debug, thiserror::Error)]
#[error("the client's request body: {0}")]
struct RequestBodyError(String);

impl<IO: AsyncRead + AsyncWrite + Unpin> RequestBody<IO> {
    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.wire = None;
        Poll::Ready(Some(Err(RequestBodyError(why).into())))
    }

    fn finish(&mut self, wire: &mut Wire<IO>) {
        wire.body_done = true;
        self.wire = None;
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> http_body::Body for RequestBody<IO> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(shared) = this.wire.clone() else { return Poll::Ready(None) };
        let mut wire = lock(&shared);
        if let Err(e) = ready!(wire.poll_interim(cx)) {
            return this.fail(format!("cannot write 100 Continue: {e}"));
        }
        loop {
            let buf = &mut wire.read_buf;
            match &mut this.framing {
                BodyFraming::Length(left) => {
                    if !buf.is_empty() {
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        *left -= take as u64;
                        let data = buf.split_to(take).freeze();
                        if *left == 0 {
                            this.finish(&mut wire);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyFraming::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.finish(&mut wire);
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish(&mut wire);
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::Incomplete) => {}
                    Err(e) => return this.fail(e.to_string()),
                },
            }
            match ready!(wire.poll_fill(cx)) {
                Ok(0) => return this.fail("the client closed the connection before the end of the body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(e.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.wire.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.wire, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), BodyFraming::Length(left)) => SizeHint::with_exact(*left),
            _ => SizeHint::default(),
        }
    }
}

/// Calls `f` with the current time as an HTTP date, formatted once a second per thread.
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_http_date() {
        let date = with_date(|d| String::from_utf8(d.to_vec()).unwrap());
        assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
        assert!(date.ends_with(" GMT"), "{date}");
    }
}
