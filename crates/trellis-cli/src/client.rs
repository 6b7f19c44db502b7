//! A small client for the control plane's HTTP API, used by the resource verbs.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the control plane is and who we are.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// The control plane's API address.
    #[arg(long, env = "TRELLIS_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    pub server: String,
    /// A bearer token (or set TRELLIS_TOKEN, or use --token-file).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the token, e.g. DATA_DIR/admin.token.
    #[arg(long, env = "TRELLIS_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
}

impl Connection {
    /// The token given by flag, environment or file.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        match &self.token_file {
            Some(path) => Ok(Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading token file {}", path.display()))?
                    .trim()
                    .to_string(),
            )),
            None => Ok(None),
        }
    }

    /// Sends a request and returns the response once its headers arrive.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut request = http::Request::builder().method(method).uri(&url);
        if let Some(token) = self.token()? {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = match body {
            Some((text, content_type)) => {
                request = request.header("content-type", content_type);
                Bytes::from(text)
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(payload)).with_context(|| format!("bad URL {url}"))?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
            .await
            .with_context(|| format!("no answer from the control plane at {} within 30 s", self.server))?
            .with_context(|| {
                format!("cannot reach the control plane at {} (is `trellis control` running?)", self.server)
            })
    }

    /// Opens a streaming GET (JSON lines) and returns the response once its headers arrive;
    /// an error status is turned into an error with the API's message.
    pub async fn stream(&self, path: &str) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let response = self.send(http::Method::GET, path, None).await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            return Err(api_error(status, &json_body(response).await?));
        }
        Ok(response)
    }

    /// Sends a request and returns (status, JSON body).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        Ok((status, json_body(response).await?))
    }
}

/// The body as JSON, or as a JSON string when it is not JSON.
async fn json_body(response: hyper::Response<hyper::body::Incoming>) -> anyhow::Result<Value> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())))
}

/// Turns an API error body into a readable error.
pub fn api_error(status: u16, body: &Value) -> anyhow::Error {
    let mut text = format!("{} ({status})", body["error"].as_str().unwrap_or("request failed"));
    if let Some(details) = body["details"].as_array() {
        for d in details {
            text.push_str("\n  ");
            text.push_str(d["text"].as_str().unwrap_or(&d.to_string()));
        }
    }
    anyhow::anyhow!(text)
}
