//! What an HTTP/1.1 upstream sends, as the proxy's client reads it: the response head
//! parser and the chunked body decoder must never panic or loop, and a chunked body must
//! come out the same however its bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::upstream::http1::codec::{ChunkedDecoder, Decoded, parse_response_head};

fuzz_target!(|data: &[u8]| {
    let (split, data) = match data.split_first() {
        Some((&split, rest)) => (split as usize, rest),
        None => return,
    };
    for method in [http::Method::GET, http::Method::HEAD] {
        let mut buf = bytes::BytesMut::from(data);
        if let Ok(Some(_)) = parse_response_head(&mut buf, &method) {
            assert!(buf.len() < data.len(), "a parsed head consumed bytes");
        }
    }
    // The same bytes decoded as a chunked body, whole and in two reads.
    let whole = decode_chunked(&[data]);
    let cut = split.min(data.len());
    let parts = decode_chunked(&[&data[..cut], &data[cut..]]);
    if let (Ok(whole), Ok(parts)) = (&whole, &parts) {
        assert_eq!(whole, parts, "decoding depends on how the bytes were split");
    }
});

/// The body's bytes and whether it ended, feeding `reads` one at a time.
fn decode_chunked(reads: &[&[u8]]) -> Result<(Vec<u8>, bool), ()> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = bytes::BytesMut::new();
    let mut body = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf).map_err(|_| ())? {
                Decoded::Data(data) => {
                    assert!(!data.is_empty(), "an empty data frame");
                    body.extend_from_slice(&data);
                }
                Decoded::Trailers(_) | Decoded::End => return Ok((body, true)),
                Decoded::Incomplete => break,
            }
        }
    }
    Ok((body, false))
}
