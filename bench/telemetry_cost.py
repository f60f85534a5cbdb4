"""What the access log and the metrics cost on the hello app, measured in one run.

Run through ``bench/telemetry_cost.sh``, which checks for coldbrew and wrk first.

Every variant's server is started once, up front, pinned to CPU 0. Then each round sends a
short wrk burst (pinned to CPU 1) to every server in turn, in reverse order on every other
round, so that the machine's swings and any drift over the run fall on all variants alike.
A variant's change is the median, over the rounds, of its figure divided by its baseline's in
the same round, with the interquartile range of those ratios beside it: on a shared machine a
single pair of long runs moves by more than the 5% this is meant to resolve.

Besides wrk's requests/s it reports the server's CPU time per request (user + system over all
its threads, from /proc), which the load on the other CPU barely moves.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPS = Path(__file__).resolve().parent / "apps"
HZ = os.sysconf("SC_CLK_TCK")

# Each variant's extra arguments and the variant it is compared with.
VARIANTS = {
    "plain": ([], None),
    # The same server again: how far apart two identical servers come out is the noise floor.
    "plain-again": ([], "plain"),
    "access": (["--access-logfile", "{dir}/access-text.log"], "plain"),
    "access-null": (["--access-logfile", "/dev/null"], "plain"),
    "access-pipe": (["--access-logfile", "-"], "plain"),
    "metrics": (["--metrics-bind", "127.0.0.1:{port}"], "plain"),
    "json": (["--log-format", "json"], None),
    "json-access": (["--log-format", "json", "--access-logfile", "{dir}/access-json.log"], "json"),
    "json-access-null": (["--log-format", "json", "--access-logfile", "/dev/null"], "json"),
    "json-access-pipe": (["--log-format", "json", "--access-logfile", "-"], "json"),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    """User + system clock ticks of every thread of `pid`."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        total += int(fields[11]) + int(fields[12])
    return total


def wrk(port, seconds, connections):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return requests, rps


class Server:
    def __init__(self, coldbrew, variant, workdir):
        args, self.baseline = VARIANTS[variant]
        self.variant = variant
        self.port = free_port()
        args = [a.format(dir=workdir, port=free_port()) for a in args]
        stdout = subprocess.DEVNULL
        self.reader = None
        if variant.endswith("access-pipe"):
            # stdout into a pipe, as in a container, read on the other CPU.
            self.reader = subprocess.Popen(["taskset", "-c", "1", "cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            stdout = self.reader.stdin
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", coldbrew, "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", *args, "hello:app"],
            cwd=APPS, env=dict(os.environ, WEB_CONCURRENCY="1"), stdout=stdout, stderr=subprocess.DEVNULL,
        )
        if self.reader:
            self.reader.stdin.close()
        self.rounds = []  # (requests/s, CPU µs per request)

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the {self.variant} server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"the {self.variant} server did not open its port")

    def burst(self, seconds, connections):
        before = cpu_ticks(self.proc.pid)
        requests, rps = wrk(self.port, seconds, connections)
        after = cpu_ticks(self.proc.pid)
        self.rounds.append((rps, (after - before) * 1e6 / HZ / requests))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        if self.reader:
            self.reader.wait()


def percent(x):
    return f"{100 * x:+.1f}%"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=1, help="length of each wrk burst")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--variants", default="plain plain-again access metrics",
                        help=f"space-separated, from: {' '.join(VARIANTS)}")
    parser.add_argument("--coldbrew", required=True)
    parser.add_argument("--raw", help="also write every burst's figures to this JSON file")
    opts = parser.parse_args()
    # The servers run in apps/, so a relative path is resolved here.
    opts.coldbrew = os.path.abspath(opts.coldbrew) if os.sep in opts.coldbrew else opts.coldbrew
    if opts.rounds < 2:
        parser.error("--rounds must be at least 2")
    variants = opts.variants.split()
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}")
        baseline = VARIANTS[variant][1]
        if baseline and baseline not in variants:
            variants.insert(0, baseline)

    with tempfile.TemporaryDirectory() as workdir:
        servers = [Server(opts.coldbrew, v, workdir) for v in dict.fromkeys(variants)]
        try:
            for server in servers:
                server.wait_ready()
                wrk(server.port, 1, opts.connections)  # warm-up, not counted
            for round_ in range(opts.rounds):
                for server in servers if round_ % 2 == 0 else reversed(servers):
                    server.burst(opts.seconds, opts.connections)
        finally:
            for server in servers:
                server.stop()

    if opts.raw:
        with open(opts.raw, "w") as raw:
            json.dump({s.variant: s.rounds for s in servers}, raw)
    by_name = {s.variant: s for s in servers}
    print(f"hello app, {opts.rounds} rounds of {opts.seconds}-s wrk bursts ({opts.connections} connections), "
          f"server on CPU 0, wrk on CPU 1")
    print(f"{'variant':<12} {'req/s':>9} {'CPU us/req':>10}   change against the baseline in the same round "
          f"(median, and interquartile range)")
    for server in servers:
        rps = statistics.median(r for r, _ in server.rounds)
        cpu = statistics.median(c for _, c in server.rounds)
        line = f"{server.variant:<12} {rps:>9,.0f} {cpu:>10.2f}"
        if server.baseline:
            base = by_name[server.baseline].rounds
            rps_change = [a[0] / b[0] - 1 for a, b in zip(server.rounds, base)]
            cpu_change = [a[1] / b[1] - 1 for a, b in zip(server.rounds, base)]
            q = statistics.quantiles(rps_change, n=4)
            line += (f"   req/s {percent(statistics.median(rps_change))} ({percent(q[0])}..{percent(q[2])}), "
                     f"CPU/req {percent(statistics.median(cpu_change))} vs {server.baseline}")
        print(line)


if __name__ == "__main__":
    main()
