#!/usr/bin/env python3
"""Slow readers for the `slow` scenario of bench/run.py (Python stdlib only).

Opens N keep-alive connections to 127.0.0.1:PORT, sends `GET PATH` on each and reads the
response at a trickle: at most CHUNK bytes per connection every INTERVAL seconds, through a
small receive buffer, so the server has to hold most of each response while it waits. When a
response is complete the connection asks for the next one; a connection the server closes
is opened again. Prints "READY" once every connection has sent its first request, and one
line "SLOW_JSON {...}" with its counts when it stops (after DURATION seconds, or on SIGTERM).

    python3 slow_clients.py --port 8000 --path /big --connections 200 --duration 15
"""

import argparse
import json
import signal
import socket
import sys
import time


class Conn:
    __slots__ = ("sock", "buf", "need", "next_read")

    def __init__(self):
        self.sock = None
        self.buf = b""  # response head bytes seen so far (until the blank line)
        self.need = None  # body bytes the current response still owes, once known
        self.next_read = 0.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--path", default="/big")
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--chunk", type=int, default=4096, help="bytes read per connection per tick")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between reads")
    p.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each socket")
    p.add_argument("--mss", type=int, default=1448, help="TCP_MAXSEG of each socket (0: loopback's)")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("slow_clients.py only talks to the loopback address")

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))

    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
    stats = {
        "connections": args.connections,
        "connected": 0,
        "connect_errors": 0,
        "reconnects": 0,
        "responses": 0,
        "bytes": 0,
        "bad_status": 0,
    }
    deadline = time.monotonic() + args.duration

    def open_conn(c):
        if c.sock is not None:
            c.sock.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        if args.mss:
            # Loopback's MSS is ~64 KiB, which lets the server's kernel buffer a whole
            # response; an Ethernet-sized MSS makes its send buffer grow as it would for
            # a client across a real network.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, args.mss)
        s.settimeout(5.0)
        try:
            s.connect((args.host, args.port))
            s.sendall(request)
        except OSError:
            s.close()
            c.sock = None
            stats["connect_errors"] += 1
            return False
        s.setblocking(False)
        c.sock, c.buf, c.need = s, b"", None
        return True

    conns = [Conn() for _ in range(args.connections)]
    start = time.monotonic()
    for i, c in enumerate(conns):
        if stop["flag"] or time.monotonic() > deadline:
            break
        if open_conn(c):
            stats["connected"] += 1
        # Spread the reads over the interval so they do not all land at once.
        c.next_read = start + args.interval * i / max(1, args.connections)
    print("READY", flush=True)

    while not stop["flag"]:
        now = time.monotonic()
        if now >= deadline:
            break
        soonest = deadline
        for c in conns:
            if c.next_read > now:
                soonest = min(soonest, c.next_read)
                continue
            c.next_read = now + args.interval
            soonest = min(soonest, c.next_read)
            if c.sock is None:
                if open_conn(c):
                    stats["reconnects"] += 1
                continue
            try:
                data = c.sock.recv(args.chunk)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed by the server: open a fresh connection next tick
                c.sock.close()
                c.sock = None
                continue
            stats["bytes"] += len(data)
            if c.need is None:
                c.buf += data
                head_end = c.buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = c.buf[:head_end].decode("latin-1")
                if not head.startswith("HTTP/1.1 200"):
                    stats["bad_status"] += 1
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                c.need = length - (len(c.buf) - head_end - 4)
                c.buf = b""
            else:
                c.need -= len(data)
            if c.need is not None and c.need <= 0:
                stats["responses"] += 1
                c.need = None
                try:
                    c.sock.sendall(request)
                except OSError:
                    c.sock.close()
                    c.sock = None
        time.sleep(max(0.0, min(soonest, deadline) - time.monotonic()))

    for c in conns:
        if c.sock is not None:
            c.sock.close()
    stats["elapsed_s"] = round(time.monotonic() - start, 3)
    print("SLOW_JSON " + json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
