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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::ResponseBody;
use super::checks::RawScan;
use crate::clock::Moment;
use crate::telemetry::log;

const IDLE: u64 = 0;
const HEAD: u64 = 1;
const BUSY: u64 = 2;
const PHASE: u64 = 3;

/// The phase of one connection and when it began: `(nanoseconds << 2) | phase`, the time a
/// [`Moment`] (2^62 ns is over a century of uptime).
pub(super) struct ConnClock(AtomicU64);

impl ConnClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnClock(AtomicU64::new(Moment::now().nanos() << 2 | IDLE)))
    }

    /// Bytes arrived from the client: an idle connection starts receiving a request head.
    #[inline]
    fn bytes_arrived(&self) {
        if self.0.load(Relaxed) & PHASE == IDLE {
            self.0.store(Moment::now().nanos() << 2 | HEAD, Relaxed);
        }
    }

    /// hyper has the complete head and calls the service. Returns when the request began: when
    /// its head started to arrive or, for a request read along with the one before it, when
    /// that one's response was done. A connection already busy (another HTTP/2 stream) has no
    /// such time, and reads the clock.
    #[inline]
    pub fn request_started(&self) -> Moment {
        let (phase, since) = self.load();
        self.0.store(BUSY, Relaxed);
        match phase {
            BUSY => Moment::now(),
            _ => Moment::from_nanos(since),
        }
    }

    #[cfg(test)]
    fn response_done(&self) {
        self.response_done_at(Moment::now());
    }

    /// The response body was done at `at`: the connection waits for the next request.
    #[inline]
    fn response_done_at(&self, at: Moment) {
        self.0.store(at.nanos() << 2 | IDLE, Relaxed);
    }

    /// The phase, and the nanoseconds of the [`Moment`] it began.
    fn load(&self) -> (u64, u64) {
        let v = self.0.load(Relaxed);
        (v & PHASE, v >> 2)
    }
}

/// The limits a connection is held to; `None` is no limit.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub idle: Option<Duration>,
    pub head: Option<Duration>,
}

/// Why a connection was closed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    Idle(Duration),
    Head(Duration),
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Idle(d) => write!(f, "idle for {} s (--keep-alive)", d.as_secs_f64()),
            Expiry::Head(d) => write!(f, "no complete request head within {} s (--header-timeout)", d.as_secs_f64()),
        }
    }
}

/// Resolves once the connection has been idle, or receiving a request head, past its limit.
/// Never resolves without limits. One timer per connection, which wakes at most once per
/// `min(limits)` while nothing is due: in the idle phase it must look again within the head
/// limit, since a head may start at any moment.
pub(super) async fn expired(clock: &ConnClock, limits: Limits) -> Expiry {
    let tick = match (limits.idle, limits.head) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return std::future::pending().await,
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
        let mut next = now + tick_ns;
        if let Some((limit, expiry)) = limit {
            let due = since + limit.as_nanos() as u64;
            if now >= due {
                return expiry;
            }
            next = next.min(due);
        }
        sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_nanos(next - now));
    }
}

/// The socket, reporting to the clock when bytes arrive, and showing them to the raw-head
/// check before hyper reads them.
pub(super) struct Watched {
    stream: TcpStream,
    clock: Arc<ConnClock>,
    scan: RawScan,
}

impl Watched {
    pub fn new(stream: TcpStream, clock: Arc<ConnClock>) -> Self {
        Watched { stream, clock, scan: RawScan::new() }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Watched {
    #[inline]
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
            if let Some(reason) = self.scan.scan(&mut buf.filled_mut()[before..]) {
                // The head may have ended with the byte just refused, and hyper parses a head
                // that came in pieces only once it has seen its end: a CRLF CRLF after it
                // (where the read buffer has room) makes it parse, and refuse, now.
                let room = buf.remaining().min(4);
                buf.put_slice(&b"\r\n\r\n"[..room]);
                let peer = self.stream.peer_addr().map_or_else(|_| "?".to_string(), |peer| peer.to_string());
                log::debug(format_args!("refusing the request from {peer}: {reason}"));
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    #[inline]
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
        let limits = Limits { idle: Some(Duration::from_millis(300)), head: Some(Duration::from_millis(60)) };
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
