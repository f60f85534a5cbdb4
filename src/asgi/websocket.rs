//! ASGI websockets (RFC 6455, with permessage-deflate from RFC 7692).
//!
//! yawc frames the connection: masking, control frames, answers to pings, the echo of a close,
//! compression. Above it, coldbrew joins fragments into messages, checks their size and their
//! UTF-8 (failing fast, in the fragment that breaks it), keeps the connection alive with its
//! own pings, and hands whole messages across a [`Link`] that bounds both directions: the I/O
//! task reads no further while the app has [`INBOUND_MESSAGES`] unread, and the app's `send()`
//! waits while more than `--response-buffer` bytes of its messages are not yet on the socket.
//!
//! The handshake is the app's to answer. The handler checks the request, works out the
//! `Sec-WebSocket-Accept` and the agreed extensions ([`offer`]), and waits: the app's
//! `websocket.accept` makes the 101, its `websocket.close` before that a 403, and the
//! `websocket.http.response` extension any other response. Once the 101 is written, the HTTP
//! layer hands the socket to [`run`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Sink;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use tokio::sync::{oneshot, watch};
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, Options, Role, WebSocketError};

use super::cycle::{flag, message_type, read_headers, ready, resolve, CycleShared};
use crate::gateway::RequestLine;
use crate::http::{self as proto, ResponseBody, Switched};
use crate::telemetry::log::{self, Level};
use crate::telemetry::{metrics, TraceContext};

/// Messages from the client the app may leave unread before the I/O task stops reading (and
/// TCP holds the client back).
const INBOUND_MESSAGES: usize = 8;
/// How long a closing handshake may wait for the client's answering close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// RFC 6455's codes for what the app is told when no close frame came.
const ABNORMAL: u16 = 1006;
const NO_STATUS: u16 = 1005;
const GOING_AWAY: u16 = 1001;
/// The timer's period when it has nothing to time.
const IDLE_TIMER: Duration = Duration::from_secs(3600);

/// The websocket settings of a worker (`--ws-*`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
    pub max_size: usize,
    pub outbound_limit: usize,
}

impl Settings {
    fn options(&self) -> Options {
        // One frame may be as large as a whole message; yawc refuses a frame that reaches
        // its limit, so the limit is one past the largest allowed.
        // The client's window: 15 bits when its offer leaves the value to the server (yawc
        // would pick the smallest, 9, which costs compression ratio for nothing).
        // An empty message goes out uncompressed: yawc's deflate flush waits for zlib's sync
        // marker, which zlib (unlike miniz) does not write again for no new input, so an
        // empty message after another spun forever.
        Options::default()
            .with_max_payload_read(self.max_size.saturating_add(1))
            .with_balanced_compression()
            .with_client_max_window_bits(15)
            .with_compression_threshold(1)
    }
}

/// What the handler worked out from a valid handshake, for the app's answer.
pub(crate) struct Handshake {
    accept: HeaderValue,
    pub(crate) extensions: Option<HeaderValue>,
}

/// A websocket put to the app.
pub(crate) struct Offer {
    pub(crate) handshake: Handshake,
    pub(crate) link: Arc<Link>,
}

/// Whether a request asks for a websocket: `Some` with the handshake to put to the app, or
/// the response to one that cannot be answered; `None` for any other request.
pub(crate) fn handshake(parts: &http::request::Parts, settings: &Settings) -> Option<Result<Handshake, proto::Response>> {
    let upgrade = parts.headers.get(http::header::UPGRADE)?;
    let websocket = upgrade.as_bytes().split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !websocket || parts.method != http::Method::GET || parts.extensions.get::<proto::UpgradeSlot>().is_none() {
        return None;
    }
    let mut request = http::Request::new(());
    *request.headers_mut() = parts.headers.clone();
    let refused = |status: StatusCode, why: &str| {
        let mut response = proto::plain(status, format!("{why}\n"));
        if status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(http::header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        Some(Err(response))
    };
    let asks_upgrade = parts.headers.get_all(http::header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !asks_upgrade {
        return refused(StatusCode::BAD_REQUEST, "a websocket handshake needs Connection: upgrade");
    }
    // yawc agrees to one offer at a time: the client's offers, in its order of preference,
    // are put to it one by one until one is agreed.
    let offers = deflate_offers(&parts.headers);
    request.headers_mut().remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
    let (response, _) = match yawc::HttpWebSocket::upgrade_with_options(&mut request, settings.options()) {
        Ok(answer) => answer,
        Err(WebSocketError::InvalidSecWebsocketVersion) => {
            return refused(StatusCode::UPGRADE_REQUIRED, "this server speaks websocket version 13");
        }
        Err(err) => return refused(StatusCode::BAD_REQUEST, &format!("invalid websocket handshake: {err}")),
    };
    let accept = response.headers().get(http::header::SEC_WEBSOCKET_ACCEPT)?.clone();
    let mut extensions = None;
    for offer in offers {
        let Ok(value) = HeaderValue::from_str(&offer) else { continue };
        request.headers_mut().insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value);
        let agreed = yawc::HttpWebSocket::upgrade_with_options(&mut request, settings.options())
            .ok()
            .and_then(|(response, _)| response.headers().get(http::header::SEC_WEBSOCKET_EXTENSIONS).cloned());
        if let Some(agreed) = agreed {
            // RFC 7692 section 7.1.2.2: no client_max_window_bits in the answer to an offer
            // without it (the client then uses 15, as yawc assumes without the parameter).
            let offered_bits = offer.split(';').any(|param| param.trim().split('=').next().map(str::trim) == Some("client_max_window_bits"));
            extensions = match agreed.to_str() {
                Ok(text) if !offered_bits => HeaderValue::from_str(&text.replace("; client_max_window_bits=15", "")).ok(),
                _ => Some(agreed),
            };
            break;
        }
    }
    Some(Ok(Handshake { accept, extensions }))
}

/// The client's permessage-deflate offers, in its order of preference.
fn deflate_offers(headers: &HeaderMap) -> Vec<String> {
    let offers = headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|value| value.to_str().ok());
    offers
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|offer| offer.split(';').next().map(str::trim) == Some("permessage-deflate"))
        .map(str::to_owned)
        .collect()
}

/// A message of either direction.
enum Message {
    Text(String),
    Binary(Bytes),
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.len(),
            Message::Binary(data) => data.len(),
        }
    }
}

/// What the app hands the I/O task.
enum Outgoing {
    Message(Message),
    Close(u16, String),
}

struct LinkState {
    inbound: VecDeque<Message>,
    outbound: VecDeque<Outgoing>,
    outbound_bytes: usize,
    /// The connection has ended, and the code and reason the app is told.
    ended: Option<(u16, String)>,
    /// The app is done with the connection (returned, raised, or closed it and left).
    abandoned: bool,
    io: Option<Waker>,
}

/// What the I/O task and the loop thread share about one websocket.
pub(crate) struct Link {
    state: Mutex<LinkState>,
    settings: Settings,
    /// The loop side's waker: the request's cycle.
    app: Waker,
}

impl Link {
    pub(crate) fn new(settings: Settings, app: Waker) -> Self {
        Link {
            state: Mutex::new(LinkState {
                inbound: VecDeque::new(),
                outbound: VecDeque::new(),
                outbound_bytes: 0,
                ended: None,
                abandoned: false,
                io: None,
            }),
            settings,
            app,
        }
    }

    fn wake_io(state: &mut LinkState) {
        if let Some(waker) = state.io.take() {
            waker.wake();
        }
    }

    /// The app's side is finished: the I/O task closes what is still open.
    fn abandon(&self) {
        let mut state = self.state.lock().unwrap();
        state.abandoned = true;
        Link::wake_io(&mut state);
    }
}

// ------------------------------------------------------------------------------------------
// The I/O thread's side.

/// How the I/O task ended the connection.
enum Ending {
    /// The client sent a close frame, which yawc echoed.
    ClientClosed(u16, String),
    /// The app (or the server's stop) sent a close frame.
    ServerClosed,
    /// A protocol violation: the close frame with this code went out.
    Failed(u16, String),
    /// The socket broke, or the client stopped answering pings.
    Dropped(&'static str),
}

/// Serves a switched connection until it closes, telling the app what arrives. `ending`
/// changes when the server stops: the connection is then closed with 1001.
pub(crate) async fn run(io: Switched, link: Arc<Link>, extensions: Option<String>, mut ending: watch::Receiver<bool>) {
    let settings = link.settings;
    let reserved = Arc::new(AtomicU8::new(0));
    let io = OpcodeGuard { io, reserved: reserved.clone(), partial: HeaderSoFar::default(), payload: 0 };
    let ws = match yawc::WebSocket::from_stream_with_extensions(io, Role::Server, extensions.as_deref(), settings.options()) {
        Ok(ws) => ws,
        Err(err) => {
            log::warn(format_args!("cannot start a websocket: {err}"));
            finish(&link, (ABNORMAL, String::new()));
            return;
        }
    };
    metrics::websocket_open(1);
    let _open = OpenGauge;
    let mut conn = Conn {
        ws: ws.into_streaming(),
        link: link.clone(),
        assembling: None,
        unflushed: false,
        closing_since: None,
        awaiting_pong: None,
        ping_count: 0,
        reserved,
        timer: Box::pin(tokio::time::sleep(settings.ping_interval.unwrap_or(IDLE_TIMER))),
    };
    let stopping = async {
        let _ = ending.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopping);
    let mut stopped = false;
    let ending = std::future::poll_fn(|cx| {
        if !stopped && stopping.as_mut().poll(cx).is_ready() {
            stopped = true;
            conn.close_for_stop();
        }
        conn.poll(cx)
    })
    .await;
    let told = match ending {
        Ending::ClientClosed(code, reason) => (code, reason),
        Ending::ServerClosed => {
            let state = link.state.lock().unwrap();
            state.ended.clone().unwrap_or((1000, String::new()))
        }
        Ending::Failed(code, reason) => {
            log::info(format_args!("websocket closed with {code}: {reason}"));
            (code, reason)
        }
        Ending::Dropped(why) => {
            log::debug(format_args!("websocket dropped: {why}"));
            (ABNORMAL, String::new())
        }
    };
    finish(&link, told);
}

/// Counts a websocket open until dropped.
struct OpenGauge;

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::websocket_open(-1);
    }
}

/// Marks the link ended (unless the app already knows how) and tells the app.
fn finish(link: &Link, told: (u16, String)) {
    let mut state = link.state.lock().unwrap();
    if state.ended.is_none() {
        state.ended = Some(told);
    }
    state.outbound.clear();
    state.outbound_bytes = 0;
    drop(state);
    link.app.wake_by_ref();
}

/// A message being reassembled from its fragments.
struct Assembling {
    text: bool,
    data: BytesMut,
    /// How much of `data` is known to be valid UTF-8 (text only).
    checked: usize,
}

struct Conn {
    ws: yawc::streaming::Streaming<OpcodeGuard>,
    /// A frame with a reserved opcode arrived (the opcode), seen by the [`OpcodeGuard`].
    reserved: Arc<AtomicU8>,
    link: Arc<Link>,
    assembling: Option<Assembling>,
    unflushed: bool,
    /// A close frame went out: waiting for the client's.
    closing_since: Option<tokio::time::Instant>,
    awaiting_pong: Option<tokio::time::Instant>,
    ping_count: u64,
    /// The next ping, pong deadline or closing deadline.
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Conn {
    fn close_for_stop(&mut self) {
        let mut state = self.link.state.lock().unwrap();
        if state.ended.is_none() {
            state.ended = Some((GOING_AWAY, String::new()));
            // The app learns now, while the client is sent its close.
            state.outbound.push_back(Outgoing::Close(GOING_AWAY, "server shutting down".into()));
            drop(state);
            self.link.app.wake_by_ref();
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        loop {
            if let Poll::Ready(ending) = self.poll_write(cx) {
                return Poll::Ready(ending);
            }
            match self.poll_read(cx) {
                Poll::Ready(Some(ending)) => return Poll::Ready(ending),
                // A frame the app may want, or a pong: look at the writes again.
                Poll::Ready(None) => continue,
                Poll::Pending => {}
            }
            if let Some(ending) = self.poll_timer(cx) {
                return Poll::Ready(ending);
            }
            return Poll::Pending;
        }
    }

    /// Moves what the app sent into yawc, flushes it, and tells the app of room.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        let mut state = self.link.state.lock().unwrap();
        if state.abandoned && state.outbound.is_empty() && self.closing_since.is_none() {
            // The app left without closing: close for it.
            let code = state.ended.as_ref().map_or(1000, |(code, _)| *code);
            let code = if CloseCode::from(code).is_allowed() { code } else { 1000 };
            state.outbound.push_back(Outgoing::Close(code, String::new()));
        }
        let was_full = state.outbound_bytes > self.link.settings.outbound_limit;
        let mut moved = false;
        while self.closing_since.is_none() && !state.outbound.is_empty() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ending::Dropped(WRITE_FAILED)),
                Poll::Pending => break,
            }
            let frame = match state.outbound.pop_front().unwrap() {
                Outgoing::Message(message) => {
                    state.outbound_bytes -= message.len();
                    metrics::websocket_message(false);
                    match message {
                        Message::Text(text) => Frame::text(text),
                        Message::Binary(data) => Frame::binary(data),
                    }
                }
                Outgoing::Close(code, reason) => {
                    let now = tokio::time::Instant::now();
                    self.closing_since = Some(now);
                    self.timer.as_mut().reset(now + CLOSE_WAIT);
                    Frame::close(CloseCode::from(code), reason)
                }
            };
            if Pin::new(&mut self.ws).start_send(frame).is_err() {
                return Poll::Ready(Ending::Dropped(WRITE_FAILED));
            }
            moved = true;
        }
        let has_room = state.outbound_bytes <= self.link.settings.outbound_limit;
        state.io = Some(cx.waker().clone());
        drop(state);
        if moved && was_full && has_room {
            self.link.app.wake_by_ref();
        }
        self.unflushed |= moved;
        if self.unflushed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Ending::Dropped(WRITE_FAILED)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Reads one frame if the app has room for it. `Ready(None)`: a frame was handled.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Ending>> {
        if self.closing_since.is_none() {
            let state = self.link.state.lock().unwrap();
            if state.inbound.len() >= INBOUND_MESSAGES && !state.abandoned {
                // The app wakes the task when it takes one.
                return Poll::Pending;
            }
        }
        let frame = match self.ws.poll_next_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(frame)) => frame,
            Poll::Ready(Err(WebSocketError::ConnectionClosed)) if self.reserved.load(Ordering::Relaxed) != 0 => {
                let reason = format!("a frame with the reserved opcode {:#x}", self.reserved.load(Ordering::Relaxed) & 0x0f);
                if Pin::new(&mut self.ws).start_send(Frame::close(CloseCode::Protocol, &reason)).is_ok() {
                    self.flush_close(cx);
                }
                return Poll::Ready(Some(Ending::Failed(1002, reason)));
            }
            Poll::Ready(Err(WebSocketError::ConnectionClosed)) => {
                return Poll::Ready(Some(match self.closing_since {
                    Some(_) => Ending::ServerClosed,
                    None => Ending::Dropped("the client closed the connection without a close frame"),
                }));
            }
            Poll::Ready(Err(err)) if err.is_io_error() => return Poll::Ready(Some(Ending::Dropped("the connection broke"))),
            Poll::Ready(Err(err)) => {
                // yawc has queued the close frame for this error; send it before leaving.
                let code = match err {
                    WebSocketError::FrameTooLarge => 1009,
                    WebSocketError::InvalidUTF8 => 1007,
                    _ => 1002,
                };
                self.flush_close(cx);
                return Poll::Ready(Some(Ending::Failed(code, err.to_string())));
            }
        };
        match frame.opcode() {
            OpCode::Close if frame.payload().len() > 125 => {
                // A control frame carries at most 125 bytes (RFC 6455 section 5.5); yawc would
                // echo it as it is. The connection is failed instead, without an echo.
                Poll::Ready(Some(Ending::Failed(1002, "a close frame longer than 125 bytes".into())))
            }
            OpCode::Close => {
                if self.closing_since.is_some() {
                    // The answer to the app's (or the stop's) close: the handshake is done.
                    return Poll::Ready(Some(Ending::ServerClosed));
                }
                let code = frame.close_code().map_or(NO_STATUS, u16::from);
                let reason = frame.close_reason().ok().flatten().unwrap_or("").to_owned();
                // yawc queued the echo; it goes out before the socket closes.
                self.flush_close(cx);
                Poll::Ready(Some(Ending::ClientClosed(code, reason)))
            }
            OpCode::Pong => {
                self.awaiting_pong = None;
                Poll::Ready(None)
            }
            OpCode::Ping => Poll::Ready(None),
            _ if self.closing_since.is_some() => Poll::Ready(None),
            opcode => match self.assemble(opcode, frame.is_fin(), frame.into_payload()) {
                Ok(()) => Poll::Ready(None),
                Err((code, reason)) => {
                    if Pin::new(&mut self.ws).start_send(Frame::close(CloseCode::from(code), reason)).is_ok() {
                        self.flush_close(cx);
                    }
                    Poll::Ready(Some(Ending::Failed(code, reason.to_owned())))
                }
            },
        }
    }

    /// Writes what is queued (yawc's close or echo) once, as far as the socket takes it now.
    fn flush_close(&mut self, cx: &mut Context<'_>) {
        if let Poll::Ready(Ok(())) = Pin::new(&mut self.ws).poll_ready(cx) {
            let _ = Pin::new(&mut self.ws).poll_flush(cx);
        }
    }

    /// Adds a data frame to the message it belongs to, and hands a complete message over.
    fn assemble(&mut self, opcode: OpCode, fin: bool, payload: Bytes) -> Result<(), (u16, &'static str)> {
        let max = self.link.settings.max_size;
        let message = match (opcode, self.assembling.take()) {
            (OpCode::Continuation, None) => return Err((1002, "a continuation frame with no message to continue")),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err((1002, "a new message before the last one ended")),
            (OpCode::Text | OpCode::Binary, None) if fin => {
                if payload.len() > max {
                    return Err((1009, "message too big"));
                }
                if opcode == OpCode::Text {
                    match String::from_utf8(payload.into()) {
                        Ok(text) => Message::Text(text),
                        Err(_) => return Err((1007, "a text message that is not UTF-8")),
                    }
                } else {
                    Message::Binary(payload)
                }
            }
            (OpCode::Text | OpCode::Binary, None) => {
                let mut assembling = Assembling { text: opcode == OpCode::Text, data: BytesMut::new(), checked: 0 };
                append(&mut assembling, &payload, max)?;
                self.assembling = Some(assembling);
                return Ok(());
            }
            (OpCode::Continuation, Some(mut assembling)) => {
                append(&mut assembling, &payload, max)?;
                if !fin {
                    self.assembling = Some(assembling);
                    return Ok(());
                }
                if assembling.text {
                    if assembling.checked != assembling.data.len() {
                        return Err((1007, "a text message that is not UTF-8"));
                    }
                    // SAFETY: every byte was checked as UTF-8 as it arrived.
                    Message::Text(unsafe { String::from_utf8_unchecked(assembling.data.to_vec()) })
                } else {
                    Message::Binary(assembling.data.freeze())
                }
            }
            _ => return Err((1002, "an unknown opcode")),
        };
        metrics::websocket_message(true);
        let mut state = self.link.state.lock().unwrap();
        if !state.abandoned {
            state.inbound.push_back(message);
            drop(state);
            self.link.app.wake_by_ref();
        }
        Ok(())
    }

    /// Keepalive pings, the pong deadline and the closing handshake's deadline.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Ending> {
        let settings = self.link.settings;
        loop {
            let timer = &mut self.timer;
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = tokio::time::Instant::now();
            if let Some(since) = self.closing_since {
                if now >= since + CLOSE_WAIT {
                    return Some(Ending::ServerClosed);
                }
                timer.as_mut().reset(since + CLOSE_WAIT);
                continue;
            }
            if let Some(since) = self.awaiting_pong {
                if now >= since + settings.ping_timeout {
                    return Some(Ending::Dropped("no pong within --ws-ping-timeout"));
                }
            }
            let Some(interval) = settings.ping_interval else {
                timer.as_mut().reset(now + IDLE_TIMER);
                continue;
            };
            if self.awaiting_pong.is_none() {
                self.ping_count += 1;
                let sent = match Pin::new(&mut self.ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => Pin::new(&mut self.ws).start_send(Frame::ping(self.ping_count.to_be_bytes().to_vec())).is_ok(),
                    _ => false,
                };
                if sent {
                    self.awaiting_pong = Some(now);
                    self.unflushed = true;
                    let _ = Pin::new(&mut self.ws).poll_flush(cx);
                }
            }
            let next = match self.awaiting_pong {
                Some(since) => (since + settings.ping_timeout).min(now + interval),
                None => now + interval,
            };
            self.timer.as_mut().reset(next);
        }
    }
}

/// The socket as yawc reads it, stopped at the first frame whose opcode RFC 6455 reserves.
///
/// yawc fails such a frame with close code 1003 (unsupported data), which is for a message
/// type an endpoint does not take; a reserved opcode is a protocol error, 1002. So the frame
/// never reaches yawc: reading ends where it begins, and the connection is failed with 1002.
/// Only frame headers are looked at; payloads are counted past.
pub(crate) struct OpcodeGuard {
    io: Switched,
    /// The opcode seen (with 0x10 set, so that opcode 0 would show), or 0.
    reserved: Arc<AtomicU8>,
    /// The frame header being read.
    partial: HeaderSoFar,
    /// Payload bytes of the current frame still to come; then the next header starts.
    payload: u64,
}

/// The bytes of a frame header read so far.
#[derive(Default)]
struct HeaderSoFar {
    len: usize,
    bytes: [u8; 14],
}

impl OpcodeGuard {
    /// Follows `bytes` through frame headers and payloads; returns how many of them come
    /// before a frame with a reserved opcode, if one begins in them.
    fn follow(&mut self, bytes: &[u8], header: &mut HeaderSoFar) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.payload > 0 {
                let n = self.payload.min((bytes.len() - i) as u64);
                self.payload -= n;
                i += n as usize;
                continue;
            }
            if header.len == 0 {
                let opcode = bytes[i] & 0x0f;
                if matches!(opcode, 0x3..=0x7 | 0xb..=0xf) {
                    self.reserved.store(0x10 | opcode, Ordering::Relaxed);
                    return Some(i);
                }
            }
            header.bytes[header.len] = bytes[i];
            header.len += 1;
            i += 1;
            if header.len < 2 {
                continue;
            }
            let mask = if header.bytes[1] & 0x80 != 0 { 4 } else { 0 };
            let (extended, length) = match header.bytes[1] & 0x7f {
                126 => (2, None),
                127 => (8, None),
                n => (0, Some(u64::from(n))),
            };
            let full = 2 + extended + mask;
            if header.len < full {
                continue;
            }
            self.payload = length.unwrap_or_else(|| header.bytes[2..2 + extended].iter().fold(0u64, |n, b| n << 8 | u64::from(*b)));
            header.len = 0;
        }
        None
    }
}

impl tokio::io::AsyncRead for OpcodeGuard {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.reserved.load(Ordering::Relaxed) != 0 {
            // Read no further: the end of the stream, for yawc.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let mut header = std::mem::take(&mut self.partial);
        let stop = {
            let this = &mut *self;
            let filled = &buf.filled()[before..];
            this.follow(filled, &mut header)
        };
        self.partial = header;
        if let Some(at) = stop {
            buf.set_filled(before + at);
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for OpcodeGuard {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Appends a fragment, checking the size and, for text, the UTF-8 of what has arrived so far
/// (a sequence cut at the fragment's end may be completed by the next one).
fn append(assembling: &mut Assembling, payload: &[u8], max: usize) -> Result<(), (u16, &'static str)> {
    if assembling.data.len() + payload.len() > max {
        return Err((1009, "message too big"));
    }
    assembling.data.extend_from_slice(payload);
    if assembling.text {
        match std::str::from_utf8(&assembling.data[assembling.checked..]) {
            Ok(_) => assembling.checked = assembling.data.len(),
            Err(err) if err.error_len().is_none() => assembling.checked += err.valid_up_to(),
            Err(_) => return Err((1007, "a text message that is not UTF-8")),
        }
    }
    Ok(())
}

/// Why a websocket ended when a write to it failed.
const WRITE_FAILED: &str = "the connection broke while writing";

// ------------------------------------------------------------------------------------------
// The loop thread's side.

enum Phase {
    /// `websocket.connect` not yet received by the app.
    New,
    /// The app has been told of the connection and has not answered.
    Connecting,
    /// The app sent `websocket.http.response.start`: the denial's body follows.
    Denying { status: StatusCode, headers: HeaderMap, body: Vec<u8> },
    Accepted,
    /// The app closed, denied, or the connection ended.
    Closed,
}

/// One websocket's `receive` and `send`, on the loop thread.
#[pyclass(module = "coldbrew._coldbrew")]
pub struct WebSocketCycle {
    shared: Arc<CycleShared>,
    link: Arc<Link>,
    reply: Option<oneshot::Sender<proto::Response>>,
    accept: HeaderValue,
    extensions: Option<HeaderValue>,
    phase: Phase,
    waiting_receive: Option<Py<PyAny>>,
    blocked_send: Option<Py<PyAny>>,
    create_future: Py<PyAny>,
    line: RequestLine,
    trace: Option<TraceContext>,
}

impl WebSocketCycle {
    pub(crate) fn new(
        shared: Arc<CycleShared>,
        offer: Offer,
        reply: oneshot::Sender<proto::Response>,
        create_future: Py<PyAny>,
        line: RequestLine,
        trace: Option<TraceContext>,
    ) -> Self {
        WebSocketCycle {
            shared,
            link: offer.link,
            reply: Some(reply),
            accept: offer.handshake.accept,
            extensions: offer.handshake.extensions,
            phase: Phase::New,
            waiting_receive: None,
            blocked_send: None,
            create_future,
            line,
            trace,
        }
    }

    /// The I/O thread woke this cycle: a message arrived, there is room to send, or the
    /// connection ended.
    pub(crate) fn woken(&mut self, py: Python<'_>) {
        self.shared.queued.store(false, Ordering::Release);
        if self.shared.gone.load(Ordering::Acquire) && self.reply.is_some() {
            // The client left before the app answered the handshake.
            self.reply = None;
            self.phase = Phase::Closed;
            let mut state = self.link.state.lock().unwrap();
            state.ended.get_or_insert((ABNORMAL, String::new()));
        }
        if self.waiting_receive.is_some() {
            if let Some(message) = self.next_message(py) {
                let future = self.waiting_receive.take().unwrap();
                resolve(py, &future, message);
            }
        }
        if self.blocked_send.is_some() {
            let state = self.link.state.lock().unwrap();
            let outcome = if state.ended.is_some() && !matches!(self.phase, Phase::Closed) {
                Some(Err(client_disconnected()))
            } else if state.outbound_bytes <= self.link.settings.outbound_limit || state.ended.is_some() {
                Some(Ok(py.None()))
            } else {
                None
            };
            drop(state);
            if let Some(outcome) = outcome {
                let future = self.blocked_send.take().unwrap();
                resolve(py, &future, outcome);
            }
        }
    }

    /// The next message for the app, if there is one now.
    fn next_message(&mut self, py: Python<'_>) -> Option<PyResult<Py<PyAny>>> {
        if matches!(self.phase, Phase::New) {
            self.phase = Phase::Connecting;
            return Some(simple_message(py, "websocket.connect"));
        }
        let mut state = self.link.state.lock().unwrap();
        if let Some(message) = state.inbound.pop_front() {
            if state.inbound.len() + 1 == INBOUND_MESSAGES {
                Link::wake_io(&mut state);
            }
            drop(state);
            return Some(receive_message(py, message));
        }
        if let Some((code, reason)) = state.ended.clone() {
            drop(state);
            return Some(disconnect_message(py, code, &reason));
        }
        if matches!(self.phase, Phase::Closed) {
            // Denied before the handshake, or closed by the app: nothing more will come.
            return Some(disconnect_message(py, 1000, ""));
        }
        None
    }

    fn future(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.create_future.call0(py)
    }

    fn respond(&mut self, response: proto::Response) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(response);
        }
    }

    fn accept_message(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        if !matches!(self.phase, Phase::Connecting | Phase::New) {
            return Err(PyRuntimeError::new_err("websocket.accept sent after the handshake was answered"));
        }
        let py = message.py();
        let mut response = proto::Response::new(ResponseBody::full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        read_headers(message, headers)?;
        headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, self.accept.clone());
        if let Some(extensions) = &self.extensions {
            headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, extensions.clone());
        }
        if let Some(subprotocol) = message.get_item(pyo3::intern!(py, "subprotocol"))? {
            if !subprotocol.is_none() {
                let subprotocol: String = subprotocol.extract()?;
                let value = HeaderValue::from_str(&subprotocol).map_err(|_| PyValueError::new_err(format!("invalid subprotocol {subprotocol:?}")))?;
                headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
        if self.reply.is_none() {
            return Err(client_disconnected());
        }
        self.respond(response);
        self.phase = Phase::Accepted;
        Ok(())
    }

    fn send_message(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
        if !matches!(self.phase, Phase::Accepted) {
            return Err(match self.phase {
                Phase::Closed => client_disconnected(),
                _ => PyRuntimeError::new_err("websocket.send before websocket.accept"),
            });
        }
        if self.blocked_send.is_some() {
            return Err(PyRuntimeError::new_err("send() called again before the previous send() completed"));
        }
        let bytes = message.get_item(pyo3::intern!(py, "bytes"))?.filter(|v| !v.is_none());
        let text = message.get_item(pyo3::intern!(py, "text"))?.filter(|v| !v.is_none());
        let outgoing = match (bytes, text) {
            (Some(bytes), None) => {
                let bytes = bytes.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("websocket.send's bytes must be bytes"))?;
                Message::Binary(Bytes::copy_from_slice(bytes.as_bytes()))
            }
            (None, Some(text)) => {
                let text = text.cast::<PyString>().map_err(|_| PyTypeError::new_err("websocket.send's text must be a str"))?;
                Message::Text(text.to_str()?.to_owned())
            }
            _ => return Err(PyValueError::new_err("websocket.send needs exactly one of bytes and text")),
        };
        let mut state = self.link.state.lock().unwrap();
        if state.ended.is_some() {
            drop(state);
            self.phase = Phase::Closed;
            return Err(client_disconnected());
        }
        state.outbound_bytes += outgoing.len();
        state.outbound.push_back(Outgoing::Message(outgoing));
        let full = state.outbound_bytes > self.link.settings.outbound_limit;
        Link::wake_io(&mut state);
        drop(state);
        if !full {
            return ready(py, py.None());
        }
        let future = self.future(py)?;
        self.blocked_send = Some(future.clone_ref(py));
        Ok(future)
    }

    fn close_message(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let code: u16 = match message.get_item(pyo3::intern!(py, "code"))? {
            Some(code) if !code.is_none() => code.extract()?,
            _ => 1000,
        };
        let reason: String = match message.get_item(pyo3::intern!(py, "reason"))? {
            Some(reason) if !reason.is_none() => reason.extract()?,
            _ => String::new(),
        };
        match self.phase {
            Phase::New | Phase::Connecting => {
                // Closing before accepting denies the handshake (the spec's 403).
                self.respond(proto::plain(StatusCode::FORBIDDEN, "Forbidden\n"));
                self.phase = Phase::Closed;
                Ok(())
            }
            Phase::Accepted => {
                if !CloseCode::from(code).is_allowed() {
                    return Err(PyValueError::new_err(format!("{code} is not a close code an endpoint may send")));
                }
                if reason.len() > 123 {
                    return Err(PyValueError::new_err("a close reason must fit 123 bytes"));
                }
                let mut state = self.link.state.lock().unwrap();
                if state.ended.is_none() {
                    state.ended = Some((code, reason.clone()));
                    state.outbound.push_back(Outgoing::Close(code, reason));
                    Link::wake_io(&mut state);
                }
                drop(state);
                self.phase = Phase::Closed;
                Ok(())
            }
            Phase::Denying { .. } => Err(PyRuntimeError::new_err("websocket.close during a websocket.http.response")),
            Phase::Closed => Ok(()),
        }
    }

    fn denial_start(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<()> {
        if !matches!(self.phase, Phase::New | Phase::Connecting) {
            return Err(PyRuntimeError::new_err("websocket.http.response.start after the handshake was answered"));
        }
        let status: u16 = match message.get_item(pyo3::intern!(py, "status"))? {
            Some(status) => status.extract()?,
            None => return Err(PyValueError::new_err("websocket.http.response.start needs a status")),
        };
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| !s.is_informational())
            .ok_or_else(|| PyValueError::new_err(format!("invalid status {status} for a denial response")))?;
        let mut headers = HeaderMap::new();
        read_headers(message, &mut headers)?;
        self.phase = Phase::Denying { status, headers, body: Vec::new() };
        Ok(())
    }

    fn denial_body(&mut self, py: Python<'_>, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let Phase::Denying { body, .. } = &mut self.phase else {
            return Err(PyRuntimeError::new_err("websocket.http.response.body before websocket.http.response.start"));
        };
        if let Some(chunk) = message.get_item(pyo3::intern!(py, "body"))? {
            let chunk = chunk.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("websocket.http.response.body's body must be bytes"))?;
            body.extend_from_slice(chunk.as_bytes());
        }
        let more = flag(message, pyo3::intern!(py, "more_body"))?;
        if !more {
            let Phase::Denying { status, headers, body } = std::mem::replace(&mut self.phase, Phase::Closed) else { unreachable!() };
            let mut response = proto::Response::new(ResponseBody::full(Bytes::from(body)));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            self.respond(response);
        }
        Ok(())
    }

    /// The app is done: whatever it left open is closed for it.
    fn end(&mut self, status: StatusCode, close_code: u16) {
        self.shared.cycle.lock().unwrap().take();
        if self.reply.is_some() {
            self.respond(proto::plain(status, format!("{}\n", status.canonical_reason().unwrap_or(""))));
        } else if matches!(self.phase, Phase::Accepted) {
            let mut state = self.link.state.lock().unwrap();
            if state.ended.is_none() {
                state.ended = Some((close_code, String::new()));
            }
        }
        self.phase = Phase::Closed;
        self.link.abandon();
    }
}

#[pymethods]
impl WebSocketCycle {
    fn receive(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.waiting_receive.is_some() {
            return Err(PyRuntimeError::new_err("receive() called again before the previous receive() completed"));
        }
        if let Some(message) = self.next_message(py) {
            return ready(py, message?);
        }
        let future = self.future(py)?;
        self.waiting_receive = Some(future.clone_ref(py));
        Ok(future)
    }

    fn send(&mut self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let (message, kind) = message_type(message)?;
        let message = &message;
        let done = match kind.to_str()? {
            "websocket.send" => return self.send_message(py, message),
            "websocket.accept" => self.accept_message(message),
            "websocket.close" => self.close_message(py, message),
            "websocket.http.response.start" => self.denial_start(py, message),
            "websocket.http.response.body" => self.denial_body(py, message),
            other => Err(PyValueError::new_err(format!("unexpected ASGI message type {other:?} for a websocket"))),
        };
        done?;
        if matches!(self.phase, Phase::Closed) {
            if let Some(future) = self.waiting_receive.take() {
                if let Some(message) = self.next_message(py) {
                    resolve(py, &future, message);
                } else {
                    self.waiting_receive = Some(future);
                }
            }
        }
        ready(py, py.None())
    }

    /// The app's coroutine returned.
    fn returned(&mut self) {
        if self.reply.is_some() {
            log::emit_traced(Level::Info, self.trace, format_args!("{}: the ASGI app returned without accepting the websocket; answered 403", self.line));
        }
        self.end(StatusCode::FORBIDDEN, 1000);
    }

    /// The app's coroutine raised `error`, with `traceback` formatted.
    fn failed(&mut self, error: &Bound<'_, PyAny>, traceback: &str) {
        let ended = self.link.state.lock().unwrap().ended.is_some();
        if ended && error.is_instance_of::<PyOSError>() {
            log::emit_traced(Level::Debug, self.trace, format_args!("{}: the client went away: {traceback}", self.line));
        } else if self.reply.is_some() {
            log::emit_traced(Level::Error, self.trace, format_args!("error in ASGI app for websocket {}; answered 500:\n{traceback}", self.line));
        } else {
            log::emit_traced(Level::Error, self.trace, format_args!("error in ASGI app for websocket {}; closed with 1011:\n{traceback}", self.line));
        }
        self.end(StatusCode::INTERNAL_SERVER_ERROR, 1011);
    }

    #[getter]
    fn disconnected(&self) -> bool {
        self.link.state.lock().unwrap().ended.is_some()
    }
}

impl Drop for WebSocketCycle {
    fn drop(&mut self) {
        self.link.abandon();
    }
}

fn simple_message(py: Python<'_>, kind: &str) -> PyResult<Py<PyAny>> {
    let message = PyDict::new(py);
    message.set_item(pyo3::intern!(py, "type"), kind)?;
    Ok(message.into_any().unbind())
}

fn receive_message(py: Python<'_>, received: Message) -> PyResult<Py<PyAny>> {
    let message = PyDict::new(py);
    message.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "websocket.receive"))?;
    match received {
        Message::Text(text) => message.set_item(pyo3::intern!(py, "text"), text)?,
        Message::Binary(data) => message.set_item(pyo3::intern!(py, "bytes"), PyBytes::new(py, &data))?,
    }
    Ok(message.into_any().unbind())
}

fn disconnect_message(py: Python<'_>, code: u16, reason: &str) -> PyResult<Py<PyAny>> {
    let message = PyDict::new(py);
    message.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "websocket.disconnect"))?;
    message.set_item(pyo3::intern!(py, "code"), code)?;
    message.set_item(pyo3::intern!(py, "reason"), reason)?;
    Ok(message.into_any().unbind())
}

fn client_disconnected() -> PyErr {
    PyOSError::new_err("the websocket is closed")
}
