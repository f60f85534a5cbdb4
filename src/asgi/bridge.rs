//! The loop thread's side of the queue: the object `coldbrew/asgi.py` drives the loop with.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::cycle::{HttpCycle, LoopSide};
use super::websocket::WebSocketCycle;
use super::queue::{Event, LoopQueue};
use super::scope::ScopeBuilder;
use crate::config::ServerConfig;
use crate::telemetry::log;

/// How the lifespan startup ended: `Ok` to serve, or the reason not to.
pub type Started = Result<(), String>;

#[pyclass(module = "coldbrew._coldbrew")]
pub struct Bridge {
    queue: Arc<LoopQueue>,
    scope: ScopeBuilder,
    app: Py<PyAny>,
    runner: Option<Py<PyAny>>,
    create_task: Option<Py<PyAny>>,
    create_future: Option<Py<PyAny>>,
    batch: Vec<Event>,
    response_buffer: usize,
    send_timeout: Option<Duration>,
    started: Mutex<Option<mpsc::Sender<Started>>>,
    /// Seconds the lifespan shutdown may take, set when the stop comes.
    pub(crate) shutdown_budget: Arc<Mutex<f64>>,
}

impl Bridge {
    pub(crate) fn new(
        py: Python<'_>,
        queue: Arc<LoopQueue>,
        app: Py<PyAny>,
        config: &ServerConfig,
        started: mpsc::Sender<Started>,
        shutdown_budget: Arc<Mutex<f64>>,
    ) -> PyResult<Self> {
        Ok(Bridge {
            queue,
            scope: ScopeBuilder::new(py, &config.host, config.port, &config.root_path)?,
            app,
            runner: None,
            create_task: None,
            create_future: None,
            batch: Vec::with_capacity(64),
            response_buffer: config.response_buffer,
            send_timeout: config.send_timeout,
            started: Mutex::new(Some(started)),
            shutdown_budget,
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
        self.create_task = Some(event_loop.getattr("create_task")?.unbind());
        self.create_future = Some(event_loop.getattr("create_future")?.unbind());
        self.runner = Some(runner);
        self.scope.set_state(state);
        Ok(())
    }

    /// The lifespan startup ended; `failure` says why it failed.
    #[pyo3(signature = (failure=None))]
    fn started(&self, failure: Option<String>) {
        if let Some(sender) = self.started.lock().unwrap().take() {
            let _ = sender.send(failure.map_or(Ok(()), Err));
        }
    }

    /// The eventfd's reader callback: runs what the I/O thread queued. Returns True once the
    /// server is stopping and no request will come any more.
    fn drain(&mut self, py: Python<'_>) -> PyResult<bool> {
        let mut batch = std::mem::take(&mut self.batch);
        self.queue.take(&mut batch);
        let mut stop = false;
        for event in batch.drain(..) {
            match event {
                Event::Request(job) => {
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
        Ok(stop)
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
        let line = format!("{} {}", parts.method, parts.uri.path());
        if let Some(offer) = websocket {
            self.scope.make_websocket(py, &scope, &parts, &conn)?;
            let cycle = Py::new(py, WebSocketCycle::new(shared.clone(), offer, reply, create_future.clone_ref(py), line))?;
            *shared.cycle.lock().unwrap() = Some(LoopSide::WebSocket(cycle.clone_ref(py)));
            let coroutine = runner.call1(py, (self.app.bind(py), scope, cycle))?;
            create_task.call1(py, (coroutine,))?;
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
            ),
        )?;
        *shared.cycle.lock().unwrap() = Some(LoopSide::Http(cycle.clone_ref(py)));
        let coroutine = runner.call1(py, (self.app.bind(py), scope, cycle))?;
        create_task.call1(py, (coroutine,))?;
        Ok(())
    }
}
