//! JSON Schema for the field types that parse themselves (their `Deserialize` is written by
//! hand, so the derived schema would describe their Rust shape instead of what users write).
//! The configuration reference (`reference.rs`) is generated from these schemas.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use std::borrow::Cow;

macro_rules! written_as {
    ($ty:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

written_as!(crate::Duration, "Duration", {
    "type": "string",
    "description": "A duration with a unit: `ms`, `s`, `m` or `h`, with an optional fraction, e.g. `250ms`, `1.5s`, `2m`."
});
written_as!(crate::HttpUrl, "HttpUrl", {
    "type": "string",
    "description": "`http://IP:PORT/PATH`: an address, not a name (proxies resolve no DNS), e.g. `http://127.0.0.1:9000/check`."
});
written_as!(crate::SpiffeId, "SpiffeId", {
    "type": "string",
    "description": "`spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT`; in policy rules a trailing `*` matches a prefix."
});
written_as!(crate::Name, "Name", {
    "type": "string",
    "description": "A DNS-label-like name: lowercase letters, digits and `-`, 1 to 63 characters, starting and ending with a letter or digit."
});
written_as!(crate::StringMatch, "StringMatch", {
    "type": "object",
    "description": "One of `{exact: TEXT}`, `{prefix: TEXT}` or `{regex: RE}` (a regex must match the whole value)."
});
written_as!(crate::ValueMatch, "ValueMatch", {
    "description": "A plain string (exact), one of `{exact|prefix|regex: TEXT}`, or `{present: true|false}`."
});
written_as!(crate::Regex, "Regex", {
    "type": "string",
    "description": "A regular expression (Rust `regex` syntax), checked when the document is read."
});
written_as!(crate::Percent, "Percent", {
    "type": "integer",
    "description": "An integer percentage, 0 to 100."
});
written_as!(crate::Ratio, "Ratio", {
    "description": "A percentage that may be fractional: `20%`, `0.5%`, or a number (of percent)."
});
written_as!(crate::Attempts, "Attempts", {
    "type": "integer",
    "description": "Tries in all, the first included: 1 to 10."
});
written_as!(crate::HashOn, "HashOn", {
    "type": "object",
    "description": "What consistent hashing keys on: `{header: NAME}`, `{cookie: NAME}` or `{sourceIp: true}`."
});
written_as!(crate::Weight, "Weight", {
    "type": "integer",
    "description": "An endpoint weight, 1 to 10000."
});
written_as!(crate::SamplingPercent, "SamplingPercent", {
    "type": "number",
    "description": "A percentage, 0 to 100, fractions allowed (e.g. `0.1`)."
});
