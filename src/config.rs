//! Server settings, read once from the Python `coldbrew.config.Config` object.
//!
//! Parsing and defaults live in Python (`coldbrew/config.py`), where the command line and the
//! environment are; this is the typed view the Rust core works with.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::http::forwarded::TrustedProxies;
use crate::http::Limits;
use crate::telemetry::log::{Format, Level};

/// `--keep-alive`: longer than the 600 s idle timeout of common load balancers, which must
/// always be the side that closes an idle connection.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(620);

/// `--max-pending`: with the default 8 threads, enough for Cloud Run's highest per-instance
/// concurrency (1000), so the platform's limit decides there, not this one.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// `--body-timeout`: as nginx's client_body_timeout.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// `--send-timeout`: as nginx's send_timeout.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// `--loop-block-warning`.
pub const DEFAULT_LOOP_BLOCK_WARNING: Duration = Duration::from_millis(500);

/// `--ws-ping-interval` and `--ws-ping-timeout`.
pub const DEFAULT_WS_PING: Duration = Duration::from_secs(20);

/// `--ws-max-size`.
pub const DEFAULT_WS_MAX_SIZE: usize = 16 << 20;

/// `--forwarded-allow-ips` when nothing sets it (and not on Cloud Run, where Python makes it `*`).
pub const DEFAULT_FORWARDED_ALLOW_IPS: &str = "127.0.0.1,::1";

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub app_spec: String,
    pub host: String,
    pub port: u16,
    pub threads: usize,
    pub workers: usize,
    pub graceful_timeout: Duration,
    pub root_path: String,
    pub response_buffer: usize,
    pub request_buffer: usize,
    pub backlog: i32,
    pub log_level: Level,
    /// Requests that may wait for a free Python thread before new ones get 503.
    pub max_pending: usize,
    /// `--header-timeout`: a request head must arrive within this once begun; `None` when 0.
    pub header_read_timeout: Option<Duration>,
    /// `--keep-alive`: how long a connection may wait idle for its next request; 0 = off.
    pub keep_alive: Duration,
    /// `--body-timeout`: the longest gap between pieces of a request body; `None` when 0.
    pub body_timeout: Option<Duration>,
    /// `--send-timeout`: the longest a client may read none of its response; `None` when 0.
    pub send_timeout: Option<Duration>,
    pub log_format: Format,
    /// Route the app's `logging` records through the JSON writer (JSON mode only).
    pub app_log_handler: bool,
    /// `None`: no access log; `Some("-")`: stdout; else a file path.
    pub access_logfile: Option<String>,
    pub access_logformat: String,
    pub gcp_project: String,
    pub metrics_bind: Option<(String, u16)>,
    /// Per-request deadline (`--timeout`); `None` when 0.
    pub timeout: Option<Duration>,
    /// Answered in Rust without entering the app (`--health-path`).
    pub health_path: Option<String>,
    /// Requests after which a worker asks to be replaced; 0 = never.
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// The app was imported in the supervisor before the fork.
    pub preload: bool,
    /// Why `workers` has its value, for the startup report.
    pub workers_reason: String,
    /// Where the container's cgroup files are, when not found through the mount table.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Peers whose forwarding headers are applied (`--forwarded-allow-ips`).
    pub forwarded_allow_ips: TrustedProxies,
    /// `--http`: which protocols the app's port speaks.
    pub protocols: crate::http::Protocols,
    /// `--limit-request-line`, `--limit-request-fields`, `--limit-request-field-size` and
    /// `--limit-request-body`.
    pub limits: Limits,
    /// `--interface`, as resolved when the app was loaded.
    pub interface: Interface,
    /// `--loop`: auto, asyncio or uvloop (ASGI).
    pub event_loop: String,
    /// `--lifespan`: auto, on or off (ASGI).
    pub lifespan: String,
    /// Why `interface` is what it is, for the startup line.
    pub interface_reason: String,
    /// `--loop-block-warning`; `None`: off.
    pub loop_block_warning: Option<Duration>,
    /// `--ws-ping-interval`; `None`: no pings.
    pub ws_ping_interval: Option<Duration>,
    /// `--ws-ping-timeout`.
    pub ws_ping_timeout: Duration,
    /// `--ws-max-size`.
    pub ws_max_size: usize,
}

/// Which Python interface the app is served through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Wsgi,
    Asgi,
    /// `auto` before the app was loaded (a supervisor that did not preload it).
    Unresolved,
}

impl ServerConfig {
    pub fn from_py(cfg: &Bound<'_, PyAny>) -> PyResult<Self> {
        let log_level: String = cfg.getattr("log_level")?.extract()?;
        let log_level = Level::parse(&log_level)
            .ok_or_else(|| PyValueError::new_err(format!("invalid log level: {log_level:?}")))?;
        let graceful: f64 = cfg.getattr("graceful_timeout")?.extract()?;
        if !(graceful.is_finite() && graceful >= 0.0) {
            return Err(PyValueError::new_err("graceful_timeout must be a non-negative number"));
        }
        let timeout: f64 = optional(cfg, "timeout")?.unwrap_or(0.0);
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(PyValueError::new_err("timeout must be a non-negative number"));
        }
        let threads: usize = cfg.getattr("threads")?.extract()?;
        if threads == 0 {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        Ok(ServerConfig {
            app_spec: cfg.getattr("app_spec")?.extract()?,
            host: cfg.getattr("host")?.extract()?,
            port: cfg.getattr("port")?.extract()?,
            threads,
            workers: optional(cfg, "workers")?.unwrap_or(1),
            graceful_timeout: Duration::from_secs_f64(graceful),
            root_path: cfg.getattr("root_path")?.extract()?,
            response_buffer: cfg.getattr("response_buffer")?.extract()?,
            request_buffer: cfg.getattr("request_buffer")?.extract()?,
            backlog: cfg.getattr("backlog")?.extract()?,
            log_level,
            max_pending: match optional::<usize>(cfg, "max_pending")? {
                None => DEFAULT_MAX_PENDING,
                Some(0) => return Err(PyValueError::new_err("max_pending must be at least 1")),
                Some(n) => n,
            },
            header_read_timeout: seconds(cfg, "header_timeout")?.map_or(Some(Duration::from_secs(30)), |d| (!d.is_zero()).then_some(d)),
            keep_alive: seconds(cfg, "keep_alive")?.unwrap_or(DEFAULT_KEEP_ALIVE),
            body_timeout: seconds(cfg, "body_timeout")?.map_or(Some(DEFAULT_BODY_TIMEOUT), |d| (!d.is_zero()).then_some(d)),
            send_timeout: seconds(cfg, "send_timeout")?.map_or(Some(DEFAULT_SEND_TIMEOUT), |d| (!d.is_zero()).then_some(d)),
            log_format: match optional::<String>(cfg, "log_format")?.as_deref() {
                None | Some("text") => Format::Text,
                Some("json") => Format::Json,
                Some(other) => return Err(PyValueError::new_err(format!("invalid log format: {other:?}"))),
            },
            app_log_handler: optional(cfg, "app_log_handler")?.unwrap_or(true),
            access_logfile: optional(cfg, "access_logfile")?,
            access_logformat: optional(cfg, "access_logformat")?
                .unwrap_or_else(|| crate::telemetry::access::DEFAULT_FORMAT.to_owned()),
            gcp_project: optional(cfg, "gcp_project")?.unwrap_or_default(),
            metrics_bind: match (optional::<String>(cfg, "metrics_host")?, optional::<u16>(cfg, "metrics_port")?) {
                (Some(host), Some(port)) => Some((host, port)),
                _ => None,
            },
            timeout: (timeout > 0.0).then(|| Duration::from_secs_f64(timeout)),
            health_path: optional(cfg, "health_path")?,
            max_requests: optional(cfg, "max_requests")?.unwrap_or(0),
            max_requests_jitter: optional(cfg, "max_requests_jitter")?.unwrap_or(0),
            preload: optional(cfg, "preload")?.unwrap_or(false),
            workers_reason: optional(cfg, "workers_reason")?.unwrap_or_default(),
            cgroup_root: optional::<String>(cfg, "cgroup_root")?.map(Into::into),
            forwarded_allow_ips: TrustedProxies::parse(
                optional::<String>(cfg, "forwarded_allow_ips")?.as_deref().unwrap_or(DEFAULT_FORWARDED_ALLOW_IPS),
            )
            .map_err(|err| PyValueError::new_err(format!("--forwarded-allow-ips: {err}")))?,
            limits: limits(cfg)?,
            interface: match optional::<String>(cfg, "interface")?.as_deref() {
                None | Some("auto") => Interface::Unresolved,
                Some("wsgi") => Interface::Wsgi,
                Some("asgi") => Interface::Asgi,
                Some(other) => return Err(PyValueError::new_err(format!("invalid --interface: {other:?}"))),
            },
            event_loop: optional(cfg, "loop")?.unwrap_or_else(|| "auto".to_owned()),
            lifespan: optional(cfg, "lifespan")?.unwrap_or_else(|| "auto".to_owned()),
            interface_reason: optional(cfg, "interface_reason")?.unwrap_or_default(),
            loop_block_warning: seconds(cfg, "loop_block_warning")?
                .map_or(Some(DEFAULT_LOOP_BLOCK_WARNING), |d| (!d.is_zero()).then_some(d)),
            ws_ping_interval: seconds(cfg, "ws_ping_interval")?.map_or(Some(DEFAULT_WS_PING), |d| (!d.is_zero()).then_some(d)),
            ws_ping_timeout: seconds(cfg, "ws_ping_timeout")?.unwrap_or(DEFAULT_WS_PING),
            ws_max_size: optional(cfg, "ws_max_size")?.unwrap_or(DEFAULT_WS_MAX_SIZE),
            protocols: match optional::<String>(cfg, "http")?.as_deref() {
                None | Some("auto") => crate::http::Protocols::Auto,
                Some("1") => crate::http::Protocols::Http1,
                Some("2") => crate::http::Protocols::Http2,
                Some(other) => return Err(PyValueError::new_err(format!("invalid --http: {other:?}"))),
            },
        })
    }
}

/// A number of seconds that may be missing or None; an error if negative or not finite.
fn seconds(cfg: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<Duration>> {
    match optional::<f64>(cfg, name)? {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s.min(1e9)))),
        Some(_) => Err(PyValueError::new_err(format!("{name} must be a non-negative number"))),
    }
}

/// The request limits; a missing attribute keeps its default.
fn limits(cfg: &Bound<'_, PyAny>) -> PyResult<Limits> {
    let default = Limits::default();
    let limits = Limits {
        request_line: optional(cfg, "limit_request_line")?.unwrap_or(default.request_line),
        fields: optional(cfg, "limit_request_fields")?.unwrap_or(default.fields),
        field_size: optional(cfg, "limit_request_field_size")?.unwrap_or(default.field_size),
        body: optional(cfg, "limit_request_body")?.unwrap_or(default.body),
    };
    if limits.fields == 0 {
        return Err(PyValueError::new_err("limit_request_fields must be at least 1"));
    }
    Ok(limits)
}

/// An attribute that may be missing or None.
fn optional<T>(cfg: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<T>>
where
    T: for<'a, 'py> FromPyObject<'a, 'py>,
{
    match cfg.getattr(name) {
        Ok(value) if !value.is_none() => Ok(Some(value.extract().map_err(Into::into)?)),
        _ => Ok(None),
    }
}
