//! Connection deadlines without a timer per request: `--keep-alive` (how long a connection may
//! wait, idle, for the first byte of its next request) and `--header-timeout` (how long a
//! request head may take once its first byte has arrived).
//!
//! hyper's own `header_read_timeout` arms a timer for every request and starts it as soon as
//! the connection goes idle, so it also cuts idle keep-alive connections at the header timeout
//! (30 s), well before the 600 s for which load balancers keep theirs: they then race the close
//! and answer 502. Here each connection has one phase word, updated with plain stores on the
//! I/O thread (a clock read when a request starts arriving and when its response is done),
//! and one timer that wakes rarely, looks at the phase, and closes the connection once a limit
//! has passed:
//!
//! - idle: from the accept or the end of the previous response, until a byte arrives;
//! - head: from that byte until hyper hands the complete head to the service;
//! - busy: from then until the response body is done (or dropped). No connection limit applies;
//!   the body read has its own timeout (`--body-timeout`) and the app `--timeout`.
//!
//! A closed idle connection gets no response (there is no request to answer); neither does a
//! head that did not arrive in time, as with hyper's own timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::ResponseBody;
use super::checks::RawScan;
use super::header_case::{self, OriginalCase};
use crate::clock::Moment;

const IDLE: u64 = 0;
const HEAD: u64 = 1;
const BUSY: u64 = 2;
const PHASE: u64 = 3;

/// The clock of one connection, shared by its service and its socket.
pub(super) struct ConnClock {
    /// The phase and when it began: `(nanoseconds << 2) | phase`, the time a [`Moment`]
    /// (2^62 ns is over a century of uptime).
    phase: AtomicU64,
    /// Since when (a [`Moment`]'s nanoseconds) the client has taken none of what the server
    /// writes; 0 while it is taking it.
    stalled: AtomicU64,
    case: HeadCase,
}

/// The app's own case of the next response head's names, handed from the service to the
/// socket writer (HTTP/1 has one response at a time per connection).
#[derive(Default)]
struct HeadCase {
    waiting: AtomicBool,
    names: Mutex<Option<OriginalCase>>,
}

impl ConnClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnClock {
            phase: AtomicU64::new(Moment::now().nanos() << 2 | IDLE),
            stalled: AtomicU64::new(0),
            case: HeadCase::default(),
        })
    }

    /// The next response head goes out with these names as the app wrote them.
    #[cold]
    pub fn restore_case(&self, case: OriginalCase) {
        *self.case.names.lock().unwrap() = Some(case);
        self.case.waiting.store(true, Relaxed);
    }

    #[inline]
    fn take_case(&self) -> Option<OriginalCase> {
        if !self.case.waiting.load(Relaxed) {
            return None;
        }
        self.case.waiting.store(false, Relaxed);
        self.case.names.lock().unwrap().take()
    }

    /// A write found the socket full: the client's stall starts now unless it had already.
    #[cold]
    fn write_blocked(&self) {
        if self.stalled.load(Relaxed) == 0 {
            self.stalled.store(Moment::now().nanos().max(1), Relaxed);
        }
    }

    /// A write went through: the client is reading.
    #[inline]
    fn write_done(&self) {
        if self.stalled.load(Relaxed) != 0 {
            self.stalled.store(0, Relaxed);
        }
    }

    /// Bytes arrived from the client: an idle connection starts receiving a request head.
    #[inline]
    fn bytes_arrived(&self) {
        if self.phase.load(Relaxed) & PHASE == IDLE {
            self.phase.store(Moment::now().nanos() << 2 | HEAD, Relaxed);
        }
    }

    /// hyper has the complete head and calls the service. Returns when the request began: when
    /// its head started to arrive or, for a request read along with the one before it, when
    /// that one's response was done. A connection already busy (another HTTP/2 stream) has no
    /// such time, and reads the clock.
    #[inline]
    pub fn request_started(&self) -> Moment {
        let (phase, since) = self.load();
        self.phase.store(BUSY, Relaxed);
        match phase {
            BUSY => Moment::now(),
            _ => Moment::from_nanos(since),
        }
    }

    /// The connection left HTTP: no idle or head deadline applies to it any more.
    pub fn switched(&self) {
        self.phase.store(BUSY, Relaxed);
    }

    #[cfg(test)]
    fn response_done(&self) {
        self.response_done_at(Moment::now());
    }

    /// The response body was done at `at`: the connection waits for the next request.
    #[inline]
    fn response_done_at(&self, at: Moment) {
        self.phase.store(at.nanos() << 2 | IDLE, Relaxed);
    }

    /// The phase, and the nanoseconds of the [`Moment`] it began.
    fn load(&self) -> (u64, u64) {
        let v = self.phase.load(Relaxed);
        (v & PHASE, v >> 2)
    }
}

/// The limits a connection is held to; `None` is no limit.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub idle: Option<Duration>,
    pub head: Option<Duration>,
    /// How long the client may take none of what the server writes (`--send-timeout`).
    pub send: Option<Duration>,
}

/// Why a connection was closed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    Idle(Duration),
    Head(Duration),
    Send(Duration),
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Idle(d) => write!(f, "idle for {} s (--keep-alive)", d.as_secs_f64()),
            Expiry::Head(d) => write!(f, "no complete request head within {} s (--header-timeout)", d.as_secs_f64()),
            Expiry::Send(d) => write!(f, "the client read none of its response for {} s (--send-timeout)", d.as_secs_f64()),
        }
    }
}

/// Resolves once the connection has been idle, or receiving a request head, past its limit.
/// Never resolves without limits. One timer per connection, which wakes at most once per
/// `min(limits)` while nothing is due: in the idle phase it must look again within the head
/// limit, since a head may start at any moment.
pub(super) async fn expired(clock: &ConnClock, limits: Limits) -> Expiry {
    let Some(tick) = [limits.idle, limits.head, limits.send].into_iter().flatten().min() else {
        return std::future::pending().await;
    };
    let tick_ns = (tick.as_nanos() as u64).max(1);
    let sleep = tokio::time::sleep(tick);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Moment::now().nanos();
        let (phase, since) = clock.load();
        let limit = match phase {
            IDLE => limits.idle.map(|d| (d, Expiry::Idle(d))),
            HEAD => limits.head.map(|d| (d, Expiry::Head(d))),
            _ => None,
        };
        let stalled = clock.stalled.load(Relaxed);
        let send = limits.send.filter(|_| stalled != 0).map(|d| (stalled, d, Expiry::Send(d)));
        let mut next = now + tick_ns;
        for (since, limit, expiry) in limit.map(|(d, expiry)| (since, d, expiry)).into_iter().chain(send) {
            let due = since + limit.as_nanos() as u64;
            if now >= due {
                return expiry;
            }
            next = next.min(due);
        }
        sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_nanos(next - now));
    }
}

/// The socket, reporting to the clock when bytes arrive and whether the client takes what is
/// written, showing what arrives to the raw-head check before hyper reads it, and putting
/// coldbrew's answer in place of hyper's own to a malformed head.
pub(super) struct Watched {
    stream: TcpStream,
    clock: Arc<ConnClock>,
    scan: RawScan,
    /// coldbrew's answer in place of hyper's, and how much of it has been written.
    refusal: Option<Box<Refusal>>,
    /// A response head with the app's case of its names, and how much of it has been written.
    head: Option<Box<(Vec<u8>, usize)>>,
    /// What the raw-head check refused, which hyper's answer is then about, and where in the
    /// connection's bytes the NUL that made hyper refuse it went (with the byte it replaced).
    raw_refused: Option<(&'static str, u64, u8)>,
    /// Bytes handed to hyper so far.
    delivered: u64,
    /// Where the CRLF CRLF put after a refused byte went in those bytes, and its length.
    appended: Option<(u64, usize)>,
}

struct Refusal {
    status: http::StatusCode,
    answer: Vec<u8>,
    written: usize,
}

impl Watched {
    pub fn new(stream: TcpStream, clock: Arc<ConnClock>) -> Self {
        Watched { stream, clock, scan: RawScan::new(), refusal: None, head: None, raw_refused: None, delivered: 0, appended: None }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket, for a connection that leaves HTTP (its response head is written), with
    /// `unread`, the bytes hyper had read past the last head, as the client sent them: the
    /// raw-head check took them for the next request and may have changed them.
    pub fn into_switched(self, unread: bytes::Bytes) -> (TcpStream, bytes::Bytes) {
        let start = self.delivered - unread.len() as u64;
        let mut sent = match self.as_sent(&unread) {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(sent) => Some(sent),
        };
        if let Some((at, len)) = self.appended {
            if let Some(i) = at.checked_sub(start).map(|i| i as usize).filter(|i| i + len <= unread.len()) {
                let bytes = sent.get_or_insert_with(|| unread.to_vec());
                bytes.drain(i..i + len);
            }
        }
        (self.stream, sent.map_or(unread, bytes::Bytes::from))
    }

    /// When the request head now arriving (or the last one) began to arrive.
    pub fn head_began(&self) -> Moment {
        Moment::from_nanos(self.clock.load().1)
    }

    /// What the raw-head check refused, if it refused anything.
    pub fn raw_refused(&self) -> Option<&'static str> {
        self.raw_refused.map(|(reason, ..)| reason)
    }

    /// `unread`, the bytes hyper had read but not consumed when it gave up, as the client sent
    /// them: without the NUL the raw-head check wrote into them.
    pub fn as_sent<'a>(&self, unread: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let Some((_, at, byte)) = self.raw_refused else { return unread.into() };
        // `unread` is the last bytes handed to hyper.
        let start = self.delivered - unread.len() as u64;
        match at.checked_sub(start) {
            Some(i) if (i as usize) < unread.len() => {
                let mut sent = unread.to_vec();
                sent[i as usize] = byte;
                sent.into()
            }
            _ => unread.into(),
        }
    }

    /// The status of hyper's own answer to a malformed head, if it gave one.
    pub fn refused(&self) -> Option<http::StatusCode> {
        self.refusal.as_ref().map(|r| r.status)
    }

    /// Whether `buf` is hyper's answer to a malformed head; if so, coldbrew's answer is queued
    /// in its place. Checked only on short writes that begin like one.
    #[inline]
    fn replaces(&mut self, buf: &[u8]) -> bool {
        if buf.len() > 256 || !buf.starts_with(b"HTTP/1.1 4") || self.refusal.is_some() {
            return false;
        }
        let Some((status, answer)) = super::hyper_refusal::replacement(buf, self.raw_refused()) else { return false };
        self.refusal = Some(Box::new(Refusal { status, answer, written: 0 }));
        true
    }

    /// Writes what is left of coldbrew's answer in place of hyper's.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(refusal) = self.refusal.as_mut() else { return Poll::Ready(Ok(())) };
        while refusal.written < refusal.answer.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &refusal.answer[refusal.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => refusal.written += n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    self.clock.write_blocked();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `bufs`, with the app's case of the names in a response head hyper begins in the
    /// first of them. hyper's head and the one written differ only in the case of letters, so
    /// whatever was written of one is what hyper counts as written of the other.
    #[cold]
    fn write_with_case(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.head.is_none() {
            if let Some(case) = self.clock.take_case() {
                let mut head = bufs[0].to_vec();
                header_case::restore(&mut head, &case);
                self.head = Some(Box::new((head, 0)));
            }
        }
        let Some(head) = self.head.as_mut() else {
            let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
            return self.watch_write(polled);
        };
        let rest = &head.0[head.1..];
        if rest.len() != bufs[0].len() {
            // Not the head it was made for: write what hyper gave.
            self.head = None;
            let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
            return self.watch_write(polled);
        }
        const MOST: usize = 16;
        let mut slices = [io::IoSlice::new(&[]); MOST];
        slices[0] = io::IoSlice::new(rest);
        let count = bufs.len().min(MOST);
        slices[1..count].copy_from_slice(&bufs[1..count]);
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count]);
        if let Poll::Ready(Ok(n)) = polled {
            head.1 += n.min(rest.len());
            if head.1 == head.0.len() {
                self.head = None;
            }
        }
        self.watch_write(polled)
    }

    /// Whether this write needs [`write_with_case`](Self::write_with_case).
    #[inline]
    fn has_case(&self, first: &[u8]) -> bool {
        self.head.is_some() || (self.clock.case.waiting.load(Relaxed) && first.starts_with(b"HTTP/1."))
    }

    /// Tells the clock whether the client is taking what is written.
    #[inline]
    fn watch_write(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) if n > 0 => self.clock.write_done(),
            Poll::Pending => self.clock.write_blocked(),
            _ => {}
        }
        polled
    }

    /// Reports hyper's answer as written once coldbrew's has been, or has started to be.
    fn write_refusal(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        match self.poll_refusal(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            // The rest goes out with the flush hyper does next.
            _ => Poll::Ready(Ok(len)),
        }
    }
}

impl AsyncRead for Watched {
    #[inline]
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
            let offset = self.delivered;
            if let Some(reason) = self.scan.scan(&mut buf.filled_mut()[before..]) {
                let (at, byte) = self.scan.replaced();
                self.raw_refused = Some((reason, offset + at as u64, byte));
                // The head may have ended with the byte just refused, and hyper parses a head
                // that came in pieces only once it has seen its end: a CRLF CRLF after it
                // (where the read buffer has room) makes it parse, and refuse, now.
                let room = buf.remaining().min(4);
                self.appended = Some((offset + (buf.filled().len() - before) as u64, room));
                buf.put_slice(&b"\r\n\r\n"[..room]);
            }
            self.delivered += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl AsyncWrite for Watched {
    #[inline]
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replaces(buf) {
            return self.write_refusal(cx, buf.len());
        }
        if self.has_case(buf) {
            return self.write_with_case(cx, &[io::IoSlice::new(buf)]);
        }
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch_write(polled)
    }

    #[inline]
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if let [buf] = bufs {
            if self.replaces(buf) {
                return self.write_refusal(cx, buf.len());
            }
        }
        if bufs.first().is_some_and(|first| self.has_case(first)) {
            return self.write_with_case(cx, bufs);
        }
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch_write(polled)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refusal.is_some() {
            std::task::ready!(self.poll_refusal(cx))?;
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refusal.is_some() {
            std::task::ready!(self.poll_refusal(cx))?;
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that tells the clock when it is done: hyper drops it once the body has been
/// written (or at once for HEAD, 204 and 304), or when the connection ends. The one clock read
/// also ends the body's access-log observation.
pub struct Tracked {
    body: ResponseBody,
    clock: Arc<ConnClock>,
}

impl Tracked {
    pub(super) fn new(body: ResponseBody, clock: Arc<ConnClock>) -> Self {
        Tracked { body, clock }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let now = Moment::now();
        self.clock.response_done_at(now);
        self.body.finish_observation(now);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    #[inline]
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn phases_follow_the_request() {
        let clock = ConnClock::new();
        assert_eq!(clock.load().0, IDLE);
        clock.bytes_arrived();
        let (phase, head_since) = clock.load();
        assert_eq!(phase, HEAD);
        std::thread::sleep(Duration::from_millis(5));
        clock.bytes_arrived();
        assert_eq!(clock.load(), (HEAD, head_since), "more bytes of the head do not restart its clock");
        clock.request_started();
        assert_eq!(clock.load().0, BUSY);
        clock.bytes_arrived();
        assert_eq!(clock.load().0, BUSY, "body bytes are not a new head");
        clock.response_done();
        assert_eq!(clock.load().0, IDLE);
    }

    #[tokio::test]
    async fn head_limit_applies_from_the_first_byte_and_idle_limit_between_requests() {
        let limits = Limits { idle: Some(Duration::from_millis(300)), head: Some(Duration::from_millis(60)), send: None };
        // Idle, then a head starts and stalls: closed at the head limit after its first byte.
        let clock = ConnClock::new();
        let started = Instant::now();
        let stall = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.bytes_arrived();
            Instant::now()
        };
        let (expiry, head_at) = tokio::join!(expired(&clock, limits), stall);
        assert_eq!(expiry, Expiry::Head(Duration::from_millis(60)));
        assert!(head_at.elapsed() >= Duration::from_millis(60));
        assert!(started.elapsed() >= Duration::from_millis(160));

        // A busy connection is never closed; once idle, the idle limit counts from then.
        let clock = ConnClock::new();
        clock.request_started();
        let started = Instant::now();
        let finish = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            clock.response_done();
        };
        let (expiry, ()) = tokio::join!(expired(&clock, limits), finish);
        assert_eq!(expiry, Expiry::Idle(Duration::from_millis(300)));
        assert!(started.elapsed() >= Duration::from_millis(700));
    }
}
