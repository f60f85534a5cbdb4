//! `--loop-block-warning`: telling when an app blocks its worker's event loop.
//!
//! A synchronous call inside `async def` (a blocking HTTP client, `time.sleep`, a long
//! computation) stops every other request of the worker, and nothing else reports it. While
//! requests are in flight the loop runs a heartbeat callback every fifth of the limit; a
//! watcher thread that sees no beat for longer than the limit logs, once per stall, the stack
//! the loop thread is stuck in. With no request in flight neither runs: an idle worker has no
//! timers (Cloud Run throttles its CPU then), and a loop blocked with nothing waiting harms
//! no request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::clock::Moment;
use crate::telemetry::log;

pub(crate) struct Heartbeat {
    limit: Duration,
    /// The last beat, as a [`Moment`]'s nanoseconds.
    last: AtomicU64,
    /// The loop is beating (requests are in flight).
    beating: AtomicBool,
    /// The loop thread's Python ident, once it runs.
    thread: AtomicU64,
    /// Wakes the watcher when the beat starts.
    started: (Mutex<()>, Condvar),
}

impl Heartbeat {
    /// Starts the watcher thread; `None` when the warning is off.
    pub fn start(limit: Option<Duration>) -> std::io::Result<Option<Arc<Heartbeat>>> {
        let Some(limit) = limit else { return Ok(None) };
        let heartbeat = Arc::new(Heartbeat {
            limit,
            last: AtomicU64::new(0),
            beating: AtomicBool::new(false),
            thread: AtomicU64::new(0),
            started: (Mutex::new(()), Condvar::new()),
        });
        let watched = heartbeat.clone();
        std::thread::Builder::new().name("coldbrew-loop-watch".into()).spawn(move || watched.watch())?;
        Ok(Some(heartbeat))
    }

    /// How often the loop beats.
    pub fn period(&self) -> f64 {
        (self.limit / 5).as_secs_f64()
    }

    /// On the loop thread, once: whose stack to read.
    pub fn set_thread(&self) {
        self.thread.store(crate::gateway::python_thread_ident(), Ordering::Relaxed);
    }

    /// On the loop thread: a request arrived. True if the beat must be started.
    pub fn wanted(&self) -> bool {
        if self.beating.load(Ordering::Relaxed) {
            return false;
        }
        self.last.store(Moment::now().nanos(), Ordering::Relaxed);
        self.beating.store(true, Ordering::Release);
        let _guard = self.started.0.lock().unwrap();
        self.started.1.notify_one();
        true
    }

    /// On the loop thread, from the beat callback: records the beat. False once no request is
    /// in flight, which stops the beat.
    pub fn beat(&self, busy: bool) -> bool {
        self.last.store(Moment::now().nanos(), Ordering::Relaxed);
        if !busy {
            self.beating.store(false, Ordering::Release);
        }
        busy
    }

    fn watch(&self) {
        let mut reported = 0;
        loop {
            {
                let mut guard = self.started.0.lock().unwrap();
                while !self.beating.load(Ordering::Acquire) {
                    guard = self.started.1.wait(guard).unwrap();
                }
            }
            std::thread::sleep(self.limit / 5);
            let last = self.last.load(Ordering::Relaxed);
            let stalled = Duration::from_nanos(Moment::now().nanos().saturating_sub(last));
            if !self.beating.load(Ordering::Acquire) || stalled < self.limit || last == reported {
                continue;
            }
            reported = last;
            let thread = self.thread.load(Ordering::Relaxed);
            let stack = Python::attach(|py| crate::gateway::python_stack(py, thread)).map(|stack| stack.trim_end().to_owned());
            let limit = self.limit.as_secs_f64();
            let stalled = stalled.as_secs_f64();
            match stack {
                Ok(stack) => log::warn(format_args!(
                    "the event loop has not run for {stalled:.2} s (--loop-block-warning {limit}): every request of this \
                     worker waits. Something in the app blocks instead of awaiting; the loop's thread is at:\n{stack}"
                )),
                Err(err) => log::warn(format_args!(
                    "the event loop has not run for {stalled:.2} s (--loop-block-warning {limit}); cannot read its stack: {err}"
                )),
            }
        }
    }
}
