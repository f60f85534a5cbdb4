//! What both interfaces need from the interpreter outside the app call itself: the request's
//! trace as the app's log handler sees it, a traceback as Python prints it, and another
//! thread's stack (for `--timeout` and `--loop-block-warning`).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::telemetry::TraceContext;

/// The trace of the request a `logging` record was made in, as the app's log handler sees it.
#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct RequestTrace(pub TraceContext);

#[pymethods]
impl RequestTrace {
    #[getter]
    fn trace_id(&self) -> &str {
        self.0.trace_id()
    }

    #[getter]
    fn span_id(&self) -> Option<&str> {
        self.0.span_id()
    }

    #[getter]
    fn sampled(&self) -> bool {
        self.0.sampled
    }
}

/// The traceback as Python prints it. `traceback` is imported on the first error only: it
/// costs milliseconds of startup that a healthy app never needs.
pub(crate) fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|module| module.getattr("format_exception"))
        .and_then(|format| format.call1((err.get_type(py), err.value(py), err.traceback(py))))
        .and_then(|lines| PyString::new(py, "").call_method1("join", (lines,)));
    match formatted {
        Ok(text) => text.to_string().trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}

/// The calling thread's ident as `threading.get_ident()` and `sys._current_frames()` know it.
pub(crate) fn python_thread_ident() -> u64 {
    // Safety: callable from any thread, attached or not; it only asks the OS for the thread id.
    unsafe { pyo3::ffi::PyThread_get_thread_ident() as u64 }
}

/// The Python stack of another thread, outermost call first, as `traceback` prints it.
pub(crate) fn python_stack(py: Python<'_>, thread: u64) -> PyResult<String> {
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
