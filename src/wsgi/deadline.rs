//! `--timeout`: a deadline on each request, from the moment the handler receives it until the
//! app has produced its response head.
//!
//! A Python thread cannot be stopped safely, so the deadline does not stop the app. The client
//! gets 504 at once, the log shows where the app's thread is stuck, and the thread runs on until
//! the app returns: it still counts as busy, and its late response is dropped. Streaming the
//! body after the head is not covered: the app has answered by then, and a long stream (a
//! download, server-sent events) is often meant to outlast any per-request deadline.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use http::StatusCode;
use pyo3::prelude::*;
use tokio::sync::oneshot;

use super::doorbell::Doorbell;
use super::{enqueue, no_answer, RequestJob};
use crate::gateway::{self, read_body, refuse_body, ReadAhead, RequestBody, RequestLine};
use crate::http::{self as proto, ConnInfo};
use crate::telemetry::log::{self, Level};
use crate::telemetry::TraceContext;

/// Whether a Python thread has taken a request, shared by the handler that waits for the
/// answer and the pool thread that runs the app. The handler and the thread race for it once,
/// so a request is either run or skipped, never both.
pub(crate) struct Claim(AtomicU64);

/// No Python thread has taken the request yet.
const WAITING: u64 = 0;
/// The deadline passed first: the thread that takes the job must not call the app.
const ABANDONED: u64 = u64::MAX;
/// The app returned.
const DONE: u64 = u64::MAX - 1;
// Any other value is the ident of the Python thread running the app. CPython's idents are
// `pthread_t` values, addresses on Linux, so they never collide with the three above.

/// Where a request was when its deadline passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Waiting,
    Running(u64),
    Done,
}

impl Claim {
    pub fn new() -> Self {
        Claim(AtomicU64::new(WAITING))
    }

    /// A Python thread takes the request; `None` if its deadline already passed. The request
    /// counts as running until the guard is dropped, which must happen with the GIL held.
    pub fn start(&self, thread: u64) -> Option<Running<'_>> {
        self.0.compare_exchange(WAITING, thread, SeqCst, SeqCst).ok().map(|_| Running(self))
    }

    /// The deadline passed. A request no thread has taken yet never will be.
    pub fn abandon(&self) -> Stage {
        match self.0.compare_exchange(WAITING, ABANDONED, SeqCst, SeqCst) {
            Ok(_) | Err(ABANDONED) => Stage::Waiting,
            Err(DONE) => Stage::Done,
            Err(thread) => Stage::Running(thread),
        }
    }

    fn running_on(&self, thread: u64) -> bool {
        self.0.load(SeqCst) == thread
    }
}

/// A request being run by a Python thread; dropping it marks the request done.
pub(crate) struct Running<'a>(&'a Claim);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0 .0.store(DONE, SeqCst);
    }
}

/// [`super::WsgiHandler::call`] with a deadline. One timer covers reading the body ahead,
/// the wait for a Python thread and the app's work up to its response head.
pub(super) async fn dispatch(
    limit: Duration,
    request: proto::Request,
    conn: ConnInfo,
    queue: Sender<RequestJob>,
    doorbell: Arc<Doorbell>,
    read_ahead: ReadAhead,
) -> proto::Response {
    let started = Instant::now();
    let timer = tokio::time::sleep(limit);
    tokio::pin!(timer);
    let (parts, incoming) = request.into_parts();
    let line = RequestLine { method: parts.method.clone(), uri: parts.uri.clone() };
    let trace = parts.extensions.get::<TraceContext>().copied();

    let body = tokio::select! {
        biased;
        body = read_body(&parts, incoming, read_ahead) => match body {
            Ok(body) => body,
            Err(err) => return refuse_body(&parts, &conn, err),
        },
        () = &mut timer => return body_too_slow(&line, trace, limit),
    };
    // The rest of a streamed body stays with the job until the app returns or the job is passed
    // over, and the connection cannot carry another request before then.
    let reusable = !matches!(body, RequestBody::Streaming { .. });
    let claim = Arc::new(Claim::new());
    let (reply, mut answer) = oneshot::channel();
    if !enqueue(&queue, &doorbell, RequestJob { parts, body, conn, reply, claim: Some(claim.clone()) }) {
        return proto::overloaded();
    }
    tokio::select! {
        biased;
        answered = &mut answer => return answered.unwrap_or_else(|_| no_answer()),
        () = &mut timer => {}
    }
    match claim.abandon() {
        // The app answered between the timer and the claim: its response is there.
        Stage::Done => answer.try_recv().unwrap_or_else(|_| no_answer()),
        Stage::Waiting => {
            log::emit_traced(
                Level::Warning,
                trace,
                format_args!(
                    "{line}: still waiting for a free Python thread after {:.2} s (--timeout {}); \
                     answered 504 and the app will not be called for it",
                    started.elapsed().as_secs_f64(),
                    limit.as_secs_f64()
                ),
            );
            gateway_timeout(limit, reusable)
        }
        Stage::Running(thread) => {
            // Dropping `answer` on return makes the app's late response go nowhere.
            report_stuck(claim, thread, line, trace, started, limit);
            gateway_timeout(limit, reusable)
        }
    }
}

fn gateway_timeout(limit: Duration, reusable: bool) -> proto::Response {
    let mut response = proto::plain(
        StatusCode::GATEWAY_TIMEOUT,
        format!("Gateway Timeout: the app did not answer within {} s\n", limit.as_secs_f64()),
    );
    if !reusable {
        proto::close_connection(&mut response);
    }
    response
}

/// The client had not sent the body the server reads ahead: the app was never called, and
/// the client, not the app, is late.
fn body_too_slow(line: &RequestLine, trace: Option<TraceContext>, limit: Duration) -> proto::Response {
    let limit = limit.as_secs_f64();
    log::emit_traced(
        Level::Warning,
        trace,
        format_args!("{line}: the request body was still arriving after {limit} s (--timeout); answered 408"),
    );
    proto::plain(StatusCode::REQUEST_TIMEOUT, format!("Request Timeout: the request body did not arrive within {limit} s\n"))
}

/// Logs where the app's thread is. Reading another thread's Python stack needs the GIL, which
/// the app may hold for a while, so it is read on a blocking thread, never the I/O thread.
fn report_stuck(claim: Arc<Claim>, thread: u64, line: RequestLine, trace: Option<TraceContext>, started: Instant, limit: Duration) {
    tokio::task::spawn_blocking(move || {
        // The thread only marks the request done with the GIL held, so while this holds it the
        // stack it reads is still this request's.
        let stack = Python::attach(|py| claim.running_on(thread).then(|| gateway::python_stack(py, thread)));
        let elapsed = started.elapsed().as_secs_f64();
        let limit = limit.as_secs_f64();
        match stack {
            // Shaped as a Python traceback, which must end with an exception line for Error
            // Reporting to take it. No exception is raised in the app; the line says what
            // happened, and groups these reports by where the app was stuck.
            Some(Ok(stack)) => log::emit_traced(
                Level::Error,
                trace,
                format_args!(
                    "{line}: no response after {elapsed:.2} s (--timeout {limit}); answered 504. The app's \
                     thread is not interrupted and runs on until the app returns; it is now at:\n\
                     Traceback (most recent call last):\n{stack}\
                     TimeoutError: {line} did not answer within {limit} s"
                ),
            ),
            Some(Err(err)) => log::emit_traced(
                Level::Error,
                trace,
                format_args!("{line}: no response after {elapsed:.2} s (--timeout {limit}); answered 504; cannot read the app's stack: {err}"),
            ),
            None => log::emit_traced(
                Level::Error,
                trace,
                format_args!("{line}: no response within {limit} s (--timeout); answered 504. The app returned moments later."),
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_either_run_or_skipped() {
        let skipped = Claim::new();
        assert_eq!(skipped.abandon(), Stage::Waiting);
        assert!(skipped.start(7).is_none(), "a thread must not run an abandoned request");

        let late = Claim::new();
        let running = late.start(7).expect("not abandoned yet");
        assert!(late.running_on(7));
        assert_eq!(late.abandon(), Stage::Running(7));
        drop(running);
        assert!(!late.running_on(7));
        assert_eq!(late.abandon(), Stage::Done);
    }
}
