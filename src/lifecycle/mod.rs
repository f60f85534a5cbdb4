//! The process around the server: the listening socket, signals, worker processes and the
//! order of startup and shutdown.
//!
//! Startup order is what the platform's TCP startup probe relies on: the app is imported (in
//! Python, before `serve` is called) and the Python threads are running before the port opens.
//! The port is bound ([`bind_sockets`]) before the import, though, so that an address in use
//! is reported at once rather than after a long import. With one worker, one process does
//! everything ([`run`] listens on the bound socket and serves). With more, the [`supervisor`]
//! forks the workers and makes the socket listen once every worker reports ready; each worker
//! then serves the inherited socket through [`run`].

pub mod container;
mod memory;
mod supervisor;
mod worker;

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ServerConfig;
use crate::http::{self, ConnInfo, Handler, ServerOptions, Stop};
use crate::telemetry::{access, log, metrics, sink};
use crate::asgi::EventLoop;
use crate::config::Interface;
use crate::wsgi::Pool;

pub use supervisor::{supervise, Failure, Outcome};
pub use worker::WorkerLink;
use worker::Recycler;

/// How long Python threads get to return after the connections have drained.
const THREAD_GRACE: Duration = Duration::from_millis(500);

/// The app's socket and the metrics socket, bound but not listening yet. Python gets them
/// from `bind()` before it imports the app and hands them to `serve()` or `supervise()`.
#[pyclass(module = "coldbrew._coldbrew", name = "Sockets")]
pub struct Sockets {
    pub(crate) bound: Option<BoundSockets>,
}

pub struct BoundSockets {
    pub app: Socket,
    pub metrics: Option<Socket>,
}

impl Sockets {
    /// The sockets themselves: bound by `bind()`, or now if there were none.
    pub(crate) fn take_or_bind(sockets: Option<&mut Sockets>, config: &ServerConfig) -> PyResult<BoundSockets> {
        match sockets.and_then(|s| s.bound.take()) {
            Some(bound) => Ok(bound),
            None => bind_sockets(config),
        }
    }
}

/// Binds the app's address and `--metrics-bind` without listening: no connection is accepted
/// before the app can answer, but an address that is taken fails here, before the import.
pub fn bind_sockets(config: &ServerConfig) -> PyResult<BoundSockets> {
    let app = bind_socket(&config.host, config.port).map_err(os_error)?;
    let metrics = match &config.metrics_bind {
        Some((host, port)) => Some(bind_socket(host, *port).map_err(|err| metrics_error(host, *port, &err))?),
        None => None,
    };
    Ok(BoundSockets { app, metrics })
}

/// The one line for a `--metrics-bind` address that cannot be had.
fn metrics_error(host: &str, port: u16, err: &std::io::Error) -> PyErr {
    PyRuntimeError::new_err(format!("cannot listen for metrics on {host}:{port}: {}", reason(err)))
}

/// An OSError that carries the errno, so that Python can name the reason in its own words
/// ("Address already in use") rather than Rust's ("... (os error 98)").
fn os_error(err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => pyo3::exceptions::PyOSError::new_err((code, reason(&err))),
        None => err.into(),
    }
}

/// An I/O error as the one line of an error message says it: without Rust's "(os error N)".
fn reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match (err.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_owned(),
        _ => text,
    }
}

/// Serves `app` until a stop signal. `link` is set in a worker process forked by the
/// supervisor, which owns the port; otherwise this process listens on `sockets` (bound now if
/// not given). `timings` are the import and warm-up seconds and `started` the
/// `time.monotonic()` at which the interpreter began running coldbrew, for the startup report.
pub fn run(
    py: Python<'_>,
    app: Py<PyAny>,
    config: ServerConfig,
    link: Option<&mut WorkerLink>,
    sockets: Option<&mut Sockets>,
    timings: (f64, f64),
    started: Option<f64>,
) -> PyResult<()> {
    let mut inherited = match link {
        Some(link) => Some(link.take().ok_or_else(|| PyRuntimeError::new_err("this worker link was already used"))?),
        None => None,
    };
    if let Some(shared) = inherited.as_mut().and_then(|i| i.metrics.take()) {
        metrics::use_shared(shared.0, shared.1);
    }
    start_telemetry(&config)?;
    raise_fd_limit();
    memory::keep_freed_memory();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_name("coldbrew-io")
        .build()?;
    match config.interface {
        Interface::Wsgi | Interface::Unresolved => {
            let (pool, handler) = Pool::start(py, app, &config, runtime.handle().clone())?;
            serve_with(py, config, runtime, handler, move |_| pool.join(THREAD_GRACE), inherited, sockets, timings, started)
        }
        Interface::Asgi => match EventLoop::start(py, app, &config)? {
            Ok((event_loop, handler)) => {
                let graceful = config.graceful_timeout;
                serve_with(py, config, runtime, handler, move |elapsed| event_loop.join(graceful.saturating_sub(elapsed)), inherited, sockets, timings, started)
            }
            Err(reason) => {
                log::error(format_args!("{reason}"));
                sink::flush(LOG_FLUSH);
                Err(pyo3::exceptions::PySystemExit::new_err(3))
            }
        },
    }
}

/// Serves through `handler` until a stop signal; `finish` then waits for the interface's
/// Python side, given how long the stop has taken so far.
#[allow(clippy::too_many_arguments)]
fn serve_with<H: Handler>(
    py: Python<'_>,
    config: ServerConfig,
    runtime: tokio::runtime::Runtime,
    handler: H,
    finish: impl FnOnce(Duration) -> bool + Send,
    mut inherited: Option<worker::Inherited>,
    sockets: Option<&mut Sockets>,
    timings: (f64, f64),
    started: Option<f64>,
) -> PyResult<()> {
    // Before the port opens: a stop asked for the moment the port is open (a platform, a test)
    // must find the handlers in place, not the default action, which ends the process at once.
    let signal = {
        let _runtime = runtime.enter();
        stop_signal()?
    };
    // One per process, for the whole process: the flag outlives every connection task.
    let draining: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let recycler = match &inherited {
        // The jitter spreads recycling out; on its own it recycles nothing.
        Some(inherited) if config.max_requests > 0 => {
            inherited.recycler(config.max_requests + jitter(config.max_requests_jitter))?
        }
        Some(_) => None,
        None => None,
    };
    let handler = Arc::new(Guarded {
        inner: handler,
        health_path: config.health_path.clone(),
        draining,
        recycler,
    });

    let (listener, metrics_listener) = match &mut inherited {
        Some(inherited) => {
            let listener = std::net::TcpListener::from(inherited.listener.take().ok_or_else(|| PyRuntimeError::new_err("no inherited socket"))?);
            let metrics_listener = inherited.metrics_listener.take().map(std::net::TcpListener::from);
            inherited.report_ready(timings)?;
            // The supervisor says go once every worker is ready and the socket listens.
            if !py.detach(|| inherited.wait_for_go()) {
                // The server is stopping (another worker failed, say) or the supervisor is gone; it
                // says why, so this is not news.
                log::debug(format_args!("stopped before this worker started serving; exiting"));
                return Ok(());
            }
            (listener, metrics_listener)
        }
        None => {
            let bound = Sockets::take_or_bind(sockets, &config)?;
            if let (Some(socket), Some((host, port))) = (&bound.metrics, &config.metrics_bind) {
                socket.listen(128).map_err(|err| metrics_error(host, *port, &err))?;
            }
            bound.app.listen(config.backlog).map_err(os_error)?;
            let listener = std::net::TcpListener::from(bound.app);
            let metrics_listener = bound.metrics.map(std::net::TcpListener::from);
            let startup = since_start(started);
            metrics::set_startup_seconds(startup.map_or(0.0, |d| d.as_secs_f64()));
            startup_report(&Startup {
                config: &config,
                address: listener.local_addr().map(display_addr).unwrap_or_default(),
                workers: 1,
                import_seconds: timings.0,
                warmup_seconds: timings.1,
                open_after: startup,
            });
            (listener, metrics_listener)
        }
    };
    for socket in [Some(&listener), metrics_listener.as_ref()].into_iter().flatten() {
        socket.set_nonblocking(true)?;
    }

    let options = ServerOptions {
        graceful_timeout: config.graceful_timeout,
        header_read_timeout: config.header_read_timeout,
        send_timeout: config.send_timeout,
        keep_alive: config.keep_alive,
        observe: true,
        label: "",
        draining,
        trusted_proxies: Arc::new(config.forwarded_allow_ips.clone()),
        limits: config.limits,
        protocols: config.protocols,
        title_case: config.interface != crate::config::Interface::Asgi,
    };
    let finished = py.detach(move || {
        let stop_began = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
        let stop_mark = stop_began.clone();
        let served = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let (stopping, stop) = tokio::sync::watch::channel(None);
            if let Some(metrics_listener) = metrics_listener {
                let listener = tokio::net::TcpListener::from_std(metrics_listener)?;
                let mut stop = stop.clone();
                tokio::spawn(metrics::serve(listener, async move {
                    let _ = stop.wait_for(|s| s.is_some()).await;
                    stop.borrow().unwrap_or(Stop::Graceful)
                }));
            }
            let shutdown = async move {
                let how = signal.await;
                *stop_mark.lock().unwrap() = Some(std::time::Instant::now());
                let _ = stopping.send(Some(how));
                how
            };
            Ok::<_, std::io::Error>(http::serve(listener, handler, options, shutdown).await)
        });
        // Dropping the runtime drops every connection and with them the queue's last sender,
        // which tells the Python threads to finish.
        runtime.shutdown_timeout(Duration::from_millis(100));
        // Access-log lines of the last responses wait in this (the I/O) thread's batch.
        access::flush_thread();
        let elapsed = stop_began.lock().unwrap().map_or(Duration::ZERO, |at| at.elapsed());
        served.map(|_| finish(elapsed))
    })?;
    if !finished {
        log::warn(format_args!("requests still running after the graceful timeout; exiting"));
        sink::flush(LOG_FLUSH);
        std::process::exit(0);
    }
    log::info(format_args!("shutdown complete"));
    sink::flush(LOG_FLUSH);
    Ok(())
}

/// What the server answers before the app: the health path, and the request count that
/// triggers recycling.
struct Guarded<H> {
    inner: H,
    health_path: Option<String>,
    draining: &'static AtomicBool,
    recycler: Option<Recycler>,
}

impl<H: Handler> Handler for Guarded<H> {
    fn call(&self, request: http::Request, conn: ConnInfo) -> impl Future<Output = http::Response> + Send + use<H> {
        let health = self.health_path.as_deref().is_some_and(|path| request.uri().path() == path);
        let answer = if health {
            // While draining the platform should route elsewhere; the app is never asked.
            Some(if self.draining.load(Ordering::Relaxed) {
                http::plain(::http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                http::plain(::http::StatusCode::OK, "ok\n")
            })
        } else {
            if let Some(recycler) = &self.recycler {
                recycler.count();
            }
            None
        };
        let inner = answer.is_none().then(|| self.inner.call(request, conn));
        async move {
            match (answer, inner) {
                (Some(answer), _) => answer,
                (None, Some(inner)) => inner.await,
                (None, None) => unreachable!("either the health answer or the app's"),
            }
        }
    }

    fn stopping(&self, graceful_timeout: Duration) {
        self.inner.stopping(graceful_timeout);
    }
}

/// A random 0..=`max` from the clock and the pid: enough to spread workers' recycling.
fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let seed = nanos ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    seed % (max + 1)
}

/// What the startup report line says.
pub(crate) struct Startup<'a> {
    pub config: &'a ServerConfig,
    pub address: String,
    pub workers: usize,
    pub import_seconds: f64,
    pub warmup_seconds: f64,
    /// From when the interpreter began running coldbrew to the open port.
    pub open_after: Option<Duration>,
}

/// The one startup line: version, interface, address, workers × threads and why, the memory
/// limit, and where the time to the open port went. The limits are those found when the
/// workers were sized, not read again.
pub(crate) fn startup_report(startup: &Startup<'_>) {
    let config = startup.config;
    let resources = container::probed(config.cgroup_root.as_deref());
    let memory = resources.memory_limit.map_or_else(|| "no memory limit".to_owned(), |m| format!("memory limit {}", format_bytes(m)));
    let why = if config.workers_reason.is_empty() { String::new() } else { format!(" ({})", config.workers_reason) };
    let (interface, per_worker) = match config.interface {
        crate::config::Interface::Wsgi => ("WSGI", format!("{} thread(s)", config.threads)),
        crate::config::Interface::Asgi => ("ASGI", "one event loop (--threads has no use for ASGI)".to_owned()),
        // A supervisor that did not import the app: each worker resolves it.
        crate::config::Interface::Unresolved => ("", format!("{} thread(s) if WSGI, one event loop if ASGI", config.threads)),
    };
    let interface_why = if config.interface_reason.is_empty() { String::new() } else { format!(" ({})", config.interface_reason) };
    log::info(format_args!(
        "coldbrew {} serving {interface}{}app {}{interface_why} on http://{} with {} worker(s) x {per_worker}{}; {}; import {} ms, warm-up {} ms{}",
        env!("CARGO_PKG_VERSION"),
        if interface.is_empty() { "" } else { " " },
        config.app_spec,
        startup.address,
        startup.workers,
        why,
        memory,
        (startup.import_seconds * 1000.0).round(),
        (startup.warmup_seconds * 1000.0).round(),
        startup.open_after.map(|d| format!(", port open {} ms after coldbrew started", d.as_millis())).unwrap_or_default()
    ));
}

fn format_bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else {
        format!("{} MiB", n / MIB)
    }
}

/// How long shutdown waits for queued log lines to be written.
const LOG_FLUSH: Duration = Duration::from_secs(2);

fn start_telemetry(config: &ServerConfig) -> PyResult<()> {
    log::set_level(config.log_level);
    log::set_format(config.log_format);
    log::set_project(&config.gcp_project);
    let mut access_file = None;
    if let Some(path) = &config.access_logfile {
        access::enable(&config.access_logformat).map_err(PyValueError::new_err)?;
        if path != "-" {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|err| PyValueError::new_err(format!("cannot open the access log file {path}: {err}")))?;
            access_file = Some(file);
        }
    }
    if config.metrics_bind.is_some() {
        metrics::enable();
    }
    sink::start(access_file);
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as Go programs and nginx do: every
/// connection is a descriptor, idle keep-alive connections from a proxy included, and a soft
/// limit of 1024 (still common) would refuse connections long before memory runs short.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            log::debug(format_args!("open files limit raised from {before} to {}", limit.rlim_max));
        }
    }
}

/// Time since `started`, a reading of `time.monotonic()` (CLOCK_MONOTONIC) that coldbrew's
/// package takes as the interpreter begins to run it.
///
/// Not the process's start time in /proc: that is when it was forked, and a start-up script
/// that ends in `exec coldbrew` is the same process, forked before everything the script did.
/// No clock records the exec itself; the first reading coldbrew's own code can take comes
/// after it by only the interpreter's own start-up.
pub(crate) fn since_start(started: Option<f64>) -> Option<Duration> {
    let started = started.filter(|s| s.is_finite() && *s >= 0.0)?;
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec passed.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return None;
    }
    let elapsed = now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9 - started;
    (elapsed >= 0.0).then(|| Duration::from_secs_f64(elapsed))
}

/// Resolves when a stop signal arrives: TERM asks for a graceful stop, INT and QUIT for a
/// fast one. The signals a supervisor acts on (HUP, TTIN, TTOU) and USR1/USR2 are logged and
/// otherwise ignored here: left at their default action they would end or suspend the process
/// mid-request.
fn stop_signal() -> std::io::Result<impl Future<Output = Stop>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut ignored = Vec::new();
    for (number, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
    ] {
        let mut stream = signal(SignalKind::from_raw(number))?;
        ignored.push(tokio::spawn(async move {
            while stream.recv().await.is_some() {
                log::info(format_args!("{name} received and ignored: this process has no supervisor to act on it"));
            }
        }));
    }
    Ok(async move {
        let (name, how) = tokio::select! {
            _ = term.recv() => ("SIGTERM", Stop::Graceful),
            _ = int.recv() => ("SIGINT", Stop::Immediate),
            _ = quit.recv() => ("SIGQUIT", Stop::Immediate),
        };
        for task in ignored {
            task.abort();
        }
        match how {
            Stop::Graceful => log::info(format_args!("{name} received: no new connections, finishing in-flight requests")),
            Stop::Immediate => log::info(format_args!("{name} received: stopping now")),
        }
        how
    })
}

/// A TCP socket bound to `host:port`, not yet listening: the supervisor binds before it forks
/// and listens once the workers are ready.
pub(crate) fn bind_socket(host: &str, port: u16) -> std::io::Result<Socket> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("no address for {host}")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

pub(crate) fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}
