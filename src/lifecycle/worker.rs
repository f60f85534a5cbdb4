//! A worker process's side of the supervisor's protocol.
//!
//! Each worker holds two pipes to the supervisor. On the status pipe it says `ready` once the
//! app is imported, warmed up and its Python threads run, and `recycle` once it has served its
//! `--max-requests`. On the control pipe it waits for `go`: the supervisor opens the port only
//! when every worker is ready, and a worker must not accept before the socket listens. Stopping
//! is by signal, as for a single process.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;

use crate::telemetry::metrics::SharedSlots;

/// What a forked worker inherits from the supervisor. Python receives it from `supervise()`
/// and hands it to `serve()`.
#[pyclass(module = "coldbrew._coldbrew", name = "Worker")]
pub struct WorkerLink {
    #[pyo3(get)]
    pub id: u32,
    pub(crate) inner: Option<Inherited>,
}

pub(crate) struct Inherited {
    pub listener: Option<OwnedFd>,
    pub metrics_listener: Option<OwnedFd>,
    pub status: File,
    pub control: File,
    pub metrics: Option<(SharedSlots, usize)>,
}

impl WorkerLink {
    pub(crate) fn new(id: u32, inherited: Inherited) -> Self {
        WorkerLink { id, inner: Some(inherited) }
    }

    /// The inherited parts; a link serves once.
    pub(crate) fn take(&mut self) -> Option<Inherited> {
        self.inner.take()
    }
}

#[pymethods]
impl WorkerLink {
    fn __repr__(&self) -> String {
        format!("<coldbrew worker {}>", self.id)
    }

    /// Tells the supervisor why this worker cannot start (one line) and, if there is one, the
    /// traceback behind it. The worker prints neither: the supervisor prints them once for the
    /// whole server, however many workers failed alike.
    #[pyo3(signature = (reason, traceback=None))]
    fn report_failure(&mut self, reason: &str, traceback: Option<&str>) {
        if let Some(inherited) = self.inner.as_mut() {
            let line: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let mut message = String::new();
            if let Some(traceback) = traceback {
                message.push_str("traceback ");
                escape_line(traceback, &mut message);
                message.push('\n');
            }
            message.push_str("failed ");
            message.push_str(&line);
            message.push('\n');
            // One write: the supervisor may read the pipe at any moment.
            let _ = inherited.status.write_all(message.as_bytes());
        }
    }
}

impl Inherited {
    /// Tells the supervisor this worker can serve; `timings` are the import and warm-up seconds.
    pub fn report_ready(&mut self, timings: (f64, f64)) -> std::io::Result<()> {
        writeln!(self.status, "ready {:.6} {:.6}", timings.0, timings.1)
    }

    /// Blocks until the supervisor says `go`. False if the supervisor is gone.
    pub fn wait_for_go(&mut self) -> bool {
        let mut buf = [0u8; 3];
        matches!(self.control.read_exact(&mut buf), Ok(()) if &buf == b"go\n")
    }

    /// A handle the I/O thread uses to ask for replacement once, after `limit` requests.
    pub fn recycler(&self, limit: u64) -> std::io::Result<Option<Recycler>> {
        if limit == 0 {
            return Ok(None);
        }
        Ok(Some(Recycler { status: self.status.try_clone()?, limit, served: AtomicU64::new(0) }))
    }
}

/// Counts requests and asks the supervisor for a replacement when the count reaches `limit`.
pub struct Recycler {
    status: File,
    limit: u64,
    served: AtomicU64,
}

impl Recycler {
    #[inline]
    pub fn count(&self) {
        if self.served.fetch_add(1, Ordering::Relaxed) + 1 == self.limit {
            // A few bytes into a pipe the supervisor drains: this never blocks in practice.
            let _ = (&self.status).write_all(b"recycle\n");
        }
    }
}

/// Appends `text` to `out` as one line of the status protocol: backslashes and line ends
/// escaped, so that a multi-line traceback travels as one message.
fn escape_line(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The text [`escape_line`] escaped.
pub(crate) fn unescape_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A pipe as (read end, write end), both close-on-exec so the app's subprocesses never hold
/// them.
pub(crate) fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both descriptors on success; we own them from here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    unsafe { Ok((File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))) }
}

/// A new descriptor for the same open file, close-on-exec.
pub(crate) fn duplicate(fd: &impl AsRawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a fresh descriptor we own, or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceback_survives_the_status_line() {
        let text = "Traceback (most recent call last):\n  File \"C:\\app\\n.py\", line 1\r\nZeroDivisionError: division by zero\n";
        let mut line = String::new();
        escape_line(text, &mut line);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        assert_eq!(unescape_line(&line), text);
    }
}
