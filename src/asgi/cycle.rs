//! One HTTP request's `receive` and `send`, on the loop thread.
//!
//! Both return a [`Ready`] when the answer is already there (the body was read ahead, the
//! chunk fits the response buffer): awaiting it completes at once, and no asyncio `Future` is
//! made. Only a `send` that must wait for a slow client, or a `receive` that waits for the
//! client to leave, gets a loop future, which the drain callback completes when the I/O
//! thread wakes the cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH};
use http::StatusCode;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tokio::sync::oneshot;

use super::queue::{Event, LoopQueue};
use super::request_body::{BodyReader, Taken};
use crate::gateway::{self, RequestLine};
use crate::http::{self as proto, ChunkSender, Closed, ResponseBody};
use crate::telemetry::log::{self, Level};
use crate::telemetry::TraceContext;

/// What the I/O thread and the loop thread share about one request.
pub(crate) struct CycleShared {
    queue: Arc<LoopQueue>,
    /// A wake is on the queue already.
    pub(crate) queued: AtomicBool,
    /// hyper dropped the request before its response began.
    pub(crate) gone: AtomicBool,
    /// The loop side, for the drain callback to find from a wake; cleared when the app's task
    /// ends, which breaks the cycle between the two.
    pub(crate) cycle: Mutex<Option<LoopSide>>,
}

/// The loop thread's object for a request.
pub(crate) enum LoopSide {
    Http(Py<HttpCycle>),
    WebSocket(Py<super::WebSocketCycle>),
}

impl LoopSide {
    pub fn clone_ref(&self, py: Python<'_>) -> LoopSide {
        match self {
            LoopSide::Http(cycle) => LoopSide::Http(cycle.clone_ref(py)),
            LoopSide::WebSocket(cycle) => LoopSide::WebSocket(cycle.clone_ref(py)),
        }
    }

    pub fn woken(&self, py: Python<'_>) {
        match self {
            LoopSide::Http(cycle) => cycle.bind(py).borrow_mut().woken(py),
            LoopSide::WebSocket(cycle) => cycle.bind(py).borrow_mut().woken(py),
        }
    }
}

impl CycleShared {
    pub fn new(queue: Arc<LoopQueue>) -> Arc<Self> {
        Arc::new(CycleShared { queue, queued: AtomicBool::new(false), gone: AtomicBool::new(false), cycle: Mutex::new(None) })
    }

    pub fn client_gone(self: &Arc<Self>) {
        self.gone.store(true, Ordering::Release);
        self.clone().wake();
    }
}

impl Wake for CycleShared {
    fn wake(self: Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let queue = self.queue.clone();
            queue.push(Event::Wake(self));
        }
    }
}

impl Drop for CycleShared {
    fn drop(&mut self) {
        self.queue.finished();
    }
}

/// An awaitable whose result is already known: its first step returns it.
#[pyclass(module = "coldbrew._coldbrew", freelist = 64)]
pub struct Ready(Option<Py<PyAny>>);

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Never yields: `Ok(None)` ends the iteration with no value (what `send()` returns, and
    /// cheaper than raising), `StopIteration(value)` ends it with one.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.0.take() {
            Some(value) if !value.is_none(py) => Err(PyStopIteration::new_err((value,))),
            _ => Ok(None),
        }
    }

    fn send(&mut self, py: Python<'_>, _value: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        self.__next__(py)
    }

    #[pyo3(signature = (*_args))]
    fn throw(&mut self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<()> {
        Err(PyRuntimeError::new_err("a completed ASGI awaitable cannot take an exception"))
    }

    fn close(&mut self) {}
}

pub(crate) fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, Ready(Some(value)))?.into_any())
}

/// A request body as the loop thread holds it.
pub(crate) enum RequestBody {
    /// Read ahead in full; `None` once received.
    Whole(Option<Bytes>),
    /// Still arriving, through the pump.
    Piped(BodyReader),
    /// Received to its end, or failed.
    Done,
}

/// What the loop thread knows of one request and its response.
#[pyclass(module = "coldbrew._coldbrew")]
pub struct HttpCycle {
    shared: Arc<CycleShared>,
    waker: Waker,
    body: RequestBody,
    reply: Option<oneshot::Sender<proto::Response>>,
    /// From `http.response.start` until the head goes to the I/O thread.
    head: Option<(StatusCode, HeaderMap)>,
    started: bool,
    /// `http.response.start` said trailers follow the body.
    trailers: Option<HeaderMap>,
    /// The last body message came; with trailers, the response waits for them.
    body_ended: bool,
    stream: Option<ChunkSender>,
    /// A chunk waiting for room in the response buffer, the future its `send` awaits, and
    /// whether the body ends with it.
    blocked_send: Option<(Bytes, Py<PyAny>, bool)>,
    waiting_receive: Option<Py<PyAny>>,
    complete: bool,
    disconnected: bool,
    head_request: bool,
    response_buffer: usize,
    send_timeout: Option<Duration>,
    create_future: Py<PyAny>,
    /// `GET /path`, for log lines.
    pub(crate) line: RequestLine,
    /// The request's trace, on the server's log lines about it.
    trace: Option<TraceContext>,
    /// The app's task, kept only with `--timeout`.
    pub(crate) task: Option<Py<PyAny>>,
    /// `--timeout` cancelled the task.
    timed_out: bool,
}

impl HttpCycle {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<CycleShared>,
        body: RequestBody,
        reply: oneshot::Sender<proto::Response>,
        head_request: bool,
        response_buffer: usize,
        send_timeout: Option<Duration>,
        create_future: Py<PyAny>,
        line: RequestLine,
        trace: Option<TraceContext>,
    ) -> Self {
        HttpCycle {
            waker: Waker::from(shared.clone()),
            shared,
            body,
            reply: Some(reply),
            head: None,
            started: false,
            trailers: None,
            body_ended: false,
            stream: None,
            blocked_send: None,
            waiting_receive: None,
            complete: false,
            disconnected: false,
            head_request,
            response_buffer,
            send_timeout,
            create_future,
            line,
            trace,
            task: None,
            timed_out: false,
        }
    }

    fn future(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.create_future.call0(py)?)
    }

    /// The I/O thread woke this cycle: room in the response buffer, or the client left.
    pub(crate) fn woken(&mut self, py: Python<'_>) {
        self.shared.queued.store(false, Ordering::Release);
        if self.shared.gone.load(Ordering::Acquire) && self.reply.is_some() {
            self.disconnected = true;
        }
        if let Some((chunk, future, last)) = self.blocked_send.take() {
            let stream = self.stream.as_ref().expect("a blocked send has a stream");
            match stream.poll_send(chunk, &self.waker) {
                Ok(None) => {
                    if last {
                        self.finish_stream();
                    }
                    resolve(py, &future, Ok(py.None()));
                }
                Ok(Some(chunk)) => self.blocked_send = Some((chunk, future, last)),
                Err(Closed) => {
                    self.disconnected = true;
                    resolve(py, &future, Err(client_disconnected()));
                }
            }
        }
        if self.stream.as_ref().is_some_and(ChunkSender::is_closed) {
            self.disconnected = true;
        }
        if self.waiting_receive.is_some() {
            if let Some(message) = self.body_message_ready(py) {
                let future = self.waiting_receive.take().unwrap();
                resolve(py, &future, message);
                return;
            }
        }
        if self.disconnected || self.complete {
            if let Some(future) = self.waiting_receive.take() {
                resolve(py, &future, disconnect_message(py));
            }
        }
    }

    /// The next `http.request` message, if the body has one ready.
    fn body_message_ready(&mut self, py: Python<'_>) -> Option<PyResult<Py<PyAny>>> {
        let (data, more) = match &mut self.body {
            RequestBody::Whole(body) => (body.take()?, false),
            RequestBody::Done => return None,
            RequestBody::Piped(reader) => match reader.0.take() {
                Taken::Empty => return None,
                Taken::Data(data, more) => (data, more),
                Taken::Failed(rejection) => {
                    self.body = RequestBody::Done;
                    if self.reply.is_some() {
                        log::emit_traced(Level::Info, self.trace, format_args!("{}: {}; answered {}", self.line, rejection.reason, rejection.status.as_u16()));
                        self.respond(py, rejection.response());
                        self.complete = true;
                    }
                    self.disconnected = true;
                    return None;
                }
            },
        };
        if !more {
            self.body = RequestBody::Done;
        }
        Some(request_message(py, &data, more))
    }

    fn finish_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.finish();
        }
        self.complete = true;
    }

    fn respond(&mut self, py: Python<'_>, mut response: proto::Response) {
        if let Some(reply) = self.reply.take() {
            if matches!(&self.body, RequestBody::Piped(reader) if !reader.0.read_to_end()) {
                gateway::close_after_unread_body(&mut response);
            }
            if reply.is_closed() {
                self.disconnected = true;
                return;
            }
            self.shared.queue.outbox.send(py, reply, response);
        }
    }

    fn start_message(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        if self.started {
            return Err(PyRuntimeError::new_err("http.response.start sent twice"));
        }
        let py = message.py();
        let status: u16 = match message.get_item(pyo3::intern!(py, "status"))? {
            Some(status) => status.extract()?,
            None => return Err(PyValueError::new_err("http.response.start needs a status")),
        };
        let status = StatusCode::from_u16(status).map_err(|_| PyValueError::new_err(format!("invalid status {status}")))?;
        let mut headers = HeaderMap::new();
        read_headers(message, &mut headers)?;
        if let Some(trailers) = message.get_item(pyo3::intern!(py, "trailers"))? {
            if trailers.is_truthy()? {
                self.trailers = Some(HeaderMap::new());
            }
        }
        self.started = true;
        self.head = Some((status, headers));
        Ok(())
    }

    fn body_message(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
        if !self.started {
            return Err(PyRuntimeError::new_err("http.response.body sent before http.response.start"));
        }
        if self.disconnected && self.reply.is_none() && self.stream.is_none() {
            return Err(client_disconnected());
        }
        if self.complete {
            return Err(PyRuntimeError::new_err("http.response.body sent after the response was complete"));
        }
        if self.blocked_send.is_some() {
            return Err(PyRuntimeError::new_err("send() called again before the previous send() completed"));
        }
        let body = match message.get_item(pyo3::intern!(py, "body"))? {
            Some(body) => {
                let body = body.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("http.response.body's body must be bytes"))?;
                gateway::share_bytes(body)
            }
            None => Bytes::new(),
        };
        let more = flag(message, pyo3::intern!(py, "more_body"))?;
        if self.disconnected {
            return Err(client_disconnected());
        }
        if self.body_ended {
            return Err(PyRuntimeError::new_err("http.response.body sent after the last one (more_body false)"));
        }
        let body = if self.head_request { Bytes::new() } else { body };
        // With trailers to come, the last body message does not end the response.
        let ends = !more && self.trailers.is_none();
        self.body_ended = !more;
        if let Some((status, mut headers)) = self.head.take() {
            if ends {
                // The whole body in one message: one complete response, no stream.
                if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                    headers.remove(CONTENT_LENGTH);
                }
                let mut response = proto::Response::new(ResponseBody::full(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                self.respond(py, response);
                self.complete = true;
                return ready(py, py.None());
            }
            let (sender, stream) = ResponseBody::channel(self.response_buffer, self.send_timeout);
            let mut response = proto::Response::new(stream);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            self.respond(py, response);
            sender.watch_receiver(&self.waker);
            self.stream = Some(sender);
            self.shared.queue.add_stream(&self.shared);
        }
        let Some(stream) = self.stream.as_ref() else {
            return Err(client_disconnected());
        };
        match stream.poll_send(body, &self.waker) {
            Ok(None) => {
                if ends {
                    self.finish_stream();
                }
                ready(py, py.None())
            }
            Ok(Some(chunk)) => {
                let future = self.future(py)?;
                self.blocked_send = Some((chunk, future.clone_ref(py), ends));
                Ok(future)
            }
            Err(Closed) => {
                self.disconnected = true;
                Err(client_disconnected())
            }
        }
    }

    /// `http.response.trailers` (the extension): gathered until `more_trailers` is false, then
    /// sent after the body.
    fn trailers_message(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
        if self.trailers.is_none() {
            return Err(PyRuntimeError::new_err("http.response.trailers without trailers: True in http.response.start"));
        }
        if !self.body_ended {
            return Err(PyRuntimeError::new_err("http.response.trailers sent before the last http.response.body"));
        }
        if self.complete {
            return Err(PyRuntimeError::new_err("http.response.trailers sent after the response was complete"));
        }
        if self.blocked_send.is_some() {
            return Err(PyRuntimeError::new_err("send() called again before the previous send() completed"));
        }
        let mut fields = HeaderMap::new();
        read_headers(message, &mut fields)?;
        let trailers = self.trailers.as_mut().unwrap();
        for (name, value) in fields {
            if let Some(name) = name {
                trailers.append(name, value);
            }
        }
        let more = flag(message, pyo3::intern!(py, "more_trailers"))?;
        if !more {
            let trailers = self.trailers.take().unwrap_or_default();
            match self.stream.take() {
                Some(stream) => stream.finish_with_trailers(trailers),
                None if self.disconnected => return Err(client_disconnected()),
                None => {}
            }
            self.complete = true;
        }
        ready(py, py.None())
    }

    /// `http.response.pathsend` (the extension): the file goes out from Rust, read on tokio's
    /// blocking pool, never through Python.
    fn pathsend_message(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
        let Some((status, headers)) = self.head.take() else {
            return Err(PyRuntimeError::new_err(if self.started {
                "http.response.pathsend after the body began"
            } else {
                "http.response.pathsend sent before http.response.start"
            }));
        };
        let path: std::path::PathBuf = match message.get_item(pyo3::intern!(py, "path"))? {
            Some(path) => path.extract()?,
            None => return Err(PyValueError::new_err("http.response.pathsend needs a path")),
        };
        let (file, length) = match std::fs::File::open(&path).and_then(|file| Ok((file.metadata()?.len(), file))) {
            Ok((length, file)) => (file, length),
            Err(err) => {
                self.head = Some((status, headers));
                return Err(PyOSError::new_err(format!("http.response.pathsend cannot open {}: {err}", path.display())));
            }
        };
        let body = if self.head_request { ResponseBody::empty() } else { ResponseBody::file(file, length) };
        let mut response = proto::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response.headers_mut().entry(CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(length));
        self.respond(py, response);
        self.body_ended = true;
        self.complete = true;
        ready(py, py.None())
    }

    /// `--timeout` passed with no response begun: 504 to the client, the task's stack to the
    /// log, and the task cancelled.
    pub(crate) fn time_out(&mut self, py: Python<'_>, limit: Duration) {
        if self.reply.is_none() {
            // The response began in time; its answer was already on its way.
            return;
        }
        self.respond(py, proto::plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n"));
        self.complete = true;
        self.timed_out = true;
        let limit = limit.as_secs_f64();
        let Some(task) = self.task.take() else { return };
        let stack = py
            .import("coldbrew.asgi")
            .and_then(|module| module.call_method1("task_stack", (task.bind(py),)))
            .and_then(|stack| stack.extract::<String>());
        match stack {
            Ok(stack) => log::emit_traced(
                Level::Error,
                self.trace,
                format_args!("{}: no response within {limit} s (--timeout); answered 504 and cancelled the task, which was at:\n{stack}", self.line),
            ),
            Err(err) => log::emit_traced(
                Level::Error,
                self.trace,
                format_args!("{}: no response within {limit} s (--timeout); answered 504 and cancelled the task; cannot read its stack: {err}", self.line),
            ),
        }
        if let Err(err) = task.call_method0(py, pyo3::intern!(py, "cancel")) {
            log::warn(format_args!("cannot cancel the task of {}: {err}", self.line));
        }
        if let Some(future) = self.waiting_receive.take() {
            resolve(py, &future, disconnect_message(py));
        }
    }

    /// The graceful stop ends a response still streaming: its body ends cleanly where it is,
    /// and the app is told the client has gone.
    pub(crate) fn end_stream(&mut self, py: Python<'_>) {
        if self.complete || self.stream.is_none() {
            return;
        }
        if let Some((_, future, _)) = self.blocked_send.take() {
            resolve(py, &future, Err(client_disconnected()));
        }
        self.finish_stream();
        self.disconnected = true;
        if let Some(future) = self.waiting_receive.take() {
            resolve(py, &future, disconnect_message(py));
        }
    }

    /// Ends a response the app left unfinished: 500 if nothing was sent, else the connection
    /// is cut, so the client sees the body is incomplete.
    fn abandon(&mut self, py: Python<'_>, why: &str) {
        if self.reply.is_some() {
            self.respond(py, proto::plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n"));
        }
        if let Some(stream) = self.stream.take() {
            stream.abort(why.to_owned());
        }
        self.blocked_send = None;
        self.complete = true;
    }
}

#[pymethods]
impl HttpCycle {
    fn receive(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.waiting_receive.is_some() {
            return Err(PyRuntimeError::new_err("receive() called again before the previous receive() completed"));
        }
        if self.shared.gone.load(Ordering::Acquire) && self.reply.is_some() {
            self.disconnected = true;
        }
        if !self.disconnected {
            if let Some(message) = self.body_message_ready(py) {
                return ready(py, message?);
            }
        }
        if self.disconnected || self.complete {
            return ready(py, disconnect_message(py)?);
        }
        let future = self.future(py)?;
        self.waiting_receive = Some(future.clone_ref(py));
        Ok(future)
    }

    fn send(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (message, kind) = message_type(message)?;
        let message = &message;
        let result = match kind.to_str()? {
            "http.response.start" => self.start_message(message).and_then(|()| ready(py, py.None())),
            "http.response.body" => self.body_message(py, message),
            "http.response.pathsend" => self.pathsend_message(py, message),
            "http.response.trailers" => self.trailers_message(py, message),
            other => Err(PyValueError::new_err(format!("unexpected ASGI message type {other:?} for an HTTP request"))),
        };
        if self.complete {
            if let Some(future) = self.waiting_receive.take() {
                resolve(py, &future, disconnect_message(py));
            }
        }
        result
    }

    /// The app's coroutine returned.
    fn returned(&mut self, py: Python<'_>) {
        self.shared.cycle.lock().unwrap().take();
        self.task = None;
        if self.complete {
            return;
        }
        if !self.started {
            log::emit_traced(Level::Error, self.trace, format_args!("{}: the ASGI app returned without sending a response; answered 500", self.line));
        } else if self.disconnected {
            self.complete = true;
            return;
        } else {
            log::emit_traced(Level::Error, self.trace, format_args!("{}: the ASGI app returned before its response was complete", self.line));
        }
        self.abandon(py, "the app returned before the response was complete");
    }

    /// The app's coroutine raised `error`, with `traceback` formatted.
    fn failed(&mut self, error: &Bound<'_, PyAny>, traceback: &str) {
        let py = error.py();
        self.shared.cycle.lock().unwrap().take();
        self.task = None;
        if self.timed_out {
            // The cancellation --timeout asked for; it has been logged.
            return;
        }
        let quiet = self.disconnected && error.is_instance_of::<PyOSError>();
        if quiet {
            log::emit_traced(Level::Debug, self.trace, format_args!("{}: the client went away: {traceback}", self.line));
        } else if self.reply.is_some() {
            log::emit_traced(Level::Error, self.trace, format_args!("error in ASGI app for {}; answered 500:\n{traceback}", self.line));
        } else if self.complete {
            log::emit_traced(Level::Error, self.trace, format_args!("error in ASGI app for {} after its response was complete:\n{traceback}", self.line));
        } else {
            log::emit_traced(Level::Error, self.trace, format_args!("error in ASGI app for {} during its response; connection aborted:\n{traceback}", self.line));
        }
        if !self.complete {
            self.abandon(py, "the app raised during the response");
        }
    }

    #[getter]
    fn disconnected(&self) -> bool {
        self.disconnected
    }
}

pub(crate) fn resolve(py: Python<'_>, future: &Py<PyAny>, outcome: PyResult<Py<PyAny>>) {
    let future = future.bind(py);
    // A cancelled task has cancelled its future; there is nothing left to tell it.
    if future.call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
        return;
    }
    let result = match outcome {
        Ok(value) => future.call_method1(pyo3::intern!(py, "set_result"), (value,)),
        Err(err) => future.call_method1(pyo3::intern!(py, "set_exception"), (err.value(py),)),
    };
    if let Err(err) = result {
        log::warn(format_args!("cannot complete an ASGI future: {err}"));
    }
}

fn request_message(py: Python<'_>, body: &[u8], more: bool) -> PyResult<Py<PyAny>> {
    let message = PyDict::new(py);
    message.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http.request"))?;
    message.set_item(pyo3::intern!(py, "body"), PyBytes::new(py, body))?;
    message.set_item(pyo3::intern!(py, "more_body"), more)?;
    Ok(message.into_any().unbind())
}

fn disconnect_message(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let message = PyDict::new(py);
    message.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http.disconnect"))?;
    Ok(message.into_any().unbind())
}

/// What `send()` raises once the client has gone: an `OSError`, as the ASGI spec asks.
fn client_disconnected() -> PyErr {
    PyOSError::new_err("the client disconnected")
}

/// An ASGI message as a dict, with its `type`.
pub(crate) fn message_type<'py>(message: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyString>)> {
    let py = message.py();
    let message = message.cast::<PyDict>().map_err(|_| PyTypeError::new_err("an ASGI message must be a dict"))?.clone();
    let kind = match message.get_item(pyo3::intern!(py, "type"))? {
        Some(kind) => kind,
        None => return Err(PyValueError::new_err("an ASGI message needs a type")),
    };
    let kind = kind.cast_into::<PyString>().map_err(|_| PyTypeError::new_err("an ASGI message type must be a str"))?;
    Ok((message, kind))
}

/// A flag of an ASGI message (`more_body`, `more_trailers`): false when absent.
pub(crate) fn flag(message: &Bound<'_, PyDict>, name: &Bound<'_, PyString>) -> PyResult<bool> {
    match message.get_item(name)? {
        Some(value) => value.is_truthy(),
        None => Ok(false),
    }
}

/// The `headers` of an ASGI message (an iterable of `[name, value]` byte pairs), added to `headers`.
pub(crate) fn read_headers(message: &Bound<'_, PyDict>, headers: &mut HeaderMap) -> PyResult<()> {
    let py = message.py();
    if let Some(list) = message.get_item(pyo3::intern!(py, "headers"))? {
        // Frameworks send a list of 2-tuples (or 2-lists): read those directly, anything else
        // iterable the slow way.
        if let Ok(list) = list.cast::<pyo3::types::PyList>() {
            for pair in list.iter() {
                let (name, value) = match pair.cast::<pyo3::types::PyTuple>() {
                    Ok(tuple) if tuple.len() == 2 => (tuple.get_borrowed_item(0)?.to_owned(), tuple.get_borrowed_item(1)?.to_owned()),
                    _ => (pair.get_item(0)?, pair.get_item(1)?),
                };
                append_header(headers, &name, &value)?;
            }
            return Ok(());
        }
        for pair in list.try_iter()? {
            let pair = pair?;
            append_header(headers, &pair.get_item(0)?, &pair.get_item(1)?)?;
        }
    }
    Ok(())
}

fn append_header(headers: &mut HeaderMap, name: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let name = name.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("header names must be bytes"))?;
    let value = value.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("header values must be bytes"))?;
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| PyValueError::new_err(format!("invalid header name {:?}", String::from_utf8_lossy(name.as_bytes()))))?;
    let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| PyValueError::new_err(format!("invalid value for header {name}")))?;
    headers.append(name, value);
    Ok(())
}
