//! The warning about requests shed by `--max-pending`. Under overload a line per shed request
//! would add a log write to every 503 just when the server can least afford it, and flood the
//! log; instead each shed request is one atomic increment, and the first one after a quiet spell
//! arms a timer that writes one line with the count, at most once a second.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::clock::Moment;
use crate::telemetry::log;

/// Requests shed since the last line.
static SHED: AtomicU64 = AtomicU64::new(0);
/// When the last line was written (a [`Moment`]'s nanoseconds), 0 before the first.
static LAST_LINE: AtomicU64 = AtomicU64::new(0);

/// The shortest time between two lines.
const INTERVAL: Duration = Duration::from_secs(1);

/// A request was answered 503 because `--max-pending` requests were already waiting.
#[inline]
pub fn request_shed() {
    if SHED.fetch_add(1, Relaxed) == 0 {
        schedule_line();
    }
}

/// Writes the line once [`INTERVAL`] has passed since the last one: at once after a quiet spell,
/// so the first sign of overload is not held back.
#[cold]
fn schedule_line() {
    let last = LAST_LINE.load(Relaxed);
    let wait = if last == 0 { Duration::ZERO } else { INTERVAL.saturating_sub(Moment::now().since(Moment::from_nanos(last))) };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if !wait.is_zero() => {
            runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                write_line();
            });
        }
        _ => write_line(),
    }
}

fn write_line() {
    LAST_LINE.store(Moment::now().nanos().max(1), Relaxed);
    // Taken only now: requests shed while the timer ran are in this line. One shed after the
    // swap finds 0 and arms the next timer.
    let shed = SHED.swap(0, Relaxed);
    if shed == 0 {
        return;
    }
    let plural = if shed == 1 { "" } else { "s" };
    log::warn(format_args!(
        "shed {shed} request{plural} since the last such line: --max-pending requests were already waiting for a Python thread; answered 503"
    ));
}
