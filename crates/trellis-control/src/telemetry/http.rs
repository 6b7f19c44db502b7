//! The telemetry part of the API: `/v1/stats`, `/v1/stats/history`, `/v1/edges`, `/v1/tap`
//! (every role may read them; described in `docs/api/openapi.yaml`).

use super::golden::{self, GroupBy};
use crate::api::{ApiError, ApiResult, ControlPlane, authenticate};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest window a query may ask for (what the store keeps).
const MAX_WINDOW: Duration = super::RETENTION;

pub fn routes() -> Router<Arc<ControlPlane>> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/stats/history", get(history))
        .route("/v1/edges", get(edges))
        .route("/v1/tap", get(tap))
}

fn window_of(text: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    let Some(text) = text else { return Ok(default) };
    let parsed: trellis_api::Duration = serde_json::from_value(json!(text))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("window `{text}`: {e}; write it like 30s, 5m")))?;
    let window = parsed.get();
    if window < Duration::from_secs(1) || window > MAX_WINDOW {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("window `{text}` is out of range: use 1s to {}m", MAX_WINDOW.as_secs() / 60),
        ));
    }
    Ok(window)
}

/// `NAME` or `NAME.NAMESPACE` matches the row's service.
fn service_matches(filter: Option<&str>, name: &str, namespace: &str) -> bool {
    filter.is_none_or(|f| f == name || f == format!("{name}.{namespace}"))
}

/// Connected proxies per `NAME.NAMESPACE`.
fn meshed(control: &ControlPlane) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for proxy in control.registry.proxies().into_iter().filter(|p| p.connected && !p.workload.service.is_empty()) {
        *out.entry(format!("{}.{}", proxy.workload.service, proxy.workload.namespace)).or_insert(0) += 1;
    }
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatParams {
    window: Option<String>,
    /// `service` (default), `route` or `subset`.
    by: Option<String>,
    namespace: Option<String>,
    service: Option<String>,
}

async fn stats(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<StatParams>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let window = window_of(params.window.as_deref(), Duration::from_secs(30))?;
    let by = match params.by.as_deref().unwrap_or("service") {
        "service" => GroupBy::Service,
        "route" => GroupBy::Route,
        "subset" => GroupBy::Subset,
        other => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("by `{other}`: use service, route or subset")));
        }
    };
    let rows = control.telemetry.window(window);
    let in_flight = control.telemetry.in_flight(Duration::from_secs(15));
    let items: Vec<golden::StatRow> = golden::stat_rows(&rows, by, &meshed(&control), &in_flight)
        .into_iter()
        .filter(|r| params.namespace.as_deref().is_none_or(|ns| r.namespace == ns))
        .filter(|r| service_matches(params.service.as_deref(), &r.service, &r.namespace))
        .collect();
    Ok(Json(json!({"windowSeconds": window.as_secs_f64(), "items": items})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EdgeParams {
    window: Option<String>,
    namespace: Option<String>,
}

async fn edges(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<EdgeParams>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let window = window_of(params.window.as_deref(), Duration::from_secs(30))?;
    let rows = control.telemetry.window(window);
    let in_namespace = |id: &str| params.namespace.as_deref().is_none_or(|ns| golden::split_service(id).1 == ns);
    let items: Vec<golden::Edge> =
        golden::edges(&rows).into_iter().filter(|e| in_namespace(&e.from) || in_namespace(&e.to)).collect();
    Ok(Json(json!({"windowSeconds": window.as_secs_f64(), "items": items})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HistoryParams {
    service: String,
    /// How far back (default 10m).
    window: Option<String>,
    /// Spacing of the points (default 10s).
    step: Option<String>,
}

/// Golden metrics of one service at regular steps, oldest first: the dashboard's charts.
async fn history(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<HistoryParams>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let window = window_of(params.window.as_deref(), Duration::from_secs(600))?;
    let step = window_of(params.step.as_deref(), Duration::from_secs(10))?;
    if window.as_millis() / step.as_millis().max(1) > 1000 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "more than 1000 points: use a larger step"));
    }
    let meshed = meshed(&control);
    let now = super::now_ms();
    let mut points = Vec::new();
    let mut end = now - window.as_millis() as i64 + step.as_millis() as i64;
    while end <= now {
        let rows = control.telemetry.window_at(end, step);
        let row = golden::stat_rows(&rows, GroupBy::Service, &meshed, &Default::default())
            .into_iter()
            .find(|r| service_matches(Some(&params.service), &r.service, &r.namespace));
        let golden = row.map(|r| r.golden).unwrap_or_default();
        points.push(json!({
            "time": end,
            "rps": golden.rps,
            "successRate": golden.success_rate,
            "p50Ms": golden.p50_ms,
            "p95Ms": golden.p95_ms,
            "p99Ms": golden.p99_ms,
        }));
        end += step.as_millis() as i64;
    }
    Ok(Json(json!({"service": params.service, "stepSeconds": step.as_secs_f64(), "points": points})).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TapParams {
    service: Option<String>,
    direction: Option<String>,
    route: Option<String>,
    method: Option<String>,
    path_prefix: Option<String>,
    min_status: Option<u16>,
    identity: Option<String>,
    /// Stop after this many events (default: never).
    max: Option<u64>,
    /// Stop after this long (default 10m, at most 1h).
    duration: Option<String>,
}

/// Live requests as JSON lines (`application/x-ndjson`) until `max`, `duration` or the
/// client leaves.
async fn tap(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<TapParams>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    if let Some(direction) = params.direction.as_deref()
        && direction != "inbound"
        && direction != "outbound"
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("direction `{direction}`: use inbound or outbound"),
        ));
    }
    let duration = match params.duration.as_deref() {
        None => Duration::from_secs(600),
        Some(text) => {
            let parsed: trellis_api::Duration = serde_json::from_value(json!(text))
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("duration `{text}`: {e}")))?;
            parsed.get().min(Duration::from_secs(3600))
        }
    };
    let filter = json!({
        "service": params.service,
        "direction": params.direction,
        "route": params.route,
        "method": params.method,
        "pathPrefix": params.path_prefix,
        "minStatus": params.min_status,
        "identity": params.identity,
    });
    let filter: serde_json::Map<String, serde_json::Value> = filter
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut subscription = control.taps.open(serde_json::Value::Object(filter).to_string());
    let max = params.max.unwrap_or(u64::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + duration;
        let mut sent = 0;
        while sent < max {
            tokio::select! {
                event = subscription.events.recv() => {
                    let Some(event) = event else { return };
                    let mut line = event.to_string();
                    line.push('\n');
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
