//! Trace context propagation: W3C `traceparent`/`tracestate` and Zipkin B3 (the single
//! `b3` header and the `x-b3-*` headers).
//!
//! A proxy that traces reads the caller's context, makes its own span a child of it, and
//! passes its span on as the parent of the next hop, in W3C form and in the B3 form the
//! caller used (multi-header B3 when it used none), so applications that forward either
//! keep traces whole. A request without a context starts a trace, sampled at the configured
//! rate; the decision travels with the context so every later hop agrees with it.

use http::HeaderMap;
use http::header::HeaderValue;

use http::HeaderName;

// Names rather than strings: a lookup by name skips parsing it on every request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Form {
    None,
    Single,
    Multi,
}

/// The context a request arrived with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of ours.
    pub parent_span_id: [u8; 8],
    pub sampled: bool,
    pub b3: B3Form,
}

/// Reads the caller's context: W3C first, then B3. Malformed headers count as absent (a
/// new trace starts), as the W3C specification asks.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let b3 = if headers.contains_key(B3) {
        B3Form::Single
    } else if headers.contains_key(B3_TRACE_ID) {
        B3Form::Multi
    } else {
        B3Form::None
    };
    if let Some(context) = headers.get(TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes())) {
        return Some(Incoming { b3, ..context });
    }
    match b3 {
        B3Form::Single => headers.get(B3).and_then(|v| parse_b3_single(v.as_bytes())),
        B3Form::Multi => parse_b3_multi(headers),
        B3Form::None => None,
    }
}

/// `version-traceid-parentid-flags`, version 00 (later versions are read by the same
/// leading fields, as the specification allows).
fn parse_traceparent(value: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) {
        return None;
    }
    let trace_id = hex16(trace)?;
    let parent_span_id = hex8(span)?;
    if flags.len() != 2 || !is_lower_hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming { trace_id, parent_span_id, sampled: flags & 1 == 1, b3: B3Form::None })
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`; a lone sampling state (`0`, `1`,
/// `d`) carries no ids.
fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let parent_span_id = hex8(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    Some(Incoming { trace_id, parent_span_id, sampled, b3: B3Form::Single })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let text = |name: HeaderName| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::trim);
    let trace_id = b3_trace_id(text(B3_TRACE_ID)?)?;
    let parent_span_id = hex8(text(B3_SPAN_ID)?)?;
    let sampled = text(B3_FLAGS) == Some("1") || !matches!(text(B3_SAMPLED), Some("0" | "false"));
    Some(Incoming { trace_id, parent_span_id, sampled, b3: B3Form::Multi })
}

/// B3 trace ids are 64 or 128 bits; a 64-bit id is the low half of a 128-bit one.
fn b3_trace_id(text: &str) -> Option<[u8; 16]> {
    match text.len() {
        32 => hex16(text),
        16 => {
            let low = hex8(text)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    // All-zero ids are invalid in both formats.
    out.iter().any(|b| *b != 0).then_some(())
}

fn hex16(text: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    hex_into(text, &mut id)?;
    Some(id)
}

fn hex8(text: &str) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    hex_into(text, &mut id)?;
    Some(id)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Random non-zero ids.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Writes the context for the next hop: our span (`span_id`) is its parent. W3C always;
/// B3 in the form the caller used, multi-header when it used none. `tracestate` passes
/// through untouched.
pub fn inject(
    headers: &mut HeaderMap,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
    parent: Option<&[u8; 8]>,
    sampled: bool,
    b3: B3Form,
) {
    let (trace, span) = (hex(trace_id), hex(span_id));
    let flag = if sampled { "01" } else { "00" };
    if let Ok(value) = HeaderValue::from_str(&format!("00-{trace}-{span}-{flag}")) {
        headers.insert(TRACEPARENT, value);
    }
    match b3 {
        B3Form::Single => {
            let mut value = format!("{trace}-{span}-{}", if sampled { "1" } else { "0" });
            if let Some(parent) = parent {
                value.push('-');
                value.push_str(&hex(parent));
            }
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(B3, value);
            }
        }
        B3Form::Multi | B3Form::None => {
            let set = |headers: &mut HeaderMap, name: HeaderName, value: String| {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            };
            set(headers, B3_TRACE_ID, trace);
            set(headers, B3_SPAN_ID, span);
            match parent {
                Some(parent) => set(headers, B3_PARENT_SPAN_ID, hex(parent)),
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
            set(headers, B3_SAMPLED, if sampled { "1" } else { "0" }.to_string());
            headers.remove(B3_FLAGS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn reads_w3c_and_rejects_malformed() {
        let h = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        let c = extract(&h).unwrap();
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.parent_span_id), "00f067aa0ba902b7");
        assert!(c.sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(extract(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        let unsampled = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]);
        assert!(!extract(&unsampled).unwrap().sampled);
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let c = extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]))
            .unwrap();
        assert_eq!(hex(&c.parent_span_id), "e457b5a2e4d86bd1");
        assert_eq!(c.b3, B3Form::Single);
        let c = extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(hex(&c.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert!(!c.sampled);
        assert_eq!(c.b3, B3Form::Multi);
        assert_eq!(extract(&headers(&[("b3", "0")])), None, "a lone sampling state carries no ids");
    }

    #[test]
    fn injects_both_forms() {
        let mut h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        let trace = hex16("80f198ee56343ba864fe8b2a57d3eff7").unwrap();
        let span = hex8("1111111111111111").unwrap();
        let parent = hex8("e457b5a2e4d86bd1").unwrap();
        inject(&mut h, &trace, &span, Some(&parent), true, B3Form::Single);
        assert_eq!(h["traceparent"], "00-80f198ee56343ba864fe8b2a57d3eff7-1111111111111111-01");
        assert_eq!(h["b3"], "80f198ee56343ba864fe8b2a57d3eff7-1111111111111111-1-e457b5a2e4d86bd1");
        let mut h = HeaderMap::new();
        inject(&mut h, &trace, &span, None, false, B3Form::None);
        assert_eq!(h["x-b3-spanid"], "1111111111111111");
        assert_eq!(h["x-b3-sampled"], "0");
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
