//! The accept loop and per-connection hyper state, with graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::{ConnInfo, Handler};
use crate::telemetry::access::Observation;
use crate::telemetry::log;
use crate::telemetry::TraceContext;

const SERVER_HEADER: http::HeaderValue = http::HeaderValue::from_static("coldbrew");

/// Protocol settings for every connection.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How long in-flight requests may run after a shutdown begins.
    pub graceful_timeout: Duration,
    /// Wait for a full request head at most this long (slowloris guard).
    pub header_read_timeout: Duration,
    /// Trace context, access log and request metrics: off for the server's own side ports
    /// (metrics), whose requests are not the app's traffic.
    pub observe: bool,
    /// Names the listener in log lines ("" for the main one).
    pub label: &'static str,
}

/// Serves connections from `listener` until `shutdown` resolves, then stops accepting, lets
/// open connections finish their in-flight requests (idle keep-alive connections are closed)
/// for up to `graceful_timeout`, and returns the number of connections still open.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> usize {
    let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Vectored writes queue the body next to the head. hyper's pipeline_flush would
        // switch to copying every body into one per-connection buffer that keeps its largest
        // size: 1 MiB responses at 64 connections held 74 MiB instead of 8 MiB.
        .writev(true)
        .header_read_timeout(options.header_read_timeout);

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of descriptors or a connection reset before accept: back off briefly
                        // instead of spinning on the same error.
                        log::warn(format_args!("{}accept failed: {err}", options.label));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn_info = ConnInfo::new(peer, local);
                let handler = handler.clone();
                let observe = options.observe;
                let service = service_fn(move |mut req: super::Request| {
                    let mut observation = None;
                    if observe {
                        let trace = TraceContext::from_headers(req.headers());
                        if let Some(trace) = trace {
                            req.extensions_mut().insert(trace);
                        }
                        let (parts, body) = req.into_parts();
                        observation = Observation::begin(&parts, conn_info.peer_ip, trace);
                        req = hyper::Request::from_parts(parts, body);
                    }
                    let fut = handler.call(req, conn_info);
                    async move {
                        let mut response = fut.await;
                        response.headers_mut().entry(http::header::SERVER).or_insert(SERVER_HEADER);
                        if let Some(mut observation) = observation {
                            observation.respond(response.status(), response.headers());
                            response.body_mut().observe(observation);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                let label = options.label;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        log::debug(format_args!("{label}connection from {peer} ended: {err}"));
                    }
                });
            }
        }
    }
    drop(listener);

    let open = graceful.count();
    if open > 0 {
        log::info(format_args!("{}draining {open} open connection(s)", options.label));
    }
    tokio::select! {
        _ = graceful.shutdown() => 0,
        _ = tokio::time::sleep(options.graceful_timeout) => {
            log::warn(format_args!(
                "{}graceful timeout of {:.1}s reached with connections still open",
                options.label,
                options.graceful_timeout.as_secs_f64()
            ));
            1
        }
    }
}
