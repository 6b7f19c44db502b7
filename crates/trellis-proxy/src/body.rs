//! Message bodies as the proxy carries them: one boxed type for every body, and a
//! replayable wrapper that lets a retry resend a small request body.
//!
//! Bodies are always streamed. [`Replay`] copies what passes through into a bounded buffer;
//! while the whole body fits, a later attempt can resend it. A body larger than the buffer
//! streams on, and the request simply stops being retryable.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used throughout the proxy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pub fn empty() -> Body {
    boxed(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}))
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(http_body_util::Full::new(bytes.into()).map_err(|never| match never {}))
}

/// Reads and drops up to `limit` bytes of `body` (e.g. so that its connection can be
/// reused), stopping at its end, an error, or the limit.
pub async fn discard(mut body: Body, limit: usize) {
    let mut read = 0;
    while read <= limit {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Largest request body kept for retries.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// A request body that can be sent more than once while it fits in the replay buffer.
#[derive(Clone)]
pub struct Replay {
    state: Arc<Mutex<ReplayState>>,
}

struct ReplayState {
    source: Option<Body>,
    chunks: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
    buffered: usize,
    limit: usize,
    /// More was read than fits: the buffer was dropped and no replay is possible.
    overflowed: bool,
    source_done: bool,
    /// Only the newest attempt may read from the source.
    generation: u64,
}

impl Replay {
    pub fn new(body: Body, limit: usize) -> Self {
        let done = body.is_end_stream();
        Replay {
            state: Arc::new(Mutex::new(ReplayState {
                source: Some(body),
                chunks: Vec::new(),
                trailers: None,
                buffered: 0,
                limit,
                overflowed: false,
                source_done: done,
                generation: 0,
            })),
        }
    }

    /// A body for the next attempt, or `None` when the body can no longer be replayed.
    pub fn attempt(&self) -> Option<Body> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.overflowed {
            return None;
        }
        state.generation += 1;
        let generation = state.generation;
        drop(state);
        Some(Body::new(ReplayBody { state: self.state.clone(), generation, next_chunk: 0, trailers_sent: false }))
    }
}

struct ReplayBody {
    state: Arc<Mutex<ReplayState>>,
    generation: u64,
    next_chunk: usize,
    trailers_sent: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a newer attempt")]
struct Superseded;

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut state = this.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != this.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if this.next_chunk < state.chunks.len() {
            let chunk = state.chunks[this.next_chunk].clone();
            this.next_chunk += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.source_done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = state.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = state.source.as_mut() else { return Poll::Ready(None) };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.source_done = true;
                state.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                state.source_done = true;
                state.overflowed = true; // a broken body must not be replayed
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !state.overflowed {
                            if state.buffered + data.len() <= state.limit {
                                state.buffered += data.len();
                                state.chunks.push(data.clone());
                                this.next_chunk = state.chunks.len();
                            } else {
                                state.overflowed = true;
                                state.chunks.clear();
                                state.buffered = 0;
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            state.trailers = Some(trailers.clone());
                            state.source_done = true;
                            this.trailers_sent = true;
                        }
                        frame
                    }
                };
                if state.source.as_ref().is_some_and(|s| s.is_end_stream()) {
                    state.source_done = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A source that says it is over before it was read (a GET) counts as done: the
        // HTTP/2 client then sends END_STREAM on the headers instead of an empty DATA frame
        // from a task of its own.
        let source_over = state.source_done || state.source.as_ref().is_none_or(|s| s.is_end_stream());
        source_over && self.next_chunk >= state.chunks.len() && (self.trailers_sent || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let buffered_left: u64 =
            state.chunks[self.next_chunk.min(state.chunks.len())..].iter().map(|c| c.len() as u64).sum();
        match &state.source {
            Some(source) if !state.source_done => {
                let hint = source.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + buffered_left);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + buffered_left);
                }
                out
            }
            _ => SizeHint::with_exact(buffered_left),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))).collect();
        boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn small_body_replays_whole() {
        let replay = Replay::new(chunks(&["ab", "cd"]), 16);
        let first = replay.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&first[..], b"abcd");
        let second = replay.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"abcd");
    }

    #[tokio::test]
    async fn partially_read_body_is_completed_on_replay() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 16);
        let mut first = replay.attempt().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        let second = replay.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"abcdef");
    }

    #[tokio::test]
    async fn oversized_body_streams_but_cannot_replay() {
        let replay = Replay::new(chunks(&["0123456789", "0123456789"]), 16);
        let first = replay.attempt().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(first.len(), 20);
        assert!(replay.attempt().is_none());
    }

    #[tokio::test]
    async fn stale_attempt_cannot_read() {
        let replay = Replay::new(chunks(&["ab"]), 16);
        let mut old = replay.attempt().unwrap();
        let _new = replay.attempt().unwrap();
        assert!(old.frame().await.unwrap().is_err());
    }
}
