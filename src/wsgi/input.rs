//! `wsgi.input`: the request body as a Python file-like object.
//!
//! It streams from the connection: data that was read ahead is served first, and the rest is
//! pulled frame by frame with the GIL released while the network is waited on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::runtime::Handle;

use crate::gateway::{next_data, BodyError, RequestBody};
use crate::telemetry::metrics;

#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct InputStream {
    state: Mutex<State>,
    /// `--body-timeout`: the longest wait for the next piece of the body.
    timeout: Option<Duration>,
    /// The client stopped sending the body: the request gets 408 if the app has not answered.
    timed_out: AtomicBool,
}

struct State {
    /// Received but not yet handed to the app.
    buf: Bytes,
    source: Source,
    /// Set once the body went over `--limit-request-body` (the limit).
    too_large: Option<u64>,
    /// The rest of the body was dropped unread after an error.
    abandoned: bool,
}

enum Source {
    Exhausted,
    /// The rest of the body, and how many more bytes of it `--limit-request-body` allows.
    Network { body: Incoming, runtime: Handle, allowed: u64, limit: u64 },
    /// Another thread is waiting on the network for this body.
    InUse,
}

impl InputStream {
    pub(crate) fn new(body: RequestBody, runtime: &Handle, timeout: Option<Duration>) -> InputStream {
        let (buf, source) = match body {
            RequestBody::Empty => (Bytes::new(), Source::Exhausted),
            RequestBody::Complete(data) => (data, Source::Exhausted),
            RequestBody::Streaming { head, rest, allowed, limit } => {
                (head, Source::Network { body: rest, runtime: runtime.clone(), allowed, limit })
            }
        };
        InputStream { state: Mutex::new(State { buf, source, too_large: None, abandoned: false }), timeout, timed_out: AtomicBool::new(false) }
    }

    pub(crate) fn empty() -> InputStream {
        InputStream {
            state: Mutex::new(State { buf: Bytes::new(), source: Source::Exhausted, too_large: None, abandoned: false }),
            timeout: None,
            timed_out: AtomicBool::new(false),
        }
    }

    /// Whether a read gave up because the client stopped sending the body.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// The response is complete: gives the unread rest of the body back to the connection, so
    /// that when the connection closes depends on the end of the response, never on when
    /// Python frees this object (a reference cycle through the environ can keep it for seconds,
    /// or for good). Later reads see the end of the body. A read in progress on another thread
    /// (which WSGI does not allow after the response) keeps its part and drops it when done.
    pub(crate) fn release(&self) {
        let mut state = self.state.lock().unwrap();
        if matches!(state.source, Source::Network { .. }) {
            state.source = Source::Exhausted;
        }
        state.buf = Bytes::new();
    }

    /// `Some(limit)` once reading went over `--limit-request-body`.
    pub(crate) fn too_large(&self) -> Option<u64> {
        self.state.lock().unwrap().too_large
    }

    /// Whether part of the body is still on the connection, or was dropped from it unread.
    pub(crate) fn unfinished(&self) -> bool {
        let state = self.state.lock().unwrap();
        match &state.source {
            Source::Network { body, .. } => !http_body::Body::is_end_stream(body),
            Source::InUse => true,
            Source::Exhausted => state.abandoned,
        }
    }

    /// Pulls the next chunk from the network into the buffer. False at the end of the body.
    fn fill(&self, py: Python<'_>) -> PyResult<bool> {
        let (mut body, runtime, mut allowed, limit) = {
            let mut state = self.state.lock().unwrap();
            match std::mem::replace(&mut state.source, Source::InUse) {
                Source::Network { body, runtime, allowed, limit } => (body, runtime, allowed, limit),
                Source::Exhausted => {
                    state.source = Source::Exhausted;
                    return Ok(false);
                }
                Source::InUse => {
                    return Err(PyRuntimeError::new_err("wsgi.input is being read by another thread"));
                }
            }
        };
        let timeout = self.timeout;
        let next = py.detach(|| runtime.block_on(next_data(&mut body, &mut allowed, limit, timeout)));
        let mut state = self.state.lock().unwrap();
        match next {
            Ok(Some(data)) => {
                metrics::body_bytes_in(data.len() as u64);
                state.buf = if state.buf.is_empty() {
                    data
                } else {
                    let mut joined = BytesMut::with_capacity(state.buf.len() + data.len());
                    joined.extend_from_slice(&state.buf);
                    joined.extend_from_slice(&data);
                    joined.freeze()
                };
                state.source = Source::Network { body, runtime, allowed, limit };
                Ok(true)
            }
            Ok(None) => {
                state.source = Source::Exhausted;
                Ok(false)
            }
            Err(err @ BodyError::TooSlow(_)) => {
                state.source = Source::Exhausted;
                state.abandoned = true;
                self.timed_out.store(true, Ordering::Relaxed);
                Err(PyTimeoutError::new_err(err.to_string()))
            }
            Err(err) => {
                // The rest of the body is dropped unread, so the connection closes after the
                // response.
                state.source = Source::Exhausted;
                state.abandoned = true;
                if let BodyError::TooLarge(limit) = err {
                    state.too_large = Some(limit);
                }
                Err(PyOSError::new_err(format!("error reading the request body: {err}")))
            }
        }
    }

    /// Takes up to `limit` bytes (all when None), reading from the network as needed.
    fn take(&self, py: Python<'_>, limit: Option<usize>) -> PyResult<Bytes> {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                let enough = limit.is_some_and(|n| state.buf.len() >= n);
                if enough || matches!(state.source, Source::Exhausted) {
                    let n = limit.unwrap_or(usize::MAX).min(state.buf.len());
                    return Ok(state.buf.split_to(n));
                }
            }
            self.fill(py)?;
        }
    }

    /// Takes one line, newline included, of at most `limit` bytes.
    fn take_line(&self, py: Python<'_>, limit: Option<usize>) -> PyResult<Bytes> {
        let mut scanned = 0;
        loop {
            {
                let mut state = self.state.lock().unwrap();
                let window = limit.unwrap_or(usize::MAX).min(state.buf.len());
                if let Some(pos) = state.buf[scanned.min(window)..window].iter().position(|&b| b == b'\n') {
                    let end = scanned.min(window) + pos + 1;
                    return Ok(state.buf.split_to(end));
                }
                let full = limit.is_some_and(|n| state.buf.len() >= n);
                if full || matches!(state.source, Source::Exhausted) {
                    return Ok(state.buf.split_to(window));
                }
                scanned = window;
            }
            self.fill(py)?;
        }
    }
}

/// `None` and negative sizes mean "no limit", as for Python's own file objects.
fn size_limit(size: Option<isize>) -> Option<usize> {
    size.and_then(|n| usize::try_from(n).ok())
}

#[pymethods]
impl InputStream {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.take(py, size_limit(size))?;
        Ok(PyBytes::new(py, &data))
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.take_line(py, size_limit(size))?;
        Ok(PyBytes::new(py, &line))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_limit(hint).filter(|&n| n > 0);
        let lines = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.take_line(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            lines.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|n| total >= n) {
                break;
            }
        }
        Ok(lines)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.take_line(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }

    fn readable(&self) -> bool {
        true
    }

    fn close(&self) {}
}
