//! What the two Python interfaces share, below them and above the HTTP layer: how a request
//! body reaches Python ([`body`]) and what both need from the interpreter besides the app
//! call ([`python`]). `wsgi` and `asgi` each add only their own way of calling the app.

mod body;
mod python;

pub(crate) use body::{body_timed_out, close_after_unread_body, concat, next_data, read_body, refuse_body, BodyError, ReadAhead, RequestBody};
pub(crate) use python::{format_traceback, python_stack, python_thread_ident};
pub use python::RequestTrace;
