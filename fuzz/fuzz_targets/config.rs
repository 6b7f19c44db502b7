//! Configuration parsing on arbitrary text: `parse_documents` must return errors, never
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = trellis_api::parse_documents(text, "fuzz.yaml");
    }
});
