//! The clocks as the request path reads them.
//!
//! A request reads the monotonic clock when its head starts to arrive and when its response is
//! done; the connection's watchdog needs both readings anyway. Everything the access log and
//! the metrics want (the latency, the wall-clock time of the request) is derived from those two
//! readings, so that logging a request reads no clock of its own. Readings are plain integers,
//! so that the time between two of them is one subtraction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A reading of the monotonic clock (`CLOCK_MONOTONIC`, the clock of std's `Instant`), in
/// nanoseconds since an arbitrary point (the boot, on Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(u64);

impl Moment {
    #[inline]
    pub fn now() -> Moment {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC always exists on Linux,
        // so the call cannot fail.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Moment(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Nanoseconds since the clock's origin.
    #[inline]
    pub fn nanos(self) -> u64 {
        self.0
    }

    #[inline]
    pub fn from_nanos(nanos: u64) -> Moment {
        Moment(nanos)
    }

    /// How long after `earlier` this was; zero if it was not after.
    #[inline]
    pub fn since(self, earlier: Moment) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Turns monotonic readings into wall-clock time, from one reading of both clocks taken
/// together. Reading the wall clock once for a batch of log lines instead of once per request
/// is exact as long as nobody steps the wall clock in between; a holder takes a fresh one for
/// every batch, so a step shows up in the next.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    at: Moment,
    /// The wall-clock time at `at`, in nanoseconds since the Unix epoch.
    epoch_nanos: u64,
}

impl WallClock {
    /// A placeholder for a holder that reads the clock before it first uses it.
    pub const UNREAD: WallClock = WallClock { at: Moment(0), epoch_nanos: 0 };

    pub fn now() -> WallClock {
        let wall = SystemTime::now();
        let at = Moment::now();
        WallClock { at, epoch_nanos: since_epoch(wall).as_nanos() as u64 }
    }

    /// The wall-clock time of `moment`, as time since the Unix epoch.
    #[inline]
    pub fn since_epoch(&self, moment: Moment) -> Duration {
        // Two's-complement arithmetic: a moment before `at` subtracts.
        Duration::from_nanos(self.epoch_nanos.wrapping_add(moment.0.wrapping_sub(self.at.0)))
    }
}

/// A wall-clock time as the logs take it: time since the Unix epoch (zero before it).
pub fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_measure_what_instant_measures() {
        let (a, i) = (Moment::now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b, j) = (Moment::now(), std::time::Instant::now());
        let ours = b.since(a).as_nanos() as i128;
        let std = (j - i).as_nanos() as i128;
        assert!(ours >= 20_000_000, "{ours}");
        assert!((ours - std).abs() < 1_000_000, "ours {ours} ns, Instant {std} ns");
        assert_eq!(a.since(b), Duration::ZERO, "an earlier moment is zero time after a later one");
    }

    #[test]
    fn wall_time_of_moments_before_and_after_the_reading() {
        let clock = WallClock { at: Moment(5_000_000_000), epoch_nanos: 1_700_000_000_000_000_000 };
        assert_eq!(clock.since_epoch(Moment(5_000_000_000)).as_nanos(), 1_700_000_000_000_000_000);
        assert_eq!(clock.since_epoch(Moment(5_250_000_000)).as_nanos(), 1_700_000_000_250_000_000);
        assert_eq!(clock.since_epoch(Moment(4_999_999_999)).as_nanos(), 1_699_999_999_999_999_999);
    }

    #[test]
    fn wall_time_agrees_with_the_system_clock() {
        let clock = WallClock::now();
        std::thread::sleep(Duration::from_millis(30));
        let derived = clock.since_epoch(Moment::now()).as_nanos() as i128;
        let system = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
        assert!((derived - system).abs() < 5_000_000, "derived {derived}, system {system}");
    }
}
