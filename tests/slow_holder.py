"""Holds many slow or idle connections to a server, for tests/test_slow_clients.py.

    python slow_holder.py PORT N

Opens N connections to 127.0.0.1:PORT in four equal groups: idle from the start (connected,
nothing sent); idle keep-alive (one GET answered, then nothing); slow heads (a request head sent
one byte at a time); slow bodies (a POST whose 100,000-byte body is sent one byte at a time).
Prints "READY <open>" once all are open and the keep-alive group has its answers, then sends
one byte on each slow connection in turn, about 1,000 bytes a second in all, until stdin
closes. Prints "DONE <open> <closed by the server>" at the end.
"""

import os
import selectors
import socket
import sys
import time


def main():
    port, total = int(sys.argv[1]), int(sys.argv[2])
    group = total // 4
    idle, keep_alive, heads, bodies = [], [], [], []

    def connect():
        s = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        return s

    for _ in range(group):
        idle.append(connect())
    for i in range(group):
        s = connect()
        s.sendall(b"GET /pool/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        keep_alive.append(s)
    for s in keep_alive:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("a keep-alive connection closed before its answer")
            data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected answer {data[:40]!r}")
    head = b"GET /slow-head HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 5000 + b"\r\n\r\n"
    body_head = b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    for i in range(group):
        heads.append([connect(), head, 0])
        s = connect()
        s.sendall(body_head)
        bodies.append([s, b"z" * 100000, 0])
    slow = heads + bodies
    for entry in slow:
        entry[0].setblocking(False)
    everything = idle + keep_alive + [e[0] for e in slow]
    print("READY", len(everything), flush=True)

    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    closed = set()
    interval = 1.0 / 1000
    index = 0
    next_send = time.monotonic()
    while True:
        if selector.select(timeout=max(0.0, next_send - time.monotonic())):
            if not os.read(sys.stdin.fileno(), 4096):
                break
        next_send += interval
        sock, data, sent = slow[index % len(slow)]
        index += 1
        if sock.fileno() in closed or sent >= len(data):
            continue
        try:
            slow[(index - 1) % len(slow)][2] += sock.send(data[sent:sent + 1])
        except BlockingIOError:
            pass
        except OSError:
            closed.add(sock.fileno())
    # Which of the connections did the server close meanwhile?
    for s in everything:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                closed.add(s.fileno())
        except BlockingIOError:
            pass
        except OSError:
            closed.add(s.fileno())
    print("DONE", len(everything), len(closed), flush=True)


if __name__ == "__main__":
    main()
