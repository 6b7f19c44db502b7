//! STUB (being replaced by the real detection module).
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol { Http1, Http2, Tls { sni: Option<String> }, Opaque }
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome { Http1, Http2, Tls, Opaque, Timeout, DeclaredOpaque, ClosedEarly }
impl Outcome { pub fn as_str(self) -> &'static str { match self { Outcome::Http1 => "http1", Outcome::Http2 => "http2", Outcome::Tls => "tls", Outcome::Opaque => "opaque", Outcome::Timeout => "timeout", Outcome::DeclaredOpaque => "declared_opaque", Outcome::ClosedEarly => "closed" } } }
pub struct Prefixed<IO> { prefix: Bytes, inner: IO }
impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() { let n = self.prefix.len().min(buf.remaining()); let b = self.prefix.split_to(n); buf.put_slice(&b); return Poll::Ready(Ok(())); }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> { Pin::new(&mut self.inner).poll_write(cx, b) }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> { Pin::new(&mut self.inner).poll_flush(cx) }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> { Pin::new(&mut self.inner).poll_shutdown(cx) }
}
pub async fn detect<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, timeout: Duration, _max: usize) -> std::io::Result<(Protocol, Outcome, Prefixed<IO>)> {
    let mut buf = vec![0u8; 24];
    let n = match tokio::time::timeout(timeout, io.read(&mut buf)).await { Ok(r) => r?, Err(_) => 0 };
    buf.truncate(n);
    let p = if buf.starts_with(b"PRI") { (Protocol::Http2, Outcome::Http2) } else if buf.first().is_some_and(|b| b.is_ascii_uppercase()) { (Protocol::Http1, Outcome::Http1) } else { (Protocol::Opaque, Outcome::Opaque) };
    Ok((p.0, p.1, Prefixed { prefix: Bytes::from(buf), inner: io }))
}
