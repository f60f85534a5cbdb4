//! The WSGI interface (PEP 3333).
//!
//! The I/O thread turns each request into a [`RequestJob`] and puts it on a bounded queue; a
//! fixed pool of Python threads ([`pool`]) takes jobs off it, builds the environ
//! ([`environ`]), calls the app and hands the response back ([`response`]). Tokio threads never
//! take the GIL.

mod deadline;
mod doorbell;
pub(crate) mod environ;
#[cfg(test)]
mod fuzz;
mod gil;
mod input;
mod pool;
mod response;
mod streams;

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use crossbeam_channel::Sender;
use doorbell::Doorbell;
use http::StatusCode;
use tokio::sync::oneshot;

use crate::gateway::{read_body, refuse_body, ReadAhead, RequestBody};
use crate::http::{self as proto, ConnInfo, Handler};
use crate::telemetry::metrics;

pub use input::InputStream;
pub use pool::Pool;
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

/// Hands requests from the I/O thread to the Python thread pool.
pub struct WsgiHandler {
    queue: Sender<RequestJob>,
    context: Arc<pool::WorkerContext>,
    doorbell: Arc<Doorbell>,
    read_ahead: ReadAhead,
    timeout: Option<Duration>,
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
        context: Arc<pool::WorkerContext>,
        doorbell: Arc<Doorbell>,
        read_ahead: ReadAhead,
        timeout: Option<Duration>,
    ) -> Self {
        WsgiHandler { queue, context, doorbell, read_ahead, timeout }
    }
}

impl Handler for WsgiHandler {
    fn call(&self, request: proto::Request, conn: ConnInfo) -> impl Future<Output = proto::Response> + Send + use<> {
        self.context.expect_reply();
        let queue = self.queue.clone();
        let doorbell = self.doorbell.clone();
        let read_ahead = self.read_ahead;
        let timeout = self.timeout;
        // Boxed: the state of a request's way through the queue and back is a few kilobytes
        // (its head, its connection, the job), and hyper moves the future it gets from the
        // service more than once; moving a pointer instead costs one allocation.
        Box::pin(async move {
            if let Some(limit) = timeout {
                // Boxed: inline, its timer and state would more than double the size of every
                // request's future, with or without --timeout.
                return Box::pin(deadline::dispatch(limit, request, conn, queue, doorbell, read_ahead)).await;
            }
            let (parts, incoming) = request.into_parts();
            let body = match read_body(&parts, incoming, read_ahead).await {
                Ok(body) => body,
                Err(err) => return refuse_body(&parts, &conn, err),
            };
            let (reply, answer) = oneshot::channel();
            if !enqueue(&queue, &doorbell, RequestJob { parts, body, conn, reply, claim: None }) {
                return proto::overloaded();
            }
            answer.await.unwrap_or_else(|_| no_answer())
        })
    }
}

/// Queues a request for the Python threads; false if the queue is full or closed.
fn enqueue(queue: &Sender<RequestJob>, doorbell: &Doorbell, job: RequestJob) -> bool {
    // Counted before it can be taken, so the gauge never dips below the truth.
    metrics::requests_waiting(1);
    if let Err(err) = queue.try_send(job) {
        metrics::requests_waiting(-1);
        if err.is_full() {
            crate::telemetry::shedding::request_shed();
        }
        return false;
    }
    doorbell.ring();
    true
}

/// The Python side dropped the request without a response.
fn no_answer() -> proto::Response {
    proto::plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}
