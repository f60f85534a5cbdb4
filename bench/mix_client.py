#!/usr/bin/env python3
"""Load client for the io-mix scenario of bench/run.py (Python stdlib only).

    python3 bench/mix_client.py --port P [--connections 8] [--io-share 0.1] [--warmup 3] [--duration 10]

Opens N keep-alive connections to 127.0.0.1:PORT and runs a closed loop on each: send one
GET, read the whole response, send the next. Before each request it picks, at random and
independently, the I/O route (`--io-path`, with probability `--io-share`) or the fast route
(`--fast-path`); each request is timed from just before it is sent to the moment the last
byte of its response is read (time.perf_counter_ns, the monotonic clock), and the latencies
of the two kinds are kept apart: wrk, which times every request alike and cannot tell one
path from another, cannot give the fast requests' percentiles on their own.

It runs `--warmup` seconds unmeasured, then measures `--duration` seconds, and prints one
line, `MIX_JSON {...}`: the requests per second over the window (all, and those with a
2xx/3xx status), the errors by kind, and for each kind (fast, io) the count and p50, p90,
p99 and max in milliseconds; also its own CPU time over the window as a percentage of one
CPU (near 100 means the client, not the server, set the pace) and, given --server-pid, the
server process tree's.

One thread, one epoll selector, non-blocking sockets. Responses are parsed only as far as
needed: the status code, Content-Length (a response without one is counted as an error and
its connection reopened) and `Connection: close`; the body is counted, not kept. A
connection the server closes or that errs is opened again. Only 127.0.0.1 is contacted.
"""

import argparse
import gc
import json
import random
import re
import resource
import selectors
import socket
import sys
import time

# This script's folder is first on sys.path: the ASGI clients' CPU accounting and percentiles.
from asgi_clients import Window, percentiles

HOST = "127.0.0.1"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
CONN_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)
KINDS = ("fast", "io")


class Conn:
    __slots__ = ("sock", "kind", "t0", "buf", "need", "have", "status", "close_after")

    def __init__(self):
        self.sock = None
        self.kind = 0  # index into KINDS of the request in flight
        self.t0 = 0
        self.buf = b""  # response head bytes seen so far, until the blank line
        self.need = -1  # body bytes of the response in flight, once its head is read
        self.have = 0
        self.status = 0
        self.close_after = False


class Mix:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.sel = selectors.DefaultSelector()
        host = f"Host: {HOST}:{args.port}\r\n"
        common = "User-Agent: coldbrew-bench-mix\r\nAccept: application/json\r\n\r\n"
        # A few item ids per route, so the route parameter varies; built once.
        self.requests = (
            [f"GET {args.fast_path.replace('{id}', str(i))} HTTP/1.1\r\n{host}{common}".encode()
             for i in range(1, 17)],
            [f"GET {args.io_path.replace('{id}', str(i))} HTTP/1.1\r\n{host}{common}".encode()
             for i in range(1, 17)],
        )
        self.share = args.io_share
        self.recording = False
        self.lat = ([], [])  # nanoseconds, per kind
        self.done = [0, 0]  # responses completed in the window, per kind (any status)
        self.bad_status = [0, 0]
        self.errors = {}
        self.reconnects = 0
        self.conns = []

    def error(self, kind):
        if self.recording:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    # -- connections -------------------------------------------------------------------

    def open(self, c):
        sock = socket.create_connection((HOST, self.args.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        c.sock = sock
        c.buf, c.need = b"", -1
        self.sel.register(sock, selectors.EVENT_READ, c)

    def reopen(self, c):
        self.close(c)
        self.reconnects += 1
        try:
            self.open(c)
        except OSError:
            self.error("connect")
            return False
        return self.send(c)

    def close(self, c):
        if c.sock is not None:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None

    def send(self, c):
        k = 1 if self.rng.random() < self.share else 0
        reqs = self.requests[k]
        data = reqs[self.rng.randrange(len(reqs))]
        c.kind = k
        c.t0 = time.perf_counter_ns()
        try:
            sent = c.sock.send(data)
            if sent < len(data):  # a few hundred bytes: never in practice, but be correct
                c.sock.setblocking(True)
                c.sock.sendall(data[sent:])
                c.sock.setblocking(False)
        except OSError:
            self.error("write")
            return self.reopen(c)
        return True

    # -- responses ---------------------------------------------------------------------

    def on_readable(self, c):
        try:
            data = c.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self.error("read")
            self.reopen(c)
            return
        if not data:
            self.error("closed")  # closed by the server with a response in flight
            self.reopen(c)
            return
        if c.need < 0:
            buf = c.buf + data if c.buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                c.buf = buf
                return
            head = buf[:end]
            m = CONTENT_LENGTH.search(head)
            if not head.startswith(b"HTTP/1.") or m is None:
                self.error("no_content_length" if head.startswith(b"HTTP/1.") else "protocol")
                self.reopen(c)
                return
            c.status = int(head[9:12])
            c.close_after = CONN_CLOSE.search(head) is not None
            c.need = int(m.group(1))
            c.have = len(buf) - end - 4
            c.buf = b""
        else:
            c.have += len(data)
        if c.have < c.need:
            return
        now = time.perf_counter_ns()
        k = c.kind
        if self.recording:
            self.done[k] += 1
            if 200 <= c.status < 400:
                self.lat[k].append(now - c.t0)
            else:
                self.bad_status[k] += 1
        extra = c.have > c.need
        c.need = -1
        if extra:
            self.error("protocol")  # bytes beyond the response: nothing was pipelined
            self.reopen(c)
        elif c.close_after:
            self.reopen(c)
        else:
            self.send(c)

    # -- the run -----------------------------------------------------------------------

    def run(self):
        a = self.args
        out = {"connections": a.connections, "io_share": a.io_share, "fast_path": a.fast_path,
               "io_path": a.io_path}
        connect_errors = 0
        first_error = None
        for _ in range(a.connections):
            c = Conn()
            try:
                self.open(c)
            except OSError as e:
                connect_errors += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
                continue
            self.conns.append(c)
        if connect_errors:
            out["connect_errors"] = connect_errors
            out["first_connect_error"] = first_error
        if not self.conns:
            out["error"] = "no connection opened: " + (first_error or "?")
            return out
        gc.disable()  # nothing here makes cycles; a collection would only add client-side pauses
        for c in self.conns:
            self.send(c)
        window = Window(a.server_pid)
        t_start = time.perf_counter() + a.warmup
        t_end = t_start + a.duration
        timeout_ns = int(a.timeout * 1e9)
        next_check = time.perf_counter() + 0.1
        select = self.sel.select
        while True:
            now = time.perf_counter()
            if not self.recording and now >= t_start:
                self.recording = True
                window.start()
            if now >= t_end:
                break
            for key, _ in select(min(0.05, t_end - now)):
                self.on_readable(key.data)
            if now >= next_check:  # a request with no answer for --timeout s is given up
                next_check = now + 0.1
                limit = time.perf_counter_ns() - timeout_ns
                for c in self.conns:
                    if c.sock is not None and c.t0 < limit:
                        self.error("timeout")
                        self.reopen(c)
                    elif c.sock is None:
                        self.reopen(c)
        window.stop()
        self.recording = False
        gc.enable()
        wall = window.t1 - window.t0
        done = sum(self.done)
        bad = sum(self.bad_status)
        if bad:
            self.errors["status"] = bad
        out.update(window.report())
        out.update({
            "requests": done,
            "rps": round(done / wall, 1),
            "ok_rps": round((done - bad) / wall, 1),
            "io_fraction": round(self.done[1] / done, 4) if done else None,
            "errors": self.errors,
            "error_count": sum(self.errors.values()),
            "reconnects": self.reconnects,
        })
        for k, name in enumerate(KINDS):
            lat = self.lat[k]
            entry = {"count": self.done[k], "ok": len(lat)}
            if lat:
                entry["mean_ms"] = round(sum(lat) / len(lat) / 1e6, 3)
            entry.update(percentiles(lat, 1e-6))
            out[name] = entry
        for c in self.conns:
            self.close(c)
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description="closed-loop load with two request kinds, timed apart (io-mix)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--io-share", type=float, default=0.1, help="probability that a request goes to --io-path")
    p.add_argument("--fast-path", default="/fast/{id}", help="{id} becomes an item id from 1 to 16")
    p.add_argument("--io-path", default="/io/{id}")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the measured window")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request is given up")
    p.add_argument("--seed", type=int, default=16, help="seed of the per-request choice")
    p.add_argument("--server-pid", type=int, default=None, help="also report this process tree's CPU")
    a = p.parse_args(argv)
    if not 0.0 <= a.io_share <= 1.0:
        p.error("--io-share is a probability, from 0 to 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.connections + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (a.connections + 64, hard))
    out = Mix(a).run()
    out["client_python"] = sys.version.split()[0]
    print("MIX_JSON " + json.dumps(out), flush=True)
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
