//! `kind: Telemetry`: what the proxies of one namespace record beyond their metrics —
//! access logs and traces.
//!
//! Metrics are always on (they are cheap and `trellis stat` needs them). Access logs and
//! tracing cost more and are chosen per namespace: a proxy follows the Telemetry document of
//! its workload's namespace; without one, it follows its own `kind: Proxy` settings
//! (`accessLog`), and traces nothing.

use crate::{HttpUrl, Name};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    pub name: Name,
    #[serde(default = "crate::default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
}

/// One JSON line per request (fields: docs/observability.md), written where the proxy's
/// `accessLog` setting says (stdout when it says nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Log only requests that failed (5xx, a gRPC server error, or an answer of the proxy's own).
    #[serde(default)]
    pub errors_only: bool,
}

/// Spans over OTLP/HTTP (protobuf) to a collector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: HttpUrl,
    /// Share of new traces recorded, 0–100 (default 1). A request that arrives with a trace
    /// context follows the caller's decision instead.
    #[serde(default = "SamplingPercent::one")]
    pub sampling_percent: SamplingPercent,
}

fn yes() -> bool {
    true
}

/// A percentage, 0 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct SamplingPercent(pub f64);

impl SamplingPercent {
    fn one() -> SamplingPercent {
        SamplingPercent(1.0)
    }
}

impl<'de> Deserialize<'de> for SamplingPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(d)?;
        if !(0.0..=100.0).contains(&value) {
            return Err(serde::de::Error::custom(format!(
                "{value} is not a percentage: use 0 to 100 (e.g. 10 for one request in ten)"
            )));
        }
        Ok(SamplingPercent(value))
    }
}
