//! The ASGI 3 interface: one event loop per worker, on one Python thread.
//!
//! The I/O thread never takes the GIL. It turns each request into a [`Job`] and puts it on the
//! [`queue::LoopQueue`], which wakes the loop through an eventfd only when the loop is not
//! already coming for it. On the loop thread, [`bridge::Bridge::drain`] makes each job a task
//! that runs the app with a [`cycle::HttpCycle`]'s `receive` and `send`. The loop itself, and
//! the lifespan protocol, are Python (`coldbrew/asgi.py`): neither is on a request's path.

mod bridge;
mod cycle;
mod queue;
mod request_body;
mod scope;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::http::{self as proto, ConnInfo, Handler};
use crate::wsgi::{read_body, refuse_body, ReadAhead, RequestBody};
use request_body::PumpSource;
use std::task::Waker;

pub use bridge::{Bridge, Started};
pub use cycle::{HttpCycle, Ready};
pub(crate) use queue::LoopQueue;

use cycle::CycleShared;
use queue::Event;

/// A request body as the handler found it.
enum JobBody {
    Whole(Bytes),
    /// Larger than `--request-buffer`: `head` was read ahead, the rest streams.
    Streaming { head: Bytes, source: PumpSource, expects_continue: bool },
}

/// The least a streamed body may hold in memory between the client and the app, so that a
/// tiny `--request-buffer` does not turn a body into one message per TCP segment.
const MIN_PIPE: usize = 16 * 1024;

/// One request on its way to the event loop.
pub(crate) struct Job {
    pub parts: http::request::Parts,
    pub body: cycle::RequestBody,
    pub conn: ConnInfo,
    pub reply: oneshot::Sender<proto::Response>,
    pub shared: Arc<CycleShared>,
}

/// Hands requests from the I/O thread to the event loop.
pub struct AsgiHandler {
    queue: Arc<LoopQueue>,
    read_ahead: ReadAhead,
    max_pending: usize,
}

impl AsgiHandler {
    pub(crate) fn new(queue: Arc<LoopQueue>, read_ahead: ReadAhead, max_pending: usize) -> Self {
        AsgiHandler { queue, read_ahead, max_pending }
    }
}

impl Drop for AsgiHandler {
    fn drop(&mut self) {
        // No more requests: the loop runs the lifespan shutdown and stops.
        self.queue.push(Event::Stop);
    }
}

impl Handler for AsgiHandler {
    fn call(&self, request: proto::Request, conn: ConnInfo) -> impl Future<Output = proto::Response> + Send + use<> {
        let queue = self.queue.clone();
        let ahead = self.read_ahead;
        let max_pending = self.max_pending;
        Box::pin(async move {
            let (parts, incoming) = request.into_parts();
            let expects_continue = parts.headers.contains_key(http::header::EXPECT);
            let body = match read_body(&parts, incoming, ahead).await {
                Ok(RequestBody::Empty) => JobBody::Whole(Bytes::new()),
                Ok(RequestBody::Complete(body)) => JobBody::Whole(body),
                Ok(RequestBody::Streaming { head, rest, allowed, limit }) => {
                    JobBody::Streaming { head, source: PumpSource { rest, allowed, limit, timeout: ahead.timeout }, expects_continue }
                }
                Err(err) => return refuse_body(&parts, &conn, err),
            };
            if queue.pending() >= max_pending {
                crate::telemetry::shedding::request_shed();
                return proto::overloaded();
            }
            let (reply, answer) = oneshot::channel();
            let shared = CycleShared::new(queue.clone());
            let body = match body {
                JobBody::Whole(body) => cycle::RequestBody::Whole(Some(body)),
                JobBody::Streaming { head, source, expects_continue } => {
                    let capacity = ahead.limit.max(MIN_PIPE);
                    cycle::RequestBody::Piped(request_body::start(head, source, capacity, expects_continue, Waker::from(shared.clone())))
                }
            };
            let guard = DisconnectOnDrop(Some(shared.clone()));
            queue.push(Event::Request(Job { parts, body, conn, reply, shared }));
            let response = answer.await.unwrap_or_else(|_| no_answer());
            guard.defuse();
            response
        })
    }
}

/// Tells the app `http.disconnect` when hyper drops the request before its response began:
/// the client went away while the app was working.
struct DisconnectOnDrop(Option<Arc<CycleShared>>);

impl DisconnectOnDrop {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for DisconnectOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.client_gone();
        }
    }
}

/// The loop dropped the request without a response (it is stopping).
fn no_answer() -> proto::Response {
    proto::plain(http::StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

/// How long the lifespan shutdown may take when the graceful budget is already spent.
pub(crate) const MIN_SHUTDOWN: Duration = Duration::from_millis(500);

/// The worker's event-loop thread.
pub struct EventLoop {
    thread: std::thread::JoinHandle<()>,
    shutdown_budget: Arc<std::sync::Mutex<f64>>,
}

impl EventLoop {
    /// Starts the loop thread and waits for the lifespan startup. Returns the loop with the
    /// handler that feeds it, or the reason the app could not start.
    pub fn start(py: pyo3::Python<'_>, app: pyo3::Py<pyo3::PyAny>, config: &crate::config::ServerConfig) -> pyo3::PyResult<Result<(EventLoop, AsgiHandler), String>> {
        use pyo3::prelude::*;
        let queue = LoopQueue::new()?;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let shutdown_budget = Arc::new(std::sync::Mutex::new(config.graceful_timeout.as_secs_f64().max(MIN_SHUTDOWN.as_secs_f64())));
        let bridge = Py::new(py, Bridge::new(py, queue.clone(), app, config, started_tx, shutdown_budget.clone())?)?;
        // uvloop takes the thread that first imports it for the main one, where it installs a
        // signal wake-up; imported here, on the main thread, it leaves the loop thread's alone.
        let loop_kind: String = py.import("coldbrew.asgi")?.call_method1("loop_name", (config.event_loop.as_str(),))?.extract()?;
        let lifespan = config.lifespan.clone();
        let thread = std::thread::Builder::new()
            .name("coldbrew-loop".into())
            .stack_size(8 << 20)
            .spawn(move || {
                Python::attach(|py| {
                    let ran = py
                        .import("coldbrew.asgi")
                        .and_then(|module| module.call_method1("run_loop", (bridge.bind(py), loop_kind, lifespan)));
                    if let Err(err) = ran {
                        let text = crate::wsgi::format_traceback(py, &err);
                        bridge.bind(py).borrow().started_failed(format!("the event loop failed:\n{text}"));
                        crate::telemetry::log::error(format_args!("the event loop failed:\n{text}"));
                    }
                })
            })
            .map_err(|err| pyo3::exceptions::PyOSError::new_err(format!("cannot start the event loop thread: {err}")))?;
        let started = py.detach(move || started_rx.recv().unwrap_or_else(|_| Err("the event loop ended before it started".into())));
        if let Err(reason) = started {
            let _ = py.detach(|| thread.join());
            return Ok(Err(reason));
        }
        let ahead = ReadAhead { limit: config.request_buffer, timeout: config.body_timeout, body_limit: config.limits.body };
        Ok(Ok((EventLoop { thread, shutdown_budget }, AsgiHandler::new(queue, ahead, config.max_pending))))
    }

    /// After the handler is gone: waits for the lifespan shutdown, given `budget`, and the
    /// loop's end. False if the loop was still running at the deadline.
    pub fn join(self, budget: Duration) -> bool {
        *self.shutdown_budget.lock().unwrap() = budget.max(MIN_SHUTDOWN).as_secs_f64();
        let deadline = std::time::Instant::now() + budget.max(MIN_SHUTDOWN) + Duration::from_millis(500);
        while !self.thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.thread.join();
        true
    }
}
