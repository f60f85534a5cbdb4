//! Property tests over arbitrary request bytes: hyper's parse, then coldbrew's own conversion of
//! the request into a WSGI environ (proxy headers included), with the invariants the app relies
//! on checked for every request that gets that far.
//!
//! Each case is a byte string: usually a request built from pieces chosen to hit the interesting
//! paths (percent escapes and non-ASCII bytes in the target, duplicate and underscore headers,
//! forwarding headers with addresses, ports, brackets and garbage), sometimes with random bytes
//! flipped, inserted or cut, sometimes pure noise. It goes through a real hyper http1 server
//! connection over an in-memory pipe, and every request hyper accepts is converted as the
//! server does (`ConnInfo::for_request`, then `EnvironBuilder::build` under the GIL).
//!
//! `cargo test fuzz` runs 5,000 cases unoptimised (as CI does) and 20,000 with `--release`, a
//! few seconds either way;
//! `COLDBREW_FUZZ_CASES=1000000 cargo test --release fuzz -- --nocapture` runs a long one.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body::Body;
use http_body_util_free::collect;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::environ::{Constants, EnvironBuilder};
use super::streams::{ErrorStream, FileWrapper};
use crate::http::forwarded::{self, Scheme, TrustedProxies};
use crate::http::ConnInfo;

/// Reads a body to its end without an extra crate: frames until None, errors ignored.
mod http_body_util_free {
    use super::*;

    pub async fn collect(mut body: hyper::body::Incoming) {
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            if frame.is_err() {
                return;
            }
        }
    }
}

/// `COLDBREW_FUZZ_CASES`, else a number that takes a few seconds: CI runs `cargo test`
/// unoptimised, where a case costs about ten times more.
fn cases() -> u32 {
    let default = if cfg!(debug_assertions) { 5_000 } else { 20_000 };
    std::env::var("COLDBREW_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runner() -> TestRunner {
    let mut config = Config::with_cases(cases());
    config.failure_persistence = None;
    config.max_shrink_iters = 2_000;
    TestRunner::new(config)
}

// ------------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------------

fn one_of_bytes(items: &[&'static str]) -> impl Strategy<Value = Vec<u8>> {
    proptest::sample::select(items.to_vec()).prop_map(|s| s.as_bytes().to_vec())
}

/// Bytes drawn from `alphabet`, with one in 200 anything at all (a control byte, a byte
/// above 0x7f...): most strings stay valid, so that most requests get through hyper.
fn bytes_from(alphabet: &'static [u8], max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            200 => proptest::sample::select(alphabet),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

/// An address as proxies (or attackers) write it.
fn node() -> impl Strategy<Value = Vec<u8>> {
    let v4 = (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}"));
    let v6 = proptest::collection::vec(any::<u16>(), 8).prop_map(|g| {
        g.iter().map(|x| format!("{x:x}")).collect::<Vec<_>>().join(":")
    });
    let ip = prop_oneof![
        4 => v4,
        2 => v6.clone(),
        1 => Just("127.0.0.1".to_owned()),
        1 => Just("::1".to_owned()),
        1 => Just("10.1.2.3".to_owned()),
        1 => Just("::ffff:127.0.0.1".to_owned()),
    ];
    (ip, proptest::option::of(any::<u16>()), 0..8u8, bytes_from(b"[]:_.\"unknow ", 6)).prop_map(
        |(ip, port, shape, junk)| {
            let v6 = ip.contains(':');
            let mut text = match (shape, port) {
                (0 | 1, None) | (0, _) => ip.into_bytes(),
                (1, Some(p)) if v6 => format!("[{ip}]:{p}").into_bytes(),
                (1, Some(p)) => format!("{ip}:{p}").into_bytes(),
                (2, _) => format!("[{ip}]").into_bytes(),
                (3, _) => format!("\"[{ip}]:{}\"", port.unwrap_or(80)).into_bytes(),
                (4, _) => b"unknown".to_vec(),
                (5, _) => b"_hidden".to_vec(),
                _ => ip.into_bytes(),
            };
            if shape == 7 {
                text.extend(junk);
            }
            text
        },
    )
}

fn forwarding_header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let list = proptest::collection::vec(node(), 0..5).prop_map(|nodes| nodes.join(&b", "[..]));
    let proto = one_of_bytes(&["http", "https", "HTTPS", "ftp", "", "http, https", "https,https"]);
    let element = (node(), proptest::option::of(one_of_bytes(&["http", "https", "ws"])), any::<bool>()).prop_map(
        |(node, proto, by)| {
            let mut e = b"for=".to_vec();
            e.extend(node);
            if let Some(p) = proto {
                e.extend(b";proto=");
                e.extend(p);
            }
            if by {
                e.extend(b";by=10.0.0.1");
            }
            e
        },
    );
    let forwarded = proptest::collection::vec(element, 0..4).prop_map(|e| e.join(&b", "[..]));
    prop_oneof![
        list.prop_map(|v| (b"X-Forwarded-For".to_vec(), v)),
        proto.prop_map(|v| (b"X-Forwarded-Proto".to_vec(), v)),
        forwarded.prop_map(|v| (b"Forwarded".to_vec(), v)),
    ]
}

fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let name = prop_oneof![
        4 => one_of_bytes(&[
            "Host", "User-Agent", "Accept", "Cookie", "Content-Type", "X-Custom", "x-custom", "X_Custom",
            "X-Forwarded-For", "Forwarded", "X-Forwarded-Proto", "Expect", "Connection", "Authorization",
        ]),
        1 => bytes_from(b"abcXYZ-_0!#~.", 12),
    ];
    let value = bytes_from(b"abc XYZ,;=\t\"\\%/:[]01289\x80\xa0\xff", 40);
    prop_oneof![
        3 => (name, value),
        2 => forwarding_header(),
    ]
}

/// A request built from pieces, then maybe damaged.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        6 => one_of_bytes(&["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]),
        1 => bytes_from(b"GETPOSTX-!", 8),
    ];
    let target = (
        bytes_from(b"/abz09%2fF~-._%25%00%e9%c3%a9?=&+", 40),
        proptest::option::of(bytes_from(b"a=1&b%20?/", 20)),
    )
        .prop_map(|(path, query)| {
            let mut t = b"/".to_vec();
            t.extend(path);
            if let Some(q) = query {
                t.push(b'?');
                t.extend(q);
            }
            t
        });
    let version = prop_oneof![8 => one_of_bytes(&["HTTP/1.1", "HTTP/1.0"]), 1 => bytes_from(b"HTP/1.029", 9)];
    let body = proptest::option::of(bytes_from(b"body\r\n0", 30));
    let mutation = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
    let mutations = prop_oneof![
        3 => Just(Vec::new()),
        1 => proptest::collection::vec(mutation, 1..4),
    ];
    (method, target, version, proptest::collection::vec(header(), 0..8), body, any::<bool>(), mutations).prop_map(
        |(method, target, version, headers, body, pipelined, mutations)| {
            let mut req = Vec::new();
            req.extend(&method);
            req.push(b' ');
            req.extend(&target);
            req.push(b' ');
            req.extend(&version);
            req.extend(b"\r\n");
            for (name, value) in &headers {
                req.extend(name);
                req.extend(b": ");
                req.extend(value);
                req.extend(b"\r\n");
            }
            if let Some(body) = &body {
                req.extend(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            }
            req.extend(b"\r\n");
            if let Some(body) = &body {
                req.extend(body);
            }
            if pipelined {
                let again = req.clone();
                req.extend(again);
            }
            for (at, byte, how) in mutations {
                if req.is_empty() {
                    break;
                }
                let i = at.index(req.len());
                match how {
                    0 => req[i] = byte,
                    1 => req.insert(i, byte),
                    _ => {
                        req.remove(i);
                    }
                }
            }
            req
        },
    )
}

fn any_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        9 => request_bytes(),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

// ------------------------------------------------------------------------------------------
// The harness
// ------------------------------------------------------------------------------------------

struct Harness {
    builder: EnvironBuilder,
    trusted: Arc<TrustedProxies>,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn new() -> Harness {
        Python::initialize();
        let builder = Python::attach(|py| {
            let errors = Py::new(py, ErrorStream).unwrap().into_any();
            let file_wrapper = py.get_type::<FileWrapper>().into_any().unbind();
            EnvironBuilder::new(
                py,
                Constants {
                    root_path: "",
                    server_name: "fuzz",
                    server_port: 8080,
                    multithread: true,
                    multiprocess: false,
                    errors,
                    file_wrapper,
                },
            )
            .unwrap()
        });
        let trusted = Arc::new(TrustedProxies::parse(crate::config::DEFAULT_FORWARDED_ALLOW_IPS).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Harness { builder, trusted, runtime }
    }

    /// Serves `bytes` on one connection; returns how many requests reached the environ.
    fn run(&self, bytes: &[u8]) -> Result<usize, TestCaseError> {
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let count = Arc::new(Mutex::new(0usize));
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut conn = ConnInfo::new(peer, "127.0.0.1:8080".parse().unwrap());
        conn.trusted_proxy = self.trusted.trusts_peer(peer.ip());
        let (client, server) = tokio::io::duplex(1 << 16);
        let outcome = self.runtime.block_on(async {
            let service = {
                let failures = failures.clone();
                let count = count.clone();
                let trusted = self.trusted.clone();
                let builder = &self.builder;
                service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (parts, body) = req.into_parts();
                    if let Err(problem) = check(builder, &parts, &conn, &trusted) {
                        failures.lock().unwrap().push(problem);
                    }
                    *count.lock().unwrap() += 1;
                    async move {
                        collect(body).await;
                        Ok::<_, Infallible>(hyper::Response::new(http_body_empty()))
                    }
                })
            };
            let serving = http1::Builder::new().writev(true).serve_connection(TokioIo::new(server), service);
            let talking = async move {
                let (mut read, mut write) = tokio::io::split(client);
                let _ = write.write_all(bytes).await;
                let _ = write.shutdown().await;
                let mut sink = Vec::new();
                let _ = read.read_to_end(&mut sink).await;
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), async {
                let (_served, ()) = tokio::join!(serving, talking);
            })
            .await
        });
        if outcome.is_err() {
            return Err(TestCaseError::fail(format!("the connection hung on {:?}", String::from_utf8_lossy(bytes))));
        }
        let failures = failures.lock().unwrap();
        if let Some(problem) = failures.first() {
            return Err(TestCaseError::fail(format!("{problem}\ninput: {:?}", String::from_utf8_lossy(bytes))));
        }
        let n = *count.lock().unwrap();
        Ok(n)
    }
}

fn http_body_empty() -> http_body_empty::Empty {
    http_body_empty::Empty
}

mod http_body_empty {
    use super::*;

    pub struct Empty;

    impl Body for Empty {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            std::task::Poll::Ready(None)
        }

        fn is_end_stream(&self) -> bool {
            true
        }
    }
}

/// Latin-1 text back to the bytes it encodes.
fn bytes_of(text: &str) -> Result<Vec<u8>, String> {
    text.chars().map(|c| u8::try_from(c as u32).map_err(|_| format!("{c:?} is not latin-1"))).collect()
}

fn get(env: &Bound<'_, PyDict>, key: &str) -> Result<Option<String>, String> {
    match env.get_item(key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) => v.extract::<String>().map(Some).map_err(|_| format!("{key} is not a str")),
    }
}

/// Every address-looking piece of the forwarding headers, parsed.
fn addresses_in(parts: &http::request::Parts) -> HashSet<IpAddr> {
    let mut found = HashSet::new();
    for name in [forwarded::X_FORWARDED_FOR, http::header::FORWARDED] {
        for value in parts.headers.get_all(&name) {
            // A quoted string may escape any character: `"[\00::1]"` is `[00::1]`.
            let text = String::from_utf8_lossy(value.as_bytes()).replace('\\', "");
            for piece in text.split(|c: char| ",;=\" \t[]".contains(c)) {
                let candidates = [Some(piece), piece.rsplit_once(':').map(|(a, _)| a)];
                for candidate in candidates.into_iter().flatten() {
                    if let Ok(ip) = candidate.parse::<IpAddr>() {
                        found.insert(ip.to_canonical());
                    }
                }
            }
        }
    }
    found
}

/// Converts one request as the server does and checks what the app would see.
fn check(builder: &EnvironBuilder, parts: &http::request::Parts, conn: &ConnInfo, trusted: &TrustedProxies) -> Result<(), String> {
    let resolved = forwarded::resolve(&parts.headers, trusted);
    let conn = match conn.for_request(&parts.headers, trusted) {
        Ok(conn) => conn,
        Err(refusal) => {
            // Refused requests never reach the app; the refusal must be about headers present.
            let present = [forwarded::X_FORWARDED_FOR, forwarded::X_FORWARDED_PROTO, http::header::FORWARDED]
                .iter()
                .any(|name| parts.headers.contains_key(name));
            return if present { Ok(()) } else { Err(format!("refused ({refusal}) without forwarding headers")) };
        }
    };
    let resolved = resolved.map_err(|r| format!("resolve and for_request disagree: {r}"))?;
    Python::attach(|py| {
        let env = builder.build(py, parts, &conn, py.None().into_bound(py)).map_err(|e| format!("build failed: {e}"))?;
        let want = |key: &str, expected: &str| -> Result<(), String> {
            match get(&env, key)? {
                Some(v) if v == expected => Ok(()),
                other => Err(format!("{key} is {other:?}, expected {expected:?}")),
            }
        };
        want("REQUEST_METHOD", parts.method.as_str())?;
        want(
            "SERVER_PROTOCOL",
            match parts.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_11 => "HTTP/1.1",
                other => return Err(format!("hyper gave version {other:?}")),
            },
        )?;
        let path: Vec<u8> = percent_decode(parts.uri.path().as_bytes()).collect();
        let got = bytes_of(&get(&env, "PATH_INFO")?.ok_or("no PATH_INFO")?)?;
        if got != path {
            return Err(format!("PATH_INFO {got:?} is not the decoded path {path:?}"));
        }
        // The http crate lets raw bytes above 0x7f through in a query: they must reach the app
        // as latin-1, one code point per byte, like every other byte.
        let query = bytes_of(&get(&env, "QUERY_STRING")?.ok_or("no QUERY_STRING")?)?;
        if query != parts.uri.query().unwrap_or("").as_bytes() {
            return Err(format!("QUERY_STRING {query:?} is not the raw query {:?}", parts.uri.query()));
        }
        want("SCRIPT_NAME", "")?;

        // Every header, under its CGI name, with its values joined; underscore names dropped.
        for name in parts.headers.keys() {
            let key = match name.as_str() {
                "content-type" => "CONTENT_TYPE".to_owned(),
                "content-length" => "CONTENT_LENGTH".to_owned(),
                n if n.contains('_') => {
                    // Dropped, so its CGI name exists only if a dash-spelled header has it too.
                    let alias = format!("HTTP_{}", n.to_ascii_uppercase());
                    let dashed_twin = parts.headers.keys().any(|k| !k.as_str().contains('_') && k.as_str().replace('-', "_") == n);
                    if !dashed_twin && get(&env, &alias)?.is_some() {
                        return Err(format!("{alias} present for the underscore header {n}"));
                    }
                    continue;
                }
                n => format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_")),
            };
            let sep: &[u8] = if name == http::header::COOKIE { b"; " } else { b", " };
            let expected = parts.headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>().join(sep);
            let got = bytes_of(&get(&env, &key)?.ok_or_else(|| format!("{key} missing"))?)?;
            if got != expected {
                return Err(format!("{key} is {got:?}, expected {expected:?}"));
            }
        }
        for (key, value) in env.iter() {
            let key: String = key.extract().map_err(|_| "a non-str key".to_owned())?;
            if let Some(rest) = key.strip_prefix("HTTP_") {
                if rest.bytes().any(|b| b.is_ascii_lowercase() || b == b'-') {
                    return Err(format!("environ key {key:?}"));
                }
                if !value.is_instance_of::<PyString>() {
                    return Err(format!("{key} is not a str"));
                }
            }
        }

        // The client: the peer, or an address that really is in the forwarding headers.
        let remote = get(&env, "REMOTE_ADDR")?.ok_or("no REMOTE_ADDR")?;
        let remote_ip: IpAddr = remote.parse().map_err(|_| format!("REMOTE_ADDR {remote:?} is not an address"))?;
        match resolved.client {
            None => {
                if remote != "127.0.0.1" {
                    return Err(format!("REMOTE_ADDR {remote} without a forwarded client"));
                }
                want("REMOTE_PORT", "40000")?;
            }
            Some((ip, port)) => {
                if remote_ip != ip.to_canonical() {
                    return Err(format!("REMOTE_ADDR {remote} but the client is {ip}"));
                }
                if !addresses_in(parts).contains(&ip.to_canonical()) {
                    return Err(format!("client {ip} is not in the headers"));
                }
                match port {
                    Some(p) => want("REMOTE_PORT", &p.to_string())?,
                    None if get(&env, "REMOTE_PORT")?.is_some() => return Err("the proxy's port passed as the client's".into()),
                    None => {}
                }
            }
        }
        want("wsgi.url_scheme", if resolved.scheme == Some(Scheme::Https) { "https" } else { "http" })?;
        Ok(())
    })
}

#[test]
fn fuzz_request_bytes_to_environ() {
    let harness = Harness::new();
    let reached = std::cell::Cell::new(0usize);
    let started = std::time::Instant::now();
    let mut runner = runner();
    let result = runner.run(&any_request(), |bytes| {
        reached.set(reached.get() + harness.run(&bytes)?);
        Ok(())
    });
    eprintln!(
        "fuzz_request_bytes_to_environ: {} cases, {} requests reached the environ, {:.1} s",
        cases(),
        reached.get(),
        started.elapsed().as_secs_f64()
    );
    if let Err(err) = result {
        panic!("{err}");
    }
    // The strategies must mostly make requests hyper accepts, or the environ is barely tested.
    assert!(reached.get() > cases() as usize / 2, "only {} requests reached the environ", reached.get());
}

#[test]
fn fuzz_forwarding_headers_and_allow_lists() {
    let started = std::time::Instant::now();
    let lists = proptest::collection::vec(
        prop_oneof![
            Just("*".to_owned()),
            Just("127.0.0.1".to_owned()),
            Just("10.0.0.0/8".to_owned()),
            Just("::1".to_owned()),
            Just("::ffff:0:0/96".to_owned()),
            (any::<u8>(), 0..40u8).prop_map(|(a, bits)| format!("{a}.0.0.0/{bits}")),
            "[ -~]{0,12}".prop_map(|s| s),
        ],
        0..4,
    )
    .prop_map(|items| items.join(","));
    let headers = proptest::collection::vec(forwarding_header(), 0..5);
    let mut runner = runner();
    let result = runner.run(&(lists, headers), |(list, pairs)| {
        let Ok(trusted) = TrustedProxies::parse(&list) else { return Ok(()) };
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(&name), http::HeaderValue::from_bytes(&value)) else {
                continue;
            };
            map.append(name, value);
        }
        let parts = {
            let mut req = http::Request::new(());
            *req.headers_mut() = map.clone();
            req.into_parts().0
        };
        match forwarded::resolve(&map, &trusted) {
            Err(_) => prop_assert!(!map.is_empty()),
            Ok(found) => {
                if let Some((ip, _)) = found.client {
                    prop_assert!(addresses_in(&parts).contains(&ip.to_canonical()), "{ip} invented from {map:?}");
                }
                prop_assert_eq!(forwarded::resolve(&map, &trusted).ok(), Some(found));
            }
        }
        Ok(())
    });
    eprintln!("fuzz_forwarding_headers_and_allow_lists: {} cases, {:.1} s", cases(), started.elapsed().as_secs_f64());
    if let Err(err) = result {
        panic!("{err}");
    }
}

