//! Telemetry, kept off the request path: log lines and access-log entries go through a bounded
//! queue to a writer thread (`sink`); trace context comes from the request headers (`trace`),
//! found with the other headers telemetry reads in one pass (`request_headers`).

pub mod access;
pub mod log;
pub mod metrics;
pub mod request_headers;
pub mod shedding;
pub mod sink;
mod text_line;
pub mod trace;

pub use trace::TraceContext;
