"""One hello ASGI request across the server's threads: instructions (callgrind) and context
switches per request, coldbrew against granian's ASGI, under the same load.

    python bench/asgi_profile.py [--requests N] [--connections C] [--servers coldbrew,granian]
                                 [--app asgi_fastapi:app]

Instructions: each server runs under valgrind's callgrind (--separate-threads=yes, following
child processes; "p1t4" below is the first process's fourth thread) twice,
answering N keep-alive requests spread over C connections and answering none; the difference
per thread, divided by N, is one request's cost there (start-up and shutdown excluded; user
space only). Context switches: the server runs natively, and the voluntary and involuntary
switches of all its threads (from /proc) are read before and after N requests. Both counts,
unlike requests/s, do not depend on what else the machine is doing. Uses the coldbrew and
granian beside this Python (a venv with both, such as .venv-test).
"""

import argparse
import asyncio
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP = "profile_hello_asgi:app"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(server, port):
    bindir = Path(sys.executable).parent
    if server == "coldbrew":
        return [str(bindir / "coldbrew"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning", APP]
    if server == "granian":
        return [str(bindir / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--loop", "uvloop", "--log-level", "warning", APP]
    raise SystemExit(f"unknown server {server!r}")


async def _client(port, count):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:40]
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)
    writer.close()


def load(port, requests, connections):
    shares = [requests // connections + (i < requests % connections) for i in range(connections)]

    async def main():
        await asyncio.gather(*(_client(port, share) for share in shares if share))

    asyncio.run(main())


def wait_ready(port, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def callgrind_run(server, requests, connections, work):
    """Instructions per thread (by thread number) of one server run answering `requests`."""
    port = free_port()
    out = os.path.join(work, f"{server}-{requests}.out")
    env = dict(os.environ, PYTHONHASHSEED="0")
    # Children too: granian serves from a worker process it spawns.
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes", "--trace-children=yes",
                             f"--callgrind-out-file={out}.%p",
                             *command(server, port)], cwd=HERE / "apps", env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port, proc)
        if requests:
            load(port, requests, connections)
    finally:
        stop(proc)
    counts = {}
    pids = sorted({int(path.rsplit(".", 1)[1].split("-")[0]) for path in glob.glob(out + ".*")})
    for path in glob.glob(out + ".*"):
        pid = int(path.rsplit(".", 1)[1].split("-")[0])
        thread, total = None, 0
        for line in open(path, errors="replace"):
            if line.startswith("thread: "):
                thread = int(line.split()[1])
            elif line.startswith("summary: "):
                total = int(line.split()[1])
        if thread is not None:
            # Processes by their start order, threads by theirs: "p1t4" is the first process's
            # fourth thread, the same in both runs.
            counts[f"p{pids.index(pid) + 1}t{thread}"] = counts.get(f"p{pids.index(pid) + 1}t{thread}", 0) + total
        os.unlink(path)
    return counts


def switches(pid):
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            for line in open(status):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def server_pids(proc):
    """The server and its children (granian runs its worker as a child process)."""
    pids = [proc.pid]
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(path).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.pid:
            pids.append(int(path.split("/")[2]))
    return pids


def switch_run(server, requests, connections):
    port = free_port()
    proc = subprocess.Popen(command(server, port), cwd=HERE / "apps", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port, proc)
        load(port, 500, connections)  # warm
        pids = server_pids(proc)
        before = sum(switches(pid) for pid in pids)
        load(port, requests, connections)
        after = sum(switches(pid) for pid in pids)
    finally:
        stop(proc)
    return (after - before) / requests


def main():
    global APP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default="coldbrew,granian")
    parser.add_argument("--app", default=APP, help="module:app in bench/apps answering GET / (default %(default)s)")
    args = parser.parse_args()
    APP = args.app
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found: apt-get install valgrind")
    work = tempfile.mkdtemp()
    print(f"{APP}, {args.requests} keep-alive requests over {args.connections} connections")
    for server in args.servers.split(","):
        none = callgrind_run(server, 0, args.connections, work)
        many = callgrind_run(server, args.requests, args.connections, work)
        per_thread = {t: (many.get(t, 0) - none.get(t, 0)) / args.requests for t in sorted(set(many) | set(none))}
        total = sum(per_thread.values())
        threads = ", ".join(f"{t}: {v:,.0f}" for t, v in per_thread.items() if abs(v) >= 50)
        ctx = switch_run(server, args.requests * 10, args.connections)
        print(f"{server:9} {total:>9,.0f} instructions/request ({threads}); {ctx:.2f} context switches/request")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
