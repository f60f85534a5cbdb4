//! Responses from the event loop to the I/O thread, a batch at a time.
//!
//! A response handed straight to its connection's oneshot wakes that connection's task from
//! another thread, which costs tokio a write to its own eventfd, and on a shared core the
//! woken I/O thread preempts the loop after every response. Instead the loop queues its
//! responses here and, once per pass of its ready queue, wakes one task on the I/O thread that
//! hands them all to their connections (wakes on the I/O thread's own runtime are free).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};

use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::http as proto;

type Reply = (oneshot::Sender<proto::Response>, proto::Response);

#[derive(Default)]
pub(crate) struct Outbox {
    replies: Mutex<Replies>,
    /// A flush is scheduled on the loop (the loop thread's own flag).
    flush_scheduled: AtomicBool,
    /// `loop.call_soon` and the [`Flush`] it is given, set once the loop runs.
    scheduler: OnceLock<(Py<PyAny>, Py<PyAny>)>,
    delivering: OnceLock<()>,
}

#[derive(Default)]
struct Replies {
    queued: Vec<Reply>,
    /// The delivering task, while it waits for a batch.
    deliverer: Option<Waker>,
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
        self.delivering.get_or_init(|| {
            tokio::spawn(self.clone().deliver());
        });
    }

    /// On the loop thread: queues a response for its connection. The first of a pass
    /// schedules the flush that sends the batch; without a scheduler (the loop is not
    /// running), it is delivered at once.
    pub fn send(&self, py: Python<'_>, reply: oneshot::Sender<proto::Response>, response: proto::Response) {
        let Some((call_soon, flush)) = self.scheduler.get() else {
            let _ = reply.send(response);
            return;
        };
        self.replies.lock().unwrap().queued.push((reply, response));
        if !self.flush_scheduled.swap(true, Ordering::Relaxed) && call_soon.call1(py, (flush.clone_ref(py),)).is_err() {
            // The loop is closing: wake the deliverer now.
            self.flush();
        }
    }

    fn flush(&self) {
        self.flush_scheduled.store(false, Ordering::Relaxed);
        let deliverer = self.replies.lock().unwrap().deliverer.take();
        if let Some(waker) = deliverer {
            waker.wake();
        }
    }

    async fn deliver(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let mut replies = self.replies.lock().unwrap();
                if replies.queued.is_empty() {
                    replies.deliverer = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                std::mem::swap(&mut replies.queued, &mut batch);
                Poll::Ready(())
            })
            .await;
            for (reply, response) in batch.drain(..) {
                // A receiver gone means the client left; the cycle learns it from hyper.
                let _ = reply.send(response);
            }
        }
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
