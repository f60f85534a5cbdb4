"""Where a server's CPU time and context switches go, thread by thread, under a wrk load.

    python3 bench/thread_profile.py [--servers coldbrew,granian] [--app asgi_hello]
                                    [--interface asgi|wsgi] [--path /] [--connections 64]
                                    [--threads 8] [--duration 8]

Each server is started exactly as bench/run.py starts it (the same command line, pinned to one
CPU, wrk on the other), warmed up, and then loaded by wrk; the user and system time and the
voluntary and involuntary context switches of each of its threads are read from
/proc/PID/task/*/ before and after, and printed per request. Context switches are what a
requests/s figure hides: on a shared core, every wake that crosses threads is a point where one
thread preempts another. Uses the benchmark's environments (bench/.venv-coldbrew and
bench/.venv-peers, made by bench/run.sh).
"""

import argparse
import glob
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def snapshot(pids):
    """(name, user ticks, system ticks, voluntary, involuntary) of every thread of `pids`."""
    threads = {}
    for pid in pids:
        for task in glob.glob(f"/proc/{pid}/task/*"):
            try:
                stat = open(f"{task}/stat").read()
                status = open(f"{task}/status").read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            switches = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                        if line.endswith(tuple("0123456789")) and "ctxt_switches" in line}
            threads[task] = (name, int(fields[11]), int(fields[12]),
                             switches.get("voluntary_ctxt_switches", 0), switches.get("nonvoluntary_ctxt_switches", 0))
    return threads


def report(server, before, after, result):
    requests = result["requests"]
    print(f"{server}: {result['ok_rps']:,.0f} req/s, p99 {result['p99_ms']:.2f} ms, {requests:,} requests")
    total = [0, 0, 0, 0]
    for task, (name, user, system, vol, invol) in sorted(after.items()):
        if task not in before:
            continue
        _, user0, system0, vol0, invol0 = before[task]
        delta = (user - user0, system - system0, vol - vol0, invol - invol0)
        if not any(delta):
            continue
        total = [a + b for a, b in zip(total, delta)]
        print(f"  {task.rsplit('/', 1)[1]:>8} {name:<16} user {delta[0] * TICK_MS * 1000 / requests:6.2f} µs/req  "
              f"system {delta[1] * TICK_MS * 1000 / requests:6.2f} µs/req  "
              f"switches {delta[2] / requests:.3f} voluntary, {delta[3] / requests:.3f} involuntary per request")
    print(f"  all threads: user {total[0] * TICK_MS * 1000 / requests:.2f} µs, system "
          f"{total[1] * TICK_MS * 1000 / requests:.2f} µs, {(total[2] + total[3]) / requests:.3f} switches per request")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="coldbrew,granian")
    parser.add_argument("--app", default="asgi_hello", help="a module in bench/apps (default %(default)s)")
    parser.add_argument("--interface", choices=("asgi", "wsgi"), default=None,
                        help="default: asgi for a module named asgi_*, else wsgi")
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=8, help="WSGI threads (default %(default)s)")
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    interface = args.interface or ("asgi" if args.app.startswith("asgi_") else "wsgi")
    cfg = run.parse_args(["--servers", args.servers, "--duration", str(args.duration), "--no-docs"])
    run.setup_pinning(cfg)
    for server in cfg.servers:
        with run.Server(server, cfg, args.app, threads=args.threads, ready_path=args.path, interface=interface) as srv:
            run.warm_up(cfg, srv.port, args.path, args.connections)
            pids = run.tree_pids(srv.proc.pid)
            before = snapshot(pids)
            result = run.run_wrk(cfg, srv.port, args.path, args.connections, cfg.duration)
            after = snapshot(pids)
        report(server, before, after, result)


if __name__ == "__main__":
    main()
