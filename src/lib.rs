//! coldbrew: a Python application server with a Rust I/O core.
//!
//! - [`http`]: the protocol layer (hyper on tokio), which knows nothing about Python;
//! - [`wsgi`]: the WSGI interface (PEP 3333) and the Python thread pool;
//! - [`asgi`]: the ASGI 3 interface and the worker's event loop;
//! - [`lifecycle`]: the listening socket, signals, startup and shutdown order;
//! - [`config`]: the typed settings;
//! - [`telemetry`]: the server's own logs, the access log and the metrics;
//! - [`clock`]: the clock readings a request takes, and what is derived from them.

pub mod asgi;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod http;
pub mod lifecycle;
pub mod telemetry;
pub mod wsgi;

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Binds the app's address (and `--metrics-bind`) without listening, so that an address in use
/// is reported before the app is imported. Returns the sockets for `serve` or `supervise`.
#[pyfunction]
fn bind(config: &Bound<'_, PyAny>) -> PyResult<lifecycle::Sockets> {
    let config = config::ServerConfig::from_py(config)?;
    Ok(lifecycle::Sockets { bound: Some(lifecycle::bind_sockets(&config)?) })
}

/// Serves `app` until a stop signal, then drains and returns. `worker` is the link a forked
/// worker got from `supervise`; otherwise `sockets` are what `bind` returned (bound now if
/// None). `timings` is how long the app's import and warm-up took, in seconds, and `started`
/// the `time.monotonic()` at which the interpreter began running coldbrew, for the startup
/// report.
#[pyfunction]
#[pyo3(signature = (app, config, *, worker=None, sockets=None, timings=(0.0, 0.0), started=None))]
fn serve(
    py: Python<'_>,
    app: Py<PyAny>,
    config: &Bound<'_, PyAny>,
    worker: Option<&Bound<'_, lifecycle::WorkerLink>>,
    sockets: Option<&Bound<'_, lifecycle::Sockets>>,
    timings: (f64, f64),
    started: Option<f64>,
) -> PyResult<()> {
    let config = config::ServerConfig::from_py(config)?;
    let mut sockets = sockets.map(|s| s.borrow_mut());
    match worker {
        Some(worker) => lifecycle::run(py, app, config, Some(&mut worker.borrow_mut()), None, timings, started),
        None => lifecycle::run(py, app, config, None, sockets.as_deref_mut(), timings, started),
    }
}

/// Runs the supervisor of `config.workers` worker processes on `sockets` (from `bind`; bound
/// now if None). Returns `(exit status, reason, traceback)` in the supervisor once the server
/// has stopped (reason and traceback are None after a clean stop), and a `Worker` link in each
/// forked worker, which goes on to import the app (unless preloaded) and call
/// `serve(..., worker=link)`.
#[pyfunction]
#[pyo3(signature = (config, sockets=None, started=None))]
fn supervise(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    sockets: Option<&Bound<'_, lifecycle::Sockets>>,
    started: Option<f64>,
) -> PyResult<Py<PyAny>> {
    let config = config::ServerConfig::from_py(config)?;
    let mut sockets = sockets.map(|s| s.borrow_mut());
    match lifecycle::supervise(py, &config, sockets.as_deref_mut(), started)? {
        lifecycle::Outcome::Exit(status, failure) => {
            let (line, traceback) = failure.map_or((None, None), |f| (Some(f.line), f.traceback));
            Ok((status, line, traceback).into_pyobject(py)?.into_any().unbind())
        }
        lifecycle::Outcome::Worker(link) => Ok(Py::new(py, link)?.into_any()),
    }
}

/// Writes one line to the server log, so the Python front end logs like the core does.
#[pyfunction]
fn log(level: &str, message: &str) -> PyResult<()> {
    let level = telemetry::log::Level::parse(level).ok_or_else(|| PyValueError::new_err(format!("invalid log level: {level:?}")))?;
    telemetry::log::emit(level, format_args!("{message}"));
    Ok(())
}

/// Sets the level below which log lines are dropped.
#[pyfunction]
fn set_log_level(level: &str) -> PyResult<()> {
    let level = telemetry::log::Level::parse(level).ok_or_else(|| PyValueError::new_err(format!("invalid log level: {level:?}")))?;
    telemetry::log::set_level(level);
    Ok(())
}

/// Sets how log lines are written (`text` or `json`) and the project that qualifies trace ids.
#[pyfunction]
fn set_log_format(format: &str, project: &str) -> PyResult<()> {
    let format = match format {
        "text" => telemetry::log::Format::Text,
        "json" => telemetry::log::Format::Json,
        other => return Err(PyValueError::new_err(format!("invalid log format: {other:?}"))),
    };
    telemetry::log::set_format(format);
    telemetry::log::set_project(project);
    Ok(())
}

/// Writes one record from the app's `logging` through the log writer (JSON mode).
#[pyfunction]
#[pyo3(signature = (levelno, message, logger, pathname, lineno, function, trace=None))]
fn emit_app_log(
    levelno: i64,
    message: String,
    logger: String,
    pathname: Option<String>,
    lineno: u32,
    function: String,
    trace: Option<&Bound<'_, PyAny>>,
) {
    let trace = trace.and_then(|t| t.cast::<gateway::RequestTrace>().ok()).map(|t| t.get().0);
    let source = pathname.map(|file| telemetry::log::SourceLocation { file, line: lineno, function });
    telemetry::log::emit_app(telemetry::log::Level::from_python(levelno), message, logger, source, trace);
}

/// What the container allows this process (cgroup CPU quota and memory limit, affinity, online
/// cores) and the default worker count with its reason. `cgroup_root` replaces the cgroup
/// mounts with a made-up tree (tests); `web_concurrency` is the `WEB_CONCURRENCY` value, if set.
#[pyfunction]
#[pyo3(signature = (cgroup_root=None, web_concurrency=None))]
fn container_resources(py: Python<'_>, cgroup_root: Option<PathBuf>, web_concurrency: Option<String>) -> PyResult<Py<PyDict>> {
    let r = lifecycle::container::probe(cgroup_root.as_deref());
    let (workers, reason) = lifecycle::container::default_workers(web_concurrency.as_deref(), &r).map_err(PyValueError::new_err)?;
    let dict = PyDict::new(py);
    dict.set_item("cpu_quota", r.cpu_quota)?;
    dict.set_item("cpu_quota_source", r.cpu_quota_source)?;
    dict.set_item("memory_limit", r.memory_limit)?;
    dict.set_item("affinity", r.affinity)?;
    dict.set_item("cores", r.cores)?;
    dict.set_item("cgroup_version", r.cgroup_version)?;
    dict.set_item("workers", workers)?;
    dict.set_item("workers_reason", reason)?;
    Ok(dict.unbind())
}

#[pymodule(gil_used = true)]
fn _coldbrew(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(supervise, m)?)?;
    m.add_function(wrap_pyfunction!(bind, m)?)?;
    m.add_class::<lifecycle::Sockets>()?;
    m.add_class::<lifecycle::WorkerLink>()?;
    m.add_function(wrap_pyfunction!(log, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(emit_app_log, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_format, m)?)?;
    m.add_function(wrap_pyfunction!(container_resources, m)?)?;
    m.add_class::<gateway::RequestTrace>()?;
    m.add_class::<asgi::Bridge>()?;
    m.add_class::<asgi::HttpCycle>()?;
    m.add_class::<asgi::Ready>()?;
    m.add_class::<asgi::WebSocketCycle>()?;
    m.add_class::<wsgi::FileWrapper>()?;
    m.add_class::<wsgi::InputStream>()?;
    m.add_class::<wsgi::ErrorStream>()?;
    Ok(())
}
