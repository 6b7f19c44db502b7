//! Trace context headers from arbitrary clients (`traceparent`, `b3`, `x-b3-*`): `extract`
//! must never panic, and whatever it accepts must survive `inject` → `extract` unchanged
//! (trace id and sampling decision), with the injected span as the new parent.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use trellis_proxy::telemetry::trace_context::{extract, inject};

const NAMES: [&str; 6] = ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // Up to six values separated by newlines, one per header name in order.
    for (name, value) in NAMES.iter().zip(data.split(|b| *b == b'\n')) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(*name, value);
        }
    }
    let Some(incoming) = extract(&headers) else { return };
    let span = [0x5a; 8];
    inject(&mut headers, &incoming.trace_id, &span, Some(&incoming.parent_span_id), incoming.sampled, incoming.b3);
    let again = extract(&headers).expect("an injected context is readable");
    assert_eq!(again.trace_id, incoming.trace_id);
    assert_eq!(again.parent_span_id, span);
    assert_eq!(again.sampled, incoming.sampled);
});
