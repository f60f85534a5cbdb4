//! The HTTP protocol layer: sockets, hyper connections and response bodies.
//!
//! Nothing here knows about Python. A Python interface (WSGI now, ASGI later) plugs in by
//! implementing [`Handler`]: it receives a parsed request and resolves to a response whose body
//! is a [`ResponseBody`].

mod body;
mod server;

use std::future::Future;
use std::net::SocketAddr;

pub use body::{ChunkSender, Closed, ResponseBody};
pub use server::{serve, ServerOptions};

pub type Request = hyper::Request<hyper::body::Incoming>;
pub type Response = hyper::Response<ResponseBody>;

/// What a handler knows about the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// An application interface, called once per request on the I/O thread.
///
/// The future must not block: an implementation hands the request to another thread (the WSGI
/// thread pool) and awaits the answer.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, request: Request, conn: ConnInfo) -> impl Future<Output = Response> + Send + use<Self>;
}

/// A short plain-text response for answers the server gives itself.
pub fn plain(status: http::StatusCode, text: &'static str) -> Response {
    let mut response = hyper::Response::new(ResponseBody::full(bytes::Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// 503 with `Retry-After`, for load the server sheds instead of queueing without bound.
pub fn overloaded() -> Response {
    let mut response = plain(http::StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}
