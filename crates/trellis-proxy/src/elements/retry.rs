//! `retry`: sends a failed request again, within limits.
//!
//! An attempt is retried when its outcome is one the route lists (5xx, gateway errors, a
//! reset, a failed connect, chosen status or gRPC codes), the body could be replayed (it fit
//! in the replay buffer), attempts remain, and the retry budget allows it. Attempts are
//! spaced by exponential backoff with full jitter and avoid endpoints that already failed.

use super::TriedEndpoints;
use crate::body::{Body, REPLAY_LIMIT, Replay};
use crate::chain::{BoxFuture, Element, Next, RequestContext, is_grpc_request};
use crate::errors::{ProxyError, Reason, is_grpc};
use crate::metrics::Metrics;
use http::{Request, Response};
use http_body::Body as _;
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_api::{Retries, RetryOn};

/// How many attempts a request took, for access logs; absent means one.
#[derive(Clone, Copy, Debug)]
pub struct Attempts(pub u32);

pub struct Retry {
    attempts: u32,
    on: Vec<RetryOn>,
    grpc: Vec<u32>,
    per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    budget: Arc<RetryBudget>,
    metrics: Arc<Metrics>,
    labels: (String, String),
}

impl Retry {
    pub fn new(spec: &Retries, metrics: Arc<Metrics>, service: &str, route: &str) -> Self {
        Retry {
            attempts: spec.attempts.0,
            on: spec.on.clone(),
            grpc: spec.grpc.iter().map(|c| c.code()).collect(),
            per_try_timeout: spec.per_try_timeout.map(|d| d.get()),
            base: spec.backoff.base.get(),
            max: spec.backoff.max.get().max(spec.backoff.base.get()),
            budget: Arc::new(RetryBudget::new(spec.budget.ratio.0, spec.budget.min_per_second)),
            metrics,
            labels: (service.to_string(), route.to_string()),
        }
    }

    fn retryable(&self, response: &Response<Body>) -> bool {
        if let Some(error) = response.extensions().get::<ProxyError>() {
            return match error.reason {
                Reason::ConnectFailure | Reason::ConnectTimeout => self
                    .on
                    .iter()
                    .any(|c| matches!(c, RetryOn::ConnectFailure | RetryOn::ServerError | RetryOn::GatewayError)),
                Reason::UpstreamReset => {
                    self.on.iter().any(|c| matches!(c, RetryOn::Reset | RetryOn::ServerError | RetryOn::GatewayError))
                }
                Reason::PerTryTimeout => {
                    self.on.iter().any(|c| matches!(c, RetryOn::ServerError | RetryOn::GatewayError))
                }
                _ => false,
            };
        }
        let status = response.status().as_u16();
        let by_status = self.on.iter().any(|c| match c {
            RetryOn::ServerError => status >= 500,
            RetryOn::GatewayError => matches!(status, 502..=504),
            RetryOn::Status { status: s } => *s == status,
            _ => false,
        });
        // A trailers-only gRPC error carries grpc-status in the headers.
        let by_grpc = !self.grpc.is_empty()
            && response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|code| self.grpc.contains(&code));
        by_status || by_grpc
    }

    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << retry.min(16)).min(self.max);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { rand::rng().random_range(0..=nanos) })
    }

    /// One attempt: the rest of the chain, bounded by the per-try timeout if there is one.
    /// Without one it is the chain's own future, so the retry's state holds no timer.
    fn attempt<'a>(&self, request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        let Some(limit) = self.per_try_timeout else { return next.run(request) };
        let grpc = is_grpc_request(&request);
        Box::pin(async move {
            match tokio::time::timeout(limit, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ProxyError::new(Reason::PerTryTimeout, format!("attempt got no response within {limit:?}"))
                    .into_response(grpc),
            }
        })
    }
}

impl Element for Retry {
    fn name(&self) -> &'static str {
        "retry"
    }

    fn call<'a>(&'a self, request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        Box::pin(async move {
            self.budget.deposit();
            let (mut parts, body) = request.into_parts();
            let grpc = parts.extensions.get::<RequestContext>().and_then(|c| c.grpc).unwrap_or_else(|| is_grpc(&parts.headers));
            parts.extensions.get_or_insert_default::<RequestContext>().tried = Some(TriedEndpoints::default());
            // A body that is already over (most GETs) needs no replay buffer.
            let replay = (!body.is_end_stream()).then(|| Replay::new(body, REPLAY_LIMIT));
            let next_body = |replay: &Option<Replay>| match replay {
                Some(replay) => replay.attempt(),
                None => Some(crate::body::empty()),
            };
            // A new replay buffer always has the body for its first attempt.
            let Some(mut body) = next_body(&replay) else {
                return ProxyError::new(Reason::Internal, "request body unavailable").into_response(grpc);
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                if attempt >= self.attempts {
                    // The last attempt takes the request head; earlier ones send a copy.
                    let mut response = self.attempt(Request::from_parts(parts, body), next).await;
                    note_attempts(&mut response, attempt);
                    return response;
                }
                let mut response = self.attempt(Request::from_parts(copy_head(&parts), body), next).await;
                note_attempts(&mut response, attempt);
                if !self.retryable(&response) {
                    return response;
                }
                if !self.budget.withdraw() {
                    self.metrics.retry_budget_exhausted(&self.labels.0, &self.labels.1);
                    return response;
                }
                // The body is gone for good once it outgrew the buffer.
                let Some(again) = next_body(&replay) else { return response };
                body = again;
                self.metrics.retry(&self.labels.0, &self.labels.1);
                drop(response);
                // Boxed: a timer is a few hundred bytes that most requests never need.
                Box::pin(tokio::time::sleep(self.backoff(attempt - 1))).await;
            }
        })
    }
}

/// Records the attempts a response took, if more than one: one is what readers assume
/// without it, and the extension would cost most responses an allocation.
fn note_attempts(response: &mut Response<Body>, attempt: u32) {
    if attempt > 1 {
        response.extensions_mut().insert(Attempts(attempt));
    }
}

/// A copy of a request head for one attempt (`Parts` is not `Clone`).
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    *request.extensions_mut() = head.extensions.clone();
    request.into_parts().0
}

/// Retries allowed over a sliding 10-second window: `ratio` of requests plus
/// `min_per_second` each second, so a failing upstream sees at most (1 + ratio)× the load.
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    window: Mutex<Window>,
}

const BUCKETS: usize = 10;

struct Window {
    /// (requests, retries) per one-second bucket.
    buckets: [(u64, u64); BUCKETS],
    current: usize,
    current_started: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        RetryBudget {
            ratio,
            min_per_second,
            window: Mutex::new(Window { buckets: [(0, 0); BUCKETS], current: 0, current_started: Instant::now() }),
        }
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = w.current_started.elapsed().as_secs() as usize;
        if elapsed > 0 {
            for _ in 0..elapsed.min(BUCKETS) {
                w.current = (w.current + 1) % BUCKETS;
                let current = w.current;
                w.buckets[current] = (0, 0);
            }
            w.current_started += Duration::from_secs(elapsed as u64);
        }
        f(&mut w)
    }

    pub fn deposit(&self) {
        self.with_window(|w| w.buckets[w.current].0 += 1);
    }

    /// Takes one retry from the budget, if any is left.
    pub fn withdraw(&self) -> bool {
        self.with_window(|w| {
            let (requests, retries) = w.buckets.iter().fold((0, 0), |(a, b), (r, t)| (a + r, b + t));
            let allowed = (requests as f64 * self.ratio) as u64 + self.min_per_second as u64 * BUCKETS as u64;
            if retries < allowed {
                w.buckets[w.current].1 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_retries_at_ratio_plus_minimum() {
        let budget = RetryBudget::new(0.2, 1);
        for _ in 0..1000 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.withdraw()).count();
        // 20% of 1000 plus 1/s over the 10 s window.
        assert_eq!(granted, 210);
    }
}
