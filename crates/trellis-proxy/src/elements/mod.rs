//! Built-in elements and the compiler that turns a route into its chain.
//!
//! A route's chain, in order (each present only when the route configures it):
//! `headers → rewrite → split → mirror → timeout → retry → balance → forward`, or a single
//! `redirect` / `direct-response` for routes that answer by themselves.

mod balance;
mod forward;
mod headers;
mod mirror;
mod respond;
mod retry;
mod split;
mod timeout;

pub use balance::TriedEndpoints;
pub use forward::{Forward, ForwardTo, ORIG_PROTO_HEADER, UpstreamLabel};
pub use retry::Attempts;

use crate::chain::Element;
use crate::config::BackendBuilder;
use std::sync::Arc;
use trellis_api::{Route, Service, StringMatch};

/// The part of a route's chain that needs no backend: a lone answer (redirect, direct
/// response), or the header and path rewrites that come first. Everything in a route that can
/// fail to compile is here.
enum Head {
    Answer(Vec<Arc<dyn Element>>),
    Rewrites(Vec<Arc<dyn Element>>),
}

fn compile_head(route: &Route) -> anyhow::Result<Head> {
    if let Some(redirect) = &route.redirect {
        return Ok(Head::Answer(vec![Arc::new(respond::Redirect::new((**redirect).clone()))]));
    }
    if let Some(direct) = &route.direct_response {
        return Ok(Head::Answer(vec![Arc::new(respond::DirectResponse::new(direct)?)]));
    }
    let mut chain: Vec<Arc<dyn Element>> = Vec::new();
    if route.request_headers.is_some() || route.response_headers.is_some() {
        chain.push(Arc::new(headers::HeaderRewrite::new(
            route.request_headers.as_deref(),
            route.response_headers.as_deref(),
        )?));
    }
    if let Some(rewrite) = &route.rewrite {
        let matched_prefix = match &route.matches.path {
            Some(StringMatch::Prefix(p)) => Some(p.clone()),
            _ => None,
        };
        chain.push(Arc::new(headers::Rewrite::new((**rewrite).clone(), matched_prefix)?));
    }
    Ok(Head::Rewrites(chain))
}

/// What can fail in [`compile_route`], checked without building backends: a configuration
/// whose routes pass compiles every service on demand.
pub fn check_route(route: &Route) -> anyhow::Result<()> {
    crate::routing::RouteMatcher::new(&route.matches)?;
    compile_head(route).map(drop)
}

/// Compiles one route of `service` into its element chain.
pub fn compile_route(
    service: &Service,
    route: &Route,
    route_name: &str,
    backends: &mut BackendBuilder,
) -> anyhow::Result<Vec<Arc<dyn Element>>> {
    let mut chain = match compile_head(route)? {
        Head::Answer(chain) => return Ok(chain),
        Head::Rewrites(chain) => chain,
    };
    let namespace = service.namespace.clone();
    let own_id = crate::config::service_id(&service.name, &namespace);
    let destinations: Vec<(Arc<crate::config::Backend>, u32)> = if route.to.is_empty() {
        vec![(backends.get(&own_id, None), 100)]
    } else {
        route
            .to
            .iter()
            .map(|d| {
                let id =
                    d.service.as_deref().map(|s| backends.resolve(s, &namespace)).unwrap_or_else(|| own_id.clone());
                (backends.get(&id, d.subset.as_deref()), d.weight.0)
            })
            .collect()
    };
    chain.push(Arc::new(split::Split::new(destinations)));
    if let Some(mirror) = &route.mirror {
        let id = mirror.service.as_deref().map(|s| backends.resolve(s, &namespace)).unwrap_or_else(|| own_id.clone());
        let backend = backends.get(&id, mirror.subset.as_deref());
        chain.push(Arc::new(mirror::Mirror::new(
            backend,
            mirror.percent.0,
            backends.runtime.upstreams.clone(),
            backends.runtime.metrics.clone(),
            &own_id,
            route_name,
        )));
    }
    if let Some(timeout) = route.timeout.or(service.resilience.timeout) {
        chain.push(Arc::new(timeout::Timeout::new(timeout.get())));
    }
    if let Some(retries) = &route.retries {
        chain.push(Arc::new(retry::Retry::new(retries, backends.runtime.metrics.clone(), &own_id, route_name)));
    }
    chain.push(Arc::new(balance::Balance));
    chain.push(Arc::new(forward::Forward::new(backends.runtime.upstreams.clone())));
    Ok(chain)
}
