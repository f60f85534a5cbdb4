#!/usr/bin/env python3
"""How much memory --preload saves: the Django example with several workers, with and without.

    python bench/preload_memory.py [--workers 4] [--requests 300] [--json]

Starts `python -m coldbrew --workers N examples/django_app:app` with the coldbrew installed in
this interpreter (which needs Django too), once without and once with `--preload`. Each time it
sends a few hundred requests over fresh connections, so that every worker has served some, then
reads /proc/PID/smaps_rollup of the whole process tree (the supervisor and its workers):

* PSS, proportional set size: each page divided by the number of processes that map it. The
  sum over the tree is the memory the tree really costs, shared pages counted once.
* USS, unique set size: Private_Clean + Private_Dirty, the pages only that process maps. It is
  what the kernel would free if that one process exited.

Prints a markdown table and the commands used. Python standard library only.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
APP = "django_app:app"
PATHS = ("/", "/json", "/items/42?colour=blue")
KIB = 1024

# Variables that would configure the server behind the command line's back.
_ENV_PREFIXES = ("COLDBREW_", "DJANGO_")
_ENV_NAMES = ("PORT", "WEB_CONCURRENCY")


class MeasureError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port, workers, preload, python=None):
    return [
        python or sys.executable, "-m", "coldbrew",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        *(["--preload"] if preload else []),
        APP,
    ]


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES) and k not in _ENV_NAMES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def children(pid):
    """Pids whose parent is `pid`, from /proc/*/stat."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)


def smaps_rollup(pid):
    """The kB fields of /proc/PID/smaps_rollup, as {name: KiB}."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def process_memory(pid, role):
    rollup = smaps_rollup(pid)
    return {
        "pid": pid,
        "role": role,
        "rss_kib": rollup["Rss"],
        "pss_kib": rollup["Pss"],
        "uss_kib": rollup["Private_Clean"] + rollup["Private_Dirty"],
    }


def wait_listening(port, proc, log, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MeasureError(f"the server exited with {proc.returncode} before listening:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise MeasureError(f"port {port} did not open within {timeout:.0f} s:\n{log.read_text()}")


def get(port, path):
    """One request on its own connection, so that the requests spread over the workers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def warm_up(port, requests, concurrency=8):
    paths = [PATHS[i % len(PATHS)] for i in range(requests)]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(lambda p: get(port, p), paths))
    bad = [s for s in statuses if s != 200]
    if bad:
        raise MeasureError(f"{len(bad)} of {requests} warm-up requests failed (statuses {sorted(set(bad))})")


def stop(proc, timeout=30.0):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def measure(preload, workers=4, requests=300, python=None, ready_timeout=60.0):
    """Start the Django example, warm it up, and return the memory of its process tree."""
    port = free_port()
    cmd = server_command(port, workers, preload, python)
    with tempfile.TemporaryDirectory(prefix="coldbrew-preload-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=EXAMPLES, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, proc, log, ready_timeout)
            warm_up(port, requests)
            worker_pids = children(proc.pid)
            if len(worker_pids) != workers:
                raise MeasureError(f"expected {workers} workers under pid {proc.pid}, found {worker_pids}")
            processes = [process_memory(proc.pid, "supervisor")]
            processes += [process_memory(pid, "worker") for pid in worker_pids]
        finally:
            status = stop(proc)
        if status != 0:
            raise MeasureError(f"the server exited with {status} on SIGTERM:\n{log.read_text()}")
    return {
        "preload": preload,
        "workers": workers,
        "requests": requests,
        "command": " ".join(["python" if python is None else python, *cmd[1:]]),
        "processes": processes,
        "total_pss_kib": sum(p["pss_kib"] for p in processes),
        "total_uss_kib": sum(p["uss_kib"] for p in processes),
        "total_rss_kib": sum(p["rss_kib"] for p in processes),
    }


def _mib(kib):
    return f"{kib / KIB:.1f}"


def markdown(results):
    """A summary table, a per-process table and the commands, for a list of measure() results."""
    lines = [
        "| mode | processes | total PSS (MiB) | total USS (MiB) | total RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        mode = "--preload" if r["preload"] else "no preload"
        lines.append(f"| {mode} | {len(r['processes'])} | {_mib(r['total_pss_kib'])} | "
                     f"{_mib(r['total_uss_kib'])} | {_mib(r['total_rss_kib'])} |")
    if len(results) == 2 and results[0]["total_pss_kib"]:
        base, pre = results
        saved = base["total_pss_kib"] - pre["total_pss_kib"]
        lines += ["", f"--preload saves {_mib(saved)} MiB of PSS "
                      f"({100 * saved / base['total_pss_kib']:.0f}% of the tree without it)."]
    lines += ["", "| mode | process | pid | PSS (MiB) | USS (MiB) | RSS (MiB) |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        mode = "--preload" if r["preload"] else "no preload"
        for p in r["processes"]:
            lines.append(f"| {mode} | {p['role']} | {p['pid']} | {_mib(p['pss_kib'])} | "
                         f"{_mib(p['uss_kib'])} | {_mib(p['rss_kib'])} |")
    lines += ["", f"Commands (run in {EXAMPLES.relative_to(ROOT)}/, after {results[0]['requests']} "
                  "requests over fresh connections):", ""]
    lines += [f"    {r['command']}" for r in results]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--requests", type=int, default=300, help="warm-up requests per run (default 300)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead")
    args = parser.parse_args(argv)
    try:
        results = [measure(preload, args.workers, args.requests) for preload in (False, True)]
    except MeasureError as err:
        print(f"preload_memory: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"## Memory of the Django example with {args.workers} workers, without and with --preload\n")
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
