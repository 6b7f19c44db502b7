//! Opaque TCP: connections the proxy carries byte for byte, balanced per connection.

use crate::Shared;
use crate::authz::Decision;
use crate::identity::Carried;
use crate::upstream::{Connector, UpstreamError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where an opaque connection goes: a mesh service's endpoint, or a fixed address.
pub enum TcpDestination {
    Service(crate::config::ServiceId),
    Address(SocketAddr),
}

/// Copies bytes both ways between the client and the chosen upstream until both close.
pub async fn forward<IO>(mut client: IO, destination: TcpDestination, direction: &'static str, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = shared.config();
    let (addr, label, connect_timeout, stats, peer) = match destination {
        // Labelled as one series whatever the address, to keep metrics bounded.
        TcpDestination::Address(addr) => (addr, "passthrough".into(), Duration::from_secs(1), None, None),
        TcpDestination::Service(id) => {
            let Some(service) = config.service(&id) else {
                tracing::info!(service = %id, "opaque connection for an unknown service closed");
                return;
            };
            if let Decision::Deny { rule, .. } = config.authorizer.egress(&service.spec.namespace) {
                tracing::info!(service = %id, %rule, "opaque connection into another tenant refused");
                return;
            }
            let backend = &service.all;
            let Some(index) = backend.balancer.pick(None, &|_| false) else {
                tracing::info!(service = %id, "opaque connection closed: no-healthy-endpoints");
                shared.runtime.metrics.proxy_error(direction, &id, "no-healthy-endpoints");
                return;
            };
            let target = &backend.endpoints[index];
            let peer = target.identity.clone();
            (target.addr, backend.label.clone(), backend.connect_timeout, Some(target.stats.clone()), peer)
        }
    };
    drop(config);
    let _in_flight = stats.as_ref().map(|s| s.start());
    let connector: &Connector = shared.runtime.upstreams.connector();
    let mut upstream = match connector.connect_mesh(addr, connect_timeout, peer.as_deref(), Carried::Tcp).await {
        Ok(stream) => stream,
        Err(e) => {
            let reason = match e {
                UpstreamError::Tls(_) => "upstream-tls-failure",
                UpstreamError::NoIdentity => "no-workload-identity",
                _ => "connect-failure",
            };
            tracing::info!(upstream = %label, endpoint = %addr, error = %e, "opaque connection closed: {reason}");
            shared.runtime.metrics.proxy_error(direction, &label, reason);
            return;
        }
    };
    let (sent, received) = match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(upstream = %label, error = %e, "opaque connection ended with an error");
            (0, 0)
        }
    };
    shared.runtime.metrics.tcp_connection(direction, &label, sent, received);
}
