//! Protocol detection on arbitrary client bytes: `classify` and `parse_hello` must never
//! panic, and must agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::detect::{Classification, Protocol, classify, parse_hello};

fuzz_target!(|data: &[u8]| {
    let verdict = classify(data);
    let hello = parse_hello(data);
    // A complete hello with a name is classified as TLS with that name and ALPN verdict.
    if let (Ok(summary), Some(0x16)) = (&hello, data.first())
        && summary.sni.is_some()
    {
        let want = Protocol::Tls { sni: summary.sni.clone(), mesh: summary.mesh };
        assert_eq!(verdict, Classification::Known(want));
    }
    // Once decided, more bytes never change the verdict (detection stops at the first
    // decision, so a later one would be ignored anyway; this checks it is stable).
    if matches!(verdict, Classification::Known(_)) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x00 GET / \x16\x03");
        assert_eq!(classify(&longer), verdict);
    }
});
