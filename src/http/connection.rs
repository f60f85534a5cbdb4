//! One connection's task, and the count of open connections a graceful stop waits for.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::checks;
use super::upgrade::{Switched, UpgradeSlot};
use super::watchdog::{ConnClock, Watched};
use crate::telemetry::log;

/// Counts the open connections and asks them to finish. hyper-util's `GracefulShutdown` does
/// the same but keeps the connection, whose socket is needed after hyper gives up on a request
/// head without answering.
pub(super) struct Graceful(watch::Sender<()>);

impl Graceful {
    pub fn new() -> Self {
        Graceful(watch::channel(()).0)
    }

    /// Held by a connection's task while it runs; `changed()` resolves when the stop begins.
    pub fn watch(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }

    pub fn count(&self) -> usize {
        self.0.receiver_count()
    }

    /// Asks every connection to finish, and resolves once all have.
    pub async fn shutdown(self) {
        self.0.send_replace(());
        self.0.closed().await;
    }
}

/// How an HTTP/1.1 connection may leave HTTP: the slot its requests' handler fills before it
/// answers 101, and the clock to stop.
pub(super) struct Switch {
    pub slot: UpgradeSlot,
    pub clock: std::sync::Arc<ConnClock>,
}

/// Runs a connection to its end, finishing it gracefully once `stop` changes, and says what
/// went wrong if hyper refused a request.
pub(super) async fn drive<S, B>(
    mut conn: http1::Connection<TokioIo<Watched>, S>,
    mut stop: watch::Receiver<()>,
    switch: Switch,
    label: &'static str,
    observe: bool,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stopped = false;
    let ended = {
        let stopping = stop.changed();
        tokio::pin!(stopping);
        std::future::poll_fn(|cx| {
            if !stopped && stopping.as_mut().poll(cx).is_ready() {
                stopped = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            Pin::new(&mut conn).poll(cx)
        })
        .await
    };
    let parts = conn.into_parts();
    if ended.is_ok() {
        if let Some(takeover) = switch.slot.take() {
            // A 101 went out: the connection is the handler's now, and counts as open (the
            // graceful stop waits for it) until its protocol ends.
            switch.clock.switched();
            let (stream, unread) = parts.io.into_inner().into_switched(parts.read_buf);
            takeover(Switched::new(stream, unread)).await;
            return;
        }
    }
    let watched = parts.io.inner();
    let stream = watched.stream();
    // A stop closes idle keep-alive connections, whose clients may hold them open for a long
    // time: only those with bytes still coming linger then.
    let unread = !parts.read_buf.is_empty();
    match ended {
        Ok(()) => {}
        Err(err) if err.is_parse() => {
            // hyper has answered 400, 414 or 431 (coldbrew's answer went out in place of its
            // own), or closed at an HTTP/2 preface under `--http 1`.
            match watched.refused() {
                Some(status) => {
                    let raw = watched.raw_refused();
                    let reason: &dyn std::fmt::Display = match &raw {
                        Some(reason) => reason,
                        None => &err,
                    };
                    log::info(format_args!(
                        "{label}refused a malformed request from {peer}: {reason}; answered {}",
                        status.as_u16()
                    ));
                    record_unparsed(observe, peer, status, &watched.as_sent(&parts.read_buf), watched);
                }
                None => log::info(format_args!("{label}refused a malformed request from {peer}: {err}")),
            }
        }
        Err(err) if err.is_incomplete_message() && !parts.read_buf.is_empty() => {
            // The client ended its side in the middle of a request head: hyper gives up
            // without an answer, so the 400 is written here.
            log::info(format_args!(
                "{label}refused a malformed request from {peer}: the connection ended inside the request head"
            ));
            checks::answer_unparsed(stream);
            record_unparsed(observe, peer, http::StatusCode::BAD_REQUEST, &parts.read_buf, watched);
        }
        Err(err) => {
            log::debug(format_args!("{label}connection from {peer} ended: {err}"));
            if err.is_user() {
                // The response was aborted (the app raised mid-body or sent less than its
                // Content-Length): the client must see the message cut short, at once.
                return;
            }
        }
    }
    if !stopped || unread || has_pending_bytes(stream) {
        linger(stream).await;
    }
}

/// The access-log entry and the metrics of a request refused before hyper could parse its head:
/// it began when its first byte arrived.
fn record_unparsed(observe: bool, peer: SocketAddr, status: http::StatusCode, head: &[u8], watched: &Watched) {
    let peer_ip = super::AddrText::format(peer.ip());
    crate::telemetry::access::record_unparsed(observe, peer_ip, status, head, watched.head_began(), 0);
}

/// Whether the client has sent bytes the server has not read.
fn has_pending_bytes(stream: &tokio::net::TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Ok(n) if n > 0)
}

/// After the server ends a connection, bytes the client still sends (the unread rest of a
/// body the app did not want, a pipelined request after `Connection: close`) would make the
/// kernel answer with a reset, which can destroy the response before the client read it. So
/// the write side is shut (the client sees the end of the response) and what arrives is read
/// and dropped until the client closes too, or for [`LINGER`] at most.
async fn linger(stream: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + LINGER;
    while tokio::time::Instant::now() < deadline {
        // A few reads at a time, then back to the scheduler: a client that sends as fast as
        // the socket takes it must not hold the I/O thread, nor outlast the deadline.
        for _ in 0..16 {
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        tokio::task::yield_now().await;
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// The longest a closing connection reads and drops what its client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs an HTTP/2 connection to its end; once `stop` changes it sends GOAWAY and lets the
/// open streams finish.
pub(super) async fn drive_h2<S, B, E>(
    mut conn: http2::Connection<TokioIo<Watched>, S, E>,
    mut stop: watch::Receiver<()>,
    label: &'static str,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Http2ServerConnExec<S::Future, B>,
{
    let stopping = stop.changed();
    tokio::pin!(stopping);
    let mut asked = false;
    let ended = std::future::poll_fn(|cx| {
        if !asked && stopping.as_mut().poll(cx).is_ready() {
            asked = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
        Pin::new(&mut conn).poll(cx)
    })
    .await;
    if let Err(err) = ended {
        log::debug(format_args!("{label}HTTP/2 connection from {peer} ended: {err}"));
    }
}
