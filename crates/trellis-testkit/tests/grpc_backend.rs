//! The gRPC mode of `trellis-test-backend`: all four call shapes.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::Code;
use trellis_testkit::grpc::{EchoRequest, echo_client, echo_request};
use trellis_testkit::spawn_backend;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn unary_and_failure() {
    let (_b, addr) = spawn_backend(&["grpc", "--name", "g1"]);
    let mut c = echo_client(addr).await.unwrap();
    let r = c.unary(echo_request("hi")).await.unwrap().into_inner();
    assert_eq!((r.message.as_str(), r.server.as_str()), ("hi", "g1"));

    for (code, expected) in [(14, Code::Unavailable), (5, Code::NotFound), (999, Code::Unknown)] {
        let req = EchoRequest { message: "x".into(), fail_code: code, ..Default::default() };
        let err = c.unary(req).await.unwrap_err();
        assert_eq!(err.code(), expected);
    }
}

#[tokio::test]
async fn server_stream() {
    let (_b, addr) = spawn_backend(&["grpc", "--name", "g2"]);
    let mut c = echo_client(addr).await.unwrap();
    let req = EchoRequest { message: "m".into(), count: 5, ..Default::default() };
    let mut s = c.server_stream(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(r) = s.message().await.unwrap() {
        assert_eq!((r.message.as_str(), r.server.as_str()), ("m", "g2"));
        n += 1;
    }
    assert_eq!(n, 5);
}

#[tokio::test]
async fn client_stream() {
    let (_b, addr) = spawn_backend(&["grpc"]);
    let mut c = echo_client(addr).await.unwrap();
    let reqs = futures_util::stream::iter(["a", "b", "c"].map(echo_request));
    let r = c.client_stream(reqs).await.unwrap().into_inner();
    assert_eq!(r.message, "a,b,c");
    assert_eq!(r.server, "backend");
}

/// Message N+1 is sent only after reply N arrived, which deadlocks (and
/// times out) unless the server really streams.
#[tokio::test]
async fn bidi_is_streaming() {
    let (_b, addr) = spawn_backend(&["grpc", "--name", "g3"]);
    let mut c = echo_client(addr).await.unwrap();
    let (tx, rx) = mpsc::channel::<EchoRequest>(1);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(echo_request("msg-0")).await.unwrap();
    let mut inbound = tokio::time::timeout(STEP, c.bidi(outbound))
        .await
        .expect("bidi call should start while the client stream is open")
        .unwrap()
        .into_inner();
    for i in 0..4 {
        let reply = tokio::time::timeout(STEP, inbound.next())
            .await
            .unwrap_or_else(|_| panic!("reply {i} not streamed"))
            .expect("stream ended")
            .unwrap();
        assert_eq!(reply.message, format!("msg-{i}"));
        assert_eq!(reply.server, "g3");
        tx.send(echo_request(&format!("msg-{}", i + 1))).await.unwrap();
    }
    let last = inbound.next().await.unwrap().unwrap();
    assert_eq!(last.message, "msg-4");
    drop(tx);
    assert!(inbound.next().await.is_none());
}
