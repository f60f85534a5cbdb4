//! Access entries for requests refused before there was a parsed request to observe: hyper's
//! parser gave up on the head (400, 414, 431) and coldbrew's service was never called. What the
//! entry says about the request is read, best effort, from the first line of the head as the
//! client sent it: it may be cut short, binary, or hundreds of kilobytes long. Such requests
//! are rare, so the entry takes the slow way: rendered on its own and handed to the writer
//! after the lines this thread already has.

use std::borrow::Cow;
use std::time::Duration;

use http::{Method, StatusCode};

use super::{
    decimal_seconds, push_escaped, push_number, severity, status_digits, AccessLog, Part, ProtoDuration, ACCESS_LOG,
    BATCH, DECIMAL_SECONDS_ROOM, SEVERITIES,
};
use crate::clock::{Moment, WallClock};
use crate::http::AddrText;
use crate::telemetry::log::{self, access_time_text, Format, Timestamp};
use crate::telemetry::metrics;
use crate::telemetry::sink::{self, Entry, Target};

/// How much of each piece of the request line an entry keeps, as the server's own line about a
/// refused request does: a refused target may be 64 KiB.
const SHOWN: usize = 200;

/// Writes the access entry for, and counts in the metrics, a request whose head could not be
/// parsed, answered with `status` (`bytes_sent` body bytes) by the server itself. Call it once
/// per such answer, from the connection's task.
///
/// - `observe`: the listener's `ServerOptions::observe`; the server's side ports are not the
///   app's traffic, and nothing is recorded for them.
/// - `head`: the bytes the client sent, unparsed (hyper's read buffer), as much as there is.
///   The method, target and protocol are taken from its first line; what is not there, or
///   every field of an empty head, is written `-` (JSON entries leave the key out). The
///   headers are not read: `%(a)s`, `%(f)s` and `%({NAME}i)s` are `-`.
/// - `started`: when the head began to arrive (the connection clock's reading), for the
///   entry's time and latency.
pub fn record_unparsed(observe: bool, peer_ip: AddrText, status: StatusCode, head: &[u8], started: Moment, bytes_sent: u64) {
    if !observe {
        return;
    }
    let ended = Moment::now();
    let latency = ended.since(started);
    let line = RequestLine::of(head);
    metrics::request_refused(line.standard_method().as_ref(), status.as_u16(), latency, bytes_sent);
    let Some(log) = ACCESS_LOG.get() else { return };
    let entry = UnparsedEntry {
        line,
        remote: peer_ip,
        status: status.as_u16(),
        bytes: bytes_sent,
        latency,
        time: WallClock::now().since_epoch(started),
    };
    let mut out = Vec::new();
    match log::format() {
        Format::Json => entry.write_json(&mut out),
        Format::Text => log.write_unparsed_text(&entry, &mut out),
    }
    submit_after_batch(out);
}

/// Hands `lines` to the writer after this thread's batched lines, so that the log keeps the
/// order in which the responses ended.
fn submit_after_batch(lines: Vec<u8>) {
    let pending = BATCH.with(|cell| cell.try_borrow_mut().map(|mut batch| std::mem::take(&mut batch.lines)).unwrap_or_default());
    if !pending.is_empty() {
        // The batch's timer still fires; it then finds nothing, or the thread's next lines.
        sink::submit(Entry::Bytes { target: Target::AccessFile, bytes: pending });
    }
    sink::submit(Entry::Bytes { target: Target::AccessFile, bytes: lines });
}

/// The request line's pieces as far as they could be read, each cut to [`SHOWN`] bytes.
#[derive(Debug, Default, PartialEq)]
struct RequestLine<'a> {
    method: Option<&'a [u8]>,
    target: Option<Piece<'a>>,
    protocol: Option<&'a [u8]>,
}

/// A piece of client text, and whether it was cut.
#[derive(Debug, PartialEq, Clone, Copy)]
struct Piece<'a> {
    bytes: &'a [u8],
    cut: bool,
}

impl<'a> Piece<'a> {
    fn of(bytes: &'a [u8]) -> Piece<'a> {
        if bytes.len() <= SHOWN {
            return Piece { bytes, cut: false };
        }
        // Not inside a UTF-8 sequence, so that text which was UTF-8 still is.
        let mut end = SHOWN;
        while end > SHOWN - 3 && bytes[end] & 0xc0 == 0x80 {
            end -= 1;
        }
        Piece { bytes: &bytes[..end], cut: true }
    }
}

impl<'a> RequestLine<'a> {
    /// The first line of `head`, split at its first two spaces. Looks no further than that
    /// line's end (or the head's), and copies nothing.
    fn of(head: &'a [u8]) -> RequestLine<'a> {
        // Empty lines before the request line are allowed (RFC 9112 section 2.2).
        let start = head.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(head.len());
        let head = &head[start..];
        let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
        let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
        let mut pieces = line.splitn(3, |&b| b == b' ').map(|piece| (!piece.is_empty()).then_some(piece));
        let mut next = || pieces.next().flatten();
        let method = next().map(|m| Piece::of(m).bytes);
        let target = next().map(Piece::of);
        let protocol = next().map(|p| Piece::of(p).bytes);
        RequestLine { method, target, protocol }
    }

    /// The method, if it is one the metrics name; any other counts as "other", without making
    /// a `Method` (an extension method may allocate).
    fn standard_method(&self) -> Option<Method> {
        Some(match self.method? {
            b"GET" => Method::GET,
            b"POST" => Method::POST,
            b"PUT" => Method::PUT,
            b"DELETE" => Method::DELETE,
            b"PATCH" => Method::PATCH,
            b"HEAD" => Method::HEAD,
            b"OPTIONS" => Method::OPTIONS,
            _ => return None,
        })
    }

    fn path(&self) -> Option<&'a [u8]> {
        let target = self.target?.bytes;
        Some(target.iter().position(|&b| b == b'?').map_or(target, |q| &target[..q]))
    }

    fn query(&self) -> &'a [u8] {
        let target = self.target.map_or(&[][..], |t| t.bytes);
        target.iter().position(|&b| b == b'?').map_or(&[][..], |q| &target[q + 1..])
    }
}

struct UnparsedEntry<'a> {
    line: RequestLine<'a>,
    remote: AddrText,
    status: u16,
    bytes: u64,
    latency: Duration,
    /// When the head began to arrive, since the Unix epoch.
    time: Duration,
}

/// Writes `piece` escaped as every text line's client text is, or `-`.
fn push_or_dash(out: &mut Vec<u8>, piece: Option<&[u8]>) {
    match piece {
        Some(bytes) => push_escaped(out, bytes),
        None => out.push(b'-'),
    }
}

fn push_target(out: &mut Vec<u8>, target: Option<Piece<'_>>) {
    push_or_dash(out, target.map(|t| t.bytes));
    if target.is_some_and(|t| t.cut) {
        out.extend_from_slice(b"...");
    }
}

impl AccessLog {
    /// The text line of a request refused unparsed, in the configured format.
    fn write_unparsed_text(&self, entry: &UnparsedEntry<'_>, out: &mut Vec<u8>) {
        let line = &entry.line;
        for part in &self.parts {
            match part {
                Part::Literal(literal) => out.extend_from_slice(literal.text.as_bytes()),
                Part::Remote => out.extend_from_slice(entry.remote.as_str().as_bytes()),
                Part::Time => out.extend_from_slice(&access_time_text(entry.time)),
                Part::RequestLine => {
                    push_or_dash(out, line.method);
                    out.push(b' ');
                    push_target(out, line.target);
                    out.push(b' ');
                    push_or_dash(out, line.protocol);
                }
                Part::Status => out.extend_from_slice(&status_digits(entry.status)),
                Part::Method => push_or_dash(out, line.method),
                Part::Path => push_or_dash(out, line.path()),
                Part::Query => push_escaped(out, line.query()),
                Part::Protocol => push_or_dash(out, line.protocol),
                Part::SizeOrDash if entry.bytes == 0 => out.push(b'-'),
                Part::SizeOrDash | Part::Size => push_number(out, entry.bytes),
                Part::Referer | Part::UserAgent | Part::RequestHeader(_) | Part::ResponseHeader(_) => out.push(b'-'),
                Part::Seconds | Part::Micros | Part::Millis | Part::Pid => push_number(out, super::latency_number(part, entry.latency)),
                Part::DecimalSeconds => out.extend_from_slice(decimal_seconds(entry.latency, &mut [0; DECIMAL_SECONDS_ROOM])),
            }
        }
        out.push(b'\n');
    }
}

/// Client bytes as a JSON string's text: as they are if they are UTF-8 (serde_json escapes
/// what JSON needs), otherwise with every byte outside printable ASCII written `\xNN`, as the
/// text lines write them, rather than replaced and lost.
fn json_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => {
            let mut escaped = Vec::with_capacity(bytes.len() + 16);
            push_escaped(&mut escaped, bytes);
            Cow::Owned(String::from_utf8(escaped).unwrap_or_default())
        }
    }
}

impl UnparsedEntry<'_> {
    fn target_text(&self) -> Option<Cow<'_, str>> {
        let target = self.line.target?;
        let text = json_text(target.bytes);
        Some(if target.cut { Cow::Owned(text.into_owned() + "...") } else { text })
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        let line = &self.line;
        let method = line.method.map(json_text);
        let target = self.target_text();
        let protocol = line.protocol.map(json_text);
        log::write_json_line(out, |entry| {
            entry.field("severity", SEVERITIES[severity(self.status)])?;
            let message = format!(
                "{} {} {}",
                method.as_deref().unwrap_or("-"),
                target.as_deref().unwrap_or("-"),
                self.status
            );
            entry.field("message", &message)?;
            entry.field("time", &Timestamp(self.time))?;
            entry.object("httpRequest", |request| {
                if let Some(method) = &method {
                    request.field("requestMethod", method)?;
                }
                if let Some(target) = &target {
                    request.field("requestUrl", target)?;
                }
                request.field("status", &self.status)?;
                request.field("responseSize", log::decimal(self.bytes, &mut [0; 20]))?;
                request.field("remoteIp", self.remote.as_str())?;
                if let Some(protocol) = &protocol {
                    request.field("protocol", protocol)?;
                }
                request.field("latency", &ProtoDuration(self.latency))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access::{parse_format, DEFAULT_FORMAT};

    fn entry(head: &[u8]) -> UnparsedEntry<'_> {
        let peer: std::net::SocketAddr = "203.0.113.7:5000".parse().unwrap();
        UnparsedEntry {
            line: RequestLine::of(head),
            remote: crate::http::AddrText::format(peer.ip()),
            status: 400,
            bytes: 0,
            latency: Duration::from_micros(2500),
            time: Duration::from_secs(1_796_220_739),
        }
    }

    fn text(format: &str, head: &[u8]) -> String {
        let mut out = Vec::new();
        parse_format(format).unwrap().write_unparsed_text(&entry(head), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn json(head: &[u8]) -> serde_json::Value {
        let mut out = Vec::new();
        entry(head).write_json(&mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn the_request_line_is_read_as_far_as_it_goes() {
        let line = RequestLine::of(b"\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(line.method, Some(&b"GET"[..]));
        assert_eq!(line.target, Some(Piece { bytes: b"/a?b=c", cut: false }));
        assert_eq!(line.protocol, Some(&b"HTTP/1.1"[..]));
        assert_eq!((line.path(), line.query()), (Some(&b"/a"[..]), &b"b=c"[..]));
        assert_eq!(line.standard_method(), Some(Method::GET));
        // Cut short inside the target: what is there.
        let line = RequestLine::of(b"PROPFIND /x");
        assert_eq!((line.method, line.target.map(|t| t.bytes), line.protocol), (Some(&b"PROPFIND"[..]), Some(&b"/x"[..]), None));
        assert_eq!(line.standard_method(), None);
        assert_eq!(RequestLine::of(b""), RequestLine::default());
        assert_eq!(RequestLine::of(b"\r\n\r\n"), RequestLine::default());
        // A second space is the protocol's; further ones stay in it.
        assert_eq!(RequestLine::of(b"GET  / HTTP/1.1").target, None);
        assert_eq!(RequestLine::of(b"GET / HTTP/1.1 x").protocol, Some(&b"HTTP/1.1 x"[..]));
    }

    #[test]
    fn long_pieces_are_cut_outside_utf8_sequences() {
        let mut head = b"GET /".to_vec();
        head.extend(std::iter::repeat_n(b'a', 198));
        head.extend("é".repeat(40_000).as_bytes());
        head.extend(b" HTTP/1.1\r\n");
        let line = RequestLine::of(&head);
        let target = line.target.unwrap();
        assert!(target.cut);
        assert_eq!(target.bytes.len(), 199);
        assert!(std::str::from_utf8(target.bytes).is_ok());
        assert_eq!(line.protocol, Some(&b"HTTP/1.1"[..]));
        let line = text("%(r)s", &head);
        assert!(line.ends_with(&format!("/{}... HTTP/1.1\n", "a".repeat(198))), "{line}");
        assert!(json(&head)["httpRequest"]["requestUrl"].as_str().unwrap().ends_with("a..."));
        // A method of any length is cut too.
        let long = vec![b'X'; 100_000];
        assert_eq!(RequestLine::of(&long).method.unwrap().len(), SHOWN);
    }

    #[test]
    fn text_entries_write_a_dash_for_what_is_not_there() {
        let line = text(DEFAULT_FORMAT, b"GET /x?y HTTP/1.1\r\nUser-Agent: a\r\n\x01\r\n\r\n");
        assert_eq!(line, "203.0.113.7 - - [02/Dec/2026:14:12:19 +0000] \"GET /x?y HTTP/1.1\" 400 - \"-\" \"-\"\n");
        let line = text("%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(D)s|%(L)s|%({x}i)s|%({y}o)s", b"");
        assert_eq!(line, "-|-||-|400|0|2500|0.002500|-|-\n");
        let line = text(DEFAULT_FORMAT, b"");
        assert!(line.ends_with("] \"- - -\" 400 - \"-\" \"-\"\n"), "{line}");
    }

    #[test]
    fn hostile_bytes_are_escaped_in_text_entries() {
        let line = text(DEFAULT_FORMAT, b"G\x1bET /a\"b\\c\x7f\xff\xc3( HTTP/1.1\x00\" \"x\r\n");
        assert_eq!(
            line,
            "203.0.113.7 - - [02/Dec/2026:14:12:19 +0000] \"G\\x1bET /a\\x22b\\x5cc\\x7f\\xff\\xc3( \
             HTTP/1.1\\x00\\x22 \\x22x\" 400 - \"-\" \"-\"\n"
        );
        assert!(line.is_ascii());
        assert_eq!(line.matches('"').count(), 6);
    }

    #[test]
    fn json_entries_leave_out_what_is_not_there() {
        let value = json(b"GET /a HTTP/1.1\r\n");
        assert_eq!(value["severity"], "WARNING");
        assert_eq!(value["message"], "GET /a 400");
        assert_eq!(value["time"], "2026-12-02T14:12:19.000Z");
        let request = &value["httpRequest"];
        assert_eq!(request["requestMethod"], "GET");
        assert_eq!(request["requestUrl"], "/a");
        assert_eq!(request["protocol"], "HTTP/1.1");
        assert_eq!(request["status"], 400);
        assert_eq!(request["responseSize"], "0");
        assert_eq!(request["remoteIp"], "203.0.113.7");
        assert_eq!(request["latency"], "0.0025s");
        let value = json(b"\x16\x03\x01\x02\x00");
        assert_eq!(value["message"], "\u{16}\u{3}\u{1}\u{2}\u{0} - 400");
        let request = value["httpRequest"].as_object().unwrap();
        let mut keys: Vec<&str> = request.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["latency", "remoteIp", "requestMethod", "responseSize", "status"]);
    }

    #[test]
    fn hostile_bytes_are_encoded_in_json_entries() {
        let value = json(b"GET /a\"}\\\x1b\xff\xfe HTTP/1.1\r\n");
        assert_eq!(value["httpRequest"]["requestUrl"], "/a\\x22}\\x5c\\x1b\\xff\\xfe");
        let value = json("GET /caf\u{e9}\"\n".as_bytes());
        assert_eq!(value["httpRequest"]["requestUrl"], "/caf\u{e9}\"");
    }
}
