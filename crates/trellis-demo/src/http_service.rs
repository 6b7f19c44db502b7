//! The HTTP services: web (the front end), catalog and reviews.

use crate::Role;
use crate::grpc::ProductRequest;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

struct State {
    role: Role,
    calls: BTreeMap<String, String>,
    http: Client<HttpConnector, Full<Bytes>>,
    /// One HTTP/2 connection per gRPC dependency, made on first use and shared.
    grpc: BTreeMap<String, tonic::transport::Channel>,
}

pub async fn serve(role: Role, listen: SocketAddr, calls: BTreeMap<String, String>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let mut grpc = BTreeMap::new();
    for service in ["inventory", "ratings"] {
        if let Some(url) = calls.get(service) {
            grpc.insert(service.to_string(), tonic::transport::Endpoint::from_shared(url.clone())?.connect_lazy());
        }
    }
    let state = Arc::new(State { role, calls, http: Client::builder(TokioExecutor::new()).build_http(), grpc });
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// `/PREFIX/ID` → ID.
fn id_after(path: &str, prefix: &str) -> Option<u32> {
    path.strip_prefix(prefix)?.trim_matches('/').parse().ok()
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let result = match (state.role, path.as_str()) {
        (_, "/healthz") => Ok(json!({"ok": true})),
        (Role::Web, "/") => web_page(state, 1).await,
        (Role::Web, p) if p.starts_with("/product/") => match id_after(p, "/product") {
            Some(id) => web_page(state, id).await,
            None => Err((StatusCode::NOT_FOUND, "no such product".to_string())),
        },
        (Role::Catalog, p) if p.starts_with("/products/") => match id_after(p, "/products") {
            Some(id) => catalog_product(state, id).await,
            None => Err((StatusCode::NOT_FOUND, "no such product".to_string())),
        },
        (Role::Catalog, "/products") => Ok(json!(
            crate::products::PRODUCTS.iter().map(|(id, name, _)| json!({"id": id, "name": name})).collect::<Vec<_>>()
        )),
        (Role::Reviews { version }, p) if p.starts_with("/reviews/") => match id_after(p, "/reviews") {
            Some(id) => reviews(state, version, id).await,
            None => Err((StatusCode::NOT_FOUND, "no such product".to_string())),
        },
        _ => Err((StatusCode::NOT_FOUND, format!("{} has no {path}", state.role.service()))),
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err((status, message)) => json_response(status, &json!({"error": message})),
    }
}

type Outcome = Result<Value, (StatusCode, String)>;

/// The gRPC channel to `service`, if this instance was started with a `--call` for it.
fn channel(state: &State, service: &str) -> Result<tonic::transport::Channel, (StatusCode, String)> {
    state.grpc.get(service).cloned().ok_or((StatusCode::INTERNAL_SERVER_ERROR, format!("no route to {service}")))
}

async fn get_json(state: &State, service: &str, path: &str) -> Outcome {
    let base = state.calls.get(service).ok_or((StatusCode::INTERNAL_SERVER_ERROR, format!("no route to {service}")))?;
    let request = Request::get(format!("{base}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let response =
        state.http.request(request).await.map_err(|e| (StatusCode::BAD_GATEWAY, format!("{service}: {e}")))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err((StatusCode::BAD_GATEWAY, format!("{service} answered {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_GATEWAY, format!("{service}: {e}")))
}

async fn web_page(state: &State, id: u32) -> Outcome {
    let (product_path, reviews_path) = (format!("/products/{id}"), format!("/reviews/{id}"));
    let (product, reviews) =
        tokio::join!(get_json(state, "catalog", &product_path), get_json(state, "reviews", &reviews_path));
    Ok(json!({"service": "web", "product": product?, "reviews": reviews?}))
}

async fn catalog_product(state: &State, id: u32) -> Outcome {
    let (_, name, price) = crate::products::product(id).ok_or((StatusCode::NOT_FOUND, format!("no product {id}")))?;
    let mut client = crate::grpc::inventory_client::InventoryClient::new(channel(state, "inventory")?);
    let stock = client
        .stock(ProductRequest { product_id: id })
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("inventory: {}", e.message())))?
        .into_inner();
    Ok(json!({"id": id, "name": name, "priceCents": price, "inStock": stock.in_stock}))
}

async fn reviews(state: &State, version: u8, id: u32) -> Outcome {
    crate::products::product(id).ok_or((StatusCode::NOT_FOUND, format!("no product {id}")))?;
    let mut body = json!({
        "service": "reviews",
        "version": format!("v{version}"),
        "reviews": [{"reviewer": "ana", "text": "sturdy and easy to set up"}, {"reviewer": "bo", "text": "the roses love it"}],
    });
    if version >= 2 {
        let mut client = crate::grpc::ratings_client::RatingsClient::new(channel(state, "ratings")?);
        let rating = client
            .rating(ProductRequest { product_id: id })
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("ratings: {}", e.message())))?
            .into_inner();
        body["rating"] =
            json!({"stars": rating.stars, "votes": rating.votes, "color": if version == 2 { "black" } else { "red" }});
    }
    Ok(body)
}
