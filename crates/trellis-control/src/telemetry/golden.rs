//! Golden metrics — request rate, success rate, latency percentiles — summed over windows
//! of series, grouped the ways `trellis stat`, `top` and `edges` ask for.

use super::{Counts, WindowSeries};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Golden {
    pub requests: u64,
    pub failures: u64,
    /// Requests per second.
    pub rps: f64,
    /// Share of requests that did not fail, 0..=1; `None` without requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Bytes per second, request and response bodies.
    pub request_bytes_per_second: f64,
    pub response_bytes_per_second: f64,
}

impl Golden {
    pub fn of(rows: &[&WindowSeries]) -> Golden {
        let mut total = Counts::default();
        let (mut rps, mut req_bps, mut resp_bps) = (0.0, 0.0, 0.0);
        for row in rows {
            total.add(&row.delta);
            rps += row.delta.requests as f64 / row.seconds;
            req_bps += row.delta.request_bytes as f64 / row.seconds;
            resp_bps += row.delta.response_bytes as f64 / row.seconds;
        }
        let success_rate = (total.requests > 0)
            .then(|| (total.requests - total.failures.min(total.requests)) as f64 / total.requests as f64);
        let quantile = |q: f64| quantile_ms(&total.latency, q);
        Golden {
            requests: total.requests,
            failures: total.failures,
            rps,
            success_rate,
            p50_ms: quantile(0.50),
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
            request_bytes_per_second: req_bps,
            response_bytes_per_second: resp_bps,
        }
    }
}

/// The `q` quantile of a bucketed histogram, interpolating linearly inside the bucket (as
/// Prometheus' `histogram_quantile` does). Requests above the last bound count as 10 s.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let bounds = trellis_protocol::LATENCY_BOUNDS;
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, n) in buckets.iter().enumerate() {
        let n = *n as f64;
        if n > 0.0 && seen + n >= rank {
            let upper = bounds.get(i).copied().unwrap_or(bounds[bounds.len() - 1]);
            let lower = if i == 0 { 0.0 } else { bounds.get(i - 1).copied().unwrap_or(upper) };
            let within = ((rank - seen) / n).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        seen += n;
    }
    Some(bounds[bounds.len() - 1] * 1000.0)
}

/// How `stat` groups rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Service,
    Route,
    Subset,
}

/// One row of `trellis stat`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatRow {
    pub service: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Proxies connected for this service's workloads.
    pub meshed: usize,
    /// Requests being served now (inbound, from the last reports).
    pub in_flight: i64,
    /// Whose view: `inbound` (the service's own proxies) or `outbound` (its callers').
    pub seen_from: &'static str,
    #[serde(flatten)]
    pub golden: Golden,
}

/// `NAME.NAMESPACE` → (name, namespace).
pub fn split_service(id: &str) -> (String, String) {
    match id.rsplit_once('.') {
        Some((name, ns)) => (name.to_string(), ns.to_string()),
        None => (id.to_string(), String::new()),
    }
}

/// Rows per service (its inbound view, or its callers' view when it has no proxy of its
/// own), per route or per subset (callers' view: routes and subsets are chosen there).
/// `meshed` gives each service's connected proxies; services that are meshed but idle
/// appear with zero traffic.
pub fn stat_rows(
    rows: &[WindowSeries],
    by: GroupBy,
    meshed: &BTreeMap<String, usize>,
    in_flight: &std::collections::HashMap<(String, String), i64>,
) -> Vec<StatRow> {
    // Requests the proxy refused before knowing a service are not any service's.
    let rows: Vec<&WindowSeries> =
        rows.iter().filter(|r| !r.key.service.is_empty() && r.key.service != "passthrough").collect();
    // (service, route, subset, seen from) → the series summed into that row.
    type Group = (String, Option<String>, Option<String>, &'static str);
    let mut groups: BTreeMap<Group, Vec<&WindowSeries>> = BTreeMap::new();
    match by {
        GroupBy::Service => {
            let served: BTreeSet<&str> =
                rows.iter().filter(|r| r.key.direction == "inbound").map(|r| r.key.service.as_str()).collect();
            for row in &rows {
                let inbound = row.key.direction == "inbound";
                if inbound || !served.contains(row.key.service.as_str()) {
                    let seen_from = if inbound { "inbound" } else { "outbound" };
                    groups.entry((row.key.service.clone(), None, None, seen_from)).or_default().push(row);
                }
            }
            for service in meshed.keys() {
                if !groups.keys().any(|(s, ..)| s == service) {
                    groups.insert((service.clone(), None, None, "inbound"), Vec::new());
                }
            }
        }
        GroupBy::Route | GroupBy::Subset => {
            for row in rows.iter().filter(|r| r.key.direction == "outbound") {
                let (route, subset) = match by {
                    GroupBy::Route => (Some(row.key.route.clone()), None),
                    _ => {
                        (None, Some(row.key.upstream.rsplit_once('/').map_or("-".to_string(), |(_, s)| s.to_string())))
                    }
                };
                groups.entry((row.key.service.clone(), route, subset, "outbound")).or_default().push(row);
            }
        }
    }
    groups
        .into_iter()
        .map(|((service, route, subset, seen_from), members)| {
            let (name, namespace) = split_service(&service);
            StatRow {
                meshed: meshed.get(&service).copied().unwrap_or(0),
                in_flight: in_flight.get(&("inbound".to_string(), service.clone())).copied().unwrap_or(0),
                service: name,
                namespace,
                route,
                subset,
                seen_from,
                golden: Golden::of(&members),
            }
        })
        .collect()
}

/// One caller → callee edge of the service graph.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// `NAME.NAMESPACE` of the caller's workload; `unmeshed` for callers without a proxy.
    pub from: String,
    pub to: String,
    /// SPIFFE IDs seen on this edge; empty strings mean plaintext.
    pub source_identities: Vec<String>,
    pub destination_identities: Vec<String>,
    /// Every request on the edge was mutually authenticated.
    pub mtls: bool,
    #[serde(flatten)]
    pub golden: Golden,
}

/// Edges from the callers' proxies' outbound series; a service no meshed caller reported
/// gets its edges from its own inbound series (caller: the source identity, or `unmeshed`).
pub fn edges(rows: &[WindowSeries]) -> Vec<Edge> {
    let rows: Vec<&WindowSeries> =
        rows.iter().filter(|r| !r.key.service.is_empty() && r.key.service != "passthrough").collect();
    let called: BTreeSet<&str> =
        rows.iter().filter(|r| r.key.direction == "outbound").map(|r| r.key.service.as_str()).collect();
    let mut groups: BTreeMap<(String, String), Vec<&WindowSeries>> = BTreeMap::new();
    for row in &rows {
        let from = match row.key.direction.as_str() {
            "outbound" => {
                if row.workload.is_empty() {
                    row.proxy.clone()
                } else {
                    row.workload.clone()
                }
            }
            _ if called.contains(row.key.service.as_str()) => continue,
            _ if row.key.source_identity.is_empty() => "unmeshed".to_string(),
            _ => row.key.source_identity.clone(),
        };
        groups.entry((from, row.key.service.clone())).or_default().push(row);
    }
    groups
        .into_iter()
        .map(|((from, to), members)| {
            let source: BTreeSet<String> = members.iter().map(|r| r.key.source_identity.clone()).collect();
            let destination: BTreeSet<String> = members.iter().map(|r| r.key.destination_identity.clone()).collect();
            let mtls = !source.contains("") && !destination.contains("");
            Edge {
                from,
                to,
                source_identities: source.into_iter().collect(),
                destination_identities: destination.into_iter().collect(),
                mtls,
                golden: Golden::of(&members),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut buckets = vec![0; 17];
        buckets[4] = 100; // (1 ms, 2.5 ms]
        assert_eq!(quantile_ms(&buckets, 0.5), Some(1.75));
        assert_eq!(quantile_ms(&[0; 17], 0.5), None);
        buckets[16] = 100; // above 10 s
        assert_eq!(quantile_ms(&buckets, 0.99), Some(10_000.0));
    }
}
