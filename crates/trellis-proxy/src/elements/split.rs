//! `split`: picks one of a route's weighted destinations for the request.

use crate::body::Body;
use crate::chain::{BoxFuture, Element, Next, RequestContext};
use crate::config::Backend;
use http::{Request, Response};
use rand::Rng;
use std::sync::Arc;

pub struct Split {
    destinations: Vec<(Arc<Backend>, u32)>,
    total: u32,
}

impl Split {
    pub fn new(destinations: Vec<(Arc<Backend>, u32)>) -> Self {
        let total = destinations.iter().map(|(_, w)| *w).sum();
        Split { destinations, total }
    }

    fn pick(&self) -> Arc<Backend> {
        if self.destinations.len() == 1 || self.total == 0 {
            return self.destinations[0].0.clone();
        }
        let mut point = rand::rng().random_range(0..self.total);
        for (backend, weight) in &self.destinations {
            if point < *weight {
                return backend.clone();
            }
            point -= weight;
        }
        self.destinations[self.destinations.len() - 1].0.clone()
    }
}

impl Element for Split {
    fn name(&self) -> &'static str {
        "split"
    }

    fn call<'a>(&'a self, mut request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        RequestContext::of_mut(&mut request).backend = Some(self.pick());
        next.run(request)
    }
}
