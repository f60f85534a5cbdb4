//! The supervisor: the parent process when coldbrew runs several workers (or must be PID 1).
//!
//! It binds the port, forks the workers and only then makes the socket listen, once every
//! worker has imported the app, so the platform's TCP probe never reaches an unready instance.
//! Afterwards it runs no Python: it waits in `poll` on a signalfd and the workers' status
//! pipes, replaces workers that exit or ask to be recycled, and turns signals into orders:
//!
//! - TERM: graceful stop. Workers drain within `--graceful-timeout`; stragglers get KILL.
//! - INT, QUIT: fast stop.
//! - HUP: replace the workers one by one, each new one ready before the old one stops.
//! - TTIN, TTOU: one worker more or less.
//! - CHLD: reap every child, workers or orphans reparented to a PID 1 supervisor.
//! - USR1, USR2, WINCH: logged and ignored (passed on, their default action would end every
//!   worker at once).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use socket2::Socket;

use super::worker::{duplicate, pipe, unescape_line, Inherited, WorkerLink};
use super::{display_addr, since_start, startup_report, Sockets, Startup};
use crate::config::ServerConfig;
use crate::telemetry::log;
use crate::telemetry::metrics::SharedSlots;

/// What `supervise` returns: in the supervisor, the exit status once everything has stopped;
/// in a freshly forked worker, its link, to go on and serve.
pub enum Outcome {
    /// The exit status, and why the server stopped when that was a failure.
    Exit(i32, Option<Failure>),
    Worker(WorkerLink),
}

/// Why the server stopped: the command's last line, and the traceback to print before it.
pub struct Failure {
    pub line: String,
    pub traceback: Option<String>,
}

/// Metrics slots: slot 0 for exited workers' counts, the rest one per live worker. Bounds how
/// many workers may exist at once, retiring ones included.
const METRICS_SLOTS: usize = 257;
/// Backoff before respawning after a worker died early: doubles per failure up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A worker that lives at least this long after becoming ready did not crash on start.
const MIN_UPTIME: Duration = Duration::from_secs(2);
/// This many early deaths in a row (no worker lasting [`MIN_UPTIME`] in between) stop the
/// server, so the platform restarts the instance instead of it limping on.
const CRASH_LOOP: u32 = 6;
/// What workers get on top of `--graceful-timeout` to drain before KILL.
const STOP_MARGIN: Duration = Duration::from_millis(1500);
/// A fast stop waits this long before KILL.
const FAST_STOP: Duration = Duration::from_secs(2);

/// The signals the supervisor takes through its signalfd.
const SIGNALS: [libc::c_int; 11] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
];

struct Worker {
    id: u32,
    pid: libc::pid_t,
    slot: usize,
    /// Read end of the worker's status pipe; None once it reached end of file.
    status: Option<File>,
    /// Write end of the worker's control pipe; closed once the server stops.
    control: Option<File>,
    pending: Vec<u8>,
    ready_at: Option<Instant>,
    /// TERM (or INT) has been sent: it no longer counts as serving.
    stopping: bool,
    /// The worker it will stand in for once ready (HUP, recycling).
    replaces: Option<u32>,
    timings: (f64, f64),
    /// Why it could not start, as it reported before exiting.
    failed: Option<String>,
    /// The traceback behind `failed`. Workers do not print it themselves: with several
    /// workers failing the same import, it would be printed once per worker, interleaved.
    traceback: Option<String>,
}

impl Worker {
    fn serving(&self) -> bool {
        !self.stopping && self.replaces.is_none()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Waiting for the first workers to be ready; the socket does not listen yet.
    Starting,
    Running,
    /// Workers were told to stop; at `deadline` the rest get KILL (`killed`), and a second
    /// deadline later the supervisor stops waiting.
    Stopping { deadline: Instant, fast: bool, killed: bool },
}

pub struct Supervisor<'a> {
    config: &'a ServerConfig,
    listener: Option<Socket>,
    metrics_listener: Option<Socket>,
    metrics: Option<SharedSlots>,
    signals: OwnedFd,
    old_mask: libc::sigset_t,
    workers: Vec<Worker>,
    target: usize,
    next_id: u32,
    state: State,
    /// Workers to replace one at a time (HUP and recycling), oldest request first.
    replace: VecDeque<u32>,
    failures: u32,
    last_failure: Option<Instant>,
    spawn_not_before: Option<Instant>,
    /// After a replacement failed to start, the next one waits until then.
    replace_not_before: Option<Instant>,
    exit_status: i32,
    failure: Option<Failure>,
    /// `time.monotonic()` when the interpreter began running coldbrew, for the startup line.
    started: Option<f64>,
}

/// Runs the supervisor until the server stops (returns `Exit`) or, in a forked child, returns
/// that worker's link. `sockets` are the bound sockets from `bind()` (bound here if None).
pub fn supervise(py: Python<'_>, config: &ServerConfig, sockets: Option<&mut Sockets>, started: Option<f64>) -> PyResult<Outcome> {
    let bound = Sockets::take_or_bind(sockets, config)?;
    let (listener, metrics_listener) = (bound.app, bound.metrics);
    let metrics = if config.metrics_bind.is_some() { Some(SharedSlots::new(METRICS_SLOTS)?) } else { None };
    let (signals, old_mask) = take_signals()?;
    let mut supervisor = Supervisor {
        config,
        listener: Some(listener),
        metrics_listener,
        metrics,
        signals,
        old_mask,
        workers: Vec::new(),
        target: config.workers.max(1),
        next_id: 1,
        state: State::Starting,
        replace: VecDeque::new(),
        failures: 0,
        last_failure: None,
        spawn_not_before: None,
        replace_not_before: None,
        exit_status: 0,
        failure: None,
        started,
    };
    let outcome = supervisor.run(py);
    if matches!(outcome, Ok(Outcome::Exit(..))) {
        supervisor.restore_signals();
    }
    outcome
}

impl Supervisor<'_> {
    fn run(&mut self, py: Python<'_>) -> PyResult<Outcome> {
        loop {
            if let Some(link) = self.spawn_missing(py)? {
                return Ok(Outcome::Worker(link));
            }
            if let State::Stopping { .. } = self.state {
                if self.workers.is_empty() {
                    if self.failure.is_some() {
                        // The failure is the last line; a "shutdown complete" would bury it.
                        log::debug(format_args!("shutdown complete"));
                    } else {
                        log::info(format_args!("shutdown complete"));
                    }
                    return Ok(Outcome::Exit(self.exit_status, self.failure.take()));
                }
            }
            let timeout = self.poll_timeout();
            let ready = py.detach(|| self.wait(timeout))?;
            if ready.signals {
                self.handle_signals();
            }
            for index in ready.status {
                self.read_status(index);
            }
            self.reap();
            self.check_deadlines();
        }
    }

    /// Forks workers until there are `target` serving ones, plus one replacement when a
    /// replacement is due. Returns the link in the child.
    fn spawn_missing(&mut self, py: Python<'_>) -> PyResult<Option<WorkerLink>> {
        if matches!(self.state, State::Stopping { .. }) {
            return Ok(None);
        }
        if self.spawn_not_before.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        self.spawn_not_before = None;
        loop {
            let serving = self.workers.iter().filter(|w| w.serving()).count();
            // A replacement whose old worker died counts as serving-to-be.
            let orphaned = self
                .workers
                .iter()
                .filter(|w| w.replaces.is_some_and(|old| !self.workers.iter().any(|o| o.id == old)))
                .count();
            if serving + orphaned >= self.target {
                break;
            }
            if let Some(link) = self.spawn(py, None)? {
                return Ok(Some(link));
            }
        }
        let replacing = self.workers.iter().any(|w| w.replaces.is_some());
        let held_back = self.replace_not_before.is_some_and(|t| Instant::now() < t);
        if !replacing && !held_back && self.state == State::Running {
            while let Some(&old) = self.replace.front() {
                if self.workers.iter().any(|w| w.id == old && !w.stopping) {
                    return self.spawn(py, Some(old));
                }
                self.replace.pop_front();
            }
        }
        Ok(None)
    }

    fn spawn(&mut self, _gil: Python<'_>, replaces: Option<u32>) -> PyResult<Option<WorkerLink>> {
        let live = self.workers.len();
        if live + 1 >= METRICS_SLOTS {
            log::error(format_args!("cannot start another worker: {live} already run"));
            return Ok(None);
        }
        let slot = (1..METRICS_SLOTS).find(|s| !self.workers.iter().any(|w| w.slot == *s)).unwrap_or(1);
        let id = self.next_id;
        self.next_id += 1;
        let (status_read, status_write) = pipe()?;
        let (control_read, control_write) = pipe()?;
        if let Some(metrics) = &self.metrics {
            metrics.retire(slot);
        }
        let parent = unsafe { libc::getpid() };
        // SAFETY: the GIL is held (the `_gil` token), as PyOS_BeforeFork requires; the
        // supervisor runs no other thread, so nothing is mid-way through a lock at the fork.
        let pid = unsafe {
            pyo3::ffi::PyOS_BeforeFork();
            let pid = libc::fork();
            if pid == 0 {
                pyo3::ffi::PyOS_AfterFork_Child();
            } else {
                pyo3::ffi::PyOS_AfterFork_Parent();
            }
            pid
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if pid == 0 {
            drop(status_read);
            drop(control_write);
            return Ok(Some(self.become_worker(id, slot, parent, status_write, control_read)?));
        }
        drop(status_write);
        drop(control_read);
        set_nonblocking(&status_read);
        log::debug(format_args!("started worker {id} (pid {pid})"));
        self.workers.push(Worker {
            id,
            pid,
            slot,
            status: Some(status_read),
            control: Some(control_write),
            pending: Vec::new(),
            ready_at: None,
            stopping: false,
            replaces,
            timings: (0.0, 0.0),
            failed: None,
            traceback: None,
        });
        Ok(None)
    }

    /// In the new child: drop everything that belongs to the supervisor and keep what the
    /// worker inherits.
    fn become_worker(&mut self, id: u32, slot: usize, parent: libc::pid_t, status: File, control: File) -> PyResult<WorkerLink> {
        // SAFETY: plain syscalls on this process.
        unsafe {
            // A worker whose supervisor dies (even by KILL) drains and exits instead of
            // serving on, unsupervised, with a port nobody owns.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
        let listener = self.listener.as_ref().expect("the listener lives until the stop");
        let inherited = Inherited {
            listener: Some(duplicate(listener)?),
            metrics_listener: self.metrics_listener.as_ref().map(duplicate).transpose()?,
            status,
            control,
            metrics: self.metrics.clone().map(|m| (m, slot)),
        };
        // The supervisor's descriptors (signalfd, other workers' pipes, its own copies of the
        // sockets) close when it is dropped on the way back to Python.
        self.workers.clear();
        Ok(WorkerLink::new(id, inherited))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Instant> = self.spawn_not_before;
        if !self.replace.is_empty() {
            if let Some(t) = self.replace_not_before {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if let State::Stopping { deadline, .. } = self.state {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        if self.failures > 0 {
            // Wake to notice a worker has stayed up long enough to clear the failure count.
            next = Some(next.map_or(now + MIN_UPTIME, |n| n.min(now + MIN_UPTIME)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    fn wait(&self, timeout: Option<Duration>) -> std::io::Result<Ready> {
        let mut fds = Vec::with_capacity(self.workers.len() + 1);
        fds.push(libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        let mut owners = Vec::with_capacity(self.workers.len());
        for (index, worker) in self.workers.iter().enumerate() {
            if let Some(status) = &worker.status {
                fds.push(libc::pollfd { fd: status.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                owners.push(index);
            }
        }
        let millis = timeout.map_or(-1, |t| t.as_millis().min(60_000) as libc::c_int + 1);
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                return Ok(Ready::default());
            }
            return Err(err);
        }
        Ok(Ready {
            signals: fds[0].revents != 0,
            status: fds[1..].iter().zip(owners).filter(|(fd, _)| fd.revents != 0).map(|(_, index)| index).collect(),
        })
    }

    fn handle_signals(&mut self) {
        loop {
            // SAFETY: reading one signalfd_siginfo into a buffer of exactly its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = unsafe { libc::read(self.signals.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if n != size as isize {
                return;
            }
            self.on_signal(info.ssi_signo as libc::c_int);
        }
    }

    fn on_signal(&mut self, signal: libc::c_int) {
        match signal {
            libc::SIGTERM => self.stop(false, "SIGTERM"),
            libc::SIGINT => self.stop(true, "SIGINT"),
            libc::SIGQUIT => self.stop(true, "SIGQUIT"),
            libc::SIGHUP => {
                if self.state != State::Running {
                    return;
                }
                let ids: Vec<u32> = self.workers.iter().filter(|w| w.serving()).map(|w| w.id).collect();
                log::info(format_args!("SIGHUP received: replacing {} worker(s) one by one", ids.len()));
                for id in ids {
                    if !self.replace.contains(&id) {
                        self.replace.push_back(id);
                    }
                }
            }
            libc::SIGTTIN => {
                if matches!(self.state, State::Stopping { .. }) {
                    return;
                }
                self.target += 1;
                log::info(format_args!("SIGTTIN received: {} worker(s)", self.target));
            }
            libc::SIGTTOU => {
                if matches!(self.state, State::Stopping { .. }) || self.target <= 1 {
                    return;
                }
                self.target -= 1;
                log::info(format_args!("SIGTTOU received: {} worker(s)", self.target));
                // The newest serving worker goes: the older ones have warm caches.
                if let Some(worker) = self.workers.iter_mut().rev().find(|w| w.serving()) {
                    worker.stopping = true;
                    kill(worker.pid, libc::SIGTERM);
                }
            }
            libc::SIGCHLD | libc::SIGALRM => {}
            other => log::info(format_args!("signal {other} received and ignored")),
        }
    }

    /// Tells every worker to stop; `why` completes "... received" or is a whole sentence.
    fn stop(&mut self, fast: bool, why: &str) {
        let now = Instant::now();
        let deadline = if fast { now + FAST_STOP } else { now + self.config.graceful_timeout + STOP_MARGIN };
        match self.state {
            // A fast stop may overtake a graceful one, never the other way round.
            State::Stopping { fast: true, .. } => return,
            State::Stopping { fast: false, .. } if !fast => return,
            _ => {}
        }
        let what = if fast { "stopping now" } else { "no new connections, finishing in-flight requests" };
        if why.starts_with("SIG") {
            log::info(format_args!("{why} received: {what}"));
        } else {
            // The failure itself is reported once, as the command's last line.
            log::debug(format_args!("{why}: {what}"));
        }
        self.state = State::Stopping { deadline, fast, killed: false };
        // The workers' copies close as each stops accepting; with ours gone too, the port
        // closes as soon as the last worker's does.
        self.listener = None;
        self.metrics_listener = None;
        let signal = if fast { libc::SIGINT } else { libc::SIGTERM };
        for worker in &mut self.workers {
            worker.stopping = true;
            // A worker that is ready but waiting for `go` blocks on this pipe, not on signals:
            // closing it lets that worker exit now rather than at the KILL deadline.
            worker.control = None;
            kill(worker.pid, signal);
        }
    }

    fn read_status(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let Some(status) = worker.status.as_mut() else { return };
        let mut buf = [0u8; 256];
        loop {
            match status.read(&mut buf) {
                Ok(0) => {
                    worker.status = None;
                    break;
                }
                Ok(n) => worker.pending.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = worker.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = worker.pending.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        for line in lines {
            self.on_message(index, &line);
        }
    }

    fn on_message(&mut self, index: usize, line: &str) {
        let mut words = line.split(' ');
        match words.next() {
            Some("ready") => {
                let import = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
                let warmup = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
                let worker = &mut self.workers[index];
                worker.ready_at = Some(Instant::now());
                worker.timings = (import, warmup);
                log::debug(format_args!("worker {} (pid {}) is ready", worker.id, worker.pid));
                match self.state {
                    State::Starting => {
                        if self.workers.iter().all(|w| w.ready_at.is_some()) && self.workers.len() >= self.target {
                            self.open_port();
                        }
                    }
                    State::Running => self.admit(index),
                    State::Stopping { .. } => {}
                }
            }
            Some("recycle") => {
                let worker = &self.workers[index];
                log::info(format_args!(
                    "worker {} (pid {}) served its --max-requests; replacing it",
                    worker.id, worker.pid
                ));
                let id = worker.id;
                if !self.replace.contains(&id) {
                    self.replace.push_back(id);
                }
            }
            Some("failed") => {
                let reason = line.split_once(' ').map_or("", |(_, r)| r);
                self.workers[index].failed = Some(reason.to_owned());
            }
            Some("traceback") => {
                let text = line.split_once(' ').map_or("", |(_, t)| t);
                self.workers[index].traceback = Some(unescape_line(text));
            }
            _ => log::warn(format_args!("unexpected message from a worker: {line:?}")),
        }
    }

    /// Every first worker is ready: the socket listens and they start accepting.
    fn open_port(&mut self) {
        let listener = self.listener.as_ref().expect("the listener lives until the stop");
        if let Err(err) = listener.listen(self.config.backlog) {
            self.failure = Some(Failure { line: format!("cannot listen: {err}"), traceback: None });
            self.exit_status = 1;
            self.stop(true, "cannot listen");
            return;
        }
        if let Some(metrics) = &self.metrics_listener {
            if let Err(err) = metrics.listen(128) {
                log::error(format_args!("cannot listen for metrics: {err}"));
            }
        }
        self.state = State::Running;
        for index in 0..self.workers.len() {
            go(&mut self.workers[index]);
        }
        let startup = since_start(self.started);
        if let Some(metrics) = &self.metrics {
            metrics.set_startup_seconds(startup.map_or(0.0, |d| d.as_secs_f64()));
        }
        let local = listener.local_addr().ok().and_then(|a| a.as_socket());
        let (import, warmup) = self.workers.iter().fold((0.0f64, 0.0f64), |(i, w), worker| {
            (i.max(worker.timings.0), w.max(worker.timings.1))
        });
        startup_report(&Startup {
            config: self.config,
            address: local.map(display_addr).unwrap_or_default(),
            workers: self.workers.len(),
            import_seconds: import,
            warmup_seconds: warmup,
            open_after: startup,
        });
    }

    /// A worker started after the port opened: let it accept, and retire the one it replaces.
    fn admit(&mut self, index: usize) {
        go(&mut self.workers[index]);
        let worker = &mut self.workers[index];
        let Some(old) = worker.replaces.take() else { return };
        let new_id = worker.id;
        if self.replace.front() == Some(&old) {
            self.replace.pop_front();
        }
        if let Some(old_worker) = self.workers.iter_mut().find(|w| w.id == old) {
            log::info(format_args!("worker {new_id} replaces worker {} (pid {})", old_worker.id, old_worker.pid));
            old_worker.stopping = true;
            kill(old_worker.pid, libc::SIGTERM);
        }
        self.count_restart();
    }

    fn count_restart(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.count_restart();
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG on any child.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                log::debug(format_args!("reaped process {pid}, not a worker"));
                continue;
            };
            // Its last words (why it failed) are in the pipe, maybe not read yet.
            self.read_status(index);
            let worker = self.workers.swap_remove(index);
            if let Some(metrics) = &self.metrics {
                metrics.retire(worker.slot);
            }
            self.on_exit(worker, status);
        }
    }

    fn on_exit(&mut self, mut worker: Worker, status: libc::c_int) {
        let how = describe_exit(status);
        if worker.stopping {
            log::debug(format_args!("worker {} (pid {}) stopped: {how}", worker.id, worker.pid));
            return;
        }
        if matches!(self.state, State::Stopping { .. }) {
            return;
        }
        let now = Instant::now();
        let early = worker.ready_at.is_none_or(|ready| now.duration_since(ready) < MIN_UPTIME);
        if self.state == State::Starting {
            let line = match &worker.failed {
                Some(reason) => format!("worker {} (pid {}) could not start: {reason}", worker.id, worker.pid),
                None => format!("worker {} (pid {}) {how} before it was ready", worker.id, worker.pid),
            };
            // Only the first failure is reported: the stop below makes the other workers'
            // exits expected ones, whatever they would have said.
            self.failure = Some(Failure { line, traceback: worker.traceback.take() });
            self.exit_status = match exit_code(status) {
                Some(3) => 3,
                _ => 1,
            };
            self.stop(false, "a worker failed to start");
            return;
        }
        if worker.replaces.is_some() {
            // The workers it would replace keep serving; try again later, not in a tight loop.
            let reason = worker.failed.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            log::error(format_args!(
                "new worker {} (pid {}) {how} before it was ready{reason}; keeping the current workers and trying again in {} s{}",
                worker.id,
                worker.pid,
                BACKOFF_CAP.as_secs(),
                traceback_after(&worker)
            ));
            // The queue stays: the reload (or recycling) is tried again after the hold.
            self.replace_not_before = Some(now + BACKOFF_CAP);
            return;
        }
        let reason = worker.failed.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        log::warn(format_args!(
            "worker {} (pid {}) {how}{reason}; starting another{}",
            worker.id,
            worker.pid,
            traceback_after(&worker)
        ));
        self.count_restart();
        if early {
            self.failures += 1;
            self.last_failure = Some(now);
            let backoff = BACKOFF_START.saturating_mul(1 << (self.failures - 1).min(10)).min(BACKOFF_CAP);
            self.spawn_not_before = Some(now + backoff);
            if self.failures >= CRASH_LOOP {
                self.failure = Some(Failure {
                    line: format!("{} workers in a row died within {} s of starting; stopping", self.failures, MIN_UPTIME.as_secs()),
                    traceback: None,
                });
                self.exit_status = 1;
                self.stop(false, "workers keep crashing");
            }
        }
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        if let State::Stopping { deadline, fast, killed } = self.state {
            if now >= deadline {
                if killed {
                    // KILL cannot be refused; whatever is left is stuck in the kernel.
                    log::error(format_args!("{} worker(s) did not exit after SIGKILL", self.workers.len()));
                    self.workers.clear();
                } else {
                    for worker in &self.workers {
                        log::warn(format_args!("worker {} (pid {}) did not stop in time; killing it", worker.id, worker.pid));
                        kill(worker.pid, libc::SIGKILL);
                    }
                    self.state = State::Stopping { deadline: now + Duration::from_secs(2), fast, killed: true };
                }
            }
        }
        if self.failures > 0 {
            let cleared = self.workers.iter().any(|w| {
                w.ready_at.is_some_and(|ready| now.duration_since(ready) >= MIN_UPTIME && self.last_failure.is_some_and(|f| ready >= f))
            });
            if cleared {
                self.failures = 0;
            }
        }
    }

    fn restore_signals(&self) {
        // SAFETY: restores the mask saved in take_signals.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}

/// A worker's traceback on lines of its own after a log message, or nothing.
fn traceback_after(worker: &Worker) -> String {
    worker.traceback.as_deref().map(|t| format!(":\n{}", t.trim_end())).unwrap_or_default()
}

#[derive(Default)]
struct Ready {
    signals: bool,
    status: Vec<usize>,
}

fn go(worker: &mut Worker) {
    let Some(control) = worker.control.as_mut() else { return };
    if let Err(err) = control.write_all(b"go\n") {
        log::warn(format_args!("cannot reach worker {} (pid {}): {err}", worker.id, worker.pid));
    }
}

fn kill(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: a signal to a child we have not reaped, so the pid is still ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn set_nonblocking(file: &File) {
    // SAFETY: fcntl flags on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Blocks the supervisor's signals and returns a signalfd for them, with the mask to restore
/// in workers.
fn take_signals() -> std::io::Result<(OwnedFd, libc::sigset_t)> {
    // SAFETY: sigset manipulation on local values; the supervisor is single-threaded here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return Err(err);
        }
        Ok((OwnedFd::from_raw_fd(fd), old))
    }
}

fn exit_code(status: libc::c_int) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

fn describe_exit(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        format!("was killed by signal {signal}{}", signal_name(signal).map(|n| format!(" ({n})")).unwrap_or_default())
    } else {
        format!("ended with wait status {status}")
    }
}

fn signal_name(signal: libc::c_int) -> Option<&'static str> {
    Some(match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        _ => return None,
    })
}
