//! `kind: Proxy`: a proxy's own listeners and limits, used in static mode.

use crate::Duration;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The admin listener (`/ready`, `/live`, `/metrics`, `/config`); keep it on loopback.
    #[serde(default = "ProxySettings::default_admin")]
    pub admin: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundListener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundListener>,
    /// Local ports each bound to one upstream service (explicit mode, no capture needed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explicit: Vec<ExplicitListener>,
    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// TCP, so that server-speaks-first protocols (MySQL, SMTP) never stall.
    #[serde(default = "ProxySettings::default_detect_timeout")]
    pub detect_timeout: Duration,
    /// On SIGTERM, how long in-flight requests and connections may take to finish.
    #[serde(default = "ProxySettings::default_drain_timeout")]
    pub drain_timeout: Duration,
    /// SO_MARK set on the proxy's own upstream sockets, so capture rules can exclude them.
    #[serde(default = "ProxySettings::default_mark")]
    pub mark: u32,
    /// Where to write access logs (one JSON line per request): `stdout`, `stderr` or a file
    /// path. With it set, logs are on unless the namespace's `kind: Telemetry` turns them
    /// off; without it, a Telemetry that turns them on writes to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Per-request statistics (`trellis_requests_total` and friends, `trellis stat`). On by
    /// default; turning them off exists to measure what they cost.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub request_metrics: bool,
    /// The control plane that pushes services and endpoints to this proxy. Without it the
    /// proxy runs on this file alone (static mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSettings>,
    /// The workload this proxy runs next to, registered with the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSettings>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlSettings {
    /// The control plane's push endpoint, e.g. `http://127.0.0.1:7071`.
    pub url: String,
    /// Where the last good pushed configuration is kept, so the proxy can start from it
    /// while the control plane is unreachable.
    pub state_dir: std::path::PathBuf,
    /// Unique per proxy; defaults to `SERVICE-HOSTNAME-PID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_id: Option<String>,
    /// A join token (`trellis token create NAME --role join ...`) for the proxy's first
    /// certificate. Later certificates are obtained with the current one, kept in
    /// `stateDir/identity/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// A file holding the join token (preferred over `joinToken`: keeps it out of the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSettings {
    pub service: crate::Name,
    #[serde(default = "crate::default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where other proxies reach this workload.
    pub address: SocketAddr,
    /// Services this workload calls (`NAME` or `NAME.NAMESPACE`); empty: every service of
    /// its namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
    /// The service account in the workload's SPIFFE ID; defaults to the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl WorkloadSettings {
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(self.service.0.as_str())
    }
}

impl ProxySettings {
    fn default_admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 15000))
    }
    fn default_detect_timeout() -> Duration {
        Duration::from_millis(500)
    }
    fn default_drain_timeout() -> Duration {
        Duration::from_millis(10_000)
    }
    fn default_mark() -> u32 {
        0x539
    }
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            name: None,
            admin: Self::default_admin(),
            inbound: None,
            outbound: None,
            explicit: Vec::new(),
            detect_timeout: Self::default_detect_timeout(),
            drain_timeout: Self::default_drain_timeout(),
            mark: Self::default_mark(),
            access_log: None,
            request_metrics: true,
            control: None,
            workload: None,
        }
    }
}

/// Traffic to the local application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundListener {
    pub listen: SocketAddr,
    /// Where the application listens. Unset: the connection's original destination
    /// (transparent capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<SocketAddr>,
    /// Destination ports carried as opaque TCP without detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

/// Traffic from the local application, captured transparently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundListener {
    pub listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplicitListener {
    pub listen: SocketAddr,
    /// `NAME` or `NAME.NAMESPACE`.
    pub service: String,
}
