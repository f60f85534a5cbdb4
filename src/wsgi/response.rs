//! Calling the app for one request and handing its response to the I/O thread.
//!
//! A response is committed (its head sent to the I/O thread) at the first non-empty body chunk,
//! or when the iterable ends, so `start_response` may be called lazily and `exc_info` may
//! replace headers until then. Lists and tuples, the common case, are sent as one complete body;
//! anything else streams through a byte-bounded channel, so the Python thread is freed once the
//! last chunk is queued and only a slow client with more than `--response-buffer` outstanding
//! makes it wait.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use hyper::ext::ReasonPhrase;
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyString, PyTuple};
use tokio::sync::oneshot;

use super::pool::WorkerContext;
use super::streams::FileWrapper;
use super::{InputStream, RequestJob};
use crate::gateway::{self, RequestBody, RequestLine};
use crate::http::{self as proto, ChunkSender, Closed, OriginalCase, ResponseBody};
use crate::telemetry::{log, metrics, TraceContext};

pub(crate) fn handle(py: Python<'_>, ctx: &Arc<WorkerContext>, job: RequestJob) {
    gateway::release_shared_bytes(py);
    let RequestJob { parts, body, conn, reply, claim } = job;
    if reply.is_closed() {
        // The client left, or the deadline passed, while the request waited for a thread.
        return;
    }
    // Held until the app has returned; dropped with the GIL held, as `Claim::start` requires.
    let _running = match &claim {
        Some(claim) => match claim.start(gateway::python_thread_ident()) {
            Some(running) => Some(running),
            // The deadline passed just now; the client already has its 504.
            None => return,
        },
        None => None,
    };
    let mut streamed = None;
    let input = match body {
        RequestBody::Empty => ctx.empty_input.bind(py).clone().into_any(),
        body => match Bound::new(py, InputStream::new(body, &ctx.runtime, ctx.body_timeout)) {
            Ok(input) => {
                streamed = Some(input.clone());
                input.into_any()
            }
            Err(err) => return internal_error(py, &parts, err, reply),
        },
    };
    let environ = match ctx.environ.build(py, &parts, &conn, input) {
        Ok(environ) => environ,
        Err(err) => return internal_error(py, &parts, err, reply),
    };
    let exchange = match Bound::new(py, StartResponse::new(ctx.clone(), reply, ctx.response_buffer, ctx.send_timeout, parts.method, parts.uri, streamed.as_ref().map(|input| input.clone().unbind()))) {
        Ok(exchange) => exchange,
        Err(err) => {
            log::error(format_args!("cannot prepare start_response: {err}"));
            return;
        }
    };
    let trace = parts.extensions.get::<TraceContext>().copied();
    log::set_current_trace(trace);
    if let Err(err) = ctx.set_trace_var(py, trace) {
        log::warn(format_args!("cannot set the trace context variable: {err}"));
    }
    metrics::python_busy(1);
    let outcome = ctx
        .app
        .bind(py)
        .call1((environ, &exchange))
        .and_then(|iterable| respond(py, exchange.get(), &iterable));
    if let Err(err) = outcome {
        if streamed.as_ref().is_some_and(|s| s.get().timed_out()) {
            exchange.get().fail_slow_body(py, ctx, err);
        } else {
            let too_large = streamed.as_ref().and_then(|input| input.get().too_large());
            exchange.get().fail(py, err, too_large);
        }
    }
    if let Some(input) = streamed {
        input.get().release();
    }
    metrics::python_busy(-1);
    log::set_current_trace(None);
}

fn internal_error(py: Python<'_>, parts: &http::request::Parts, err: PyErr, reply: oneshot::Sender<proto::Response>) {
    log::error(format_args!("error preparing {} {}:\n{}", parts.method, parts.uri.path(), gateway::format_traceback(py, &err)));
    let _ = reply.send(server_error());
}

fn server_error() -> proto::Response {
    proto::plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

/// Sends what the app returned, then calls its `close()` exactly once, whatever happened.
fn respond(py: Python<'_>, exchange: &StartResponse, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(list) = iterable.cast_exact::<PyList>() {
        return exchange.send_all(py, list.iter());
    }
    if let Ok(tuple) = iterable.cast_exact::<PyTuple>() {
        return exchange.send_all(py, tuple.iter());
    }
    if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
        // After write() the head is out; the file then goes through the plain iteration.
        if !exchange.committed() {
            if let Some(file) = open_regular_file(py, wrapper.get())? {
                let closed = close_iterable(iterable);
                exchange.send_file(file)?;
                return closed;
            }
        }
    }
    let streamed = stream_items(py, exchange, iterable);
    let closed = close_iterable(iterable);
    streamed?;
    closed?;
    exchange.finish()
}

fn stream_items(py: Python<'_>, exchange: &StartResponse, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    for item in iterable.try_iter()? {
        let chunk = chunk_bytes(&item?)?;
        if chunk.is_empty() {
            continue;
        }
        match exchange.send_chunk(py, chunk) {
            Ok(()) => {}
            // The client disconnected or the body is complete: stop iterating; close() still runs.
            Err(SendError::Closed) => return Ok(()),
            Err(SendError::App(err)) => return Err(err),
            Err(SendError::Busy) => return Err(concurrent_write()),
        }
    }
    Ok(())
}

fn close_iterable(iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    match iterable.getattr(pyo3::intern!(iterable.py(), "close")) {
        Ok(close) => close.call0().map(drop),
        Err(_) => Ok(()),
    }
}

fn chunk_bytes(item: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(bytes) = item.cast::<PyBytes>() {
        return Ok(gateway::share_bytes(bytes));
    }
    if let Ok(array) = item.cast::<PyByteArray>() {
        return Ok(Bytes::from(array.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "the response iterable must yield bytes, not {}",
        item.get_type().name()?
    )))
}

/// A real file behind a `wsgi.file_wrapper`: the server's own descriptor for it, and how much of
/// it is left from the current position.
struct OpenFile {
    file: std::fs::File,
    remaining: u64,
}

fn open_regular_file(py: Python<'_>, wrapper: &FileWrapper) -> PyResult<Option<OpenFile>> {
    use std::io::Seek;
    use std::os::fd::{BorrowedFd, RawFd};
    let filelike = wrapper.filelike.bind(py);
    let Ok(fileno) = filelike.call_method0(pyo3::intern!(py, "fileno")) else { return Ok(None) };
    let Ok(fd) = fileno.extract::<RawFd>() else { return Ok(None) };
    if fd < 0 {
        return Ok(None);
    }
    // Python may have read ahead into its own buffer; ask it where the app's position is.
    let position: u64 = match filelike.call_method0(pyo3::intern!(py, "tell")) {
        Ok(pos) => pos.extract().unwrap_or(0),
        Err(_) => return Ok(None),
    };
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(owned) = borrowed.try_clone_to_owned() else { return Ok(None) };
    let mut file = std::fs::File::from(owned);
    let Ok(meta) = file.metadata() else { return Ok(None) };
    if !meta.is_file() {
        return Ok(None);
    }
    if file.seek(std::io::SeekFrom::Start(position)).is_err() {
        return Ok(None);
    }
    Ok(Some(OpenFile { remaining: meta.len().saturating_sub(position), file }))
}

/// The state of one response, shared by `start_response`, `write()` and the iteration.
#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct StartResponse {
    state: Mutex<Exchange>,
    /// Names the request in log lines.
    request: RequestLine,
    /// The way to the I/O thread.
    context: Arc<WorkerContext>,
}

struct Exchange {
    /// Set by start_response and not yet sent.
    head: Option<Head>,
    /// Present until the head goes to the I/O thread.
    reply: Option<oneshot::Sender<proto::Response>>,
    stream: Option<ChunkSender>,
    buffer: usize,
    /// `--send-timeout`.
    send_timeout: Option<Duration>,
    head_request: bool,
    client_gone: bool,
    /// The app's Content-Length once the head is sent, and the body bytes queued since.
    declared: Option<u64>,
    streamed: u64,
    /// The request body, when it was not read ahead in full: its state decides whether the
    /// connection can carry another request after this response.
    input: Option<Py<InputStream>>,
}

struct Head {
    status: StatusCode,
    reason: Option<ReasonPhrase>,
    headers: HeaderMap,
    content_length: Option<u64>,
    /// The names the app wrote in other than Title-Case, to send as written.
    case: Option<OriginalCase>,
}

impl Head {
    fn into_response(self, body: ResponseBody) -> proto::Response {
        let mut response = proto::Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        if let Some(reason) = self.reason {
            response.extensions_mut().insert(reason);
        }
        if let Some(case) = self.case {
            response.extensions_mut().insert(case);
        }
        response
    }
}

impl StartResponse {
    fn new(
        context: Arc<WorkerContext>,
        reply: oneshot::Sender<proto::Response>,
        buffer: usize,
        send_timeout: Option<Duration>,
        method: Method,
        uri: http::Uri,
        input: Option<Py<InputStream>>,
    ) -> Self {
        let head_request = method == Method::HEAD;
        StartResponse {
            context,
            request: RequestLine { method, uri },
            state: Mutex::new(Exchange {
                head: None,
                reply: Some(reply),
                stream: None,
                buffer,
                send_timeout,
                head_request,
                client_gone: false,
                declared: None,
                streamed: 0,
                input,
            }),
        }
    }

    fn committed(&self) -> bool {
        self.state.lock().unwrap().reply.is_none()
    }

    /// Sends the pending head with `body`. Fails if start_response was never called.
    fn commit(&self, state: &mut Exchange, body: ResponseBody) -> PyResult<()> {
        let head = state
            .head
            .take()
            .ok_or_else(|| PyAssertionError::new_err("the app did not call start_response()"))?;
        state.declared = head.content_length;
        if let Some(reply) = state.reply.take() {
            let mut response = head.into_response(body);
            if state.input.as_ref().is_some_and(|input| input.get().unfinished()) {
                gateway::close_after_unread_body(&mut response);
            }
            if reply.is_closed() {
                state.client_gone = true;
            } else {
                self.context.reply(reply, response);
            }
        }
        Ok(())
    }

    /// Queues one non-empty chunk, committing a streamed response first if needed. Bytes
    /// beyond the app's own Content-Length are never sent: the body is cut there, logged, and
    /// the iteration stops.
    fn send_chunk(&self, py: Python<'_>, mut chunk: Bytes) -> Result<(), SendError> {
        let mut overlong = false;
        let sender = {
            let mut state = self.state.lock().unwrap();
            if state.reply.is_some() {
                let (sender, body) = ResponseBody::channel(state.buffer, state.send_timeout);
                self.commit(&mut state, body).map_err(SendError::App)?;
                state.stream = Some(sender);
            }
            if state.client_gone {
                return Err(SendError::Closed);
            }
            if let Some(declared) = state.declared {
                let room = declared.saturating_sub(state.streamed);
                if chunk.len() as u64 > room {
                    log::warn(format_args!(
                        "{}: the app sent more than its Content-Length of {declared} bytes; the rest is dropped",
                        self.request
                    ));
                    chunk.truncate(room as usize);
                    overlong = true;
                }
            }
            state.streamed += chunk.len() as u64;
            state.stream.take().ok_or(SendError::Busy)?
        };
        let sent = match sender.try_send(chunk) {
            Ok(None) => Ok(()),
            Ok(Some(chunk)) => {
                self.context.flush_replies();
                py.detach(|| sender.send_blocking(chunk))
            }
            Err(Closed) => Err(Closed),
        };
        let mut state = self.state.lock().unwrap();
        state.stream = Some(sender);
        if sent.is_err() {
            state.client_gone = true;
            return Err(SendError::Closed);
        }
        if overlong {
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// A list or tuple: everything is here already, so it goes out as one complete body.
    fn send_all<'py>(&self, py: Python<'py>, items: impl ExactSizeIterator<Item = Bound<'py, PyAny>>) -> PyResult<()> {
        if self.committed() {
            for item in items {
                let chunk = chunk_bytes(&item)?;
                if chunk.is_empty() {
                    continue;
                }
                match self.send_chunk(py, chunk) {
                    Ok(()) => {}
                    Err(SendError::Closed) => return Ok(()),
                    Err(SendError::App(err)) => return Err(err),
                    Err(SendError::Busy) => return Err(concurrent_write()),
                }
            }
            return self.finish();
        }
        let mut chunks: Vec<Bytes> = Vec::with_capacity(items.len());
        let mut total = 0;
        for item in items {
            let chunk = chunk_bytes(&item)?;
            total += chunk.len();
            chunks.push(chunk);
        }
        let body = gateway::concat(chunks, total);
        let mut state = self.state.lock().unwrap();
        if let Some(declared) = state.head.as_ref().and_then(|h| h.content_length) {
            if declared != body.len() as u64 && !state.head_request {
                return Err(PyValueError::new_err(format!(
                    "Content-Length is {declared} but the app returned {} bytes",
                    body.len()
                )));
            }
        }
        self.commit(&mut state, ResponseBody::full(body))
    }

    fn send_file(&self, file: OpenFile) -> PyResult<()> {
        let mut state = self.state.lock().unwrap();
        if state.reply.is_none() {
            return Err(PyAssertionError::new_err("wsgi.file_wrapper returned after write() was used"));
        }
        let length = match state.head.as_ref().and_then(|h| h.content_length) {
            Some(declared) => declared.min(file.remaining),
            None => file.remaining,
        };
        self.commit(&mut state, ResponseBody::file(file.file, length))
    }

    /// The iterable is exhausted: end the body, or send a bodiless response.
    fn finish(&self) -> PyResult<()> {
        let mut state = self.state.lock().unwrap();
        if state.reply.is_some() {
            return self.commit(&mut state, ResponseBody::empty());
        }
        if let Some(stream) = state.stream.take() {
            match state.declared {
                // The client left before the body was sent; dropping the stream ends it.
                _ if state.client_gone => {}
                Some(declared) if declared > state.streamed && !state.head_request => {
                    log::warn(format_args!(
                        "{}: the app sent {} bytes but its Content-Length is {declared}; closing the connection",
                        self.request, state.streamed
                    ));
                    stream.abort("body shorter than Content-Length");
                }
                _ => stream.finish(),
            }
        }
        Ok(())
    }

    /// The app raised: a 500 if nothing was sent yet, otherwise the connection is aborted.
    /// If reading the body went over `--limit-request-body` (`too_large`), which is why an app
    /// usually raises then, the answer is 413 instead of 500.
    fn fail(&self, py: Python<'_>, err: PyErr, too_large: Option<u64>) {
        let mut state = self.state.lock().unwrap();
        let parts = &self.request;
        if state.client_gone {
            log::debug(format_args!("client went away during {parts}"));
            return;
        }
        if let Some(limit) = too_large {
            if let Some(reply) = state.reply.take_if(|reply| !reply.is_closed()) {
                log::info(format_args!(
                    "{parts}: the request body went over --limit-request-body ({limit} bytes) while the app read it; answered 413"
                ));
                self.context.reply(reply, proto::too_large(limit).response());
                return;
            }
        }
        let traceback = gateway::format_traceback(py, &err);
        if let Some(reply) = state.reply.take() {
            log::error(format_args!("error handling {parts}:\n{traceback}"));
            self.context.reply(reply, server_error());
        } else {
            log::error(format_args!(
                "error after the response head was sent for {parts}; aborting the connection:\n{traceback}"
            ));
            if let Some(stream) = state.stream.take() {
                stream.abort("the application raised");
            }
        }
    }

    /// The app failed after the client stopped sending the body (`--body-timeout`): the
    /// client, not the app, is at fault, so it gets 408 if nothing was sent yet.
    fn fail_slow_body(&self, py: Python<'_>, ctx: &WorkerContext, err: PyErr) {
        let limit = ctx.body_timeout.unwrap_or_default();
        let reply = self.state.lock().unwrap().reply.take();
        match reply {
            Some(reply) => {
                log::info(format_args!(
                    "{}: no request body bytes arrived for {} s (--body-timeout) and the app raised {}; answered 408",
                    self.request,
                    limit.as_secs_f64(),
                    err.get_type(py).name().map(|n| n.to_string()).unwrap_or_default()
                ));
                self.context.reply(reply, gateway::body_timed_out(limit));
            }
            None => self.fail(py, err, None),
        }
    }

    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let chunk = chunk_bytes(data)?;
        {
            let state = self.state.lock().unwrap();
            if state.head.is_none() && state.reply.is_some() {
                return Err(PyAssertionError::new_err("write() called before start_response()"));
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        match self.send_chunk(py, chunk) {
            Ok(()) => Ok(()),
            Err(SendError::App(err)) => Err(err),
            Err(SendError::Closed) => Err(PyOSError::new_err("client disconnected")),
            Err(SendError::Busy) => Err(concurrent_write()),
        }
    }
}

fn concurrent_write() -> PyErr {
    PyAssertionError::new_err("the response was written from two threads at once")
}

enum SendError {
    App(PyErr),
    Closed,
    Busy,
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        slf: &Bound<'_, Self>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Writer> {
        let py = slf.py();
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none() && !is_none_triple(e));
        {
            let state = this.state.lock().unwrap();
            match exc_info {
                Some(info) if state.reply.is_none() => {
                    // Too late to change the status: re-raise so the app's error propagates.
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                Some(_) => {}
                None if state.head.is_some() || state.reply.is_none() => {
                    return Err(PyAssertionError::new_err("start_response() called twice without exc_info"));
                }
                None => {}
            }
        }
        let head = parse_head(status, headers)?;
        if let Some(name) = missing_required_field(head.status, &head.headers) {
            // RFC 9110 requires the field with these statuses, and only the app knows its value.
            log::warn(format_args!("{}: the app answered {} without a {name} header", this.request, head.status.as_u16()));
        }
        this.state.lock().unwrap().head = Some(head);
        let _ = py;
        Ok(Writer { exchange: slf.clone().unbind() })
    }
}

fn is_none_triple(value: &Bound<'_, PyAny>) -> bool {
    value
        .cast::<PyTuple>()
        .map(|t| t.iter().all(|item| item.is_none()))
        .unwrap_or(false)
}

/// The `write()` callable that start_response returns.
#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct Writer {
    exchange: Py<StartResponse>,
}

#[pymethods]
impl Writer {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.exchange.get().write(py, data)
    }
}

/// Headers the server owns: hop-by-hop fields describe one connection, which the app can't
/// know. `Connection: close` is honoured by keeping it.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// The field RFC 9110 requires in a response with this status (sections 15.5.2, 15.5.6,
/// 15.5.8, 15.5.22), when the app left it out.
fn missing_required_field(status: StatusCode, headers: &HeaderMap) -> Option<HeaderName> {
    let required = match status {
        StatusCode::UNAUTHORIZED => header::WWW_AUTHENTICATE,
        StatusCode::METHOD_NOT_ALLOWED => header::ALLOW,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => header::PROXY_AUTHENTICATE,
        StatusCode::UPGRADE_REQUIRED => header::UPGRADE,
        _ => return None,
    };
    (!headers.contains_key(&required)).then_some(required)
}

fn parse_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let (status, reason) = parse_status(status)?;
    let list = headers
        .cast::<PyList>()
        .map_err(|_| PyTypeError::new_err(format!("headers must be a list, not {}", type_name(headers))))?;
    let mut map = HeaderMap::with_capacity(list.len() + 2);
    let mut content_length = None;
    let mut case = None;
    for item in list.iter() {
        let pair = item.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err(format!("each header must be a (name, value) tuple, not {}", type_name(&item)))
        })?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err("each header must be a (name, value) tuple of two str"));
        }
        let (name, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let name_bytes = latin1_bytes(&name, "header name")?;
        let name = HeaderName::from_bytes(&name_bytes)
            .map_err(|_| PyValueError::new_err(format!("invalid header name {:?}", String::from_utf8_lossy(&name_bytes))))?;
        let value_bytes = latin1_bytes(&value, "header value")?;
        let value = HeaderValue::from_bytes(&value_bytes).map_err(|_| {
            PyValueError::new_err(format!("invalid value for header {name}: {:?}", String::from_utf8_lossy(&value_bytes)))
        })?;
        // A 426 must name the protocols to upgrade to (RFC 9110 section 15.5.22); no upgrade
        // follows it, so its Upgrade is only information.
        let upgrade_required = name == header::UPGRADE && status == StatusCode::UPGRADE_REQUIRED;
        if (is_hop_by_hop(&name) && !upgrade_required)
            || (name == header::CONNECTION && !value.as_bytes().eq_ignore_ascii_case(b"close"))
        {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let parsed = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| PyValueError::new_err(format!("invalid Content-Length {value:?}")))?;
            if content_length.is_some_and(|n| n != parsed) {
                return Err(PyValueError::new_err("conflicting Content-Length headers"));
            }
            if content_length.is_some() {
                continue;
            }
            content_length = Some(parsed);
        }
        OriginalCase::note(&mut case, &name_bytes, || map.get_all(&name).iter().count());
        map.append(name, value);
    }
    if status == StatusCode::UPGRADE_REQUIRED && map.contains_key(header::UPGRADE) {
        // A sender of Upgrade must also list it in Connection (RFC 9110 section 7.8).
        map.append(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if status == StatusCode::NO_CONTENT && content_length.take().is_some() {
        // A 204 must not carry one (RFC 9110 section 8.6), and hyper sends no body for it.
        map.remove(header::CONTENT_LENGTH);
    }
    Ok(Head { status, reason, headers: map, content_length, case })
}

fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<(StatusCode, Option<ReasonPhrase>)> {
    let text = latin1_bytes(status, "status")?;
    let invalid = || PyValueError::new_err(format!("invalid status {:?}: expected e.g. '200 OK'", String::from_utf8_lossy(&text)));
    if text.len() < 3 || !text[..3].iter().all(u8::is_ascii_digit) || (text.len() > 3 && text[3] != b' ') {
        return Err(invalid());
    }
    let code = StatusCode::from_bytes(&text[..3]).map_err(|_| invalid())?;
    if code.as_u16() < 200 || code.as_u16() > 599 {
        return Err(PyValueError::new_err(format!("status {} cannot be sent by a WSGI app", code.as_u16())));
    }
    let reason = text.get(4..).unwrap_or_default();
    if reason.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(invalid());
    }
    if reason.is_empty() || code.canonical_reason().is_some_and(|r| r.as_bytes() == reason) {
        return Ok((code, None));
    }
    let reason = ReasonPhrase::try_from(reason.to_vec()).map_err(|_| invalid())?;
    Ok((code, Some(reason)))
}

/// The bytes of a `str` whose characters are all latin-1, as PEP 3333 requires of headers.
fn latin1_bytes<'a>(value: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Cow<'a, [u8]>> {
    let text = value
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(value))))?;
    let utf8 = text.to_str()?;
    if utf8.is_ascii() {
        // Safety: `to_str` on a compact ASCII string borrows the object's own buffer, which
        // lives as long as `value`.
        let bytes: &'a [u8] = unsafe { std::slice::from_raw_parts(utf8.as_ptr(), utf8.len()) };
        return Ok(Cow::Borrowed(bytes));
    }
    utf8.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| PyValueError::new_err(format!("{what} {utf8:?} is not latin-1"))))
        .collect::<PyResult<Vec<u8>>>()
        .map(Cow::Owned)
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
