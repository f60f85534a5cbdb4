//! When the event loop's responses go to the I/O thread: once per pass of its ready queue.
//!
//! Responses wait in the shared [`gateway::Outbox`](crate::gateway::Outbox); the first one of
//! a pass schedules a [`Flush`] with `call_soon`, which runs after every callback already due
//! and wakes the I/O thread once for all of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::gateway::Wake;
use crate::http as proto;

#[derive(Default)]
pub(crate) struct Outbox {
    replies: Arc<crate::gateway::Outbox>,
    /// A flush is scheduled on the loop (the loop thread's own flag).
    flush_scheduled: AtomicBool,
    /// `loop.call_soon` and the [`Flush`] it is given, set once the loop runs.
    scheduler: OnceLock<(Py<PyAny>, Py<PyAny>)>,
}

impl Outbox {
    /// On the loop thread, once the loop runs: how a flush is scheduled.
    pub fn prepare(self: &Arc<Self>, py: Python<'_>, call_soon: Py<PyAny>) -> PyResult<()> {
        let flush = Py::new(py, Flush(self.clone()))?.into_any();
        let _ = self.scheduler.set((call_soon, flush));
        Ok(())
    }

    /// On the I/O thread: starts the task that delivers the batches, the first time only.
    pub fn start_delivering(self: &Arc<Self>) {
        self.replies.start_delivering(None);
    }

    /// On the loop thread: queues a response for its connection. The first of a pass
    /// schedules the flush that sends the batch; without a scheduler (the loop is not
    /// running), it is delivered at once.
    pub fn send(&self, py: Python<'_>, reply: oneshot::Sender<proto::Response>, response: proto::Response) {
        let Some((call_soon, flush)) = self.scheduler.get() else {
            let _ = reply.send(response);
            return;
        };
        self.replies.queue(reply, response, Wake::Later);
        if !self.flush_scheduled.swap(true, Ordering::Relaxed) && call_soon.call1(py, (flush.clone_ref(py),)).is_err() {
            // The loop is closing: wake the deliverer now.
            self.flush();
        }
    }

    fn flush(&self) {
        self.flush_scheduled.store(false, Ordering::Relaxed);
        self.replies.wake();
    }
}

/// The callback the loop runs once per pass to send what its tasks answered.
#[pyclass(frozen, module = "coldbrew._coldbrew")]
pub struct Flush(Arc<Outbox>);

#[pymethods]
impl Flush {
    fn __call__(&self, py: Python<'_>) {
        crate::gateway::release_shared_bytes(py);
        self.0.flush();
    }
}
