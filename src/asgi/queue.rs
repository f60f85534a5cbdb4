//! What the I/O thread tells the event loop, a batch at a time.
//!
//! The loop sleeps in its selector and watches an eventfd. A push writes the eventfd only when
//! the `armed` flag says the loop is not already coming: the loop re-arms it before it takes
//! the batch, so a push that races the drain still wakes it, and while the loop is busy the
//! pushes of a burst cost one write between them. On the I/O thread the write is left to the
//! end of the current round of connection tasks, so that one wake carries every request that
//! arrived in it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::cycle::CycleShared;
use super::outbox::Outbox;
use super::Job;

pub(crate) enum Event {
    /// A request to run.
    Request(Job),
    /// Something changed for a running request (room in its response buffer, its client left).
    Wake(Arc<CycleShared>),
    /// The request has had no response within `--timeout`: answer 504 and cancel its task.
    TimedOut(Arc<CycleShared>, std::time::Duration),
    /// The graceful stop is halfway through: end the streaming responses still open.
    EndStreams,
    /// No more requests will come: run the lifespan shutdown and stop.
    Stop,
}

pub(crate) struct LoopQueue {
    events: Mutex<Vec<Event>>,
    armed: AtomicBool,
    eventfd: OwnedFd,
    /// Requests queued or running, for `--max-pending`.
    pending: AtomicUsize,
    /// Responses that stream, for the graceful stop to end (only the loop thread uses it).
    streams: Mutex<Vec<Weak<CycleShared>>>,
    /// The other way: responses from the loop to their connections.
    pub outbox: Arc<Outbox>,
}

impl LoopQueue {
    pub fn new() -> std::io::Result<Arc<Self>> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is ours and open.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(LoopQueue {
            events: Mutex::new(Vec::with_capacity(64)),
            armed: AtomicBool::new(true),
            eventfd,
            pending: AtomicUsize::new(0),
            streams: Mutex::new(Vec::new()),
            outbox: Arc::default(),
        }))
    }

    pub fn fileno(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    pub fn push(self: &Arc<Self>, event: Event) {
        let urgent = match event {
            Event::Request(_) => {
                self.pending.fetch_add(1, Ordering::Relaxed);
                false
            }
            Event::Wake(_) => false,
            Event::TimedOut(..) | Event::EndStreams | Event::Stop => true,
        };
        self.events.lock().unwrap().push(event);
        if urgent {
            // Never left to a task that a stopping runtime might not run.
            self.armed.store(false, Ordering::Release);
            self.ring();
            return;
        }
        if self.armed.swap(false, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                // On the I/O thread the wake waits for the end of this scheduling round: a task
                // spawned now runs after every connection task that is already due, so the
                // requests that arrived together wake the loop once. Rung at once, each would
                // wake the loop on its own, and on a shared core the loop preempts the I/O
                // thread for every one of them.
                Ok(runtime) => {
                    let queue = self.clone();
                    drop(runtime.spawn(async move { queue.ring() }));
                }
                Err(_) => self.ring(),
            }
        }
    }

    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 to our eventfd. It cannot fail but by overflow,
        // which needs 2^64 - 1 unread wakes.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// On the loop thread, in the eventfd's reader callback: clears the wake, re-arms, and
    /// moves what was queued into `into` (emptied first).
    pub fn take(&self, into: &mut Vec<Event>) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 from our non-blocking eventfd.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        self.armed.store(true, Ordering::Release);
        into.clear();
        std::mem::swap(&mut *self.events.lock().unwrap(), into);
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// A response began to stream: a graceful stop ends it halfway through its budget.
    pub fn add_stream(&self, shared: &Arc<CycleShared>) {
        let mut streams = self.streams.lock().unwrap();
        if streams.len() == streams.capacity() {
            streams.retain(|stream| stream.strong_count() > 0);
        }
        streams.push(Arc::downgrade(shared));
    }

    /// The streams still open.
    pub fn take_streams(&self) -> Vec<Arc<CycleShared>> {
        std::mem::take(&mut *self.streams.lock().unwrap()).iter().filter_map(Weak::upgrade).collect()
    }

    /// A request's task has ended.
    pub fn finished(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}
