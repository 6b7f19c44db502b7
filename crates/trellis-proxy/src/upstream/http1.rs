//! HTTP/1.1 to an upstream endpoint, on connections the request's own task drives.
//!
//! hyper's HTTP/1.1 client gives every connection a task of its own: a request goes to it
//! through a channel, the response head comes back through another, and the body through a
//! third, each a wake-up of another task. Here a request borrows the connection instead: the
//! task serving the request writes it and reads the response head, and the response body
//! reads from the connection as the client's side consumes it, then hands the connection back
//! to the pool once the body has ended. A pooled connection has no task at all; whether the
//! upstream closed it meanwhile is checked when it is taken ([`Http1Connection::is_usable`]).
//!
//! Upgrades (WebSocket) and CONNECT stay on hyper, whose upgrade support they need.

pub mod codec;

use super::{BoxedIo, UpstreamError};
use crate::body::{Body, BoxError};
use bytes::{Buf, Bytes, BytesMut};
use codec::{ChunkedDecoder, Decoded, RequestFraming, ResponseFraming};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::cell::RefCell;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Bytes read from a connection at a time, at most: a TLS record's largest plaintext.
const READ_SIZE: usize = 16 * 1024;
/// The least a connection's read buffer grows by.
const READ_BUFFER: usize = 8 * 1024;

thread_local! {
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}
/// Request body bytes gathered before they are written: small bodies go out with the head in
/// one write (one TLS record), large ones in pieces of this size.
const WRITE_BATCH: usize = 64 * 1024;

/// Reads what `io` has and appends it to `buf`; `Ready(Ok(0))` at the end of the stream.
pub(crate) fn poll_read_into<IO: AsyncRead + Unpin + ?Sized>(
    io: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    // Through a buffer that stays initialized: handed memory it must treat as uninitialized,
    // TLS zeroes all of it first on every read (8 KiB or more), where a message is usually
    // smaller than that.
    READ_SCRATCH.with_borrow_mut(|scratch| {
        let mut read = ReadBuf::new(scratch);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let filled = read.filled();
        // Room for several messages at once: what was split off for earlier ones is
        // reclaimed once their bytes are dropped, rather than a new buffer each time.
        if buf.capacity() - buf.len() < filled.len() {
            buf.reserve(filled.len().max(READ_BUFFER));
        }
        buf.extend_from_slice(filled);
        Poll::Ready(Ok(filled.len()))
    })
}

/// One HTTP/1.1 connection to an upstream, idle between requests.
pub struct Http1Connection {
    io: BoxedIo,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

/// Where a connection goes when its response has been read to the end and it may carry
/// another request.
pub trait Home: Send + Unpin + 'static {
    fn put_back(&self, connection: Http1Connection);
}

/// A request that could not be answered.
pub struct Failed {
    pub error: UpstreamError,
    /// The upstream closed or reset the connection before any byte of a response: what a
    /// connection the far end closed just as the request went out looks like.
    pub unanswered: bool,
}

impl Http1Connection {
    pub fn new(io: BoxedIo) -> Self {
        Http1Connection { io, read_buf: BytesMut::new(), write_buf: BytesMut::new() }
    }

    /// Whether an idle connection can carry a request: the upstream has neither closed it
    /// nor sent anything unasked (e.g. a 408 before closing). Reads without waiting.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.read_buf.is_empty() && matches!(self.poll_read(&mut cx), Poll::Pending)
    }

    /// Reads what the connection has into `read_buf`.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_into(&mut self.io, cx, &mut self.read_buf)
    }

    /// Sends `request` (its URI in origin form, hop-by-hop headers removed) and returns the
    /// response, its body reading from this connection. `home` takes the connection back once
    /// the body has ended, if it may be used again.
    pub async fn send(mut self, request: Request<Body>, home: impl Home) -> Result<Response<Body>, Failed> {
        let (head, body) = request.into_parts();
        let framing = codec::encode_request_head(&head, body.is_end_stream(), body.size_hint().exact(), &mut self.write_buf)
            .map_err(|e| Failed { error: UpstreamError::RequestBody(e.into()), unanswered: false })?;
        let upload = (framing != RequestFraming::Empty).then(|| Upload::new(body, framing));
        let mut exchange = Exchange { connection: self, upload, flushed: false, write_failed: None, answered_early: false };
        let method = head.method;
        let mut answered = false;
        let head = poll_fn(|cx| exchange.poll_response_head(cx, &method, &mut answered)).await;
        let head = head.map_err(|error| {
            let unanswered = !answered && matches!(error, UpstreamError::Reset(_));
            Failed { error, unanswered }
        })?;
        let (parts, ()) = head.response.into_parts();
        let mut body = ResponseBody {
            exchange: Some(exchange),
            framing: match head.framing {
                ResponseFraming::Empty => Framing::Length(0),
                ResponseFraming::Length(n) => Framing::Length(n),
                ResponseFraming::Chunked => Framing::Chunked(ChunkedDecoder::default()),
                ResponseFraming::UntilClose => Framing::UntilClose,
            },
            keep_alive: head.keep_alive,
            home: Some(home),
        };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// A request on its connection, from its first byte written to its response's last byte read.
struct Exchange {
    connection: Http1Connection,
    /// The request body still to be sent; `None` once sent (or when there is none).
    upload: Option<Upload>,
    /// Everything written has been flushed.
    flushed: bool,
    /// Writing failed (the upstream stopped reading); a response may still be read.
    write_failed: Option<io::Error>,
    /// The response head came before the request was all sent.
    answered_early: bool,
}

struct Upload {
    body: Body,
    framing: RequestFraming,
    /// Bytes of a `Length` body not yet taken from the body.
    length_left: u64,
    body_done: bool,
}

enum UploadError {
    Body(BoxError),
    Io(io::Error),
}

impl Upload {
    fn new(body: Body, framing: RequestFraming) -> Self {
        let length_left = if let RequestFraming::Length(n) = framing { n } else { 0 };
        Upload { body, framing, length_left, body_done: false }
    }

    /// Moves body frames into `out` until it holds a batch, the body has nothing ready, or it
    /// has ended.
    fn fill(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Result<(), BoxError> {
        while !self.body_done && out.len() < WRITE_BATCH {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    self.end(None, out)?;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => match self.framing {
                    RequestFraming::Chunked => codec::encode_chunk(&data, out),
                    _ => {
                        self.length_left = self
                            .length_left
                            .checked_sub(data.len() as u64)
                            .ok_or("the request body is longer than its content-length")?;
                        out.extend_from_slice(&data);
                    }
                },
                Err(frame) => {
                    // Trailers: only a chunked body can carry them; otherwise they are dropped.
                    self.end(frame.trailers_ref(), out)?;
                }
            }
            if self.body.is_end_stream() && !self.body_done {
                self.end(None, out)?;
            }
        }
        Ok(())
    }

    fn end(&mut self, trailers: Option<&http::HeaderMap>, out: &mut BytesMut) -> Result<(), BoxError> {
        self.body_done = true;
        match self.framing {
            RequestFraming::Chunked => codec::encode_chunked_end(trailers, out),
            _ if self.length_left > 0 => {
                return Err(format!("the request body ended {} bytes short of its content-length", self.length_left).into());
            }
            _ => {}
        }
        Ok(())
    }
}

impl Exchange {
    /// Writes what there is to write of the request; `Ready(Ok)` once all of it is sent.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UploadError>> {
        let connection = &mut self.connection;
        loop {
            if let Some(upload) = &mut self.upload {
                upload.fill(cx, &mut connection.write_buf).map_err(UploadError::Body)?;
            }
            if !connection.write_buf.is_empty() {
                let written = ready!(Pin::new(&mut connection.io).poll_write(cx, &connection.write_buf))
                    .map_err(UploadError::Io)?;
                if written == 0 {
                    return Poll::Ready(Err(UploadError::Io(io::ErrorKind::WriteZero.into())));
                }
                connection.write_buf.advance(written);
                self.flushed = false;
                continue;
            }
            if !self.flushed {
                ready!(Pin::new(&mut connection.io).poll_flush(cx)).map_err(UploadError::Io)?;
                self.flushed = true;
            }
            return match &self.upload {
                Some(upload) if !upload.body_done => Poll::Pending, // waiting for the body
                _ => {
                    self.upload = None;
                    connection.write_buf.clear();
                    Poll::Ready(Ok(()))
                }
            };
        }
    }

    /// Sends more of the request if it can; a failed write leaves the response to be read.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        if self.upload.is_none() && self.flushed || self.write_failed.is_some() {
            return Ok(());
        }
        match self.poll_upload(cx) {
            Poll::Ready(Err(UploadError::Body(e))) => Err(e),
            Poll::Ready(Err(UploadError::Io(e))) => {
                self.write_failed = Some(e);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn poll_response_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        answered: &mut bool,
    ) -> Poll<Result<codec::ResponseHead, UpstreamError>> {
        self.poll_send(cx).map_err(UpstreamError::RequestBody)?;
        loop {
            let connection = &mut self.connection;
            if !connection.read_buf.is_empty() {
                *answered = true;
                match codec::parse_response_head(&mut connection.read_buf, method) {
                    Err(e) => return Poll::Ready(Err(UpstreamError::Reset(e.into()))),
                    // 100 Continue and other interim answers: the final one follows.
                    Ok(Some(head)) if head.response.status().is_informational() => {
                        if head.response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                            let e = "the upstream switched protocols on a request that did not ask to";
                            return Poll::Ready(Err(UpstreamError::Reset(e.into())));
                        }
                        continue;
                    }
                    Ok(Some(head)) => {
                        // Answered before the whole request was sent: the upstream may never
                        // read the rest, so the connection ends with this response.
                        self.answered_early = self.upload.is_some();
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) => {}
                }
            }
            match connection.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    let e = match self.write_failed.take() {
                        Some(e) => e.into(),
                        None => "the upstream closed the connection before a response".into(),
                    };
                    return Poll::Ready(Err(UpstreamError::Reset(e)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(UpstreamError::Reset(e.into()))),
                // The upstream stopped reading and has not answered: do not wait for an answer
                // that may never come.
                Poll::Pending => {
                    if let Some(e) = self.write_failed.take() {
                        return Poll::Ready(Err(UpstreamError::Reset(e.into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// A response body read from its connection as it is polled.
struct ResponseBody<H: Home> {
    /// `None` once the body has ended.
    exchange: Option<Exchange>,
    framing: Framing,
    keep_alive: bool,
    home: Option<H>,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream's response body: {0}")]
struct BodyError(String);

impl<H: Home> ResponseBody<H> {
    /// The body has ended: the connection goes home if it can carry another request.
    fn finish(&mut self) {
        let Some(exchange) = self.exchange.take() else { return };
        let sent = exchange.upload.is_none()
            && exchange.flushed
            && exchange.write_failed.is_none()
            && !exchange.answered_early;
        if self.keep_alive
            && sent
            && exchange.connection.read_buf.is_empty()
            && let Some(home) = self.home.take()
        {
            home.put_back(exchange.connection);
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.exchange = None;
        Poll::Ready(Some(Err(BodyError(why).into())))
    }
}

impl<H: Home> http_body::Body for ResponseBody<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(exchange) = this.exchange.as_mut() else { return Poll::Ready(None) };
        // The request may still be streaming (a server answering while it reads).
        if let Err(e) = exchange.poll_send(cx) {
            return this.fail(format!("the request body failed while the response was read: {e}"));
        }
        loop {
            let Some(exchange) = this.exchange.as_mut() else { return Poll::Ready(None) };
            let buf = &mut exchange.connection.read_buf;
            match &mut this.framing {
                Framing::Length(left) => {
                    if *left == 0 {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    if !buf.is_empty() {
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                        *left -= take as u64;
                        let data = buf.split_to(take).freeze();
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::Incomplete) => {}
                    Err(e) => return this.fail(e.to_string()),
                },
                Framing::UntilClose => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                }
            }
            match exchange.connection.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if let Framing::UntilClose = this.framing {
                        this.exchange = None;
                        return Poll::Ready(None);
                    }
                    return this.fail("the upstream closed the connection before the end of the body".into());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exchange.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.exchange, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Framing::Length(left)) => SizeHint::with_exact(*left),
            _ => SizeHint::default(),
        }
    }
}
