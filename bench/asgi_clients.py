#!/usr/bin/env python3
"""Load clients for the ASGI scenarios that wrk cannot drive (Python stdlib; uvloop if present).

    python bench/asgi_clients.py ws  --port P [--connections 64] [--warmup 3] [--duration 10]
    python bench/asgi_clients.py sse --port P [--connections 100] [--interval 0.01] ...

ws:  each connection opens a websocket (no extensions offered, so nothing is compressed) and
     loops: send one 16-byte masked text frame, wait for the echo, send the next. It reports
     the echoes per second over the measured window and their round-trip percentiles.
sse: each connection GETs /sse?interval=I&seconds=S and holds the event stream open; it
     counts the `data:` lines of complete events, and for a paced stream (interval > 0) how
     late each event arrived (the app stamps each event with CLOCK_MONOTONIC, which client
     and server share on one machine).

Both print one line, `ASGI_JSON {...}`, at the end, with the client's own CPU time over the
measured window (user + system, as a percentage of one CPU: near 100 means the client, not
the server, was the limit) and, given --server-pid, the CPU time of that process tree over
the same window.

The clients are asyncio protocols, not streams: one callback per read, with the frame to send
built once per connection, so a round trip costs the client a few microseconds. They are
still Python on one CPU: a fast enough server makes the client the bottleneck, which is why
its CPU is reported. Only 127.0.0.1 is ever contacted.
"""

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import sys
import time

# This script's folder is first on sys.path: the runner's /proc helpers.
from run import tree_pids

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------
# CPU accounting


def own_cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def tree_cpu(root):
    """User + system seconds of `root` and its live descendants (all their threads)."""
    if not root:
        return None
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


class Window:
    """The measured window: wall time, this client's CPU and the server tree's CPU."""

    def __init__(self, server_pid):
        self.server_pid = server_pid

    def start(self):
        self.t0, self.c0, self.s0 = time.perf_counter(), own_cpu(), tree_cpu(self.server_pid)

    def stop(self):
        self.t1, self.c1, self.s1 = time.perf_counter(), own_cpu(), tree_cpu(self.server_pid)

    def report(self):
        wall = self.t1 - self.t0
        out = {"window_s": round(wall, 3),
               "client_cpu_pct": round(100 * (self.c1 - self.c0) / wall, 1)}
        if self.s0 is not None and self.s1 is not None:
            out["server_cpu_pct"] = round(100 * (self.s1 - self.s0) / wall, 1)
        return out


def percentiles(samples, scale=1.0):
    if not samples:
        return {}
    samples.sort()
    n = len(samples)

    def q(p):
        return round(samples[min(n - 1, int(p / 100 * n))] * scale, 3)

    return {"p50_ms": q(50), "p90_ms": q(90), "p99_ms": q(99), "max_ms": round(samples[-1] * scale, 3)}


# --------------------------------------------------------------------------------------
# websocket echo


class WsStats:
    def __init__(self):
        self.recording = False
        self.running = True
        self.latencies = []
        self.errors = {}

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _mask(payload, key):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WsEcho(asyncio.Protocol):
    """One websocket: handshake, then send a text frame, await its echo, repeat."""

    def __init__(self, port, path, payload, stats, loop):
        self.stats, self.payload = stats, payload
        key = os.urandom(4)
        # Client frames are masked (RFC 6455 5.3); the masked frame is built once.
        self.frame = bytes([0x81, 0x80 | len(payload)]) + key + _mask(payload, key)
        self.close_frame = bytes([0x88, 0x82]) + key + _mask(b"\x03\xe8", key)  # 1000
        self.pong_key = key
        self.expect = bytes([0x81, len(payload)]) + payload  # the server's frame, unmasked
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.opened = loop.create_future()
        self.transport = None
        self.handshaking = True
        self.buf = b""
        self.sent_at = 0.0
        self.count = 0
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        elif self.stats.running:
            self.stats.error("closed")

    def start(self):
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data):
        if self.handshaking:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            self.handshaking = False
            if self.opened.done():  # the runner gave up waiting for this one
                self.transport.close()
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                self.transport.close()
                return
            self.opened.set_result(None)
            if not self.buf:
                return
            data, self.buf = self.buf, b""
        if not self.buf and data == self.expect:  # the usual case: exactly one echo
            self._echoed()
            return
        self.buf += data
        self._frames()

    def _echoed(self):
        now = time.perf_counter()
        stats = self.stats
        if stats.recording:
            stats.latencies.append(now - self.sent_at)
            self.count += 1
        if stats.running:
            self.sent_at = now
            self.transport.write(self.frame)

    def _frames(self):
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length, pos = b1 & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if b1 & 0x80:
                pos += 4  # a masked server frame is a protocol error; skip the key anyway
            if len(buf) < pos + length:
                break
            payload, buf = buf[pos:pos + length], buf[pos + length:]
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                if b0 & 0x80 and payload == self.payload and opcode == 1:
                    self._echoed()
                else:
                    self.stats.error("unexpected_frame")
            elif opcode == 9:  # ping: answer with a pong carrying the same payload
                key = self.pong_key
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + key + _mask(payload, key))
            elif opcode == 8:
                self.stats.error("closed_by_server")
        self.buf = buf

    def close(self):
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(self.close_frame)
            except Exception:
                pass
            self.transport.close()


async def run_ws(args):
    loop = asyncio.get_running_loop()
    stats = WsStats()
    payload = b"hello, websocket"  # 16 bytes
    protos = []
    connect_t0 = time.perf_counter()

    async def connect():
        _, proto = await loop.create_connection(
            lambda: WsEcho(args.port, args.path, payload, stats, loop), HOST, args.port)
        await asyncio.wait_for(proto.opened, 15)
        return proto

    results = await asyncio.gather(*(connect() for _ in range(args.connections)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    protos = [r for r in results if not isinstance(r, BaseException)]
    out = {"mode": "ws", "connections": args.connections, "opened": len(protos),
           "connect_s": round(time.perf_counter() - connect_t0, 3), "payload_bytes": len(payload)}
    if failures:
        out["connect_errors"] = len(failures)
        out["first_connect_error"] = f"{type(failures[0]).__name__}: {failures[0]}"
    if not protos:
        out["error"] = "no websocket opened: " + out.get("first_connect_error", "?")
        return out
    for p in protos:
        p.start()
    await asyncio.sleep(args.warmup)
    window = Window(args.server_pid)
    stats.recording = True
    window.start()
    await asyncio.sleep(args.duration)
    window.stop()
    stats.recording = False
    stats.running = False
    counts = [p.count for p in protos]
    total = sum(counts)
    out.update(window.report())
    out.update({
        "messages": total,
        "messages_per_s": round(total / (window.t1 - window.t0), 1),
        "per_connection_min": min(counts),
        "per_connection_max": max(counts),
        "errors": stats.errors,
    })
    out.update(percentiles(stats.latencies, 1000.0))
    for p in protos:
        p.close()
    await asyncio.sleep(0.2)
    return out


# --------------------------------------------------------------------------------------
# server-sent events

STAMP = re.compile(rb"data: (\d+)\n")


class SseStats:
    def __init__(self, paced):
        self.recording = False
        self.paced = paced
        self.lags_us = []
        self.errors = {}

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


class SseStream(asyncio.Protocol):
    """One event stream: counts the `data:` lines of complete events while recording."""

    def __init__(self, port, path, stats, loop):
        self.stats = stats
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
                        "Cache-Control: no-cache\r\n\r\n").encode()
        self.ready = loop.create_future()
        self.transport = None
        self.in_head = True
        self.buf = b""
        self.count = 0
        self.closed = False
        self.finished = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the response head"))

    def eof_received(self):
        self.finished = True

    def data_received(self, data):
        if self.in_head:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.buf[:end], self.buf[end + 4:]
            self.buf = b""
            self.in_head = False
            if self.ready.done():  # the runner gave up waiting for this one
                self.transport.close()
                return
            if not re.match(rb"HTTP/1\.[01] 200 ", head):
                self.ready.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                self.transport.close()
                return
            self.ready.set_result(None)
            if not data:
                return
        # Complete events end with a blank line; the chunked framing lies between events.
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2:]
        stats = self.stats
        if stats.recording:
            part = buf[:end + 2]
            if stats.paced:
                now_us = time.monotonic_ns() // 1000
                stamps = STAMP.findall(part)
                self.count += len(stamps)
                stats.lags_us.extend(now_us - int(s) for s in stamps)
            else:
                self.count += part.count(b"data: ")
        if self.buf.endswith(b"\r\n0\r\n\r\n"):
            self.finished = True  # the last chunk: the stream ended


async def run_sse(args):
    loop = asyncio.get_running_loop()
    paced = args.interval > 0
    stats = SseStats(paced)
    # The app's own back-stop: the stream ends by itself a little after the client is done.
    seconds = args.warmup + args.duration + 5
    path = f"{args.path}?interval={args.interval:g}&seconds={seconds:g}"
    connect_t0 = time.perf_counter()

    async def connect():
        _, proto = await loop.create_connection(lambda: SseStream(args.port, path, stats, loop), HOST, args.port)
        await asyncio.wait_for(proto.ready, 15)
        return proto

    results = await asyncio.gather(*(connect() for _ in range(args.connections)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    protos = [r for r in results if not isinstance(r, BaseException)]
    out = {"mode": "sse", "connections": args.connections, "opened": len(protos),
           "connect_s": round(time.perf_counter() - connect_t0, 3),
           "interval_s": args.interval, "paced": paced}
    if paced:
        out["target_events_per_s"] = round(args.connections / args.interval, 1)
    if failures:
        out["connect_errors"] = len(failures)
        out["first_connect_error"] = f"{type(failures[0]).__name__}: {failures[0]}"
    if not protos:
        out["error"] = "no event stream opened: " + out.get("first_connect_error", "?")
        return out
    await asyncio.sleep(args.warmup)
    window = Window(args.server_pid)
    stats.recording = True
    window.start()
    await asyncio.sleep(args.duration)
    window.stop()
    stats.recording = False
    counts = [p.count for p in protos]
    total = sum(counts)
    ended = sum(1 for p in protos if p.closed or p.finished)
    out.update(window.report())
    out.update({
        "events": total,
        "events_per_s": round(total / (window.t1 - window.t0), 1),
        "per_stream_min": min(counts),
        "per_stream_max": max(counts),
        "streams_ended_early": ended,
        "errors": stats.errors,
    })
    if paced and out.get("target_events_per_s"):
        out["pct_of_target"] = round(100 * out["events_per_s"] / out["target_events_per_s"], 1)
        lag = percentiles(stats.lags_us, 0.001)
        out.update({"lag_" + k: v for k, v in lag.items()})
    for p in protos:
        p.transport.close()
    await asyncio.sleep(0.2)
    return out


# --------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description="websocket echo and SSE load for bench/run.py's ASGI scenarios")
    p.add_argument("mode", choices=("ws", "sse"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default=None, help="default / for ws, /sse for sse")
    p.add_argument("--connections", type=int, default=None, help="default 64 for ws, 100 for sse")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the measured window")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("--interval", type=float, default=0.01, help="sse: seconds between events per stream (0: flood)")
    p.add_argument("--server-pid", type=int, default=None, help="also report this process tree's CPU")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop even if uvloop is installed")
    a = p.parse_args(argv)
    if a.path is None:
        a.path = "/" if a.mode == "ws" else "/sse"
    if a.connections is None:
        a.connections = 64 if a.mode == "ws" else 100
    loop_name = "asyncio"
    if not a.no_uvloop:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            loop_name = f"uvloop {uvloop.__version__}"
        except ImportError:
            pass
    # Every connection is a file descriptor; the default soft limit (1024) is enough for the
    # defaults but not for much more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.connections + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (a.connections + 64, hard))
    out = asyncio.run(run_ws(a) if a.mode == "ws" else run_sse(a))
    out["client_loop"] = loop_name
    out["client_python"] = sys.version.split()[0]
    print("ASGI_JSON " + json.dumps(out), flush=True)
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
