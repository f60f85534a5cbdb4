#!/usr/bin/env python3
"""Benchmark coldbrew beside its peers in one run (Python stdlib only).

Usually started by `bash bench/run.sh`, which installs wrk and the two virtual
environments first; see bench/README.md. Run it directly with --help for the options.

Every server runs pinned to one CPU (`taskset -c 0`) with one worker process; wrk, the slow
clients, the ASGI load clients (asgi_clients.py) and this runner share the other CPU. The WSGI
scenarios measure coldbrew, granian, gunicorn, uWSGI and waitress; the ASGI scenarios
(asgi-*) coldbrew, granian, uvicorn and hypercorn. Results go to bench/results/<UTC>.json and
bench/results/latest.json, and are rendered into docs/benchmarks.md and
docs/benchmarks-hello.svg.
"""

import argparse
import datetime
import html
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps"
LUA = BENCH / "wrk" / "report.lua"
SLOW_HELPER = BENCH / "slow_clients.py"
ASGI_CLIENTS = BENCH / "asgi_clients.py"
MIX_CLIENT = BENCH / "mix_client.py"
POST_JSON_LUA = BENCH / "wrk" / "post_json.lua"  # POSTs ORDER_JSON, then report.lua's figures
ORDER_JSON = BENCH / "wrk" / "order.json"
DOCS = ROOT / "docs"

WSGI_SERVERS = ["coldbrew", "granian", "gunicorn", "uwsgi", "waitress"]
ASGI_SERVERS = ["coldbrew", "granian", "uvicorn", "hypercorn"]
ALL_SERVERS = WSGI_SERVERS + [s for s in ASGI_SERVERS if s not in WSGI_SERVERS]
SERVER_LABELS = {
    "coldbrew": "coldbrew",
    "granian": "granian",
    "gunicorn": "gunicorn gthread",
    "uwsgi": "uWSGI (pyuwsgi)",
    "waitress": "waitress",
    "uvicorn": "uvicorn",
    "hypercorn": "hypercorn",
}
WSGI_SCENARIOS = ["hello", "flask", "django", "blocking", "large", "echo", "slow", "cold",
                  "flask-service", "django-service", "io-mix"]
ASGI_SCENARIOS = ["asgi-hello", "asgi-fastapi", "asgi-starlette", "asgi-echo", "asgi-stream", "asgi-sse",
                  "asgi-ws", "asgi-cold"]
ALL_SCENARIOS = WSGI_SCENARIOS + ASGI_SCENARIOS
# Names that stand for several scenarios in --scenarios.
SCENARIO_GROUPS = {"all": ALL_SCENARIOS, "wsgi": WSGI_SCENARIOS, "asgi": ASGI_SCENARIOS}
SCENARIO_ALIASES = {"memory": "hello", "post": "echo", "upload": "echo", "1mib": "large",
                    "asgi-memory": "asgi-hello", "fastapi": "asgi-fastapi", "starlette": "asgi-starlette",
                    "asgi-post": "asgi-echo", "sse": "asgi-sse", "ws": "asgi-ws", "websocket": "asgi-ws",
                    "flask_service": "flask-service", "django_service": "django-service", "io_mix": "io-mix",
                    "iomix": "io-mix"}


def scenario_interface(scenario):
    return "asgi" if scenario.startswith("asgi-") else "wsgi"


def scenario_servers(scenario, servers):
    """The servers among `servers` that can run `scenario` (WSGI or ASGI)."""
    able = ASGI_SERVERS if scenario_interface(scenario) == "asgi" else WSGI_SERVERS
    return [s for s in servers if s in able]

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")

# Environment variables that would change how a server is configured behind our back.
_ENV_PREFIXES = ("COLDBREW_", "GUNICORN_", "GRANIAN_", "UWSGI_", "WAITRESS_", "DJANGO_", "UVICORN_",
                 "HYPERCORN_")
_ENV_NAMES = ("PORT", "WEB_CONCURRENCY", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")


# --------------------------------------------------------------------------------------
# Child processes: every one in its own process group, all killed at the end.


class Children:
    """Process groups this run started; `kill_all` ends whatever is still alive."""

    def __init__(self):
        self.procs = []
        self.lock = threading.Lock()

    def popen(self, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        with self.lock:
            self.procs.append(proc)
        return proc

    def run(self, argv, timeout, **kw):
        """Run to completion within `timeout` seconds; returns (rc, stdout, stderr)."""
        proc = self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc, grace=0)
            self.forget(proc)
            raise BenchError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
        except BaseException:  # Ctrl-C: the child is in its own session and did not get it
            kill_group(proc, grace=0)
            self.forget(proc)
            raise
        self.forget(proc)
        return proc.returncode, out, err

    def forget(self, proc):
        with self.lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def kill_all(self):
        with self.lock:
            procs, self.procs = self.procs, []
        for proc in procs:
            kill_group(proc, grace=0)


def kill_group(proc, sig=signal.SIGTERM, grace=5.0):
    """Send `sig` to the process group, wait up to `grace` s, then SIGKILL the group."""
    try:
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            # Repeated: a server that is still setting up its signal handlers can miss one.
            os.killpg(pgid, sig)
            try:
                proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while children of it live on in the group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    except ProcessLookupError:
        pass


CHILDREN = Children()


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------
# /proc helpers: process trees, RSS, PSS, accept queues.


def _children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def tree_pids(root):
    """`root` and all its descendants that are alive now."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            out.append(pid)
            todo.extend(kids.get(pid, ()))
    return out


def rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def pss_bytes(pids):
    """Proportional set size summed over `pids` (shared pages counted once overall):
    the fair figure for several worker processes that share memory."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    return total


def accept_queue(port):
    """Connections waiting in the accept queue of the LISTEN socket(s) on 127.0.0.1:port:
    the kernel finished their handshake but the server has not accepted them."""
    total = 0
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and parts[1].endswith(want):
                        total += int(parts[4].split(":")[1], 16)
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return total


class Sampler(threading.Thread):
    """Samples the server's process-tree RSS (and its accept queue) every `interval` s."""

    def __init__(self, root_pid, port, interval=0.05):
        super().__init__(daemon=True)
        self.root_pid, self.port, self.interval = root_pid, port, interval
        self.peak_rss = 0
        self.max_procs = 0
        self.queue_samples = []
        self._stop_event = threading.Event()

    def run(self):
        n = 0
        pids = tree_pids(self.root_pid)
        while not self._stop_event.is_set():
            if n % 10 == 0:  # the tree rarely changes: rescan it every ~0.5 s
                pids = tree_pids(self.root_pid)
                self.max_procs = max(self.max_procs, len(pids))
            self.peak_rss = max(self.peak_rss, rss_bytes(pids))
            if n % 4 == 0:
                self.queue_samples.append(accept_queue(self.port))
            n += 1
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join(timeout=5)
        q = self.queue_samples
        return {
            "peak_rss_mib": round(self.peak_rss / MIB, 1),
            "processes": self.max_procs,
            # Connections left waiting in the kernel's accept queue (median over the run).
            "unaccepted_connections": int(statistics.median(q)) if q else 0,
        }


# --------------------------------------------------------------------------------------
# Servers


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES) and k not in _ENV_NAMES}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_beside(python, name):
    return str(Path(python).parent / name)


def asgi_server_argv(server, cfg, target, port):
    """The command line of `server` serving the ASGI app `target` on 127.0.0.1:port: one
    worker process, one event loop, uvloop everywhere (each server's fastest loop)."""
    if server == "coldbrew":
        py = cfg.coldbrew_python
        script = bin_beside(py, "coldbrew")
        head = [script] if os.access(script, os.X_OK) else [py, "-m", "coldbrew"]
        return head + ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--interface", "asgi", "--loop", "uvloop",
                       "--log-level", "warning", target]
    py = cfg.peers_python
    if server == "granian":
        return [bin_beside(py, "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--loop", "uvloop", "--log-level", "warning", target]
    if server == "uvicorn":
        # One worker is one process (no supervisor); httptools' parser; the access log off.
        return [bin_beside(py, "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log", target]
    if server == "hypercorn":
        # --workers 1 is a supervisor and one spawned worker (both counted); its accept queue
        # is made as long as the others' (its default is 100); no access log by default.
        return [bin_beside(py, "hypercorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--worker-class", "uvloop", "--backlog", "1024", "--log-level", "warning", target]
    raise ValueError(server)


def server_argv(server, cfg, target, port, threads, interface="wsgi"):
    """The command line of `server` serving `target` (MODULE:app) on 127.0.0.1:port."""
    if interface == "asgi":
        return asgi_server_argv(server, cfg, target, port)
    if server == "coldbrew":
        py = cfg.coldbrew_python
        script = bin_beside(py, "coldbrew")
        head = [script] if os.access(script, os.X_OK) else [py, "-m", "coldbrew"]
        return head + ["--bind", f"127.0.0.1:{port}", "--threads", str(threads), "--log-level", "warning", target]
    py = cfg.peers_python
    if server == "gunicorn":
        return [bin_beside(py, "gunicorn"), "-k", "gthread", "--workers", "1", "--threads", str(threads),
                "--timeout", "0", "--bind", f"127.0.0.1:{port}", target]
    if server == "waitress":
        return [bin_beside(py, "waitress-serve"), "--threads", str(threads), "--listen", f"127.0.0.1:{port}", target]
    if server == "uwsgi":
        # One process, no master, HTTP/1.1 keep-alive served by the worker itself; request
        # logging off; a listen queue as long as the others' (its default is 100).
        return [bin_beside(py, "uwsgi"), "--http11-socket", f"127.0.0.1:{port}", "--processes", "1",
                "--threads", str(threads), "--module", target, "--pythonpath", ".", "--need-app",
                "--disable-logging", "--listen", "1024", "--die-on-term"]
    if server == "granian":
        return [bin_beside(py, "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--blocking-threads", str(threads), "--log-level", "warning", target]
    raise ValueError(server)


def display_command(server, cfg, interface="wsgi"):
    """The command line as the docs show it: program names without their venv path, port P."""
    argv = server_argv(server, cfg, "MODULE:app", 0, 8, interface)
    argv = [Path(argv[0]).name] + argv[1:]
    if argv[0].startswith("python"):
        argv[0] = "python"
    text = " ".join(cfg.pin_server + argv)
    return text.replace("127.0.0.1:0", "127.0.0.1:P").replace("--port 0", "--port P")


def http_get_status(port, path, timeout):
    """Status of one `GET path` on a fresh connection, or None if nothing is listening yet."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return None
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            try:
                chunk = sock.recv(4096)
            except OSError:
                return 0
            if not chunk:
                return 0
            data += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else 0


class Server:
    """One server process (tree) serving one app; `with Server(...) as s:` stops it."""

    def __init__(self, name, cfg, module, threads=8, ready_path="/", ready_timeout=60.0, interface="wsgi"):
        self.name, self.cfg, self.module = name, cfg, module
        self.port = free_port()
        self.argv = server_argv(name, cfg, f"{module}:app", self.port, threads, interface)
        if not os.access(self.argv[0], os.X_OK):
            raise BenchError(f"{self.argv[0]} not found (is {name} installed? run bench/run.sh without --no-setup)")
        self.log = tempfile.TemporaryFile(prefix=f"bench-{name}-")
        full = cfg.pin_server + self.argv
        self.t0 = time.perf_counter()
        self.proc = CHILDREN.popen(full, cwd=str(APPS), env=clean_env(), stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.startup_s = self._wait_ready(ready_path, ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, path, timeout):
        deadline = self.t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode} before answering: "
                                 f"{self.log_tail()}")
            status = http_get_status(self.port, path, timeout=max(0.5, deadline - time.perf_counter()))
            if status == 200:
                return time.perf_counter() - self.t0
            if status not in (None, 0, 502, 503, 504):  # 50x: up, but not ready yet
                raise BenchError(f"{self.name} answered {status} to GET {path}: {self.log_tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} did not answer 200 within {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.002)

    def log_tail(self, n=1500):
        try:
            self.log.seek(0)
            text = self.log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        text = text.strip()
        return ("..." + text[-n:]) if len(text) > n else text

    def stop(self):
        if self.proc is None:
            return
        # uWSGI without a master reloads on SIGTERM unless told otherwise; SIGINT ends it.
        sig = signal.SIGINT if self.name == "uwsgi" else signal.SIGTERM
        kill_group(self.proc, sig=sig, grace=5.0)
        CHILDREN.forget(self.proc)
        self.proc = None
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------------------
# Load generation


def run_wrk(cfg, port, path="/", connections=64, duration=10.0, body_bytes=0, server=None, script=LUA,
            wrk_env=None):
    """One wrk run; returns its figures, and the server's peak RSS during it. `script` is the
    Lua script (it must print report.lua's BENCH_JSON line); `wrk_env` adds to wrk's environment."""
    secs = max(1, int(round(duration)))
    argv = cfg.pin_load + ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--latency", "--timeout", "10s",
                           "-s", str(script), f"http://127.0.0.1:{port}{path}"]
    env = dict(os.environ)
    env["BENCH_BODY_BYTES"] = str(body_bytes)
    env.update(wrk_env or {})
    sampler = Sampler(server.proc.pid, port) if server is not None else None
    if sampler:
        sampler.start()
    try:
        rc, out, err = CHILDREN.run(argv, timeout=secs + 60, env=env)
    finally:
        mem = sampler.stop() if sampler else {}
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if rc != 0 or line is None:
        raise BenchError(f"wrk exited {rc}: {(err or out).strip()[-500:]}")
    raw = json.loads(line[len("BENCH_JSON "):])
    dur = raw["duration_us"] / 1e6
    errors = raw["errors"]
    lat = raw["latency_us"]
    res = {
        "connections": connections,
        "duration_s": round(dur, 3),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / dur, 1),
        # Responses with a 2xx/3xx status per second: what the tables show.
        "ok_rps": round((raw["requests"] - errors["status"]) / dur, 1),
        "mib_per_s": round(raw["bytes"] / dur / MIB, 1),
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": round(lat["mean"] / 1000, 3),
        "errors": errors,
        "error_count": sum(errors.values()),
    }
    res.update(mem)
    return res


def warm_up(cfg, port, path, connections, body_bytes=0, **wrk_kw):
    if cfg.warmup > 0:
        run_wrk(cfg, port, path, connections, cfg.warmup, body_bytes, **wrk_kw)


# --------------------------------------------------------------------------------------
# Scenarios: each returns a dict for one server; an exception becomes an error entry.


def sc_hello(name, cfg):
    with Server(name, cfg, "hello") as srv:
        time.sleep(0.3 if cfg.quick else 1.0)  # let start-up settle before the idle figures
        pids = tree_pids(srv.proc.pid)
        out = {
            "startup_ms": round(srv.startup_s * 1000, 1),
            "processes": len(pids),
            "idle_rss_mib": round(rss_bytes(pids) / MIB, 1),
            "idle_pss_mib": round(pss_bytes(pids) / MIB, 1),
            "runs": {},
        }
        warm_up(cfg, srv.port, "/", 64)
        for c in (1, 64, 256):
            out["runs"][f"c{c}"] = run_wrk(cfg, srv.port, "/", c, cfg.duration, server=srv)
        return out


def _one_route(name, cfg, module, path, connections=64, body_bytes=0, interface="wsgi", ready_path=None,
               **wrk_kw):
    if ready_path is None:
        ready_path = path if not body_bytes else "/"
    with Server(name, cfg, module, ready_path=ready_path, interface=interface) as srv:
        warm_up(cfg, srv.port, path, connections, body_bytes, **wrk_kw)
        return {"run": run_wrk(cfg, srv.port, path, connections, cfg.duration, body_bytes, server=srv, **wrk_kw)}


def sc_flask(name, cfg):
    return _one_route(name, cfg, "flask_app", "/json")


def sc_django(name, cfg):
    return _one_route(name, cfg, "django_app", "/json")


def sc_large(name, cfg):
    return _one_route(name, cfg, "large", "/")


def sc_echo(name, cfg):
    return _one_route(name, cfg, "echo", "/", body_bytes=64 * 1024)


def sc_blocking(name, cfg):
    out = {"sleep_ms": 10, "runs": {}}
    for threads, conns in ((8, 64), (64, 512)):
        key = f"t{threads}_c{conns}"
        try:
            with Server(name, cfg, "sleep", threads=threads) as srv:
                warm_up(cfg, srv.port, "/", conns)
                run = run_wrk(cfg, srv.port, "/", conns, cfg.duration, server=srv)
            bound = threads * 100
            run.update(threads=threads, bound_rps=bound, pct_of_bound=round(100 * run["ok_rps"] / bound, 1))
            out["runs"][key] = run
        except BenchError as e:
            out["runs"][key] = {"error": str(e), "threads": threads, "connections": conns}
    return out


def sc_slow(name, cfg):
    n_slow = 200
    with Server(name, cfg, "mixed") as srv:
        warm_up(cfg, srv.port, "/", 64)
        base = run_wrk(cfg, srv.port, "/", 64, cfg.duration, server=srv)
        helper_duration = cfg.duration + 20
        helper = CHILDREN.popen(
            cfg.pin_load + [sys.executable, str(SLOW_HELPER), "--port", str(srv.port), "--path", "/big",
                            "--connections", str(n_slow), "--duration", str(helper_duration)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # "READY" once every connection has sent its first request.
            readable, _, _ = select.select([helper.stdout], [], [], 30)
            line = helper.stdout.readline() if readable else ""
            if line.strip() != "READY":
                raise BenchError(f"slow-client helper not ready within 30 s: {line!r}")
            time.sleep(1.0)  # let the server start on the slow responses
            loaded = run_wrk(cfg, srv.port, "/", 64, cfg.duration, server=srv)
        finally:
            if helper.poll() is None:
                helper.send_signal(signal.SIGTERM)
            try:
                rest, _ = helper.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(helper, grace=0)
                rest = ""
            CHILDREN.forget(helper)
        slow = next((json.loads(ln[10:]) for ln in rest.splitlines() if ln.startswith("SLOW_JSON ")), None)
    kept = round(100 * loaded["ok_rps"] / base["ok_rps"], 1) if base["ok_rps"] else None
    return {"slow_connections": n_slow, "slow_response_kib": 256, "without": base, "with": loaded,
            "pct_rps_kept": kept, "slow_clients": slow}


COLD_APPS = (("hello", "hello"), ("flask", "flask_app"), ("django", "django_app"))


def time_import(cfg, python, module):
    """Spawn → exit of `python -c "import MODULE"` in bench/apps: the floor under any server.
    It leaves through os._exit right after the import: a server that answers is not tearing
    its interpreter down either, and for Django that teardown alone takes tens of ms."""
    t0 = time.perf_counter()
    code = f"import {module}; import os; os._exit(0)"
    rc, out, err = CHILDREN.run(cfg.pin_server + [python, "-c", code], timeout=60,
                                cwd=str(APPS), env=clean_env())
    dt = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"import {module} failed: {err.strip()[-300:]}")
    return dt


def sc_cold(name, cfg, apps=COLD_APPS, interface="wsgi"):
    python = cfg.coldbrew_python if name == "coldbrew" else cfg.peers_python
    out = {"runs": cfg.cold_runs, "apps": {}}
    for label, module in apps:
        entry = {}
        try:
            # One unmeasured start first: it writes the .pyc files and fills the page cache.
            with Server(name, cfg, module, interface=interface):
                pass
            samples, floor = [], []
            for _ in range(cfg.cold_runs):  # interleaved, so both see the same machine load
                with Server(name, cfg, module, interface=interface) as srv:
                    samples.append(srv.startup_s * 1000)
                floor.append(time_import(cfg, python, module) * 1000)
            entry = {
                "median_ms": round(statistics.median(samples), 1),
                "min_ms": round(min(samples), 1),
                "max_ms": round(max(samples), 1),
                "samples_ms": [round(s, 1) for s in samples],
                "import_floor_ms": round(statistics.median(floor), 1),
            }
            entry["over_floor_ms"] = round(entry["median_ms"] - entry["import_floor_ms"], 1)
        except BenchError as e:
            entry = {"error": str(e)}
        out["apps"][label] = entry
    return out


# The app-shaped scenarios: what a service does per request, and fast requests beside I/O waits.


def sc_flask_service(name, cfg):
    # POST /orders/1016 with the 4 KiB JSON order of bench/wrk/order.json (its order_id is 1016).
    return _one_route(name, cfg, "flask_service", "/orders/1016", ready_path="/", script=POST_JSON_LUA,
                      wrk_env={"BENCH_BODY_FILE": str(ORDER_JSON)})


def sc_django_service(name, cfg):
    return _one_route(name, cfg, "django_service", "/products/42/")


# io-mix: 10 % of the requests wait 50 ms (GIL released), the rest are fast. 8 connections, as
# many as the server has threads: a request never waits for a free thread, so whatever delays
# a fast request is the server's doing. In a closed loop each connection spends ~95 % of its
# time in the slow requests, so with more connections than threads the 50 ms waits occupy all
# 8 threads and the fast requests queue behind them (see bench/README.md).
IO_MIX_CONNECTIONS = 8
IO_MIX_SHARE = 0.1
IO_MIX_WAIT_MS = 50


def run_json_client(cfg, srv, argv, tag, label, grace):
    """Runs a load client that prints one `TAG {json}` line (on the load CPU, as `argv` says)
    against `srv`; returns its figures with the server's peak RSS during the run."""
    sampler = Sampler(srv.proc.pid, srv.port)
    sampler.start()
    try:
        rc, out, err = CHILDREN.run(argv, timeout=cfg.warmup + cfg.duration + grace, env=clean_env())
    finally:
        mem = sampler.stop()
    line = next((ln for ln in out.splitlines() if ln.startswith(tag + " ")), None)
    if line is None:
        raise BenchError(f"{label} exited {rc}: {(err or out).strip()[-500:]}")
    res = json.loads(line[len(tag) + 1:])
    if "error" in res:
        raise BenchError(f"{label}: {res['error']}")
    res.update(mem)
    return res


def run_mix(cfg, srv, connections, io_share):
    """One run of mix_client.py (on the load CPU) against `srv`, with the server's peak RSS."""
    argv = cfg.pin_load + [sys.executable, str(MIX_CLIENT), "--port", str(srv.port),
                           "--connections", str(connections), "--io-share", f"{io_share:g}",
                           "--warmup", f"{cfg.warmup:g}", "--duration", f"{cfg.duration:g}",
                           "--server-pid", str(srv.proc.pid)]
    return run_json_client(cfg, srv, argv, "MIX_JSON", "mix_client.py", 60)


def sc_io_mix(name, cfg):
    with Server(name, cfg, "io_mix", ready_path="/fast/1") as srv:
        run = run_mix(cfg, srv, IO_MIX_CONNECTIONS, IO_MIX_SHARE)
    fast = run.get("fast") or {}
    if fast.get("p50_ms"):
        run["fast_p99_over_p50"] = round(fast["p99_ms"] / fast["p50_ms"], 2)
    return {"io_wait_ms": IO_MIX_WAIT_MS, "io_share": IO_MIX_SHARE, "run": run}


# ASGI scenarios: the same servers' ASGI sides, one worker (one event loop) each.


def sc_asgi_hello(name, cfg):
    with Server(name, cfg, "asgi_hello", interface="asgi") as srv:
        time.sleep(0.3 if cfg.quick else 1.0)  # let start-up settle before the idle figures
        pids = tree_pids(srv.proc.pid)
        out = {
            "startup_ms": round(srv.startup_s * 1000, 1),
            "processes": len(pids),
            "idle_rss_mib": round(rss_bytes(pids) / MIB, 1),
            "idle_pss_mib": round(pss_bytes(pids) / MIB, 1),
        }
        warm_up(cfg, srv.port, "/", 64)
        out["run"] = run_wrk(cfg, srv.port, "/", 64, cfg.duration, server=srv)
        return out


def sc_asgi_fastapi(name, cfg):
    return _one_route(name, cfg, "asgi_fastapi", "/json", interface="asgi")


def sc_asgi_starlette(name, cfg):
    return _one_route(name, cfg, "asgi_starlette", "/json", interface="asgi")


def sc_asgi_echo(name, cfg):
    return _one_route(name, cfg, "asgi_echo", "/", body_bytes=64 * 1024, interface="asgi")


def sc_asgi_stream(name, cfg):
    return _one_route(name, cfg, "asgi_stream", "/", connections=16, interface="asgi")


def run_client(cfg, srv, mode, connections, extra=()):
    """One run of asgi_clients.py (on the load CPU) against `srv`, with the server's peak RSS."""
    argv = cfg.pin_load + [cfg.client_python, str(ASGI_CLIENTS), mode, "--port", str(srv.port),
                           "--connections", str(connections), "--warmup", f"{cfg.warmup:g}",
                           "--duration", f"{cfg.duration:g}", "--server-pid", str(srv.proc.pid), *extra]
    return run_json_client(cfg, srv, argv, "ASGI_JSON", f"asgi_clients.py {mode}", 90)


SSE_CONNECTIONS = 100
SSE_INTERVAL = 0.010
WS_CONNECTIONS = 64


def sc_asgi_sse(name, cfg):
    out = {"connections": SSE_CONNECTIONS, "runs": {}}
    for key, interval in (("paced", SSE_INTERVAL), ("flood", 0.0)):
        try:
            with Server(name, cfg, "asgi_sse", interface="asgi") as srv:  # a fresh server per run
                out["runs"][key] = run_client(cfg, srv, "sse", SSE_CONNECTIONS, ["--interval", f"{interval:g}"])
        except BenchError as e:
            out["runs"][key] = {"error": str(e)}
    return out


def sc_asgi_ws(name, cfg):
    with Server(name, cfg, "asgi_echo_ws", interface="asgi") as srv:
        return {"run": run_client(cfg, srv, "ws", WS_CONNECTIONS)}


COLD_ASGI_APPS = (("hello", "asgi_hello"), ("fastapi", "asgi_fastapi"))


def sc_asgi_cold(name, cfg):
    return sc_cold(name, cfg, apps=COLD_ASGI_APPS, interface="asgi")


SCENARIO_FUNCS = {
    "hello": sc_hello,
    "flask": sc_flask,
    "django": sc_django,
    "blocking": sc_blocking,
    "large": sc_large,
    "echo": sc_echo,
    "slow": sc_slow,
    "cold": sc_cold,
    "flask-service": sc_flask_service,
    "django-service": sc_django_service,
    "io-mix": sc_io_mix,
    "asgi-hello": sc_asgi_hello,
    "asgi-fastapi": sc_asgi_fastapi,
    "asgi-starlette": sc_asgi_starlette,
    "asgi-echo": sc_asgi_echo,
    "asgi-stream": sc_asgi_stream,
    "asgi-sse": sc_asgi_sse,
    "asgi-ws": sc_asgi_ws,
    "asgi-cold": sc_asgi_cold,
}


# --------------------------------------------------------------------------------------
# What was measured with what


def _cmd_output(argv, timeout=30, **kw):
    try:
        rc, out, err = CHILDREN.run(argv, timeout=timeout, **kw)
    except (OSError, BenchError) as e:
        return None, str(e)
    return rc, (out + err).strip()


_VERSIONS_PY = r"""
import json, platform, sys
from importlib import metadata
names = sys.argv[1:]
out = {"python": platform.python_version(), "implementation": platform.python_implementation()}
for n in names:
    try:
        out[n] = metadata.version(n)
    except metadata.PackageNotFoundError:
        out[n] = None
print(json.dumps(out))
"""


def python_versions(python, names):
    rc, text = _cmd_output([python, "-c", _VERSIONS_PY, *names])
    if rc != 0:
        return {"error": text[-300:]}
    try:
        return json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": text[-300:]}


def environment(cfg):
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kernel": platform.release(),
        "cpu_model": None,
        "cpus": os.cpu_count(),
        "runner_python": platform.python_version(),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "pinning": {"server_cpu": cfg.server_cpu, "load_cpu": cfg.load_cpu},
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rc, text = _cmd_output(["wrk", "-v"])
    first = text.splitlines()[0] if text else ""
    m = re.match(r"wrk\s+(\S+)", first)
    env["wrk"] = m.group(1) if m else (first.strip() or None)
    rc, sha = _cmd_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    rc2, dirty = _cmd_output(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                              "src", "python", "Cargo.toml", "Cargo.lock", "pyproject.toml"])
    env["coldbrew_commit"] = sha if rc == 0 else None
    env["coldbrew_tree_dirty"] = bool(dirty) if rc2 == 0 else None
    if "coldbrew" in cfg.servers:
        env["coldbrew_python"] = cfg.coldbrew_python
        env["coldbrew_env"] = python_versions(cfg.coldbrew_python, ["coldbrew", "flask", "django", "jinja2"]
                                              + ASGI_PACKAGES)
    if any(s != "coldbrew" for s in cfg.servers):
        env["peers_python"] = cfg.peers_python
        env["peers_env"] = python_versions(cfg.peers_python,
                                           ["gunicorn", "waitress", "pyuwsgi", "granian", "flask", "django",
                                            "jinja2", "uvicorn", "hypercorn", "httptools"] + ASGI_PACKAGES)
    if any(scenario_interface(s) == "asgi" for s in cfg.scenarios):
        env["client_python"] = cfg.client_python
        env["client_env"] = python_versions(cfg.client_python, ["uvloop"])
    return env


# The ASGI frameworks and libraries whose versions every run records.
ASGI_PACKAGES = ["fastapi", "starlette", "pydantic", "uvloop", "websockets"]


def server_version(results, name):
    env = results.get("environment", {})
    if name == "coldbrew":
        v = env.get("coldbrew_env", {}).get("coldbrew")
    else:
        v = env.get("peers_env", {}).get("pyuwsgi" if name == "uwsgi" else name)
    return v or "?"


# --------------------------------------------------------------------------------------
# Rendering: docs/benchmarks.md and docs/benchmarks-hello.svg


def _num(v, digits=0):
    if v is None:
        return "–"
    if round(v, digits) == 0:
        v = 0  # not "-0"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ms(v):
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def _lat(run, key):
    """A latency cell: a dash when the run had no responses to measure."""
    if not run or not run.get("requests"):
        return "–"
    return _ms(run.get(key))


def _ratio(v, ref):
    if v is None or not ref:
        return "–"
    return f"{v / ref:.2f}×"


def _errors_note(run):
    e = run.get("errors") or {}
    parts = []
    if run.get("requests") == 0:
        parts.append(f"no response in {run.get('duration_s', 0):.0f} s")
    parts += [f"{e[k]:,} {k}" for k in ("status", "connect", "read", "write", "timeout") if e.get(k)]
    unaccepted = run.get("unaccepted_connections")
    if unaccepted:
        parts.append(f"{unaccepted} conns never accepted")
    return ", ".join(parts)


def _mix_errors(run):
    """Errors of a mix_client.py run (io-mix): its error kinds, failed connections, and the
    connections left in the accept queue."""
    parts = []
    if run.get("connect_errors"):
        parts.append(f"{run['connect_errors']} of {run.get('connections')} connections failed")
    parts += [f"{n:,} {k.replace('_', ' ')}" for k, n in sorted((run.get("errors") or {}).items()) if n]
    if run.get("unaccepted_connections"):
        parts.append(f"{run['unaccepted_connections']} conns never accepted")
    return ", ".join(parts)


def _load_table(results, scenario, pick, extra_cols=()):
    """A req/s table for one load run per server; `pick(entry)` gives the run dict."""
    servers = results["servers"]
    rows = {}
    for s in servers:
        entry = results["results"].get(scenario, {}).get(s)
        if entry is None:
            continue
        if "error" in entry:
            rows[s] = {"error": entry["error"]}
            continue
        run = pick(entry)
        rows[s] = run if run is not None else {"error": "not measured"}
    ref_g = rows.get("granian", {}).get("ok_rps")
    ref_c = rows.get("coldbrew", {}).get("ok_rps")
    head = ["server", "req/s", "p50 ms", "p99 ms", "peak RSS MiB"] + [c[0] for c in extra_cols] + \
           ["vs granian", "vs coldbrew", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
    for s in servers:
        if s not in rows:
            continue
        r = rows[s]
        label = SERVER_LABELS[s]
        if "error" in r:
            lines.append(f"| {label} | " + " | ".join(["–"] * (len(head) - 2)) + f" | failed: {_short(r['error'])} |")
            continue
        cells = [label, _num(r["ok_rps"]), _lat(r, "p50_ms"), _lat(r, "p99_ms"), _num(r.get("peak_rss_mib"), 1)]
        cells += [fn(r) for _, fn in extra_cols]
        cells += [_ratio(r["ok_rps"], ref_g), _ratio(r["ok_rps"], ref_c), _errors_note(r) or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(text, n=160):
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def render_svg(results):
    """Horizontal bar chart of hello c64 req/s per server, written by hand."""
    bars = []
    for s in results["servers"]:
        e = results["results"].get("hello", {}).get(s)
        run = (e or {}).get("runs", {}).get("c64") if e and "error" not in e else None
        if run and "ok_rps" in run:
            bars.append((SERVER_LABELS[s], run["ok_rps"], s == "coldbrew", run.get("unaccepted_connections") or 0))
    if not bars:
        return None
    bars.sort(key=lambda b: -b[1])
    top = max(b[1] for b in bars) or 1
    partial = [b for b in bars if b[3]]
    left, width, bar_h, gap, top_pad = 150, 420, 26, 12, 48
    bars_bottom = top_pad + len(bars) * (bar_h + gap)
    height = bars_bottom + 14 + 16 * len(partial) + 8
    total_w = left + width + 110
    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" '
        f'viewBox="0 0 {total_w} {height}" font-family="Helvetica, Arial, sans-serif" font-size="13">',
        f'<rect width="{total_w}" height="{height}" fill="#ffffff"/>',
        f'<text x="12" y="20" font-size="15" font-weight="bold" fill="#222">'
        f'hello world, 64 connections: requests per second</text>',
        f'<text x="12" y="37" font-size="11" fill="#666">1 worker process, 8 threads, server pinned to one '
        f'CPU, wrk on the other; {esc(results["environment"].get("date_utc", ""))}</text>',
    ]
    for i, (label, value, ours, unaccepted) in enumerate(bars):
        y = top_pad + i * (bar_h + gap)
        w = max(1.0, width * value / top)
        color = "#b5562b" if ours else "#7a8b99"
        mark = " †" if unaccepted else ""
        weight = ' font-weight="bold"' if ours else ""
        out.append(f'<text x="{left - 8}" y="{y + bar_h * 0.68:.1f}" text-anchor="end" fill="#222"{weight}>'
                   f'{esc(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}" rx="2"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + bar_h * 0.68:.1f}" fill="#222">{value:,.0f}{mark}</text>')
    axis_y = bars_bottom - gap / 2
    out.append(f'<line x1="{left}" y1="{top_pad - 4}" x2="{left}" y2="{axis_y:.1f}" stroke="#444"/>')
    for j, (label, _, _, unaccepted) in enumerate(partial):
        out.append(f'<text x="12" y="{bars_bottom + 10 + 16 * j}" font-size="11" fill="#666">'
                   f'† {esc(label)} served only {64 - unaccepted} of the 64 connections; '
                   f'the other {unaccepted} were never accepted.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


GENERATED_NOTE = (
    "<!-- Generated by bench/run.py from bench/results/latest.json; edit the renderer, not this file. "
    "Each part between a `bench:NAME begin` and a `bench:NAME end` marker is rendered from the run that "
    "measured it: a run without WSGI (or ASGI) scenarios keeps that part as it was. Everything after the "
    "last end marker is written by hand and kept as it is. -->")
BLOCKS = ("wsgi", "asgi")
# Before the markers existed, a hand-written section was a heading followed by this comment.
_HAND_WRITTEN = "<!-- Appended by hand"


def _marker(group, which):
    return f"<!-- bench:{group} {which} -->"


def split_existing(text):
    """The generated parts ({group: markdown}) and the hand-written tail of a docs page."""
    blocks, ends = {}, []
    for group in BLOCKS:
        begin, end = _marker(group, "begin"), _marker(group, "end")
        i, j = text.find(begin), text.find(end)
        if i >= 0 and j > i:
            blocks[group] = text[i + len(begin):j].strip("\n")
            ends.append(j + len(end))
    if ends:
        return blocks, text[max(ends):].strip("\n")
    # A page from before the markers: all of it was the WSGI run, up to the first heading
    # that a hand-written comment follows.
    lines = text.splitlines()
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("<!-- Generated by bench/run.py")), 0)
    cut = len(lines)
    for i, ln in enumerate(lines):
        if ln.startswith("## "):
            nxt = next((x for x in lines[i + 1:] if x.strip()), "")
            if nxt.startswith(_HAND_WRITTEN):
                cut = i
                break
    body = "\n".join(lines[start:cut]).strip("\n")
    if body:
        blocks["wsgi"] = body
    return blocks, "\n".join(lines[cut:]).strip("\n")


def render_markdown(results, svg_name=None, existing=None):
    """docs/benchmarks.md: the WSGI and ASGI parts of this run, any part this run did not
    measure kept from `existing` (the page as it was), and the hand-written tail of it."""
    R = results["results"]
    kept, tail = split_existing(existing) if existing else ({}, "")
    out = ["# Benchmarks", "", GENERATED_NOTE, ""]
    for group in BLOCKS:
        if any(scenario_interface(sc) == group for sc in R):
            block = (render_wsgi if group == "wsgi" else render_asgi)(results, svg_name).strip("\n")
        else:
            block = kept.get(group)
        if block:
            out += [_marker(group, "begin"), "", block, "", _marker(group, "end"), ""]
    if tail:
        out += [tail, ""]
    return "\n".join(out)


def render_wsgi(results, svg_name=None):
    env = results["environment"]
    opts = results["options"]
    R = results["results"]
    servers = results["servers"]
    md = []
    add = md.append
    add(f"coldbrew beside its peers serving **WSGI** apps, all measured in **one run** on {env.get('date_utc', '?')} "
        f"(coldbrew commit `{(env.get('coldbrew_commit') or '?')[:12]}`"
        f"{', with uncommitted changes' if env.get('coldbrew_tree_dirty') else ''}). "
        f"Reproduce with `bash bench/run.sh` (see [bench/README.md](../bench/README.md)).")
    add("")
    add("Every server runs **one worker process with 8 threads** (unless a scenario says otherwise), "
        "pinned to one CPU, while the load generator has the other CPU. The figures are provisional "
        "and machine-specific: read them as ratios between servers *within this run*; the machine is "
        "shared and noisy, so absolute numbers move from run to run.")
    if results.get("interrupted"):
        add("")
        add("**This run was interrupted; some figures are missing.**")
    add("")

    # Summary
    if "hello" in R:
        add("## Summary")
        add("")
        if svg_name:
            add(f"![hello c64 requests per second]({svg_name})")
            add("")
        cold = R.get("cold", {})
        add("hello world at 1, 64 and 256 connections (req/s, p99 in ms), memory of the whole process tree, "
            "and spawn → first 200 (median ms).")
        add("")
        add("| server | c1 req/s | c1 p99 | c64 req/s | c64 p99 | c256 req/s | c256 p99 | idle RSS MiB | "
            "peak RSS MiB (c64) | start hello ms | start Django ms |")
        add("|---|" + "---:|" * 10)
        daggers = []
        for s in servers:
            e = R["hello"].get(s)
            if e is None:
                continue
            c = (cold.get(s) or {}).get("apps") or {}
            starts = [_num(c.get(k, {}).get("median_ms")) for k in ("hello", "django")]
            if "error" in e:
                add(f"| {SERVER_LABELS[s]} | failed: {_short(e['error'], 100)} |" + " – |" * 8 + " | ".join(starts) + " |")
                continue
            runs = e.get("runs", {})
            cells = [SERVER_LABELS[s]]
            for k in ("c1", "c64", "c256"):
                r = runs.get(k) or {}
                mark = ""
                if r.get("unaccepted_connections"):
                    mark = " †"
                    daggers.append(f"{SERVER_LABELS[s]} at {k[1:]} connections: {r['unaccepted_connections']} "
                                   "connections were never accepted")
                cells += [_num(r.get("ok_rps")) + mark, _lat(r, "p99_ms")]
            cells += [_num(e.get("idle_rss_mib"), 1), _num((runs.get("c64") or {}).get("peak_rss_mib"), 1)]
            add("| " + " | ".join(cells + starts) + " |")
        if daggers:
            add("")
            add("† Served fewer connections than wrk opened, so its req/s and p99 describe only the clients it "
                "served: " + "; ".join(daggers) + ".")
        add("")

    if "hello" in R:
        add("## hello")
        add("")
        add("A 13-byte `text/plain` response from a plain WSGI function ([apps/hello.py](../bench/apps/hello.py)), "
            "at 1, 64 and 256 keep-alive connections. req/s counts 2xx/3xx responses only.")
        add("")
        for c in ("c1", "c64", "c256"):
            add(f"### {c[1:]} connection{'s' if c != 'c1' else ''}")
            add("")
            add(_load_table(results, "hello", lambda e, c=c: e.get("runs", {}).get(c)))
            add("")

    for key, title, desc in (
        ("flask", "Flask JSON route", "`GET /json` on a Flask app returning a small JSON document "
                                      "([apps/flask_app.py](../bench/apps/flask_app.py)), 64 connections."),
        ("django", "Django JSON view", "`GET /json` on a single-file Django project (settings.configure, no "
                                       "database, Security and Common middleware; "
                                       "[apps/django_app.py](../bench/apps/django_app.py)), 64 connections."),
        ("flask-service", "Flask service (JSON in, template out)",
         "`POST /orders/1016` on a Flask app ([apps/flask_service.py](../bench/apps/flask_service.py)): wrk sends the "
         "same 4 KiB JSON order with 30 line items ([wrk/order.json](../bench/wrk/order.json)); the view parses and "
         "validates it, totals it, renders an autoescaped Jinja2 page with a loop over the items (about 10 KB of "
         "HTML) and sets a cookie. 64 connections."),
        ("django-service", "Django service (default middleware, template)",
         "`GET /products/42/` on a single-file Django project with `startproject`'s default middleware (Security, "
         "Session, Common, Csrf, Authentication, Message, XFrameOptions) and context processors; the view stores "
         "the product in the session (signed cookies, no database) and renders a template through `render()`: "
         "an extended base template, loops over variants and reviews, `{% url %}`, `{% csrf_token %}`: about 4 KB "
         "of HTML, with a session and a CSRF cookie ([apps/django_service.py](../bench/apps/django_service.py)). "
         "64 connections."),
    ):
        if key in R:
            add(f"## {title}")
            add("")
            add(desc)
            add("")
            add(_load_table(results, key, lambda e: e.get("run")))
            add("")

    if "blocking" in R:
        add("## Blocking I/O (10 ms per request)")
        add("")
        add("The app sleeps 10 ms per request, as a call to a database would "
            "([apps/sleep.py](../bench/apps/sleep.py)). With N threads no server can exceed N × 100 req/s; "
            "the table gives the share of that bound reached.")
        add("")
        for key, text in (("t8_c64", "8 threads, 64 connections (bound 800 req/s)"),
                          ("t64_c512", "64 threads, 512 connections (bound 6,400 req/s)")):
            add(f"### {text}")
            add("")
            add(_load_table(results, "blocking", lambda e, k=key: e.get("runs", {}).get(k),
                            extra_cols=(("% of bound", lambda r: _num(r.get("pct_of_bound"), 1)),)))
            add("")

    if "io-mix" in R:
        # The parameters as this run recorded them (a later change to the constants must not
        # relabel an older run).
        ran = next((e for e in R["io-mix"].values() if "error" not in e), {})
        wait_ms = ran.get("io_wait_ms", IO_MIX_WAIT_MS)
        share = ran.get("io_share", IO_MIX_SHARE)
        conns = (ran.get("run") or {}).get("connections", IO_MIX_CONNECTIONS)
        add("## Fast requests beside I/O waits (io-mix)")
        add("")
        add(f"A Flask app with a fast JSON route and a route that first waits {wait_ms} ms with the GIL "
            "released (`time.sleep`, standing for a database or HTTP call; "
            "[apps/io_mix.py](../bench/apps/io_mix.py)). The load client "
            "([mix_client.py](../bench/mix_client.py), Python, on the load CPU) keeps "
            f"{conns} keep-alive connections busy, sends each request to the I/O route with "
            f"probability {share:g}, and times the two kinds apart; it runs {opts.get('warmup')} s "
            f"unmeasured, then measures {opts.get('duration')} s. {conns} connections, as many "
            "as the server has threads: no request ever waits for a free thread, so whatever delays a fast request "
            "beyond its own work is the server's doing (with more connections the waits fill every thread and the "
            "fast requests queue behind them, which says nothing about the server). The target: **fast p99 no more "
            "than 2× fast p50**. req/s counts both kinds; **coldbrew ÷ server** divides coldbrew's req/s (above 1: "
            "coldbrew did more) and its fast p99 (below 1: coldbrew's was lower) by that server's.")
        add("")
        rows = []
        cb = (R["io-mix"].get("coldbrew") or {}).get("run") or {}
        cb_fast = (cb.get("fast") or {}).get("p99_ms")
        for s in servers:
            e = R["io-mix"].get(s)
            if e is None:
                continue
            if "error" in e:
                rows.append([SERVER_LABELS[s]] + ["–"] * 9 + [f"failed: {_short(e['error'])}"])
                continue
            r = e.get("run") or {}
            f, i = r.get("fast") or {}, r.get("io") or {}
            rows.append([SERVER_LABELS[s], _num(r.get("ok_rps")), _ms(f.get("p50_ms")), _ms(f.get("p99_ms")),
                         _num(r.get("fast_p99_over_p50"), 1) + ("×" if r.get("fast_p99_over_p50") else ""),
                         _ms(i.get("p50_ms")), _ms(i.get("p99_ms")), _pct(r.get("client_cpu_pct")),
                         _cb_ratio(cb.get("ok_rps"), r.get("ok_rps")), _cb_ratio(cb_fast, f.get("p99_ms")),
                         _mix_errors(r) or "none"])
        add(_table(["server", "req/s", "fast p50 ms", "fast p99 ms", "fast p99 ÷ p50", "I/O p50 ms", "I/O p99 ms",
                    "client CPU %", "coldbrew ÷ server (req/s)", "coldbrew ÷ server (fast p99)", "errors"], rows))
        add("")

    if "large" in R:
        add("## 1 MiB response")
        add("")
        add("A 1 MiB body returned as one bytes object ([apps/large.py](../bench/apps/large.py)), 64 connections.")
        add("")
        add(_load_table(results, "large", lambda e: e.get("run"),
                        extra_cols=(("MiB/s", lambda r: _num(r.get("mib_per_s"))),)))
        add("")

    if "echo" in R:
        add("## 64 KiB POST echo")
        add("")
        add("Each request POSTs 64 KiB, which the app reads through `wsgi.input` and sends back "
            "([apps/echo.py](../bench/apps/echo.py)), 64 connections.")
        add("")
        add(_load_table(results, "echo", lambda e: e.get("run")))
        add("")

    if "slow" in R:
        add("## Slow clients")
        add("")
        add("wrk runs hello at 64 connections twice on the same server: alone, then while 200 other "
            "keep-alive connections each request a 256 KiB response and read it at a trickle (4 KiB every "
            "100 ms through a 4 KiB receive buffer, with an Ethernet-sized TCP segment size so that the server's "
            "kernel cannot buffer the whole response; [slow_clients.py](../bench/slow_clients.py)). "
            "A server that ties a thread to each slow reader has fewer threads left for everyone else.")
        add("")
        add("| server | req/s alone | p99 ms alone | req/s with slow clients | p99 ms with slow clients | "
            "% kept | peak RSS MiB | slow responses done | errors |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for s in servers:
            e = R["slow"].get(s)
            if e is None:
                continue
            if "error" in e:
                add(f"| {SERVER_LABELS[s]} | – | – | – | – | – | – | – | failed: {_short(e['error'])} |")
                continue
            a, b, sc = e["without"], e["with"], e.get("slow_clients") or {}
            add(f"| {SERVER_LABELS[s]} | {_num(a['ok_rps'])} | {_lat(a, 'p99_ms')} | {_num(b['ok_rps'])} | "
                f"{_lat(b, 'p99_ms')} | {_num(e.get('pct_rps_kept'), 1)} | {_num(b.get('peak_rss_mib'), 1)} | "
                f"{_num(sc.get('responses'))} | {_errors_note(b) or 'none'} |")
        add("")

    if "cold" in R:
        add("## Cold start")
        add("")
        n = opts.get("cold_runs")
        add(f"Time from spawning the server to its first `200` on `GET /` (polled every 2 ms), median of "
            f"{n} starts after one unmeasured start. The floor is `python -c \"import MODULE\"` with the same "
            "interpreter in the same directory: no server can start faster than its app imports.")
        add("")
        add("| server | hello ms | Flask ms | Django ms | hello over floor | Flask over floor | Django over floor |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        floors = {}
        for s in servers:
            e = R["cold"].get(s)
            if e is None:
                continue
            if "error" in e:
                add(f"| {SERVER_LABELS[s]} | failed: {_short(e['error'], 100)} |" + " |" * 5)
                continue
            apps = e["apps"]
            cells = [SERVER_LABELS[s]]
            for label, _ in COLD_APPS:
                a = apps.get(label, {})
                cells.append(_num(a.get("median_ms"), 0) if "error" not in a else "failed")
                if "import_floor_ms" in a:
                    floors.setdefault(label, []).append(a["import_floor_ms"])
            for label, _ in COLD_APPS:
                a = apps.get(label, {})
                cells.append(_num(a.get("over_floor_ms"), 0) if "error" not in a else "–")
            add("| " + " | ".join(cells) + " |")
        if floors:
            add("| *import floor* | " + " | ".join(
                _num(statistics.median(floors[label]), 0) if label in floors else "–" for label, _ in COLD_APPS)
                + " | | | |")
        errs = [(s, label, a["error"]) for s in servers for label, a in
                (R["cold"].get(s, {}).get("apps") or {}).items() if "error" in a]
        for s, label, err in errs:
            add("")
            add(f"- {SERVER_LABELS[s]}, {label}: {_short(err, 300)}")
        add("")

    if "hello" in R:
        add("## Memory")
        add("")
        add("Resident memory of the whole process tree (server and any children it spawns), read from "
            "`/proc`: once idle after start-up, and the peak of samples taken every 50 ms during the hello "
            "run at 64 connections. PSS (proportional set size, from `/proc/PID/smaps_rollup`) counts a page "
            "shared by several processes once in total; it is the fairer figure when a server runs more than "
            "one process.")
        add("")
        add("| server | processes | idle RSS MiB | idle PSS MiB | peak RSS MiB (hello c64) | peak RSS MiB (c256) |")
        add("|---|---:|---:|---:|---:|---:|")
        for s in servers:
            e = R["hello"].get(s)
            if e is None or "error" in e:
                continue
            runs = e.get("runs", {})
            add(f"| {SERVER_LABELS[s]} | {e.get('processes')} | {_num(e.get('idle_rss_mib'), 1)} | "
                f"{_num(e.get('idle_pss_mib'), 1)} | {_num((runs.get('c64') or {}).get('peak_rss_mib'), 1)} | "
                f"{_num((runs.get('c256') or {}).get('peak_rss_mib'), 1)} |")
        add("")

    # Methodology
    add("## Methodology")
    add("")
    add(f"- **Command:** `{results.get('command', 'bash bench/run.sh')}`; total run time "
        f"{_num(results.get('elapsed_s', 0) / 60, 1)} min.")
    pin = env.get("pinning") or {}
    if pin.get("server_cpu") is not None:
        add(f"- **Pinning:** every server runs under `taskset -c {pin['server_cpu']}`; wrk, the slow-client "
            f"helper{', the io-mix client' if 'io-mix' in R else ''} and the runner under "
            f"`taskset -c {pin['load_cpu']}`. One worker process per server, "
            "so the server gets one CPU and the load generator is never starved by it.")
    else:
        add("- **Pinning:** none (fewer than two CPUs available).")
    add(f"- **Durations:** each measured wrk run lasts {opts.get('duration')} s (`wrk -t1 -cN -dDs --latency "
        f"--timeout 10s`), after a {opts.get('warmup')} s warm-up run on the same server. Every scenario "
        "starts a fresh server; servers take turns within each scenario.")
    add("- **req/s** counts responses with a 2xx or 3xx status; p50/p99 are wrk's latency percentiles over "
        "all responses. *Errors* lists non-2xx responses, socket errors and timeouts, and *conns never "
        "accepted* the connections still waiting in the listening socket's accept queue during the run "
        "(a server that serves only as many keep-alive connections as it has threads leaves the rest there; "
        "wrk does not count them as errors, so their requests are simply missing).")
    add("- **Ratios** (vs granian, vs coldbrew) divide req/s within this one run. The machine is shared and "
        "noisy; compare ratios, not absolute figures across runs.")
    pairs = []
    for s in servers:
        h = ((R.get("hello", {}).get(s) or {}).get("runs") or {}).get("c64") or {}
        a = (R.get("slow", {}).get(s) or {}).get("without") or {}
        if h.get("ok_rps") and a.get("ok_rps"):
            pairs.append(f"{SERVER_LABELS[s]} {_num(h['ok_rps'])} vs {_num(a['ok_rps'])}")
    if pairs:
        add("- **Noise:** the same load (a 13-byte response at 64 connections) is measured twice per server, "
            "in `hello` and as the *alone* run of `slow`, minutes apart: " + "; ".join(pairs) + " req/s. "
            "Differences of that size between servers mean nothing.")
    add(f"- **Machine:** {env.get('cpu_model') or '?'}, {env.get('cpus')} CPUs, Linux {env.get('kernel')}; "
        f"load average at start {' '.join(env.get('loadavg_start') or [])}.")
    add("")
    add("| component | version |")
    add("|---|---|")
    ce, pe = env.get("coldbrew_env") or {}, env.get("peers_env") or {}
    add(f"| coldbrew | {ce.get('coldbrew', '–')} (commit `{(env.get('coldbrew_commit') or '?')[:12]}`"
        f"{', dirty tree' if env.get('coldbrew_tree_dirty') else ''}) |")
    for name, key in (("granian", "granian"), ("gunicorn", "gunicorn"), ("uWSGI (pyuwsgi)", "pyuwsgi"),
                      ("waitress", "waitress")):
        if key in pe:
            add(f"| {name} | {pe.get(key) or '–'} |")
    py = ce.get("python") or pe.get("python")
    add(f"| Python | {py or '–'} |")
    flask_v = ce.get("flask") or pe.get("flask")
    django_v = ce.get("django") or pe.get("django")
    add(f"| Flask / Django | {flask_v or '–'} / {django_v or '–'} |")
    jinja_v = ce.get("jinja2") or pe.get("jinja2")
    if jinja_v and "flask-service" in R:
        add(f"| Jinja2 | {jinja_v} |")
    add(f"| wrk | {env.get('wrk') or '–'} |")
    add(f"| kernel | {env.get('kernel')} |")
    add("")
    add("Server command lines (`P` is a free port, `MODULE` one of the apps in `bench/apps/`):")
    add("")
    add("```")
    for s in servers:
        argv = (results.get("commands") or {}).get(s)
        if argv:
            add(argv)
    add("```")
    add("")
    add("Raw figures, including p90, max latency and every error count: `bench/results/latest.json`.")
    add("")
    return "\n".join(md)


# ASGI rendering. Every ratio here is coldbrew's figure divided by the other server's, in the
# same run: above 1 for a rate means coldbrew did more; below 1 for a time or a cost means
# coldbrew took less.


def _asgi_servers(results):
    return [s for s in results["servers"] if s in ASGI_SERVERS]


def _cb_ratio(cb, value):
    if cb is None or not value:
        return "–"
    return f"{cb / value:.2f}×"


def _asgi_rows(results, scenario, pick):
    """[(server, run)] for the scenario, a run being {"error": ...} when it failed."""
    rows = []
    for s in _asgi_servers(results):
        entry = results["results"].get(scenario, {}).get(s)
        if entry is None:
            continue
        if "error" in entry:
            rows.append((s, {"error": entry["error"]}))
            continue
        run = pick(entry)
        rows.append((s, run if run is not None else {"error": "not measured"}))
    return rows


def _table(head, rows, text_last=True):
    """A markdown table: the first column (and, with text_last, the last) left-aligned, the rest numbers."""
    aligns = ["---"] + ["---:"] * (len(head) - 1)
    if text_last:
        aligns[-1] = "---"
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _asgi_table(results, scenario, pick, cols, metric, failed_cols=None):
    """A table with one row per ASGI server: `cols` are (header, fn(run) -> cell); the ratio
    column divides coldbrew's `metric(run)` by the row's; the last column lists errors."""
    rows = _asgi_rows(results, scenario, pick)
    cb = next((metric(r) for s, r in rows if s == "coldbrew" and "error" not in r), None)
    head = ["server"] + [c[0] for c in cols] + ["coldbrew ÷ server", "errors"]
    out = []
    for s, r in rows:
        if "error" in r:
            out.append([SERVER_LABELS[s]] + ["–"] * (len(cols) + 1) + [f"failed: {_short(r['error'])}"])
            continue
        out.append([SERVER_LABELS[s]] + [fn(r) for _, fn in cols] + [_cb_ratio(cb, metric(r)),
                                                                     _client_errors(r) or "none"])
    return _table(head, out)


def _client_errors(run):
    """Errors of a wrk run, or of an asgi_clients.py run."""
    if "requests" in run:
        return _errors_note(run)
    parts = []
    if run.get("connect_errors"):
        parts.append(f"{run['connect_errors']} of {run.get('connections')} connections failed "
                     f"({_short(run.get('first_connect_error', ''), 80)})")
    if run.get("streams_ended_early"):
        parts.append(f"{run['streams_ended_early']} streams ended early")
    parts += [f"{n:,} {k.replace('_', ' ')}" for k, n in sorted((run.get("errors") or {}).items()) if n]
    if run.get("unaccepted_connections"):
        parts.append(f"{run['unaccepted_connections']} conns never accepted")
    return ", ".join(parts)


def _cpu_us_per_event(run, key):
    n = run.get(key)
    if not n or run.get("server_cpu_pct") is None:
        return None
    return run["server_cpu_pct"] / 100 / n * 1e6


def _pct(v):
    return "–" if v is None else f"{v:.0f}"


WRK_COLS = (("req/s", lambda r: _num(r.get("ok_rps"))), ("p50 ms", lambda r: _lat(r, "p50_ms")),
            ("p99 ms", lambda r: _lat(r, "p99_ms")), ("peak RSS MiB", lambda r: _num(r.get("peak_rss_mib"), 1)))


def _ok_rps(r):
    return r.get("ok_rps")


def render_asgi(results, svg_name=None):
    env = results["environment"]
    opts = results["options"]
    R = results["results"]
    servers = _asgi_servers(results)
    md = []
    add = md.append
    add("## ASGI")
    add("")
    add(f"coldbrew beside granian, uvicorn and hypercorn serving **ASGI 3** apps, all measured in **one run** on "
        f"{env.get('date_utc', '?')} (coldbrew commit `{(env.get('coldbrew_commit') or '?')[:12]}`"
        f"{', with uncommitted changes' if env.get('coldbrew_tree_dirty') else ''}). Reproduce with "
        "`bash bench/run.sh --asgi` (see [bench/README.md](../bench/README.md)).")
    add("")
    add("Every server runs **one worker process**, so one event loop (uvloop for all four), pinned to one CPU, "
        "while the load generator (wrk, or for websockets and server-sent events the Python client "
        "[asgi_clients.py](../bench/asgi_clients.py)) has the other CPU. **coldbrew ÷ server** divides "
        "coldbrew's figure by that server's in the same run: for a rate, 1.50× means coldbrew did one and a "
        "half times as much; for a time or a CPU cost, below 1 means coldbrew needed less. The figures are "
        "provisional and machine-specific: compare the ratios, not absolute numbers across runs.")
    if results.get("interrupted"):
        add("")
        add("**This run was interrupted; some figures are missing.**")
    add("")

    # Summary: one figure per scenario, with coldbrew ÷ server beside it.
    summary = [
        ("asgi-hello", "hello req/s", lambda e: (e.get("run") or {}).get("ok_rps"), 0),
        ("asgi-fastapi", "FastAPI req/s", lambda e: (e.get("run") or {}).get("ok_rps"), 0),
        ("asgi-starlette", "Starlette req/s", lambda e: (e.get("run") or {}).get("ok_rps"), 0),
        ("asgi-echo", "echo 64 KiB req/s", lambda e: (e.get("run") or {}).get("ok_rps"), 0),
        ("asgi-stream", "stream 1 MiB MiB/s", lambda e: (e.get("run") or {}).get("mib_per_s"), 0),
        ("asgi-sse", "SSE paced CPU µs/event",
         lambda e: _cpu_us_per_event((e.get("runs") or {}).get("paced") or {}, "events_per_s"), 1),
        ("asgi-sse", "SSE flood events/s", lambda e: ((e.get("runs") or {}).get("flood") or {}).get("events_per_s"), 0),
        ("asgi-ws", "ws echo msg/s", lambda e: (e.get("run") or {}).get("messages_per_s"), 0),
        ("asgi-cold", "start FastAPI ms",
         lambda e: ((e.get("apps") or {}).get("fastapi") or {}).get("median_ms"), 0),
    ]
    summary = [c for c in summary if c[0] in R]
    if summary:
        add("### Summary (ASGI)")
        add("")
        add("One figure per scenario; in parentheses coldbrew's figure divided by that server's (for the CPU cost "
            "and the start-up time, below 1 is coldbrew's advantage).")
        add("")
        rows = []
        cb_vals = []
        for sc, _, fn, _ in summary:
            e = R[sc].get("coldbrew")
            try:
                cb_vals.append(fn(e) if e and "error" not in e else None)
            except (AttributeError, TypeError):
                cb_vals.append(None)
        for s in servers:
            cells = [SERVER_LABELS[s]]
            for (sc, _, fn, digits), cb in zip(summary, cb_vals):
                e = R[sc].get(s)
                if e is None:
                    cells.append("")
                    continue
                if "error" in e:
                    cells.append("failed")
                    continue
                try:
                    v = fn(e)
                except (AttributeError, TypeError):
                    v = None
                cell = _num(v, digits)
                if s != "coldbrew" and v is not None and cb is not None:
                    cell += f" ({_cb_ratio(cb, v)})"
                cells.append(cell)
            rows.append(cells)
        add(_table(["server"] + [c[1] for c in summary], rows, text_last=False))
        add("")

    if "asgi-hello" in R:
        add("### hello (ASGI)")
        add("")
        add("A 13-byte `text/plain` response from a raw ASGI app ([apps/asgi_hello.py](../bench/apps/asgi_hello.py)), "
            "64 keep-alive connections. Idle RSS is the whole process tree's, one second after start-up.")
        add("")
        add(_asgi_table(results, "asgi-hello", lambda e: dict(e.get("run") or {}, _idle=e.get("idle_rss_mib"),
                                                               _procs=e.get("processes")),
                        (("processes", lambda r: str(r.get("_procs") or "–")),
                         ("idle RSS MiB", lambda r: _num(r.get("_idle"), 1))) + WRK_COLS, _ok_rps))
        add("")

    for key, title, desc in (
        ("asgi-fastapi", "FastAPI JSON", "`GET /json` on a FastAPI app, an `async def` path operation returning a "
                                         "small dict, no response model ([apps/asgi_fastapi.py](../bench/apps/asgi_fastapi.py)), "
                                         "64 connections."),
        ("asgi-starlette", "Starlette JSON", "`GET /json` on a Starlette app returning the same document through "
                                             "`JSONResponse` ([apps/asgi_starlette.py](../bench/apps/asgi_starlette.py)), "
                                             "64 connections."),
        ("asgi-echo", "64 KiB POST echo (ASGI)", "Each request POSTs 64 KiB, which a raw ASGI app reads through "
                                                 "`receive()` to the last `http.request` and sends back with a "
                                                 "Content-Length ([apps/asgi_echo.py](../bench/apps/asgi_echo.py)), "
                                                 "64 connections."),
    ):
        if key in R:
            add(f"### {title}")
            add("")
            add(desc)
            add("")
            add(_asgi_table(results, key, lambda e: e.get("run"), WRK_COLS, _ok_rps))
            add("")

    if "asgi-stream" in R:
        add("### 1 MiB streamed response")
        add("")
        add("A raw ASGI app sends 1 MiB as 16 `http.response.body` messages of 64 KiB with `more_body`, and no "
            "Content-Length, so it goes out chunked ([apps/asgi_stream.py](../bench/apps/asgi_stream.py)); "
            "16 connections. MiB/s counts every byte wrk read.")
        add("")
        add(_asgi_table(results, "asgi-stream", lambda e: e.get("run"),
                        WRK_COLS[:3] + (("MiB/s", lambda r: _num(r.get("mib_per_s"))),) + WRK_COLS[3:], _ok_rps))
        add("")

    if "asgi-sse" in R:
        add("### Server-sent events")
        add("")
        add(f"{SSE_CONNECTIONS} clients each hold a `text/event-stream` open "
            "([apps/asgi_sse.py](../bench/apps/asgi_sse.py)); every event is one body message, "
            "`data: <timestamp>` and a blank line. The client counts the `data:` lines of complete events over "
            f"the measured {opts.get('duration')} s (after {opts.get('warmup')} s of streaming). Each run starts a "
            "fresh server. Server CPU is the user and system time of the server's process tree over the window, "
            "as a percentage of one CPU.")
        add("")
        add(f"**Paced**: each stream is due an event every {SSE_INTERVAL * 1000:.0f} ms "
            f"({SSE_CONNECTIONS / SSE_INTERVAL:,.0f} events/s in all). A server that keeps up delivers them all, "
            "so the rate says little; what differs is how late the events arrive (lag: arrival time minus the "
            "timestamp the app wrote, on the clock the two processes share) and how much CPU the server spends "
            "per event. The ratio here is of CPU per event: below 1, coldbrew spent less.")
        add("")
        add(_asgi_table(results, "asgi-sse", lambda e: (e.get("runs") or {}).get("paced"), (
            ("events/s", lambda r: _num(r.get("events_per_s"))),
            ("% of target", lambda r: _num(r.get("pct_of_target"), 1)),
            ("lag p50 ms", lambda r: _ms(r.get("lag_p50_ms"))),
            ("lag p99 ms", lambda r: _ms(r.get("lag_p99_ms"))),
            ("server CPU %", lambda r: _pct(r.get("server_cpu_pct"))),
            ("server CPU µs/event", lambda r: _num(_cpu_us_per_event(r, "events_per_s"), 1)),
            ("client CPU %", lambda r: _pct(r.get("client_cpu_pct"))),
            ("peak RSS MiB", lambda r: _num(r.get("peak_rss_mib"), 1)),
        ), lambda r: _cpu_us_per_event(r, "events_per_s")))
        add("")
        add("**Flood**: each stream sends its next event as soon as `send()` returns and the app has yielded "
            "to the event loop once (`await asyncio.sleep(0)`, so that the streams take turns: a loop of sends "
            "alone need not yield, and would starve the other streams). This is the most events per second a "
            "server delivers; the slowest and fastest streams' counts show whether they shared fairly. The "
            "ratio is of events/s.")
        add("")
        add(_asgi_table(results, "asgi-sse", lambda e: (e.get("runs") or {}).get("flood"), (
            ("events/s", lambda r: _num(r.get("events_per_s"))),
            ("slowest / fastest stream", lambda r: f"{_num(r.get('per_stream_min'))} / {_num(r.get('per_stream_max'))}"),
            ("server CPU %", lambda r: _pct(r.get("server_cpu_pct"))),
            ("client CPU %", lambda r: _pct(r.get("client_cpu_pct"))),
            ("peak RSS MiB", lambda r: _num(r.get("peak_rss_mib"), 1)),
        ), lambda r: r.get("events_per_s")))
        add("")

    if "asgi-ws" in R:
        add("### WebSocket echo")
        add("")
        add(f"{WS_CONNECTIONS} websockets ([apps/asgi_echo_ws.py](../bench/apps/asgi_echo_ws.py), no extension "
            "negotiated), each sending a 16-byte text message and waiting for its echo before the next; messages/s "
            "counts echoes over the measured window, p50/p99 are round trips. The client is Python "
            "([asgi_clients.py](../bench/asgi_clients.py)) on the load CPU: where its CPU nears 100 % it, not the "
            "server, set the rate, and the ratio then understates the faster server.")
        add("")
        add(_asgi_table(results, "asgi-ws", lambda e: e.get("run"), (
            ("messages/s", lambda r: _num(r.get("messages_per_s"))),
            ("p50 ms", lambda r: _ms(r.get("p50_ms"))),
            ("p99 ms", lambda r: _ms(r.get("p99_ms"))),
            ("server CPU %", lambda r: _pct(r.get("server_cpu_pct"))),
            ("client CPU %", lambda r: _pct(r.get("client_cpu_pct"))),
            ("peak RSS MiB", lambda r: _num(r.get("peak_rss_mib"), 1)),
        ), lambda r: r.get("messages_per_s")))
        add("")

    if "asgi-cold" in R:
        add("### Cold start (ASGI)")
        add("")
        add(f"Spawn → first `200` on `GET /`, median of {opts.get('cold_runs')} starts after one unmeasured start, "
            "for the raw hello app and the FastAPI app; the floor is `python -c \"import MODULE\"` with the same "
            "interpreter, as for WSGI. The ratio divides coldbrew's FastAPI time by the server's: below 1, coldbrew "
            "answered sooner.")
        add("")
        labels = [label for label, _ in COLD_ASGI_APPS]
        cb_fast = ((((R["asgi-cold"].get("coldbrew") or {}).get("apps") or {}).get("fastapi")) or {}).get("median_ms")
        rows, floors = [], {}
        for s in servers:
            e = R["asgi-cold"].get(s)
            if e is None:
                continue
            if "error" in e:
                rows.append([SERVER_LABELS[s], f"failed: {_short(e['error'], 100)}"] + [""] * 4)
                continue
            apps = e.get("apps") or {}
            cells = [SERVER_LABELS[s]]
            for label in labels:
                a = apps.get(label, {})
                cells.append(_num(a.get("median_ms"), 0) if "error" not in a else "failed")
                if "import_floor_ms" in a:
                    floors.setdefault(label, []).append(a["import_floor_ms"])
            for label in labels:
                a = apps.get(label, {})
                cells.append(_num(a.get("over_floor_ms"), 0) if "error" not in a else "–")
            cells.append(_cb_ratio(cb_fast, (apps.get("fastapi") or {}).get("median_ms")))
            rows.append(cells)
        if floors:
            rows.append(["*import floor*"] + [_num(statistics.median(floors[x]), 0) if x in floors else "–"
                                              for x in labels] + ["", "", ""])
        add(_table(["server", "hello ms", "FastAPI ms", "hello over floor", "FastAPI over floor",
                    "coldbrew ÷ server (FastAPI)"], rows, text_last=False))
        errs = [(s, label, a["error"]) for s in servers for label, a in
                (R["asgi-cold"].get(s, {}).get("apps") or {}).items() if "error" in a]
        for s, label, err in errs:
            add("")
            add(f"- {SERVER_LABELS[s]}, {label}: {_short(err, 300)}")
        add("")

    add("### Methodology (ASGI)")
    add("")
    add(f"- **Command:** `{results.get('command', 'bash bench/run.sh')}`; total run time "
        f"{_num(results.get('elapsed_s', 0) / 60, 1)} min.")
    pin = env.get("pinning") or {}
    if pin.get("server_cpu") is not None:
        add(f"- **Pinning:** every server runs under `taskset -c {pin['server_cpu']}`; wrk, the ASGI load client "
            f"and the runner under `taskset -c {pin['load_cpu']}`.")
    else:
        add("- **Pinning:** none (fewer than two CPUs available).")
    add(f"- **Durations:** wrk runs as for WSGI ({opts.get('duration')} s measured after a {opts.get('warmup')} s "
        f"warm-up run); the websocket and SSE clients open their connections, run {opts.get('warmup')} s "
        f"unmeasured, then measure {opts.get('duration')} s.")
    ce = env.get("client_env") or {}
    loop = f"uvloop {ce['uvloop']}" if ce.get("uvloop") else "asyncio's own loop"
    add(f"- **The Python load client** ([asgi_clients.py](../bench/asgi_clients.py); Python {ce.get('python', '?')}, "
        f"{loop}) uses asyncio protocols: one callback per read, frames built once per connection, `data:` "
        "lines counted with `bytes.count` (a paced stream's timestamps parsed with one regular expression per "
        "read). It is still one Python process on one CPU: its CPU share is in the tables, and where it nears "
        "100 % the client was the limit.")
    add("- **Peak RSS** is sampled every 50 ms over the server's whole process tree (granian's and hypercorn's "
        "supervisor included), during the measured wrk run or the whole client run.")
    add("")
    add("| component | version |")
    add("|---|---|")
    ce2, pe = env.get("coldbrew_env") or {}, env.get("peers_env") or {}
    if "coldbrew" in servers:
        add(f"| coldbrew | {ce2.get('coldbrew', '–')} (commit `{(env.get('coldbrew_commit') or '?')[:12]}`"
            f"{', dirty tree' if env.get('coldbrew_tree_dirty') else ''}) |")
    for name in ("granian", "uvicorn", "hypercorn"):
        if name in servers:
            add(f"| {name} | {pe.get(name) or '–'} |")
    for name, label in (("httptools", "httptools (uvicorn)"), ("uvloop", "uvloop (servers)"),
                        ("websockets", "websockets (uvicorn)"), ("fastapi", "FastAPI"),
                        ("starlette", "Starlette"), ("pydantic", "pydantic")):
        vals = []
        if "coldbrew" in servers and ce2.get(name) and name not in ("httptools", "websockets"):
            vals.append(f"{ce2[name]} (coldbrew's env)")
        if any(s != "coldbrew" for s in servers) and pe.get(name):
            vals.append(f"{pe[name]} (peers' env)")
        if vals:
            add(f"| {label} | {', '.join(vals)} |")
    add(f"| Python | {ce2.get('python') or pe.get('python') or '–'} |")
    add(f"| wrk | {env.get('wrk') or '–'} |")
    add("")
    add("Server command lines (`P` is a free port, `MODULE` one of the `asgi_*` apps in `bench/apps/`):")
    add("")
    add("```")
    for s in servers:
        argv = (results.get("asgi_commands") or {}).get(s)
        if argv:
            add(argv)
    add("```")
    add("")
    add("Raw figures, including every error count and the client's own figures: `bench/results/latest.json`.")
    add("")
    return "\n".join(md)


def render_docs(results, docs_dir=DOCS):
    docs_dir.mkdir(parents=True, exist_ok=True)
    svg = render_svg(results)
    svg_name = None
    if svg:
        svg_name = "benchmarks-hello.svg"
        (docs_dir / svg_name).write_text(svg)
    page = docs_dir / "benchmarks.md"
    existing = page.read_text() if page.exists() else None
    page.write_text(render_markdown(results, svg_name, existing))


# --------------------------------------------------------------------------------------
# Main


class Config:
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(description="Benchmark coldbrew beside its peers (see bench/README.md).")
    p.add_argument("--servers", default=",".join(ALL_SERVERS),
                   help=f"comma-separated, from {','.join(ALL_SERVERS)} (default: all)")
    p.add_argument("--scenarios", default="all",
                   help=f"comma-separated, from {','.join(ALL_SCENARIOS)}, or the groups wsgi, asgi and all "
                        "(default: all; 'memory' is part of hello)")
    p.add_argument("--asgi", action="store_true", help="the ASGI scenarios only: --scenarios asgi")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (default 10)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up before each measurement (default 3)")
    p.add_argument("--cold-runs", type=int, default=None, help="measured starts per app for cold start (default 5)")
    p.add_argument("--quick", action="store_true", help="1 s runs, short warm-ups, 2 cold starts: a smoke test")
    p.add_argument("--no-setup", action="store_true", help="accepted for run.sh's sake: run.py never installs anything")
    p.add_argument("--coldbrew-python", default=str(BENCH / ".venv-coldbrew" / "bin" / "python"),
                   help="interpreter whose environment has coldbrew (default bench/.venv-coldbrew)")
    p.add_argument("--peers-python", default=str(BENCH / ".venv-peers" / "bin" / "python"),
                   help="interpreter whose environment has the peers (default bench/.venv-peers)")
    p.add_argument("--client-python", default=None,
                   help="interpreter for the ASGI websocket and SSE load clients (default: the peers', else "
                        "coldbrew's, else this one; uvloop is used when it has it)")
    p.add_argument("--out", default=str(BENCH / "results"), help="directory for the JSON results")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md and the SVG")
    p.add_argument("--render", metavar="JSON", help="only render docs/ from an existing results file")
    a = p.parse_args(argv)

    cfg = Config()
    cfg.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in cfg.servers if s not in ALL_SERVERS]
    if bad:
        p.error(f"unknown server(s): {', '.join(bad)}; choose from {', '.join(ALL_SERVERS)}")
    scen = []
    names = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    if a.asgi:
        if a.scenarios != "all":
            p.error("--asgi selects the ASGI scenarios: give it or --scenarios, not both")
        names = ["asgi"]
    for s in names:
        s = SCENARIO_ALIASES.get(s, s)
        group = SCENARIO_GROUPS.get(s, [s])
        for g in group:
            if g not in ALL_SCENARIOS:
                p.error(f"unknown scenario: {g}; choose from {', '.join(ALL_SCENARIOS)} "
                        f"or {', '.join(SCENARIO_GROUPS)}")
            if g not in scen:
                scen.append(g)
    cfg.scenarios = [s for s in ALL_SCENARIOS if s in scen]
    cfg.quick = a.quick
    cfg.duration = 1.0 if a.quick else a.duration
    cfg.warmup = a.warmup if a.warmup is not None else (0.5 if a.quick else 3.0)
    cfg.cold_runs = a.cold_runs if a.cold_runs is not None else (2 if a.quick else 5)
    cfg.coldbrew_python = os.path.abspath(a.coldbrew_python) if os.sep in a.coldbrew_python else \
        (shutil.which(a.coldbrew_python) or a.coldbrew_python)
    cfg.peers_python = os.path.abspath(a.peers_python) if os.sep in a.peers_python else \
        (shutil.which(a.peers_python) or a.peers_python)
    if a.client_python:
        cfg.client_python = shutil.which(a.client_python) or os.path.abspath(a.client_python)
    else:
        cfg.client_python = next((py for py in (cfg.peers_python, cfg.coldbrew_python)
                                  if os.access(py, os.X_OK)), sys.executable)
    cfg.out = Path(a.out)
    cfg.no_docs = a.no_docs
    cfg.render = a.render
    cfg.argv = argv
    return cfg


def setup_pinning(cfg):
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = []
    if len(cpus) >= 2 and shutil.which("taskset"):
        cfg.server_cpu, cfg.load_cpu = cpus[0], cpus[1]
        cfg.pin_server = ["taskset", "-c", str(cfg.server_cpu)]
        cfg.pin_load = ["taskset", "-c", str(cfg.load_cpu)]
        os.sched_setaffinity(0, {cfg.load_cpu})  # this runner polls and samples from the load CPU
    else:
        cfg.server_cpu = cfg.load_cpu = None
        cfg.pin_server = cfg.pin_load = []


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summarize(scenario, entry):
    if "error" in entry:
        return "ERROR " + _short(entry["error"], 200)
    if scenario == "hello":
        return ", ".join(f"{c} {_num(r.get('ok_rps'))} req/s p99 {_ms(r.get('p99_ms'))} ms"
                         for c, r in entry["runs"].items()) + f"; idle RSS {entry['idle_rss_mib']} MiB"
    if scenario in ("flask", "django", "large", "echo", "flask-service", "django-service"):
        r = entry["run"]
        return f"{_num(r['ok_rps'])} req/s p99 {_ms(r['p99_ms'])} ms" + (f" [{_errors_note(r)}]" if _errors_note(r) else "")
    if scenario == "blocking":
        return ", ".join(f"{k} " + (f"{_num(r['ok_rps'])} req/s ({r['pct_of_bound']}% of bound)" if "error" not in r
                                    else "ERROR " + _short(r["error"], 100)) for k, r in entry["runs"].items())
    if scenario == "slow":
        return (f"alone {_num(entry['without']['ok_rps'])} req/s, with slow clients "
                f"{_num(entry['with']['ok_rps'])} req/s p99 {_ms(entry['with']['p99_ms'])} ms")
    if scenario in ("cold", "asgi-cold"):
        return ", ".join(f"{k} {a.get('median_ms', 'ERR')} ms" for k, a in entry["apps"].items())
    if scenario == "io-mix":
        r = entry["run"]
        f, i = r.get("fast") or {}, r.get("io") or {}
        note = _mix_errors(r)
        return (f"{_num(r['ok_rps'])} req/s; fast p50 {_ms(f.get('p50_ms'))} p99 {_ms(f.get('p99_ms'))} ms "
                f"(p99/p50 {_num(r.get('fast_p99_over_p50'), 1)}); io p50 {_ms(i.get('p50_ms'))} "
                f"p99 {_ms(i.get('p99_ms'))} ms; client CPU {r.get('client_cpu_pct')}%" + (f" [{note}]" if note else ""))
    if scenario in ("asgi-hello", "asgi-fastapi", "asgi-starlette", "asgi-echo", "asgi-stream"):
        r = entry["run"]
        note = _errors_note(r)
        mib = f", {_num(r['mib_per_s'])} MiB/s" if scenario == "asgi-stream" else ""
        return f"{_num(r['ok_rps'])} req/s{mib} p99 {_ms(r['p99_ms'])} ms" + (f" [{note}]" if note else "")
    if scenario == "asgi-sse":
        parts = []
        for k, r in entry["runs"].items():
            if "error" in r:
                parts.append(f"{k} ERROR {_short(r['error'], 100)}")
                continue
            lag = f", lag p99 {_ms(r.get('lag_p99_ms'))} ms" if "lag_p99_ms" in r else ""
            parts.append(f"{k} {_num(r['events_per_s'])} events/s{lag}, server CPU {r.get('server_cpu_pct')}%, "
                         f"client CPU {r.get('client_cpu_pct')}%")
        return "; ".join(parts)
    if scenario == "asgi-ws":
        r = entry["run"]
        return (f"{_num(r['messages_per_s'])} msg/s p99 {_ms(r.get('p99_ms'))} ms, server CPU "
                f"{r.get('server_cpu_pct')}%, client CPU {r.get('client_cpu_pct')}%")
    return ""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    if cfg.render:
        results = json.loads(Path(cfg.render).read_text())
        render_docs(results)
        log(f"rendered {DOCS / 'benchmarks.md'} from {cfg.render}")
        return 0
    if not shutil.which("wrk"):
        print("run.py: wrk not found: install it (apt-get install wrk) or run bash bench/run.sh", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    setup_pinning(cfg)
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results = {
        "format": 1,
        "command": "bash bench/run.sh" + ("" if not argv else " " + " ".join(argv)),
        "servers": cfg.servers,
        "scenarios": cfg.scenarios,
        "options": {"duration": cfg.duration, "warmup": cfg.warmup, "cold_runs": cfg.cold_runs, "quick": cfg.quick},
        "commands": {s: display_command(s, cfg) for s in cfg.servers if s in WSGI_SERVERS},
        "asgi_commands": {s: display_command(s, cfg, "asgi") for s in cfg.servers if s in ASGI_SERVERS},
        "results": {},
        "interrupted": False,
    }
    status = 0
    try:
        log("collecting versions")
        results["environment"] = environment(cfg)
        for scenario in cfg.scenarios:
            servers = scenario_servers(scenario, cfg.servers)
            if not servers:
                log(f"{scenario}: none of the chosen servers runs {scenario_interface(scenario).upper()}; skipped")
                continue
            results["results"][scenario] = {}
            for name in servers:
                log(f"{scenario} / {name}")
                t0 = time.monotonic()
                try:
                    entry = SCENARIO_FUNCS[scenario](name, cfg)
                except BenchError as e:
                    entry = {"error": str(e)}
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # a broken scenario is recorded, never fatal
                    entry = {"error": f"{type(e).__name__}: {e}"}
                entry["elapsed_s"] = round(time.monotonic() - t0, 1)
                results["results"][scenario][name] = entry
                log(f"  {summarize(scenario, entry)}")
    except KeyboardInterrupt:
        results["interrupted"] = True
        status = 130
        log("interrupted: stopping every process this run started")
    finally:
        CHILDREN.kill_all()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results.setdefault("environment", {})["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    cfg.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    path = cfg.out / f"{stamp}.json"
    tmp = cfg.out / f"{stamp}.json.tmp"
    tmp.write_text(text)
    tmp.replace(path)
    log(f"results: {path} ({results['elapsed_s']:.0f} s)")
    if results["interrupted"]:
        log("interrupted: latest.json and docs/ left as they were")
        return status
    (cfg.out / "latest.json").write_text(text)
    if not cfg.no_docs:
        render_docs(results)
        log(f"wrote {DOCS / 'benchmarks.md'} and {DOCS / 'benchmarks-hello.svg'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
