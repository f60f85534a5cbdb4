//! The request headers telemetry reads, found in one pass over the header map: a hashed
//! lookup per name cost more than the pass, four names per request with the access log on.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::trace::{self, TraceContext};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static CLOUD_TRACE_CONTEXT: HeaderName = HeaderName::from_static("x-cloud-trace-context");

/// The first value of each header telemetry reads, as `HeaderMap::get` would find it.
#[derive(Default)]
pub struct TelemetryHeaders<'a> {
    pub traceparent: Option<&'a HeaderValue>,
    pub cloud_trace: Option<&'a HeaderValue>,
    pub user_agent: Option<&'a HeaderValue>,
    pub referer: Option<&'a HeaderValue>,
}

impl<'a> TelemetryHeaders<'a> {
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut found = TelemetryHeaders::default();
        for (name, value) in headers {
            let slot = if name == header::USER_AGENT {
                &mut found.user_agent
            } else if name == header::REFERER {
                &mut found.referer
            } else if name == TRACEPARENT {
                &mut found.traceparent
            } else if name == CLOUD_TRACE_CONTEXT {
                &mut found.cloud_trace
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        found
    }

    /// W3C `traceparent` first, Google's legacy `X-Cloud-Trace-Context` otherwise.
    pub fn trace(&self) -> Option<TraceContext> {
        self.traceparent
            .and_then(|value| trace::parse_traceparent(value.as_bytes()))
            .or_else(|| self.cloud_trace.and_then(|value| trace::parse_cloud_trace(value.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_values_are_found_like_get_finds_them() {
        let mut headers = HeaderMap::new();
        headers.append("host", HeaderValue::from_static("example.com"));
        headers.append("user-agent", HeaderValue::from_static("first"));
        headers.append("user-agent", HeaderValue::from_static("second"));
        headers.append("referer", HeaderValue::from_static("https://r/"));
        headers.append("x-cloud-trace-context", HeaderValue::from_static("105445aa7843bc8bf206b12000100000/1;o=1"));
        headers.append("traceparent", HeaderValue::from_static("garbage"));
        let found = TelemetryHeaders::scan(&headers);
        assert_eq!(found.user_agent, headers.get("user-agent"));
        assert_eq!(found.user_agent.unwrap(), "first");
        assert_eq!(found.referer, headers.get("referer"));
        assert_eq!(found.traceparent, headers.get("traceparent"));
        assert_eq!(found.cloud_trace, headers.get("x-cloud-trace-context"));
        // An invalid traceparent falls back to the legacy header.
        assert_eq!(found.trace().unwrap().trace_id(), "105445aa7843bc8bf206b12000100000");
        let empty = HeaderMap::new();
        let none = TelemetryHeaders::scan(&empty);
        assert!(none.user_agent.is_none() && none.referer.is_none() && none.trace().is_none());
    }
}
