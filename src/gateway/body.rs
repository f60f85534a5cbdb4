//! Request bodies as both Python interfaces receive them: read ahead in full when small, so
//! a slow uploader never holds a Python thread or the event loop, or streamed from the
//! connection on demand, with `--limit-request-body` and `--body-timeout` applied either way.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::StatusCode;
use http_body::Body;
use hyper::body::Incoming;

use crate::config::ServerConfig;
use crate::http::{self as proto, ConnInfo};
use crate::telemetry::metrics;

/// A request body as the Python side receives it: read ahead in full when small, so a slow
/// uploader never holds a Python thread, or streamed from the connection on demand.
pub(crate) enum RequestBody {
    Empty,
    Complete(Bytes),
    /// `head` was read ahead; the rest is still on the connection, and at most `allowed`
    /// more bytes of it may come (`limit` is `--limit-request-body`, 0 for none).
    Streaming { head: Bytes, rest: Incoming, allowed: u64, limit: u64 },
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Malformed chunked framing, or the client went away mid-body.
    Read(hyper::Error),
    /// Longer than `--limit-request-body`.
    TooLarge(u64),
    /// A chunked trailer carried a field that frames or routes the message.
    Trailer(http::HeaderName),
    /// No body bytes arrived for this long (`--body-timeout`).
    TooSlow(Duration),
}

impl BodyError {
    /// What the client is answered when the app has not been called yet.
    pub(crate) fn rejection(&self) -> proto::Rejection {
        match self {
            BodyError::Read(err) => proto::Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("malformed or incomplete request body ({})", error_chain(err)),
            ),
            BodyError::TooLarge(limit) => proto::too_large(*limit),
            BodyError::Trailer(name) => {
                proto::Rejection::new(StatusCode::BAD_REQUEST, format!("{name} is not allowed in a chunked trailer"))
            }
            BodyError::TooSlow(limit) => proto::Rejection::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("no request body bytes arrived for {} s (--body-timeout)", limit.as_secs_f64()),
            ),
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rejection().reason)
    }
}

/// An error and its causes, `outer: inner: innermost`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Fields a chunked trailer must not carry: they frame or route the message (RFC 9110
/// section 6.5.1). The app never sees trailers; one with these fields is malformed, most
/// likely an attempt to get framing past a front end that merges trailers into the head.
fn forbidden_trailer(trailers: &http::HeaderMap) -> Option<http::HeaderName> {
    [CONTENT_LENGTH, TRANSFER_ENCODING, HOST].into_iter().find(|name| trailers.contains_key(name))
}

/// The next data chunk of a body, `None` at its end. At most `allowed` bytes may still come;
/// `allowed` is decreased by what arrives.
pub(crate) async fn next_data(
    body: &mut Incoming,
    allowed: &mut u64,
    limit: u64,
    timeout: Option<Duration>,
) -> Result<Option<Bytes>, BodyError> {
    loop {
        match next_frame(body, timeout).await? {
            None => return Ok(None),
            Some(frame) => match frame.into_data() {
                Ok(data) if !data.is_empty() => {
                    *allowed = allowed.checked_sub(data.len() as u64).ok_or(BodyError::TooLarge(limit))?;
                    return Ok(Some(data));
                }
                Ok(_) => {}
                Err(frame) => {
                    if let Some(name) = frame.trailers_ref().and_then(forbidden_trailer) {
                        return Err(BodyError::Trailer(name));
                    }
                }
            },
        }
    }
}


/// The answer to a body that could not be read ahead: the app is not called, one line is
/// logged, and the connection closes.
pub(crate) fn refuse_body(parts: &http::request::Parts, conn: &ConnInfo, err: BodyError) -> proto::Response {
    let refused = err.rejection();
    proto::log_refused("", conn, &parts.method, &parts.uri, &refused);
    refused.response()
}



/// How much of a body is read before the app runs, and how long a gap between its pieces may be.
#[derive(Clone, Copy)]
pub(crate) struct ReadAhead {
    pub limit: usize,
    pub timeout: Option<Duration>,
    /// `--limit-request-body`; 0 = none.
    pub body_limit: u64,
}

impl ReadAhead {
    /// `--request-buffer`, `--body-timeout` and `--limit-request-body`.
    pub(crate) fn from_config(config: &ServerConfig) -> Self {
        ReadAhead { limit: config.request_buffer, timeout: config.body_timeout, body_limit: config.limits.body }
    }
}

/// Marks a response whose head goes out before the request body was read to its end. The rest
/// of that body will be dropped unread, and hyper then closes the connection after the
/// response; saying so in the head lets the client send its next request on a new
/// connection instead of into one that is about to close. An app that reads the rest while
/// its response streams loses only the reuse of the connection.
pub(crate) fn close_after_unread_body(response: &mut proto::Response) {
    proto::close_connection(response);
}

/// 408 for a body that stopped arriving; the rest of it is still on the connection, so the
/// connection closes.
pub(crate) fn body_timed_out(limit: Duration) -> proto::Response {
    let mut response = proto::plain(
        StatusCode::REQUEST_TIMEOUT,
        format!("Request Timeout: no request body bytes arrived for {} s\n", limit.as_secs_f64()),
    );
    proto::close_connection(&mut response);
    response
}

/// The next frame of a body, waiting at most `limit` for it. The timer is only made when the
/// frame is not already there, so a body that came with its head costs none.
pub(crate) async fn next_frame(body: &mut Incoming, limit: Option<Duration>) -> Result<Option<http_body::Frame<Bytes>>, BodyError> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
            return std::task::Poll::Ready(frame.transpose().map_err(BodyError::Read));
        }
        let Some(limit) = limit else { return std::task::Poll::Pending };
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).map(|()| Err(BodyError::TooSlow(limit)))
    })
    .await
}

/// Reads up to `limit` bytes of the body before the app runs. A client that sent
/// `Expect: 100-continue` is never read ahead: the interim response goes out only when the app
/// asks for the body. A body over `ahead.body_limit` (0: none) is refused here if it gets that
/// far; one with a `Content-Length` over it never reaches this point.
pub(crate) async fn read_body(parts: &http::request::Parts, mut incoming: Incoming, ahead: ReadAhead) -> Result<RequestBody, BodyError> {
    let limit = ahead.limit;
    let body_limit = ahead.body_limit;
    if incoming.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let mut allowed = if body_limit == 0 { u64::MAX } else { body_limit };
    let declared = incoming.size_hint().exact();
    let expects_continue = parts.headers.contains_key(EXPECT);
    if expects_continue || declared.is_some_and(|n| n > limit as u64) {
        return Ok(RequestBody::Streaming { head: Bytes::new(), rest: incoming, allowed, limit: body_limit });
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    loop {
        if total > limit {
            metrics::body_bytes_in(total as u64);
            return Ok(RequestBody::Streaming { head: concat(chunks, total), rest: incoming, allowed, limit: body_limit });
        }
        match next_data(&mut incoming, &mut allowed, body_limit, ahead.timeout).await? {
            None => break,
            Some(data) => {
                total += data.len();
                chunks.push(data);
            }
        }
    }
    metrics::body_bytes_in(total as u64);
    let body = concat(chunks, total);
    Ok(if body.is_empty() { RequestBody::Empty } else { RequestBody::Complete(body) })
}

/// The chunks as one buffer; a single chunk is passed on without a copy.
pub(crate) fn concat(mut chunks: Vec<Bytes>, total: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap(),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    }
}
