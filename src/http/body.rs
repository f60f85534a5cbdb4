//! Response bodies: empty, complete, or streamed from a producer thread with a byte bound.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::clock::Moment;
use crate::telemetry::access::Observation;

/// The body of every response coldbrew sends.
pub struct ResponseBody {
    kind: Kind,
    /// The access-log entry this body completes, when the access log is on.
    observer: Option<Box<Observation>>,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(ChunkReceiver),
    File(FileStream),
}

/// How much of a file is read per frame.
const FILE_CHUNK: usize = 256 * 1024;

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody { kind: Kind::Full(None), observer: None }
    }

    pub fn full(data: Bytes) -> Self {
        if data.is_empty() {
            return Self::empty();
        }
        ResponseBody { kind: Kind::Full(Some(data)), observer: None }
    }

    /// `length` bytes of `file` from its current position, read on tokio's blocking pool so
    /// neither the I/O thread nor a Python thread waits on the disk.
    pub fn file(file: std::fs::File, length: u64) -> Self {
        if length == 0 {
            return Self::empty();
        }
        ResponseBody { kind: Kind::File(FileStream { file: tokio::fs::File::from_std(file), remaining: length }), observer: None }
    }

    /// A body fed by a [`ChunkSender`] on another thread. At most `capacity` bytes wait in
    /// memory; beyond that the sender blocks until the client has taken some, so a slow client
    /// slows its producer instead of growing a buffer. A client that takes nothing for
    /// `send_timeout` (`--send-timeout`) is given up on, and the sender freed.
    pub fn channel(capacity: usize, send_timeout: Option<Duration>) -> (ChunkSender, ResponseBody) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                end: End::Open,
                receiver_gone: false,
                blocked_senders: 0,
                waker: None,
                producer: None,
            }),
            space: Condvar::new(),
        });
        let sender = ChunkSender { shared: shared.clone(), capacity: capacity.max(1), send_timeout, done: false };
        (sender, ResponseBody { kind: Kind::Stream(ChunkReceiver { shared, handed_out: false }), observer: None })
    }
}

impl ResponseBody {
    /// Completes `observation` when this body has been sent or abandoned.
    pub fn observe(&mut self, observation: Box<Observation>) {
        self.observer = Some(observation);
    }

    /// Completes the observation, if it is still open, with the response done at `at`.
    #[inline]
    pub fn finish_observation(&mut self, at: Moment) {
        if let Some(observer) = self.observer.take() {
            self.complete(observer, at);
        }
    }

    fn complete(&self, mut observer: Box<Observation>, at: Moment) {
        if self.is_end_stream() {
            observer.mark_complete();
        }
        observer.finish(at);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.observer.is_some() {
            self.finish_observation(Moment::now());
        }
    }
}

/// A body stream ended by its producer with an error: the connection is aborted so the client
/// sees a truncated message, never a complete-looking one.
#[derive(Debug)]
pub struct BodyAborted(pub String);

impl std::fmt::Display for BodyAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "response aborted: {}", self.0)
    }
}

impl std::error::Error for BodyAborted {}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(rx) => rx.poll_chunk(cx),
            Kind::File(file) => file.poll_chunk(cx),
        };
        if let Some(observer) = &mut this.observer {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => observer.add_bytes(frame.data_ref().map_or(0, |d| d.len())),
                Poll::Ready(None) => observer.mark_complete(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stream(_) => SizeHint::default(),
            Kind::File(file) => SizeHint::with_exact(file.remaining),
        }
    }
}

struct FileStream {
    file: tokio::fs::File,
    remaining: u64,
}

impl FileStream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        use tokio::io::{AsyncRead, ReadBuf};
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (self.remaining as usize).min(FILE_CHUNK);
        let mut chunk = vec![0u8; want];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(BodyAborted(format!("reading the file failed: {err}"))))),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(BodyAborted("the file ended before its announced length".into()))));
                }
                chunk.truncate(n);
                self.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when queued bytes drop or the receiver goes away.
    space: Condvar,
}

struct State {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    end: End,
    receiver_gone: bool,
    /// Senders waiting on the condition variable: only then is it worth a system call to
    /// signal it.
    blocked_senders: usize,
    waker: Option<Waker>,
    /// A producer that must not block (the ASGI event loop) waits on this instead of the
    /// condition variable: woken when the queue has room again or the receiver went away.
    producer: Option<Waker>,
}

enum End {
    Open,
    Finished,
    /// Finished, with trailer fields to send after the last chunk.
    Trailers(Option<http::HeaderMap>),
    Aborted(String),
}

/// The receiver went away: the client disconnected or the response was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The producing half of a streamed body. Dropping it without [`finish`](Self::finish) aborts
/// the response.
pub struct ChunkSender {
    shared: Arc<Shared>,
    capacity: usize,
    send_timeout: Option<Duration>,
    done: bool,
}

impl ChunkSender {
    /// Queues a chunk if there is room now. Returns the chunk back when the caller would have
    /// to wait, so it can release the GIL before calling [`send_blocking`](Self::send_blocking).
    pub fn try_send(&self, chunk: Bytes) -> Result<Option<Bytes>, Closed> {
        let mut state = self.shared.state.lock().unwrap();
        if state.receiver_gone {
            return Err(Closed);
        }
        if state.queued_bytes >= self.capacity && !state.queue.is_empty() {
            return Ok(Some(chunk));
        }
        Self::push(&mut state, chunk);
        Ok(None)
    }

    /// Queues a chunk, waiting while the queue holds `capacity` bytes or more. Gives up, as if
    /// the client had gone, when the client takes nothing for the send timeout: on HTTP/2 a
    /// client can stop reading one stream (by granting it no flow-control window) while the
    /// connection stays busy, so only the stream itself can tell.
    pub fn send_blocking(&self, chunk: Bytes) -> Result<(), Closed> {
        let mut state = self.shared.state.lock().unwrap();
        let mut queued = state.queued_bytes;
        let mut since = Instant::now();
        loop {
            if state.receiver_gone {
                return Err(Closed);
            }
            if state.queued_bytes < self.capacity || state.queue.is_empty() {
                Self::push(&mut state, chunk);
                return Ok(());
            }
            let Some(limit) = self.send_timeout else {
                state.blocked_senders += 1;
                state = self.shared.space.wait(state).unwrap();
                state.blocked_senders -= 1;
                continue;
            };
            if state.queued_bytes < queued {
                // The client took some: its stall starts again.
                queued = state.queued_bytes;
                since = Instant::now();
            }
            let Some(left) = limit.checked_sub(since.elapsed()).filter(|left| !left.is_zero()) else {
                // The response is cut off (an HTTP/2 stream reset, an HTTP/1 connection
                // closed), whatever the app does next, and what waits for the client is dropped.
                state.receiver_gone = true;
                state.end = End::Aborted("the client read none of the response for --send-timeout".into());
                state.queue.clear();
                state.queued_bytes = 0;
                if let Some(waker) = state.waker.take() {
                    waker.wake();
                }
                crate::telemetry::log::info(format_args!(
                    "a client read none of its response for {} s (--send-timeout); giving up on it",
                    limit.as_secs_f64()
                ));
                return Err(Closed);
            };
            state.blocked_senders += 1;
            state = self.shared.space.wait_timeout(state, left).unwrap().0;
            state.blocked_senders -= 1;
        }
    }

    /// Queues a chunk if there is room now, as [`try_send`](Self::try_send); when there is
    /// none, the chunk comes back and `waker` is woken once there is room or the receiver has
    /// gone. For a producer that must not block its thread (the ASGI event loop).
    pub fn poll_send(&self, chunk: Bytes, waker: &Waker) -> Result<Option<Bytes>, Closed> {
        let mut state = self.shared.state.lock().unwrap();
        if state.receiver_gone {
            return Err(Closed);
        }
        if state.queued_bytes >= self.capacity && !state.queue.is_empty() {
            state.producer = Some(waker.clone());
            return Ok(Some(chunk));
        }
        Self::push(&mut state, chunk);
        Ok(None)
    }

    /// Has `waker` woken when the receiver goes away (the client disconnected), so a producer
    /// that is not sending learns of it.
    pub fn watch_receiver(&self, waker: &Waker) {
        let mut state = self.shared.state.lock().unwrap();
        if state.receiver_gone {
            waker.wake_by_ref();
        } else {
            state.producer = Some(waker.clone());
        }
    }

    /// Whether the receiver is gone (the client disconnected).
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().unwrap().receiver_gone
    }

    fn push(state: &mut State, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        state.queued_bytes += chunk.len();
        state.queue.push_back(chunk);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Ends the body normally.
    pub fn finish(mut self) {
        self.end(End::Finished);
    }

    /// Ends the body with trailer fields (HTTP/1.1 chunked trailers, HTTP/2 trailing HEADERS).
    pub fn finish_with_trailers(mut self, trailers: http::HeaderMap) {
        self.end(End::Trailers(Some(trailers)));
    }

    /// Ends the body with an error; the connection is aborted.
    pub fn abort(mut self, reason: impl Into<String>) {
        self.end(End::Aborted(reason.into()));
    }

    fn end(&mut self, end: End) {
        self.done = true;
        let mut state = self.shared.state.lock().unwrap();
        if matches!(state.end, End::Aborted(_)) {
            // Given up on already (--send-timeout): the abort stands.
            return;
        }
        state.end = end;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

impl Drop for ChunkSender {
    fn drop(&mut self) {
        if !self.done {
            self.end(End::Aborted("the response producer went away".into()));
        }
    }
}

struct ChunkReceiver {
    shared: Arc<Shared>,
    /// A chunk was handed out since the last time the body made hyper wait.
    handed_out: bool,
}

impl ChunkReceiver {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        let mut state = self.shared.state.lock().unwrap();
        if let Some(chunk) = state.queue.pop_front() {
            state.queued_bytes -= chunk.len();
            let producer = state.producer.take();
            let blocked = state.blocked_senders > 0;
            drop(state);
            if let Some(producer) = producer {
                producer.wake();
            }
            if blocked {
                self.shared.space.notify_one();
            }
            self.handed_out = true;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &mut state.end {
            End::Open => {
                match &state.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => state.waker = Some(cx.waker().clone()),
                }
                self.handed_out = false;
                Poll::Pending
            }
            End::Finished => Poll::Ready(None),
            End::Trailers(trailers) => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            End::Aborted(_) if self.handed_out => {
                // hyper drops what it has buffered when a body fails, without writing it, and
                // it buffers the chunks it gets until the body makes it wait. Waiting once
                // here lets it write out every byte the app produced before the abort.
                self.handed_out = false;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            End::Aborted(reason) => Poll::Ready(Some(Err(BodyAborted(reason.clone())))),
        }
    }
}

impl Drop for ChunkReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap();
        state.receiver_gone = true;
        state.queue.clear();
        state.queued_bytes = 0;
        let producer = state.producer.take();
        let blocked = state.blocked_senders > 0;
        drop(state);
        if blocked {
            self.shared.space.notify_all();
        }
        if let Some(producer) = producer {
            producer.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    fn block_on_frames(mut body: ResponseBody) -> Result<Vec<Bytes>, BodyAborted> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async move {
            let mut out = Vec::new();
            loop {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                match frame {
                    None => return Ok(out),
                    Some(Ok(f)) => out.push(f.into_data().unwrap()),
                    Some(Err(e)) => return Err(e),
                }
            }
        })
    }

    #[test]
    fn full_body_reports_exact_size() {
        let body = ResponseBody::full(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(block_on_frames(body).unwrap(), vec![Bytes::from_static(b"hello")]);
        assert!(ResponseBody::full(Bytes::new()).is_end_stream());
    }

    #[test]
    fn channel_delivers_chunks_in_order_then_ends() {
        let (tx, body) = ResponseBody::channel(4, None);
        let producer = thread::spawn(move || {
            for i in 0..50u8 {
                tx.send_blocking(Bytes::from(vec![i; 3])).unwrap();
            }
            tx.finish();
        });
        let frames = block_on_frames(body).unwrap();
        producer.join().unwrap();
        let flat: Vec<u8> = frames.iter().flat_map(|b| b.iter().copied()).collect();
        let expected: Vec<u8> = (0..50u8).flat_map(|i| [i, i, i]).collect();
        assert_eq!(flat, expected);
    }

    #[test]
    fn sender_waits_when_capacity_is_reached() {
        let (tx, _body) = ResponseBody::channel(10, None);
        assert_eq!(tx.try_send(Bytes::from_static(b"0123456789")).unwrap(), None);
        let back = tx.try_send(Bytes::from_static(b"x")).unwrap();
        assert_eq!(back, Some(Bytes::from_static(b"x")));
    }

    #[test]
    fn oversized_chunk_passes_when_queue_is_empty() {
        let (tx, _body) = ResponseBody::channel(2, None);
        assert_eq!(tx.try_send(Bytes::from_static(b"larger than two")).unwrap(), None);
    }

    #[test]
    fn dropping_receiver_unblocks_and_closes_sender() {
        let (tx, body) = ResponseBody::channel(1, None);
        tx.send_blocking(Bytes::from_static(b"a")).unwrap();
        let waiter = thread::spawn(move || tx.send_blocking(Bytes::from_static(b"b")));
        thread::sleep(Duration::from_millis(50));
        drop(body);
        assert_eq!(waiter.join().unwrap(), Err(Closed));
    }

    #[test]
    fn an_abort_waits_once_after_the_last_chunk_so_hyper_writes_it_out() {
        let (tx, mut body) = ResponseBody::channel(64, None);
        tx.send_blocking(Bytes::from_static(b"01234")).unwrap();
        tx.abort("short");
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut poll = || Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(poll(), Poll::Ready(Some(Ok(frame))) if frame.data_ref().unwrap() == "01234"));
        assert!(poll().is_pending(), "the chunk must get a chance to be written before the error");
        assert!(matches!(poll(), Poll::Ready(Some(Err(BodyAborted(reason)))) if reason == "short"));
    }

    #[test]
    fn abort_and_dropped_sender_yield_errors() {
        let (tx, body) = ResponseBody::channel(8, None);
        tx.send_blocking(Bytes::from_static(b"part")).unwrap();
        tx.abort("boom");
        let err = block_on_frames(body).unwrap_err();
        assert!(err.0.contains("boom"));

        let (tx, body) = ResponseBody::channel(8, None);
        drop(tx);
        assert!(block_on_frames(body).is_err());
    }
}
