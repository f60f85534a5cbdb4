//! The access log (and the per-request metrics): one entry per response, in gunicorn's format atoms (text) or with a Cloud
//! Logging `httpRequest` object (JSON).
//!
//! What an entry needs is captured on the I/O thread as the request arrives. When the response
//! ends the line is rendered into a buffer of that thread's, which goes to the log writer as
//! one queue entry per [`FLUSH_BYTES`] or [`FLUSH_AFTER`]: no queue operation or writer
//! wake-up per request, and with gunicorn's format no allocation either (the observation's is
//! reused by the thread's next request); the writer only copies bytes out.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use serde::ser::{Serialize, Serializer};

use super::log::{self, access_time_text, escape_controls, Format, JsonObject, Timestamp, ACCESS_TIME_LEN};
use super::metrics;
use super::request_headers::TelemetryHeaders;
use super::sink::{self, Entry, Render, Target};
use super::text_line::{write_line, LineWriter, Short};
use super::trace::TraceContext;
use crate::clock::{Moment, WallClock};
use crate::http::AddrText;

mod json_line;
mod unparsed;

pub use unparsed::record_unparsed;

/// gunicorn's default access-log format.
pub const DEFAULT_FORMAT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

struct AccessLog {
    parts: Vec<Part>,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    /// The parts again, as the writer of lines without escapes walks them.
    pieces: Vec<Piece>,
    /// The most room a line can take (see [`LineWriter`]) besides the text the client sent.
    fixed_room: usize,
    /// How often the format writes each field the client sent, for the room a line takes.
    uses: ClientFieldUses,
}

/// An atom with the short literal that follows it, so that a line of gunicorn's format is
/// written in seven steps instead of fourteen.
struct Piece {
    atom: Atom,
    then: Short,
}

/// What a [`Piece`] writes before its literal: a plain tag, so that picking it is one jump.
/// gunicorn's default format is made of the named ones; any other part is found in
/// [`AccessLog::parts`] by its index.
#[derive(Clone, Copy)]
enum Atom {
    Remote,
    Time,
    RequestLine,
    Status,
    SizeOrDash,
    Size,
    Referer,
    UserAgent,
    Other(usize),
}

impl Atom {
    fn of(part: &Part, index: usize) -> Atom {
        match part {
            Part::Remote => Atom::Remote,
            Part::Time => Atom::Time,
            Part::RequestLine => Atom::RequestLine,
            Part::Status => Atom::Status,
            Part::SizeOrDash => Atom::SizeOrDash,
            Part::Size => Atom::Size,
            Part::Referer => Atom::Referer,
            Part::UserAgent => Atom::UserAgent,
            _ => Atom::Other(index),
        }
    }
}

#[derive(Default)]
struct ClientFieldUses {
    /// `%(r)s`, `%(U)s` and `%(q)s` each write at most the request target.
    target: usize,
    method: usize,
    user_agent: usize,
    referer: usize,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// A piece of a text line. Constant atoms (`%(l)s`, `%(u)s`, `%({NAME}e)s`) are folded into
/// the literals around them when the format is parsed, so a line is a short run of copies.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(Literal),
    Remote,
    Time,
    RequestLine,
    Status,
    Method,
    Path,
    Query,
    Protocol,
    SizeOrDash,
    Size,
    Referer,
    UserAgent,
    Seconds,
    Micros,
    Millis,
    DecimalSeconds,
    Pid,
    RequestHeader(usize),
    ResponseHeader(usize),
}

/// Fixed text of a line, escaped once when the format is parsed. Most pieces between atoms
/// are a few bytes and are also kept as a [`Short`].
#[derive(Clone, Debug, PartialEq)]
struct Literal {
    text: String,
    short: Option<Short>,
}

impl From<&str> for Literal {
    fn from(text: &str) -> Literal {
        Literal { text: text.to_owned(), short: Short::new(text.as_bytes()) }
    }
}

/// Turns the access log on with `format` (gunicorn's `%(atom)s` syntax).
pub fn enable(format: &str) -> Result<(), String> {
    let log = parse_format(format)?;
    let _ = ACCESS_LOG.set(log);
    Ok(())
}

pub fn enabled() -> bool {
    ACCESS_LOG.get().is_some()
}

fn parse_format(format: &str) -> Result<AccessLog, String> {
    let mut log = AccessLog {
        parts: Vec::new(),
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        pieces: Vec::new(),
        fixed_room: 0,
        uses: ClientFieldUses::default(),
    };
    let mut rest = format;
    while let Some(at) = rest.find("%(") {
        if at > 0 {
            push_part(&mut log.parts, literal(&rest[..at]));
        }
        let after = &rest[at + 2..];
        let close = after.find(")s").ok_or_else(|| format!("unterminated atom in access log format: {rest:?}"))?;
        let atom = &after[..close];
        let part = parse_atom(atom, &mut log.request_headers, &mut log.response_headers)?;
        push_part(&mut log.parts, part);
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        push_part(&mut log.parts, literal(rest));
    }
    log.measure();
    Ok(log)
}

/// Adds `part`, joining it to a literal before it.
fn push_part(parts: &mut Vec<Part>, part: Part) {
    match (parts.last_mut(), part) {
        (Some(Part::Literal(before)), Part::Literal(after)) => {
            let joined = std::mem::take(&mut before.text) + &after.text;
            *before = Literal::from(joined.as_str());
        }
        (_, part) => parts.push(part),
    }
}

/// Fixed text of the line, escaped once here instead of on every line.
fn literal(text: &str) -> Part {
    Part::Literal(Literal::from(&*escape_controls(text, false)))
}

/// Room for the longest decimal `u64`.
const NUMBER_ROOM: usize = LineWriter::DECIMAL_ROOM;
/// Room for `%(L)s`: seconds, a point and six digits.
const DECIMAL_SECONDS_ROOM: usize = NUMBER_ROOM + 7;

fn parse_atom(atom: &str, request: &mut Vec<HeaderName>, response: &mut Vec<HeaderName>) -> Result<Part, String> {
    if let Some(inner) = atom.strip_prefix('{') {
        let (name, kind) = inner.rsplit_once('}').ok_or_else(|| format!("bad access log atom %({atom})s"))?;
        return match kind {
            "i" | "o" => {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("bad header name in %({atom})s"))?;
                let list = if kind == "i" { request } else { response };
                list.push(header);
                let index = list.len() - 1;
                Ok(if kind == "i" { Part::RequestHeader(index) } else { Part::ResponseHeader(index) })
            }
            "e" => Ok(literal(&std::env::var(name).unwrap_or_else(|_| "-".into()))),
            _ => Err(format!("unknown access log atom %({atom})s")),
        };
    }
    Ok(match atom {
        "h" => Part::Remote,
        "t" => Part::Time,
        "l" | "u" => literal("-"),
        "r" => Part::RequestLine,
        "s" => Part::Status,
        "m" => Part::Method,
        "U" => Part::Path,
        "q" => Part::Query,
        "H" => Part::Protocol,
        "b" => Part::SizeOrDash,
        "B" => Part::Size,
        "f" => Part::Referer,
        "a" => Part::UserAgent,
        "T" => Part::Seconds,
        "D" => Part::Micros,
        "M" => Part::Millis,
        "L" => Part::DecimalSeconds,
        "p" => Part::Pid,
        _ => return Err(format!("unknown access log atom %({atom})s")),
    })
}

impl AccessLog {
    /// Works out the pieces of a line, the room a line takes apart from what the client sent,
    /// and how often the format writes each field the client sent.
    fn measure(&mut self) {
        let uses = &mut self.uses;
        let mut room = 1; // the newline
        for (index, part) in self.parts.iter().enumerate() {
            match (part, self.pieces.last_mut()) {
                // Literals next to each other were joined, so this one follows an atom. Its room
                // was counted with that atom's piece.
                (Part::Literal(Literal { short: Some(short), .. }), Some(last)) => {
                    last.then = *short;
                    continue;
                }
                _ => self.pieces.push(Piece { atom: Atom::of(part, index), then: Short::EMPTY }),
            }
            room += Short::ROOM; // the piece's literal
            room += match part {
                Part::Literal(Literal { short: Some(_), .. }) => Short::ROOM,
                Part::Literal(Literal { text, short: None }) => text.len(),
                Part::Remote => AddrText::BLOCK,
                Part::Time => ACCESS_TIME_LEN,
                Part::RequestLine => {
                    uses.method += 1;
                    uses.target += 1;
                    2 + Short::ROOM
                }
                Part::Status => 3,
                Part::Method => {
                    uses.method += 1;
                    0
                }
                Part::Path | Part::Query => {
                    uses.target += 1;
                    0
                }
                Part::Protocol => Short::ROOM,
                Part::SizeOrDash | Part::Size | Part::Seconds | Part::Micros | Part::Millis | Part::Pid => NUMBER_ROOM,
                Part::DecimalSeconds => DECIMAL_SECONDS_ROOM,
                Part::Referer => {
                    uses.referer += 1;
                    1
                }
                Part::UserAgent => {
                    uses.user_agent += 1;
                    1
                }
                // Each header atom has its own index; its value is added per line.
                Part::RequestHeader(_) | Part::ResponseHeader(_) => 1,
            };
        }
        self.fixed_room = room;
    }
}

/// What the I/O thread notes about a request as it arrives, completed when its response ends.
pub struct Observation {
    /// When the request began (see `ConnClock::request_started`).
    started: Moment,
    method: Method,
    /// The request target, without the scheme and authority of an absolute-form target.
    path_and_query: Option<PathAndQuery>,
    version: Version,
    remote: AddrText,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    /// Only for a format that names headers: most lines need none, and an observation is
    /// written for every request.
    named: Option<Box<NamedHeaders>>,
    trace: Option<TraceContext>,
    status: u16,
    bytes: u64,
    complete: bool,
    /// Set once the entry is counted; a request dropped before that is only taken out of the
    /// in-flight gauge.
    counted: bool,
}

/// The values of the headers the format names (`%({NAME}i)s`, `%({NAME}o)s`), in the order of
/// [`AccessLog::request_headers`] and [`AccessLog::response_headers`].
struct NamedHeaders {
    request: Vec<Option<HeaderValue>>,
    response: Vec<Option<HeaderValue>>,
}

impl NamedHeaders {
    /// The request's values, or `None` if the format names no header.
    fn of_request(log: &AccessLog, headers: &HeaderMap) -> Option<Box<NamedHeaders>> {
        if log.request_headers.is_empty() && log.response_headers.is_empty() {
            return None;
        }
        let request = log.request_headers.iter().map(|name| joined(headers, name)).collect();
        Some(Box::new(NamedHeaders { request, response: Vec::new() }))
    }

    fn values(&self) -> impl Iterator<Item = &HeaderValue> {
        self.request.iter().chain(&self.response).flatten()
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if !self.counted {
            metrics::request_abandoned();
        }
    }
}

impl Observation {
    /// Starts observing a request if the access log or the metrics are on.
    pub fn begin<B>(
        request: &http::Request<B>,
        seen: &TelemetryHeaders<'_>,
        remote: AddrText,
        trace: Option<TraceContext>,
        started: Moment,
    ) -> Option<Box<Observation>> {
        let log = ACCESS_LOG.get();
        if log.is_none() && !metrics::enabled() {
            return None;
        }
        metrics::request_started();
        Some(Observation::new(request, seen, remote, trace, started, log))
    }

    fn new<B>(
        request: &http::Request<B>,
        seen: &TelemetryHeaders<'_>,
        remote: AddrText,
        trace: Option<TraceContext>,
        started: Moment,
        log: Option<&AccessLog>,
    ) -> Box<Observation> {
        // The allocation first, so that the observation is written straight into it.
        let spare = BATCH.with(|cell| cell.try_borrow_mut().ok().and_then(|mut batch| batch.spares.pop()));
        let mut observation = spare.unwrap_or_else(Box::new_uninit);
        observation.write(Observation {
            started,
            // The metrics alone need the method and the times, not the target or headers.
            method: request.method().clone(),
            path_and_query: log.and(request.uri().path_and_query()).cloned(),
            version: request.version(),
            remote,
            user_agent: log.and(seen.user_agent).cloned(),
            referer: log.and(seen.referer).cloned(),
            named: log.and_then(|log| NamedHeaders::of_request(log, request.headers())),
            trace,
            status: 0,
            bytes: 0,
            complete: false,
            counted: false,
        });
        // SAFETY: written just above.
        unsafe { observation.assume_init() }
    }

    /// The response head is known.
    pub fn respond(&mut self, status: http::StatusCode, headers: &HeaderMap) {
        self.status = status.as_u16();
        if let (Some(named), Some(log)) = (&mut self.named, ACCESS_LOG.get()) {
            named.response = log.response_headers.iter().map(|name| joined(headers, name)).collect();
        }
    }

    fn request_header(&self, index: usize) -> Option<&HeaderValue> {
        self.named.as_ref()?.request.get(index)?.as_ref()
    }

    fn response_header(&self, index: usize) -> Option<&HeaderValue> {
        self.named.as_ref()?.response.get(index)?.as_ref()
    }

    /// The request target as the client sent it: path and query.
    fn target(&self) -> &str {
        self.path_and_query.as_ref().map_or("/", |pq| pq.as_str())
    }

    fn path(&self) -> &str {
        self.path_and_query.as_ref().map_or("", |pq| pq.path())
    }

    fn query(&self) -> &str {
        self.path_and_query.as_ref().and_then(|pq| pq.query()).unwrap_or("")
    }

    pub fn add_bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    pub fn mark_complete(&mut self) {
        self.complete = true;
    }

    /// The response was over (sent, or abandoned) at `ended`: queue the entry.
    pub fn finish(mut self: Box<Self>, ended: Moment) {
        self.counted = true;
        let latency = ended.since(self.started);
        metrics::request_finished(&self.method, self.status, latency, self.bytes);
        if enabled() {
            batch(self, latency);
        } else {
            keep_spare(self);
        }
    }
}

/// A thread's rendered lines hand over to the writer at this size...
const FLUSH_BYTES: usize = 32 * 1024;
/// ...or this long after the first of them, whichever comes first.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

struct Batch {
    lines: Vec<u8>,
    /// Read when the first of `lines` was rendered: a batch is handed over within
    /// [`FLUSH_AFTER`], so one reading of the wall clock serves all its lines.
    wall: WallClock,
    flush_scheduled: bool,
    /// The allocations of the thread's finished observations, for its next ones: a request
    /// costs no allocator call for its entry, logged or only counted. A list rather than one
    /// spare, because an I/O thread has many requests in flight at once; at most
    /// [`SPARES_KEPT`], so that a burst of connections does not pin its memory for good.
    #[allow(clippy::vec_box)] // each is handed out as the allocation of a `Box<Observation>`
    spares: Vec<Box<MaybeUninit<Observation>>>,
}

/// How many finished observations' allocations a thread keeps for reuse (a few hundred bytes
/// each).
const SPARES_KEPT: usize = 256;

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { lines: Vec::new(), wall: WallClock::UNREAD, flush_scheduled: false, spares: Vec::new() })
    };
}

impl Batch {
    fn keep(&mut self, spare: Box<MaybeUninit<Observation>>) {
        if self.spares.len() < SPARES_KEPT {
            self.spares.push(spare);
        }
    }
}

/// Drops an observation's contents and keeps its allocation.
fn emptied(observation: Box<Observation>) -> Box<MaybeUninit<Observation>> {
    let raw = Box::into_raw(observation);
    // SAFETY: `raw` comes from a Box and its contents are dropped exactly once, here; what is
    // left is an allocation with the layout of an `Observation`, which is what a
    // `Box<MaybeUninit<Observation>>` owns.
    unsafe {
        std::ptr::drop_in_place(raw);
        Box::from_raw(raw.cast::<MaybeUninit<Observation>>())
    }
}

/// Keeps the allocation of an observation that was only counted, for the thread's next one.
fn keep_spare(observation: Box<Observation>) {
    BATCH.with(|cell| {
        if let Ok(mut batch) = cell.try_borrow_mut() {
            batch.keep(emptied(observation));
        }
    });
}

fn batch(observation: Box<Observation>, latency: Duration) {
    BATCH.with(|cell| {
        let Ok(mut batch) = cell.try_borrow_mut() else {
            let time = WallClock::now().since_epoch(observation.started);
            return sink::submit(Entry::Record(Box::new(AccessEntry { observation, latency, time })));
        };
        if batch.lines.is_empty() {
            batch.wall = WallClock::now();
            if batch.lines.capacity() == 0 {
                // One allocation per batch instead of a chain of regrowths.
                batch.lines.reserve(FLUSH_BYTES + 4096);
            }
        }
        let time = batch.wall.since_epoch(observation.started);
        let entry = AccessEntry { observation, latency, time };
        entry.render(&mut batch.lines);
        batch.keep(emptied(entry.observation));
        if batch.lines.len() >= FLUSH_BYTES {
            let lines = std::mem::take(&mut batch.lines);
            drop(batch);
            return sink::submit(Entry::Bytes { target: Target::AccessFile, bytes: lines });
        }
        if batch.flush_scheduled {
            return;
        }
        // On the I/O thread a timer hands the lines over; a thread without a runtime (a
        // response dropped by a Python thread) hands them over at once.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                batch.flush_scheduled = true;
                runtime.spawn(async {
                    tokio::time::sleep(FLUSH_AFTER).await;
                    flush_thread();
                });
            }
            Err(_) => {
                let lines = std::mem::take(&mut batch.lines);
                drop(batch);
                sink::submit(Entry::Bytes { target: Target::AccessFile, bytes: lines });
            }
        }
    });
}

/// Hands this thread's rendered lines to the writer. Called by the timer, and by the I/O
/// thread once its runtime has stopped.
pub fn flush_thread() {
    let lines = BATCH.with(|cell| {
        let mut batch = cell.borrow_mut();
        batch.flush_scheduled = false;
        std::mem::take(&mut batch.lines)
    });
    if !lines.is_empty() {
        sink::submit(Entry::Bytes { target: Target::AccessFile, bytes: lines });
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first.clone());
    }
    let mut all = first.as_bytes().to_vec();
    for value in rest {
        all.extend_from_slice(b", ");
        all.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&all).ok()
}

struct AccessEntry {
    observation: Box<Observation>,
    latency: Duration,
    /// When the request began, since the Unix epoch.
    time: Duration,
}

fn push_latin1(text: &mut String, bytes: &[u8]) {
    text.extend(bytes.iter().map(|&b| b as char));
}

struct Latin1<'a>(&'a [u8]);

impl Serialize for Latin1<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_ascii() {
            return serializer.serialize_str(std::str::from_utf8(self.0).unwrap_or_default());
        }
        log::with_scratch(|text| {
            push_latin1(text, self.0);
            serializer.serialize_str(text)
        })
    }
}

impl AccessEntry {
    /// The entry as one JSON line, every value encoded by serde_json.
    fn write_encoded_json(&self, project: Option<&str>, out: &mut Vec<u8>) {
        let o = &self.observation;
        log::write_json_line(out, |entry| {
            entry.field("severity", SEVERITIES[severity(o.status)])?;
            log::with_scratch(|message| {
                message.push_str(o.method.as_str());
                message.push(' ');
                message.push_str(o.target());
                message.push(' ');
                message.push_str(log::decimal(o.status as u64, &mut [0; 20]));
                entry.field("message", message.as_str())
            })?;
            entry.field("time", &Timestamp(self.time))?;
            entry.object("httpRequest", |request| self.write_http_request(request))?;
            log::write_trace(entry, o.trace.as_ref(), project)
        })
    }

    /// Cloud Logging's `httpRequest` object.
    fn write_http_request(&self, request: &mut JsonObject<'_>) -> serde_json::Result<()> {
        let o = &self.observation;
        request.field("requestMethod", o.method.as_str())?;
        request.field("requestUrl", o.target())?;
        request.field("status", &o.status)?;
        // An int64, which Cloud Logging's JSON form writes as a string.
        request.field("responseSize", log::decimal(o.bytes, &mut [0; 20]))?;
        if let Some(ua) = &o.user_agent {
            request.field("userAgent", &Latin1(ua.as_bytes()))?;
        }
        request.field("remoteIp", o.remote.as_str())?;
        request.field("protocol", protocol(o.version))?;
        if let Some(referer) = &o.referer {
            request.field("referer", &Latin1(referer.as_bytes()))?;
        }
        request.field("latency", &ProtoDuration(self.latency))
    }
}

/// An access entry's Cloud Logging severity, by status class: an index into [`SEVERITIES`].
fn severity(status: u16) -> usize {
    match status {
        500.. => 2,
        400..=499 => 1,
        _ => 0,
    }
}

const SEVERITIES: [&str; 3] = ["INFO", "WARNING", "ERROR"];

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

impl Render for AccessEntry {
    fn target(&self) -> Target {
        Target::AccessFile
    }

    fn render(&self, out: &mut Vec<u8>) {
        match log::format() {
            Format::Json => self.render_json(log::project(), out),
            Format::Text => {
                if let Some(log) = ACCESS_LOG.get() {
                    log.render_text(self, out);
                }
            }
        }
    }
}

impl AccessLog {
    fn render_text(&self, entry: &AccessEntry, out: &mut Vec<u8>) {
        match self.room_for(&entry.observation) {
            Some(room) => write_line(out, room, |line| self.write_text(entry, line)),
            None => self.write_escaped_text(entry, out),
        }
    }

    /// The room a line for `o` takes, or `None` if something the client sent needs escaping.
    fn room_for(&self, o: &Observation) -> Option<usize> {
        let uses = &self.uses;
        let mut room = self.fixed_room + uses.method * (o.method.as_str().len() + LineWriter::METHOD_ROOM);
        let mut client_text = |text: &[u8], uses: usize| {
            room += uses * text.len();
            uses == 0 || is_plain_text(text)
        };
        let clean = client_text(o.target().as_bytes(), uses.target)
            && o.user_agent.as_ref().is_none_or(|v| client_text(v.as_bytes(), uses.user_agent))
            && o.referer.as_ref().is_none_or(|v| client_text(v.as_bytes(), uses.referer))
            && o.named.as_ref().is_none_or(|named| named.values().all(|v| client_text(v.as_bytes(), 1)));
        clean.then_some(room)
    }

    /// A line with nothing to escape, in the room [`AccessLog::room_for`] found.
    fn write_text(&self, entry: &AccessEntry, line: &mut LineWriter<'_>) {
        let o = &entry.observation;
        for piece in &self.pieces {
            match piece.atom {
                Atom::Remote => {
                    let (block, len) = o.remote.block();
                    line.block(block, len);
                }
                Atom::Time => line.block(&access_time_text(entry.time), ACCESS_TIME_LEN),
                Atom::RequestLine => {
                    line.method(&o.method);
                    line.byte(b' ');
                    line.bytes(o.target().as_bytes());
                    line.byte(b' ');
                    line.short(protocol_short(o.version));
                }
                Atom::Status => line.block(&status_digits(o.status), 3),
                Atom::SizeOrDash if o.bytes == 0 => line.byte(b'-'),
                Atom::SizeOrDash | Atom::Size => line.decimal(o.bytes),
                Atom::Referer => write_header(line, o.referer.as_ref()),
                Atom::UserAgent => write_header(line, o.user_agent.as_ref()),
                Atom::Other(index) => write_less_common(&self.parts[index], entry, line),
            }
            line.short(&piece.then);
        }
        line.byte(b'\n');
    }

    /// A line in which something the client sent holds control characters, quotes, backslashes
    /// or bytes beyond ASCII: only that is checked and escaped, since the method is a token and
    /// the address, numbers and time are ours.
    fn write_escaped_text(&self, entry: &AccessEntry, out: &mut Vec<u8>) {
        let o = &entry.observation;
        for part in &self.parts {
            match part {
                Part::Literal(literal) => out.extend_from_slice(literal.text.as_bytes()),
                Part::Remote => out.extend_from_slice(o.remote.as_str().as_bytes()),
                Part::Time => out.extend_from_slice(&access_time_text(entry.time)),
                Part::RequestLine => {
                    out.extend_from_slice(o.method.as_str().as_bytes());
                    out.push(b' ');
                    push_text(out, o.target());
                    out.push(b' ');
                    out.extend_from_slice(protocol(o.version).as_bytes());
                }
                Part::Status => out.extend_from_slice(&status_digits(o.status)),
                Part::Method => out.extend_from_slice(o.method.as_str().as_bytes()),
                Part::Path => push_text(out, o.path()),
                Part::Query => push_text(out, o.query()),
                Part::Protocol => out.extend_from_slice(protocol(o.version).as_bytes()),
                Part::SizeOrDash if o.bytes == 0 => out.push(b'-'),
                Part::SizeOrDash | Part::Size => push_number(out, o.bytes),
                Part::Referer => push_header(out, o.referer.as_ref()),
                Part::UserAgent => push_header(out, o.user_agent.as_ref()),
                Part::Seconds | Part::Micros | Part::Millis | Part::Pid => push_number(out, entry.number(part)),
                Part::DecimalSeconds => out.extend_from_slice(decimal_seconds(entry.latency, &mut [0; DECIMAL_SECONDS_ROOM])),
                Part::RequestHeader(i) => push_header(out, o.request_header(*i)),
                Part::ResponseHeader(i) => push_header(out, o.response_header(*i)),
            }
        }
        out.push(b'\n');
    }
}

fn write_header(line: &mut LineWriter<'_>, value: Option<&HeaderValue>) {
    match value {
        Some(value) => line.bytes(value.as_bytes()),
        None => line.byte(b'-'),
    }
}

/// The parts gunicorn's default format does not use. Kept out of line: inlined, the compiler
/// computed their numbers for every line before it knew whether the format wanted them.
#[inline(never)]
fn write_less_common(part: &Part, entry: &AccessEntry, line: &mut LineWriter<'_>) {
    let o = &entry.observation;
    match part {
        Part::Method => line.method(&o.method),
        Part::Path => line.bytes(o.path().as_bytes()),
        Part::Query => line.bytes(o.query().as_bytes()),
        Part::Protocol => line.short(protocol_short(o.version)),
        Part::Seconds | Part::Micros | Part::Millis | Part::Pid => {
            line.decimal(entry.number(part));
        }
        Part::DecimalSeconds => line.bytes(decimal_seconds(entry.latency, &mut [0; DECIMAL_SECONDS_ROOM])),
        Part::RequestHeader(i) => write_header(line, o.request_header(*i)),
        Part::ResponseHeader(i) => write_header(line, o.response_header(*i)),
        // A literal that starts the line, or too long to follow an atom as its `Short`.
        Part::Literal(Literal { short: Some(short), .. }) => line.short(short),
        Part::Literal(Literal { text, short: None }) => line.bytes(text.as_bytes()),
        Part::Remote
        | Part::Time
        | Part::RequestLine
        | Part::Status
        | Part::SizeOrDash
        | Part::Size
        | Part::Referer
        | Part::UserAgent => {
            unreachable!("written by write_text")
        }
    }
}

impl AccessEntry {
    /// The value of a numeric atom that is not about the response body.
    fn number(&self, part: &Part) -> u64 {
        latency_number(part, self.latency)
    }
}

/// The value of `%(T)s`, `%(D)s`, `%(M)s` or `%(p)s`.
#[inline]
fn latency_number(part: &Part, latency: Duration) -> u64 {
    match part {
        Part::Seconds => latency.as_secs(),
        Part::Micros => latency.as_micros() as u64,
        Part::Millis => latency.as_millis() as u64,
        Part::Pid => std::process::id() as u64,
        _ => 0,
    }
}

fn protocol_short(version: Version) -> &'static Short {
    const HTTP_10: Short = Short::new(b"HTTP/1.0").unwrap();
    const HTTP_11: Short = Short::new(b"HTTP/1.1").unwrap();
    const HTTP_2: Short = Short::new(b"HTTP/2").unwrap();
    match version {
        Version::HTTP_10 => &HTTP_10,
        Version::HTTP_2 => &HTTP_2,
        _ => &HTTP_11,
    }
}

/// `%(L)s`, as gunicorn writes it: whole seconds, a point and six digits of microseconds.
fn decimal_seconds(latency: Duration, buf: &mut [u8; DECIMAL_SECONDS_ROOM]) -> &[u8] {
    let len = log::decimal_digits(latency.as_secs(), buf);
    buf[len] = b'.';
    let mut micros = latency.subsec_micros();
    for digit in buf[len + 1..len + 7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    &buf[..len + 7]
}

/// A status code's three digits (the http crate keeps codes within 100..=999).
fn status_digits(status: u16) -> [u8; 3] {
    let status = u32::from(status) % 1000;
    let (hundreds, rest) = (status / 100, status % 100);
    [b'0' + hundreds as u8, b'0' + (rest / 10) as u8, b'0' + (rest % 10) as u8]
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(log::decimal(n, &mut [0; 20]).as_bytes());
}

/// Whether every byte goes into a line as it is: printable ASCII (0x20 to 0x7e) but the quote,
/// which would end a quoted field of a text line or a JSON string, and the backslash, which
/// would make the escapes ambiguous.
fn is_plain_text(bytes: &[u8]) -> bool {
    every_byte(bytes, |b| (b.wrapping_sub(0x20) < 0x5f) & (b != b'"') & (b != b'\\'))
}

/// Whether `rule` holds for every byte, which must include `b'a'`. The bytes are taken 16 at a
/// time and every one is looked at, without stopping at the first that breaks the rule, so
/// that the compiler checks each block in a few vector instructions: a browser's User-Agent
/// is over 100 bytes, and nearly every line is clean. Text shorter than a block is padded
/// with `a`, or, under 8 bytes (a target of `/`), checked a byte at a time, which is cheaper
/// there; longer text ends with a block that overlaps the one before.
#[inline(always)]
fn every_byte(bytes: &[u8], rule: impl Fn(u8) -> bool + Copy) -> bool {
    const BLOCK: usize = 16;
    let block = |block: &[u8; BLOCK]| block.iter().fold(true, |all, &b| all & rule(b));
    if bytes.len() < 8 {
        return bytes.iter().all(|&b| rule(b));
    }
    if bytes.len() < BLOCK {
        let mut padded = [b'a'; BLOCK];
        padded[..bytes.len()].copy_from_slice(bytes);
        return block(&padded);
    }
    let (blocks, _) = bytes.as_chunks::<BLOCK>();
    let last = bytes.last_chunk::<BLOCK>().expect("at least one block");
    blocks.iter().fold(true, |all, b| all & block(b)) & block(last)
}

/// Request text for a text line: every byte that is not [plain](is_plain_text) as `\xNN`, the
/// way nginx writes them, so that a line is always ASCII, one line, and split by its quotes
/// as the format has them, whatever the client sent (a target may hold UTF-8, a header any
/// byte from 0x80 up).
fn push_text(out: &mut Vec<u8>, text: &str) {
    push_escaped(out, text.as_bytes());
}

fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if is_plain_text(bytes) {
        return out.extend_from_slice(bytes);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 16);
    for &b in bytes {
        if is_plain_text(&[b]) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// A header value for a text line, escaped as [`push_text`] does, or `-`.
fn push_header(out: &mut Vec<u8>, value: Option<&HeaderValue>) {
    match value {
        None => out.push(b'-'),
        Some(v) => push_escaped(out, v.as_bytes()),
    }
}

/// "00" to "99".
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// A protobuf-JSON duration, as Cloud Logging's `latency` wants it: `"0.012s"`.
struct ProtoDuration(Duration);

impl ProtoDuration {
    /// The most a duration's text takes.
    const ROOM: usize = 32;

    /// The text as the first `len` bytes of a block.
    fn block(&self) -> ([u8; Self::ROOM], usize) {
        let mut buf = [0; Self::ROOM];
        let point = log::decimal_digits(self.0.as_secs(), &mut buf);
        buf[point] = b'.';
        // Nine digits of nanoseconds, two at a time: this runs for every JSON access entry.
        let mut nanos = self.0.subsec_nanos() as usize;
        let digits = &mut buf[point + 1..point + 10];
        digits[8] = b'0' + (nanos % 10) as u8;
        nanos /= 10;
        for pair in digits[..8].rchunks_exact_mut(2) {
            pair.copy_from_slice(&DIGIT_PAIRS[2 * (nanos % 100)..][..2]);
            nanos /= 100;
        }
        // Trailing zeros go, but one digit stays: "3.0s".
        let kept = digits.iter().rposition(|&d| d != b'0').map_or(1, |last| last + 1);
        buf[point + 1 + kept] = b's';
        (buf, point + kept + 2)
    }

    fn text<'b>(&self, buf: &'b mut [u8; Self::ROOM]) -> &'b str {
        let len;
        (*buf, len) = self.block();
        std::str::from_utf8(&buf[..len]).unwrap_or_default()
    }
}

impl Serialize for ProtoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text(&mut [0; 32]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunicorn_default_format_parses() {
        let log = parse_format(DEFAULT_FORMAT).unwrap();
        assert_eq!(log.parts[0], Part::Remote);
        assert!(log.parts.contains(&Part::RequestLine));
        assert!(parse_format("%(nope)s").is_err());
        assert!(parse_format("%(h)").is_err());
        let headers = parse_format("%({x-request-id}i)s %({content-type}o)s").unwrap();
        assert_eq!(headers.request_headers.len(), 1);
        assert_eq!(headers.response_headers.len(), 1);
    }

    #[test]
    fn constant_atoms_fold_into_literals() {
        std::env::set_var("COLDBREW_TEST_ACCESS_ENV", "e\x1bv");
        let log = parse_format("%(h)s %(l)s %(u)s %(t)s %({COLDBREW_TEST_ACCESS_ENV}e)s\t%(s)s").unwrap();
        assert_eq!(
            log.parts,
            [
                Part::Remote,
                Part::Literal(" - - ".into()),
                Part::Time,
                Part::Literal(" e\\x1bv\\x09".into()),
                Part::Status,
            ]
        );
    }

    /// One byte changed at every position of texts long and short enough for both the
    /// vectorised body of the check and its scalar tail.
    pub(super) fn check_every_byte_everywhere(check: fn(&[u8]) -> bool, rule: fn(u8) -> bool) {
        for len in 1..48 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    assert_eq!(check(&text), rule(b), "byte {b:#04x} at {at} of {len}");
                }
            }
        }
        assert!(check(b""));
    }

    #[test]
    fn plain_text_is_printable_ascii_but_quote_and_backslash() {
        check_every_byte_everywhere(is_plain_text, |b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    }

    fn entry(log: &AccessLog, request: http::Request<()>) -> AccessEntry {
        let seen = TelemetryHeaders::scan(request.headers());
        let mut observation = Observation::new(&request, &seen, AddrText::EMPTY, None, Moment::now(), Some(log));
        observation.status = 200;
        observation.bytes = 5;
        // Made without `begin`, so never counted in flight: dropping it must not uncount it.
        observation.counted = true;
        AccessEntry { observation, latency: Duration::from_micros(1500), time: crate::clock::since_epoch(std::time::SystemTime::now()) }
    }

    fn text_line(format: &str, request: http::Request<()>) -> String {
        let log = parse_format(format).unwrap();
        let mut out = Vec::new();
        log.render_text(&entry(&log, request), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn http_request_object_is_encoded_json() {
        let log = parse_format(DEFAULT_FORMAT).unwrap();
        let request = http::Request::post("/a\"b?x=\u{85}")
            .header("user-agent", HeaderValue::from_bytes(b"\"}{\x85\xff").unwrap())
            .body(())
            .unwrap();
        let mut line = Vec::new();
        log::write_json_line(&mut line, |object| entry(&log, request).write_http_request(object));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["requestMethod"], "POST");
        assert_eq!(value["requestUrl"], "/a\"b?x=\u{85}");
        assert_eq!(value["status"], 200);
        assert_eq!(value["responseSize"], "5");
        assert_eq!(value["userAgent"], "\"}{\u{85}\u{ff}");
        assert_eq!(value["protocol"], "HTTP/1.1");
        assert_eq!(value["latency"], "0.0015s");
        assert!(value.get("referer").is_none());
    }

    #[test]
    fn text_lines_escape_what_the_client_sent() {
        let request = http::Request::get("/caf\u{e9}/\u{85}x?q=\u{9b}31m")
            .header("user-agent", HeaderValue::from_bytes(b"a\tb\x85c\xff").unwrap())
            .header("referer", "https://example.com/")
            .header("x-evil", HeaderValue::from_bytes(b"\x9b2J").unwrap())
            .body(())
            .unwrap();
        let line = text_line(r#""%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-evil}i)s %(U)s %(q)s %(D)s"#, request);
        // Every byte outside printable ASCII, as the client sent it: UTF-8 in the target,
        // latin-1 in the headers.
        assert_eq!(
            line,
            "\"GET /caf\\xc3\\xa9/\\xc2\\x85x?q=\\xc2\\x9b31m HTTP/1.1\" 200 5 \"https://example.com/\" \"a\\x09b\\x85c\\xff\" \
             \\x9b2J /caf\\xc3\\xa9/\\xc2\\x85x q=\\xc2\\x9b31m 1500\n"
        );
    }

    #[test]
    fn quotes_and_backslashes_cannot_end_a_quoted_field() {
        let request = http::Request::get("/a\"b\\c?d=\\")
            .header("user-agent", "x\" \"forged")
            .header("referer", "\\\"")
            .header("x-id", "\"")
            .body(())
            .unwrap();
        let line = text_line(r#""%(r)s" "%(f)s" "%(a)s" "%({x-id}i)s" %(U)s %(q)s"#, request);
        assert_eq!(
            line,
            "\"GET /a\\x22b\\x5cc?d=\\x5c HTTP/1.1\" \"\\x5c\\x22\" \"x\\x22 \\x22forged\" \"\\x22\" /a\\x22b\\x5cc d=\\x5c\n"
        );
        // The eight quotes of the format, and no other.
        assert_eq!(line.matches('"').count(), 8);
    }

    const EVERY_ATOM: &str = "%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s %(B)s \"%(f)s\" \"%(a)s\" %(T)s %(D)s %(M)s %(L)s \
                              %(p)s %(m)s %(U)s ?%(q)s %(H)s %({x-id}i)s %({x-none}i)s %({content-type}o)s \
                              a literal longer than sixteen bytes|%(U)s";

    /// Both ways of writing a line, from the same entry.
    fn both_lines(log: &AccessLog, entry: &AccessEntry) -> (Vec<u8>, Vec<u8>) {
        let mut fast = b"earlier line\n".to_vec();
        let room = log.room_for(&entry.observation).expect("nothing to escape");
        write_line(&mut fast, room, |line| log.write_text(entry, line));
        let mut escaped = b"earlier line\n".to_vec();
        log.write_escaped_text(entry, &mut escaped);
        (fast, escaped)
    }

    #[test]
    fn lines_without_escapes_match_the_escaping_writer() {
        let log = parse_format(EVERY_ATOM).unwrap();
        let request = http::Request::get("/path/to?x=1&y=%20")
            .header("user-agent", "curl/8.0")
            .header("referer", "https://example.com/")
            .header("x-id", "abc")
            .header("x-id", "def")
            .body(())
            .unwrap();
        let mut entry = entry(&log, request);
        entry.observation.status = 404;
        // What `respond` keeps for the enabled log's `%({content-type}o)s`.
        entry.observation.named.as_mut().unwrap().response = vec![Some(HeaderValue::from_static("text/plain"))];
        entry.latency = Duration::new(3, 4_005_006);
        let peer: std::net::SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        entry.observation.remote = crate::http::AddrText::format(peer.ip());
        let (fast, escaped) = both_lines(&log, &entry);
        assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(escaped.clone()).unwrap());
        let line = String::from_utf8(escaped).unwrap();
        let line = line.strip_prefix("earlier line\n").unwrap();
        let (_, after_time) = line.split_once("] ").unwrap();
        assert!(line.starts_with("2001:db8::1 - - ["), "{line}");
        let time = &line["2001:db8::1 - - ".len()..line.find("] ").unwrap() + 1];
        assert_eq!(time.len(), ACCESS_TIME_LEN, "{time}");
        assert!(time.ends_with(" +0000]"), "{time}");
        let pid = std::process::id();
        assert_eq!(
            after_time,
            format!(
                "\"GET /path/to?x=1&y=%20 HTTP/1.1\" 404 5 5 \"https://example.com/\" \"curl/8.0\" 3 3004005 3004 3.004005 \
                 {pid} GET /path/to ?x=1&y=%20 HTTP/1.1 abc, def - text/plain a literal longer than sixteen bytes|/path/to\n"
            )
        );
    }

    #[test]
    fn a_line_needing_escapes_takes_the_escaping_writer() {
        let log = parse_format(EVERY_ATOM).unwrap();
        let request = http::Request::get("/").header("x-id", HeaderValue::from_bytes(b"a\tb").unwrap()).body(()).unwrap();
        assert_eq!(log.room_for(&entry(&log, request).observation), None);
        // A field the format does not write does not count.
        let log = parse_format("%(s)s").unwrap();
        let request = http::Request::get("/").header("user-agent", HeaderValue::from_bytes(b"a\x85b").unwrap()).body(()).unwrap();
        assert!(log.room_for(&entry(&log, request).observation).is_some());
    }

    proptest::proptest! {
        /// Whatever the format and the (printable) request, the reserved room holds the line
        /// (the writer panics otherwise) and both writers agree.
        #[test]
        fn reserved_room_always_holds_the_line(
            atoms in proptest::collection::vec(0usize..24, 0..40),
            literals in proptest::collection::vec("[ -~]{0,40}", 40),
            target in "/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,300}",
            // Printable, and without the quote and the backslash, which a text line escapes.
            agent in proptest::option::of("[ !#-\\[\\]-~]{0,300}"),
            status in 100u16..1000,
            bytes in proptest::num::u64::ANY,
            micros in proptest::num::u64::ANY,
        ) {
            const ATOMS: [&str; 24] = [
                "h", "l", "u", "t", "r", "s", "m", "U", "q", "H", "b", "B", "f", "a", "T", "D", "M", "L", "p",
                "{x-id}i", "{x-id}i", "{content-type}o", "{NO_SUCH_VARIABLE}e", "a",
            ];
            let mut format = String::new();
            for (atom, literal) in atoms.iter().zip(&literals) {
                format.push_str(&literal.replace('%', ""));
                format.push_str(&format!("%({})s", ATOMS[*atom]));
            }
            let log = parse_format(&format).unwrap();
            let mut request = http::Request::get(target.as_str()).header("x-id", target.as_str());
            if let Some(agent) = &agent {
                request = request.header("user-agent", agent.as_str());
            }
            let mut entry = entry(&log, request.body(()).unwrap());
            entry.observation.status = status;
            entry.observation.bytes = bytes;
            entry.latency = Duration::from_micros(micros);
            let (fast, escaped) = both_lines(&log, &entry);
            proptest::prop_assert_eq!(fast, escaped);
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 200, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn durations_read_like_cloud_logging_wants() {
        let text = |d: Duration| ProtoDuration(d).text(&mut [0; 32]).to_owned();
        assert_eq!(text(Duration::from_millis(12)), "0.012s");
        assert_eq!(text(Duration::from_secs(3)), "3.0s");
        assert_eq!(text(Duration::from_nanos(1_500_000_001)), "1.500000001s");
        assert_eq!(text(Duration::from_nanos(1_000_000_100)), "1.0000001s");
        assert_eq!(text(Duration::ZERO), "0.0s");
        assert_eq!(text(Duration::MAX), "18446744073709551615.999999999s");
    }

    proptest::proptest! {
        #[test]
        fn durations_match_plain_formatting(secs in proptest::num::u64::ANY, nanos in 0u32..1_000_000_000) {
            let fraction = format!("{nanos:09}");
            let fraction = match fraction.trim_end_matches('0') {
                "" => "0",
                kept => kept,
            };
            let text = ProtoDuration(Duration::new(secs, nanos)).text(&mut [0; 32]).to_owned();
            proptest::prop_assert_eq!(text, format!("{secs}.{fraction}s"));
        }
    }
}
