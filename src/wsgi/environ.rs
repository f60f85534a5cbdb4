//! Building the WSGI environ cheaply: a prepared dict holds every entry that is the same for
//! all requests, and the per-request keys are interned strings made once at startup.

use std::collections::HashMap;

use http::header::{self, HeaderName};
use http::{Method, Version};
use percent_encoding::percent_decode;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::http::ConnInfo;
use crate::telemetry::TraceContext;

macro_rules! keys {
    ($($field:ident = $name:literal),* $(,)?) => {
        struct Keys { $($field: Py<PyString>),* }
        impl Keys {
            fn new(py: Python<'_>) -> Keys {
                Keys { $($field: PyString::intern(py, $name).unbind()),* }
            }
        }
    };
}

keys! {
    request_method = "REQUEST_METHOD",
    path_info = "PATH_INFO",
    query_string = "QUERY_STRING",
    content_type = "CONTENT_TYPE",
    content_length = "CONTENT_LENGTH",
    server_name = "SERVER_NAME",
    server_port = "SERVER_PORT",
    server_protocol = "SERVER_PROTOCOL",
    remote_addr = "REMOTE_ADDR",
    remote_port = "REMOTE_PORT",
    wsgi_input = "wsgi.input",
    url_scheme = "wsgi.url_scheme",
    trace_id = "coldbrew.trace_id",
}

/// Headers common enough that their environ key is made once instead of per request.
const COMMON_HEADERS: &[HeaderName] = &[
    header::HOST,
    header::USER_AGENT,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::CONNECTION,
    header::COOKIE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::REFERER,
    header::ORIGIN,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::UPGRADE_INSECURE_REQUESTS,
    header::PRAGMA,
    header::TE,
    header::EXPECT,
    header::RANGE,
    header::TRANSFER_ENCODING,
    header::FORWARDED,
];

/// Everything needed to turn a request into an environ dict, made once per server.
pub(crate) struct EnvironBuilder {
    template: Py<PyDict>,
    keys: Keys,
    header_keys: HashMap<HeaderName, Py<PyString>>,
    methods: Vec<(Method, Py<PyString>)>,
    http10: Py<PyString>,
    http11: Py<PyString>,
    http2: Py<PyString>,
    https: Py<PyString>,
    root_path: Vec<u8>,
}

/// The constant part of every environ.
pub(crate) struct Constants<'a> {
    pub root_path: &'a str,
    pub server_name: &'a str,
    pub server_port: u16,
    pub multithread: bool,
    pub multiprocess: bool,
    pub errors: Py<PyAny>,
    pub file_wrapper: Py<PyAny>,
}

impl EnvironBuilder {
    pub fn new(py: Python<'_>, constants: Constants<'_>) -> PyResult<Self> {
        let template = PyDict::new(py);
        template.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        template.set_item("wsgi.url_scheme", "http")?;
        template.set_item("wsgi.errors", constants.errors)?;
        template.set_item("wsgi.multithread", constants.multithread)?;
        template.set_item("wsgi.multiprocess", constants.multiprocess)?;
        template.set_item("wsgi.run_once", false)?;
        template.set_item("wsgi.file_wrapper", constants.file_wrapper)?;
        template.set_item("wsgi.input_terminated", true)?;
        template.set_item("SCRIPT_NAME", constants.root_path)?;
        template.set_item("QUERY_STRING", "")?;
        template.set_item("SERVER_NAME", constants.server_name)?;
        template.set_item("SERVER_PORT", constants.server_port.to_string())?;
        template.set_item("SERVER_SOFTWARE", concat!("coldbrew/", env!("CARGO_PKG_VERSION")))?;

        let header_keys = COMMON_HEADERS
            .iter()
            .map(|name| (name.clone(), PyString::intern(py, &environ_key(name.as_str())).unbind()))
            .collect();
        let methods = [
            Method::GET,
            Method::POST,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ]
        .into_iter()
        .map(|m| {
            let s = PyString::intern(py, m.as_str()).unbind();
            (m, s)
        })
        .collect();
        Ok(EnvironBuilder {
            template: template.unbind(),
            keys: Keys::new(py),
            header_keys,
            methods,
            http10: PyString::intern(py, "HTTP/1.0").unbind(),
            http11: PyString::intern(py, "HTTP/1.1").unbind(),
            http2: PyString::intern(py, "HTTP/2").unbind(),
            https: PyString::intern(py, "https").unbind(),
            root_path: constants.root_path.as_bytes().to_vec(),
        })
    }

    pub fn build<'py>(
        &self,
        py: Python<'py>,
        parts: &http::request::Parts,
        conn: &ConnInfo,
        input: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let k = &self.keys;
        let env = self.template.bind(py).copy()?;

        match self.methods.iter().find(|(m, _)| *m == parts.method) {
            Some((_, s)) => env.set_item(k.request_method.bind(py), s.bind(py))?,
            None => env.set_item(k.request_method.bind(py), parts.method.as_str())?,
        }

        let raw_path = parts.uri.path().as_bytes();
        let decoded: std::borrow::Cow<'_, [u8]> = percent_decode(raw_path).into();
        let path = strip_root(&decoded, &self.root_path);
        env.set_item(k.path_info.bind(py), latin1(py, path)?)?;
        if let Some(query) = parts.uri.query() {
            env.set_item(k.query_string.bind(py), latin1(py, query.as_bytes())?)?;
        }

        let protocol = match parts.version {
            Version::HTTP_10 => &self.http10,
            Version::HTTP_2 => &self.http2,
            _ => &self.http11,
        };
        env.set_item(k.server_protocol.bind(py), protocol.bind(py))?;
        env.set_item(k.remote_addr.bind(py), PyString::new(py, conn.peer_ip.as_str()))?;
        // Empty when a trusted proxy named the client without its port.
        if !conn.peer_port.as_str().is_empty() {
            env.set_item(k.remote_port.bind(py), PyString::new(py, conn.peer_port.as_str()))?;
        }
        if conn.https {
            env.set_item(k.url_scheme.bind(py), self.https.bind(py))?;
        }

        let headers = &parts.headers;
        let mut has_host = false;
        for name in headers.keys() {
            let mut values = headers.get_all(name).iter();
            let Some(first) = values.next() else { continue };
            let second = values.next();
            let key = if name == header::CONTENT_TYPE {
                k.content_type.clone_ref(py).into_bound(py)
            } else if name == header::CONTENT_LENGTH {
                k.content_length.clone_ref(py).into_bound(py)
            } else if let Some(key) = self.header_keys.get(name) {
                key.clone_ref(py).into_bound(py)
            } else if name.as_str().contains('_') {
                // `X_Auth` would alias `X-Auth` as HTTP_X_AUTH; the underscore form is dropped.
                continue;
            } else {
                PyString::new(py, &environ_key(name.as_str()))
            };
            let value = match second {
                None => latin1(py, first.as_bytes())?,
                Some(second) => {
                    let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
                    let mut joined = first.as_bytes().to_vec();
                    for v in std::iter::once(second).chain(values) {
                        joined.extend_from_slice(sep);
                        joined.extend_from_slice(v.as_bytes());
                    }
                    latin1(py, &joined)?
                }
            };
            if name == header::HOST {
                has_host = true;
                let (host, port) = split_host(first.as_bytes());
                env.set_item(k.server_name.bind(py), latin1(py, host)?)?;
                if let Some(port) = port {
                    env.set_item(k.server_port.bind(py), latin1(py, port)?)?;
                }
            }
            env.set_item(key, value)?;
        }
        if !has_host {
            // HTTP/2 names the host in the :authority pseudo-header, which hyper keeps in the
            // URI, and an HTTP/1.0 request in the absolute form may name it only in its target
            // (RFC 9112 section 3.2.2); apps (and PEP 3333's URL reconstruction) look for
            // HTTP_HOST.
            if let Some(authority) = parts.uri.authority() {
                let (host, port) = split_host(authority.as_str().as_bytes());
                env.set_item(k.server_name.bind(py), latin1(py, host)?)?;
                if let Some(port) = port {
                    env.set_item(k.server_port.bind(py), latin1(py, port)?)?;
                }
                env.set_item("HTTP_HOST", latin1(py, authority.as_str().as_bytes())?)?;
            }
        }
        if let Some(trace) = parts.extensions.get::<TraceContext>() {
            env.set_item(k.trace_id.bind(py), trace.trace_id())?;
        }
        env.set_item(k.wsgi_input.bind(py), input)?;
        Ok(env)
    }
}

/// `user-agent` → `HTTP_USER_AGENT`.
fn environ_key(name: &str) -> String {
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }));
    key
}

/// PATH_INFO is what follows the mount prefix; a path outside the prefix is passed whole.
fn strip_root<'a>(path: &'a [u8], root: &[u8]) -> &'a [u8] {
    if !root.is_empty() && path.starts_with(root) && (path.len() == root.len() || path[root.len()] == b'/') {
        &path[root.len()..]
    } else {
        path
    }
}

/// Splits a Host header into name and port, keeping IPv6 literals in brackets.
fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').and_then(|end| (host.get(end + 1) == Some(&b':')).then_some(end + 1))
    } else {
        host.iter().rposition(|&b| b == b':')
    };
    match colon {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    }
}

/// Bytes as a native `str`, one code point per byte, as PEP 3333 asks.
pub(crate) fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    unsafe {
        let ptr = ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), bytes.len() as ffi::Py_ssize_t, std::ptr::null());
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_keys_follow_cgi_naming() {
        assert_eq!(environ_key("user-agent"), "HTTP_USER_AGENT");
        assert_eq!(environ_key("x-cloud-trace-context"), "HTTP_X_CLOUD_TRACE_CONTEXT");
    }

    #[test]
    fn root_path_is_stripped_only_at_a_segment_boundary() {
        assert_eq!(strip_root(b"/api/users", b"/api"), b"/users");
        assert_eq!(strip_root(b"/api", b"/api"), b"");
        assert_eq!(strip_root(b"/apiary", b"/api"), b"/apiary");
        assert_eq!(strip_root(b"/x", b""), b"/x");
    }

    #[test]
    fn host_splits_name_and_port() {
        assert_eq!(split_host(b"example.com:8080"), (&b"example.com"[..], Some(&b"8080"[..])));
        assert_eq!(split_host(b"example.com"), (&b"example.com"[..], None));
        assert_eq!(split_host(b"[::1]:80"), (&b"[::1]"[..], Some(&b"80"[..])));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], None));
    }
}
