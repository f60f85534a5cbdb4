"""--forwarded-allow-ips: X-Forwarded-For, X-Forwarded-Proto and Forwarded from trusted peers
set REMOTE_ADDR and wsgi.url_scheme; from other peers they are only passed on to the app.

Every test talks to a real server over loopback. 127.0.0.1 is on the default allow-list; a
client socket bound to 127.0.0.2 (also loopback on Linux) is a peer that is not.
"""

import socket

import pytest

from conftest import Server, free_dual_stack_port
from test_http1 import RawConn, get

APP = "proxy_apps:app"


def ask(server, headers=(), source=None, path="/"):
    """(status, body) of one request with `headers`, from the loopback address `source`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    with RawConn(sock) as conn:
        conn.send(get(path, headers=list(headers)))
        resp = conn.read_response()
        return resp.status, resp.body.decode()


def environ_of(server, headers=(), source=None):
    status, body = ask(server, headers, source)
    assert status == 200, body
    addr, port, scheme, xff, fwd = body.split(" ")
    return {"addr": addr, "port": port, "scheme": scheme, "xff": xff, "fwd": fwd}


def app_calls(server):
    status, body = ask(server, path="/count")
    assert status == 200
    return int(body)


def test_a_trusted_peer_sets_the_client_and_scheme(serve):
    server = serve(APP)
    env = environ_of(server, ["X-Forwarded-For: 198.51.100.1, 203.0.113.7", "X-Forwarded-Proto: https"])
    # With the default list only loopback is a proxy: the right-most address is the client.
    assert env["addr"] == "203.0.113.7"
    assert env["port"] == "-", "the proxy's port is not the client's"
    assert env["scheme"] == "https"
    assert env["xff"] == "198.51.100.1,203.0.113.7", "the header itself still reaches the app"
    plain = environ_of(server)
    assert plain["addr"] == "127.0.0.1" and plain["port"] != "-" and plain["scheme"] == "http"


def test_an_untrusted_peer_only_passes_the_headers_on(serve):
    server = serve(APP)
    headers = ["X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", "Forwarded: for=192.0.2.9;proto=https"]
    env = environ_of(server, headers, source="127.0.0.2")
    assert env["addr"] == "127.0.0.2"
    assert env["scheme"] == "http"
    assert env["xff"] == "203.0.113.7"
    assert env["fwd"] == "for=192.0.2.9;proto=https"
    # Contradictions from a peer nobody trusts are not the server's business either.
    status, _ = ask(server, ["X-Forwarded-Proto: http", "Forwarded: proto=https"], source="127.0.0.2")
    assert status == 200


def test_the_walk_skips_listed_proxies_and_networks(serve):
    server = serve(APP, "--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8")
    env = environ_of(server, ["X-Forwarded-For: 198.51.100.1, 203.0.113.7, 10.1.2.3, 10.9.9.9"])
    assert env["addr"] == "203.0.113.7"
    # A hop that is not an address ends the walk: the peer's address is kept.
    env = environ_of(server, ["X-Forwarded-For: 203.0.113.7, unknown, 10.1.2.3"])
    assert env["addr"] == "127.0.0.1"


def test_rfc7239_forwarded(serve):
    server = serve(APP)
    env = environ_of(server, ['Forwarded: for=198.51.100.1;proto=http, for="[2001:db8::5]:4711";proto=https'])
    assert (env["addr"], env["port"], env["scheme"]) == ("2001:db8::5", "4711", "https")
    # Beside X-Forwarded-For, which nearly every proxy appends to, Forwarded names no client:
    # on Cloud Run a client could otherwise write one the front end leaves alone.
    env = environ_of(server, ["X-Forwarded-For: 203.0.113.7", "Forwarded: for=198.51.100.1"])
    assert env["addr"] == "203.0.113.7"


@pytest.mark.parametrize(
    "headers, reason",
    [
        (["X-Forwarded-Proto: http", "Forwarded: for=203.0.113.7;proto=https"], "different schemes"),
        (["X-Forwarded-Proto: https", "X-Forwarded-Proto: http"], "different schemes"),
        (["X-Forwarded-Proto: gopher"], "scheme other than http or https"),
        (["Forwarded: for=203.0.113.7;proto=gopher"], "scheme other than http or https"),
        (["Forwarded: for=203.0.113.7;proto"], "malformed Forwarded header"),
    ],
    ids=["xfp-vs-forwarded", "xfp-twice", "unknown-scheme", "unknown-forwarded-scheme", "malformed"],
)
def test_contradictory_headers_are_refused_before_the_app(serve, headers, reason):
    server = serve(APP)
    before = app_calls(server)
    with RawConn.open(server) as conn:
        conn.send(get("/", headers=headers))
        resp = conn.read_response()
        assert resp.status == 400
        assert reason in resp.body.decode(), resp.body
        # The message was well framed: the (proxy's) connection stays usable.
        conn.send(get("/"))
        assert conn.read_response().status == 200
    assert app_calls(server) == before + 2, "the app saw the refused request"
    server.stop()
    assert reason in server.stderr and "answered 400" in server.stderr, server.stderr


def test_star_trusts_every_peer_but_no_hop(serve):
    server = serve(APP, "--forwarded-allow-ips", "*")
    env = environ_of(server, ["X-Forwarded-For: 10.0.0.9, 10.0.0.2", "X-Forwarded-Proto: https"], source="127.0.0.2")
    assert (env["addr"], env["scheme"]) == ("10.0.0.2", "https")


@pytest.mark.parametrize(
    "env, trusted",
    [
        ({"K_SERVICE": "svc"}, True),
        ({"K_SERVICE": "svc", "FORWARDED_ALLOW_IPS": "127.0.0.1"}, False),
        ({"FORWARDED_ALLOW_IPS": "127.0.0.0/8"}, True),
        ({"K_SERVICE": "svc", "COLDBREW_FORWARDED_ALLOW_IPS": ""}, False),
    ],
    ids=["cloud-run", "cloud-run-explicit", "gunicorn-variable", "coldbrew-variable-empty"],
)
def test_defaults_from_the_environment(serve, env, trusted):
    server = serve(APP, "--log-format", "text", env=env)
    got = environ_of(server, ["X-Forwarded-For: 203.0.113.7"], source="127.0.0.2")
    assert got["addr"] == ("203.0.113.7" if trusted else "127.0.0.2")


def test_access_log_shows_the_forwarded_client(serve):
    server = serve(APP, "--access-logfile", "-", "--access-logformat", "%(h)s %(s)s")
    environ_of(server, ["X-Forwarded-For: 203.0.113.7"])
    server.stop()
    assert "203.0.113.7 200" in server.stdout.splitlines(), server.stdout


def test_dual_stack_listener_trusts_ipv4_loopback():
    port = free_dual_stack_port()
    # The later --bind wins: an [::] listener, whose IPv4 peers the kernel gives as
    # ::ffff:127.0.0.1.
    server = Server(APP, "--bind", f"[::]:{port}", port=port)
    try:
        server.wait_ready()
        env = environ_of(server, ["X-Forwarded-For: 203.0.113.7"])
        assert env["addr"] == "203.0.113.7"
    finally:
        server.stop()
