//! The loop thread's side of the queue: the object `coldbrew/asgi.py` drives the loop with.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::blocked::Heartbeat;
use super::cycle::{HttpCycle, LoopSide};
use super::websocket::WebSocketCycle;
use super::queue::{Event, LoopQueue};
use super::scope::ScopeBuilder;
use crate::config::ServerConfig;
use crate::telemetry::log;
use crate::telemetry::TraceContext;
use crate::gateway::{RequestLine, RequestTrace};

/// How the lifespan startup ended: `Ok` to serve, or the reason not to.
pub type Started = Result<(), String>;

#[pyclass(module = "coldbrew._coldbrew")]
pub struct Bridge {
    queue: Arc<LoopQueue>,
    scope: ScopeBuilder,
    app: Py<PyAny>,
    runner: Option<Py<PyAny>>,
    create_task: Option<Py<PyAny>>,
    /// `loop` and `name` for `asyncio.Task`: a fixed name spares asyncio formatting a
    /// "Task-N" for each request. None when the app set a task factory, which gets the call.
    task_kwargs: Option<Py<PyDict>>,
    create_future: Option<Py<PyAny>>,
    batch: Vec<Event>,
    response_buffer: usize,
    send_timeout: Option<Duration>,
    /// `--timeout` is set: a request's cycle keeps its task, to cancel it.
    timeout: bool,
    /// The app's log records go through coldbrew's JSON writer, which wants their trace.
    trace_var: bool,
    started: Mutex<Option<mpsc::Sender<Started>>>,
    /// Seconds the lifespan shutdown may take, set when the stop comes.
    pub(crate) shutdown_budget: Arc<Mutex<f64>>,
    /// `--loop-block-warning`.
    heartbeat: Option<Arc<Heartbeat>>,
}

/// What the drain callback tells the loop to do next.
const DRAINED: u8 = 0;
const STOPPED: u8 = 1;
const START_BEAT: u8 = 2;

impl Bridge {
    pub(crate) fn new(
        py: Python<'_>,
        queue: Arc<LoopQueue>,
        app: Py<PyAny>,
        config: &ServerConfig,
        started: mpsc::Sender<Started>,
        shutdown_budget: Arc<Mutex<f64>>,
        heartbeat: Option<Arc<Heartbeat>>,
    ) -> PyResult<Self> {
        Ok(Bridge {
            queue,
            scope: ScopeBuilder::new(py, &config.host, config.port, &config.root_path)?,
            app,
            runner: None,
            create_task: None,
            task_kwargs: None,
            create_future: None,
            batch: Vec::with_capacity(64),
            response_buffer: config.response_buffer,
            send_timeout: config.send_timeout,
            timeout: config.timeout.is_some(),
            trace_var: config.log_format == crate::telemetry::log::Format::Json && config.app_log_handler,
            started: Mutex::new(Some(started)),
            shutdown_budget,
            heartbeat,
        })
    }
}

#[pymethods]
impl Bridge {
    /// The eventfd the loop watches.
    fn fileno(&self) -> i32 {
        self.queue.fileno()
    }

    #[getter]
    fn app(&self, py: Python<'_>) -> Py<PyAny> {
        self.app.clone_ref(py)
    }

    #[getter]
    fn shutdown_budget(&self) -> f64 {
        *self.shutdown_budget.lock().unwrap()
    }

    /// Called once the loop runs: what a request's task is made of, and the lifespan state.
    fn prepare(&mut self, event_loop: &Bound<'_, PyAny>, runner: Py<PyAny>, state: Option<Py<PyDict>>) -> PyResult<()> {
        let py = event_loop.py();
        if event_loop.call_method0("get_task_factory")?.is_none() {
            let kwargs = PyDict::new(py);
            kwargs.set_item("loop", event_loop)?;
            kwargs.set_item("name", "coldbrew request")?;
            self.create_task = Some(py.import("asyncio")?.getattr("Task")?.unbind());
            self.task_kwargs = Some(kwargs.unbind());
        } else {
            self.create_task = Some(event_loop.getattr("create_task")?.unbind());
        }
        self.create_future = Some(event_loop.getattr("create_future")?.unbind());
        self.queue.outbox.prepare(py, event_loop.getattr("call_soon")?.unbind())?;
        self.runner = Some(runner);
        self.scope.set_state(py, state)?;
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.set_thread();
        }
        Ok(())
    }

    /// Seconds between heartbeats, or None without `--loop-block-warning`.
    #[getter]
    fn beat_period(&self) -> Option<f64> {
        self.heartbeat.as_ref().map(|heartbeat| heartbeat.period())
    }

    /// The heartbeat callback: True while requests are in flight, for it to run again.
    fn beat(&self) -> bool {
        self.heartbeat.as_ref().is_some_and(|heartbeat| heartbeat.beat(self.queue.pending() > 0))
    }

    /// The lifespan startup ended; `failure` says why it failed.
    #[pyo3(signature = (failure=None))]
    fn started(&self, failure: Option<String>) {
        if let Some(sender) = self.started.lock().unwrap().take() {
            let _ = sender.send(failure.map_or(Ok(()), Err));
        }
    }

    /// The eventfd's reader callback: runs what the I/O thread queued. Returns STOPPED once
    /// the server is stopping and no request will come any more, START_BEAT when requests
    /// arrived and the heartbeat must start.
    fn drain(&mut self, py: Python<'_>) -> PyResult<u8> {
        crate::gateway::release_shared_bytes(py);
        let mut batch = std::mem::take(&mut self.batch);
        self.queue.take(&mut batch);
        let mut stop = false;
        let mut arrived = false;
        for event in batch.drain(..) {
            match event {
                Event::Request(job) => {
                    arrived = true;
                    if let Err(err) = self.start(py, job) {
                        log::error(format_args!("cannot start an ASGI request: {err}"));
                    }
                }
                Event::Wake(shared) => {
                    let cycle = shared.cycle.lock().unwrap().as_ref().map(|c| c.clone_ref(py));
                    match cycle {
                        Some(cycle) => cycle.woken(py),
                        // The task has ended; only its flag needs clearing.
                        None => shared.queued.store(false, std::sync::atomic::Ordering::Release),
                    }
                }
                Event::TimedOut(shared, limit) => {
                    let cycle = shared.cycle.lock().unwrap().as_ref().map(|c| c.clone_ref(py));
                    if let Some(LoopSide::Http(cycle)) = cycle {
                        cycle.bind(py).borrow_mut().time_out(py, limit);
                    }
                }
                Event::EndStreams => {
                    for shared in self.queue.take_streams() {
                        let cycle = shared.cycle.lock().unwrap().as_ref().map(|c| c.clone_ref(py));
                        if let Some(LoopSide::Http(cycle)) = cycle {
                            cycle.bind(py).borrow_mut().end_stream(py);
                        }
                    }
                }
                Event::Stop => stop = true,
            }
        }
        self.batch = batch;
        if stop {
            return Ok(STOPPED);
        }
        if arrived && self.heartbeat.as_ref().is_some_and(|heartbeat| heartbeat.wanted()) {
            return Ok(START_BEAT);
        }
        Ok(DRAINED)
    }
}

impl Bridge {
    pub(crate) fn started_failed(&self, reason: String) {
        if let Some(sender) = self.started.lock().unwrap().take() {
            let _ = sender.send(Err(reason));
        }
    }

    fn start(&self, py: Python<'_>, job: super::Job) -> PyResult<()> {
        let super::Job { parts, body, conn, reply, shared, websocket } = job;
        let (Some(runner), Some(create_task), Some(create_future)) = (&self.runner, &self.create_task, &self.create_future) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("the loop is not prepared"));
        };
        let scope = self.scope.build(py, &parts, &conn)?;
        let line = RequestLine { method: parts.method.clone(), uri: parts.uri.clone() };
        let trace = parts.extensions.get::<TraceContext>().copied();
        // The app's log records find the trace through a context variable, which the task
        // sets in its own context.
        let trace_var = match trace {
            Some(trace) if self.trace_var => Some(Py::new(py, RequestTrace(trace))?),
            _ => None,
        };
        if let Some(offer) = websocket {
            self.scope.make_websocket(py, &scope, &parts, &conn)?;
            let cycle = Py::new(py, WebSocketCycle::new(shared.clone(), offer, reply, create_future.clone_ref(py), line, trace))?;
            *shared.cycle.lock().unwrap() = Some(LoopSide::WebSocket(cycle.clone_ref(py)));
            let coroutine = runner.call1(py, (self.app.bind(py), scope, cycle, trace_var))?;
            create_task.call(py, (coroutine,), self.task_kwargs.as_ref().map(|kwargs| kwargs.bind(py)))?;
            return Ok(());
        }
        let cycle = Py::new(
            py,
            HttpCycle::new(
                shared.clone(),
                body,
                reply,
                parts.method == http::Method::HEAD,
                self.response_buffer,
                self.send_timeout,
                create_future.clone_ref(py),
                line,
                trace,
            ),
        )?;
        *shared.cycle.lock().unwrap() = Some(LoopSide::Http(cycle.clone_ref(py)));
        let coroutine = match trace_var {
            None => runner.call1(py, (self.app.bind(py), scope, cycle.clone_ref(py)))?,
            Some(trace) => runner.call1(py, (self.app.bind(py), scope, cycle.clone_ref(py), trace))?,
        };
        let task = create_task.call(py, (coroutine,), self.task_kwargs.as_ref().map(|kwargs| kwargs.bind(py)))?;
        if self.timeout {
            cycle.bind(py).borrow_mut().task = Some(task);
        }
        Ok(())
    }
}
