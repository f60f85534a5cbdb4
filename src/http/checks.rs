//! What coldbrew checks on a request head after hyper has parsed it and before any app sees
//! it: the size limits (`--limit-request-*`), and the requests hyper's parser lets through
//! that coldbrew refuses (docs/http.md lists each decision and why).
//!
//! The checks read the parsed head once, in one pass over the headers, and allocate nothing
//! unless the request is refused.

use std::borrow::Cow;

use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri, Version};

use super::ConnInfo;
use crate::telemetry::log;

/// Size limits on requests, with gunicorn's names and defaults where gunicorn has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target and version with their two spaces, without the
    /// CRLF), in bytes; 0 = no limit of coldbrew's own.
    pub request_line: usize,
    /// Most header fields in a request head (hyper's `max_headers`).
    pub fields: usize,
    /// Longest header field, counted as `Name: value` plus its CRLF (name + value + 4 bytes,
    /// whatever whitespace surrounded the value); 0 = no limit of coldbrew's own.
    pub field_size: usize,
    /// Largest request body in bytes; 0 = no limit.
    pub body: u64,
}

/// hyper's own header count, which it keeps on the stack.
pub const HYPER_MAX_HEADERS: usize = 100;

/// The largest request head (request line and header fields) whatever the limits say, under
/// hyper's read buffer (about 408 KiB) so that every larger head gets 431.
pub const MAX_HEAD: usize = 400 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits { request_line: 4094, fields: HYPER_MAX_HEADERS, field_size: 8190, body: 32 * 1024 * 1024 }
    }
}

/// A request coldbrew answers itself, without calling the app, and then closes the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    /// What was wrong, for the response body and the log line.
    pub reason: Cow<'static, str>,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection { status, reason: reason.into() }
    }

    fn bad(reason: &'static str) -> Self {
        Rejection::new(StatusCode::BAD_REQUEST, reason)
    }

    /// The answer: a short text that says what was wrong, with `Connection: close`.
    pub fn response(&self) -> super::Response {
        let text = format!("{}: {}\n", self.status.canonical_reason().unwrap_or("Error"), self.reason);
        let mut response = super::plain(self.status, text);
        super::close_connection(&mut response);
        response
    }
}

/// Transfer codings a request may use before its final `chunked`. They are passed on to the
/// app, which sees them in `HTTP_TRANSFER_ENCODING`; `identity` means no coding.
const KNOWN_CODINGS: &[&str] = &["identity", "gzip", "x-gzip", "deflate", "compress", "x-compress"];

/// Checks a parsed request head. `declared` is the body length its `Content-Length` gives
/// (hyper has already refused invalid or conflicting ones).
pub fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    declared: Option<u64>,
    limits: &Limits,
) -> Result<(), Rejection> {
    if limits.request_line > 0 {
        let line = method.as_str().len() + target_len(uri) + " HTTP/1.1 ".len();
        if line > limits.request_line {
            return Err(Rejection::new(
                StatusCode::URI_TOO_LONG,
                format!("the request line is longer than {} bytes", limits.request_line),
            ));
        }
    }

    let mut hosts = 0;
    let mut host = None;
    let mut content_types = 0;
    let mut transfer_encoding = false;
    let mut expect = false;
    for (name, value) in headers {
        if limits.field_size > 0 && name.as_str().len() + value.len() + 4 > limits.field_size {
            return Err(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("a header field is longer than {} bytes", limits.field_size),
            ));
        }
        if name == header::HOST {
            hosts += 1;
            host = Some(value);
            if !valid_host(value.as_bytes()) {
                return Err(Rejection::bad("invalid Host header"));
            }
        } else if name == header::CONTENT_TYPE {
            content_types += 1;
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
        } else if name == header::EXPECT {
            expect = true;
        }
    }
    if hosts > 1 {
        return Err(Rejection::bad("more than one Host header"));
    }
    // RFC 9112 section 3.2 requires the 400; HTTP/1.0 predates Host and HTTP/2 names the
    // host in :authority.
    if hosts == 0 && version == Version::HTTP_11 {
        return Err(Rejection::bad("an HTTP/1.1 request without a Host header"));
    }
    if content_types > 1 {
        return Err(Rejection::bad("more than one Content-Type header"));
    }

    // The target's form must fit the method: authority-form is only for CONNECT, `*` only for
    // OPTIONS (RFC 9112 section 3.2). A WSGI app cannot open a tunnel, so CONNECT itself is
    // not implemented.
    if method == Method::CONNECT {
        return Err(Rejection::new(StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported"));
    }
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(Rejection::bad("a host:port target is only valid with CONNECT"));
    }
    if uri.path() == "*" && method != Method::OPTIONS {
        return Err(Rejection::bad("the * target is only valid with OPTIONS"));
    }
    // With an absolute-form target the server must take the host from the target and ignore
    // Host (RFC 9112 section 3.2.2), while the app reads Host. The client must send them
    // identical, less the target's userinfo (section 3.2): refusing a Host that differs leaves
    // the app one host to read.
    if version < Version::HTTP_2 && uri.scheme().is_some() {
        if let (Some(authority), Some(host)) = (uri.authority(), host) {
            let authority = authority.as_str();
            let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            if !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) {
                return Err(Rejection::bad("the Host header differs from the target's authority"));
            }
        }
    }

    if transfer_encoding {
        // hyper has checked that `chunked` comes last. It must come only once (RFC 9112
        // section 6.1), and the codings before it must be ones the app can know.
        let mut chunked = 0;
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            let Ok(text) = value.to_str() else {
                return Err(Rejection::new(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding"));
            };
            for coding in text.split(',').map(|coding| coding.trim_matches([' ', '\t'])).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") {
                    chunked += 1;
                } else if !KNOWN_CODINGS.iter().any(|known| coding.eq_ignore_ascii_case(known)) {
                    return Err(Rejection::new(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding"));
                }
            }
        }
        if chunked > 1 {
            return Err(Rejection::bad("chunked is applied more than once"));
        }
    }

    // HTTP/1.0 has no expectations: the header is ignored there (RFC 9110 section 10.1.1).
    if expect && version != Version::HTTP_10 {
        for value in headers.get_all(header::EXPECT) {
            if !value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Err(Rejection::new(StatusCode::EXPECTATION_FAILED, "the only expectation supported is 100-continue"));
            }
        }
    }

    if limits.body > 0 && declared.is_some_and(|n| n > limits.body) {
        return Err(too_large(limits.body));
    }
    Ok(())
}

/// The one log line about a refused request: who sent it, what was wrong, the answer, and the
/// request line, escaped and cut short (a refused line may be 64 KiB long).
pub fn log_refused(label: &str, conn: &ConnInfo, method: &Method, uri: &Uri, refused: &Rejection) {
    if !log::enabled(log::Level::Info) {
        return;
    }
    const SHOWN: usize = 200;
    let target = uri.to_string();
    let cut = target.char_indices().nth(SHOWN).map_or(target.len(), |(i, _)| i);
    let more = if cut < target.len() { "..." } else { "" };
    log::info(format_args!(
        "{label}refused a request from {}: {}; answered {}: {} {}{more}",
        conn.peer,
        refused.reason,
        refused.status.as_u16(),
        method,
        log::escape_controls(&target[..cut], false),
    ));
}

/// Writes a 400 to a connection hyper gave up on without answering (the client ended its side
/// inside a request head), in one non-blocking write: a client that does not read gets
/// nothing, and the connection is closed either way.
pub fn answer_unparsed(stream: &tokio::net::TcpStream) {
    let date = http_date(std::time::SystemTime::now());
    let reason = "the connection ended inside the request head";
    let answer = super::hyper_refusal::answer(StatusCode::BAD_REQUEST, reason, Some(date.as_bytes()));
    let _ = stream.try_write(&answer);
}

/// `Wed, 25 Nov 2026 23:52:47 GMT` (RFC 9110 section 5.6.7).
fn http_date(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = log::civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Follows the bytes of an HTTP/1 connection as they arrive, ahead of hyper's parser, for the
/// three things a strict reading of RFC 9112 refuses and hyper's parsed head can no longer
/// show: `Content-Length` together with `Transfer-Encoding` (hyper drops the length before
/// coldbrew sees the head), a bare LF as a line end (hyper's parser takes it for CRLF), and
/// whitespace after a chunk size with no extension after it (hyper's decoder skips it).
///
/// To know which bytes are a head and which a body, it frames every message as hyper does:
/// by the chunked coding when there is a `Transfer-Encoding` (hyper refuses any other), else
/// by `Content-Length`, else no body; a chunked body byte by byte with hyper's own grammar.
/// It never needs to know what hyper has consumed, only the order of the bytes. Wherever
/// hyper would refuse the bytes anyway, or they are not what it expects, it stops looking:
/// after a refusal hyper closes the connection, so no later byte is ever a request, and an
/// unexpected form it cannot frame it leaves alone rather than guess.
///
/// It refuses by overwriting the offending byte with NUL, which hyper's parser and chunked
/// decoder refuse at any position: the request then takes hyper's one path for malformed
/// requests (400 with an empty body, the connection closed, one log line, the app never
/// called). Fixed size, no allocation; a head costs one pass over its bytes, a body with a
/// length costs nothing per byte.
#[derive(Debug)]
pub(super) struct RawScan {
    state: Scan,
    /// The previous byte of a head line was CR.
    cr: bool,
    /// Bytes matched of a field name, or of `PRI ` in a request line; in a length, 0 before
    /// its digits, 1 inside them, 2 after them.
    at: u8,
    /// Which of Content-Length and Transfer-Encoding this head has had.
    seen: u8,
    /// The Content-Length, the chunk size, or what is left of either; after a refusal, where in
    /// the bytes of the refusing `scan` the NUL went.
    size: u64,
    /// The byte the NUL replaced, so that the access log can show what the client sent.
    replaced: u8,
}

const CL: u8 = 1;
const TE: u8 = 2;
const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Before a request line, where empty lines are skipped.
    Idle,
    RequestLine,
    /// At the start of a field line, or of the empty line that ends the head.
    LineStart,
    /// In a field name that may still be the one in `which` (CL or TE).
    Name(u8),
    /// In a Content-Length value.
    Length,
    /// In the rest of a line that matters only for where it ends.
    Rest,
    Body,
    ChunkStart,
    ChunkSize,
    /// Whitespace after a chunk size.
    ChunkSpace,
    ChunkExtension,
    ChunkSizeLf,
    ChunkData,
    ChunkDataCr,
    ChunkDataLf,
    /// After the last chunk: a trailer line, or the CR of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    /// Not HTTP/1 (an HTTP/2 preface), or past a point hyper refuses or that it cannot frame.
    Off,
}

/// The reasons [`RawScan::scan`] gives.
pub(super) const BARE_LF: &str = "a bare LF as a line end";
pub(super) const LENGTH_AND_CHUNKED: &str = "Content-Length together with Transfer-Encoding";
pub(super) const CHUNK_SIZE_SPACE: &str = "whitespace after a chunk size";

impl RawScan {
    pub(super) const fn new() -> Self {
        RawScan { state: Scan::Idle, cr: false, at: 0, seen: 0, size: 0, replaced: 0 }
    }

    /// Where the refusing `scan` wrote its NUL in the bytes it was given, and the byte it replaced.
    pub(super) fn replaced(&self) -> (usize, u8) {
        (self.size as usize, self.replaced)
    }

    /// Reads the next bytes of the connection. When they hold something refused, overwrites
    /// its byte with NUL and says what it was; nothing after it is looked at.
    pub(super) fn scan(&mut self, bytes: &mut [u8]) -> Option<&'static str> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                Scan::Off => return None,
                Scan::Body | Scan::ChunkData => {
                    let n = self.size.min((bytes.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = if self.state == Scan::Body { Scan::Idle } else { Scan::ChunkDataCr };
                    }
                    continue;
                }
                Scan::Idle | Scan::LineStart if !self.cr => {
                    match self.lines(bytes, i) {
                        Ok(next) => i = next,
                        Err(at) => return Some(self.refuse(bytes, at, LENGTH_AND_CHUNKED)),
                    }
                    // What `lines` leaves (a line not whole in these bytes, a bare CR or LF)
                    // goes to the byte machine, which takes the line from its start.
                    if i == bytes.len() || !matches!(self.state, Scan::Idle | Scan::LineStart) {
                        continue;
                    }
                }
                // Only the line's end matters here (in a request line, once its first bytes
                // have shown it is not HTTP/2's preface).
                Scan::Rest | Scan::ChunkExtension | Scan::Trailer | Scan::RequestLine
                    if !self.cr && (self.state != Scan::RequestLine || self.at == u8::MAX) =>
                {
                    match line_end(bytes, i) {
                        Some(at) => i = at,
                        None => return None,
                    }
                }
                _ => {}
            }
            if let Err(reason) = self.step(bytes[i]) {
                return Some(self.refuse(bytes, i, reason));
            }
            i += 1;
        }
        None
    }

    #[cold]
    fn refuse(&mut self, bytes: &mut [u8], at: usize, reason: &'static str) -> &'static str {
        (self.size, self.replaced) = (at as u64, bytes[at]);
        bytes[at] = 0;
        self.state = Scan::Off;
        reason
    }

    /// The common case of a head, a whole line at a time: from `i`, at the start of a line
    /// (in `Idle` or `LineStart`, no CR pending), every line that ends with a CRLF within
    /// `bytes`. Returns where it stopped, which is at the start of a line it left untouched
    /// unless the state has moved on (to a body, or `Off`); or, for a second framing field,
    /// the index of its colon. A line it leaves (one that a read splits, or with a bare CR or
    /// LF) is the byte machine's, from its first byte, so the two cannot disagree on it; the
    /// end of a read that splits a line is then the only place the byte machine runs.
    #[inline]
    fn lines(&mut self, bytes: &[u8], mut i: usize) -> Result<usize, usize> {
        loop {
            if self.state == Scan::Idle {
                // Empty lines before a request line are skipped.
                while bytes.get(i..i + 2) == Some(b"\r\n") {
                    i += 2;
                }
                let Some(end) = whole_line(bytes, i) else { return Ok(i) };
                // No CR or LF in it, so a line that starts so is the preface's.
                if bytes[i..].starts_with(b"PRI ") {
                    self.state = Scan::Off;
                    return Ok(end);
                }
                self.state = Scan::LineStart;
                i = end + 2;
            }
            loop {
                if bytes.get(i) == Some(&b'\r') {
                    if bytes.get(i + 1) != Some(&b'\n') {
                        return Ok(i);
                    }
                    i += 2;
                    self.at = 0;
                    self.state = self.end_of_head();
                    if self.state != Scan::Idle || i == bytes.len() {
                        return Ok(i);
                    }
                    break;
                }
                let Some(end) = whole_line(bytes, i) else { return Ok(i) };
                // Only a line whose first letter and colon fit one of the two names can be
                // either; for the rest, the end of the line is all there is to find.
                let first = bytes[i] | 0x20;
                let colon = if first == b'c' { CONTENT_LENGTH.len() } else { TRANSFER_ENCODING.len() };
                if (first == b'c' || first == b't') && end - i > colon && bytes[i + colon] == b':' {
                    self.field(&bytes[i..end], i)?;
                    if self.state == Scan::Off {
                        return Ok(end);
                    }
                }
                i = end + 2;
            }
        }
    }

    /// A whole field line (without its CRLF) that may be Content-Length or Transfer-Encoding,
    /// as the byte machine takes it; `Err` with the colon's index in the read when it is the
    /// second of the two.
    #[cold]
    #[inline(never)]
    fn field(&mut self, line: &[u8], i: usize) -> Result<(), usize> {
        let Some(which) = framing(line) else { return Ok(()) };
        let name = if which == CL { CONTENT_LENGTH.len() } else { TRANSFER_ENCODING.len() };
        if self.seen & !which != 0 {
            return Err(i + name);
        }
        self.seen |= which;
        if which == CL {
            self.at = 0;
            for &b in &line[name + 1..] {
                self.length_byte(b);
                if self.state == Scan::Off {
                    return Ok(());
                }
            }
            self.at = 0;
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        use Scan::*;
        match self.state {
            Idle | RequestLine | LineStart | Name(_) | Length | Rest => return self.head_byte(b),
            ChunkStart => match hex(b) {
                Some(digit) => {
                    self.size = u64::from(digit);
                    self.state = ChunkSize;
                }
                None => self.state = Off,
            },
            ChunkSize => match (hex(b), b) {
                (Some(digit), _) => match self.size.checked_mul(16).and_then(|n| n.checked_add(u64::from(digit))) {
                    Some(size) => self.size = size,
                    None => self.state = Off,
                },
                (None, b' ' | b'\t') => self.state = ChunkSpace,
                (None, b';') => self.state = ChunkExtension,
                (None, b'\r') => self.state = ChunkSizeLf,
                _ => self.state = Off,
            },
            // The grammar allows whitespace before an extension's `;` (RFC 9112 section
            // 7.1.1), nowhere else on the line.
            ChunkSpace => match b {
                b' ' | b'\t' => {}
                b';' => self.state = ChunkExtension,
                b'\r' => return Err(CHUNK_SIZE_SPACE),
                _ => self.state = Off,
            },
            ChunkExtension => match b {
                b'\r' => self.state = ChunkSizeLf,
                // hyper refuses a LF in an extension.
                b'\n' => self.state = Off,
                _ => {}
            },
            ChunkSizeLf => match b {
                b'\n' if self.size == 0 => self.state = TrailerStart,
                b'\n' => self.state = ChunkData,
                _ => self.state = Off,
            },
            ChunkDataCr => self.state = if b == b'\r' { ChunkDataLf } else { Off },
            ChunkDataLf => self.state = if b == b'\n' { ChunkStart } else { Off },
            TrailerStart => match b {
                b'\r' => self.state = EndLf,
                b'\n' => return Err(BARE_LF),
                _ => self.state = Trailer,
            },
            Trailer => match b {
                b'\r' => self.state = TrailerLf,
                b'\n' => return Err(BARE_LF),
                _ => {}
            },
            TrailerLf => self.state = if b == b'\n' { TrailerStart } else { Off },
            EndLf => self.state = if b == b'\n' { Idle } else { Off },
            Body | ChunkData | Off => unreachable!("handled by scan"),
        }
        Ok(())
    }

    /// A byte of a request head (or of the empty lines before one).
    fn head_byte(&mut self, b: u8) -> Result<(), &'static str> {
        use Scan::*;
        if self.cr {
            self.cr = false;
            if b != b'\n' {
                // A bare CR: hyper's parser refuses it.
                self.state = Off;
                return Ok(());
            }
            self.state = match self.state {
                Idle => Idle,
                LineStart => self.end_of_head(),
                _ => LineStart,
            };
            self.at = 0;
            return Ok(());
        }
        match b {
            b'\r' => {
                self.cr = true;
                return Ok(());
            }
            b'\n' => return Err(BARE_LF),
            _ => {}
        }
        match self.state {
            Idle => {
                self.state = RequestLine;
                self.at = 0;
                return self.head_byte(b);
            }
            RequestLine => {
                // HTTP/2's preface opens like a request line: under --http 2 or auto, what
                // follows is HTTP/2 framing, no longer this scan's business.
                const PRI: &[u8] = b"PRI ";
                if (self.at as usize) < PRI.len() {
                    if b == PRI[self.at as usize] {
                        self.at += 1;
                        if self.at as usize == PRI.len() {
                            self.state = Off;
                        }
                    } else {
                        self.at = u8::MAX;
                    }
                }
            }
            LineStart => {
                self.at = 1;
                self.state = match b.to_ascii_lowercase() {
                    b'c' => Name(CL),
                    b't' => Name(TE),
                    _ => Rest,
                };
            }
            Name(which) => {
                let name = if which == CL { CONTENT_LENGTH } else { TRANSFER_ENCODING };
                let at = self.at as usize;
                if at == name.len() {
                    if b != b':' {
                        self.state = Rest;
                    } else if self.seen & !which != 0 {
                        return Err(LENGTH_AND_CHUNKED);
                    } else {
                        self.seen |= which;
                        self.at = 0;
                        self.state = if which == CL { Length } else { Rest };
                    }
                } else if b.to_ascii_lowercase() == name[at] {
                    self.at += 1;
                } else {
                    self.state = Rest;
                }
            }
            Length => self.length_byte(b),
            Rest => {}
            _ => unreachable!("not a head state"),
        }
        Ok(())
    }

    /// A byte of a Content-Length value other than CR or LF; `Off` for what hyper refuses.
    fn length_byte(&mut self, b: u8) {
        match (b, self.at) {
            (b'0'..=b'9', 0) | (b'0'..=b'9', 1) => {
                if self.at == 0 {
                    self.size = 0;
                    self.at = 1;
                }
                match self.size.checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0'))) {
                    Some(size) => self.size = size,
                    None => self.state = Scan::Off,
                }
            }
            (b' ' | b'\t', 0) => {}
            (b' ' | b'\t', _) => self.at = 2,
            // Anything else hyper refuses as a length.
            _ => self.state = Scan::Off,
        }
    }

    /// The empty line that ends a head: what comes next, framed as hyper frames it.
    fn end_of_head(&mut self) -> Scan {
        let seen = std::mem::take(&mut self.seen);
        if seen & TE != 0 {
            Scan::ChunkStart
        } else if seen & CL != 0 && self.size > 0 {
            Scan::Body
        } else {
            Scan::Idle
        }
    }
}

/// Which framing field a whole field line (without its CRLF) is, if either: the name as the
/// byte machine matches it, ignoring case, then the colon.
#[inline]
fn framing(line: &[u8]) -> Option<u8> {
    // The first letter and where the colon sits rule out nearly every other field before
    // the names are compared.
    match line.first()? | 0x20 {
        b'c' if line.get(CONTENT_LENGTH.len()) == Some(&b':') && line[..CONTENT_LENGTH.len()].eq_ignore_ascii_case(CONTENT_LENGTH) => {
            Some(CL)
        }
        b't' if line.get(TRANSFER_ENCODING.len()) == Some(&b':')
            && line[..TRANSFER_ENCODING.len()].eq_ignore_ascii_case(TRANSFER_ENCODING) =>
        {
            Some(TE)
        }
        _ => None,
    }
}

/// The end of the line that starts at `i` when a CRLF ends it within `bytes` and it has no
/// other CR or LF: the index of its CR.
#[inline(always)]
fn whole_line(bytes: &[u8], i: usize) -> Option<usize> {
    let end = line_end(bytes, i)?;
    (bytes.get(end + 1) == Some(&b'\n') && bytes[end] == b'\r').then_some(end)
}

/// The index of the first CR or LF in `bytes` from `from` on.
///
/// Sixteen bytes at a time with SSE2 (part of every x86_64): a head is mostly long runs
/// between line ends, and a byte loop costs several instructions a byte.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn line_end(bytes: &[u8], from: usize) -> Option<usize> {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    #[inline(always)]
    fn marks(block: &[u8]) -> u32 {
        let block: &[u8; 16] = block.try_into().unwrap();
        // SAFETY: an unaligned load of the 16 bytes of `block`, and SSE2, which every x86_64
        // has.
        unsafe {
            let v = _mm_loadu_si128(block.as_ptr().cast());
            let ends = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\r' as i8)), _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8)));
            _mm_movemask_epi8(ends) as u32
        }
    }
    let mut i = from;
    let Some(last) = bytes.len().checked_sub(16) else { return line_end_swar(bytes, from) };
    while i <= last {
        let m = marks(&bytes[i..i + 16]);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    if i >= bytes.len() {
        return None;
    }
    // The last sixteen bytes, less those before `i`, rather than a byte loop.
    let m = marks(&bytes[bytes.len() - 16..]) >> (i + 16 - bytes.len());
    (m != 0).then(|| i + m.trailing_zeros() as usize)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn line_end(bytes: &[u8], from: usize) -> Option<usize> {
    line_end_swar(bytes, from)
}

/// [`line_end`] eight bytes at a time in a `u64`. For a word `w`, `(x - 0x01..) & !x & 0x80..`
/// marks the zero bytes of `x = w ^ splat(c)`, the bytes equal to `c`; a borrow can mark
/// bytes above the first true one, never below it, so the lowest mark of either is exact.
// Out of line where SSE2 is used: only reads under 16 bytes come here, and inlined its
// constants would be loaded on every read.
#[cfg_attr(target_arch = "x86_64", inline(never))]
#[cfg_attr(not(target_arch = "x86_64"), inline)]
fn line_end_swar(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const CR: u64 = u64::from_ne_bytes([b'\r'; 8]);
    const LF: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut i = from;
    while let Some(word) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap());
        let (cr, lf) = (w ^ CR, w ^ LF);
        let m = (cr.wrapping_sub(ONES) & !cr | lf.wrapping_sub(ONES) & !lf) & HIGH;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes.get(i..)?.iter().position(|&b| b == b'\r' || b == b'\n').map(|n| i + n)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// 413 for a body over `--limit-request-body`.
pub fn too_large(limit: u64) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than this server accepts ({limit} bytes)"),
    )
}

/// The length of the request target as the client wrote it, less any `#fragment` (which the
/// URI parser drops).
fn target_len(uri: &Uri) -> usize {
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.as_str().len() + "://".len() + authority.as_str().len() + path,
        (None, Some(authority)) => authority.as_str().len(),
        _ => path,
    }
}

/// Whether a Host value is `uri-host [":" port]` (RFC 9110 section 7.2, RFC 3986 section
/// 3.2.2): a registered name or IPv4 address (unreserved characters, sub-delims and `%XX`),
/// or an IP literal in brackets, then at most one colon and a port of digits. RFC 9112
/// section 3.2 requires the 400 for any other value, and a front end that reads a host out of
/// `a:b:c` or `[::1]x` may route by another host than the app sees. An empty value is allowed.
fn valid_host(value: &[u8]) -> bool {
    fn name_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
    }
    fn reg_name(name: &[u8]) -> bool {
        let mut i = 0;
        while i < name.len() {
            if name[i] == b'%' {
                if !name.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            } else if name_byte(name[i]) {
                i += 1;
            } else {
                return false;
            }
        }
        true
    }
    let (host_ok, port) = if value.first() == Some(&b'[') {
        // IPv6 or IPvFuture: their characters, checked no further.
        let Some(end) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..end];
        let ok = !literal.is_empty() && literal.iter().all(|&b| name_byte(b) || b == b':');
        match &value[end + 1..] {
            [] => (ok, &[][..]),
            [b':', port @ ..] => (ok, port),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (reg_name(&value[..colon]), &value[colon + 1..]),
            None => (reg_name(value), &[][..]),
        }
    };
    host_ok && port.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A head as an HTTP/1.1 client sends it: with a Host, the target's authority if it has
    /// one, unless the test gives its own.
    fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        let uri: Uri = target.parse().unwrap();
        if !map.contains_key(header::HOST) {
            let host = uri.authority().map_or("a", |a| a.as_str());
            map.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        (Method::from_bytes(method.as_bytes()).unwrap(), uri, map)
    }

    fn run(method: &str, target: &str, headers: &[(&str, &str)], limits: &Limits) -> Result<(), StatusCode> {
        let (method, uri, map) = head(method, target, headers);
        check(&method, &uri, Version::HTTP_11, &map, None, limits).map_err(|r| r.status)
    }

    fn status(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<(), StatusCode> {
        run(method, target, headers, &Limits::default())
    }

    #[test]
    fn request_line_limit_counts_method_target_version_and_spaces() {
        let limits = Limits { request_line: 20, ..Limits::default() };
        // "GET /abcdefg HTTP/1.1" is 21 bytes, one less fits.
        assert_eq!(run("GET", "/abcdef", &[], &limits), Ok(()));
        assert_eq!(run("GET", "/abcdefg", &[], &limits), Err(StatusCode::URI_TOO_LONG));
        assert_eq!(run("GET", "/abcdef?", &[], &limits), Err(StatusCode::URI_TOO_LONG));
        // "GET http://a.b/c HTTP/1.1" is 25 bytes.
        assert_eq!(run("GET", "http://a.b/c", &[], &Limits { request_line: 25, ..limits }), Ok(()));
        assert_eq!(run("GET", "http://a.b/c", &[], &Limits { request_line: 24, ..limits }), Err(StatusCode::URI_TOO_LONG));
        let long = format!("/{}", "x".repeat(60_000));
        assert_eq!(run("GET", &long, &[], &Limits { request_line: 0, ..limits }), Ok(()));
    }

    #[test]
    fn field_size_counts_name_value_colon_space_and_crlf() {
        let limits = Limits { field_size: 10, ..Limits::default() };
        // "Accept: ab" + CRLF is 12 bytes.
        assert_eq!(run("GET", "/", &[("accept", "ab")], &Limits { field_size: 12, ..limits }), Ok(()));
        assert_eq!(run("GET", "/", &[("accept", "ab")], &Limits { field_size: 11, ..limits }), Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        assert_eq!(run("GET", "/", &[("x", "y".repeat(100_000).as_str())], &Limits { field_size: 0, ..limits }), Ok(()));
    }

    #[test]
    fn one_host_and_one_content_type() {
        assert_eq!(status("GET", "/", &[("host", "a"), ("host", "a")]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("GET", "/", &[("content-type", "a/b"), ("content-type", "a/b")]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("GET", "/", &[("host", "a"), ("content-type", "a/b"), ("accept", "x"), ("accept", "y")]), Ok(()));
    }

    #[test]
    fn host_values() {
        for good in ["example.com", "example.com:8080", "[::1]:80", "[::1]", "[v1.x]", "127.0.0.1", "0.0.0.0=5000",
                     "xn--caf-dma.example", "caf%C3%A9.example", "example.com:", ""] {
            assert_eq!(status("GET", "/", &[("host", good)]), Ok(()), "{good}");
        }
        for bad in ["a b", "user@example.com", "example.com/path", "a\tb", "caf\u{e9}", "example.com:http", "a:1:2",
                    "::1", "[::1", "[::1]x", "[::1]:8x", "[]", "a%zz", "a%4", "a]", "[a]]"] {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, HeaderValue::from_bytes(bad.as_bytes()).unwrap());
            let result = check(&Method::GET, &Uri::from_static("/"), Version::HTTP_11, &map, None, &Limits::default());
            assert_eq!(result.map_err(|r| r.status), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
    }

    #[test]
    fn target_forms() {
        assert_eq!(status("OPTIONS", "*", &[]), Ok(()));
        assert_eq!(status("GET", "*", &[]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("GET", "example.com:443", &[]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("CONNECT", "example.com:443", &[]), Err(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(status("GET", "http://example.com/a?b", &[]), Ok(()));
    }

    #[test]
    fn transfer_codings() {
        assert_eq!(status("POST", "/", &[("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(status("POST", "/", &[("transfer-encoding", "gzip, chunked")]), Ok(()));
        assert_eq!(status("POST", "/", &[("transfer-encoding", "identity"), ("transfer-encoding", "Chunked")]), Ok(()));
        assert_eq!(status("POST", "/", &[("transfer-encoding", "br, chunked")]), Err(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(status("POST", "/", &[("transfer-encoding", "gzip;q=1, chunked")]), Err(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(status("POST", "/", &[("transfer-encoding", "chunked, chunked")]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("POST", "/", &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn expectations() {
        assert_eq!(status("POST", "/", &[("expect", "100-Continue")]), Ok(()));
        assert_eq!(status("POST", "/", &[("expect", "100-continue, foo")]), Err(StatusCode::EXPECTATION_FAILED));
        assert_eq!(status("POST", "/", &[("expect", "foo")]), Err(StatusCode::EXPECTATION_FAILED));
        let (method, uri, map) = head("POST", "/", &[("expect", "foo")]);
        assert_eq!(check(&method, &uri, Version::HTTP_10, &map, None, &Limits::default()), Ok(()));
    }

    #[test]
    fn host_is_required_on_http11_only() {
        let none = HeaderMap::new();
        let on = |version| check(&Method::GET, &Uri::from_static("/"), version, &none, None, &Limits::default()).map_err(|r| r.status);
        assert_eq!(on(Version::HTTP_11), Err(StatusCode::BAD_REQUEST));
        assert_eq!(on(Version::HTTP_10), Ok(()));
        assert_eq!(on(Version::HTTP_2), Ok(()));
    }

    #[test]
    fn absolute_form_host_must_be_the_targets_authority() {
        assert_eq!(status("GET", "http://example.com/a", &[("host", "example.com")]), Ok(()));
        assert_eq!(status("GET", "http://Example.COM:80/a", &[("host", "example.com:80")]), Ok(()));
        assert_eq!(status("GET", "http://example.com/a", &[("host", "evil.example")]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("GET", "http://example.com/a", &[("host", "example.com:80")]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("GET", "http://example.com/a", &[("host", "")]), Err(StatusCode::BAD_REQUEST));
        assert_eq!(status("GET", "http://u:p@example.com:8080/a", &[("host", "example.com:8080")]), Ok(()));
        assert_eq!(status("GET", "http://example.com@evil.example/a", &[("host", "example.com")]), Err(StatusCode::BAD_REQUEST));
        // HTTP/1.0 may leave Host out: nothing to compare.
        let (method, uri, _) = head("GET", "http://example.com/a", &[]);
        assert_eq!(check(&method, &uri, Version::HTTP_10, &HeaderMap::new(), None, &Limits::default()), Ok(()));
    }

    /// Scans `input` split into reads of `piece` bytes; returns the reason and the bytes as
    /// hyper would have read them.
    fn scan_in_pieces(input: &[u8], piece: usize) -> (Option<&'static str>, Vec<u8>) {
        let mut scan = RawScan::new();
        let mut seen = input.to_vec();
        for chunk in seen.chunks_mut(piece) {
            if let Some(reason) = scan.scan(chunk) {
                return (Some(reason), seen);
            }
        }
        (None, seen)
    }

    /// What the scan says of `input`, the same whichever way the reads split it.
    fn scanned(input: &[u8]) -> Option<&'static str> {
        let (whole, _) = scan_in_pieces(input, input.len().max(1));
        for piece in 1..input.len().min(40) {
            assert_eq!(scan_in_pieces(input, piece).0, whole, "reads of {piece} bytes: {:?}", String::from_utf8_lossy(input));
        }
        whole
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn raw_scan_passes_ordinary_traffic() {
        // Kept in every connection's socket wrapper (docs/http.md says how large).
        assert_eq!(std::mem::size_of::<RawScan>(), 16);
        let mut keep_alive = GET.to_vec();
        keep_alive.extend_from_slice(b"POST /p HTTP/1.1\r\nHost: a\r\ncontent-length: 24\r\n\r\nGET / HTTP/1.1\nX: ab\n\n\n");
        keep_alive.extend_from_slice(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        keep_alive.extend_from_slice(b"5\r\n\n\n\n\n\n\r\n3;ext=\"a b\"\r\nabc\r\n10 ;x\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n");
        keep_alive.extend_from_slice(b"\r\nGET /after HTTP/1.1\r\nContent-Type: a\r\nContent-Lengthy: 3\r\nTransfer-Encodings: x\r\n\r\n");
        keep_alive.extend_from_slice(GET);
        assert_eq!(scanned(&keep_alive), None);
        let mut scan = RawScan::new();
        scan.scan(&mut keep_alive);
        assert_eq!(scan.state, Scan::Idle, "every message framed as hyper frames it");
    }

    #[test]
    fn raw_scan_refuses_content_length_with_transfer_encoding() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nHost: a\r\ncontent-length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert_eq!(scanned(head), Some(LENGTH_AND_CHUNKED), "{:?}", String::from_utf8_lossy(head));
            let (_, seen) = scan_in_pieces(head, head.len());
            assert_eq!(seen.iter().filter(|&&b| b == 0).count(), 1, "the second field's colon is overwritten");
        }
        // In the next request on the connection, after a body that a length frames.
        let mut pipelined = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nTrans".to_vec();
        pipelined.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(scanned(&pipelined), Some(LENGTH_AND_CHUNKED));
        // Names that only look alike, and the words in a body, are not the fields.
        assert_eq!(scanned(b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), None);
        assert_eq!(scanned(b"POST / HTTP/1.1\r\nX-Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), None);
    }

    #[test]
    fn raw_scan_refuses_bare_lf_line_ends_in_heads_and_trailers() {
        for input in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\nY: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
        ] {
            assert_eq!(scanned(input), Some(BARE_LF), "{:?}", String::from_utf8_lossy(input));
        }
        // A bare LF inside chunk data is data.
        assert_eq!(scanned(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n\n\n\r\n0\r\n\r\n"), None);
    }

    #[test]
    fn raw_scan_refuses_whitespace_after_a_chunk_size_without_an_extension() {
        const HEAD: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [&b"3 \r\nabc\r\n0\r\n\r\n"[..], b"3\r\nabc\r\n0\t \r\n\r\n"] {
            assert_eq!(scanned(&[HEAD, body].concat()), Some(CHUNK_SIZE_SPACE));
        }
        assert_eq!(scanned(&[HEAD, b"3 ;a=b\r\nabc\r\n0\t;c\r\n\r\n"].concat()), None);
    }

    #[test]
    fn raw_scan_stops_at_http2_and_at_what_hyper_refuses() {
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\n\n\r");
        assert_eq!(scanned(&h2), None);
        // A bare CR is hyper's to refuse; whatever follows is never a request.
        assert_eq!(scanned(b"GET / HTTP/1.1\r\nX: a\rb\nContent-Length: 1\r\nTransfer-Encoding: chunked\n"), None);
        assert_eq!(scanned(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc\n"), None);
    }

    #[test]
    fn raw_scan_reads_split_anywhere_in_a_line() {
        // Between the CR and the LF of a field line, of the request line, of the empty line.
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cr_lf: Vec<usize> = (0..head.len()).filter(|&k| head[k] == b'\r').map(|k| k + 1).collect();
        for &cut in &cr_lf {
            let mut bytes = head.to_vec();
            assert_eq!(scan_split(&mut bytes, &[cut]).0, Some(LENGTH_AND_CHUNKED), "a read ending at {cut}");
        }
        let mut get = GET.to_vec();
        for cut in 0..=get.len() {
            assert_eq!(scan_split(&mut get, &[cut]), (None, Scan::Idle), "a read ending at {cut}");
        }
        // A framing field's name, its colon or its value split, in every place at once.
        let cuts: Vec<usize> = (0..head.len()).collect();
        let mut bytes = head.to_vec();
        assert_eq!(scan_split(&mut bytes, &cuts).0, Some(LENGTH_AND_CHUNKED));
        let colon = head.iter().rposition(|&b| b == b':').unwrap();
        assert_eq!((bytes[colon], bytes.iter().filter(|&&b| b == 0).count()), (0, 1));
        for cut in 30..50 {
            let mut body = b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n\nbody\r\nbody\r".to_vec();
            assert_eq!(scan_split(&mut body, &[cut]), (None, Scan::Idle), "a read ending at {cut}");
        }
    }

    #[test]
    fn raw_scan_finds_line_ends_at_any_offset_in_long_lines() {
        // Lines of every length around the 8- and 16-byte blocks the line-end search reads,
        // with the bare LF or CR in each position, and reads that end just after it.
        for len in 0..40 {
            let value = "v".repeat(len);
            let ok = format!("GET / HTTP/1.1\r\nX-A: {value}\r\nHost: a\r\n\r\n");
            assert_eq!(scanned(ok.as_bytes()), None, "{ok:?}");
            let lf = format!("GET / HTTP/1.1\r\nX-A: {value}\nHost: a\r\n\r\n");
            assert_eq!(scanned(lf.as_bytes()), Some(BARE_LF), "{lf:?}");
            let (_, seen) = scan_in_pieces(lf.as_bytes(), lf.len());
            assert_eq!(seen.iter().position(|&b| b == 0), Some(21 + len), "the bare LF is overwritten");
            // After a bare CR hyper refuses the head: nothing later is looked at.
            let cr = format!("GET / HTTP/1.1\r\nX-A: {value}\rX\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert_eq!(scanned(cr.as_bytes()), None, "{cr:?}");
            let mut scan = RawScan::new();
            let mut whole = cr.into_bytes();
            scan.scan(&mut whole);
            assert_eq!(scan.state, Scan::Off);
        }
        // A read that is only the end of a line, shorter than a block.
        for tail in [&b"\r\n"[..], b"a\r\n", b"abcdefg\r\n", b"\n"] {
            let mut scan = RawScan::new();
            assert_eq!(scan.scan(&mut b"GET / HTTP/1.1\r\nX: ".to_vec()), None);
            let expected = if tail == b"\n" { Some(BARE_LF) } else { None };
            assert_eq!(scan.scan(&mut tail.to_vec()), expected, "{:?}", String::from_utf8_lossy(tail));
        }
    }

    #[test]
    fn raw_scan_matches_framing_names_only_whole() {
        for name in ["Content-Lengt", "Content-Length ", "Content-Lengthx", "Transfer-Encodin", "Transfer-Encoding ", "CContent-Length"] {
            let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{name}: 3\r\n\r\n0\r\n\r\n");
            assert_eq!(scanned(head.as_bytes()), None, "{head:?}");
        }
        for name in ["cONTENT-lENGTH", "CONTENT-LENGTH"] {
            let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{name}:3\r\n\r\n");
            assert_eq!(scanned(head.as_bytes()), Some(LENGTH_AND_CHUNKED), "{head:?}");
        }
        // A field line that is only the name and colon, at the end of a read.
        let mut scan = RawScan::new();
        assert_eq!(scan.scan(&mut b"POST / HTTP/1.1\r\nContent-Length:".to_vec()), None);
        assert_eq!(scan.scan(&mut b" 0\r\ntransfer-encoding:".to_vec()), Some(LENGTH_AND_CHUNKED));
        assert_eq!(scan.replaced(), (21, b':'));
    }

    /// The byte machine alone, every byte of a head, chunk line or trailer through `step`: what
    /// the scan did before it took lines whole, and must still do.
    fn scan_bytewise(scan: &mut RawScan, bytes: &mut [u8]) -> Option<&'static str> {
        let mut i = 0;
        while i < bytes.len() {
            match scan.state {
                Scan::Off => return None,
                Scan::Body | Scan::ChunkData => {
                    let n = scan.size.min((bytes.len() - i) as u64);
                    scan.size -= n;
                    i += n as usize;
                    if scan.size == 0 {
                        scan.state = if scan.state == Scan::Body { Scan::Idle } else { Scan::ChunkDataCr };
                    }
                    continue;
                }
                _ => {}
            }
            if let Err(reason) = scan.step(bytes[i]) {
                (scan.size, scan.replaced) = (i as u64, bytes[i]);
                bytes[i] = 0;
                scan.state = Scan::Off;
                return Some(reason);
            }
            i += 1;
        }
        None
    }

    /// `scan` and `scan_bytewise` on the same reads: the same answers, the same bytes handed
    /// on, the same state after every read.
    fn same_as_bytewise(wire: &[u8], cuts: &[usize]) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let (mut fast, mut slow) = (RawScan::new(), RawScan::new());
        let (mut fast_bytes, mut slow_bytes) = (wire.to_vec(), wire.to_vec());
        let mut start = 0;
        for cut in cuts {
            let a = fast.scan(&mut fast_bytes[start..cut]);
            let b = scan_bytewise(&mut slow, &mut slow_bytes[start..cut]);
            proptest::prop_assert_eq!(a, b, "read {}..{} of {:?}", start, cut, String::from_utf8_lossy(wire));
            // Once off, the scan reads nothing more: where `at` was left no longer counts.
            if slow.state == Scan::Off {
                fast.at = slow.at;
            }
            proptest::prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "after {}..{} of {:?}", start, cut, String::from_utf8_lossy(wire));
            start = cut;
        }
        proptest::prop_assert_eq!(fast_bytes, slow_bytes);
        Ok(())
    }

    /// Bytes of the kinds the scan tells apart: line ends whole and bare, framing names in
    /// both cases and cut short, lengths, chunk lines, the HTTP/2 preface, and noise.
    fn soup() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        const PIECES: &[&[u8]] = &[
            b"\r\n", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"GET / HTTP/1.1", b"POST /p HTTP/1.1", b"PRI ", b"PRI", b"Host: a",
            b"Content-Length", b"content-length", b"CONTENT-LENGTH:", b"Content-Length: ", b"Content-Lengt", b"Transfer-Encoding",
            b"transfer-encoding: chunked", b"TRANSFER-ENCODING:", b"Transfer-Encodin", b":", b" ", b"\t", b"0", b"3", b"12",
            b"99999999999999999999999", b"1f", b";x=y", b"abc", b"X-Long-Field-Name-Of-Some-Length: a value of some length too",
            b"\x00", b"\xff", b"C", b"t", b"content-length:5\r\n", b"Content-Length:12\r\n\r\n", b"Content-Length:0",
            b"transfer-encoding:chunked\r\n\r\n",
        ];
        let piece = prop_oneof![
            4 => proptest::sample::select(PIECES).prop_map(|p| p.to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..24),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        /// Whatever the bytes and however the reads split them, taking lines whole changes
        /// nothing the scan says or does.
        #[test]
        fn raw_scan_does_what_the_byte_machine_does(
            wire in soup(),
            cuts in proptest::collection::vec(0usize..100_000, 0..8),
        ) {
            same_as_bytewise(&wire, &cuts)?;
        }

        /// The same for runs of well-formed requests with a few bytes changed, which reach the
        /// deeper states (bodies, chunks, trailers) that random bytes rarely do.
        #[test]
        fn raw_scan_does_what_the_byte_machine_does_on_near_requests(
            messages in proptest::collection::vec(message(), 1..5),
            both in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..100_000, proptest::sample::select(&b"\r\n\t :0a\x00"[..]), 0u8..3), 0..4),
            cuts in proptest::collection::vec(0usize..100_000, 0..8),
        ) {
            let mut wire: Vec<u8> = messages.iter().enumerate().flat_map(|(k, m)| m.bytes(both && k + 1 == messages.len())).collect();
            for (at, byte, how) in edits {
                let at = at % (wire.len() + 1);
                match how {
                    0 => wire.insert(at, byte),
                    1 if at < wire.len() => wire[at] = byte,
                    _ if at < wire.len() => { wire.remove(at); }
                    _ => {}
                }
            }
            same_as_bytewise(&wire, &cuts)?;
        }
    }

    #[test]
    fn line_end_searches_agree() {
        let mut bytes = vec![b'x'; 70];
        for end in 0..bytes.len() {
            for b in [b'\r', b'\n'] {
                bytes[end] = b;
                for from in 0..=bytes.len() {
                    let expected = (from <= end).then_some(end);
                    assert_eq!(line_end(&bytes, from), expected, "{end} {from}");
                    assert_eq!(line_end_swar(&bytes, from), expected, "{end} {from}");
                    assert_eq!(line_end(&bytes[..end], from.min(end)), None);
                }
            }
            bytes[end] = if end % 2 == 0 { 0x8d } else { 0x0e };
        }
    }

    /// One request as a client may send it, with the framing hyper accepts.
    #[derive(Clone, Debug)]
    struct Message {
        blank_lines: usize,
        method: String,
        version: &'static str,
        fields: Vec<(String, String)>,
        framing: Framing,
    }

    #[derive(Clone, Debug)]
    enum Framing {
        None,
        Length(String, Vec<u8>),
        Chunked(String, Vec<(Vec<u8>, String)>, Vec<String>),
    }

    impl Message {
        fn bytes(&self, both: bool) -> Vec<u8> {
            let mut out = b"\r\n".repeat(self.blank_lines);
            out.extend_from_slice(format!("{} /p {}\r\n", self.method, self.version).as_bytes());
            for (name, value) in &self.fields {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            match &self.framing {
                Framing::None => out.extend_from_slice(b"\r\n"),
                Framing::Length(name, body) => {
                    out.extend_from_slice(format!("{name}:\t{} \r\n", body.len()).as_bytes());
                    if both {
                        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(body);
                }
                Framing::Chunked(name, chunks, trailers) => {
                    out.extend_from_slice(format!("{name}: gzip, chunked\r\n").as_bytes());
                    if both {
                        out.extend_from_slice(b"Content-Length: 3\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    for (data, extension) in chunks {
                        out.extend_from_slice(format!("{:x}{extension}\r\n", data.len()).as_bytes());
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n");
                    for trailer in trailers {
                        out.extend_from_slice(format!("X-T: {trailer}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
            out
        }
    }

    fn message() -> impl proptest::strategy::Strategy<Value = Message> {
        use proptest::prelude::*;
        let field_name = prop_oneof![
            Just("Host".to_string()),
            Just("Content-Lengthy".to_string()),
            Just("X-Content-Length".to_string()),
            Just("Transfer-Encodings".to_string()),
            Just("Content-Type".to_string()),
            Just("TE".to_string()),
            "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}",
        ]
        .prop_filter("not a framing field", |n| {
            !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("transfer-encoding")
        });
        // Values with the words and separators the scan looks for, but no line end.
        let value = "[ -~\t\u{80}-\u{ff}]{0,30}".prop_map(|v: String| v.trim_matches([' ', '\t']).to_string());
        let body = proptest::collection::vec(any::<u8>(), 0..200);
        let chunk = (proptest::collection::vec(any::<u8>(), 1..80), prop_oneof![Just(String::new()), "[ \t]{0,2};[a-z= \"]{0,12}"]);
        let framing = prop_oneof![
            Just(Framing::None),
            (prop_oneof![Just("Content-Length"), Just("content-length"), Just("CONTENT-LENGTH")], body)
                .prop_map(|(name, body)| Framing::Length(name.to_string(), body)),
            (
                prop_oneof![Just("Transfer-Encoding"), Just("transfer-encoding")],
                proptest::collection::vec(chunk, 0..4),
                proptest::collection::vec("[ -~]{0,20}".prop_map(|v: String| v.trim().to_string()), 0..3),
            )
                .prop_map(|(name, chunks, trailers)| Framing::Chunked(name.to_string(), chunks, trailers)),
        ];
        (0..2usize, "GET|POST|PRIX|get|-bl", prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
         proptest::collection::vec((field_name, value), 0..6), framing)
            .prop_map(|(blank_lines, method, version, fields, framing)| Message { blank_lines, method, version, fields, framing })
    }

    /// `bytes` scanned in reads that end at the given points.
    fn scan_split(bytes: &mut [u8], cuts: &[usize]) -> (Option<&'static str>, Scan) {
        let mut scan = RawScan::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut start = 0;
        for cut in cuts {
            if let Some(reason) = scan.scan(&mut bytes[start..cut]) {
                return (Some(reason), scan.state);
            }
            start = cut;
        }
        (None, scan.state)
    }

    proptest::proptest! {
        /// Any run of well-formed requests, however the reads split it, passes untouched and
        /// leaves the scan between requests: it framed every body as hyper does.
        #[test]
        fn raw_scan_keeps_in_step_with_any_pipeline(
            messages in proptest::collection::vec(message(), 1..6),
            cuts in proptest::collection::vec(0usize..100_000, 0..8),
        ) {
            let wire: Vec<u8> = messages.iter().flat_map(|m| m.bytes(false)).collect();
            let mut seen = wire.clone();
            proptest::prop_assert_eq!(scan_split(&mut seen, &cuts), (None, Scan::Idle));
            proptest::prop_assert_eq!(seen, wire);
        }

        /// A head with both framing fields, after any well-formed requests, is refused.
        #[test]
        fn raw_scan_finds_both_framing_fields_after_any_pipeline(
            before in proptest::collection::vec(message(), 0..4),
            mut last in message(),
            chunked in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..100_000, 0..8),
        ) {
            last.framing = if chunked { Framing::Chunked("Transfer-Encoding".into(), vec![], vec![]) } else { Framing::Length("Content-Length".into(), b"abc".to_vec()) };
            let mut wire: Vec<u8> = before.iter().flat_map(|m| m.bytes(false)).collect();
            wire.extend(last.bytes(true));
            proptest::prop_assert_eq!(scan_split(&mut wire, &cuts), (Some(LENGTH_AND_CHUNKED), Scan::Off));
        }
    }

    #[test]
    fn http_dates() {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_650_767);
        assert_eq!(http_date(time), "Wed, 25 Nov 2026 23:52:47 GMT");
        assert_eq!(http_date(std::time::UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn declared_body_over_the_limit() {
        let (method, uri, map) = head("POST", "/", &[]);
        let limits = Limits { body: 10, ..Limits::default() };
        assert_eq!(check(&method, &uri, Version::HTTP_11, &map, Some(10), &limits), Ok(()));
        let refused = check(&method, &uri, Version::HTTP_11, &map, Some(11), &limits).unwrap_err();
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.reason.contains("10 bytes"));
        assert_eq!(check(&method, &uri, Version::HTTP_11, &map, Some(u64::MAX), &Limits { body: 0, ..limits }), Ok(()));
    }
}
