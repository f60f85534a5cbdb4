//! Prometheus metrics, counted with atomics on the request path and rendered only when
//! scraped, by the I/O thread, without entering Python.
//!
//! Every value is a static atomic updated with relaxed ordering: recording a request is a
//! handful of `fetch_add`s, with no lock and no allocation. Until [`enable`] is called (once, at
//! startup, when `--metrics-bind` is given) each recording function returns right after one
//! relaxed load.
//!
//! [`render`] writes the text exposition format 0.0.4; [`serve`] answers `GET /metrics` with it
//! on its own listener, on the same tokio runtime as the main server.
//!
//! With several worker processes, each records into its own slot of a [`SharedSlots`] region
//! that the supervisor maps before it forks, and whichever worker answers a scrape adds up
//! every slot. Counters of workers that have exited are folded into slot 0 by the supervisor,
//! so totals never go backwards when a worker is replaced.

use std::fmt::Write as _;
use std::future::Future;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use http::Method;

use crate::http::ResponseBody;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `method` label values, in the order of the counters.
const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other"];
/// The `status` label values, in the order of the counters.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the duration histogram's finite buckets, in nanoseconds, with their `le`
/// label as written.
const BUCKETS: [(u64, &str); 15] = [
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
    (30_000_000_000, "30"),
    (60_000_000_000, "60"),
];

/// All the counters and gauges. One static instance serves the process; tests build their own.
struct Registry {
    /// `[method][status class]`.
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    /// Per-bucket (not cumulative) counts; the last slot is above the largest bound. The
    /// histogram's `_count` is their sum, so `+Inf` and `_count` always agree.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    in_flight: AtomicI64,
    python_busy: AtomicI64,
    body_in: AtomicU64,
    body_out: AtomicU64,
    worker_restarts: AtomicU64,
    /// An `f64`'s bits.
    startup_seconds: AtomicU64,
    /// Requests waiting for a Python thread.
    waiting: AtomicI64,
    /// Websockets accepted.
    websockets: AtomicU64,
    websockets_open: AtomicI64,
    /// Websocket messages `[received, sent]`.
    websocket_messages: [AtomicU64; 2],
}

static ENABLED: AtomicBool = AtomicBool::new(false);
/// This process's own counters, unless [`use_shared`] pointed [`CURRENT`] at a shared slot.
static LOCAL: Registry = Registry::new();
/// Where this process records; null means [`LOCAL`].
static CURRENT: AtomicPtr<Registry> = AtomicPtr::new(std::ptr::null_mut());
/// Every worker's slot, when this process is one of several workers.
static SHARED: OnceLock<SharedSlots> = OnceLock::new();

#[inline]
fn registry() -> &'static Registry {
    let current = CURRENT.load(Relaxed);
    if current.is_null() {
        &LOCAL
    } else {
        // SAFETY: set once by `use_shared` to a slot of a mapping that is never unmapped.
        unsafe { &*current }
    }
}

/// Turns metrics on. Called once at startup, when `--metrics-bind` is given.
pub fn enable() {
    ENABLED.store(true, Relaxed);
}

/// Whether `--metrics-bind` turned metrics on.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// A request arrived (in-flight +1).
#[inline]
pub fn request_started() {
    if !enabled() {
        return;
    }
    registry().in_flight.fetch_add(1, Relaxed);
}

/// A response ended: sent, or abandoned by the client (in-flight −1). Counts the request by
/// method and status class, its latency in the duration histogram and `bytes_out` response body
/// bytes.
#[inline]
pub fn request_finished(method: &Method, status: u16, latency: Duration, bytes_out: u64) {
    if !enabled() {
        return;
    }
    registry().in_flight.fetch_sub(1, Relaxed);
    registry().record(method, status, latency, bytes_out);
}

/// A request answered before it could be observed (hyper's parser refused its head): counted
/// by method (`None`: one that could not be read, counted as "other") and status like any
/// other, but never in flight.
pub fn request_refused(method: Option<&Method>, status: u16, latency: Duration, bytes_out: u64) {
    if !enabled() {
        return;
    }
    registry().record_at(method.map_or(METHODS.len() - 1, method_index), status, latency, bytes_out);
}

/// A request that started ([`request_started`]) ended without any response (its future was
/// dropped before a response head existed): in-flight −1, nothing counted.
#[inline]
pub fn request_abandoned() {
    if !enabled() {
        return;
    }
    registry().in_flight.fetch_sub(1, Relaxed);
}

/// Request body bytes read from the network.
#[inline]
pub fn body_bytes_in(n: u64) {
    if !enabled() {
        return;
    }
    registry().body_in.fetch_add(n, Relaxed);
}

/// A Python thread started (+1) or finished (−1) running the app.
#[inline]
pub fn python_busy(delta: i64) {
    if !enabled() {
        return;
    }
    registry().python_busy.fetch_add(delta, Relaxed);
}

/// A request joined (+1) or left (−1) the queue of requests waiting for a Python thread.
#[inline]
pub fn requests_waiting(delta: i64) {
    if !enabled() {
        return;
    }
    registry().waiting.fetch_add(delta, Relaxed);
}

/// A websocket was accepted (+1) or has closed (−1).
pub fn websocket_open(delta: i64) {
    if !enabled() {
        return;
    }
    if delta > 0 {
        registry().websockets.fetch_add(1, Relaxed);
    }
    registry().websockets_open.fetch_add(delta, Relaxed);
}

/// A websocket message was received from (`received`) or sent to a client.
#[inline]
pub fn websocket_message(received: bool) {
    if !enabled() {
        return;
    }
    registry().websocket_messages[usize::from(!received)].fetch_add(1, Relaxed);
}

/// How long startup took (the `coldbrew_startup_duration_seconds` gauge). Stored even while
/// metrics are off, so it may be set before [`enable`].
pub fn set_startup_seconds(seconds: f64) {
    registry().startup_seconds.store(seconds.to_bits(), Relaxed);
}

/// The metrics in the Prometheus text exposition format 0.0.4.
pub fn render() -> String {
    match SHARED.get() {
        None => registry().render(),
        Some(shared) => {
            let total = Registry::new();
            for slot in shared.slots() {
                total.add(slot);
            }
            total.render()
        }
    }
}

/// Worker processes' metrics slots in memory shared across `fork`: slot 0 holds what exited
/// workers counted, the others one live worker each.
#[derive(Clone)]
pub struct SharedSlots {
    base: NonNull<Registry>,
    count: usize,
}

// SAFETY: the mapping lives as long as the process and holds only atomics.
unsafe impl Send for SharedSlots {}
unsafe impl Sync for SharedSlots {}

impl SharedSlots {
    /// Maps `count` zeroed slots (a zeroed `Registry` is a valid, empty one).
    pub fn new(count: usize) -> std::io::Result<SharedSlots> {
        let len = count * std::mem::size_of::<Registry>();
        // SAFETY: an anonymous shared mapping; nothing else refers to that memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedSlots { base: NonNull::new(base.cast()).expect("mmap never returns null"), count })
    }

    /// How many slots there are, slot 0 included.
    pub fn len(&self) -> usize {
        self.count
    }

    fn slot(&self, index: usize) -> &Registry {
        assert!(index < self.count, "metrics slot {index} out of range");
        // SAFETY: in bounds of the mapping, which is never unmapped while `self` lives.
        unsafe { &*self.base.as_ptr().add(index) }
    }

    fn slots(&self) -> impl Iterator<Item = &Registry> {
        (0..self.count).map(|i| self.slot(i))
    }

    /// A worker that exited (so nothing writes to its slot any more): its counters move to
    /// slot 0 and the slot is emptied for the next worker. Gauges die with the worker.
    pub fn retire(&self, index: usize) {
        assert!(index > 0, "slot 0 is the retired workers' total");
        let slot = self.slot(index);
        slot.in_flight.store(0, Relaxed);
        slot.python_busy.store(0, Relaxed);
        slot.waiting.store(0, Relaxed);
        self.slot(0).add(slot);
        slot.clear();
    }

    /// The supervisor replaced a worker.
    pub fn count_restart(&self) {
        self.slot(0).worker_restarts.fetch_add(1, Relaxed);
    }

    /// Seconds from the supervisor's exec until the port opened.
    pub fn set_startup_seconds(&self, seconds: f64) {
        self.slot(0).startup_seconds.store(seconds.to_bits(), Relaxed);
    }
}

/// Makes this process (a worker) record into `index` of `shared` and answer scrapes with the
/// sum of every slot. Called once, before any request.
pub fn use_shared(shared: SharedSlots, index: usize) {
    let slot: *const Registry = shared.slot(index);
    if SHARED.set(shared).is_ok() {
        CURRENT.store(slot.cast_mut(), Relaxed);
    }
}

/// The index of `method` in [`METHODS`].
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The index of `status`'s class in [`CLASSES`]. hyper only builds codes 100–999; anything
/// from 600 up counts as 5xx (and anything under 100 as 1xx).
fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// The histogram slot of `latency`: the first bucket whose bound it does not exceed, or the
/// overflow slot.
fn bucket_index(latency: Duration) -> usize {
    let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    BUCKETS.iter().position(|&(bound, _)| nanos <= bound).unwrap_or(BUCKETS.len())
}

impl Registry {
    const fn new() -> Registry {
        Registry {
            requests: [const { [const { AtomicU64::new(0) }; CLASSES.len()] }; METHODS.len()],
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            duration_sum_micros: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            python_busy: AtomicI64::new(0),
            body_in: AtomicU64::new(0),
            body_out: AtomicU64::new(0),
            worker_restarts: AtomicU64::new(0),
            startup_seconds: AtomicU64::new(0), // 0.0f64's bits
            waiting: AtomicI64::new(0),
            websockets: AtomicU64::new(0),
            websockets_open: AtomicI64::new(0),
            websocket_messages: [const { AtomicU64::new(0) }; 2],
        }
    }

    /// Adds `other`'s values to this one's (the startup time is the larger of the two).
    fn add(&self, other: &Registry) {
        for (mine, theirs) in self.requests.iter().flatten().zip(other.requests.iter().flatten()) {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
        self.duration_sum_micros.fetch_add(other.duration_sum_micros.load(Relaxed), Relaxed);
        self.in_flight.fetch_add(other.in_flight.load(Relaxed), Relaxed);
        self.python_busy.fetch_add(other.python_busy.load(Relaxed), Relaxed);
        self.body_in.fetch_add(other.body_in.load(Relaxed), Relaxed);
        self.body_out.fetch_add(other.body_out.load(Relaxed), Relaxed);
        self.worker_restarts.fetch_add(other.worker_restarts.load(Relaxed), Relaxed);
        self.waiting.fetch_add(other.waiting.load(Relaxed), Relaxed);
        self.websockets.fetch_add(other.websockets.load(Relaxed), Relaxed);
        self.websockets_open.fetch_add(other.websockets_open.load(Relaxed), Relaxed);
        for (mine, theirs) in self.websocket_messages.iter().zip(other.websocket_messages.iter()) {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
        let startup = f64::from_bits(self.startup_seconds.load(Relaxed)).max(f64::from_bits(other.startup_seconds.load(Relaxed)));
        self.startup_seconds.store(startup.to_bits(), Relaxed);
    }

    fn clear(&self) {
        for cell in self.requests.iter().flatten().chain(self.buckets.iter()) {
            cell.store(0, Relaxed);
        }
        for cell in [&self.duration_sum_micros, &self.body_in, &self.body_out, &self.worker_restarts, &self.startup_seconds, &self.websockets]
            .into_iter()
            .chain(self.websocket_messages.iter())
        {
            cell.store(0, Relaxed);
        }
        for cell in [&self.in_flight, &self.python_busy, &self.waiting, &self.websockets_open] {
            cell.store(0, Relaxed);
        }
    }

    #[inline]
    fn record(&self, method: &Method, status: u16, latency: Duration, bytes_out: u64) {
        self.record_at(method_index(method), status, latency, bytes_out);
    }

    #[inline]
    fn record_at(&self, method: usize, status: u16, latency: Duration, bytes_out: u64) {
        self.requests[method][class_index(status)].fetch_add(1, Relaxed);
        self.buckets[bucket_index(latency)].fetch_add(1, Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_micros.fetch_add(micros, Relaxed);
        if bytes_out > 0 {
            self.body_out.fetch_add(bytes_out, Relaxed);
        }
    }

    fn render(&self) -> String {
        // A job can leave the queue a moment before its arrival is counted.
        let waiting = self.waiting.load(Relaxed).max(0);
        let mut out = String::with_capacity(6 * 1024);
        // Writing to a String cannot fail.
        let w = &mut out;

        family(w, "coldbrew_requests_total", "counter", "HTTP requests answered, by method and status class.");
        for (m, method) in METHODS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[m][c].load(Relaxed);
                let _ = writeln!(w, "coldbrew_requests_total{{method=\"{method}\",status=\"{class}\"}} {n}");
            }
        }

        family(
            w,
            "coldbrew_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to the end of its response.",
        );
        let mut cumulative = 0u64;
        for (slot, (_, le)) in self.buckets.iter().zip(BUCKETS.iter()) {
            cumulative += slot.load(Relaxed);
            let _ = writeln!(w, "coldbrew_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(w, "coldbrew_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.duration_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(w, "coldbrew_request_duration_seconds_sum {sum}");
        let _ = writeln!(w, "coldbrew_request_duration_seconds_count {cumulative}");

        gauge(w, "coldbrew_requests_in_flight", "Requests received whose response has not ended.", self.in_flight.load(Relaxed));
        gauge(w, "coldbrew_requests_waiting", "Requests waiting for a free Python thread.", waiting);
        gauge(w, "coldbrew_python_threads_busy", "Python threads running the application.", self.python_busy.load(Relaxed));

        counter(w, "coldbrew_request_body_bytes_total", "Request body bytes read.", self.body_in.load(Relaxed));
        counter(w, "coldbrew_response_body_bytes_total", "Response body bytes sent.", self.body_out.load(Relaxed));
        counter(w, "coldbrew_worker_restarts_total", "Worker processes restarted.", self.worker_restarts.load(Relaxed));
        counter(w, "coldbrew_websockets_total", "Websocket connections accepted (ASGI).", self.websockets.load(Relaxed));
        gauge(w, "coldbrew_websockets_open", "Websocket connections open (ASGI).", self.websockets_open.load(Relaxed).max(0));
        family(w, "coldbrew_websocket_messages_total", "counter", "Websocket messages, by direction (ASGI).");
        for (direction, n) in ["received", "sent"].iter().zip(self.websocket_messages.iter()) {
            let _ = writeln!(w, "coldbrew_websocket_messages_total{{direction=\"{direction}\"}} {}", n.load(Relaxed));
        }

        let startup = f64::from_bits(self.startup_seconds.load(Relaxed));
        gauge(w, "coldbrew_startup_duration_seconds", "Seconds from coldbrew's start until ready to serve.", startup);
        out
    }
}

fn family(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

fn gauge(w: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    family(w, name, "gauge", help);
    let _ = writeln!(w, "{name} {value}");
}

fn counter(w: &mut String, name: &str, help: &str, value: u64) {
    family(w, name, "counter", help);
    let _ = writeln!(w, "{name} {value}");
}

/// The answer to one request on the metrics listener. Never enters Python.
fn respond(method: &Method, path: &str) -> crate::http::Response {
    use http::{header, HeaderValue, StatusCode};
    if path != "/metrics" {
        return crate::http::plain(StatusCode::NOT_FOUND, "Not Found\n");
    }
    if *method != Method::GET && *method != Method::HEAD {
        let mut response = crate::http::plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = hyper::Response::new(ResponseBody::full(bytes::Bytes::from(render())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// How long a scraper may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open scrape connections get to finish once `shutdown` resolves.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The metrics listener's only route.
struct Scrape;

impl crate::http::Handler for Scrape {
    fn call(
        &self,
        request: crate::http::Request,
        _conn: crate::http::ConnInfo,
    ) -> impl Future<Output = crate::http::Response> + Send + use<> {
        std::future::ready(respond(request.method(), request.uri().path()))
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; other paths get 404. Runs on
/// the caller's tokio runtime (the I/O thread), through the same accept loop as the app's
/// port but unobserved: a scrape only reads atomics and the queue probe.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: impl Future<Output = crate::http::Stop>) {
    let options = crate::http::ServerOptions {
        graceful_timeout: SHUTDOWN_GRACE,
        header_read_timeout: Some(HEADER_READ_TIMEOUT),
        send_timeout: Some(crate::config::DEFAULT_SEND_TIMEOUT),
        keep_alive: crate::config::DEFAULT_KEEP_ALIVE,
        observe: false,
        label: "metrics: ",
        draining: {
            static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            &DRAINING
        },
        trusted_proxies: Default::default(),
        limits: crate::http::Limits::default(),
        protocols: crate::http::Protocols::Http1,
        title_case: true,
    };
    crate::http::serve(listener, std::sync::Arc::new(Scrape), options, shutdown).await;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// One sample line: name, labels, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl Sample {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
        }
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses exposition text strictly, line by line: every line is a HELP, a TYPE (before the
    /// family's first sample, once per family) or a sample of a declared family.
    fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
        assert!(text.ends_with('\n'), "exposition must end with a newline");
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            assert!(!line.is_empty(), "empty line in exposition");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and a text");
                assert!(valid_name(name), "{line}");
                assert!(!help.is_empty() && !help.contains('\\'), "{line}");
                assert!(helps.insert(name.into(), help.into()).is_none(), "second HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
                assert!(valid_name(name), "{line}");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
                assert!(helps.contains_key(name), "TYPE before HELP: {line}");
                assert!(!samples.iter().any(|s: &Sample| s.name.starts_with(name)), "TYPE after samples: {line}");
                assert!(types.insert(name.into(), kind.into()).is_none(), "second TYPE: {line}");
            } else {
                assert!(!line.starts_with('#'), "unknown comment: {line}");
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
                };
                let (name, labels) = match series.split_once('{') {
                    None => (series, Vec::new()),
                    Some((name, rest)) => {
                        let inner = rest.strip_suffix('}').expect("labels end with }");
                        let labels = inner
                            .split(',')
                            .map(|pair| {
                                let (k, v) = pair.split_once('=').expect("label is k=v");
                                assert!(valid_name(k), "{line}");
                                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("quoted value");
                                assert!(!v.contains(['"', '\\', '\n']), "{line}");
                                (k.to_owned(), v.to_owned())
                            })
                            .collect();
                        (name, labels)
                    }
                };
                assert!(valid_name(name), "{line}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                    .unwrap_or(name);
                assert!(types.contains_key(family), "sample of an undeclared family: {line}");
                assert!(family.starts_with("coldbrew_"), "{line}");
                samples.push(Sample { name: name.into(), labels, value });
            }
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)) && s.labels.len() == labels.len())
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn methods_and_status_classes_map() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&Method::POST)], "POST");
        assert_eq!(METHODS[method_index(&Method::PUT)], "PUT");
        assert_eq!(METHODS[method_index(&Method::DELETE)], "DELETE");
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        assert_eq!(METHODS[method_index(&Method::HEAD)], "HEAD");
        assert_eq!(METHODS[method_index(&Method::OPTIONS)], "OPTIONS");
        assert_eq!(METHODS[method_index(&Method::TRACE)], "other");
        assert_eq!(METHODS[method_index(&Method::CONNECT)], "other");
        assert_eq!(METHODS[method_index(&Method::from_bytes(b"PROPFIND").unwrap())], "other");
        // Methods are case-sensitive: "get" is not GET.
        assert_eq!(METHODS[method_index(&Method::from_bytes(b"get").unwrap())], "other");

        for (status, class) in [
            (0, "1xx"),
            (100, "1xx"),
            (101, "1xx"),
            (199, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (299, "2xx"),
            (301, "3xx"),
            (304, "3xx"),
            (400, "4xx"),
            (404, "4xx"),
            (499, "4xx"),
            (500, "5xx"),
            (503, "5xx"),
            (599, "5xx"),
            (999, "5xx"),
        ] {
            assert_eq!(CLASSES[class_index(status)], class, "{status}");
        }
    }

    #[test]
    fn latencies_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_index(Duration::ZERO), 0);
        assert_eq!(bucket_index(ms(1)), 0, "le is inclusive");
        assert_eq!(bucket_index(ms(1) + Duration::from_nanos(1)), 1);
        assert_eq!(bucket_index(Duration::from_micros(2500)), 1);
        assert_eq!(bucket_index(ms(100)), 6);
        assert_eq!(bucket_index(Duration::from_secs(1)), 9);
        assert_eq!(bucket_index(Duration::from_secs(60)), 14);
        assert_eq!(bucket_index(Duration::from_secs(61)), 15);
        assert_eq!(bucket_index(Duration::MAX), 15);
        assert!(BUCKETS.windows(2).all(|w| w[0].0 < w[1].0));
        for (bound, le) in BUCKETS {
            assert_eq!((le.parse::<f64>().unwrap() * 1e9).round() as u64, bound, "{le}");
        }
    }

    #[test]
    fn empty_registry_renders_every_family() {
        let text = Registry::new().render();
        let (types, samples) = parse(&text);
        let expected = [
            ("coldbrew_requests_total", "counter"),
            ("coldbrew_request_duration_seconds", "histogram"),
            ("coldbrew_requests_in_flight", "gauge"),
            ("coldbrew_requests_waiting", "gauge"),
            ("coldbrew_python_threads_busy", "gauge"),
            ("coldbrew_request_body_bytes_total", "counter"),
            ("coldbrew_response_body_bytes_total", "counter"),
            ("coldbrew_worker_restarts_total", "counter"),
            ("coldbrew_websockets_total", "counter"),
            ("coldbrew_websockets_open", "gauge"),
            ("coldbrew_websocket_messages_total", "counter"),
            ("coldbrew_startup_duration_seconds", "gauge"),
        ];
        assert_eq!(types.len(), expected.len());
        for (name, kind) in expected {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        assert!(samples.iter().all(|s| s.value == 0.0), "{text}");
        // 8 methods x 5 classes, 16 buckets + sum + count, 9 single samples, 2 directions.
        assert_eq!(samples.len(), 40 + 18 + 9 + 2);
    }

    #[test]
    fn counts_add_up_and_buckets_are_cumulative() {
        let r = Registry::new();
        let requests: &[(Method, u16, Duration, u64)] = &[
            (Method::GET, 200, ms(0), 5),
            (Method::GET, 200, ms(3), 5),
            (Method::GET, 404, ms(7), 9),
            (Method::POST, 201, ms(20), 100),
            (Method::POST, 500, ms(700), 0),
            (Method::DELETE, 204, Duration::from_micros(1500), 0),
            (Method::HEAD, 200, Duration::from_secs(45), 0),
            (Method::from_bytes(b"BREW").unwrap(), 418, Duration::from_secs(90), 7),
            (Method::OPTIONS, 101, ms(1), 0),
            (Method::PATCH, 302, ms(99), 0),
        ];
        for (method, status, latency, bytes) in requests {
            r.in_flight.fetch_add(1, Relaxed);
            r.record(method, *status, *latency, *bytes);
            r.in_flight.fetch_sub(1, Relaxed);
        }
        r.in_flight.fetch_add(2, Relaxed);
        r.python_busy.fetch_add(1, Relaxed);
        r.body_in.fetch_add(1234, Relaxed);
        r.startup_seconds.store(0.25f64.to_bits(), Relaxed);
        r.waiting.fetch_add(3, Relaxed);

        let (_, s) = parse(&r.render());
        let total = |m: &str, c: &str| value(&s, "coldbrew_requests_total", &[("method", m), ("status", c)]);
        assert_eq!(total("GET", "2xx"), 2.0);
        assert_eq!(total("GET", "4xx"), 1.0);
        assert_eq!(total("POST", "2xx"), 1.0);
        assert_eq!(total("POST", "5xx"), 1.0);
        assert_eq!(total("DELETE", "2xx"), 1.0);
        assert_eq!(total("HEAD", "2xx"), 1.0);
        assert_eq!(total("other", "4xx"), 1.0);
        assert_eq!(total("OPTIONS", "1xx"), 1.0);
        assert_eq!(total("PATCH", "3xx"), 1.0);
        let all: f64 = s.iter().filter(|x| x.name == "coldbrew_requests_total").map(|x| x.value).sum();
        assert_eq!(all, requests.len() as f64);

        let buckets: Vec<(f64, f64)> = s
            .iter()
            .filter(|x| x.name == "coldbrew_request_duration_seconds_bucket")
            .map(|x| {
                let le = x.label("le").unwrap();
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, x.value)
            })
            .collect();
        assert_eq!(buckets.len(), BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "bounds ascend: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "counts are cumulative: {buckets:?}");
        let count = value(&s, "coldbrew_request_duration_seconds_count", &[]);
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
        assert_eq!(count, requests.len() as f64);
        // Every bucket holds exactly the requests at or under its bound.
        for (le, n) in &buckets {
            let expected = requests.iter().filter(|r| r.2.as_secs_f64() <= *le).count();
            assert_eq!(*n, expected as f64, "le={le}");
        }
        let sum = value(&s, "coldbrew_request_duration_seconds_sum", &[]);
        let expected_sum: f64 = requests.iter().map(|r| r.2.as_secs_f64()).sum();
        assert!((sum - expected_sum).abs() < 1e-6, "{sum} vs {expected_sum}");

        assert_eq!(value(&s, "coldbrew_requests_in_flight", &[]), 2.0);
        assert_eq!(value(&s, "coldbrew_requests_waiting", &[]), 3.0);
        assert_eq!(value(&s, "coldbrew_python_threads_busy", &[]), 1.0);
        assert_eq!(value(&s, "coldbrew_request_body_bytes_total", &[]), 1234.0);
        assert_eq!(value(&s, "coldbrew_response_body_bytes_total", &[]), 126.0);
        assert_eq!(value(&s, "coldbrew_worker_restarts_total", &[]), 0.0);
        assert_eq!(value(&s, "coldbrew_startup_duration_seconds", &[]), 0.25);
    }

    /// The only test that touches the process-wide registry (tests run in parallel).
    #[test]
    fn global_recording_waits_for_enable_and_serves_scrapes() {
        let before = render();
        assert!(!enabled());
        request_started();
        request_finished(&Method::GET, 200, ms(1), 10);
        body_bytes_in(10);
        python_busy(1);
        assert_eq!(render(), before, "recording before enable() must do nothing");

        enable();
        assert!(enabled());
        requests_waiting(7);
        set_startup_seconds(1.5);
        request_started();
        python_busy(1);
        body_bytes_in(300);
        let (_, s) = parse(&render());
        assert_eq!(value(&s, "coldbrew_requests_in_flight", &[]), 1.0);
        assert_eq!(value(&s, "coldbrew_python_threads_busy", &[]), 1.0);
        assert_eq!(value(&s, "coldbrew_requests_waiting", &[]), 7.0);
        assert_eq!(value(&s, "coldbrew_startup_duration_seconds", &[]), 1.5);
        python_busy(-1);
        requests_waiting(-7);
        request_finished(&Method::PUT, 503, ms(30), 40);
        request_started();
        request_abandoned();
        let (_, s) = parse(&render());
        assert_eq!(value(&s, "coldbrew_requests_in_flight", &[]), 0.0);
        assert_eq!(value(&s, "coldbrew_python_threads_busy", &[]), 0.0);
        assert_eq!(value(&s, "coldbrew_requests_waiting", &[]), 0.0);
        assert_eq!(value(&s, "coldbrew_requests_total", &[("method", "PUT"), ("status", "5xx")]), 1.0);
        assert_eq!(value(&s, "coldbrew_request_duration_seconds_count", &[]), 1.0);
        assert_eq!(value(&s, "coldbrew_request_body_bytes_total", &[]), 300.0);
        assert_eq!(value(&s, "coldbrew_response_body_bytes_total", &[]), 40.0);

        // The endpoint, over a real socket on a current-thread runtime.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, async move {
                let _ = stopped.await;
                crate::http::Stop::Graceful
            }));
            let exchange = |request: &'static str| async move {
                let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
                conn.write_all(request.as_bytes()).await.unwrap();
                let mut raw = Vec::new();
                conn.read_to_end(&mut raw).await.unwrap();
                String::from_utf8(raw).unwrap()
            };
            let ok = exchange("GET /metrics?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
            let (head, body) = ok.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            let lower = head.to_ascii_lowercase();
            assert!(lower.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
            assert!(lower.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
            let (_, s) = parse(body);
            assert_eq!(value(&s, "coldbrew_requests_total", &[("method", "PUT"), ("status", "5xx")]), 1.0);

            let head_only = exchange("HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
            assert!(head_only.starts_with("HTTP/1.1 200 OK\r\n") && head_only.ends_with("\r\n\r\n"), "{head_only}");
            let missing = exchange("GET /other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
            assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
            let post = exchange("POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");

            // An idle keep-alive scraper does not hold up shutdown beyond the drain linger.
            let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
            idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
            let mut first = [0u8; 12];
            idle.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_millis(1500), server).await.expect("serve returns promptly").unwrap();
            assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
        });
        // Scrapes are not requests.
        let (_, s) = parse(&render());
        assert_eq!(value(&s, "coldbrew_request_duration_seconds_count", &[]), 1.0);
    }

    #[test]
    fn shared_slots_add_up_and_keep_what_exited_workers_counted() {
        let shared = SharedSlots::new(4).unwrap();
        shared.slot(1).record(&Method::GET, 200, ms(1), 5);
        shared.slot(2).record(&Method::GET, 200, ms(1), 7);
        shared.slot(2).in_flight.fetch_add(3, Relaxed);
        shared.slot(2).waiting.fetch_add(2, Relaxed);
        shared.retire(2);
        shared.count_restart();
        shared.set_startup_seconds(0.5);
        assert_eq!(shared.slot(2).requests[0][1].load(Relaxed), 0, "a retired slot starts empty");

        let total = Registry::new();
        for slot in shared.slots() {
            total.add(slot);
        }
        let (_, s) = parse(&total.render());
        assert_eq!(value(&s, "coldbrew_requests_total", &[("method", "GET"), ("status", "2xx")]), 2.0);
        assert_eq!(value(&s, "coldbrew_response_body_bytes_total", &[]), 12.0);
        assert_eq!(value(&s, "coldbrew_requests_in_flight", &[]), 0.0, "gauges die with the worker");
        assert_eq!(value(&s, "coldbrew_requests_waiting", &[]), 0.0);
        assert_eq!(value(&s, "coldbrew_worker_restarts_total", &[]), 1.0);
        assert_eq!(value(&s, "coldbrew_startup_duration_seconds", &[]), 0.5);
    }
}
