//! HTTP/1.1 as the upstream client writes and reads it (RFC 9112): a request head and its
//! body's framing out; a response head, its body's framing and chunked bodies in.
//!
//! No I/O here, so that the parsers of what an upstream sends can be fuzzed on their own
//! (`fuzz/fuzz_targets/http1_response.rs`). Every malformed input is an [`Malformed`] error
//! naming what was wrong; nothing here panics on input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};

/// Longest response head (status line and headers) read before giving up; as long as the
/// far side's inbound accepts (hyper's default buffer is larger, but no sane head is).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head or a trailer section (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size, extensions and line end).
const MAX_CHUNK_LINE: usize = 4096;

/// What the upstream sent that is not HTTP/1.1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("the response head is not valid HTTP/1.1: {0}")]
    Head(httparse::Error),
    #[error("the response head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("the response has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the response's status {0} is not a valid status code (100 to 999)")]
    Status(u16),
    #[error("the response has a header that is not valid: {0}")]
    Header(String),
    #[error("the response's content-length is not valid: {0:?}")]
    ContentLength(String),
    #[error("the chunk size line is not valid: {0:?}")]
    ChunkSize(String),
    #[error("a chunk is not followed by a line end")]
    ChunkEnd,
    #[error("the trailers are not valid: {0}")]
    Trailers(httparse::Error),
    #[error("the trailers are longer than {MAX_HEAD} bytes")]
    TrailersTooLong,
    #[error("the request's content-length is not valid: {0:?}")]
    RequestContentLength(String),
}

/// How a request's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// How a response's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: ResponseFraming,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Appends the request line and headers of `head` to `out`, with a framing header the
/// headers lack: `content-length` for a body of known length (or an empty body of a method
/// that usually has one), `transfer-encoding: chunked` otherwise. `body_length` is the body's
/// exact length if known; `body_empty` that it has already ended. Hop-by-hop headers must have
/// been removed by the caller; the URI must be in origin form.
pub fn encode_request_head(
    head: &http::request::Parts,
    body_empty: bool,
    body_length: Option<u64>,
    out: &mut BytesMut,
) -> Result<RequestFraming, Malformed> {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(head.method.as_str().len() + target.len() + 32 + head.headers.len() * 32);
    out.put_slice(head.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut facts = HeaderFacts::default();
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH {
            facts.note(name, value.as_bytes());
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let framing = match facts.content_length {
        Some(Ok(length)) => RequestFraming::Length(length),
        Some(Err(())) => return Err(Malformed::RequestContentLength(values_text(&head.headers, header::CONTENT_LENGTH))),
        None if body_empty => {
            // A POST without a body still says so, as most servers want a length for it.
            if matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
                out.put_slice(b"content-length: 0\r\n");
                RequestFraming::Length(0)
            } else {
                RequestFraming::Empty
            }
        }
        None => match body_length {
            Some(length) => {
                out.put_slice(b"content-length: ");
                out.put_slice(itoa::Buffer::new().format(length).as_bytes());
                out.put_slice(b"\r\n");
                RequestFraming::Length(length)
            }
            None => {
                out.put_slice(b"transfer-encoding: chunked\r\n");
                RequestFraming::Chunked
            }
        },
    };
    out.put_slice(b"\r\n");
    Ok(framing)
}

/// Appends one chunk of a chunked body.
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return; // an empty chunk would end the body
    }
    let mut size = [0u8; 16];
    let digits = hex(data.len() as u64, &mut size);
    out.reserve(digits.len() + data.len() + 4);
    out.put_slice(digits);
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends the end of a chunked body, with its trailers if any.
pub fn encode_chunked_end(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

fn hex(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Parses a response head at the start of `buf`, answering a `method` request. When the head
/// is complete it is split off `buf` (the header values keep pointing into it, uncopied) and
/// returned; `None` means more bytes are needed.
pub fn parse_response_head(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Malformed> {
    // Uninitialized: zeroing a hundred headers for every response costs more than parsing.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(Malformed::HeadTooLong),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooManyHeaders),
        Err(e) => return Err(Malformed::Head(e)),
    };
    if length > MAX_HEAD {
        return Err(Malformed::HeadTooLong);
    }
    // httparse reads exactly three digits, so only 000 to 099 are refused here.
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Malformed::Status(code))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where each header's name and value are, so that the values can be cut out of the head
    // once it is split off the buffer.
    // (Offsets fit in u32: the head is at most MAX_HEAD long.)
    let start = buf.as_ptr() as usize;
    let mut places = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    for (place, h) in places.iter_mut().zip(parsed.headers.iter()) {
        let name = (h.name.as_ptr() as usize - start) as u32;
        let value = (h.value.as_ptr() as usize - start) as u32;
        *place = (name, name + h.name.len() as u32, value, value + h.value.len() as u32);
    }
    let head = buf.split_to(length).freeze();
    let (map, facts) = header_map(&head, &places[..count]).map_err(Malformed::Header)?;
    let framing = response_framing(status, method, &facts, &map)?;
    let keep_alive = framing != ResponseFraming::UntilClose
        && !(facts.transfer_encoding.is_some() && facts.content_length.is_some())
        && match version {
            Version::HTTP_10 => facts.keep_alive,
            _ => !facts.close,
        };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some(ResponseHead { response, framing, keep_alive }))
}

/// RFC 9112 §6.3.
fn response_framing(
    status: StatusCode,
    method: &Method,
    facts: &HeaderFacts,
    headers: &HeaderMap,
) -> Result<ResponseFraming, Malformed> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(ResponseFraming::Empty);
    }
    // Only chunked as the last coding delimits the body; anything else runs to the close.
    if let Some(chunked) = facts.transfer_encoding {
        return Ok(if chunked { ResponseFraming::Chunked } else { ResponseFraming::UntilClose });
    }
    Ok(match facts.content_length {
        Some(Err(())) => return Err(Malformed::ContentLength(values_text(headers, header::CONTENT_LENGTH))),
        Some(Ok(0)) => ResponseFraming::Empty,
        Some(Ok(length)) => ResponseFraming::Length(length),
        None => ResponseFraming::UntilClose,
    })
}

/// What a message's headers say about its body and its connection, noted in one pass as the
/// headers are read or written: looking each up in the map afterwards would hash every name
/// again, several times per message.
#[derive(Debug, Default)]
pub(crate) struct HeaderFacts {
    /// The content-length; `Err` when a value is not a number or the values disagree (a list
    /// of equal values, `42, 42`, is one length).
    pub content_length: Option<Result<u64, ()>>,
    /// A transfer-encoding was sent; whether the last coding of the last one is chunked.
    pub transfer_encoding: Option<bool>,
    /// The `Connection` tokens `close`, `keep-alive` and `upgrade`.
    pub close: bool,
    pub keep_alive: bool,
    pub connection_upgrade: bool,
    /// An `Upgrade` header was sent.
    pub upgrade: bool,
    pub expect_continue: bool,
    pub date: bool,
}

impl HeaderFacts {
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                self.content_length = match (self.content_length, parse_decimal(part.trim_ascii())) {
                    (None, Some(n)) => Some(Ok(n)),
                    (Some(Ok(m)), Some(n)) if m == n => Some(Ok(n)),
                    _ => Some(Err(())),
                };
            }
        } else if name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                self.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::UPGRADE {
            self.upgrade = true;
        } else if name == header::EXPECT {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name == header::DATE {
            self.date = true;
        }
    }
}

/// The headers of a head split off its buffer, from where each name and value is in it
/// (byte offsets, as `(name_from, name_to, value_from, value_to)`): the values point into the
/// head, uncopied. The facts are noted on the way; an error names the header.
pub(crate) fn header_map(head: &Bytes, places: &[(u32, u32, u32, u32)]) -> Result<(HeaderMap, HeaderFacts), String> {
    let mut map = HeaderMap::with_capacity(places.len());
    let mut facts = HeaderFacts::default();
    for &(name_from, name_to, value_from, value_to) in places {
        let (name_from, name_to, value_from, value_to) =
            (name_from as usize, name_to as usize, value_from as usize, value_to as usize);
        let name = HeaderName::from_bytes(&head[name_from..name_to])
            .map_err(|_| String::from_utf8_lossy(&head[name_from..name_to]).into_owned())?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_from..value_to))
            .map_err(|_| format!("{name}: the value has a forbidden byte"))?;
        facts.note(&name, value.as_bytes());
        map.append(name, value);
    }
    Ok((map, facts))
}

/// The values of `name` in `headers`, for an error message.
pub(crate) fn values_text(headers: &HeaderMap, name: HeaderName) -> String {
    let values: Vec<_> = headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    values.join(", ")
}

/// Digits only (no sign, no spaces), at most 18 of them so that it cannot overflow.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// What the chunked decoder made of the bytes it had.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The trailer section, after the last chunk; the body is over.
    Trailers(HeaderMap),
    /// The body is over.
    End,
    /// More bytes are needed.
    Incomplete,
}

/// Reads a chunked body (RFC 9112 §7.1) out of a buffer, one piece at a time.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Lines end in CRLF only, and a chunk line has no stray whitespace or control bytes:
    /// for a client's request body, where a lenient reading that a proxy in front of this
    /// one does not share would let a request hide inside another (smuggling).
    strict: bool,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// A decoder for a client's request body: see `strict`.
    pub fn strict() -> Self {
        ChunkedDecoder { state: ChunkState::default(), strict: true }
    }

    /// Takes the next piece of the body from the front of `buf`. Data is handed out as it
    /// arrives, without waiting for the whole chunk.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Malformed::ChunkSize(lossy(&buf[..64])));
                        }
                        return Ok(Decoded::Incomplete);
                    };
                    let line = &buf[..end];
                    let line = match line.strip_suffix(b"\r") {
                        Some(line) => line,
                        None if self.strict => return Err(Malformed::ChunkSize(lossy(line))),
                        None => line,
                    };
                    if self.strict && line.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
                        return Err(Malformed::ChunkSize(lossy(line)));
                    }
                    // Extensions (`;name=value`) are allowed and ignored.
                    let size = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = if self.strict { size.trim_ascii_end() } else { size.trim_ascii() };
                    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Malformed::ChunkSize(lossy(line)));
                    }
                    let size = size.iter().fold(0u64, |n, &d| n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0)));
                    buf.advance(end + 1);
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::Incomplete);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                ChunkState::DataEnd => match &buf[..] {
                    [b'\r', b'\n', ..] => {
                        buf.advance(2);
                        self.state = ChunkState::Size;
                    }
                    [b'\n', ..] if !self.strict => {
                        buf.advance(1);
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(Decoded::Incomplete),
                    _ => return Err(Malformed::ChunkEnd),
                },
                ChunkState::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut headers) {
                        Ok(httparse::Status::Complete((length, parsed))) => {
                            let mut trailers = HeaderMap::new();
                            for h in parsed.iter() {
                                let name = HeaderName::from_bytes(h.name.as_bytes())
                                    .map_err(|_| Malformed::Header(h.name.to_owned()))?;
                                let value = HeaderValue::from_bytes(h.value)
                                    .map_err(|_| Malformed::Header(format!("{name}: the value has a forbidden byte")))?;
                                trailers.append(name, value);
                            }
                            buf.advance(length);
                            self.state = ChunkState::Done;
                            return Ok(if trailers.is_empty() { Decoded::End } else { Decoded::Trailers(trailers) });
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(Malformed::TrailersTooLong),
                        Ok(httparse::Status::Partial) => return Ok(Decoded::Incomplete),
                        Err(e) => return Err(Malformed::Trailers(e)),
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<Option<ResponseHead>, Malformed> {
        parse_response_head(&mut BytesMut::from(text), &method)
    }

    #[test]
    fn request_head_carries_headers_and_chooses_framing() {
        let request = http::Request::post("/p?q=1").header("host", "a").body(()).unwrap().into_parts().0;
        let mut out = BytesMut::new();
        assert_eq!(encode_request_head(&request, false, Some(5), &mut out), Ok(RequestFraming::Length(5)));
        assert_eq!(&out[..], b"POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n");
        out.clear();
        assert_eq!(encode_request_head(&request, false, None, &mut out), Ok(RequestFraming::Chunked));
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
        out.clear();
        assert_eq!(encode_request_head(&request, true, Some(0), &mut out), Ok(RequestFraming::Length(0)));
        let get = http::Request::get("/").body(()).unwrap().into_parts().0;
        out.clear();
        assert_eq!(encode_request_head(&get, true, Some(0), &mut out), Ok(RequestFraming::Empty));
        assert_eq!(&out[..], b"GET / HTTP/1.1\r\n\r\n");
        let bad = http::Request::post("/").header("content-length", "1x").body(()).unwrap().into_parts().0;
        assert!(matches!(encode_request_head(&bad, false, None, &mut out), Err(Malformed::RequestContentLength(_))));
    }

    #[test]
    fn chunks_are_written_in_hex_with_trailers_at_the_end() {
        let mut out = BytesMut::new();
        encode_chunk(&[b'x'; 26], &mut out);
        encode_chunk(b"", &mut out);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        encode_chunked_end(Some(&trailers), &mut out);
        let expected = [&b"1a\r\n"[..], &[b'x'; 26], b"\r\n0\r\ngrpc-status: 0\r\n\r\n"].concat();
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn response_heads_say_how_their_body_ends_and_whether_the_connection_stays() {
        let parsed = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b\r\n\r\nbody", Method::GET).unwrap().unwrap();
        assert_eq!(parsed.framing, ResponseFraming::Length(12));
        assert!(parsed.keep_alive);
        assert_eq!(parsed.response.headers()["x-a"], "b");
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!(chunked.framing, ResponseFraming::Chunked);
        let close = head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n", Method::GET);
        assert!(!close.unwrap().unwrap().keep_alive);
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!((until_close.framing, until_close.keep_alive), (ResponseFraming::UntilClose, false));
        let old = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET).unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_kept = head("HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n", Method::GET);
        assert!(old_kept.unwrap().unwrap().keep_alive);
        let to_head = head("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", Method::HEAD).unwrap().unwrap();
        assert_eq!(to_head.framing, ResponseFraming::Empty);
        let smuggled = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", Method::GET);
        let smuggled = smuggled.unwrap().unwrap();
        assert_eq!((smuggled.framing, smuggled.keep_alive), (ResponseFraming::Chunked, false));
        assert_eq!(head("HTTP/1.1 200 OK\r\ncontent-le", Method::GET).unwrap().map(|h| h.framing), None);
    }

    #[test]
    fn bad_response_heads_are_named() {
        let two_lengths = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", Method::GET);
        assert!(matches!(two_lengths, Err(Malformed::ContentLength(_))));
        let same_twice = head("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!(same_twice.framing, ResponseFraming::Length(2));
        assert!(matches!(head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", Method::GET), Err(Malformed::ContentLength(_))));
        assert!(matches!(head("HTTP/1.1 999999 OK\r\n\r\n", Method::GET), Err(Malformed::Head(_))));
        assert_eq!(head("HTTP/1.1 042 OK\r\n\r\n", Method::GET).unwrap_err(), Malformed::Status(42));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x: y\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(head(&many, Method::GET).unwrap_err(), Malformed::TooManyHeaders);
        assert!(matches!(head("SSH-2.0-OpenSSH\r\n\r\n", Method::GET), Err(Malformed::Head(_))));
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long, Method::GET).unwrap_err(), Malformed::HeadTooLong);
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&wire[..split]);
            let (mut data, mut trailers, mut ended) = (Vec::new(), None, false);
            let mut fed = false;
            while !ended {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::Trailers(t) => (trailers, ended) = (Some(t), true),
                    Decoded::End => ended = true,
                    Decoded::Incomplete => {
                        assert!(!fed, "stuck at split {split}");
                        buf.extend_from_slice(&wire[split..]);
                        fed = true;
                    }
                }
            }
            assert_eq!(data, b"hello world", "split {split}");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
        }
    }

    #[test]
    fn a_clients_chunked_body_must_be_written_exactly() {
        let decode = |mut decoder: ChunkedDecoder, text: &str| -> Result<Vec<u8>, Malformed> {
            let mut buf = BytesMut::from(text);
            let mut body = Vec::new();
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::End | Decoded::Trailers(_) => return Ok(body),
                    Decoded::Incomplete => return Ok(body),
                }
            }
        };
        let exact = "5;name=value\r\nhello\r\n0\r\n\r\n";
        assert_eq!(decode(ChunkedDecoder::strict(), exact), Ok(b"hello".to_vec()));
        // What a lenient reader takes but a client's body may not carry: a bare LF after the
        // size or the data, a CR inside an extension, whitespace before the size.
        for text in ["5\nhello\r\n0\r\n\r\n", "5\r\nhello\n0\r\n\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n", " 5\r\nhello\r\n0\r\n\r\n"] {
            assert!(decode(ChunkedDecoder::strict(), text).is_err(), "{text:?} accepted");
            assert_eq!(decode(ChunkedDecoder::default(), text), Ok(b"hello".to_vec()), "{text:?} (upstream, lenient)");
        }
    }

    #[test]
    fn bad_chunks_are_named() {
        let decode = |wire: &str| {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(wire);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => return other,
                }
            }
        };
        assert!(matches!(decode("zz\r\n"), Err(Malformed::ChunkSize(_))));
        assert!(matches!(decode("ffffffffffffffffff\r\n"), Err(Malformed::ChunkSize(_))));
        assert_eq!(decode("2\r\nabX"), Err(Malformed::ChunkEnd));
        assert_eq!(decode("0\r\n\r\n"), Ok(Decoded::End));
        assert!(matches!(decode(&"1".repeat(MAX_CHUNK_LINE + 1)), Err(Malformed::ChunkSize(_))));
    }
}
