//! Protocol detection on accepted connections.
//!
//! Owns deciding, from the first bytes a client sends, whether a connection speaks
//! HTTP/1, HTTP/2 with prior knowledge, TLS (and which server name it asks for), or
//! something else; the async driver that reads just enough of those bytes under a
//! deadline; and [`Prefixed`], which hands the bytes it read back to whoever serves the
//! connection. Everything here parses untrusted input and must never panic;
//! [`classify`] and [`parse_sni`] are pure so they can be fuzzed (see `fuzz/`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a connection speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (the client sent the connection preface).
    Http2,
    /// A TLS ClientHello; `sni` is the server name it asked for, lowercased; `mesh` says
    /// its ALPN offers a Trellis mesh protocol (`trellis-...`): another proxy's mTLS.
    Tls {
        sni: Option<String>,
        mesh: bool,
    },
    Opaque,
}

/// The verdict of [`classify`] on the bytes seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classification {
    Known(Protocol),
    /// The bytes so far fit more than one protocol; read more.
    NeedMore,
}

/// Why [`parse_sni`] found no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("the TLS ClientHello is incomplete")]
    NeedMore,
    #[error("not a valid TLS ClientHello")]
    Malformed,
}

/// How detection ended, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Http1,
    Http2,
    Tls,
    Opaque,
    /// The client sent no decisive bytes in time (server-speaks-first protocols do that).
    Timeout,
    /// Configuration said the port is opaque, so detection was not run.
    DeclaredOpaque,
    /// The client closed before a decision.
    ClosedEarly,
}

impl Outcome {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Http1 => "http1",
            Outcome::Http2 => "http2",
            Outcome::Tls => "tls",
            Outcome::Opaque => "opaque",
            Outcome::Timeout => "timeout",
            Outcome::DeclaredOpaque => "declared_opaque",
            Outcome::ClosedEarly => "closed",
        }
    }

    fn of(protocol: &Protocol) -> Outcome {
        match protocol {
            Protocol::Http1 => Outcome::Http1,
            Protocol::Http2 => Outcome::Http2,
            Protocol::Tls { .. } => Outcome::Tls,
            Protocol::Opaque => Outcome::Opaque,
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token accepted as HTTP/1: covers every method in use (the longest
/// registered all-letter ones are WebDAV's); a longer run of capitals is not HTTP.
const MAX_METHOD_LEN: usize = 16;

/// TLS content type of handshake records.
const TLS_HANDSHAKE: u8 = 0x16;
/// Largest TLS plaintext record payload (RFC 8446 §5.1).
const TLS_MAX_RECORD: usize = 1 << 14;

/// Pure and fuzzable: classifies a connection from the first bytes its client sent.
///
/// - HTTP/2: exactly the 24-byte preface; a proper prefix of it needs more.
/// - TLS: a handshake record (0x16, version major 3) whose ClientHello is then parsed for
///   SNI, needing more until the hello is complete. A record that is not a valid hello is
///   still TLS (without SNI): it is relayed as is and the server will refuse it.
/// - HTTP/1: an uppercase method token (`GET`, ..., or any `[A-Z]{1,16}`), a space and
///   the first byte of a request target; anything that could still become that needs more.
/// - Anything else is opaque. An empty prefix needs more.
pub fn classify(prefix: &[u8]) -> Classification {
    use Classification::{Known, NeedMore};
    let Some(&first) = prefix.first() else {
        return NeedMore;
    };
    if first == TLS_HANDSHAKE {
        return match prefix.get(1) {
            None => NeedMore,
            Some(3) => match parse_hello(prefix) {
                Ok(HelloSummary { sni, mesh }) => Known(Protocol::Tls { sni, mesh }),
                Err(SniError::NeedMore) => NeedMore,
                Err(SniError::Malformed) => Known(Protocol::Tls { sni: None, mesh: false }),
            },
            Some(_) => Known(Protocol::Opaque),
        };
    }
    // Checked before the method rule, which would otherwise take `PRI *` for HTTP/1.
    let common = prefix.len().min(HTTP2_PREFACE.len());
    if prefix[..common] == HTTP2_PREFACE[..common] {
        return if common == HTTP2_PREFACE.len() { Known(Protocol::Http2) } else { NeedMore };
    }
    classify_http1(prefix)
}

fn classify_http1(prefix: &[u8]) -> Classification {
    use Classification::{Known, NeedMore};
    let method_len = prefix.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == 0 || method_len > MAX_METHOD_LEN {
        return Known(Protocol::Opaque);
    }
    match (prefix.get(method_len), prefix.get(method_len + 1)) {
        // Still all method letters: could become a method.
        (None, _) => NeedMore,
        (Some(b' '), None) => NeedMore,
        // Request targets start with `/`, `*`, a scheme or an authority: visible ASCII.
        (Some(b' '), Some(&target)) if (0x21..=0x7e).contains(&target) => Known(Protocol::Http1),
        _ => Known(Protocol::Opaque),
    }
}

/// Parses the server name from TLS handshake records carrying a ClientHello (RFC 8446
/// §4.1.2, RFC 6066 §3), reassembling a hello split over several records.
///
/// `Ok(None)`: a complete hello without SNI. `Err(NeedMore)`: the hello is truncated.
/// `Err(Malformed)`: not a valid hello. The name is lowercased, as names are compared
/// case-insensitively.
pub fn parse_sni(buf: &[u8]) -> Result<Option<String>, SniError> {
    parse_hello(buf).map(|hello| hello.sni)
}

/// What detection reads from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloSummary {
    pub sni: Option<String>,
    /// ALPN offers a `trellis-` protocol.
    pub mesh: bool,
}

/// Parses the ClientHello at the start of `buf`.
pub fn parse_hello(buf: &[u8]) -> Result<HelloSummary, SniError> {
    let hello = client_hello(buf)?;
    parse_client_hello(&hello).map_err(|_| SniError::Malformed)
}

/// The ClientHello handshake message body (after its 4-byte header), reassembled from as
/// many records as it spans. Borrowed when it sits in one record, the usual case.
fn client_hello(buf: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, SniError> {
    use std::borrow::Cow;
    let mut rest = buf;
    let mut message: Option<Vec<u8>> = None;
    // The first record's payload, until a second record is needed.
    let mut first: &[u8] = &[];
    loop {
        let payload = match next_record(&mut rest)? {
            Some(payload) => payload,
            // Reject a wrong handshake type as soon as its byte arrives, so that
            // `classify` need not wait for the whole record to call it malformed.
            None if first.is_empty() && buf.get(5).is_some_and(|&t| t != 1) => return Err(SniError::Malformed),
            None => return Err(SniError::NeedMore),
        };
        let assembled: &[u8] = match &mut message {
            None if first.is_empty() => {
                first = payload;
                first
            }
            None => {
                let mut joined = Vec::with_capacity(first.len() + payload.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(payload);
                message.insert(joined).as_slice()
            }
            Some(joined) => {
                joined.extend_from_slice(payload);
                joined.as_slice()
            }
        };
        // The handshake header: type (client_hello = 1) and a 24-bit length.
        if assembled[0] != 1 {
            return Err(SniError::Malformed);
        }
        if assembled.len() < 4 {
            continue;
        }
        let length = (usize::from(assembled[1]) << 16) | (usize::from(assembled[2]) << 8) | usize::from(assembled[3]);
        if assembled.len() < 4 + length {
            continue;
        }
        // Bytes past the hello belong to later messages; the hello ends at its length.
        return Ok(match message {
            None => Cow::Borrowed(&first[4..4 + length]),
            Some(mut joined) => {
                joined.truncate(4 + length);
                joined.drain(..4);
                Cow::Owned(joined)
            }
        });
    }
}

/// Splits the next complete handshake record off `rest`: `Ok(None)` when it is
/// incomplete, `Malformed` when it is not a handshake record.
fn next_record<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, SniError> {
    let buf = *rest;
    match buf.first() {
        None => return Ok(None),
        Some(&TLS_HANDSHAKE) => {}
        Some(_) => return Err(SniError::Malformed),
    }
    match buf.get(1) {
        None => return Ok(None),
        Some(3) => {}
        Some(_) => return Err(SniError::Malformed),
    }
    let (Some(&hi), Some(&lo)) = (buf.get(3), buf.get(4)) else {
        return Ok(None);
    };
    let length = usize::from(u16::from_be_bytes([hi, lo]));
    // Empty handshake records are forbidden (RFC 8446 §5.1), as are oversized ones.
    if length == 0 || length > TLS_MAX_RECORD {
        return Err(SniError::Malformed);
    }
    let Some(payload) = buf.get(5..5 + length) else {
        return Ok(None);
    };
    *rest = &buf[5 + length..];
    Ok(Some(payload))
}

/// Any inconsistency inside a complete hello.
struct Invalid;

/// A bounds-checked reader over a complete message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.0.len() < n {
            return Err(Invalid);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], Invalid> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Result<Reader<'a>, Invalid> {
        let n = self.u16()?;
        self.take(usize::from(n)).map(Reader)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_client_hello(body: &[u8]) -> Result<HelloSummary, Invalid> {
    let mut r = Reader(body);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Err(Invalid);
    }
    let ciphers = r.vec16()?;
    if ciphers.is_empty() || ciphers.0.len() % 2 != 0 {
        return Err(Invalid);
    }
    if r.vec8()?.is_empty() {
        return Err(Invalid); // compression methods: at least "null"
    }
    if r.is_empty() {
        return Ok(HelloSummary::default()); // a hello may end without extensions
    }
    let mut extensions = r.vec16()?;
    if !r.is_empty() {
        return Err(Invalid);
    }
    let mut sni = None;
    let mut mesh = false;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec16()?;
        // server_name; duplicates are forbidden, the first one counts.
        if kind == 0 && sni.is_none() {
            sni = Some(parse_server_name(&mut data)?);
        }
        // application_layer_protocol_negotiation: a list of 8-bit-length names.
        if kind == 16 {
            let mut names = data.vec16()?;
            while !names.is_empty() {
                mesh |= names.vec8()?.starts_with(b"trellis-");
            }
        }
    }
    Ok(HelloSummary { sni: sni.flatten(), mesh })
}

/// The `server_name` extension: a list of (type, name); the host_name entry is returned.
fn parse_server_name(data: &mut Reader<'_>) -> Result<Option<String>, Invalid> {
    let mut list = data.vec16()?;
    if !data.is_empty() || list.is_empty() {
        return Err(Invalid);
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?.0;
        if kind == 0 && host.is_none() {
            // DNS names in SNI are ASCII (IDNs as A-labels); no spaces, controls or NULs.
            if name.is_empty() || !name.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return Err(Invalid);
            }
            host = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
        }
    }
    Ok(host)
}

/// What undecided bytes are taken for when detection has to stop without a verdict:
/// a TLS record too long to buffer (or too slow to arrive) is still TLS, without SNI;
/// anything else is opaque.
fn undecided(prefix: &[u8]) -> Protocol {
    if prefix.len() >= 2 && prefix[0] == TLS_HANDSHAKE && prefix[1] == 3 {
        Protocol::Tls { sni: None, mesh: false }
    } else {
        Protocol::Opaque
    }
}

/// Reads from `io` until [`classify`] decides, `max_prefix` bytes were read, the client
/// closed, or `timeout` elapsed, and returns the protocol, the outcome, and the stream with
/// the bytes read put back in front.
///
/// - `max_prefix` reached: an unfinished TLS hello is `Tls { sni: None }`, anything else
///   `Opaque` (outcome `Tls` / `Opaque`).
/// - The client closed: `Opaque`, outcome `ClosedEarly`.
/// - Timeout: outcome `Timeout`, protocol `Opaque` (or `Tls { sni: None }` for an
///   unfinished hello). Server-speaks-first protocols (MySQL, SMTP) send nothing until
///   greeted, so they must not be stalled beyond the timeout.
///
/// Errors are those of reading `io`.
pub async fn detect<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    timeout: Duration,
    max_prefix: usize,
) -> io::Result<(Protocol, Outcome, Prefixed<IO>)> {
    // Most decisions take one read of a few hundred bytes; a hello may need more.
    let mut buf = BytesMut::with_capacity(max_prefix.min(2048));
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let (protocol, outcome) = loop {
        if let Classification::Known(protocol) = classify(&buf) {
            let outcome = Outcome::of(&protocol);
            break (protocol, outcome);
        }
        if buf.len() >= max_prefix {
            let protocol = undecided(&buf);
            let outcome = Outcome::of(&protocol);
            break (protocol, outcome);
        }
        let room = max_prefix - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(room.min(4096));
        }
        let mut limited = (&mut buf).limit(room);
        let read = io.read_buf(&mut limited);
        let result = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(result) => result,
                Err(_) => break (undecided(&buf), Outcome::Timeout),
            },
            // A timeout too large to represent never fires.
            None => read.await,
        };
        match result {
            Ok(0) => break (Protocol::Opaque, Outcome::ClosedEarly),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    Ok((protocol, outcome, Prefixed::new(buf.freeze(), io)))
}

pin_project_lite::pin_project! {
    /// An IO that yields `prefix` before reading from `inner`; writes go straight to inner.
    /// Works anywhere a tokio IO does, including hyper through `hyper_util::rt::TokioIo`.
    #[derive(Debug)]
    pub struct Prefixed<IO> {
        prefix: Bytes,
        #[pin]
        inner: IO,
    }
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Prefixed { prefix, inner }
    }

    /// The bytes not yet read back, and the inner IO.
    pub fn into_parts(self) -> (Bytes, IO) {
        (self.prefix, self.inner)
    }

    /// The bytes not yet read back.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.inner
    }
}

impl<IO: AsyncRead> AsyncRead for Prefixed<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.is_empty() {
            return this.inner.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Release the detection buffer rather than keep it for the connection's life.
            *this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for Prefixed<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A ClientHello captured from `openssl s_client -connect 127.0.0.1:PORT
    /// -servername foo.example` (OpenSSL 3.0) against a listener that only recorded it.
    const HELLO_SNI: &[u8] = &[
        0x16, 0x03, 0x01, 0x01, 0x38, 0x01, 0x00, 0x01, 0x34, 0x03, 0x03, 0x26, 0x77, 0x8b, 0x79, 0xcc, 0x54, 0x62,
        0x49, 0x5f, 0x84, 0x67, 0x95, 0x7e, 0x85, 0xed, 0x05, 0xa7, 0x43, 0xa7, 0xf3, 0x90, 0x17, 0xb4, 0xd3, 0x97,
        0x3b, 0xd2, 0xa2, 0xb4, 0x99, 0xcf, 0x82, 0x20, 0xff, 0x30, 0x78, 0xf4, 0x04, 0xe2, 0xc7, 0xe4, 0x9c, 0xd4,
        0x44, 0x31, 0x04, 0x72, 0xda, 0x1e, 0xd2, 0xcd, 0x7d, 0xf9, 0x1c, 0xd5, 0xcd, 0x79, 0x0c, 0x9c, 0xd9, 0x00,
        0x96, 0x51, 0xe9, 0xd2, 0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f,
        0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b,
        0xc0, 0x23, 0xc0, 0x27, 0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33,
        0x00, 0x9d, 0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xad,
        0x00, 0x00, 0x00, 0x10, 0x00, 0x0e, 0x00, 0x00, 0x0b, 0x66, 0x6f, 0x6f, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70,
        0x6c, 0x65, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d,
        0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04,
        0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28,
        0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04,
        0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02,
        0x05, 0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00,
        0x2d, 0x00, 0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xa3, 0x3a, 0x42,
        0xb9, 0x1e, 0x73, 0xc6, 0xfc, 0x10, 0x9e, 0x43, 0xf3, 0xa6, 0xae, 0x5b, 0x02, 0x26, 0x0c, 0xb3, 0x2f, 0xd8,
        0x21, 0x0c, 0x22, 0x6c, 0xcb, 0x59, 0x55, 0x91, 0x1f, 0xee, 0x42,
    ];

    /// The same with `-noservername`.
    const HELLO_NO_SNI: &[u8] = &[
        0x16, 0x03, 0x01, 0x01, 0x24, 0x01, 0x00, 0x01, 0x20, 0x03, 0x03, 0x75, 0xbf, 0xae, 0xa5, 0x17, 0x94, 0x61,
        0x13, 0xd0, 0x63, 0xe8, 0x0c, 0xc8, 0xe0, 0x13, 0xa6, 0xfa, 0x6c, 0x31, 0x48, 0x98, 0xe9, 0x3c, 0xe2, 0xae,
        0x31, 0x9b, 0x6a, 0x39, 0x0c, 0x5d, 0x9d, 0x20, 0x11, 0x1d, 0x55, 0xa7, 0x61, 0x88, 0x91, 0x54, 0xa3, 0x1e,
        0x52, 0x38, 0xaf, 0x5f, 0x91, 0xef, 0x4c, 0xbf, 0xe5, 0xea, 0x60, 0xdd, 0x12, 0x95, 0x4e, 0xf7, 0x34, 0x15,
        0x85, 0xa2, 0x79, 0x14, 0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f,
        0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b,
        0xc0, 0x23, 0xc0, 0x27, 0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33,
        0x00, 0x9d, 0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0x99,
        0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d, 0x00, 0x17,
        0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23,
        0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03,
        0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05,
        0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02,
        0x06, 0x02, 0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00,
        0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0x35, 0xa6, 0xd9, 0x65, 0x44,
        0x02, 0xd7, 0x4f, 0x43, 0x0e, 0x76, 0xe4, 0x63, 0x6f, 0x12, 0x19, 0x8a, 0xc6, 0x67, 0xdc, 0x74, 0x8f, 0xf2,
        0xc5, 0x7e, 0x3e, 0x9f, 0xc0, 0xb7, 0x89, 0x2a, 0x61,
    ];

    fn known(p: Protocol) -> Classification {
        Classification::Known(p)
    }

    fn tls(sni: Option<&str>) -> Protocol {
        Protocol::Tls { sni: sni.map(String::from), mesh: false }
    }

    /// Feeds `input` one byte at a time: NeedMore until `decided_at` bytes, then `want`.
    fn assert_decides_at(input: &[u8], decided_at: usize, want: Protocol) {
        for n in 0..decided_at {
            assert_eq!(
                classify(&input[..n]),
                Classification::NeedMore,
                "after {n} bytes of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        for n in decided_at..=input.len() {
            assert_eq!(
                classify(&input[..n]),
                known(want.clone()),
                "after {n} bytes of {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn http1_is_decided_at_the_first_target_byte() {
        assert_decides_at(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 5, Protocol::Http1);
        assert_decides_at(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", 9, Protocol::Http1);
        assert_decides_at(b"OPTIONS * HTTP/1.1\r\n\r\n", 9, Protocol::Http1);
        assert_decides_at(b"POST http://a/ HTTP/1.1\r\n", 6, Protocol::Http1);
        assert_decides_at(b"PROPFIND /dav HTTP/1.1\r\n", 10, Protocol::Http1);
        // A PRI that leaves the preface is an ordinary (if odd) method.
        assert_decides_at(b"PRI /x HTTP/1.1\r\n", 5, Protocol::Http1);
    }

    #[test]
    fn http2_needs_the_whole_preface() {
        let mut input = HTTP2_PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_decides_at(&input, 24, Protocol::Http2);
        // Diverging from the preface after `PRI * ` is HTTP/1 by the method rule.
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), known(Protocol::Http1));
    }

    #[test]
    fn tls_is_decided_when_the_hello_is_complete() {
        assert_decides_at(HELLO_SNI, HELLO_SNI.len(), tls(Some("foo.example")));
        assert_decides_at(HELLO_NO_SNI, HELLO_NO_SNI.len(), tls(None));
        assert_eq!(parse_sni(HELLO_SNI), Ok(Some("foo.example".into())));
        assert_eq!(parse_sni(HELLO_NO_SNI), Ok(None));
    }

    #[test]
    fn opaque_is_decided_at_once() {
        for input in [
            &b"\x00"[..],
            b"get / HTTP/1.1",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"*3\r\n$3\r\nSET\r\n",
            b"PING\r\n",
            b"GET  /",
            b"GET \r\n",
            b"\x16\x01",
            b"\x80\x2e\x01\x03\x01",
            b"ABCDEFGHIJKLMNOPQ",
        ] {
            let decided = (1..=input.len()).find(|&n| classify(&input[..n]) != Classification::NeedMore);
            assert_eq!(classify(input), known(Protocol::Opaque), "{:?}", String::from_utf8_lossy(input));
            assert!(decided.is_some());
        }
        assert_eq!(classify(b""), Classification::NeedMore);
        assert_eq!(classify(b"ABCDEFGHIJKLMNOP"), Classification::NeedMore, "16 letters may still be a method");
    }

    #[test]
    fn hello_split_over_records_is_reassembled() {
        // Re-frame the captured hello's handshake message as three records.
        let message = &HELLO_SNI[5..];
        let mut split = Vec::new();
        for part in [&message[..3], &message[3..100], &message[100..]] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(parse_sni(&split), Ok(Some("foo.example".into())));
        for n in 0..split.len() {
            assert_eq!(parse_sni(&split[..n]), Err(SniError::NeedMore), "{n}");
        }
        // Followed by unrelated bytes (a later record) still parses.
        split.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(parse_sni(&split), Ok(Some("foo.example".into())));
    }

    #[test]
    fn truncated_and_malformed_hellos() {
        for n in 0..HELLO_SNI.len() {
            assert_eq!(parse_sni(&HELLO_SNI[..n]), Err(SniError::NeedMore), "{n}");
        }
        let mut bad = HELLO_SNI.to_vec();
        bad[5] = 2; // ServerHello, not ClientHello
        assert_eq!(parse_sni(&bad), Err(SniError::Malformed));
        assert_eq!(parse_sni(&bad[..6]), Err(SniError::Malformed), "rejected as soon as the type byte arrives");
        assert_eq!(classify(&bad), known(tls(None)));

        // A handshake length shorter than the hello's contents.
        let mut bad = HELLO_SNI.to_vec();
        bad[8] = bad[8].wrapping_sub(10);
        assert_eq!(parse_sni(&bad), Err(SniError::Malformed));

        // The SNI list length overruns its extension.
        let at = find(HELLO_SNI, b"foo.example").unwrap();
        let mut bad = HELLO_SNI.to_vec();
        bad[at - 7] = 0xff; // high byte of server_name_list length
        assert_eq!(parse_sni(&bad), Err(SniError::Malformed));

        // A control character in the name.
        let mut bad = HELLO_SNI.to_vec();
        bad[at] = b'\n';
        assert_eq!(parse_sni(&bad), Err(SniError::Malformed));

        // Upper case is folded.
        let mut upper = HELLO_SNI.to_vec();
        upper[at] = b'F';
        assert_eq!(parse_sni(&upper), Ok(Some("foo.example".into())));

        // Oversized and empty records, and a non-handshake record in the middle.
        assert_eq!(parse_sni(b"\x16\x03\x01\x40\x01\x01"), Err(SniError::Malformed));
        assert_eq!(parse_sni(b"\x16\x03\x01\x00\x00"), Err(SniError::Malformed));
        assert_eq!(parse_sni(b"\x16\x03\x01\x00\x02\x01\x00\x17\x03\x03\x00\x01\x00"), Err(SniError::Malformed));
        // A handshake message too short to be a hello.
        assert_eq!(parse_sni(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03"), Err(SniError::Malformed));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap stand-in for the fuzzer: every truncation and single-byte corruption.
        for hello in [HELLO_SNI, HELLO_NO_SNI] {
            for i in 0..hello.len() {
                for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                    let mut bytes = hello.to_vec();
                    bytes[i] = v;
                    for n in [i + 1, bytes.len()] {
                        let _ = classify(&bytes[..n]);
                        let _ = parse_sni(&bytes[..n]);
                    }
                }
            }
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    async fn read_all<IO: AsyncRead + Unpin>(io: &mut IO) -> Vec<u8> {
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn detect_puts_the_bytes_back() {
        let (mut client, server) = tokio::io::duplex(64);
        let request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
        let writer = tokio::spawn(async move {
            for chunk in request.chunks(3) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (protocol, outcome, mut io) = detect(server, Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!((protocol, outcome), (Protocol::Http1, Outcome::Http1));
        let mut client = writer.await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut io).await, request);
        // Writes pass straight through.
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        let mut reply = [0u8; 27];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[tokio::test]
    async fn detect_reads_a_whole_hello() {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(HELLO_SNI).await.unwrap();
        let (protocol, outcome, io) = detect(server, Duration::from_secs(5), 16 * 1024).await.unwrap();
        assert_eq!((protocol, outcome), (tls(Some("foo.example")), Outcome::Tls));
        assert_eq!(io.prefix(), HELLO_SNI);
    }

    #[tokio::test]
    async fn silent_clients_time_out_as_opaque() {
        let (_client, server) = tokio::io::duplex(64);
        let (protocol, outcome, io) = detect(server, Duration::from_millis(50), 1024).await.unwrap();
        assert_eq!((protocol, outcome), (Protocol::Opaque, Outcome::Timeout));
        assert!(io.prefix().is_empty());
    }

    #[tokio::test]
    async fn undecided_bytes_are_kept_on_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        let (protocol, outcome, io) = detect(server, Duration::from_millis(50), 1024).await.unwrap();
        assert_eq!((protocol, outcome), (Protocol::Opaque, Outcome::Timeout));
        assert_eq!(io.prefix(), b"GE");
        // A slow hello is still TLS.
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&HELLO_SNI[..40]).await.unwrap();
        let (protocol, outcome, _) = detect(server, Duration::from_millis(50), 1024).await.unwrap();
        assert_eq!((protocol, outcome), (tls(None), Outcome::Timeout));
    }

    #[tokio::test]
    async fn max_prefix_bounds_the_read() {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(HELLO_SNI).await.unwrap();
        let (protocol, outcome, io) = detect(server, Duration::from_secs(5), 100).await.unwrap();
        assert_eq!((protocol, outcome), (tls(None), Outcome::Tls));
        assert_eq!(io.prefix(), &HELLO_SNI[..100]);
        let (_, inner) = io.into_parts();
        drop(inner);

        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"ABCDEFGH").await.unwrap();
        let (protocol, outcome, io) = detect(server, Duration::from_secs(5), 4).await.unwrap();
        assert_eq!((protocol, outcome), (Protocol::Opaque, Outcome::Opaque));
        assert_eq!(io.prefix(), b"ABCD");
    }

    #[tokio::test]
    async fn early_close_is_reported() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        drop(client);
        let (protocol, outcome, io) = detect(server, Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!((protocol, outcome), (Protocol::Opaque, Outcome::ClosedEarly));
        assert_eq!(io.prefix(), b"PRI * HTTP/2.0");
    }

    #[tokio::test]
    async fn prefixed_reads_in_small_pieces_then_from_inner() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"he");
        assert_eq!(io.prefix(), b"llo");
        assert_eq!(read_all(&mut io).await, b"llo world");
        let (prefix, _) = io.into_parts();
        assert!(prefix.is_empty());
    }

    #[tokio::test]
    async fn prefixed_serves_hyper() {
        use http_body_util::Full;
        use hyper::{Request, Response, body::Incoming};
        use hyper_util::rt::TokioIo;

        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (protocol, _, io) = detect(server, Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!(
                "pong {}",
                req.uri().path()
            )))))
        });
        let serve =
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service));
        let reply = String::from_utf8(read_all(&mut client).await).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("pong /ping"), "{reply}");
        serve.await.unwrap().unwrap();
    }
}
