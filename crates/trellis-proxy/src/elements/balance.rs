//! `balance`: picks the endpoint of the selected backend for one attempt, and feeds the
//! endpoint's load statistics (in-flight count, latency) back to the balancer.

use crate::body::Body;
use crate::chain::{BoxFuture, Element, Next, RequestContext, is_grpc_request};
use crate::errors::{ProxyError, Reason};
use http::{Request, Response};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use trellis_api::HashOn;

/// Endpoints earlier attempts of this request went to (put in its context by `retry`); later
/// attempts avoid them while others exist. Shared, because an attempt that timed out
/// leaves no response to say where it went.
#[derive(Clone, Default)]
pub struct TriedEndpoints(pub Arc<Mutex<Vec<SocketAddr>>>);

/// The latency charged to an endpoint for a failed connection attempt.
const CONNECT_FAILURE_PENALTY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Balance;

impl Element for Balance {
    fn name(&self) -> &'static str {
        "balance"
    }

    fn call<'a>(&'a self, mut request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        Box::pin(async move {
            let grpc = is_grpc_request(&request);
            let context = RequestContext::of(&request);
            let Some(backend) = context.backend.clone() else {
                return ProxyError::new(Reason::Internal, "balance without a selected backend").into_response(grpc);
            };
            let hash = hash_of(&request, backend.hash_on.as_ref());
            let tried = context.tried.clone();
            let avoid: Vec<SocketAddr> =
                tried.as_ref().map(|t| t.0.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default();
            let skip = |i: usize| avoid.contains(&backend.endpoints[i].addr);
            let Some(index) = backend.balancer.pick(hash, &skip) else {
                return ProxyError::new(Reason::NoHealthyEndpoints, "the destination has no endpoints")
                    .upstream(&backend.label)
                    .into_response(grpc);
            };
            let target = backend.endpoints[index].clone();
            tracing::debug!(backend = %backend.label, endpoint = %target.addr, avoided = ?avoid, "picked endpoint");
            if let Some(tried) = &tried {
                tried.0.lock().unwrap_or_else(|e| e.into_inner()).push(target.addr);
            }
            let _in_flight = target.stats.start();
            RequestContext::of_mut(&mut request).target = Some(target.clone());
            let started = Instant::now();
            let response = next.run(request).await;
            // A failed connect is charged as a very slow answer, so latency-aware balancing
            // steers away from an endpoint that is down instead of favouring its fast failures.
            let connect_failed = response
                .extensions()
                .get::<ProxyError>()
                .is_some_and(|e| matches!(e.reason, Reason::ConnectFailure | Reason::ConnectTimeout));
            target.stats.observe_latency(if connect_failed { CONNECT_FAILURE_PENALTY } else { started.elapsed() });
            response
        })
    }
}

fn hash_of(request: &Request<Body>, hash_on: Option<&HashOn>) -> Option<u64> {
    let key: Option<Vec<u8>> = match hash_on? {
        HashOn::Header(name) => request.headers().get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(name) => request
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes().to_vec()),
        HashOn::SourceIp(_) => {
            RequestContext::of(request).connection.as_ref().map(|c| c.peer.ip().to_string().into_bytes())
        }
    };
    key.map(|k| crate::balance::hash_key(&k))
}
