//! What an HTTP/1.1 client sends, as the proxy's server side reads it: the request head
//! parser must never panic or loop, must take exactly the head off the buffer, and must say
//! the same whether the head came whole or in two reads. The response head written for
//! whatever it parsed must be well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::http::h1::codec::{Asked, encode_response_head, parse_request_head};

fuzz_target!(|data: &[u8]| {
    let (split, data) = match data.split_first() {
        Some((&split, rest)) => (split as usize, rest),
        None => return,
    };
    let mut whole = bytes::BytesMut::from(data);
    let parsed = parse_request_head(&mut whole);
    // The same bytes in two reads: incomplete after the first, the same result after both.
    let cut = split.min(data.len());
    let mut parts = bytes::BytesMut::from(&data[..cut]);
    let mut fed = cut;
    let first = parse_request_head(&mut parts);
    let second = match first {
        Ok(None) => {
            parts.extend_from_slice(&data[cut..]);
            fed = data.len();
            parse_request_head(&mut parts)
        }
        other => other,
    };
    match (&parsed, &second) {
        (Ok(Some(a)), Ok(Some(b))) => {
            let taken = (data.len() - whole.len(), fed - parts.len());
            assert_eq!(taken.0, taken.1, "the head taken depends on how the bytes were split");
            assert_eq!(a.request.uri(), b.request.uri());
            assert_eq!(a.request.headers(), b.request.headers());
            assert_eq!(a.framing, b.framing);
            assert!(whole.len() < data.len(), "a parsed head consumed bytes");
            // Answer it with its own headers: the head written must parse as a response.
            let (head, ()) = http::Response::builder().body(()).unwrap().into_parts();
            let mut head = head;
            head.headers = a.request.headers().clone();
            let asked = Asked { head: false, http10: false, keep_alive: a.keep_alive };
            let mut out = bytes::BytesMut::new();
            encode_response_head(&head, asked, false, None, false, b"D", &mut out);
            let mut headers = [httparse::EMPTY_HEADER; 256];
            let mut response = httparse::Response::new(&mut headers);
            assert!(matches!(response.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()), "{out:?}");
        }
        // Refused either way (a long prefix may be refused as too long where the whole has
        // an error further on), or incomplete either way.
        (Err(_), Err(_)) | (Ok(None), Ok(None)) => {}
        (a, b) => panic!("whole: {a:?}, in two reads: {b:?}"),
    }
});
