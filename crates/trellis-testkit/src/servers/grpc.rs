//! gRPC test backend: the `trellis.testkit.v1.Echo` service, covering all
//! four call shapes. Every reply names the backend in `server`.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::echo_proto::echo_server::{Echo, EchoServer};
use crate::echo_proto::{EchoReply, EchoRequest};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

/// The Echo service implementation.
#[derive(Clone, Debug)]
pub struct EchoService {
    name: String,
}

impl EchoService {
    /// A service whose replies carry `server = name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    fn reply(&self, message: String) -> EchoReply {
        EchoReply { message, server: self.name.clone() }
    }
}

fn check_fail(req: &EchoRequest) -> Result<(), Status> {
    if req.fail_code == 0 {
        return Ok(());
    }
    // Codes outside i32 or unknown to tonic become UNKNOWN.
    let code = i32::try_from(req.fail_code).map_or(Code::Unknown, Code::from);
    Err(Status::new(code, format!("requested failure {}", req.fail_code)))
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        check_fail(&req)?;
        Ok(Response::new(self.reply(req.message)))
    }

    type ServerStreamStream = ReplyStream;

    /// Sends `count` replies with the request's message (lazily, so a huge
    /// count costs no memory); honours `fail_code` before the first reply.
    async fn server_stream(&self, req: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        let req = req.into_inner();
        check_fail(&req)?;
        let this = self.clone();
        let stream = futures_util::stream::iter(0..req.count).map(move |_| Ok(this.reply(req.message.clone())));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn client_stream(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<EchoReply>, Status> {
        let mut inbound = req.into_inner();
        let mut parts = Vec::new();
        while let Some(m) = inbound.message().await? {
            parts.push(m.message);
        }
        Ok(Response::new(self.reply(parts.join(","))))
    }

    type BidiStream = ReplyStream;

    /// Maps the inbound stream directly, so each reply leaves as soon as its
    /// request arrives.
    async fn bidi(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<ReplyStream>, Status> {
        let this = self.clone();
        let stream = req.into_inner().map(move |r| r.map(|m| this.reply(m.message)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the Echo service on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String) -> anyhow::Result<()> {
    Server::builder()
        .add_service(EchoServer::new(EchoService::new(name)))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
