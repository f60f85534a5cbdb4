//! The fixed pool of Python threads that run the app.
//!
//! Each thread stays attached to the interpreter for its whole life and only releases the GIL
//! while it waits for work or for the network. A thread that finishes a request takes the next
//! queued one without releasing the GIL in between, so a busy pool does not pay a GIL hand-off
//! per request.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::doorbell::Doorbell;
use super::gil::GilHandoff;
use crate::gateway::{Outbox, Wake};
use pyo3::prelude::*;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::environ::{Constants, EnvironBuilder};
use super::response;
use super::streams::{ErrorStream, FileWrapper};
use super::{InputStream, ReadAhead, RequestJob, WsgiHandler};
use crate::config::ServerConfig;
use crate::telemetry::log::Format;
use crate::telemetry::metrics;
use crate::gateway::RequestTrace;
use crate::telemetry::TraceContext;

/// What every Python thread shares: the app and everything prepared for it at startup.
pub(crate) struct WorkerContext {
    pub app: Py<PyAny>,
    pub environ: EnvironBuilder,
    pub runtime: Handle,
    pub response_buffer: usize,
    /// `--send-timeout`, for a streamed response whose client stops reading.
    pub send_timeout: Option<Duration>,
    /// `--body-timeout`, for bodies the app streams from the connection.
    pub body_timeout: Option<std::time::Duration>,
    pub empty_input: Py<InputStream>,
    /// Keeps a searching thread from interrupting a running request.
    gil: GilHandoff,
    /// Responses on their way to the I/O thread.
    outbox: Arc<Outbox>,
    /// The queue the threads take requests from, to see whether a thread goes on with another.
    jobs: Receiver<RequestJob>,
    /// `coldbrew.cloud_logging.current_trace`, set per request when the app's log records go
    /// through coldbrew's JSON writer.
    trace_var: Option<Py<PyAny>>,
}

/// How many responses wait for a thread that goes on with more requests before it wakes the
/// I/O thread for them. For a framework's requests (0.1 ms and more) the backstop comes first
/// and sends a batch about every millisecond; for tiny ones this bounds the batch instead.
const DEFERRED_RESPONSES: usize = 32;

/// How often the I/O thread looks for responses nobody woke it for, while requests or responses
/// keep coming: the longest a response waits if the thread that wrote it then blocks in the app.
const BACKSTOP: Duration = Duration::from_millis(1);

impl WorkerContext {
    /// Hands a response to the I/O thread. It waits in the outbox while this thread goes on
    /// (with the rest of the body, or with the next request), so that one wake of the I/O
    /// thread, and on a shared core one preemption of this one, carries several; see
    /// [`request_done`](Self::request_done) and the backstop.
    pub fn reply(&self, reply: oneshot::Sender<crate::http::Response>, response: crate::http::Response) {
        self.outbox.queue(reply, response, Wake::Deferred(DEFERRED_RESPONSES));
    }

    /// A thread is about to wait for the I/O thread (a full response buffer): what it answered
    /// must go out first.
    pub fn flush_replies(&self) {
        self.outbox.wake();
    }

    /// A thread finished a request: with no other queued it goes idle, so what it answered
    /// goes out now.
    fn request_done(&self) {
        if self.jobs.is_empty() {
            self.outbox.wake();
        }
    }

    /// On the I/O thread, for each request: the delivering task runs, and with its backstop
    /// timer while the pool has work.
    pub fn expect_reply(&self) {
        self.outbox.start_delivering(Some(BACKSTOP));
        self.outbox.arm();
    }

    pub fn set_trace_var(&self, py: Python<'_>, trace: Option<TraceContext>) -> PyResult<()> {
        let Some(var) = &self.trace_var else { return Ok(()) };
        let value = match trace {
            Some(trace) => Py::new(py, RequestTrace(trace))?.into_any(),
            None => py.None(),
        };
        var.bind(py).call_method1(pyo3::intern!(py, "set"), (value,))?;
        Ok(())
    }
}

pub struct Pool {
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `config.threads` Python threads and returns the pool with the handler that feeds
    /// it. At most `config.max_pending` requests wait for a thread; more get 503.
    pub fn start(py: Python<'_>, app: Py<PyAny>, config: &ServerConfig, runtime: Handle) -> PyResult<(Pool, WsgiHandler)> {
        let errors = Py::new(py, ErrorStream)?.into_any();
        let file_wrapper = py.get_type::<FileWrapper>().into_any().unbind();
        let environ = EnvironBuilder::new(
            py,
            Constants {
                root_path: &config.root_path,
                server_name: &config.host,
                server_port: config.port,
                multithread: config.threads > 1,
                multiprocess: config.workers > 1,
                errors,
                file_wrapper,
            },
        )?;
        let trace_var = if config.log_format == Format::Json && config.app_log_handler {
            Some(py.import("coldbrew.cloud_logging")?.getattr("current_trace")?.unbind())
        } else {
            None
        };
        let (sender, receiver): (Sender<RequestJob>, Receiver<RequestJob>) = crossbeam_channel::bounded(config.max_pending);
        let context = Arc::new(WorkerContext {
            app,
            environ,
            runtime,
            response_buffer: config.response_buffer,
            send_timeout: config.send_timeout,
            body_timeout: config.body_timeout,
            empty_input: Py::new(py, InputStream::empty())?,
            gil: GilHandoff::new(py),
            outbox: Arc::default(),
            jobs: receiver.clone(),
            trace_var,
        });

        let doorbell = Arc::new(Doorbell::new());
        let mut threads = Vec::with_capacity(config.threads);
        for index in 0..config.threads {
            let context = context.clone();
            let receiver = receiver.clone();
            let doorbell = doorbell.clone();
            let thread = std::thread::Builder::new()
                .name(format!("coldbrew-py-{index}"))
                .stack_size(8 << 20)
                .spawn(move || run_thread(context, receiver, doorbell))
                .map_err(|err| pyo3::exceptions::PyOSError::new_err(format!("cannot start a Python thread: {err}")))?;
            threads.push(thread);
        }
        Ok((Pool { threads }, WsgiHandler::new(
                sender,
                context,
                doorbell,
                ReadAhead::from_config(config),
                config.timeout,
            )))
    }

    /// Waits for the threads to finish what they hold. The handler (the queue's only sender)
    /// must be gone first. Returns false if some were still busy at the deadline.
    pub fn join(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.threads.iter().any(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        true
    }
}

fn run_thread(context: Arc<WorkerContext>, jobs: Receiver<RequestJob>, doorbell: Arc<Doorbell>) {
    Python::attach(|py| {
        doorbell.start_searching();
        let mut searching = true;
        loop {
            // Holding the GIL: take requests until none is left.
            match jobs.try_recv() {
                Ok(job) => {
                    metrics::requests_waiting(-1);
                    if searching {
                        doorbell.found(!jobs.is_empty());
                        searching = false;
                    }
                    {
                        let _in_app = context.gil.enter_app();
                        response::handle(py, &context, job);
                    }
                    context.request_done();
                    if !context.gil.others_in_app() {
                        continue;
                    }
                    // Another thread is in the middle of a request, maybe waiting for the GIL:
                    // this one does not start a newer request ahead of it, but comes back the
                    // way an idle thread does (see `gil`).
                }
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            let was_searching = std::mem::replace(&mut searching, false);
            let (open, asked) = py.detach(|| (doorbell.wait(was_searching, || !jobs.is_empty()), context.gil.ask()));
            if !open {
                // Closed: finish what is still queued (their clients are gone), then stop.
                while let Ok(job) = jobs.try_recv() {
                    metrics::requests_waiting(-1);
                    response::handle(py, &context, job);
                }
                context.flush_replies();
                return;
            }
            searching = true;
            context.gil.settle(py, asked, || !jobs.is_empty());
            // Taken without a fight, the GIL was released by a thread now blocked in the app:
            // what it answered before must not wait for the backstop.
            context.flush_replies();
        }
    });
}
