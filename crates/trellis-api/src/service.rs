//! `kind: Service` and `kind: Endpoints`: a service's behaviour and its instances.
//!
//! Range checks live in the field types' `Deserialize` impls so that an out-of-range value is
//! reported at its own line and column.

use crate::Duration;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// One service's whole behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: Name,
    #[serde(default = "crate::default_namespace")]
    pub namespace: String,
    /// Virtual addresses that identify the service to transparently captured traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Extra authorities (Host / :authority) that name this service, besides
    /// `NAME`, `NAME.NAMESPACE` and `NAME.NAMESPACE.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Named groups of endpoints, selected by labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Tried in order; the first whose match holds handles the request. A request matching no
    /// route goes to the whole service (all endpoints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub resilience: Resilience,
    /// How HTTP/1.1 requests travel from a Trellis proxy to this service's `meshed`
    /// endpoints (HTTP/2 and gRPC always stay HTTP/2).
    #[serde(default, skip_serializing_if = "MeshHttp1::is_keep")]
    pub mesh_http1: MeshHttp1,
}

/// How HTTP/1.1 crosses the hop between two Trellis proxies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MeshHttp1 {
    /// The default: as HTTP/1.1, on pooled keep-alive connections, one per request in
    /// flight; the least work per request.
    #[default]
    Keep,
    /// Multiplexed over one HTTP/2 connection per endpoint and turned back into HTTP/1.1 by
    /// the far proxy: fewer connections and TLS handshakes when many requests are in flight
    /// at once, for more CPU per request.
    Multiplex,
}

impl MeshHttp1 {
    fn is_keep(&self) -> bool {
        *self == MeshHttp1::Keep
    }
}

/// A DNS-label-like name: lowercase letters, digits and `-`, 1 to 63 characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(pub String);

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if valid {
            Ok(Name(name))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{name}` is not a valid name; use 1 to 63 lowercase letters, digits or `-`, not starting or ending with `-`"
            )))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What a port carries. `http` means "detect": HTTP/1.1 and HTTP/2 are both accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    /// Opaque TCP: no detection, no HTTP features (server-speaks-first protocols go here).
    Tcp,
    /// TLS originated by the application: routed by SNI, never terminated.
    Tls,
}

/// A route: which requests (`match`) and what to do with them.
// The optional actions are boxed: most routes set none of them, and a proxy holds every route
// of its share (unboxed, a route took 728 bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Used in metrics and logs; defaults to `route-N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Weighted destinations. Empty means the whole service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Box<Retries>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<HeaderRewrite>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<HeaderRewrite>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<Rewrite>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Box<Redirect>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Box<DirectResponse>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<Mirror>>,
}

/// All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatch>,
}

/// How a string is compared, written `{exact: ...}`, `{prefix: ...}` or `{regex: ...}`.
/// Regexes must match the whole value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Form {
            exact: Option<String>,
            prefix: Option<String>,
            regex: Option<Regex>,
        }
        let form = Form::deserialize(d)?;
        match (form.exact, form.prefix, form.regex) {
            (Some(s), None, None) => Ok(StringMatch::Exact(s)),
            (None, Some(s), None) => Ok(StringMatch::Prefix(s)),
            (None, None, Some(r)) => Ok(StringMatch::Regex(r)),
            _ => Err(serde::de::Error::custom("expected exactly one of `exact`, `prefix`, `regex`")),
        }
    }
}

/// A header or query value condition: a plain string means exact, or one of
/// `{exact|prefix|regex: ...}`, or `{present: true|false}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ValueMatch {
    Exact(String),
    Match(StringMatch),
    Present { present: bool },
}

impl<'de> Deserialize<'de> for ValueMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Form {
            exact: Option<String>,
            prefix: Option<String>,
            regex: Option<Regex>,
            present: Option<bool>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plain(String),
            Form(Form),
        }
        let wrong =
            || serde::de::Error::custom("expected a string, or exactly one of `exact`, `prefix`, `regex`, `present`");
        match Either::deserialize(d).map_err(|_: D::Error| wrong())? {
            Either::Plain(s) => Ok(ValueMatch::Exact(s)),
            Either::Form(f) => match (f.exact, f.prefix, f.regex, f.present) {
                (Some(s), None, None, None) => Ok(ValueMatch::Match(StringMatch::Exact(s))),
                (None, Some(s), None, None) => Ok(ValueMatch::Match(StringMatch::Prefix(s))),
                (None, None, Some(r), None) => Ok(ValueMatch::Match(StringMatch::Regex(r))),
                (None, None, None, Some(p)) => Ok(ValueMatch::Present { present: p }),
                _ => Err(wrong()),
            },
        }
    }
}

/// A regular expression, checked when the document is read.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct Regex(pub String);

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        regex::Regex::new(&text).map_err(|e| {
            // The regex crate's message is a multi-line diagram; its last line says what is wrong.
            let shown = e.to_string();
            let reason = shown.lines().last().unwrap_or_default().trim_start_matches("error: ");
            serde::de::Error::custom(format!("`{text}` is not a valid regular expression: {reason}"))
        })?;
        Ok(Regex(text))
    }
}

/// Where a route sends traffic: a subset of this service, another service, or both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Another service, `NAME` or `NAME.NAMESPACE`; defaults to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Share of traffic, 0 to 100. Weights of one route must add up to 100.
    #[serde(default = "Percent::full")]
    pub weight: Percent,
}

/// An integer percentage, 0 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Percent(pub u32);

impl Percent {
    pub fn full() -> Self {
        Percent(100)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        if (0..=100).contains(&value) {
            Ok(Percent(value as u32))
        } else {
            Err(serde::de::Error::custom(format!("{value} is out of range 0..=100")))
        }
    }
}

/// A ratio written as a percentage that may be fractional: `20%`, `0.5%`, or a number.
/// Held as a fraction (0.2 for `20%`); written back as a percentage.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl Serialize for Ratio {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Rounded so that 0.07 * 100 prints as 7%, not 7.000000000000001%.
        let percent = (self.0 * 100.0 * 1e9).round() / 1e9;
        s.collect_str(&format_args!("{percent}%"))
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(f64),
            Text(String),
        }
        let value = match Form::deserialize(d)? {
            Form::Number(n) => n,
            Form::Text(t) => t
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a percentage; write e.g. `20%`")))?,
        };
        if (0.0..=100.0).contains(&value) {
            Ok(Ratio(value / 100.0))
        } else {
            Err(serde::de::Error::custom(format!("{value}% is out of range 0%..=100%")))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Total attempts including the first, 1 to 10.
    pub attempts: Attempts,
    /// Conditions that allow another attempt; default `[connect-failure, reset, gateway-error]`.
    #[serde(default = "RetryOn::defaults")]
    pub on: Vec<RetryOn>,
    /// gRPC status names that allow another attempt, e.g. `[unavailable]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc: Vec<GrpcCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub budget: RetryBudget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Attempts(pub u32);

impl<'de> Deserialize<'de> for Attempts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        if (1..=10).contains(&value) {
            Ok(Attempts(value as u32))
        } else {
            Err(serde::de::Error::custom(format!(
                "{value} is out of range 1..=10 (total attempts, including the first)"
            )))
        }
    }
}

/// Conditions under which a failed attempt is retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The upstream reset or closed the connection before answering.
    Reset,
    /// The connection to the upstream could not be made.
    ConnectFailure,
    /// A specific status code, e.g. `{status: 409}`.
    #[serde(untagged)]
    Status { status: u16 },
}

impl RetryOn {
    fn defaults() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::GatewayError]
    }
}

/// gRPC status codes by their canonical lowercase names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GrpcCode {
    Cancelled,
    Unknown,
    DeadlineExceeded,
    ResourceExhausted,
    Aborted,
    Internal,
    Unavailable,
}

impl GrpcCode {
    pub fn code(self) -> u32 {
        match self {
            GrpcCode::Cancelled => 1,
            GrpcCode::Unknown => 2,
            GrpcCode::DeadlineExceeded => 4,
            GrpcCode::ResourceExhausted => 8,
            GrpcCode::Aborted => 10,
            GrpcCode::Internal => 13,
            GrpcCode::Unavailable => 14,
        }
    }
}

/// Exponential backoff with full jitter between attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "Backoff::default_base")]
    pub base: Duration,
    #[serde(default = "Backoff::default_max")]
    pub max: Duration,
}

impl Backoff {
    fn default_base() -> Duration {
        Duration::from_millis(25)
    }
    fn default_max() -> Duration {
        Duration::from_millis(250)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Self::default_base(), max: Self::default_max() }
    }
}

/// Caps retries at `ratio` of requests plus `minPerSecond`, over a 10 s window, so that
/// retries cannot multiply an overload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "RetryBudget::default_ratio")]
    pub ratio: Ratio,
    #[serde(default = "RetryBudget::default_min")]
    pub min_per_second: u32,
}

impl RetryBudget {
    fn default_ratio() -> Ratio {
        Ratio(0.2)
    }
    fn default_min() -> u32 {
        10
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { ratio: Self::default_ratio(), min_per_second: Self::default_min() }
    }
}

/// Header changes: `set` replaces, `add` appends, `remove` deletes (applied remove, set, add).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderRewrite {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Changes the request before forwarding. `prefix` replaces the part matched by a
/// `path: {prefix: ...}` match; `path` replaces the whole path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Answers with a redirect instead of forwarding. Unset parts keep the request's values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308; default 302.
    #[serde(default = "Redirect::default_status")]
    pub status: u16,
}

impl Redirect {
    fn default_status() -> u16 {
        302
    }
}

/// Answers directly from the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Sends a copy of matching requests to another destination; its responses are discarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// A service (`NAME` or `NAME.NAMESPACE`), or omitted for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default = "Ratio::full")]
    pub percent: Ratio,
}

impl Ratio {
    fn full() -> Ratio {
        Ratio(1.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// For `ring-hash` and `maglev`: what identifies a request's affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    /// Latency-aware: power of two choices on peak-EWMA latency times load.
    #[default]
    PeakEwma,
    RingHash,
    Maglev,
    Random,
}

/// Written `{header: NAME}`, `{cookie: NAME}` or `{sourceIp: true}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    /// The client's IP address.
    SourceIp(bool),
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Form {
            header: Option<String>,
            cookie: Option<String>,
            source_ip: Option<bool>,
        }
        let form = Form::deserialize(d)?;
        match (form.header, form.cookie, form.source_ip) {
            (Some(h), None, None) => Ok(HashOn::Header(h)),
            (None, Some(c), None) => Ok(HashOn::Cookie(c)),
            (None, None, Some(true)) => Ok(HashOn::SourceIp(true)),
            _ => Err(serde::de::Error::custom(
                "expected exactly one of `header: NAME`, `cookie: NAME`, `sourceIp: true`",
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resilience {
    #[serde(default = "Resilience::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Default timeout for routes that set none; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

impl Resilience {
    fn default_connect_timeout() -> Duration {
        Duration::from_millis(1000)
    }
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience { connect_timeout: Self::default_connect_timeout(), timeout: None }
    }
}

/// The instances of a service, as a static list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    pub service: Name,
    #[serde(default = "crate::default_namespace")]
    pub namespace: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(default = "Endpoint::default_weight")]
    pub weight: Weight,
    /// A Trellis proxy receives this endpoint's traffic, so HTTP/1.1 may be carried to it
    /// multiplexed over HTTP/2 (the service's `meshHttp1`).
    #[serde(default)]
    pub meshed: bool,
    /// The SPIFFE ID the endpoint's proxy proves; traffic to it uses mutual TLS and is
    /// refused if the peer's certificate names anyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::policy::SpiffeId>,
}

impl Endpoint {
    fn default_weight() -> Weight {
        Weight(1)
    }
}

/// An endpoint's labels (`version: v2`), which subsets select by. Most endpoints have none,
/// and a proxy holds every endpoint of every service it may call (10,000 and more), so no
/// labels take one word rather than an empty map's three.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(clippy::box_collection)] // the box is the point: one word, where a map is three
pub struct Labels(Option<Box<BTreeMap<String, String>>>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.as_ref()?.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|labels| labels.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().flat_map(|labels| labels.iter())
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(labels: BTreeMap<String, String>) -> Labels {
        Labels((!labels.is_empty()).then(|| Box::new(labels)))
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(labels: [(String, String); N]) -> Labels {
        Labels::from(BTreeMap::from(labels))
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(Labels::from)
    }
}

impl schemars::JsonSchema for Labels {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        BTreeMap::<String, String>::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        BTreeMap::<String, String>::json_schema(generator)
    }
}

/// An endpoint weight, 1 to 10000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Weight(pub u32);

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        if (1..=10_000).contains(&value) {
            Ok(Weight(value as u32))
        } else {
            Err(serde::de::Error::custom(format!("{value} is out of range 1..=10000")))
        }
    }
}
