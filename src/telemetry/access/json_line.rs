//! Cloud Logging access entries written straight into room reserved for them (see
//! `text_line`), for the usual request, in which nothing the client sent needs a JSON escape.
//! Going through serde_json field by field cost twice what the rest of the access log did.
//! A request whose text does need escaping still goes through the encoder
//! ([`AccessEntry::write_encoded_json`]); a test holds both to the same output.

use super::{protocol_short, severity, status_digits, AccessEntry, ProtoDuration, NUMBER_ROOM, SEVERITIES};
use crate::http::AddrText;
use crate::telemetry::log::{timestamp_text, TIMESTAMP_LEN};
use crate::telemetry::text_line::{write_line, LineWriter, Short};

// The text between the values, in the order it is written. Keys are ours and need no escape.
const SEVERITY: &[u8] = br#"{"severity":""#;
const MESSAGE: &[u8] = br#"","message":""#;
const TIME: &[u8] = br#"","time":""#;
const METHOD: &[u8] = br#"","httpRequest":{"requestMethod":""#;
const URL: &[u8] = br#"","requestUrl":""#;
const STATUS: &[u8] = br#"","status":"#;
const SIZE: &[u8] = br#","responseSize":""#;
const USER_AGENT: &[u8] = br#"","userAgent":""#;
const REMOTE: &[u8] = br#"","remoteIp":""#;
const PROTOCOL: &[u8] = br#"","protocol":""#;
const REFERER: &[u8] = br#"","referer":""#;
const LATENCY: &[u8] = br#"","latency":""#;
const LATENCY_END: &[u8] = br#""}"#;
const TRACE: &[u8] = br#","logging.googleapis.com/trace":"projects/"#;
const TRACES: &[u8] = b"/traces/";
const SPAN: &[u8] = br#","logging.googleapis.com/spanId":""#;
const SAMPLED: &[u8] = br#","logging.googleapis.com/trace_sampled":"#;
const TRACE_END: &[u8] = b"\"";
const END: &[u8] = b"}\n";

/// [`SEVERITIES`] as blocks.
const SEVERITY_BLOCKS: [Short; 3] = [
    Short::new(SEVERITIES[0].as_bytes()).unwrap(),
    Short::new(SEVERITIES[1].as_bytes()).unwrap(),
    Short::new(SEVERITIES[2].as_bytes()).unwrap(),
];

/// The room a line takes apart from the method, the target, the two optional headers and the
/// project: every piece at its largest.
const FIXED_ROOM: usize = {
    let literals = [
        SEVERITY, MESSAGE, TIME, METHOD, URL, STATUS, SIZE, USER_AGENT, REMOTE, PROTOCOL, REFERER, LATENCY, LATENCY_END, TRACE,
        TRACES, TRACE_END, SPAN, TRACE_END, SAMPLED, b"false", END, b"  ",
    ];
    let mut room = 0;
    let mut i = 0;
    while i < literals.len() {
        room += literals[i].len();
        i += 1;
    }
    room + Short::ROOM + 3 + TIMESTAMP_LEN + 3 + NUMBER_ROOM + AddrText::BLOCK + Short::ROOM + ProtoDuration::ROOM + 32 + 16
};

/// Bytes a JSON string holds as they are: printable ASCII but the quote and the backslash.
fn is_json_plain(bytes: &[u8]) -> bool {
    super::every_byte(bytes, |b| (b.wrapping_sub(0x20) < 0x5f) & (b != b'"') & (b != b'\\'))
}

impl AccessEntry {
    /// The entry as one JSON line, the same as [`AccessEntry::write_encoded_json`] writes it.
    pub(super) fn render_json(&self, project: Option<&str>, out: &mut Vec<u8>) {
        match self.json_room(project) {
            Some(room) => write_line(out, room, |line| self.write_plain_json(project, line)),
            None => self.write_encoded_json(project, out),
        }
    }

    /// The room a line takes, or `None` if a string in it needs an escape. The address, the
    /// numbers, the time and the trace ids are ours and never do, and a method is an HTTP
    /// token, which has neither controls nor a quote nor a backslash.
    fn json_room(&self, project: Option<&str>) -> Option<usize> {
        let o = &self.observation;
        let method = o.method.as_str().as_bytes();
        let target = o.target().as_bytes();
        let header = |value: Option<&http::HeaderValue>| value.map_or(Some(0), |v| is_json_plain(v.as_bytes()).then_some(v.len()));
        let project = match (project, &o.trace) {
            (Some(project), Some(_)) => is_json_plain(project.as_bytes()).then_some(project.len())?,
            _ => 0,
        };
        if !is_json_plain(target) {
            return None;
        }
        Some(FIXED_ROOM + 2 * (method.len() + LineWriter::METHOD_ROOM + target.len()) + header(o.user_agent.as_ref())? + header(o.referer.as_ref())? + project)
    }

    /// A line with nothing to escape, in the room [`AccessEntry::json_room`] found.
    fn write_plain_json(&self, project: Option<&str>, line: &mut LineWriter<'_>) {
        let o = &self.observation;
        let target = o.target().as_bytes();
        let status = status_digits(o.status);
        line.bytes(SEVERITY);
        line.short(&SEVERITY_BLOCKS[severity(o.status)]);
        line.bytes(MESSAGE);
        line.method(&o.method);
        line.byte(b' ');
        line.bytes(target);
        line.byte(b' ');
        line.block(&status, 3);
        line.bytes(TIME);
        line.block(&timestamp_text(self.time), TIMESTAMP_LEN);
        line.bytes(METHOD);
        line.method(&o.method);
        line.bytes(URL);
        line.bytes(target);
        line.bytes(STATUS);
        line.block(&status, 3);
        line.bytes(SIZE);
        line.decimal(o.bytes);
        if let Some(agent) = &o.user_agent {
            line.bytes(USER_AGENT);
            line.bytes(agent.as_bytes());
        }
        line.bytes(REMOTE);
        let (remote, len) = o.remote.block();
        line.block(remote, len);
        line.bytes(PROTOCOL);
        line.short(protocol_short(o.version));
        if let Some(referer) = &o.referer {
            line.bytes(REFERER);
            line.bytes(referer.as_bytes());
        }
        line.bytes(LATENCY);
        let (latency, len) = ProtoDuration(self.latency).block();
        line.block(&latency, len);
        line.bytes(LATENCY_END);
        if let Some(trace) = &o.trace {
            let (trace_id, span_id) = trace.id_blocks();
            if let Some(project) = project {
                line.bytes(TRACE);
                line.bytes(project.as_bytes());
                line.bytes(TRACES);
                line.block(trace_id, 32);
                line.bytes(TRACE_END);
            }
            if let Some(span_id) = span_id {
                line.bytes(SPAN);
                line.block(span_id, 16);
                line.bytes(TRACE_END);
            }
            line.bytes(SAMPLED);
            line.bytes(if trace.sampled { b"true" } else { b"false" });
        }
        line.bytes(END);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use proptest::strategy::Strategy;

    use super::*;
    use crate::telemetry::access::{parse_format, Observation, DEFAULT_FORMAT};
    use crate::telemetry::request_headers::TelemetryHeaders;
    use crate::telemetry::trace::{parse_cloud_trace, parse_traceparent};

    fn entry(request: http::Request<()>) -> AccessEntry {
        let log = parse_format(DEFAULT_FORMAT).unwrap();
        let seen = TelemetryHeaders::scan(request.headers());
        let trace = seen.trace();
        let peer: std::net::SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let remote = crate::http::AddrText::format(peer.ip());
        let mut observation = Observation::new(&request, &seen, remote, trace, crate::clock::Moment::now(), Some(&log));
        observation.status = 200;
        // Made without `begin`, so never counted in flight: dropping it must not uncount it.
        observation.counted = true;
        AccessEntry { observation, latency: Duration::from_micros(1500), time: Duration::from_millis(1_764_102_600_123) }
    }

    /// The line from the fast writer if it takes the entry, and the line from the encoder.
    fn both_lines(entry: &AccessEntry, project: Option<&str>) -> (Option<Vec<u8>>, Vec<u8>) {
        let fast = entry.json_room(project).map(|room| {
            let mut fast = b"earlier line\n".to_vec();
            write_line(&mut fast, room, |line| entry.write_plain_json(project, line));
            fast
        });
        let mut encoded = b"earlier line\n".to_vec();
        entry.write_encoded_json(project, &mut encoded);
        (fast, encoded)
    }

    #[test]
    fn json_plain_is_printable_ascii_but_quote_and_backslash() {
        crate::telemetry::access::tests::check_every_byte_everywhere(is_json_plain, |b| {
            (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'
        });
    }

    #[test]
    fn no_method_the_http_crate_takes_needs_a_json_escape() {
        // json_room does not check the method: this holds it to that.
        for b in 0..=255u8 {
            if http::Method::from_bytes(&[b'X', b]).is_ok() {
                assert!(is_json_plain(&[b'X', b]), "method byte {b:#04x}");
            }
        }
    }

    #[test]
    fn a_plain_entry_is_written_as_the_encoder_writes_it() {
        let request = http::Request::get("/path?q=1&r=%22")
            .header("user-agent", "curl/8.0 (x; y)")
            .header("referer", "https://example.com/'a'")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .body(())
            .unwrap();
        let mut entry = entry(request);
        entry.observation.status = 503;
        entry.observation.bytes = u64::MAX;
        entry.latency = Duration::new(2, 5);
        let (fast, encoded) = both_lines(&entry, Some("my-project"));
        let fast = fast.expect("nothing to escape");
        assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(encoded.clone()).unwrap());
        let value: serde_json::Value = serde_json::from_slice(encoded.strip_prefix(b"earlier line\n").unwrap()).unwrap();
        assert_eq!(value["severity"], "ERROR");
        assert_eq!(value["message"], "GET /path?q=1&r=%22 503");
        assert_eq!(value["httpRequest"]["status"], 503);
        assert_eq!(value["httpRequest"]["responseSize"], u64::MAX.to_string());
        assert_eq!(value["httpRequest"]["remoteIp"], "2001:db8::1");
        assert_eq!(value["httpRequest"]["referer"], "https://example.com/'a'");
        assert_eq!(value["httpRequest"]["latency"], "2.000000005s");
        assert_eq!(value["logging.googleapis.com/trace"], "projects/my-project/traces/0af7651916cd43dd8448eb211c80319c");
        assert_eq!(value["logging.googleapis.com/spanId"], "b7ad6b7169203331");
        assert_eq!(value["logging.googleapis.com/trace_sampled"], true);
    }

    #[test]
    fn text_that_needs_an_escape_goes_to_the_encoder() {
        let with_agent = |agent: &[u8]| entry(http::Request::get("/").header("user-agent", HeaderValue::from_bytes(agent).unwrap()).body(()).unwrap());
        for agent in [&b"a\"b"[..], b"a\\b", b"a\tb", b"caf\xe9"] {
            assert_eq!(with_agent(agent).json_room(None), None, "{agent:?}");
        }
        assert!(with_agent(b"plain").json_room(None).is_some());
        let traced = entry(http::Request::get("/").header("x-cloud-trace-context", "0af7651916cd43dd8448eb211c80319c").body(()).unwrap());
        assert_eq!(traced.json_room(Some("a\"b")), None);
        // The project is only written with a trace.
        assert!(with_agent(b"plain").json_room(Some("a\"b")).is_some());
    }

    proptest::proptest! {
        /// Whatever the request, the reserved room holds the line (the writer panics
        /// otherwise), the fast writer takes every entry it can, and it writes what the
        /// encoder writes.
        #[test]
        fn both_writers_agree(
            // What http::Uri takes: no '<', '>' or '`'. Mostly JSON-plain, sometimes not.
            target in proptest::prop_oneof![
                "/[!#-;=?-\\[\\]-_a-~]{0,200}",
                "/[!-;=?-_a-~]{0,200}",
                "/[!-;=?-_a-~\u{80}-\u{10ffff}]{0,20}",
            ],
            agent in proptest::option::of(proptest::prop_oneof![
                "[ !#-\\[\\]-~]{0,200}".prop_map(String::into_bytes),
                proptest::collection::vec(proptest::prop_oneof![9u8..10, 32u8..127, 128u8..=255], 0..200),
            ]),
            referer in proptest::option::of(proptest::prop_oneof!["[ !#-\\[\\]-~]{0,200}", "[ -~]{0,200}"]),
            method in "GET|POST|[A-Z!#$%&'*+.^_`|~-]{1,12}",
            trace in 0..3,
            project in proptest::option::of(proptest::prop_oneof!["[a-z0-9.:-]{0,40}", "[ -~]{0,40}"]),
            status in 100u16..1000,
            bytes in proptest::num::u64::ANY,
            nanos in proptest::num::u64::ANY,
        ) {
            let uri = target.parse::<http::Uri>();
            proptest::prop_assume!(uri.is_ok());
            let uri = uri.unwrap();
            let mut request = http::Request::builder().method(method.as_str()).uri(uri);
            if let Some(agent) = &agent {
                request = request.header("user-agent", HeaderValue::from_bytes(agent).unwrap());
            }
            if let Some(referer) = &referer {
                request = request.header("referer", referer.as_str());
            }
            let mut entry = entry(request.body(()).unwrap());
            entry.observation.trace = match trace {
                0 => None,
                1 => parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
                _ => parse_cloud_trace(b"0af7651916cd43dd8448eb211c80319c"),
            };
            entry.observation.status = status;
            entry.observation.bytes = bytes;
            entry.latency = Duration::from_nanos(nanos);
            let (fast, encoded) = both_lines(&entry, project.as_deref());
            let line = encoded.strip_prefix(b"earlier line\n").unwrap();
            proptest::prop_assert!(serde_json::from_slice::<serde_json::Value>(line).is_ok());
            let o = &entry.observation;
            let project_plain = o.trace.is_none() || project.as_deref().is_none_or(|p| is_json_plain(p.as_bytes()));
            let plain = is_json_plain(o.target().as_bytes())
                && o.user_agent.as_ref().is_none_or(|v| is_json_plain(v.as_bytes()))
                && o.referer.as_ref().is_none_or(|v| is_json_plain(v.as_bytes()))
                && project_plain;
            proptest::prop_assert_eq!(fast.is_some(), plain);
            if let Some(fast) = fast {
                proptest::prop_assert_eq!(fast, encoded);
            }
        }
    }
}
