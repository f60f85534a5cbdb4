//! The ASGI 3 interface: one event loop per worker, on one Python thread.
//!
//! The I/O thread never takes the GIL. It turns each request into a [`Job`] and puts it on the
//! [`queue::LoopQueue`], which wakes the loop through an eventfd only when the loop is not
//! already coming for it. On the loop thread, [`bridge::Bridge::drain`] makes each job a task
//! that runs the app with a [`cycle::HttpCycle`]'s `receive` and `send`. The loop itself, and
//! the lifespan protocol, are Python (`coldbrew/asgi.py`): neither is on a request's path.

mod blocked;
mod bridge;
mod cycle;
mod outbox;
mod queue;
mod request_body;
mod scope;
mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::http::{self as proto, ConnInfo, Handler};
use crate::telemetry::log;
use crate::gateway::{self, read_body, refuse_body, ReadAhead, RequestBody};
use request_body::PumpSource;
use std::task::Waker;

pub use bridge::{Bridge, Started};
pub use cycle::{HttpCycle, Ready};
pub use websocket::WebSocketCycle;
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
    /// For a websocket handshake: what the app's answer is made of.
    pub websocket: Option<websocket::Offer>,
}

/// Hands requests from the I/O thread to the event loop.
pub struct AsgiHandler {
    queue: Arc<LoopQueue>,
    read_ahead: ReadAhead,
    max_pending: usize,
    websockets: websocket::Settings,
    /// `--timeout`: from the request's arrival to its response head.
    timeout: Option<Duration>,
    /// Becomes true halfway through a graceful stop: open websockets close with 1001.
    ending: Arc<watch::Sender<bool>>,
}

impl AsgiHandler {
    pub(crate) fn new(queue: Arc<LoopQueue>, read_ahead: ReadAhead, max_pending: usize, websockets: websocket::Settings, timeout: Option<Duration>) -> Self {
        AsgiHandler { queue, read_ahead, max_pending, websockets, timeout, ending: Arc::new(watch::channel(false).0) }
    }
}

impl Drop for AsgiHandler {
    fn drop(&mut self) {
        // No more requests: the loop runs the lifespan shutdown and stops.
        self.queue.push(Event::Stop);
    }
}

impl Handler for AsgiHandler {
    /// Halfway through the graceful budget, ends what would otherwise keep it busy to the end:
    /// streaming responses get `http.disconnect` (their body ends cleanly) and websockets are
    /// closed with 1001, so that the lifespan shutdown has the rest of the budget.
    fn stopping(&self, graceful_timeout: Duration) {
        let ending = self.ending.clone();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(graceful_timeout / 2).await;
            ending.send_replace(true);
            queue.push(Event::EndStreams);
        });
    }

    fn call(&self, request: proto::Request, conn: ConnInfo) -> impl Future<Output = proto::Response> + Send + use<> {
        self.queue.outbox.start_delivering();
        let queue = self.queue.clone();
        let ahead = self.read_ahead;
        let max_pending = self.max_pending;
        let websockets = self.websockets;
        let ending = self.ending.subscribe();
        let deadline = self.timeout.map(|limit| (tokio::time::Instant::now() + limit, limit));
        Box::pin(async move {
            let (parts, incoming) = request.into_parts();
            match websocket::handshake(&parts, &websockets) {
                None => {}
                Some(Err(refused)) => {
                    log::info(format_args!("{} {} from {}: {}; answered {}", parts.method, parts.uri.path(), conn.peer_ip.as_str(), "an invalid websocket handshake", refused.status().as_u16()));
                    return refused;
                }
                Some(Ok(handshake)) => {
                    drop(incoming);
                    return serve_websocket(parts, conn, handshake, queue, websockets, max_pending, ending).await;
                }
            }
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
            queue.push(Event::Request(Job { parts, body, conn, reply, shared: shared.clone(), websocket: None }));
            let response = match deadline {
                None => answer.await,
                Some((at, limit)) => {
                    tokio::pin!(answer);
                    tokio::select! {
                        biased;
                        response = &mut answer => response,
                        () = tokio::time::sleep_until(at) => {
                            // The loop answers 504 unless the app's answer is on its way.
                            queue.push(Event::TimedOut(shared, limit));
                            answer.await
                        }
                    }
                }
            }
            .unwrap_or_else(|_| no_answer());
            guard.defuse();
            response
        })
    }
}

/// Puts a websocket handshake to the app and, when it accepts, leaves the connection's
/// takeover with the HTTP layer.
async fn serve_websocket(
    mut parts: http::request::Parts,
    conn: ConnInfo,
    handshake: websocket::Handshake,
    queue: Arc<LoopQueue>,
    settings: websocket::Settings,
    max_pending: usize,
    ending: watch::Receiver<bool>,
) -> proto::Response {
    if *ending.borrow() {
        return proto::plain(http::StatusCode::SERVICE_UNAVAILABLE, "the server is stopping\n");
    }
    if queue.pending() >= max_pending {
        crate::telemetry::shedding::request_shed();
        return proto::overloaded();
    }
    let Some(slot) = parts.extensions.remove::<proto::UpgradeSlot>() else {
        unreachable!("a websocket handshake comes with its connection's upgrade slot");
    };
    let (reply, answer) = oneshot::channel();
    let shared = CycleShared::new(queue.clone());
    let link = Arc::new(websocket::Link::new(settings, Waker::from(shared.clone())));
    let extensions = handshake.extensions.as_ref().and_then(|value| value.to_str().ok()).map(str::to_owned);
    let offer = websocket::Offer { handshake, link: link.clone() };
    let guard = DisconnectOnDrop(Some(shared.clone()));
    let job = Job { parts, body: cycle::RequestBody::Done, conn, reply, shared, websocket: Some(offer) };
    queue.push(Event::Request(job));
    let response = answer.await.unwrap_or_else(|_| no_answer());
    guard.defuse();
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        slot.set(Box::new(move |io| Box::pin(websocket::run(io, link, extensions, ending))));
    }
    response
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
        let heartbeat = blocked::Heartbeat::start(config.loop_block_warning)
            .map_err(|err| pyo3::exceptions::PyOSError::new_err(format!("cannot start the event loop's watcher thread: {err}")))?;
        let bridge = Py::new(py, Bridge::new(py, queue.clone(), app, config, started_tx, shutdown_budget.clone(), heartbeat)?)?;
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
                        let text = gateway::format_traceback(py, &err);
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
        let ahead = ReadAhead::from_config(config);
        let websockets = websocket::Settings {
            ping_interval: config.ws_ping_interval,
            ping_timeout: config.ws_ping_timeout,
            max_size: config.ws_max_size,
            outbound_limit: config.response_buffer,
        };
        Ok(Ok((EventLoop { thread, shutdown_budget }, AsgiHandler::new(queue, ahead, config.max_pending, websockets, config.timeout))))
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
