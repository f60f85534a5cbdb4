//! The HTTP protocol layer: sockets, hyper connections and response bodies.
//!
//! Nothing here knows about Python. A Python interface (WSGI now, ASGI later) plugs in by
//! implementing [`Handler`]: it receives a parsed request and resolves to a response whose body
//! is a [`ResponseBody`].

mod body;
pub mod forwarded;
mod checks;
mod connection;
mod header_case;
mod hyper_refusal;
mod server;
mod upgrade;
mod watchdog;

use std::future::Future;
use std::net::SocketAddr;

pub use body::{ChunkSender, Closed, ResponseBody};
pub use header_case::OriginalCase;
pub use checks::{log_refused, too_large, Limits, Rejection};
pub use server::{serve, Protocols, ServerOptions, Stop};
pub use upgrade::{Switched, Takeover, UpgradeSlot};

pub type Request = hyper::Request<hyper::body::Incoming>;
pub type Response = hyper::Response<ResponseBody>;

/// What a handler knows about the connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The client's address and port as text: the peer's, formatted once per connection
    /// instead of once per request, or what a trusted proxy forwarded for this request (the
    /// port is then empty unless the proxy gave one).
    pub peer_ip: AddrText,
    pub peer_port: AddrText,
    /// The peer is on `--forwarded-allow-ips`: its forwarding headers are applied.
    pub trusted_proxy: bool,
    /// A trusted proxy said the client used https.
    pub https: bool,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        ConnInfo {
            peer,
            local,
            peer_ip: AddrText::format(peer.ip()),
            peer_port: AddrText::format(peer.port()),
            trusted_proxy: false,
            https: false,
        }
    }

    /// This connection's view of one request: with a trusted peer, the client and scheme its
    /// forwarding headers name. Refused when those headers contradict each other.
    #[inline]
    pub fn for_request(&self, headers: &http::HeaderMap, trusted: &forwarded::TrustedProxies) -> Result<ConnInfo, forwarded::Refusal> {
        if !self.trusted_proxy {
            return Ok(*self);
        }
        let found = forwarded::resolve(headers, trusted)?;
        let mut conn = *self;
        if let Some((ip, port)) = found.client {
            conn.peer_ip = AddrText::format(ip.to_canonical());
            conn.peer_port = port.map_or(AddrText::EMPTY, AddrText::format);
        }
        conn.https = found.scheme == Some(forwarded::Scheme::Https);
        Ok(conn)
    }
}

/// A short piece of text (an IP address or a port) kept inline, without a heap allocation.
#[derive(Clone, Copy)]
pub struct AddrText {
    buf: [u8; AddrText::BLOCK],
    len: u8,
}

impl AddrText {
    pub const EMPTY: AddrText = AddrText { buf: [0; 46], len: 0 };

    pub(crate) fn format(value: impl std::fmt::Display) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 46];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // 46 bytes hold the longest IPv6 text form; anything longer is cut, never a panic.
        let _ = write!(cursor, "{value}");
        let len = cursor.position() as usize;
        // Addresses and ports print as ASCII; checking that once here lets `as_str`, which
        // runs for every request, skip the UTF-8 validation.
        let len = if buf[..len].is_ascii() { len as u8 } else { 0 };
        AddrText { buf, len }
    }

    pub fn as_str(&self) -> &str {
        let text = &self.buf[..self.len as usize];
        // SAFETY: `format` keeps only ASCII text, and EMPTY is empty.
        unsafe { std::str::from_utf8_unchecked(text) }
    }

    /// The size of [`AddrText::block`].
    pub const BLOCK: usize = 46;

    /// The text as the first `len` bytes of a fixed-size block, for copying as one piece.
    pub fn block(&self) -> (&[u8; Self::BLOCK], usize) {
        (&self.buf, self.len as usize)
    }
}

impl std::fmt::Debug for AddrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An application interface, called once per request on the I/O thread.
///
/// The future must not block: an implementation hands the request to another thread (the WSGI
/// thread pool) and awaits the answer.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, request: Request, conn: ConnInfo) -> impl Future<Output = Response> + Send + use<Self>;

    /// A graceful stop has begun: connections get `graceful_timeout` to finish. A handler
    /// whose responses may never end by themselves (streams, websockets) ends them in time.
    fn stopping(&self, _graceful_timeout: std::time::Duration) {}
}

/// A short plain-text response for answers the server gives itself.
pub fn plain(status: http::StatusCode, text: impl Into<bytes::Bytes>) -> Response {
    let mut response = hyper::Response::new(ResponseBody::full(text.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Says in `response`'s head that the connection closes after it (`Connection: close`).
pub fn close_connection(response: &mut Response) {
    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
}

/// 400 for forwarding headers from a trusted proxy that cannot be believed. The message is
/// well framed, so the connection (often a proxy's pooled one) stays open.
pub fn bad_forwarding(refusal: &forwarded::Refusal) -> Response {
    plain(http::StatusCode::BAD_REQUEST, format!("Bad Request: {refusal}\n"))
}

/// 503 with `Retry-After`, for load the server sheds instead of queueing without bound.
pub fn overloaded() -> Response {
    let mut response = plain(http::StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_formatted_once_per_connection() {
        let v4: SocketAddr = "203.0.113.7:51234".parse().unwrap();
        let conn = ConnInfo::new(v4, v4);
        assert_eq!(conn.peer_ip.as_str(), "203.0.113.7");
        assert_eq!(conn.peer_port.as_str(), "51234");
        let v6: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1".parse().unwrap();
        let conn = ConnInfo::new(v6, v6);
        assert_eq!(conn.peer_ip.as_str(), v6.ip().to_string());
    }
}
