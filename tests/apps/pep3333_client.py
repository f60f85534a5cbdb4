"""Client-side helpers for the PEP 3333 tests: exact-byte HTTP/1.x over raw sockets."""

import http.client
import json
import socket


class RawResponse:
    """A response read from a raw socket until the server closed the connection."""

    def __init__(self, raw):
        self.raw = raw
        head, sep, rest = raw.partition(b"\r\n\r\n")
        self.complete_head = bool(sep)
        lines = head.split(b"\r\n")
        self.status_line = lines[0]
        parts = self.status_line.split(b" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        self.raw_body = rest
        self.chunked = (self.header("Transfer-Encoding") or "").lower() == "chunked"
        if self.chunked:
            self.body, self.body_complete = decode_chunked(rest)
        else:
            self.body = rest
            length = self.header("Content-Length")
            self.body_complete = length is None or len(rest) == int(length)

    def header(self, name):
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)


def decode_chunked(data):
    """Decodes a chunked body; returns (body, complete), complete meaning the 0-chunk was seen."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out), False
        size_text = data[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), False
        pos = end + 2
        if size == 0:
            # Trailers (none expected), then the final CRLF.
            return bytes(out), data.find(b"\r\n", pos) >= 0
        chunk = data[pos : pos + size]
        out += chunk
        if len(chunk) < size or data[pos + size : pos + size + 2] != b"\r\n":
            return bytes(out), False
        pos += size + 2


def recv_all(sock, timeout=15.0):
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def raw_request(server, request, timeout=15.0):
    """Sends `request` (bytes, should ask for Connection: close) and reads until EOF."""
    with server.connect(timeout=timeout) as sock:
        sock.sendall(request)
        return RawResponse(recv_all(sock, timeout))


def get_raw(server, target, extra=b"", version=b"HTTP/1.1", host=None):
    """A GET with Connection: close over a raw socket. `extra` is raw header lines."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    host = host if host is not None else f"127.0.0.1:{server.port}".encode()
    request = b"GET " + target + b" " + version + b"\r\nHost: " + host + b"\r\n" + extra + b"Connection: close\r\n\r\n"
    return raw_request(server, request)


def http_get(server, target, method="GET", body=None, headers=None, timeout=15.0):
    """http.client request; returns (status, HTTPMessage, body bytes). The URL is sent as is."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.msg, data
    finally:
        conn.close()


def connect_raw(server, timeout=15.0):
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    return sock
