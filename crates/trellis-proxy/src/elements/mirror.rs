//! `mirror`: sends a copy of a share of requests to another destination and discards its
//! answers. The client only ever sees the primary's response.
//!
//! The request body is teed as it streams to the primary; the copy goes through a small
//! bounded channel. If the mirror cannot keep up, its copy is aborted rather than slowing
//! or buffering the primary.

use crate::body::{Body, BoxError};
use crate::chain::{BoxFuture, Element, Next};
use crate::config::Backend;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use rand::Rng;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Marks mirrored requests, so the receiving side can tell them apart.
pub const SHADOW_HEADER: &str = "x-trellis-shadow";

pub struct Mirror {
    backend: Arc<Backend>,
    ratio: f64,
    upstreams: Arc<Upstreams>,
    metrics: Arc<Metrics>,
    labels: (String, String),
}

impl Mirror {
    pub fn new(
        backend: Arc<Backend>,
        ratio: f64,
        upstreams: Arc<Upstreams>,
        metrics: Arc<Metrics>,
        service: &str,
        route: &str,
    ) -> Self {
        Mirror { backend, ratio, upstreams, metrics, labels: (service.to_string(), route.to_string()) }
    }
}

impl Element for Mirror {
    fn name(&self) -> &'static str {
        "mirror"
    }

    fn call<'a>(&'a self, request: Request<Body>, next: Next<'a>) -> BoxFuture<'a, Response<Body>> {
        if self.ratio <= 0.0 || rand::rng().random::<f64>() >= self.ratio {
            return next.run(request);
        }
        let (parts, primary_body) = request.into_parts();
        let (primary_body, copy_body) = if primary_body.is_end_stream() {
            (primary_body, crate::body::empty())
        } else {
            let (tx, rx) = mpsc::channel(16);
            let broken = Arc::new(AtomicBool::new(false));
            (
                Body::new(Tee { inner: primary_body, copy: Some(tx), broken: broken.clone() }),
                Body::new(CopyBody { rx, broken }),
            )
        };
        let mut primary = Request::from_parts(parts.clone_without_extensions(), primary_body);
        *primary.extensions_mut() = parts.extensions.clone();

        let mut copy = Request::new(copy_body);
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        copy.headers_mut().insert(SHADOW_HEADER, http::HeaderValue::from_static("true"));

        let backend = self.backend.clone();
        let upstreams = self.upstreams.clone();
        let metrics = self.metrics.clone();
        let labels = self.labels.clone();
        tokio::spawn(async move {
            let outcome = match backend.balancer.pick(None, &|_| false) {
                None => "no-endpoints",
                Some(index) => {
                    let target = &backend.endpoints[index];
                    let wire = super::forward::wire_to(&copy, target, &backend);
                    let response = super::forward::send(
                        &upstreams,
                        target.addr,
                        target.identity.clone(),
                        backend.label.clone(),
                        wire,
                        backend.connect_timeout,
                        copy,
                    )
                    .await;
                    let failed = response.extensions().get::<crate::errors::ProxyError>().is_some();
                    // Read the answer to the end so the connection can be reused, then drop it.
                    let _ = response.into_body().collect().await;
                    if failed { "failed" } else { "sent" }
                }
            };
            metrics.mirror(&labels.0, &labels.1, outcome);
        });
        next.run(primary)
    }
}

trait PartsExt {
    fn clone_without_extensions(&self) -> http::request::Parts;
}

impl PartsExt for http::request::Parts {
    fn clone_without_extensions(&self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        parts
    }
}

/// The primary's body, copying each frame to the mirror while the mirror keeps up.
struct Tee {
    inner: Body,
    copy: Option<mpsc::Sender<Frame<Bytes>>>,
    broken: Arc<AtomicBool>,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let duplicate = if let Some(data) = frame.data_ref() {
                    Some(Frame::data(data.clone()))
                } else {
                    frame.trailers_ref().map(|t| Frame::trailers(t.clone()))
                };
                if let (Some(tx), Some(duplicate)) = (&self.copy, duplicate)
                    && tx.try_send(duplicate).is_err()
                {
                    self.broken.store(true, Ordering::Relaxed);
                    self.copy = None;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.broken.store(true, Ordering::Relaxed);
                self.copy = None;
            }
            Poll::Ready(None) => self.copy = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The mirror's copy of the body; fails rather than ending short if the tee gave up.
struct CopyBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
    broken: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("mirror fell behind the primary request; copy aborted")]
struct MirrorAborted;

impl HttpBody for CopyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) if self.broken.load(Ordering::Relaxed) => Poll::Ready(Some(Err(MirrorAborted.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
