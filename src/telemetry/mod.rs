//! Telemetry, kept off the request path: log lines and access-log entries go through a bounded
//! queue to a writer thread (`sink`); trace context comes from the request headers (`trace`).

pub mod access;
pub mod log;
pub mod metrics;
pub mod sink;
pub mod trace;

pub use trace::TraceContext;
