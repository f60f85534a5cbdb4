//! The HTTP connection scope of one request.

use http::Version;
use percent_encoding::percent_decode;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::http::ConnInfo;

/// What every scope of this worker shares, made once.
pub(crate) struct ScopeBuilder {
    /// Every key of an HTTP scope, in order, holding what all requests share (the rest are
    /// `None` until filled in). Each scope starts as a copy: copying a dict whose table is
    /// already the right size is one `memcpy`, where inserting fourteen keys into a new dict
    /// grows its table twice.
    template: Py<PyDict>,
    extensions: Py<PyDict>,
    websocket_extensions: Py<PyDict>,
    asgi: Py<PyDict>,
    server: Py<PyAny>,
    root_path: Py<PyString>,
    /// The lifespan state; each request gets a shallow copy.
    state: Option<Py<PyDict>>,
}

impl ScopeBuilder {
    pub fn new(py: Python<'_>, server_host: &str, server_port: u16, root_path: &str) -> PyResult<Self> {
        let asgi = PyDict::new(py);
        asgi.set_item("version", "3.0")?;
        asgi.set_item("spec_version", "2.4")?;
        let mut builder = ScopeBuilder {
            template: PyDict::new(py).unbind(),
            asgi: asgi.unbind(),
            server: PyTuple::new(py, [server_host.into_pyobject(py)?.into_any(), server_port.into_pyobject(py)?.into_any()])?.into_any().unbind(),
            root_path: PyString::new(py, root_path).unbind(),
            state: None,
            extensions: {
                let extensions = PyDict::new(py);
                extensions.set_item("http.response.pathsend", PyDict::new(py))?;
                extensions.unbind()
            },
            websocket_extensions: {
                let extensions = PyDict::new(py);
                extensions.set_item("websocket.http.response", PyDict::new(py))?;
                extensions.unbind()
            },
        };
        builder.template = builder.make_template(py)?;
        Ok(builder)
    }

    fn make_template(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let template = PyDict::new(py);
        let none = py.None();
        template.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http"))?;
        template.set_item(pyo3::intern!(py, "asgi"), self.asgi.bind(py))?;
        template.set_item(pyo3::intern!(py, "http_version"), pyo3::intern!(py, "1.1"))?;
        template.set_item(pyo3::intern!(py, "method"), &none)?;
        template.set_item(pyo3::intern!(py, "scheme"), pyo3::intern!(py, "http"))?;
        template.set_item(pyo3::intern!(py, "path"), &none)?;
        template.set_item(pyo3::intern!(py, "raw_path"), &none)?;
        template.set_item(pyo3::intern!(py, "query_string"), &none)?;
        template.set_item(pyo3::intern!(py, "root_path"), self.root_path.bind(py))?;
        template.set_item(pyo3::intern!(py, "headers"), &none)?;
        template.set_item(pyo3::intern!(py, "client"), &none)?;
        template.set_item(pyo3::intern!(py, "server"), self.server.bind(py))?;
        if self.state.is_some() {
            template.set_item(pyo3::intern!(py, "state"), &none)?;
        }
        template.set_item(pyo3::intern!(py, "extensions"), &none)?;
        Ok(template.unbind())
    }

    pub fn set_state(&mut self, py: Python<'_>, state: Option<Py<PyDict>>) -> PyResult<()> {
        self.state = state;
        self.template = self.make_template(py)?;
        Ok(())
    }

    pub fn build<'py>(&self, py: Python<'py>, parts: &http::request::Parts, conn: &ConnInfo) -> PyResult<Bound<'py, PyDict>> {
        let scope = self.template.bind(py).copy()?;
        match parts.version {
            Version::HTTP_10 => scope.set_item(pyo3::intern!(py, "http_version"), pyo3::intern!(py, "1.0"))?,
            Version::HTTP_2 => scope.set_item(pyo3::intern!(py, "http_version"), pyo3::intern!(py, "2"))?,
            _ => {}
        }
        let method = match parts.method {
            http::Method::GET => pyo3::intern!(py, "GET").clone(),
            http::Method::POST => pyo3::intern!(py, "POST").clone(),
            ref other => PyString::new(py, other.as_str()),
        };
        scope.set_item(pyo3::intern!(py, "method"), method)?;
        if conn.https {
            scope.set_item(pyo3::intern!(py, "scheme"), pyo3::intern!(py, "https"))?;
        }
        let raw_path = parts.uri.path().as_bytes();
        let decoded: std::borrow::Cow<'_, [u8]> = percent_decode(raw_path).into();
        scope.set_item(pyo3::intern!(py, "path"), String::from_utf8_lossy(&decoded))?;
        scope.set_item(pyo3::intern!(py, "raw_path"), PyBytes::new(py, raw_path))?;
        let query = parts.uri.query().unwrap_or("");
        scope.set_item(pyo3::intern!(py, "query_string"), PyBytes::new(py, query.as_bytes()))?;
        let headers = PyList::empty(py);
        for (name, value) in &parts.headers {
            let pair = PyTuple::new(py, [PyBytes::new(py, name.as_str().as_bytes()), PyBytes::new(py, value.as_bytes())])?;
            headers.append(pair)?;
        }
        scope.set_item(pyo3::intern!(py, "headers"), headers)?;
        let port = conn.peer_port.as_str().parse::<u16>().unwrap_or(0);
        let client = PyTuple::new(py, [PyString::new(py, conn.peer_ip.as_str()).into_any(), port.into_pyobject(py)?.into_any()])?;
        scope.set_item(pyo3::intern!(py, "client"), client)?;
        if let Some(state) = &self.state {
            scope.set_item(pyo3::intern!(py, "state"), state.bind(py).copy()?)?;
        }
        let extensions = self.extensions.bind(py).copy()?;
        // Trailers only for a client that said it takes them (RFC 9110 section 10.1.4).
        let takes_trailers = parts.headers.get_all(http::header::TE).iter().any(|value| {
            value.as_bytes().split(|b| *b == b',').any(|token| {
                let token = token.split(|b| *b == b';').next().unwrap_or_default();
                token.trim_ascii().eq_ignore_ascii_case(b"trailers")
            })
        });
        if takes_trailers {
            extensions.set_item(pyo3::intern!(py, "http.response.trailers"), PyDict::new(py))?;
        }
        scope.set_item(pyo3::intern!(py, "extensions"), extensions)?;
        Ok(scope)
    }

    /// Turns an HTTP scope made by [`build`](Self::build) into the websocket scope of the
    /// same request.
    pub fn make_websocket(&self, py: Python<'_>, scope: &Bound<'_, PyDict>, parts: &http::request::Parts, conn: &ConnInfo) -> PyResult<()> {
        scope.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "websocket"))?;
        scope.del_item(pyo3::intern!(py, "method"))?;
        let scheme = if conn.https { pyo3::intern!(py, "wss") } else { pyo3::intern!(py, "ws") };
        scope.set_item(pyo3::intern!(py, "scheme"), scheme)?;
        let subprotocols = PyList::empty(py);
        for value in parts.headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
            for protocol in String::from_utf8_lossy(value.as_bytes()).split(',') {
                let protocol = protocol.trim();
                if !protocol.is_empty() {
                    subprotocols.append(protocol)?;
                }
            }
        }
        scope.set_item(pyo3::intern!(py, "subprotocols"), subprotocols)?;
        scope.set_item(pyo3::intern!(py, "extensions"), self.websocket_extensions.bind(py).copy()?)?;
        Ok(())
    }
}
