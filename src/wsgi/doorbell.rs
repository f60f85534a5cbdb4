//! How idle Python threads learn that a request is waiting.
//!
//! A thread takes a request off the queue only while it holds the GIL. If it took one first and
//! then waited for the GIL, that request would sit behind whatever the GIL holder runs next,
//! up to the interpreter's 5 ms switch interval for each thread ahead of it: with a
//! CPU-bound framework, a convoy. So idle threads sleep on this doorbell, not on the queue.
//!
//! A ring wakes a thread only when no thread is already *searching* (awake and about to take
//! a request, typically waiting for the GIL). A CPU-bound app thus has one running thread and
//! at most one waiting, instead of every thread queued on the GIL, while an app that blocks on
//! I/O releases the GIL and the searcher takes the next request at once, which lets the next
//! ring wake another. The thread woken is the one that slept last: its caches are warmest.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

/// How often a thread that ran out of work yields before it sleeps: on a shared core the I/O
/// thread is often about to queue more.
const YIELDS_BEFORE_SLEEP: usize = 3;

pub(crate) struct Doorbell {
    sleeping: AtomicUsize,
    searching: AtomicUsize,
    sleepers: Mutex<Sleepers>,
}

struct Sleepers {
    parked: Vec<(Thread, Arc<AtomicBool>)>,
    closed: bool,
}

impl Doorbell {
    pub fn new() -> Self {
        Doorbell { sleeping: AtomicUsize::new(0), searching: AtomicUsize::new(0), sleepers: Mutex::new(Sleepers { parked: Vec::new(), closed: false }) }
    }

    /// A request was queued: wake one sleeping thread unless one is already searching.
    pub fn ring(&self) {
        // The queue push happened before this; pairs with the fence in `wait`.
        fence(SeqCst);
        if self.searching.load(SeqCst) > 0 || self.sleeping.load(SeqCst) == 0 {
            return;
        }
        let woken = self.sleepers.lock().unwrap().parked.pop();
        if let Some((thread, flag)) = woken {
            self.sleeping.fetch_sub(1, SeqCst);
            self.searching.fetch_add(1, SeqCst);
            flag.store(true, SeqCst);
            thread.unpark();
        }
    }

    /// A thread starts looking for a request (it started, or is about to take the GIL).
    pub fn start_searching(&self) {
        self.searching.fetch_add(1, SeqCst);
    }

    /// A searching thread took a request. A ring that came while it searched woke nobody, so
    /// if more requests are waiting another thread is woken for them: the request just taken
    /// may keep this one busy for long (an app reading a slow upload).
    pub fn found(&self, more_waiting: bool) {
        self.searching.fetch_sub(1, SeqCst);
        if more_waiting {
            self.ring();
        }
    }

    /// Counts the caller as searching if nobody else is: more than one searcher would wait for
    /// the GIL at once, and one of them could take it when it is forced from the holder for the
    /// other (see `gil`).
    fn become_only_searcher(&self) -> bool {
        self.searching.compare_exchange(0, 1, SeqCst, SeqCst).is_ok()
    }

    /// Sleeps until rung, unless `has_work` turns true first; called by a thread that found
    /// nothing. On `true` the thread is counted as searching again. False once closed.
    pub fn wait(&self, searching: bool, has_work: impl Fn() -> bool) -> bool {
        if searching {
            self.searching.fetch_sub(1, SeqCst);
        }
        for _ in 0..YIELDS_BEFORE_SLEEP {
            if has_work() && self.become_only_searcher() {
                return true;
            }
            std::thread::yield_now();
        }
        let flag = Arc::new(AtomicBool::new(false));
        {
            let mut sleepers = self.sleepers.lock().unwrap();
            if sleepers.closed {
                return false;
            }
            sleepers.parked.push((std::thread::current(), flag.clone()));
            self.sleeping.fetch_add(1, SeqCst);
        }
        // Pairs with `ring`, which reads `sleeping` after the queue push: either it sees this
        // thread parked, or this check sees the request.
        fence(SeqCst);
        // With another thread searching, that one takes the request (and rings for the next).
        if has_work() && self.become_only_searcher() {
            let mut sleepers = self.sleepers.lock().unwrap();
            match sleepers.parked.iter().position(|(_, f)| Arc::ptr_eq(f, &flag)) {
                Some(pos) => {
                    sleepers.parked.remove(pos);
                    self.sleeping.fetch_sub(1, SeqCst);
                }
                // A ring took this thread off the list meanwhile and counted it already.
                None => {
                    self.searching.fetch_sub(1, SeqCst);
                }
            }
            return true;
        }
        while !flag.load(SeqCst) {
            std::thread::park();
        }
        !self.sleepers.lock().unwrap().closed || has_work()
    }

    /// Wakes every thread for good.
    pub fn close(&self) {
        let mut sleepers = self.sleepers.lock().unwrap();
        sleepers.closed = true;
        for (thread, flag) in sleepers.parked.drain(..) {
            flag.store(true, SeqCst);
            thread.unpark();
        }
        self.sleeping.store(0, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    #[test]
    fn ring_wakes_a_sleeper_and_close_releases_all() {
        let bell = Arc::new(Doorbell::new());
        let work = Arc::new(AtomicU32::new(0));
        let woke = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (bell, work, woke) = (bell.clone(), work.clone(), woke.clone());
                std::thread::spawn(move || {
                    bell.start_searching();
                    let mut searching = true;
                    loop {
                        if work.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
                            if searching {
                                bell.found(work.load(SeqCst) > 0);
                                searching = false;
                            }
                            woke.fetch_add(1, SeqCst);
                            continue;
                        }
                        if !bell.wait(searching, || work.load(SeqCst) > 0) {
                            return;
                        }
                        searching = true;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..10 {
            work.fetch_add(1, SeqCst);
            bell.ring();
            std::thread::sleep(Duration::from_millis(5));
        }
        while work.load(SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        bell.close();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(woke.load(SeqCst), 10);
    }

    #[test]
    fn a_ring_during_a_search_is_passed_on_when_the_searcher_finds_work() {
        let bell = Arc::new(Doorbell::new());
        let work = Arc::new(AtomicU32::new(0));
        // One thread asleep on the bell, taking one request when woken.
        let sleeper = {
            let (bell, work) = (bell.clone(), work.clone());
            std::thread::spawn(move || {
                bell.start_searching();
                let mut searching = true;
                while bell.wait(searching, || work.load(SeqCst) > 0) {
                    searching = true;
                    if work.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
                        bell.found(work.load(SeqCst) > 0);
                        searching = false;
                    }
                }
            })
        };
        while bell.sleeping.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        // This thread is searching when two requests come: the rings wake nobody.
        bell.start_searching();
        work.fetch_add(1, SeqCst);
        bell.ring();
        work.fetch_add(1, SeqCst);
        bell.ring();
        assert_eq!(bell.sleeping.load(SeqCst), 1, "no thread was woken while one searched");
        // It takes one request and is then busy with it for good: the other is still taken.
        work.fetch_sub(1, SeqCst);
        bell.found(work.load(SeqCst) > 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while work.load(SeqCst) > 0 {
            assert!(std::time::Instant::now() < deadline, "the second request was never taken");
            std::thread::yield_now();
        }
        bell.close();
        sleeper.join().unwrap();
    }
}
