//! Protocol detection on arbitrary client bytes: `classify` and `parse_sni` must never
//! panic, and must agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_proxy::detect::{Classification, Protocol, classify, parse_sni};

fuzz_target!(|data: &[u8]| {
    let verdict = classify(data);
    let sni = parse_sni(data);
    // A complete hello with a name is classified as TLS with that name.
    if let (Ok(Some(name)), Some(0x16)) = (&sni, data.first()) {
        assert_eq!(verdict, Classification::Known(Protocol::Tls { sni: Some(name.clone()) }));
    }
    // Once decided, more bytes never change the verdict (detection stops at the first
    // decision, so a later one would be ignored anyway; this checks it is stable).
    if matches!(verdict, Classification::Known(_)) {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x00 GET / \x16\x03");
        assert_eq!(classify(&longer), verdict);
    }
});
