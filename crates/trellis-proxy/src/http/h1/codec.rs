//! HTTP/1.1 as the proxy's server side reads and writes it (RFC 9112): a client's request
//! head and its body's framing in, a response head out.
//!
//! No I/O here, so that the request parser can be fuzzed on its own
//! (`fuzz/fuzz_targets/http1_request.rs`). Every malformed request is a [`BadRequest`]
//! naming what was wrong and the status to answer with; nothing here panics on input.
//! Request bodies are delimited as the upstream client's responses are, with the same
//! chunked decoder.

use crate::upstream::http1::codec::{HeaderFacts, RequestFraming, header_map, values_text};
use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode, Uri, Version};

/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a request head.
pub const MAX_HEADERS: usize = 100;

/// What the client sent that is not an HTTP/1.1 request the proxy can carry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    #[error("the request head is not valid HTTP/1.1: {0}")]
    Head(httparse::Error),
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("the request has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the request method {0:?} is not valid")]
    Method(String),
    #[error("the request target {0:?} is not a valid URI")]
    Target(String),
    #[error("the request has a header that is not valid: {0}")]
    Header(String),
    #[error("the request's content-length is not valid: {0:?}")]
    ContentLength(String),
    #[error("the request's transfer-encoding {0:?} does not end in chunked, so its length is unknown")]
    TransferEncoding(String),
    #[error("an HTTP/1.0 request cannot have a transfer-encoding")]
    Http10TransferEncoding,
}

impl BadRequest {
    /// The status to answer with before closing the connection.
    pub fn status(&self) -> StatusCode {
        match self {
            BadRequest::HeadTooLong | BadRequest::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A parsed request head and what it says about its connection.
#[derive(Debug)]
pub struct RequestHead {
    pub request: Request<()>,
    pub framing: RequestFraming,
    /// The client allows another request on the connection after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The client asks to switch protocols (`Upgrade`, e.g. WebSocket) or to tunnel (CONNECT).
    pub upgrade: bool,
}

/// Parses a request head at the start of `buf`. When the head is complete it is split off
/// `buf` (the target and header values keep pointing into it, uncopied) and returned; `None`
/// means more bytes are needed.
pub fn parse_request_head(buf: &mut BytesMut) -> Result<Option<RequestHead>, BadRequest> {
    // Uninitialized: zeroing a hundred headers for every request costs more than parsing.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let length = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut headers) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(BadRequest::HeadTooLong),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadRequest::TooManyHeaders),
        Err(e) => return Err(BadRequest::Head(e)),
    };
    if length > MAX_HEAD {
        return Err(BadRequest::HeadTooLong);
    }
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| BadRequest::Method(method.to_owned()))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where the target and each header's name and value are, so that they can be cut out of
    // the head once it is split off the buffer. (Offsets fit in u32: the head is at most
    // MAX_HEAD long.)
    let start = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let from = (s.as_ptr() as usize - start) as u32;
        (from, from + s.len() as u32)
    };
    let target = at(parsed.path.unwrap_or_default().as_bytes());
    let mut places = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    for (place, h) in places.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (at(h.name.as_bytes()), at(h.value));
        *place = (name.0, name.1, value.0, value.1);
    }
    let head = buf.split_to(length).freeze();
    let target = head.slice(target.0 as usize..target.1 as usize);
    let uri = Uri::from_maybe_shared(target.clone())
        .map_err(|_| BadRequest::Target(String::from_utf8_lossy(&target).into_owned()))?;
    let (mut map, facts) = header_map(&head, &places[..count]).map_err(BadRequest::Header)?;
    if facts.transfer_encoding.is_some() {
        // HTTP/1.0 has no chunked coding: a front end that speaks it would read the body
        // differently (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Err(BadRequest::Http10TransferEncoding);
        }
        // The length is the chunks'; a content-length beside it must not travel on.
        map.remove(header::CONTENT_LENGTH);
    }

    let framing = request_framing(&method, &facts, &map)?;
    let upgrade = method == Method::CONNECT || version == Version::HTTP_11 && facts.upgrade && facts.connection_upgrade;
    // Both framings: a smuggling attempt or a broken intermediary; the connection must not
    // outlive this request.
    let both = facts.transfer_encoding.is_some() && facts.content_length.is_some();
    let keep_alive = !both
        && match version {
            Version::HTTP_10 => facts.keep_alive,
            _ => !facts.close,
        };
    let expect_continue = version == Version::HTTP_11 && framing != RequestFraming::Empty && facts.expect_continue;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    Ok(Some(RequestHead { request, framing, keep_alive, expect_continue, upgrade }))
}

/// RFC 9112 §6.3, for requests: chunked if it is the last transfer-coding (any other is an
/// error), else the content-length, else no body.
fn request_framing(method: &Method, facts: &HeaderFacts, headers: &HeaderMap) -> Result<RequestFraming, BadRequest> {
    match (facts.transfer_encoding, facts.content_length) {
        (Some(true), _) => Ok(RequestFraming::Chunked),
        (Some(false), _) => Err(BadRequest::TransferEncoding(values_text(headers, header::TRANSFER_ENCODING))),
        (None, Some(Err(()))) => Err(BadRequest::ContentLength(values_text(headers, header::CONTENT_LENGTH))),
        // A tunnel's bytes after CONNECT are not a body.
        (None, Some(Ok(n))) if n > 0 && method != Method::CONNECT => Ok(RequestFraming::Length(n)),
        (None, _) => Ok(RequestFraming::Empty),
    }
}

/// How a response's body is delimited on the wire to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delimited {
    /// No body is written (HEAD, 1xx, 204, 304, or an empty body).
    None,
    Length(u64),
    Chunked,
    /// By closing the connection (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// What the request being answered asked for.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    pub head: bool,
    pub http10: bool,
    pub keep_alive: bool,
}

/// How a response was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub body: Delimited,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Appends the status line and headers of `head` to `out`, with the body's framing: the
/// response's own `content-length` if it has a valid one, else the body's length if known,
/// else chunked (or to the close, for an HTTP/1.0 client). Its `transfer-encoding` is
/// replaced by this framing. `close` asks to end the connection after this response;
/// `date` is written when the response has no `Date`.
pub fn encode_response_head(
    head: &http::response::Parts,
    asked: Asked,
    body_empty: bool,
    body_length: Option<u64>,
    close: bool,
    date: &[u8],
    out: &mut BytesMut,
) -> Written {
    let status = head.status;
    out.reserve(64 + head.headers.len() * 40);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");

    let no_body = status.is_informational() || status == StatusCode::NO_CONTENT;
    // A valid content-length of the response's own, which a HEAD or 304 answer keeps; an
    // invalid one is dropped, and the body framed as if there were none.
    let mut declared = None;
    let mut facts = HeaderFacts::default();
    for (name, value) in &head.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let mut length = HeaderFacts::default();
            length.note(name, value.as_bytes());
            match length.content_length {
                Some(Ok(n)) if !no_body && declared.is_none() => declared = Some(n),
                _ => continue,
            }
        } else {
            facts.note(name, value.as_bytes());
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !status.is_informational() && !facts.date {
        out.put_slice(b"date: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
    }

    let body = if no_body || asked.head || status == StatusCode::NOT_MODIFIED {
        Delimited::None
    } else if let Some(length) = declared {
        Delimited::Length(length)
    } else {
        let length = if body_empty { Some(0) } else { body_length };
        match length {
            Some(length) => {
                out.put_slice(b"content-length: ");
                out.put_slice(itoa::Buffer::new().format(length).as_bytes());
                out.put_slice(b"\r\n");
                if length == 0 { Delimited::None } else { Delimited::Length(length) }
            }
            None if asked.http10 => Delimited::Close,
            None => {
                out.put_slice(b"transfer-encoding: chunked\r\n");
                Delimited::Chunked
            }
        }
    };
    let keep_alive = asked.keep_alive && !close && body != Delimited::Close && !facts.close;
    if !keep_alive {
        if !facts.close {
            out.put_slice(b"connection: close\r\n");
        }
    } else if asked.http10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
    Written { body, keep_alive }
}

/// A response the proxy writes itself when a request cannot be read: `status`, no body, and
/// the connection closes after it.
pub fn encode_refusal(status: StatusCode, date: &[u8], out: &mut BytesMut) {
    let (head, ()) = http::Response::builder().status(status).body(()).unwrap_or_default().into_parts();
    let asked = Asked { head: false, http10: false, keep_alive: false };
    encode_response_head(&head, asked, true, Some(0), true, date, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, BadRequest> {
        parse_request_head(&mut BytesMut::from(text))
    }

    #[test]
    fn a_request_head_is_read_with_its_framing_and_wishes() {
        let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: api\r\nX-Two: 1\r\nx-two: 2\r\n\r\nNEXT");
        let head = parse_request_head(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"NEXT", "only the head is taken");
        let r = &head.request;
        assert_eq!((r.method(), r.uri().to_string(), r.version()), (&Method::GET, "/a?b=1".into(), Version::HTTP_11));
        assert_eq!(r.headers()["host"], "api");
        assert_eq!(r.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(head.framing, RequestFraming::Empty);
        assert!(head.keep_alive && !head.expect_continue && !head.upgrade);

        let head = parse("POST / HTTP/1.1\r\ncontent-length: 5, 5\r\nexpect: 100-continue\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, RequestFraming::Length(5));
        assert!(head.expect_continue);
        let head = parse("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, RequestFraming::Chunked);
        // Both framings: chunked wins, the content-length does not travel on, and the
        // connection ends after this request.
        let head = parse("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.framing, RequestFraming::Chunked);
        assert!(!head.keep_alive);
        assert!(!head.request.headers().contains_key("content-length"));

        assert!(!parse("GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(parse("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").unwrap().unwrap().keep_alive);
        let ws = parse("GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: keep-alive, Upgrade\r\n\r\n");
        assert!(ws.unwrap().unwrap().upgrade);
        assert!(!parse("GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n").unwrap().unwrap().upgrade);
        let connect = parse("CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n\r\n").unwrap().unwrap();
        assert!(connect.upgrade);
        assert_eq!(connect.request.uri().authority().unwrap(), "db:5432");
        let absolute = parse("GET http://api:8080/x HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(absolute.request.uri().host(), Some("api"));
        assert!(parse("GET / HTTP/1.1\r\nhost: a\r\n").unwrap().is_none(), "incomplete");
    }

    #[test]
    fn a_malformed_request_is_refused_with_the_reason_and_status() {
        let cases: &[(&str, StatusCode, &str)] = &[
            ("GET / HTTP/9.9\r\n\r\n", StatusCode::BAD_REQUEST, "not valid HTTP/1.1"),
            ("GET / HTTP/1.1\r\nno colon\r\n\r\n", StatusCode::BAD_REQUEST, "not valid HTTP/1.1"),
            ("POST / HTTP/1.1\r\ncontent-length: 1, 2\r\n\r\n", StatusCode::BAD_REQUEST, "content-length"),
            ("POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n", StatusCode::BAD_REQUEST, "content-length"),
            ("POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n", StatusCode::BAD_REQUEST, "transfer-encoding"),
            ("GET http://[::1 HTTP/1.1\r\n\r\n", StatusCode::BAD_REQUEST, "target"),
            ("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n", StatusCode::BAD_REQUEST, "HTTP/1.0"),
        ];
        for (text, status, says) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.status(), *status, "{text:?}: {e}");
            assert!(e.to_string().contains(says), "{text:?}: {e}");
        }
        let mut many = String::from("GET / HTTP/1.1\r\n");
        (0..=MAX_HEADERS).for_each(|i| many.push_str(&format!("x-{i}: 1\r\n")));
        assert_eq!(parse(&many).unwrap_err(), BadRequest::TooManyHeaders);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&long).unwrap_err().status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    fn encode(response: http::Response<()>, asked: Asked, empty: bool, length: Option<u64>, close: bool) -> (String, Written) {
        let mut out = BytesMut::new();
        let written = encode_response_head(&response.into_parts().0, asked, empty, length, close, b"D", &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), written)
    }

    const GET11: Asked = Asked { head: false, http10: false, keep_alive: true };

    #[test]
    fn a_response_head_carries_its_headers_and_the_framing_it_needs() {
        let ok = || http::Response::builder().header("x-a", "1");
        let (text, w) = encode(ok().body(()).unwrap(), GET11, false, Some(3), false);
        assert_eq!(text, "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: D\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(w, Written { body: Delimited::Length(3), keep_alive: true });
        // Unknown length: chunked, replacing the response's own transfer-encoding.
        let (text, w) = encode(ok().header("transfer-encoding", "chunked").body(()).unwrap(), GET11, false, None, false);
        assert_eq!(text, "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: D\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(w.body, Delimited::Chunked);
        // An HTTP/1.0 client: to the close.
        let asked = Asked { http10: true, ..GET11 };
        let (text, w) = encode(ok().body(()).unwrap(), asked, false, None, false);
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
        assert_eq!(w, Written { body: Delimited::Close, keep_alive: false });
        // A HEAD answer keeps its content-length and has no body.
        let asked = Asked { head: true, ..GET11 };
        let (text, w) = encode(ok().header("content-length", "42").body(()).unwrap(), asked, true, Some(0), false);
        assert!(text.contains("content-length: 42\r\n"), "{text}");
        assert_eq!(w.body, Delimited::None);
        // 204 has no content-length; a declared date is kept, not added.
        let no_content = http::Response::builder().status(204).header("content-length", "0").header("date", "X");
        let (text, _) = encode(no_content.body(()).unwrap(), GET11, true, Some(0), false);
        assert_eq!(text, "HTTP/1.1 204 No Content\r\ndate: X\r\n\r\n");
        // Closing: said once.
        let (text, w) = encode(ok().header("connection", "close").body(()).unwrap(), GET11, true, Some(0), true);
        assert_eq!(text.matches("close").count(), 1, "{text}");
        assert!(!w.keep_alive);
        let (text, _) = encode(ok().body(()).unwrap(), GET11, true, Some(0), true);
        assert!(text.ends_with("content-length: 0\r\nconnection: close\r\n\r\n"), "{text}");
        // Switching protocols: the upgrade headers as given, no framing, no date.
        let switching = http::Response::builder().status(101).header("upgrade", "websocket").header("connection", "upgrade");
        let (text, w) = encode(switching.body(()).unwrap(), GET11, false, None, false);
        assert_eq!(text, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
        assert_eq!(w, Written { body: Delimited::None, keep_alive: true });
    }
}
