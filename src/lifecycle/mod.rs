//! The process around the server: the listening socket, signals and the order of startup and
//! shutdown.
//!
//! Startup order is what the platform's TCP startup probe relies on: the app is imported (in
//! Python, before `serve` is called) and the Python threads are running before the port opens.

pub mod container;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ServerConfig;
use crate::http::{self, ServerOptions};
use crate::telemetry::{access, log, metrics, sink};
use crate::wsgi::Pool;

/// How long Python threads get to return after the connections have drained.
const THREAD_GRACE: Duration = Duration::from_millis(500);

pub fn run(py: Python<'_>, app: Py<PyAny>, config: ServerConfig) -> PyResult<()> {
    start_telemetry(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .thread_name("coldbrew-io")
        .build()?;
    let (pool, handler) = Pool::start(py, app, &config, runtime.handle().clone())?;
    let metrics_listener = match &config.metrics_bind {
        Some((host, port)) => Some(bind(host, *port, 128).map_err(|err| {
            PyRuntimeError::new_err(format!("cannot listen for metrics on {host}:{port}: {err}"))
        })?),
        None => None,
    };
    let listener = bind(&config.host, config.port, config.backlog)?;
    let local = listener.local_addr()?;
    let startup = process_age();
    metrics::set_startup_seconds(startup.map_or(0.0, |d| d.as_secs_f64()));
    log::info(format_args!(
        "coldbrew {} serving WSGI app {} on http://{} with {} thread(s){}",
        env!("CARGO_PKG_VERSION"),
        config.app_spec,
        display_addr(local),
        config.threads,
        startup.map(|d| format!("; port open {} ms after exec", d.as_millis())).unwrap_or_default()
    ));

    let options = ServerOptions {
        graceful_timeout: config.graceful_timeout,
        header_read_timeout: config.header_read_timeout,
        observe: true,
        label: "",
    };
    let finished = py.detach(move || {
        let served = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let (stopping, stop) = tokio::sync::watch::channel(false);
            if let Some(metrics_listener) = metrics_listener {
                let listener = tokio::net::TcpListener::from_std(metrics_listener)?;
                let mut stop = stop.clone();
                tokio::spawn(metrics::serve(listener, async move {
                    let _ = stop.wait_for(|&s| s).await;
                }));
            }
            let signal = shutdown_signal()?;
            let shutdown = async move {
                signal.await;
                let _ = stopping.send(true);
            };
            Ok::<_, std::io::Error>(http::serve(listener, Arc::new(handler), options, shutdown).await)
        });
        // Dropping the runtime drops every connection and with them the queue's last sender,
        // which tells the Python threads to finish.
        runtime.shutdown_timeout(Duration::from_millis(100));
        served.map(|_| pool.join(THREAD_GRACE))
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

/// Time since this process was exec'd, from /proc (10 ms resolution).
fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let age = uptime - start_ticks / ticks;
    (age >= 0.0).then(|| Duration::from_secs_f64(age))
}

/// Resolves when SIGTERM or SIGINT arrives.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::info(format_args!("{name} received: no new connections, finishing in-flight requests"));
    })
}

fn bind(host: &str, port: u16, backlog: i32) -> std::io::Result<std::net::TcpListener> {
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
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}
