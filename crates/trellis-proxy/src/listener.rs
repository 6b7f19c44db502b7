//! Accepting connections: find where each was going, detect its protocol, terminate mesh
//! TLS on the inbound side, and hand it to HTTP serving or opaque forwarding.
//!
//! Inbound, with a workload certificate: a TLS ClientHello offering a `trellis-` ALPN (another
//! proxy), or any TLS in `strict` mode, is terminated here and the client's certificate
//! verified; its SPIFFE ID travels with each request for authorization. In `strict` mode
//! plaintext is refused; in `permissive` mode it is served, and other TLS passes through to
//! the application. `trellis_inbound_connections_total{security}` counts which was used.

use crate::Shared;
use crate::authz::{Decision, Facts};
use crate::chain::{Connection, PeerIdentity};
use crate::detect::{self, Protocol};
use crate::http::Side;
use crate::tcp::{self, TcpDestination};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use trellis_api::MtlsMode;

/// Longest a mesh TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

    let inbound = matches!(side, Side::Inbound { .. });
    let strict = inbound && config.authorizer.mtls_mode() == MtlsMode::Strict;
    let mesh_tls = inbound && shared.identity.usable();
    // Declared opaque: no detection at all (server-speaks-first protocols need this) — unless
    // peers may arrive over mesh TLS, whose ClientHello detection must see.
    let declared_opaque = match &side {
        Side::Inbound { .. } => {
            !mesh_tls
                && !strict
                && config.settings.inbound.as_ref().is_some_and(|l| l.opaque_ports.contains(&target.port()))
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
        if inbound {
            shared.runtime.metrics.inbound_connection("plaintext");
            if !authorize_connection(&shared, None, target, peer) {
                return;
            }
        }
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
    if inbound {
        let is_tls = matches!(protocol, Protocol::Tls { .. });
        let ours = matches!(protocol, Protocol::Tls { mesh: true, .. }) || (strict && is_tls);
        if ours && mesh_tls {
            return serve_mesh_tls(io, peer, target, side, shared).await;
        }
        if strict {
            let (security, why) = if is_tls {
                ("tls-refused", "this proxy has no valid workload certificate")
            } else {
                ("plaintext-refused", "plaintext is refused (mTLS mode strict)")
            };
            shared.runtime.metrics.inbound_connection(security);
            tracing::info!(%peer, %target, "inbound connection refused: {why}");
            return;
        }
        shared.runtime.metrics.inbound_connection(if is_tls { "tls-passthrough" } else { "plaintext" });
        let http = matches!(protocol, Protocol::Http1 | Protocol::Http2);
        if !http && !authorize_connection(&shared, None, target, peer) {
            return;
        }
    }
    let connection = Connection { peer, target, peer_identity: None };
    match protocol {
        Protocol::Http1 => crate::http::serve(io, false, side, connection, shared).await,
        Protocol::Http2 => crate::http::serve(io, true, side, connection, shared).await,
        Protocol::Tls { sni, .. } => {
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

/// Terminates mesh TLS from a peer, verifies its certificate, and serves what the ALPN says
/// is inside: HTTP/2, HTTP/1.1 or opaque TCP (detected when no ALPN was agreed).
async fn serve_mesh_tls<IO>(io: IO, peer: SocketAddr, target: SocketAddr, side: Side, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use trellis_identity::tls as mesh;
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.identity.server_config());
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.runtime.metrics.inbound_connection("handshake-failed");
            tracing::info!(%peer, error = %e, "inbound mutual TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.runtime.metrics.inbound_connection("handshake-failed");
            tracing::info!(%peer, "inbound mutual TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let Some(identity) = mesh::peer_identity(session).and_then(PeerIdentity::new).map(Arc::new) else {
        shared.runtime.metrics.inbound_connection("handshake-failed");
        tracing::info!(%peer, "inbound mutual TLS peer presented no SPIFFE ID");
        return;
    };
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    shared.runtime.metrics.inbound_connection("mtls");
    let direction = side.direction();
    let connection = Connection { peer, target, peer_identity: Some(identity.clone()) };
    match alpn.as_deref() {
        Some(mesh::ALPN_MESH_H2) | Some(mesh::ALPN_H2) => crate::http::serve(tls, true, side, connection, shared).await,
        Some(mesh::ALPN_MESH_HTTP1) | Some(mesh::ALPN_HTTP1) => {
            crate::http::serve(tls, false, side, connection, shared).await
        }
        Some(mesh::ALPN_MESH_TCP) => {
            if authorize_connection(&shared, Some(&identity), target, peer)
                && let Some(destination) = tcp_destination(&side, target, &shared, None)
            {
                tcp::forward(tls, destination, direction, shared).await;
            }
        }
        _ => {
            let timeout = shared.config().settings.detect_timeout.get();
            let Ok((protocol, _, io)) = detect::detect(tls, timeout, MAX_DETECT_BYTES).await else { return };
            match protocol {
                Protocol::Http1 => crate::http::serve(io, false, side, connection, shared).await,
                Protocol::Http2 => crate::http::serve(io, true, side, connection, shared).await,
                _ => {
                    if authorize_connection(&shared, Some(&identity), target, peer)
                        && let Some(destination) = tcp_destination(&side, target, &shared, None)
                    {
                        tcp::forward(io, destination, direction, shared).await;
                    }
                }
            }
        }
    }
}

/// Connection-level authorization for opaque TCP (HTTP requests are checked one by one).
fn authorize_connection(
    shared: &Shared,
    source: Option<&Arc<PeerIdentity>>,
    target: SocketAddr,
    peer: SocketAddr,
) -> bool {
    let config = shared.config();
    let facts = Facts { source: source.map(|s| s.as_ref()), port: target.port(), http: None };
    match config.authorizer.check(&facts) {
        Decision::Allow => true,
        Decision::Deny { policy, rule } => {
            tracing::info!(%peer, %policy, %rule, "inbound connection denied");
            false
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
