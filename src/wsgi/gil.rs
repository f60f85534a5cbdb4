//! How a thread looking for a request takes the GIL without preempting a running one.
//!
//! The doorbell keeps at most one thread *searching*: awake, waiting for the GIL, ready to take
//! the next request when the thread running the app releases the GIL, as an app blocked on I/O
//! does. CPython makes such a waiter ask for the GIL once it has waited one switch interval
//! (`sys.getswitchinterval()`, 5 ms by default), and the holder then gives it up at its next
//! bytecode boundary, usually in the middle of a request. If the searcher then started a new
//! request, the interrupted one would wait for the GIL behind it, and behind every thread that
//! did the same: with a CPU-bound framework every pool thread ends up holding a half-done
//! request, the GIL rotates among them every 5 ms, and the tail latency is several times the
//! queueing delay.
//!
//! So a searcher that got the GIL only by waiting out a full switch interval, while the pool
//! went on finishing requests, gives the GIL straight back and waits again: the holder is busy
//! with the CPU, not blocked, and its request should finish first. A CPU-bound app pays a
//! couple of context switches per switch interval for this; an app that blocks still has its
//! next request taken the moment it releases the GIL. When no request finished during the
//! wait, the holder is either one long request, which the interval exists to interrupt, or a
//! thread of the app's own; then the searcher takes a request as before.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long a searcher that handed the GIL back stays off it, so that the interrupted thread,
/// already woken by the release, takes it before the searcher asks again.
const STAY_OFF: Duration = Duration::from_micros(200);

pub(crate) struct GilHandoff {
    /// A wait at least this long means the searcher had the GIL taken from a busy holder.
    forced_after: Duration,
    /// Pool threads inside the app (from the environ to the end of the response).
    in_app: AtomicUsize,
    /// Requests the pool has finished, to tell a holder making progress from a stalled one.
    finished: AtomicU64,
    /// Searchers staying off a GIL they handed back.
    handing_back: AtomicUsize,
}

/// Where a searcher stood when it started waiting for the GIL.
#[derive(Clone, Copy)]
pub(crate) struct Asked {
    at: Instant,
    finished: u64,
}

impl GilHandoff {
    pub fn new(py: Python<'_>) -> Self {
        // Read once, after the app was imported: an app that sets its own interval is measured
        // against that one.
        let interval: f64 = py
            .import("sys")
            .and_then(|sys| sys.call_method0("getswitchinterval"))
            .and_then(|value| value.extract())
            .unwrap_or(0.005);
        // A release the searcher was waiting for hands over in microseconds; a forced one only
        // after the whole interval. Nine tenths of it tells the two apart with room for a late
        // wake-up of the searcher on a busy core.
        let forced_after = Duration::from_secs_f64((interval * 0.9).max(0.0));
        GilHandoff { forced_after, in_app: AtomicUsize::new(0), finished: AtomicU64::new(0), handing_back: AtomicUsize::new(0) }
    }

    /// Marks the calling thread as inside the app until the guard is dropped.
    pub fn enter_app(&self) -> InApp<'_> {
        self.in_app.fetch_add(1, Relaxed);
        InApp(self)
    }

    /// Whether any pool thread is inside the app; asked by one that just left it.
    pub fn others_in_app(&self) -> bool {
        self.in_app.load(Relaxed) > 0
    }

    /// Taken by a searcher just before it waits for the GIL (without it).
    pub fn ask(&self) -> Asked {
        Asked { at: Instant::now(), finished: self.finished.load(Relaxed) }
    }

    /// Called by a searcher once it holds the GIL, with what `ask` said before it waited.
    /// Returns once the searcher may take a request: at once if the GIL came free by itself,
    /// if nobody is in the app or if the pool made no progress while it waited; otherwise
    /// after handing the GIL back to the interrupted thread, as often as that holds. A GIL
    /// that came from another searcher handing it back was meant for the interrupted thread
    /// too, however short the wait: it is handed on the same way.
    pub fn settle(&self, py: Python<'_>, mut asked: Asked, still_wanted: impl Fn() -> bool) {
        loop {
            let forced = asked.at.elapsed() >= self.forced_after && self.finished.load(Relaxed) != asked.finished;
            let handed_back = self.handing_back.load(Relaxed) > 0;
            if !(forced || handed_back) || self.in_app.load(Relaxed) == 0 || !still_wanted() {
                return;
            }
            self.handing_back.fetch_add(1, Relaxed);
            asked = py.detach(|| {
                std::thread::sleep(STAY_OFF);
                self.handing_back.fetch_sub(1, Relaxed);
                self.ask()
            });
        }
    }
}

pub(crate) struct InApp<'a>(&'a GilHandoff);

impl Drop for InApp<'_> {
    fn drop(&mut self) {
        self.0.in_app.fetch_sub(1, Relaxed);
        self.0.finished.fetch_add(1, Relaxed);
    }
}
