//! Trace context from the request: W3C `traceparent` first, Google's legacy
//! `X-Cloud-Trace-Context` otherwise.

use http::HeaderMap;

use super::request_headers::TelemetryHeaders;

/// The trace a request belongs to, as Cloud Logging wants it: a 32-hex-digit trace id and a
/// 16-hex-digit span id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 32],
    span_id: Option<[u8; 16]>,
    pub sampled: bool,
}

impl std::fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:?}/{}", self.trace_id(), self.span_id(), self.sampled)
    }
}

impl TraceContext {
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }

    pub fn span_id(&self) -> Option<&str> {
        self.span_id.as_ref().and_then(|s| std::str::from_utf8(s).ok())
    }

    /// The ids as the lowercase hex digits they are, for copying as fixed-size blocks.
    pub fn id_blocks(&self) -> (&[u8; 32], Option<&[u8; 16]>) {
        (&self.trace_id, self.span_id.as_ref())
    }

    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        TelemetryHeaders::scan(headers).trace()
    }
}

fn is_lower_hex(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; all-zero ids are invalid.
pub(super) fn parse_traceparent(value: &[u8]) -> Option<TraceContext> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (version, trace, span, flags) = (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if !is_lower_hex(version) || version == b"ff" || (version == b"00" && value.len() != 55) {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) {
        return None;
    }
    if trace.iter().all(|&b| b == b'0') || span.iter().all(|&b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some(TraceContext { trace_id: trace.try_into().ok()?, span_id: Some(span.try_into().ok()?), sampled: flags & 1 == 1 })
}

/// `TRACE_ID[/SPAN_ID][;o=OPTIONS]`, with a decimal span id that becomes 16 hex digits.
pub(super) fn parse_cloud_trace(value: &[u8]) -> Option<TraceContext> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (ids, options) = match value.split_once(';') {
        Some((ids, options)) => (ids, Some(options)),
        None => (value, None),
    };
    let (trace, span) = match ids.split_once('/') {
        Some((trace, span)) => (trace, Some(span)),
        None => (ids, None),
    };
    if trace.len() != 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) || trace.bytes().all(|b| b == b'0') {
        return None;
    }
    let mut trace_id = [0u8; 32];
    for (slot, byte) in trace_id.iter_mut().zip(trace.bytes()) {
        *slot = byte.to_ascii_lowercase();
    }
    let span_id = match span {
        Some(span) if !span.is_empty() => {
            let decimal: u64 = span.parse().ok()?;
            let hex = format!("{decimal:016x}");
            Some(hex.as_bytes().try_into().ok()?)
        }
        _ => None,
    };
    let sampled = options.is_some_and(|o| o.trim() == "o=1");
    Some(TraceContext { trace_id, span_id, sampled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        map
    }

    #[test]
    fn traceparent_wins_and_parses() {
        let h = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=0"),
        ]);
        let t = TraceContext::from_headers(&h).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id(), Some("00f067aa0ba902b7"));
        assert!(t.sampled);
    }

    #[test]
    fn legacy_header_span_is_decimal() {
        let h = headers(&[("x-cloud-trace-context", "105445AA7843BC8BF206B12000100000/1;o=1")]);
        let t = TraceContext::from_headers(&h).unwrap();
        assert_eq!(t.trace_id(), "105445aa7843bc8bf206b12000100000");
        assert_eq!(t.span_id(), Some("0000000000000001"));
        assert!(t.sampled);
        let h = headers(&[("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/18446744073709551615")]);
        let t = TraceContext::from_headers(&h).unwrap();
        assert_eq!(t.span_id(), Some("ffffffffffffffff"));
        assert!(!t.sampled);
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(TraceContext::from_headers(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        for bad in ["short/1", "105445aa7843bc8bf206b12000100000/notanumber", "zz5445aa7843bc8bf206b12000100000/1"] {
            assert_eq!(TraceContext::from_headers(&headers(&[("x-cloud-trace-context", bad)])), None, "{bad}");
        }
        assert_eq!(TraceContext::from_headers(&HeaderMap::new()), None);
    }
}
