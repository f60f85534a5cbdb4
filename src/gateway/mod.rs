//! What the two Python interfaces share, below them and above the HTTP layer: how a request
//! body reaches Python ([`body`]) and what both need from the interpreter besides the app
//! call ([`python`]), large response bodies handed to the I/O thread without a copy
//! ([`shared_bytes`]), responses handed to it a batch per wake ([`outbox`]), and how a request
//! is named in log lines. `wsgi` and `asgi` each add only
//! their own way of calling the app.

mod body;
mod outbox;
mod python;
mod shared_bytes;

pub(crate) use body::{body_timed_out, close_after_unread_body, concat, next_data, read_body, refuse_body, BodyError, ReadAhead, RequestBody};
pub(crate) use outbox::{Outbox, Wake};
pub(crate) use python::{format_traceback, python_stack, python_thread_ident};
pub use python::RequestTrace;
pub(crate) use shared_bytes::{release_finished as release_shared_bytes, share as share_bytes};

use http::Method;

/// `GET /path`, kept for log lines about a request after its parts were handed on.
pub(crate) struct RequestLine {
    pub method: Method,
    pub uri: http::Uri,
}

impl std::fmt::Display for RequestLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.uri.path())
    }
}
