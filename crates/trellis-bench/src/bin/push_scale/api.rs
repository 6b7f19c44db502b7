//! The few control-plane API calls the simulator makes (HTTP/1.1, bearer token).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashSet;

pub struct Api {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub fn new(base: &str, token: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Api {
            base: base.trim_end_matches('/').to_string(),
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn call(&self, method: http::Method, path: &str, body: Option<String>) -> anyhow::Result<(u16, Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/yaml");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self.client.request(request).await.with_context(|| format!("calling {url}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.with_context(|| format!("reading the answer of {url}"))?;
        Ok((status, body.to_bytes()))
    }

    pub async fn healthz(&self) -> anyhow::Result<()> {
        let (status, _) = self.call(http::Method::GET, "/healthz", None).await?;
        if status != 200 {
            bail!("{}/healthz answered {status}", self.base);
        }
        Ok(())
    }

    /// POST /v1/apply; returns the actions (e.g. `Updated`) of the changes.
    pub async fn apply(&self, yaml: String, file: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = self.call(http::Method::POST, &format!("/v1/apply?file={file}"), Some(yaml)).await?;
        if status != 200 {
            bail!("POST /v1/apply answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).context("the apply answer is not JSON")?;
        Ok(json["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["action"].as_str().unwrap_or("?").to_string())
            .collect())
    }

    /// How many of `ids` the control plane lists as connected and in sync (the version it
    /// last sent is the one the proxy acknowledged).
    pub async fn in_sync(&self, ids: &HashSet<String>) -> anyhow::Result<usize> {
        let (status, body) = self.call(http::Method::GET, "/v1/proxies", None).await?;
        if status != 200 {
            bail!("GET /v1/proxies answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).context("the proxies answer is not JSON")?;
        Ok(json["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in_sync"] == true && p["proxy_id"].as_str().is_some_and(|id| ids.contains(id)))
            .count())
    }
}
