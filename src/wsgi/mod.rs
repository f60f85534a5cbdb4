//! The WSGI interface (PEP 3333).
//!
//! The I/O thread turns each request into a [`RequestJob`] and puts it on a bounded queue; a
//! fixed pool of Python threads ([`pool`]) takes jobs off it, builds the environ
//! ([`environ`]), calls the app and hands the response back ([`response`]). Tokio threads never
//! take the GIL.

mod deadline;
mod doorbell;
mod environ;
#[cfg(test)]
mod fuzz;
mod input;
mod pool;
mod response;
mod shared_bytes;
mod streams;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use crossbeam_channel::Sender;
use doorbell::Doorbell;
use http::header::{CONTENT_LENGTH, EXPECT};
use http::StatusCode;
use http_body::Body;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::http::{self as proto, ConnInfo, Handler};
use crate::telemetry::metrics;

pub use input::InputStream;
pub use pool::{Pool, RequestTrace};
pub use streams::{ErrorStream, FileWrapper};

/// One request waiting for a Python thread.
pub(crate) struct RequestJob {
    pub parts: http::request::Parts,
    pub body: RequestBody,
    pub conn: ConnInfo,
    pub reply: oneshot::Sender<proto::Response>,
    /// Only with `--timeout`: which Python thread runs the request, for the deadline.
    pub claim: Option<Arc<deadline::Claim>>,
}

/// A request body as the Python side receives it: read ahead in full when small, so a slow
/// uploader never holds a Python thread, or streamed from the connection on demand.
pub(crate) enum RequestBody {
    Empty,
    Complete(Bytes),
    /// `head` was read ahead; the rest is still on the connection.
    Streaming { head: Bytes, rest: Incoming },
}

/// Hands requests from the I/O thread to the Python thread pool.
pub struct WsgiHandler {
    queue: Sender<RequestJob>,
    doorbell: Arc<Doorbell>,
    read_ahead: usize,
    timeout: Option<Duration>,
    body_timeout: Option<Duration>,
}

impl Drop for WsgiHandler {
    fn drop(&mut self) {
        // No more requests: idle Python threads wake, finish the queue and stop.
        self.doorbell.close();
    }
}

impl WsgiHandler {
    pub(crate) fn new(
        queue: Sender<RequestJob>,
        doorbell: Arc<Doorbell>,
        read_ahead: usize,
        timeout: Option<Duration>,
        body_timeout: Option<Duration>,
    ) -> Self {
        WsgiHandler { queue, doorbell, read_ahead, timeout, body_timeout }
    }
}

impl Handler for WsgiHandler {
    fn call(&self, request: proto::Request, conn: ConnInfo) -> impl Future<Output = proto::Response> + Send + use<> {
        let queue = self.queue.clone();
        let doorbell = self.doorbell.clone();
        let read_ahead = ReadAhead { limit: self.read_ahead, timeout: self.body_timeout };
        let timeout = self.timeout;
        async move {
            if let Some(limit) = timeout {
                // Boxed: inline, its timer and state would more than double the size of every
                // request's future, with or without --timeout.
                return Box::pin(deadline::dispatch(limit, request, conn, queue, doorbell, read_ahead)).await;
            }
            let (parts, incoming) = request.into_parts();
            let body = match read_body(&parts, incoming, read_ahead).await {
                Ok(body) => body,
                Err(err) => return err.response(&parts),
            };
            let (reply, answer) = oneshot::channel();
            if !enqueue(&queue, &doorbell, RequestJob { parts, body, conn, reply, claim: None }) {
                return proto::overloaded();
            }
            answer.await.unwrap_or_else(|_| no_answer())
        }
    }
}

/// Queues a request for the Python threads; false if the queue is full or closed.
fn enqueue(queue: &Sender<RequestJob>, doorbell: &Doorbell, job: RequestJob) -> bool {
    // Counted before it can be taken, so the gauge never dips below the truth.
    metrics::requests_waiting(1);
    if queue.try_send(job).is_err() {
        metrics::requests_waiting(-1);
        return false;
    }
    doorbell.ring();
    true
}

fn incomplete_body() -> proto::Response {
    proto::plain(StatusCode::BAD_REQUEST, "Bad Request: incomplete body\n")
}

/// The Python side dropped the request without a response.
fn no_answer() -> proto::Response {
    proto::plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

/// How much of a body is read before the app runs, and how long a gap between its pieces may be.
#[derive(Clone, Copy)]
pub(crate) struct ReadAhead {
    pub limit: usize,
    pub timeout: Option<Duration>,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The connection broke or the body's framing was bad.
    Broken(hyper::Error),
    /// No body bytes arrived for this long (`--body-timeout`).
    TooSlow(Duration),
}

impl BodyError {
    /// The answer when reading ahead failed, before the app was called.
    pub(crate) fn response(&self, parts: &http::request::Parts) -> proto::Response {
        match self {
            BodyError::Broken(_) => incomplete_body(),
            BodyError::TooSlow(limit) => {
                crate::telemetry::log::info(format_args!(
                    "{} {}: {self}; answered 408 and the app was not called",
                    parts.method,
                    parts.uri.path()
                ));
                body_timed_out(*limit)
            }
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Broken(err) => write!(f, "error reading the request body: {err}"),
            BodyError::TooSlow(limit) => write!(f, "no request body bytes arrived for {} s (--body-timeout)", limit.as_secs_f64()),
        }
    }
}

/// 408 for a body that stopped arriving; the rest of it is still on the connection, so the
/// connection closes.
pub(crate) fn body_timed_out(limit: Duration) -> proto::Response {
    let mut response = proto::plain(
        StatusCode::REQUEST_TIMEOUT,
        format!("Request Timeout: no request body bytes arrived for {} s\n", limit.as_secs_f64()),
    );
    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// The next frame of a body, waiting at most `limit` for it. The timer is only made when the
/// frame is not already there, so a body that came with its head costs none.
pub(crate) async fn next_frame(body: &mut Incoming, limit: Option<Duration>) -> Result<Option<http_body::Frame<Bytes>>, BodyError> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
            return std::task::Poll::Ready(frame.transpose().map_err(BodyError::Broken));
        }
        let Some(limit) = limit else { return std::task::Poll::Pending };
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| Err(BodyError::TooSlow(limit)))
    })
    .await
}

/// Reads up to `limit` bytes of the body before the app runs. A client that sent
/// `Expect: 100-continue` is never read ahead: the interim response goes out only when the app
/// asks for the body.
async fn read_body(parts: &http::request::Parts, mut incoming: Incoming, ahead: ReadAhead) -> Result<RequestBody, BodyError> {
    let limit = ahead.limit;
    if incoming.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let declared: Option<u64> = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let expects_continue = parts.headers.contains_key(EXPECT);
    if expects_continue || declared.is_some_and(|n| n > limit as u64) {
        return Ok(RequestBody::Streaming { head: Bytes::new(), rest: incoming });
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    loop {
        if total > limit {
            metrics::body_bytes_in(total as u64);
            return Ok(RequestBody::Streaming { head: concat(chunks, total), rest: incoming });
        }
        match next_frame(&mut incoming, ahead.timeout).await? {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        total += data.len();
                        chunks.push(data);
                    }
                }
            }
        }
    }
    metrics::body_bytes_in(total as u64);
    let body = concat(chunks, total);
    Ok(if body.is_empty() { RequestBody::Empty } else { RequestBody::Complete(body) })
}

/// The chunks as one buffer; a single chunk is passed on without a copy.
fn concat(mut chunks: Vec<Bytes>, total: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap(),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    }
}
