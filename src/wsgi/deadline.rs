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
use http::header::CONNECTION;
use http::{HeaderValue, StatusCode};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use tokio::sync::oneshot;

use super::doorbell::Doorbell;
use super::response::RequestLine;
use super::{enqueue, no_answer, read_body, refuse_body, ReadAhead, RequestBody, RequestJob};
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

/// The calling thread's ident as `threading.get_ident()` and `sys._current_frames()` know it.
pub(crate) fn python_thread_ident() -> u64 {
    // Safety: callable from any thread, attached or not; it only asks the OS for the thread id.
    unsafe { pyo3::ffi::PyThread_get_thread_ident() as u64 }
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
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
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
        let stack = Python::attach(|py| claim.running_on(thread).then(|| python_stack(py, thread)));
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

/// The Python stack of another thread, outermost call first, as `traceback` prints it.
fn python_stack(py: Python<'_>, thread: u64) -> PyResult<String> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let frame = frames
        .cast::<PyDict>()?
        .get_item(thread)?
        .ok_or_else(|| pyo3::exceptions::PyLookupError::new_err(format!("thread {thread} has no Python frame")))?;
    let lines = py.import("traceback")?.call_method1("format_stack", (frame,))?;
    PyString::new(py, "").call_method1("join", (lines,))?.extract()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

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

    #[test]
    fn reads_the_stack_of_another_python_thread() {
        Python::initialize();
        let code = CString::new(
            "import threading\n\
             entered = threading.Event()\n\
             release = threading.Event()\n\
             def stuck_in_here():\n\
             \x20   entered.set()\n\
             \x20   release.wait(10)\n\
             worker = threading.Thread(target=stuck_in_here)\n\
             worker.start()\n\
             entered.wait(10)\n",
        )
        .unwrap();
        Python::attach(|py| {
            let globals = PyDict::new(py);
            py.run(&code, Some(&globals), None).unwrap();
            let worker = globals.get_item("worker").unwrap().unwrap();
            let ident: u64 = worker.getattr("ident").unwrap().extract().unwrap();
            let stack = python_stack(py, ident).unwrap();
            globals.get_item("release").unwrap().unwrap().call_method0("set").unwrap();
            worker.call_method0("join").unwrap();
            assert!(stack.contains("in stuck_in_here"), "{stack}");
            assert!(stack.ends_with('\n'), "{stack:?}");
            assert!(python_stack(py, ident).is_err(), "a finished thread has no stack");
        });
        // A pool thread is a Rust thread that attached itself; its ident must be the one
        // `sys._current_frames()` files its frames under.
        std::thread::spawn(|| {
            Python::attach(|py| {
                let threading: u64 = py.import("threading").unwrap().call_method0("get_ident").unwrap().extract().unwrap();
                assert_eq!(python_thread_ident(), threading);
            })
        })
        .join()
        .unwrap();
    }
}
