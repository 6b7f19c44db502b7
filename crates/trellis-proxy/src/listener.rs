//! Accepting connections: find where each was going, detect its protocol, and hand it to
//! HTTP serving or opaque forwarding.

use crate::Shared;
use crate::chain::Connection;
use crate::detect::{self, Protocol};
use crate::http::Side;
use crate::tcp::{self, TcpDestination};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Most bytes read while detecting a protocol before calling the connection opaque.
const MAX_DETECT_BYTES: usize = 16 * 1024;

/// How long a connection to a port declared HTTP may stay silent before it is closed.
const HTTP_IDLE_BEFORE_FIRST_REQUEST: std::time::Duration = std::time::Duration::from_secs(60);

/// Accepts until the proxy starts draining.
pub async fn accept_loop(listener: TcpListener, side: Side, shared: Arc<Shared>) {
    let mut drain = shared.drain_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let side = side.clone();
                let shared = shared.clone();
                let guard = shared.track_connection();
                tokio::spawn(async move {
                    handle(stream, peer, side, shared).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, side: Side, shared: Arc<Shared>) {
    let local = stream.local_addr().unwrap_or(peer);
    let config = shared.config();
    // Where the client meant to go: the original destination if the connection was captured.
    let captured = matches!(side, Side::Outbound { .. })
        || matches!(side, Side::Inbound { .. }) && shared.inbound_forward.is_none();
    let target = if captured { crate::capture::original_destination(&stream).unwrap_or(local) } else { local };
    let side = match side {
        Side::Inbound { .. } => Side::Inbound { app: shared.inbound_forward.unwrap_or(target) },
        other => other,
    };
    if let Side::Inbound { app } = &side
        && *app == local
    {
        // Not redirected and no `forward` address: sending it on would loop back here.
        tracing::info!(%peer, %local, "inbound connection was not captured and `inbound.forward` is unset; closed");
        return;
    }
    let direction = side.direction();

    // Declared opaque: no detection at all (server-speaks-first protocols need this).
    let declared_opaque = match &side {
        Side::Inbound { .. } => {
            config.settings.inbound.as_ref().is_some_and(|l| l.opaque_ports.contains(&target.port()))
        }
        Side::Outbound { .. } => {
            config.settings.outbound.as_ref().is_some_and(|l| l.opaque_ports.contains(&target.port()))
                || config
                    .service_for_address(target)
                    .and_then(|s| s.protocol(target.port()))
                    .is_some_and(|p| p == trellis_api::Protocol::Tcp)
        }
        Side::Explicit { service } => config.service_named(service).is_some_and(|s| {
            !s.spec.ports.is_empty() && s.spec.ports.iter().all(|p| p.protocol == trellis_api::Protocol::Tcp)
        }),
    };
    // A port declared HTTP may idle before its first request (pooled client connections are
    // opened ahead of use), so it waits as long as an idle HTTP connection may, and a silent
    // one is closed rather than turned into opaque TCP.
    let http_family = |p: trellis_api::Protocol| {
        matches!(p, trellis_api::Protocol::Http | trellis_api::Protocol::Http2 | trellis_api::Protocol::Grpc)
    };
    let declared_http = match &side {
        Side::Inbound { .. } => false,
        Side::Outbound { .. } => {
            config.service_for_address(target).and_then(|s| s.protocol(target.port())).is_some_and(http_family)
        }
        Side::Explicit { service } => config
            .service_named(service)
            .is_some_and(|s| !s.spec.ports.is_empty() && s.spec.ports.iter().all(|p| http_family(p.protocol))),
    };
    let detect_timeout =
        if declared_http { HTTP_IDLE_BEFORE_FIRST_REQUEST } else { config.settings.detect_timeout.get() };
    if declared_opaque {
        shared.runtime.metrics.detection(direction, detect::Outcome::DeclaredOpaque.as_str());
        let destination = tcp_destination(&side, target, &shared, None);
        drop(config);
        if let Some(destination) = destination {
            tcp::forward(stream, destination, direction, shared).await;
        }
        return;
    }
    drop(config);

    let (protocol, outcome, io) = match detect::detect(stream, detect_timeout, MAX_DETECT_BYTES).await {
        Ok(detected) => detected,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection failed during protocol detection");
            return;
        }
    };
    shared.runtime.metrics.detection(direction, outcome.as_str());
    if outcome == detect::Outcome::ClosedEarly || (declared_http && outcome == detect::Outcome::Timeout) {
        return;
    }
    let connection = Connection { peer, target };
    match protocol {
        Protocol::Http1 => crate::http::serve(io, false, side, connection, shared).await,
        Protocol::Http2 => crate::http::serve(io, true, side, connection, shared).await,
        Protocol::Tls { sni } => {
            if let Some(destination) = tcp_destination(&side, target, &shared, sni.as_deref()) {
                tcp::forward(io, destination, direction, shared).await;
            }
        }
        Protocol::Opaque => {
            if let Some(destination) = tcp_destination(&side, target, &shared, None) {
                tcp::forward(io, destination, direction, shared).await;
            }
        }
    }
}

/// Where an opaque (or TLS pass-through) connection goes.
fn tcp_destination(side: &Side, target: SocketAddr, shared: &Shared, sni: Option<&str>) -> Option<TcpDestination> {
    let config = shared.config();
    match side {
        Side::Inbound { app } => Some(TcpDestination::Address(*app)),
        Side::Explicit { service } => config.service_named(service).map(|s| TcpDestination::Service(s.id.clone())),
        Side::Outbound { listener } => {
            let by_name = sni.and_then(|name| config.service_for_authority(name));
            if let Some(service) = by_name.or_else(|| config.service_for_address(target)) {
                Some(TcpDestination::Service(service.id.clone()))
            } else if target != *listener {
                Some(TcpDestination::Address(target))
            } else {
                // Connected to the outbound port itself, with nothing to say where to go.
                tracing::info!(%target, "opaque connection to the outbound listener itself has no destination; closed");
                None
            }
        }
    }
}
