//! The control plane's HTTP/JSON API (described in `docs/api/openapi.yaml`).
//!
//! Every request needs `Authorization: Bearer TOKEN`. Reads are open to every role; writes
//! are checked per document against the caller's role. Errors are JSON
//! `{"error": "...", "details": [...]}` with the status that fits: 400 bad input, 401 no or
//! unknown token, 403 not allowed, 404 absent, 422 invalid configuration.

use crate::auth::{Caller, Role, Tokens};
use crate::store::{ResourceKey, Store, Stored};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Shared state behind every handler.
pub struct ControlPlane {
    pub store: Store,
    pub tokens: Arc<Tokens>,
    pub ca: Arc<crate::ca::CertificateAuthority>,
    pub registry: Arc<crate::registry::Registry>,
    /// The compiled view of the store, kept current by the snapshot builder; validation
    /// reads the stored services from it instead of parsing the store on every apply.
    pub snapshots: tokio::sync::watch::Receiver<Arc<crate::snapshot::Snapshot>>,
    /// What the proxies report about their requests.
    pub telemetry: Arc<crate::telemetry::TelemetryStore>,
    pub taps: Arc<crate::telemetry::tap::TapHub>,
}

/// The API's routes.
pub fn router(control: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/apply", post(apply))
        .route("/v1/resources", get(list))
        .route("/v1/resources/{kind}/{namespace}/{name}", get(get_one).delete(delete_one))
        .route("/v1/resources/{kind}/{namespace}/{name}/history", get(history))
        .route("/v1/resources/{kind}/{namespace}/{name}/rollback", post(rollback))
        .route("/v1/tokens", post(create_token))
        .route("/v1/ca", get(ca_status))
        .route("/v1/ca/roots", post(ca_add_root))
        .route("/v1/ca/roots/{fingerprint}/activate", post(ca_activate))
        .route("/v1/ca/roots/{fingerprint}", axum::routing::delete(ca_retire))
        .route("/v1/proxies", get(proxies))
        .route("/v1/watch", get(watch))
        .route("/v1/endpoints/{namespace}/{service}", get(endpoints))
        .merge(crate::telemetry::http::routes())
        .merge(crate::dashboard::routes())
        .with_state(control)
}

/// An error response.
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), details: Vec::new() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message, "details": self.details}))).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        let status = if e.is_bad_request() { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
        ApiError::new(status, e.to_string())
    }
}

/// Runs a store call off the async workers: writes wait for the disk sync.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("store task failed: {e}")))?
        .map_err(ApiError::from)
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn authenticate(control: &ControlPlane, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer TOKEN` header"))?;
    let secret = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "the Authorization header must be `Bearer TOKEN`"))?;
    control.tokens.authenticate(secret.trim()).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
}

fn forbid_unless(caller: &Caller, namespace: Option<&str>, what: &str) -> Result<(), ApiError> {
    if caller.role.may_write(namespace) {
        return Ok(());
    }
    let scope = match namespace {
        Some(ns) => format!("namespace `{ns}`"),
        None => "cluster-wide resources".to_string(),
    };
    let role = match &caller.role {
        Role::Admin => "admin".to_string(),
        Role::ServiceOwner { namespace } => format!("service-owner of `{namespace}`"),
        Role::Viewer => "viewer".to_string(),
        Role::Join { namespace, service_account } => format!("join token for {namespace}/{service_account}"),
    };
    Err(ApiError::new(StatusCode::FORBIDDEN, format!("token `{}` ({role}) may not {what} in {scope}", caller.name)))
}

/// The namespace a document lives in; `None` for documents that are not namespaced.
fn namespace_of(key: &ResourceKey) -> Option<&str> {
    (key.namespace != "-").then_some(key.namespace.as_str())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyParams {
    #[serde(default)]
    dry_run: bool,
    /// The file name used in error messages.
    #[serde(default)]
    file: Option<String>,
}

async fn apply(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<ApplyParams>,
    body: String,
) -> ApiResult {
    let caller = authenticate(&control, &headers)?;
    let file = params.file.unwrap_or_else(|| "request".into());
    // References may name what the store already holds (a subset of a service applied
    // earlier), so validate against it.
    let mut snapshots = control.snapshots.clone();
    let committed = control.store.revision();
    // The snapshot is rebuilt just after each commit; wait for it to include the latest.
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), snapshots.wait_for(|s| s.revision >= committed)).await;
    let context: Vec<trellis_api::Resource> =
        snapshots.borrow().services().map(|s| trellis_api::Resource::Service(Box::new(s.clone()))).collect();
    let docs = trellis_api::parse_documents_in(&body, &file, &context).map_err(|errors| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("{} error(s) in {file}", errors.0.len()),
        details: errors
            .0
            .iter()
            .map(|e| {
                json!({"file": e.file, "line": e.line, "column": e.column, "path": e.path, "message": e.message, "text": e.to_string()})
            })
            .collect(),
    })?;
    if docs.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{file}: no documents to apply")));
    }
    for doc in &docs {
        let key = ResourceKey::of(doc);
        forbid_unless(&caller, namespace_of(&key), &format!("change {key}"))?;
    }
    let store = control.store.clone();
    let dry_run = params.dry_run;
    let changes = blocking(move || store.apply(&docs, &caller.name, dry_run)).await?;
    Ok(Json(json!({"dryRun": params.dry_run, "changes": changes})).into_response())
}

#[derive(Deserialize)]
struct ListParams {
    kind: Option<String>,
    namespace: Option<String>,
}

async fn list(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let items = control.store.list(params.kind.as_deref(), params.namespace.as_deref())?;
    Ok(Json(json!({"revision": control.store.revision(), "items": items})).into_response())
}

fn key_from(kind: String, namespace: String, name: String) -> ResourceKey {
    ResourceKey { kind, namespace, name }
}

async fn get_one(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let key = key_from(kind, namespace, name);
    match control.store.get(&key)? {
        Some(stored) => Ok(Json(stored).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("{key} not found"))),
    }
}

async fn delete_one(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult {
    let caller = authenticate(&control, &headers)?;
    let key = key_from(kind, namespace, name);
    forbid_unless(&caller, namespace_of(&key), &format!("delete {key}"))?;
    let store = control.store.clone();
    let (target, actor) = (key.clone(), caller.name.clone());
    match blocking(move || store.delete(&target, &actor)).await? {
        Some(change) => Ok(Json(change).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("{key} not found"))),
    }
}

async fn history(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let key = key_from(kind, namespace, name);
    let generations: Vec<Stored> = control.store.history(&key)?;
    if generations.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("{key} has no history")));
    }
    Ok(Json(json!({"key": key.to_string(), "generations": generations})).into_response())
}

#[derive(Deserialize)]
struct RollbackBody {
    to: u64,
}

async fn rollback(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Json(body): Json<RollbackBody>,
) -> ApiResult {
    let caller = authenticate(&control, &headers)?;
    let key = key_from(kind, namespace, name);
    forbid_unless(&caller, namespace_of(&key), &format!("roll back {key}"))?;
    let store = control.store.clone();
    let (target, actor) = (key.clone(), caller.name.clone());
    let change = blocking(move || store.rollback(&target, body.to, &actor)).await?;
    Ok(Json(change).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    name: String,
    #[serde(flatten)]
    role: Role,
    /// The token is refused this many seconds after creation.
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    single_use: bool,
}

async fn create_token(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Json(request): Json<TokenRequest>,
) -> ApiResult {
    let caller = authenticate(&control, &headers)?;
    if caller.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("token `{}` is not an admin; only admins create tokens", caller.name),
        ));
    }
    let secret = control
        .tokens
        .create(
            &request.name,
            request.role.clone(),
            crate::auth::TokenLimits {
                expires_at: request.ttl_seconds.map(|ttl| trellis_identity::unix_now() + ttl as i64),
                single_use: request.single_use,
            },
        )
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(json!({"name": request.name, "token": secret, "role": request.role})))
        .into_response())
}

async fn ca_status(State(control): State<Arc<ControlPlane>>, headers: HeaderMap) -> ApiResult {
    authenticate(&control, &headers)?;
    Ok(Json(control.ca.status()).into_response())
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::FORBIDDEN, format!("token `{}` is not an admin; only admins {what}", caller.name)))
}

fn ca_error(e: crate::ca::CaError) -> ApiError {
    use crate::ca::CaError;
    let status = match e {
        CaError::UnknownRoot(_) => StatusCode::NOT_FOUND,
        CaError::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

async fn ca_add_root(State(control): State<Arc<ControlPlane>>, headers: HeaderMap) -> ApiResult {
    admin_only(&authenticate(&control, &headers)?, "change the CA")?;
    let ca = control.ca.clone();
    let fingerprint = tokio::task::spawn_blocking(move || ca.add_root())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ca_error)?;
    Ok((StatusCode::CREATED, Json(json!({"fingerprint": fingerprint, "ca": control.ca.status()}))).into_response())
}

async fn ca_activate(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> ApiResult {
    admin_only(&authenticate(&control, &headers)?, "change the CA")?;
    control.ca.activate(&fingerprint).map_err(ca_error)?;
    Ok(Json(control.ca.status()).into_response())
}

async fn ca_retire(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path(fingerprint): Path<String>,
) -> ApiResult {
    admin_only(&authenticate(&control, &headers)?, "change the CA")?;
    control.ca.retire(&fingerprint).map_err(ca_error)?;
    Ok(Json(control.ca.status()).into_response())
}

async fn proxies(State(control): State<Arc<ControlPlane>>, headers: HeaderMap) -> ApiResult {
    authenticate(&control, &headers)?;
    let skews = control.telemetry.clock_skews();
    let items: Vec<Value> = control
        .registry
        .proxies()
        .into_iter()
        .map(|proxy| {
            let skew = skews.get(&proxy.proxy_id).copied();
            let mut item = serde_json::to_value(proxy).unwrap_or_default();
            item["clock_skew_ms"] = json!(skew);
            item
        })
        .collect();
    Ok(Json(json!({"items": items, "now_unix": crate::telemetry::now_ms() / 1000})).into_response())
}

#[derive(Deserialize)]
struct WatchParams {
    /// Send changes committed after this revision (0: everything), then live ones.
    #[serde(default)]
    since: u64,
}

/// A stream of changes as JSON lines (`application/x-ndjson`), one stored generation per
/// line: first those after `since`, then each new commit, until the client goes away.
async fn watch(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Query(params): Query<WatchParams>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let store = control.store.clone();
    // Subscribe before catching up, so no commit falls between the two.
    let mut feed = store.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let mut last = params.since;
        loop {
            let reader = store.clone();
            let items = match tokio::task::spawn_blocking(move || reader.changes_since(last)).await {
                Ok(Ok(items)) => items,
                _ => return,
            };
            for item in items {
                last = last.max(item.revision);
                let mut line = serde_json::to_string(&item).unwrap_or_default();
                line.push('\n');
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                received = feed.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = received {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// A service's endpoints: static ones from its `Endpoints` document and registered
/// workloads (with their proxy and readiness; only ready ones receive traffic).
async fn endpoints(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    Path((namespace, service)): Path<(String, String)>,
) -> ApiResult {
    authenticate(&control, &headers)?;
    let key = ResourceKey { kind: "Endpoints".into(), namespace: namespace.clone(), name: service.clone() };
    let store = control.store.clone();
    let stored = blocking(move || store.get(&key)).await?;
    let mut items: Vec<Value> = stored
        .and_then(|s| s.document.get("endpoints").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|mut e| {
            e["source"] = json!("static");
            e["ready"] = json!(true);
            e
        })
        .collect();
    for proxy in control.registry.proxies() {
        if proxy.workload.service == service && proxy.workload.namespace == namespace {
            items.push(json!({
                "address": proxy.workload.address,
                "labels": proxy.workload.labels,
                "zone": proxy.workload.zone,
                "region": proxy.workload.region,
                "source": "registered",
                "proxy": proxy.proxy_id,
                "ready": proxy.ready && proxy.connected,
                "connected": proxy.connected,
            }));
        }
    }
    if items.is_empty() && !control.registry.services().contains(&(service.clone(), namespace.clone())) {
        let known = control.store.get(&ResourceKey {
            kind: "Service".into(),
            namespace: namespace.clone(),
            name: service.clone(),
        })?;
        if known.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no service {service}.{namespace}: no Service, Endpoints or registered workload"),
            ));
        }
    }
    Ok(Json(json!({"service": format!("{service}.{namespace}"), "items": items})).into_response())
}
