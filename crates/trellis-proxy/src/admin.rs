//! The admin listener (keep it on loopback): `/live`, `/ready` (fails while draining or
//! without a valid workload certificate), `/metrics`, `/config`.

use crate::Shared;
use crate::body::{self, Body};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&request, &shared)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(request: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    match request.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if shared.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Some(reason) = shared.identity.not_ready_reason() {
                let mut r = Response::new(body::full(format!("not ready: {reason}\n")));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            // OpenMetrics for scrapers that ask for it (Prometheus does), else the classic format.
            let openmetrics = request
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let metrics = &shared.runtime.metrics;
            let (text, content_type) = if openmetrics {
                (metrics.encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
            } else {
                (metrics.encode_classic(), "text/plain; version=0.0.4; charset=utf-8")
            };
            let mut r = Response::new(body::full(text));
            r.headers_mut().insert("content-type", http::HeaderValue::from_static(content_type));
            r
        }
        "/config" => {
            let config = shared.config();
            let document = serde_json::json!({
                "version": config.version,
                "source": shared.source_description(),
                "loadedAt": shared.loaded_at(),
                "lastReloadError": shared.last_reload_error(),
                "identity": shared.identity.is_configured().then(|| shared.identity.status()),
                "mtlsMode": config.authorizer.mtls_mode(),
                "control": shared.control_status.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                "resources": config.documents().iter().collect::<Vec<_>>(),
                "routes": config.describe_services().iter().map(|s| serde_json::json!({
                    "service": &*s.id,
                    "routes": s.routes.iter().chain(std::iter::once(&s.default_route)).map(|r| serde_json::json!({
                        "name": &*r.name,
                        "chain": r.chain.iter().map(|e| e.name()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            let mut r = Response::new(body::full(serde_json::to_vec_pretty(&document).unwrap_or_default()));
            r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found; try /live, /ready, /metrics, /config\n"),
    }
}

fn text(status: StatusCode, body_text: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(body_text));
    *r.status_mut() = status;
    r
}
