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
use super::watchdog::Watched;
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

/// Runs a connection to its end, finishing it gracefully once `stop` changes, and says what
/// went wrong if hyper refused a request.
pub(super) async fn drive<S, B>(
    mut conn: http1::Connection<TokioIo<Watched>, S>,
    mut stop: watch::Receiver<()>,
    label: &'static str,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ended = {
        let stopping = stop.changed();
        tokio::pin!(stopping);
        let mut asked = false;
        std::future::poll_fn(|cx| {
            if !asked && stopping.as_mut().poll(cx).is_ready() {
                asked = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            Pin::new(&mut conn).poll(cx)
        })
        .await
    };
    let Err(err) = ended else { return };
    if err.is_parse() {
        // hyper has answered 400, 414 or 431 itself (or closed at an HTTP/2 preface, a
        // protocol this server does not speak).
        log::info(format_args!("{label}refused a malformed request from {peer}: {err}"));
        // hyper answered with an empty body, except at an HTTP/2 preface. Until this function
        // has the connection's clock and the listener's `observe`, the entry's time is now and
        // only the app's listener (label "") is observed, as `ServerOptions::observe` has it.
        let uri_too_long = err.is_parse_too_large() && err.to_string().contains("URI too long");
        let status = match () {
            () if err.is_parse_version_h2() => None,
            () if uri_too_long => Some(http::StatusCode::URI_TOO_LONG),
            () if err.is_parse_too_large() => Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            () => Some(http::StatusCode::BAD_REQUEST),
        };
        if let Some(status) = status {
            let head = conn.into_parts().read_buf;
            let peer_ip = super::ConnInfo::new(peer, peer).peer_ip;
            let now = crate::clock::Moment::now();
            crate::telemetry::access::record_unparsed(label.is_empty(), peer_ip, status, &head, now, 0);
        }
        return;
    }
    if err.is_incomplete_message() {
        let parts = conn.into_parts();
        if !parts.read_buf.is_empty() {
            // The client ended its side in the middle of a request head: hyper gives up
            // without an answer, so the 400 is written here.
            log::info(format_args!(
                "{label}refused a malformed request from {peer}: the connection ended inside the request head"
            ));
            checks::answer_unparsed(parts.io.inner().stream());
            return;
        }
    }
    log::debug(format_args!("{label}connection from {peer} ended: {err}"));
}

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
