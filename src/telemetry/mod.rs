//! Telemetry: the server's own log lines (and, later, access logs and metrics).

pub mod log;
