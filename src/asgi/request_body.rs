//! A request body that streams to the app in `http.request` messages, with backpressure.
//!
//! A pump task on the I/O thread reads the body from hyper into a [`BodyPipe`] only while the
//! pipe holds less than its capacity, and wakes the request's cycle on the loop thread when a
//! chunk arrives. The app's `receive()` takes what is queued, which lets the pump read on: a
//! client sending faster than the app reads is held back by TCP, not by a growing buffer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;

use crate::http::Rejection;
use crate::gateway::{concat, next_data};

/// How a piped body ended, or that it has not yet.
pub(crate) enum PipeEnd {
    Open,
    Complete,
    /// The body could not be read: what the client is answered if the response has not begun.
    Failed(Rejection),
}

struct PipeState {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    end: PipeEnd,
    /// The app has asked for the body: before that, a client that sent `Expect: 100-continue`
    /// is not read from, so hyper sends no interim response for a body the app never wants.
    asked: bool,
    /// The app is done with the request: the pump stops and drops the rest of the body.
    abandoned: bool,
    pump: Option<Waker>,
}

pub(crate) struct BodyPipe {
    state: Mutex<PipeState>,
    capacity: usize,
}

/// What `receive()` finds in the pipe.
pub(crate) enum Taken {
    /// Body bytes, and whether more will follow.
    Data(Bytes, bool),
    /// Nothing yet: the pump will wake the cycle.
    Empty,
    /// The body failed.
    Failed(Rejection),
}

impl BodyPipe {
    fn wake_pump(state: &mut PipeState) {
        if let Some(waker) = state.pump.take() {
            waker.wake();
        }
    }

    /// Whether the pump has read the body to its end (what it read may still be queued).
    pub fn read_to_end(&self) -> bool {
        matches!(self.state.lock().unwrap().end, PipeEnd::Complete)
    }

    /// Takes every queued chunk as one piece.
    pub fn take(&self) -> Taken {
        let mut state = self.state.lock().unwrap();
        state.asked = true;
        if state.chunks.is_empty() {
            return match std::mem::replace(&mut state.end, PipeEnd::Open) {
                PipeEnd::Open => {
                    Self::wake_pump(&mut state);
                    Taken::Empty
                }
                PipeEnd::Complete => {
                    state.end = PipeEnd::Complete;
                    Taken::Data(Bytes::new(), false)
                }
                PipeEnd::Failed(rejection) => Taken::Failed(rejection),
            };
        }
        let total = state.bytes;
        let chunks: Vec<Bytes> = state.chunks.drain(..).collect();
        state.bytes = 0;
        let more = !matches!(state.end, PipeEnd::Complete);
        Self::wake_pump(&mut state);
        drop(state);
        Taken::Data(concat(chunks, total), more)
    }
}

/// The loop thread's handle on a piped body; dropping it tells the pump to stop.
pub(crate) struct BodyReader(pub Arc<BodyPipe>);

impl Drop for BodyReader {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap();
        state.abandoned = true;
        BodyPipe::wake_pump(&mut state);
    }
}

/// What the pump reads from and how.
pub(crate) struct PumpSource {
    pub rest: Incoming,
    pub allowed: u64,
    pub limit: u64,
    pub timeout: Option<Duration>,
}

/// Starts pumping `source` into a new pipe that already holds `head`, waking `consumer` on
/// each change. `wait_for_ask`: read nothing until the app asks (`Expect: 100-continue`).
pub(crate) fn start(head: Bytes, source: PumpSource, capacity: usize, wait_for_ask: bool, consumer: Waker) -> BodyReader {
    let mut chunks = VecDeque::new();
    let bytes = head.len();
    if !head.is_empty() {
        chunks.push_back(head);
    }
    let pipe = Arc::new(BodyPipe {
        state: Mutex::new(PipeState { chunks, bytes, end: PipeEnd::Open, asked: !wait_for_ask, abandoned: false, pump: None }),
        capacity: capacity.max(1),
    });
    tokio::spawn(pump(pipe.clone(), source, consumer));
    BodyReader(pipe)
}

async fn pump(pipe: Arc<BodyPipe>, mut source: PumpSource, consumer: Waker) {
    loop {
        // Wait for room, and for the app to want the body at all.
        let go = std::future::poll_fn(|cx| {
            let mut state = pipe.state.lock().unwrap();
            if state.abandoned {
                return Poll::Ready(false);
            }
            if state.asked && state.bytes < pipe.capacity {
                return Poll::Ready(true);
            }
            state.pump = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !go {
            return;
        }
        let read = next_data(&mut source.rest, &mut source.allowed, source.limit, source.timeout);
        tokio::pin!(read);
        // Read, unless the app finishes with the request meanwhile.
        let read = std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = read.as_mut().poll(cx) {
                return Poll::Ready(Some(outcome));
            }
            let mut state = pipe.state.lock().unwrap();
            if state.abandoned {
                return Poll::Ready(None);
            }
            state.pump = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(outcome) = read else { return };
        let mut state = pipe.state.lock().unwrap();
        let done = match outcome {
            Ok(Some(data)) => {
                crate::telemetry::metrics::body_bytes_in(data.len() as u64);
                state.bytes += data.len();
                state.chunks.push_back(data);
                false
            }
            Ok(None) => {
                state.end = PipeEnd::Complete;
                true
            }
            Err(err) => {
                state.end = PipeEnd::Failed(err.rejection());
                true
            }
        };
        drop(state);
        consumer.wake_by_ref();
        if done {
            return;
        }
    }
}


