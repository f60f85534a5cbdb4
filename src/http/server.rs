//! The accept loop and per-connection hyper state, with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::checks::{self, Limits};
use super::connection::{self, Graceful};
use super::forwarded::TrustedProxies;
use super::upgrade::UpgradeSlot;
use super::watchdog::{self, ConnClock, Tracked, Watched};
use super::{ConnInfo, Handler, OriginalCase};
use crate::telemetry::access::Observation;
use crate::telemetry::log;
use crate::telemetry::request_headers::TelemetryHeaders;

const SERVER_HEADER: http::HeaderValue = http::HeaderValue::from_static("coldbrew");

/// After a graceful stop begins, how long keep-alive connections may still bring a request
/// (answered with `Connection: close`) before the idle ones are closed. A client that is busy
/// on a connection gets a clean close instead of racing a reset against its next request.
const DRAIN_LINGER: Duration = Duration::from_millis(500);

/// The HTTP/2 connection preface (RFC 9113 section 3.4): how a client that speaks HTTP/2
/// over cleartext with prior knowledge (h2c, Cloud Run's end-to-end HTTP/2) starts.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams one HTTP/2 connection may have open at once. Cloud Run sends at most 1000
/// concurrent requests to an instance, over several connections.
const H2_MAX_STREAMS: u32 = 256;
/// Streams a client may open and reset before they were answered, before it gets GOAWAY
/// (rapid reset, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it gives up on the
/// connection (MadeYouReset, CVE-2025-8671).
const H2_MAX_LOCAL_RESETS: usize = 128;

/// Which protocols a listener speaks (`--http`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1, and HTTP/2 for connections that open with its preface.
    Auto,
    Http1,
    Http2,
}

/// How a server stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stop accepting, let in-flight requests finish within the graceful timeout.
    Graceful,
    /// Stop accepting and drop every connection now.
    Immediate,
}

/// Protocol settings for every connection.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How long in-flight requests may run after a shutdown begins.
    pub graceful_timeout: Duration,
    /// Wait for a full request head at most this long once its first byte arrived (slowloris
    /// guard); `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// How long the client may read none of a response before its connection is closed
    /// (`--send-timeout`); `None`: no limit.
    pub send_timeout: Option<Duration>,
    /// How long a connection may wait, idle, for its next request; zero turns keep-alive off
    /// (and then a new connection waits for its first request at most `header_read_timeout`).
    pub keep_alive: Duration,
    /// Trace context, access log and request metrics: off for the server's own side ports
    /// (metrics), whose requests are not the app's traffic.
    pub observe: bool,
    /// Names the listener in log lines ("" for the main one).
    pub label: &'static str,
    /// Set once a stop begins; from then on responses close their connection. One flag per
    /// listener for the life of the process, hence `'static`.
    pub draining: &'static AtomicBool,
    /// Peers whose forwarding headers are applied (`--forwarded-allow-ips`).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// `--limit-request-*`.
    pub limits: Limits,
    /// `--http`.
    pub protocols: Protocols,
    /// HTTP/1 response names in Title-Case, with the app's other spellings restored
    /// (`header_case.rs`): what WSGI apps write. ASGI apps write lower-case, as the spec
    /// requires, and hyper writes names as stored, lower-case, for nothing.
    pub title_case: bool,
}

/// Serves connections from `listener` until `shutdown` resolves. On [`Stop::Graceful`] it
/// stops accepting, answers what keep-alive connections still send for a moment with
/// `Connection: close`, then closes idle connections and lets the others finish their
/// in-flight requests for up to `graceful_timeout`. Returns the number of connections still
/// open (on [`Stop::Immediate`], all of them: dropping them is the caller's runtime's job).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: impl Future<Output = Stop>,
) -> usize {
    let local = canonical(listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(!options.keep_alive.is_zero())
        // Vectored writes queue the body next to the head. hyper's pipeline_flush would
        // switch to copying every body into one per-connection buffer that keeps its largest
        // size: 1 MiB responses at 64 connections held 74 MiB instead of 8 MiB.
        .writev(true)
        // Names as the app wrote them.
        .title_case_headers(options.title_case)
        // Timed per connection by the watchdog instead: hyper's timer would cost one per
        // request and would also cut idle keep-alive connections at the header timeout.
        .header_read_timeout(None);
    let deadlines = watchdog::Limits {
        idle: if options.keep_alive.is_zero() { options.header_read_timeout } else { Some(options.keep_alive) },
        head: options.header_read_timeout,
        send: options.send_timeout,
    };
    // hyper's own cap on a head is its read buffer, which a head that arrives in one large
    // read can overshoot; this one holds whatever the reads.
    builder.max_header_size(checks::MAX_HEAD);
    if options.limits.fields != checks::HYPER_MAX_HEADERS {
        // Other than hyper's default, the header array is allocated for every request head.
        builder.max_headers(options.limits.fields);
    }
    let h1 = Arc::new(builder);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(checks::MAX_HEAD as u32);
    let h2 = Arc::new(h2);
    let protocols = options.protocols;

    let graceful = Graceful::new();
    tokio::pin!(shutdown);

    let draining: &'static AtomicBool = options.draining;
    let observe = options.observe;
    let label = options.label;
    let limits = options.limits;
    let serve_connection = |stream: TcpStream, peer: SocketAddr| {
        let _ = stream.set_nodelay(true);
        let peer = canonical(peer);
        let mut conn_info = ConnInfo::new(peer, local);
        conn_info.trusted_proxy = options.trusted_proxies.trusts_peer(peer.ip());
        let trusted = options.trusted_proxies.clone();
        let handler = handler.clone();
        let clock = ConnClock::new();
        let service_clock = clock.clone();
        let slot = UpgradeSlot::default();
        let service_slot = slot.clone();
        let service = service_fn(move |mut req: super::Request| {
            let started = service_clock.request_started();
            if req.version() == http::Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE) {
                req.extensions_mut().insert(service_slot.clone());
            }
            let clock = service_clock.clone();
            let (conn_info, refused) = match conn_info.for_request(req.headers(), &trusted) {
                Ok(conn) => (conn, None),
                Err(refusal) => (conn_info, Some(refusal)),
            };
            let mut observation = None;
            if observe {
                let seen = TelemetryHeaders::scan(req.headers());
                let trace = seen.trace();
                observation = Observation::begin(&req, &seen, conn_info.peer_ip, trace, started);
                if let Some(trace) = trace {
                    req.extensions_mut().insert(trace);
                }
            }
            let declared = http_body::Body::size_hint(req.body()).exact();
            let refused = match refused {
                Some(refusal) => {
                    log::info(format_args!("{label}{} {} from {peer}: {refusal}; answered 400", req.method(), req.uri().path()));
                    Some(super::bad_forwarding(&refusal))
                }
                None => checks::check(req.method(), req.uri(), req.version(), req.headers(), declared, &limits)
                    .map_err(|refused| {
                        checks::log_refused(label, &conn_info, req.method(), req.uri(), &refused);
                        refused.response()
                    })
                    .err(),
            };
            // HTTP/2 has no Connection header: a stop ends its connections with GOAWAY.
            let http1 = req.version() < http::Version::HTTP_2;
            let fut = refused.is_none().then(|| handler.call(req, conn_info));
            async move {
                let mut response = match (refused, fut) {
                    (Some(refused), _) => refused,
                    (None, Some(fut)) => fut.await,
                    (None, None) => unreachable!("either refused or passed on"),
                };
                response.headers_mut().entry(http::header::SERVER).or_insert(SERVER_HEADER);
                if let Some(case) = response.extensions_mut().remove::<OriginalCase>() {
                    if http1 {
                        clock.restore_case(case);
                    }
                }
                if http1 && draining.load(Ordering::Relaxed) && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    // hyper closes the connection after a response that says so.
                    super::close_connection(&mut response);
                }
                if let Some(mut observation) = observation {
                    observation.respond(response.status(), response.headers());
                    response.body_mut().observe(observation);
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, clock)))
            }
        });
        let mut stop = graceful.watch();
        let (h1, h2) = (h1.clone(), h2.clone());
        tokio::spawn(async move {
            let served = async {
                let http2 = match protocols {
                    Protocols::Http1 => false,
                    Protocols::Http2 => true,
                    Protocols::Auto => tokio::select! {
                        http2 = opens_with_h2_preface(&stream) => http2,
                        // A stop before the first byte: nothing was asked, nothing to finish.
                        _ = stop.changed() => return,
                    },
                };
                let io = TokioIo::new(Watched::new(stream, clock.clone()));
                if http2 {
                    connection::drive_h2(h2.serve_connection(io, service), stop, label, peer).await;
                } else {
                    let switch = connection::Switch { slot, clock: clock.clone() };
                    connection::drive(h1.serve_connection(io, service), stop, switch, label, observe, peer).await;
                }
            };
            tokio::select! {
                biased;
                () = served => {}
                // Dropping the connection closes it.
                expiry = watchdog::expired(&clock, deadlines) => {
                    if matches!(expiry, watchdog::Expiry::Send(_)) {
                        log::info(format_args!("{label}connection from {peer} closed: {expiry}"));
                    } else {
                        log::debug(format_args!("{label}connection from {peer} closed: {expiry}"));
                    }
                }
            }
        });
    };

    let stop = loop {
        tokio::select! {
            biased;
            how = &mut shutdown => break how,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer),
                Err(err) => {
                    // Out of descriptors or a connection reset before accept: back off briefly
                    // instead of spinning on the same error.
                    log::warn(format_args!("{label}accept failed: {err}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    };
    draining.store(true, Ordering::Relaxed);
    if stop == Stop::Graceful {
        handler.stopping(options.graceful_timeout);
        // Connections the kernel completed before the stop are in the listen queue, and their
        // clients have sent or are sending a request: serve them rather than reset them.
        // Straight from the socket: the reactor may not have seen the latest ones yet.
        if let Ok(listener) = listener.into_std() {
            while let Ok((stream, peer)) = listener.accept() {
                match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
                    Ok(stream) => serve_connection(stream, peer),
                    Err(err) => log::warn(format_args!("{label}cannot serve a queued connection: {err}")),
                }
            }
        }
    } else {
        drop(listener);
    }
    let open = graceful.count();
    if stop == Stop::Immediate {
        return open;
    }

    if open > 0 {
        log::info(format_args!("{}draining {open} open connection(s)", options.label));
    }
    let linger = DRAIN_LINGER.min(options.graceful_timeout / 2);
    let started = tokio::time::Instant::now();
    while graceful.count() > 0 && started.elapsed() < linger {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let remaining = options.graceful_timeout.saturating_sub(started.elapsed());
    tokio::select! {
        _ = graceful.shutdown() => 0,
        _ = tokio::time::sleep(remaining) => {
            log::warn(format_args!(
                "{}graceful timeout of {:.1}s reached with connections still open",
                options.label,
                options.graceful_timeout.as_secs_f64()
            ));
            1
        }
    }
}

/// An IPv4 client of a dual-stack listener as the IPv4 address it is (`203.0.113.7`, not
/// `::ffff:203.0.113.7`), for the environ, the logs, the metrics and `--forwarded-allow-ips`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether the first bytes a client sends are HTTP/2's preface. Looks without taking them, and
/// decides at the first byte that differs, so an HTTP/1 request is not held up.
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    let mut seen = [0u8; H2_PREFACE.len()];
    loop {
        let n = match stream.peek(&mut seen).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if seen[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A preface split across packets: rare, so a short wait rather than a busy peek.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
