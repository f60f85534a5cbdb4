//! Responses from Python to the I/O thread, a batch per wake.
//!
//! A response handed straight to its connection's oneshot from a Python thread wakes that
//! connection's task from outside the I/O thread's runtime, which costs tokio a write to its
//! eventfd; on a shared core the woken I/O thread then preempts Python after every response,
//! and goes back to sleep with one response written. Instead responses are queued here, and one
//! wake of one task on the I/O thread hands the whole batch to the connections (wakes on the
//! I/O thread's own runtime cost no system call). When to wake is the interface's choice: the
//! event loop once per pass of its ready queue, the thread pool when a thread has no request
//! left to go on with.

use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::http as proto;

type Reply = (oneshot::Sender<proto::Response>, proto::Response);

#[derive(Default)]
pub(crate) struct Outbox {
    replies: Mutex<Replies>,
    delivering: OnceLock<()>,
}

#[derive(Default)]
struct Replies {
    queued: Vec<Reply>,
    /// The delivering task, while it waits for a batch.
    deliverer: Option<Waker>,
    /// It waits with its backstop timer running: a response queued without a wake is picked
    /// up within the backstop's period.
    on_timer: bool,
    /// Python was given work since the delivering task last looked.
    armed: bool,
}

/// Whether queuing a response wakes the delivering task.
#[derive(Clone, Copy)]
pub(crate) enum Wake {
    /// The caller wakes it later (the event loop's flush).
    Later,
    /// Left to the backstop while fewer than this many wait and its timer runs.
    Deferred(usize),
}

impl Outbox {
    /// On the I/O thread: starts the task that delivers the batches, the first time only.
    /// With a `backstop` period, the task also looks on its own that often while Python has
    /// work or responses keep coming, so responses queued with [`Wake::Deferred`] need no wake.
    pub fn start_delivering(self: &Arc<Self>, backstop: Option<Duration>) {
        self.delivering.get_or_init(|| {
            tokio::spawn(self.clone().deliver(backstop));
        });
    }

    /// Queues a response for its connection, waking the delivering task as `wake` says.
    pub fn queue(&self, reply: oneshot::Sender<proto::Response>, response: proto::Response, wake: Wake) {
        let deliverer = {
            let mut replies = self.replies.lock().unwrap();
            replies.queued.push((reply, response));
            match wake {
                Wake::Later => return,
                Wake::Deferred(up_to) if replies.on_timer && replies.queued.len() < up_to => return,
                Wake::Deferred(_) => replies.deliverer.take(),
            }
        };
        if let Some(waker) = deliverer {
            waker.wake();
        }
    }

    /// On the I/O thread, when Python is given work: the backstop timer runs from now on. A
    /// delivering task waiting without it is woken to start it (on its own thread, which costs
    /// no system call).
    pub fn arm(&self) {
        let deliverer = {
            let mut replies = self.replies.lock().unwrap();
            replies.armed = true;
            if replies.on_timer {
                return;
            }
            replies.deliverer.take()
        };
        if let Some(waker) = deliverer {
            waker.wake();
        }
    }

    /// Wakes the delivering task if it waits; a no-op when nothing is queued.
    pub fn wake(&self) {
        let deliverer = {
            let mut replies = self.replies.lock().unwrap();
            if replies.queued.is_empty() {
                return;
            }
            replies.deliverer.take()
        };
        if let Some(waker) = deliverer {
            waker.wake();
        }
    }

    async fn deliver(self: Arc<Self>, backstop: Option<Duration>) {
        let mut batch = Vec::new();
        // Responses came in the last round: more are likely, so the timer stays on.
        let mut flowing = false;
        loop {
            let timer = backstop.filter(|_| flowing || std::mem::take(&mut self.replies.lock().unwrap().armed));
            let wait = std::future::poll_fn(|cx| {
                let mut replies = self.replies.lock().unwrap();
                if !replies.queued.is_empty() {
                    replies.on_timer = false;
                    std::mem::swap(&mut replies.queued, &mut batch);
                    return Poll::Ready(());
                }
                if timer.is_none() && backstop.is_some() && replies.armed {
                    // Armed while waiting without the timer: go round to start it.
                    return Poll::Ready(());
                }
                replies.deliverer = Some(cx.waker().clone());
                replies.on_timer = timer.is_some();
                Poll::Pending
            });
            match timer {
                Some(period) => {
                    if tokio::time::timeout(period, wait).await.is_err() {
                        let mut replies = self.replies.lock().unwrap();
                        replies.deliverer = None;
                        replies.on_timer = false;
                        std::mem::swap(&mut replies.queued, &mut batch);
                    }
                }
                None => wait.await,
            }
            flowing = !batch.is_empty();
            for (reply, response) in batch.drain(..) {
                // A receiver gone means the client left; hyper has dropped the connection.
                let _ = reply.send(response);
            }
        }
    }
}
