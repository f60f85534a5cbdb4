//! Log lines from the server and from the app's `logging`, as text or as Cloud Logging JSON.
//!
//! A line is a record handed to the sink's writer thread, which formats and writes it: the
//! request path only pays for building the message.

use std::cell::Cell;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::ser::{Serialize, Serializer};

use super::sink::{self, Entry, Render, Target};
use super::trace::TraceContext;
use crate::clock::since_epoch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
    Critical = 50,
}

impl Level {
    pub fn parse(name: &str) -> Option<Level> {
        Some(match name.to_ascii_lowercase().as_str() {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warning" | "warn" => Level::Warning,
            "error" => Level::Error,
            "critical" => Level::Critical,
            _ => return None,
        })
    }

    /// The level of a Python `logging` record.
    pub fn from_python(levelno: i64) -> Level {
        match levelno {
            n if n >= 50 => Level::Critical,
            n if n >= 40 => Level::Error,
            n if n >= 30 => Level::Warning,
            n if n >= 20 => Level::Info,
            _ => Level::Debug,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Format {
    /// `[time] [pid] [LEVEL] message`, for people.
    Text = 0,
    /// One JSON object per line, as Cloud Logging reads it.
    Json = 1,
}

static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);
static PROJECT: OnceLock<String> = OnceLock::new();

thread_local! {
    /// The trace of the request this thread is serving, for the server's own lines about it.
    static CURRENT_TRACE: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

pub fn set_level(level: Level) {
    THRESHOLD.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= THRESHOLD.load(Ordering::Relaxed)
}

pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

pub fn format() -> Format {
    if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        Format::Json
    } else {
        Format::Text
    }
}

/// The Google Cloud project that trace ids are qualified with; without one the trace field is
/// left out of JSON lines.
pub fn set_project(project: &str) {
    if !project.is_empty() {
        let _ = PROJECT.set(project.to_owned());
    }
}

pub fn project() -> Option<&'static str> {
    PROJECT.get().map(String::as_str)
}

pub fn set_current_trace(trace: Option<TraceContext>) {
    CURRENT_TRACE.with(|t| t.set(trace));
}

/// A server log line.
pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    if enabled(level) {
        emit_traced(level, CURRENT_TRACE.with(Cell::get), args);
    }
}

/// A server line about a request, written from a thread that is not serving it, so the
/// thread's own current trace would be the wrong one.
pub fn emit_traced(level: Level, trace: Option<TraceContext>, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let record = LogRecord { time: SystemTime::now(), level, message: fmt::format(args), trace, source: None, logger: None };
    sink::submit(Entry::Record(Box::new(record)));
}

pub fn debug(args: fmt::Arguments<'_>) {
    emit(Level::Debug, args)
}
pub fn info(args: fmt::Arguments<'_>) {
    emit(Level::Info, args)
}
pub fn warn(args: fmt::Arguments<'_>) {
    emit(Level::Warning, args)
}
pub fn error(args: fmt::Arguments<'_>) {
    emit(Level::Error, args)
}

/// Formats a server line in place, for the writer thread's own notices.
pub fn render_line(level: Level, message: String, out: &mut Vec<u8>) {
    LogRecord { time: SystemTime::now(), level, message, trace: None, source: None, logger: None }.render(out);
}

/// A record from the app's `logging`, already filtered by the app's own configuration.
pub fn emit_app(level: Level, message: String, logger: String, source: Option<SourceLocation>, trace: Option<TraceContext>) {
    let record = LogRecord { time: SystemTime::now(), level, message, trace, source, logger: Some(logger) };
    sink::submit(Entry::Record(Box::new(record)));
}

pub struct SourceLocation {
    pub file: String,
    pub line: u32,
    pub function: String,
}

struct LogRecord {
    time: SystemTime,
    level: Level,
    message: String,
    trace: Option<TraceContext>,
    source: Option<SourceLocation>,
    logger: Option<String>,
}

impl Render for LogRecord {
    fn target(&self) -> Target {
        Target::Stderr
    }

    fn render(&self, out: &mut Vec<u8>) {
        match format() {
            Format::Text => {
                out.push(b'[');
                write_timestamp(since_epoch(self.time), out);
                let _ = write!(out, "] [{}] [{}] ", std::process::id(), self.level.name());
                if let Some(logger) = &self.logger {
                    let _ = write!(out, "[{}] ", escape_controls(logger, true));
                }
                out.extend_from_slice(escape_controls(self.message.trim_end_matches('\n'), true).as_bytes());
                out.push(b'\n');
            }
            Format::Json => write_json_line(out, |entry| {
                entry.field("severity", self.level.name())?;
                entry.field("message", self.message.trim_end_matches('\n'))?;
                entry.field("time", &Timestamp(since_epoch(self.time)))?;
                if let Some(logger) = &self.logger {
                    entry.field("logger", logger)?;
                }
                if let Some(source) = &self.source {
                    entry.object("logging.googleapis.com/sourceLocation", |location| {
                        location.field("file", &source.file)?;
                        // Cloud Logging's `line` is an int64, which its JSON form writes as a string.
                        location.field("line", decimal(source.line as u64, &mut [0; 20]))?;
                        location.field("function", &source.function)
                    })?;
                }
                write_trace(entry, self.trace.as_ref(), project())
            }),
        }
    }
}

/// A JSON object written straight into a line buffer, without building a tree first. The keys
/// are constants of ours and go in as they are; every value, any of which may come from a
/// request, is encoded by serde_json.
pub struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonObject { out, empty: true }
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(key.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'), "{key}");
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> serde_json::Result<()> {
        self.key(key);
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut *self.out, ControlsEscaped))
    }

    pub fn object(&mut self, key: &'static str, fields: impl FnOnce(&mut JsonObject<'_>) -> serde_json::Result<()>) -> serde_json::Result<()> {
        self.key(key);
        let mut inner = JsonObject::open(self.out);
        fields(&mut inner)?;
        inner.out.push(b'}');
        Ok(())
    }
}

/// serde_json's compact output, but for the characters JSON lets through unescaped that a
/// terminal or a line splitter may act on: DEL, the C1 controls (U+0085 ends a line for some
/// readers, U+009B starts a terminal escape) and the Unicode line and paragraph separators.
/// They are written `\u00NN`, so a log line stays one plain line however it is read.
struct ControlsEscaped;

impl serde_json::ser::Formatter for ControlsEscaped {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> std::io::Result<()> {
        // U+007F is 0x7f; the others are encoded from 0xc2 up.
        if !fragment.bytes().any(|b| b == 0x7f || b >= 0xc2) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}') {
                writer.write_all(&fragment.as_bytes()[start..at])?;
                write!(writer, "\\u{:04x}", c as u32)?;
                start = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// One JSON object and a newline. Should an entry fail to encode, nothing of it is left in `out`.
pub fn write_json_line(out: &mut Vec<u8>, fields: impl FnOnce(&mut JsonObject<'_>) -> serde_json::Result<()>) {
    let start = out.len();
    let mut entry = JsonObject::open(out);
    match fields(&mut entry) {
        Ok(()) => out.extend_from_slice(b"}\n"),
        Err(_) => out.truncate(start),
    }
}

/// The trace fields Cloud Logging correlates on; the trace itself only with a `project`.
pub fn write_trace(entry: &mut JsonObject<'_>, trace: Option<&TraceContext>, project: Option<&str>) -> serde_json::Result<()> {
    let Some(trace) = trace else { return Ok(()) };
    if let Some(project) = project {
        with_scratch(|path| {
            path.push_str("projects/");
            path.push_str(project);
            path.push_str("/traces/");
            path.push_str(trace.trace_id());
            entry.field("logging.googleapis.com/trace", path.as_str())
        })?;
    }
    if let Some(span) = trace.span_id() {
        entry.field("logging.googleapis.com/spanId", span)?;
    }
    entry.field("logging.googleapis.com/trace_sampled", &trace.sampled)
}

/// Control characters as `\xNN` (newlines and tabs kept when `multiline`), so a hostile path or
/// header can neither forge a line nor send terminal escapes.
pub fn escape_controls(text: &str, multiline: bool) -> std::borrow::Cow<'_, str> {
    let keep = |c: char| multiline && (c == '\n' || c == '\t');
    if !text.chars().any(|c| c.is_control() && !keep(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && !keep(c) {
            use fmt::Write as _;
            let _ = write!(escaped, "\\x{:02x}", c as u32);
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// `2026-11-25T20:30:00.123Z`, computed without a time-zone database.
#[cfg(test)]
fn utc_timestamp(time: SystemTime) -> String {
    String::from_utf8_lossy(&timestamp_text(since_epoch(time))).into_owned()
}

/// A time (since the Unix epoch) as Cloud Logging's `time` field and the text lines write it
/// (see [`write_timestamp`]).
pub struct Timestamp(pub Duration);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = timestamp_text(self.0);
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// Runs `f` with this thread's scratch string, emptied: JSON values made of several pieces are
/// assembled there and handed to the encoder as one `&str`, without an allocation per line or
/// the formatting machinery.
pub fn with_scratch<R>(f: impl FnOnce(&mut String) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            scratch.clear();
            f(&mut scratch)
        }
        Err(_) => f(&mut String::new()),
    })
}

/// `n` in decimal, in `buf`, without the formatting machinery.
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let len = decimal_digits(n, buf);
    // SAFETY: only ASCII digits were written to buf[..len].
    unsafe { std::str::from_utf8_unchecked(&buf[..len]) }
}

/// Writes `n` in decimal at the start of `buf` (20 bytes hold any `u64`) and returns how many
/// bytes it took. Panics if `buf` is too short.
pub fn decimal_digits(mut n: u64, buf: &mut [u8]) -> usize {
    let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
    for digit in buf[..len].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    len
}

/// Appends the timestamp of a time since the Unix epoch to `out`.
pub fn write_timestamp(since_epoch: Duration, out: &mut Vec<u8>) {
    out.extend_from_slice(&timestamp_text(since_epoch));
}

/// How long a timestamp is: `2026-11-25T20:30:00.123Z`.
pub const TIMESTAMP_LEN: usize = 24;

/// The date and time of day are formatted once per second per thread; the writer thread calls
/// this for every line.
pub fn timestamp_text(since: Duration) -> [u8; TIMESTAMP_LEN] {
    thread_local! {
        static LAST: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let secs = since.as_secs();
    let prefix = LAST.with(|last| {
        let (cached_secs, cached) = last.get();
        if cached_secs == secs {
            return cached;
        }
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let mut text = [0u8; 20];
        let formatted = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.", rem / 3600, (rem % 3600) / 60, rem % 60);
        text.copy_from_slice(&formatted.as_bytes()[..20]);
        last.set((secs, text));
        text
    });
    let millis = since.subsec_millis();
    let mut text = [0u8; TIMESTAMP_LEN];
    text[..20].copy_from_slice(&prefix);
    text[20..].copy_from_slice(&[b'0' + (millis / 100) as u8, b'0' + (millis / 10 % 10) as u8, b'0' + (millis % 10) as u8, b'Z']);
    text
}

/// How long the access log's `%(t)s` is: `[02/Dec/2026:14:12:19 +0000]`.
pub const ACCESS_TIME_LEN: usize = 28;

/// The access log's `%(t)s` as gunicorn writes it, brackets included, so that tools reading
/// the combined format parse it. Always UTC: coldbrew has no time-zone database, and a
/// container's clock is UTC anyway. The text only changes once a second, so each thread keeps
/// the last one it made.
pub fn access_time_text(since: Duration) -> [u8; ACCESS_TIME_LEN] {
    thread_local! {
        static LAST: Cell<(u64, [u8; ACCESS_TIME_LEN])> = const { Cell::new((u64::MAX, [0; ACCESS_TIME_LEN])) };
    }
    let secs = since.as_secs();
    LAST.with(|last| {
        let (cached_secs, cached) = last.get();
        if cached_secs == secs {
            return cached;
        }
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let formatted = format!(
            "[{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000]",
            MONTHS[month as usize - 1],
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        );
        let mut text = [b' '; ACCESS_TIME_LEN];
        // A year past 9999 would not fit; it is cut rather than overrunning the block.
        let len = formatted.len().min(ACCESS_TIME_LEN);
        text[..len].copy_from_slice(&formatted.as_bytes()[..len]);
        last.set((secs, text));
        text
    })
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use std::time::Duration;

    #[test]
    fn json_lines_encode_every_value() {
        let hostile = "x\", \"severity\": \"EMERGENCY\"}\n{\"\u{1b}[31m\\";
        let mut out = b"before\n".to_vec();
        write_json_line(&mut out, |entry| {
            entry.field("message", hostile)?;
            entry.object("nested", |inner| {
                inner.field("n", &7u16)?;
                inner.field("ok", &true)
            })?;
            entry.field("after", "")
        });
        let text = String::from_utf8(out).unwrap();
        let (before, line) = text.split_once('\n').unwrap();
        assert_eq!(before, "before");
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value, serde_json::json!({"message": hostile, "nested": {"n": 7, "ok": true}, "after": ""}));
    }

    #[test]
    fn json_lines_escape_what_terminals_and_line_splitters_act_on() {
        let text = "a\u{7f}b\u{85}c\u{9b}31m\u{a0}\u{e9}\u{2028}\u{2029}\u{1b}\"";
        let mut out = Vec::new();
        write_json_line(&mut out, |entry| entry.field("message", text));
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "{\"message\":\"a\\u007fb\\u0085c\\u009b31m\u{a0}\u{e9}\\u2028\\u2029\\u001b\\\"\"}\n"
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["message"], text);
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_638_600_250);
        assert_eq!(utc_timestamp(t), "2026-11-25T20:30:00.250Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn access_times_read_like_gunicorns() {
        let text = |secs: u64, nanos: u32| String::from_utf8(access_time_text(Duration::new(secs, nanos)).to_vec()).unwrap();
        assert_eq!(text(0, 0), "[01/Jan/1970:00:00:00 +0000]");
        // 2026-12-02T14:12:19.999Z: the fraction is not shown, and the cached second is reused.
        assert_eq!(text(1_796_220_739, 999_999_999), "[02/Dec/2026:14:12:19 +0000]");
        assert_eq!(text(1_796_220_739, 0), "[02/Dec/2026:14:12:19 +0000]");
        assert_eq!(text(1_796_220_740, 0), "[02/Dec/2026:14:12:20 +0000]");
        assert_eq!(text(951_782_400, 0), "[29/Feb/2000:00:00:00 +0000]");
        assert_eq!(text(1_793_491_199, 0), "[31/Oct/2026:23:59:59 +0000]");
        for secs in (0..4_000_000_000u64).step_by(86_399 * 37) {
            let want = chrono_free_reference(secs);
            assert_eq!(text(secs, 0), want, "{secs}");
        }
    }

    /// The same text from the ISO timestamp, which has its own tests.
    fn chrono_free_reference(secs: u64) -> String {
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let iso = String::from_utf8(timestamp_text(Duration::from_secs(secs)).to_vec()).unwrap();
        let (year, month, day) = (&iso[0..4], &iso[5..7], &iso[8..10]);
        format!("[{day}/{}/{year}:{} +0000]", MONTHS[month.parse::<usize>().unwrap() - 1], &iso[11..19])
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape_controls("GET /a\x1b[31mred", false), "GET /a\\x1b[31mred");
        assert_eq!(escape_controls("line\nnext\r", true), "line\nnext\\x0d");
        assert_eq!(escape_controls("line\nnext", false), "line\\x0anext");
        assert!(matches!(escape_controls("plain", false), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("WARNING"), Some(Level::Warning));
        assert_eq!(Level::parse("nope"), None);
        assert!(Level::Error > Level::Info);
    }
}
