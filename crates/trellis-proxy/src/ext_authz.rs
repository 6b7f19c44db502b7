//! External authorization: after the local rules allow a request, ask an authorization
//! service (`Policy.external`), in the manner of nginx `auth_request` and Envoy's HTTP
//! `ext_authz`.
//!
//! The check is a GET to the authorizer's URL with `x-forwarded-method`, `x-forwarded-uri`,
//! `x-forwarded-host`, the caller's `x-trellis-peer-identity`, and the request's
//! `authorization` and `cookie` headers. 2xx allows; any other 4xx denies; anything else
//! (5xx, no answer within the timeout, no connection) is an error, which `failOpen` turns
//! into an allow and otherwise into a 403 `authorizer-unavailable`. So a slow or dead
//! authorizer costs each request at most the timeout.
//!
//! Decisions (not errors) are cached for `cacheTtl`, keyed on caller identity, method and
//! path, so repeated identical requests don't reach the authorizer. The cache belongs to the
//! proxy's runtime and survives configuration reloads.

use crate::body;
use crate::chain::PeerIdentity;
use crate::errors::{ProxyError, Reason};
use crate::metrics::Metrics;
use crate::upstream::{Upstreams, Wire};
use http::{HeaderValue, Request};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_api::ExternalAuthorization;

/// Most cached decisions per authorizer; beyond it expired entries go, then everything.
const MAX_CACHED: usize = 10_000;
/// Most bytes of an authorizer's answer read (to keep its connection reusable).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

type CacheKey = (String, http::Method, String);

/// Cached decisions of one authorizer: key → (allowed, valid until).
#[derive(Default)]
pub struct DecisionCache {
    entries: Mutex<HashMap<CacheKey, (bool, Instant)>>,
}

impl DecisionCache {
    fn get(&self, key: &CacheKey) -> Option<bool> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, until)| Instant::now() < *until).map(|(allowed, _)| *allowed)
    }

    fn put(&self, key: CacheKey, allowed: bool, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, (allowed, Instant::now() + ttl));
    }
}

/// The caches of every authorizer, by policy and URL; kept across reloads.
#[derive(Default)]
pub struct DecisionCaches(Mutex<HashMap<String, Arc<DecisionCache>>>);

impl DecisionCaches {
    fn for_authorizer(&self, key: String) -> Arc<DecisionCache> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone()
    }
}

/// One policy's external authorizer, compiled.
pub struct ExternalCheck {
    name: String,
    addr: SocketAddr,
    path: String,
    timeout: Duration,
    ttl: Duration,
    fail_open: bool,
    cache: Arc<DecisionCache>,
}

enum Answer {
    Allow,
    Deny,
    Error(String),
}

impl ExternalCheck {
    pub fn new(policy: &str, spec: &ExternalAuthorization, caches: &DecisionCaches) -> ExternalCheck {
        let (addr, path) = spec.url.parts();
        ExternalCheck {
            name: spec.name.clone(),
            addr,
            path: path.to_string(),
            timeout: spec.timeout.get(),
            ttl: spec.cache_ttl.get(),
            fail_open: spec.fail_open,
            cache: caches.for_authorizer(format!("{policy} {}", spec.url.0)),
        }
    }

    /// Allows (`Ok`) or refuses with the error the caller gets.
    pub async fn check(
        &self,
        upstreams: &Upstreams,
        source: Option<&PeerIdentity>,
        parts: &http::request::Parts,
        metrics: &Metrics,
    ) -> Result<(), ProxyError> {
        let key =
            (source.map_or(String::new(), |s| s.uri.to_string()), parts.method.clone(), parts.uri.path().to_string());
        let cached = (!self.ttl.is_zero()).then(|| self.cache.get(&key)).flatten();
        let answer = match cached {
            Some(allowed) => {
                metrics.ext_authz(if allowed { "cached-allow" } else { "cached-deny" });
                if allowed { Answer::Allow } else { Answer::Deny }
            }
            None => {
                let answer = self.ask(upstreams, source, parts).await;
                match &answer {
                    Answer::Allow | Answer::Deny => {
                        let allowed = matches!(answer, Answer::Allow);
                        metrics.ext_authz(if allowed { "allow" } else { "deny" });
                        if !self.ttl.is_zero() {
                            self.cache.put(key, allowed, self.ttl);
                        }
                    }
                    Answer::Error(_) => metrics.ext_authz(if self.fail_open { "error-allow" } else { "error-deny" }),
                }
                answer
            }
        };
        match answer {
            Answer::Allow => Ok(()),
            Answer::Deny => Err(ProxyError::new(Reason::Denied, "").rule(&self.name)),
            Answer::Error(e) if self.fail_open => {
                tracing::warn!(authorizer = %self.addr, error = %e, "external authorizer failed; letting the request through (failOpen)");
                Ok(())
            }
            Answer::Error(e) => {
                tracing::warn!(authorizer = %self.addr, error = %e, "external authorizer failed; refusing the request");
                Err(ProxyError::new(Reason::AuthorizerUnavailable, "").rule(&self.name))
            }
        }
    }

    async fn ask(&self, upstreams: &Upstreams, source: Option<&PeerIdentity>, parts: &http::request::Parts) -> Answer {
        let mut request = match Request::get(self.path.as_str()).body(body::empty()) {
            Ok(request) => request,
            Err(e) => return Answer::Error(format!("cannot build the check request for `{}`: {e}", self.path)),
        };
        let headers = request.headers_mut();
        headers.insert(
            "x-forwarded-method",
            HeaderValue::from_str(parts.method.as_str()).unwrap_or(HeaderValue::from_static("GET")),
        );
        if let Some(Ok(uri)) = parts.uri.path_and_query().map(|pq| HeaderValue::from_str(pq.as_str())) {
            headers.insert("x-forwarded-uri", uri);
        }
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string));
        if let Some(Ok(host)) = host.map(|h| HeaderValue::from_str(&h)) {
            headers.insert("x-forwarded-host", host);
        }
        if let Some(peer) = source {
            headers.insert(crate::http::PEER_IDENTITY_HEADER, peer.header.clone());
        }
        for name in [http::header::AUTHORIZATION, http::header::COOKIE] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        if let Ok(host) = HeaderValue::from_str(&self.addr.to_string()) {
            headers.insert(http::header::HOST, host);
        }
        let call = async {
            let response = upstreams.send(self.addr, None, Wire::Http1, request, self.timeout).await?;
            let status = response.status();
            // Read (a bounded part of) the answer so the connection can be reused.
            body::discard(response.into_body(), MAX_ANSWER_BYTES).await;
            Ok::<_, crate::upstream::UpstreamError>(status)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Answer::Error(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Answer::Error(e.to_string()),
            Ok(Ok(status)) if status.is_success() => Answer::Allow,
            Ok(Ok(status)) if status.is_client_error() => Answer::Deny,
            Ok(Ok(status)) => Answer::Error(format!("answered {status}")),
        }
    }
}
