"""Startup: warm-up before the port opens, the startup report, and the worker count taken from
the container's limits, all through real server processes."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import APPS, Server, free_port, wait_for_port
from test_container_sizing import v1_cgroup, v1_cpu_mount  # noqa: F401  (fixture)
from test_supervisor import children, wait_until

REPORT = re.compile(
    r"coldbrew \S+ serving (?:WSGI )?app (?P<app>\S+)(?: \(auto: a plain callable\))? on http://(?P<addr>\S+) "
    r"with (?P<workers>\d+) worker\(s\) "
    r"x (?P<threads>\d+) thread\(s\)(?: if WSGI, one event loop if ASGI)? \((?P<why>[^)]*)\); (?P<memory>[^;]+); "
    r"import (?P<import>\d+) ms, warm-up (?P<warmup>\d+) ms, port open (?P<open>\d+) ms after coldbrew started"
)


def report(server):
    """The startup report's fields; the server must have stopped."""
    found = [m for m in map(REPORT.search, server.stderr.splitlines()) if m]
    assert len(found) == 1, server.stderr
    return found[0].groupdict()


def wait_open(server, timeout=30.0):
    """Polls the port; returns once it accepts. Fails if the server exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.stop()
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)
    raise AssertionError("port never opened")


def marks(state, name):
    """{pid: [times]} for one warm-up mark."""
    found = {}
    for path in state.glob(f"{name}.*"):
        found[int(path.name.rsplit(".", 1)[1])] = [float(t) for t in path.read_text().split()]
    return found


# --------------------------------------------------------------------------------------
# Warm-up
# --------------------------------------------------------------------------------------


def test_warmup_functions_run_in_parallel_before_the_port_opens(tmp_path):
    server = Server("warm_apps:app", "--warmup", "warm_apps:cache", "--warmup", "warm_apps:connections",
                    env={"WARM_STATE_DIR": str(tmp_path)})
    try:
        wait_open(server)
        ends = {name: marks(tmp_path, f"{name}.end") for name in ("cache", "connections")}
        assert all(ends.values()), f"the port opened before every warm-up ended: {ends}"
        starts = [t for name in ("cache", "connections") for ts in marks(tmp_path, f"{name}.start").values() for t in ts]
        first_end = min(t for by_pid in ends.values() for ts in by_pid.values() for t in ts)
        assert max(starts) < first_end, "the warm-ups ran one after the other, not in parallel"
    finally:
        assert server.stop() == 0, server.stderr
    fields = report(server)
    assert int(fields["warmup"]) >= 1000, fields
    assert "warm-up (2 function(s)) took" in server.stderr


def test_warmup_runs_in_every_worker(tmp_path):
    server = Server("warm_apps:app", "--workers", "2", "--warmup", "warm_apps:cache",
                    env={"WARM_STATE_DIR": str(tmp_path)})
    try:
        wait_open(server)
        workers = children(server.proc.pid)
        assert sorted(marks(tmp_path, "cache.end")) == workers
    finally:
        assert server.stop() == 0, server.stderr
    assert report(server)["workers"] == "2"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_failing_warmup_stops_startup(tmp_path, workers):
    server = Server("warm_apps:app", "--workers", workers, "--warmup", "warm_apps:broken",
                    env={"WARM_STATE_DIR": str(tmp_path)})
    opened = False
    while server.proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            opened = True
        except OSError:
            time.sleep(0.01)
    code = server.stop()
    assert code == 3, server.stderr
    assert not opened, "the port opened although the warm-up failed"
    assert "RuntimeError: the cache server is unreachable" in server.stderr
    last = server.stderr.strip().splitlines()[-1]
    assert last.startswith("coldbrew: error: ")
    assert "--warmup warm_apps:broken raised RuntimeError: the cache server is unreachable" in last, last


# --------------------------------------------------------------------------------------
# The startup report and the worker count
# --------------------------------------------------------------------------------------


def test_single_process_report(tmp_path):
    server = Server("warm_apps:app", "--threads", "3", env={"WARM_STATE_DIR": str(tmp_path)})
    wait_open(server)
    assert children(server.proc.pid) == [], "one worker is one process"
    assert server.stop() == 0
    fields = report(server)
    assert fields["app"] == "warm_apps:app"
    assert fields["addr"] == f"127.0.0.1:{server.port}"
    assert (fields["workers"], fields["threads"], fields["why"]) == ("1", "3", "WEB_CONCURRENCY=1")
    assert fields["warmup"] == "0"


def test_workers_from_a_made_up_cgroup_v2_tree(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "cpu.max").write_text("150000 100000\n")
    (root / "memory.max").write_text(f"{512 * 1024 * 1024}\n")
    server = Server("warm_apps:app", "--cgroup-root", str(root),
                    env={"WARM_STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": None})
    wait_open(server)
    assert len(children(server.proc.pid)) == 2
    assert server.stop() == 0, server.stderr
    fields = report(server)
    assert (fields["workers"], fields["why"], fields["memory"]) == ("2", "cgroup v2 quota 1.5 CPU", "memory limit 512 MiB")


def test_workers_from_a_made_up_cgroup_v1_tree(tmp_path):
    root = tmp_path / "cgroup"
    for controller, files in {
        "cpu": {"cpu.cfs_quota_us": "300000", "cpu.cfs_period_us": "100000"},
        "memory": {"memory.limit_in_bytes": str(1024**3)},
    }.items():
        (root / controller).mkdir(parents=True)
        for name, text in files.items():
            (root / controller / name).write_text(text + "\n")
    server = Server("warm_apps:app", "--cgroup-root", str(root),
                    env={"WARM_STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": None})
    wait_open(server)
    assert len(children(server.proc.pid)) == 3
    assert server.stop() == 0, server.stderr
    fields = report(server)
    assert (fields["workers"], fields["why"], fields["memory"]) == ("3", "cgroup v1 quota 3 CPU", "memory limit 1.0 GiB")


def test_workers_from_cpu_affinity(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    if len(os.sched_getaffinity(0)) == 1:
        pytest.skip("this process already runs on one CPU; taskset cannot narrow it")
    server = Server("warm_apps:app", "--cgroup-root", str(tmp_path / "none"),
                    env={"WARM_STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": None},
                    prefix=("taskset", "-c", str(cpu)))
    wait_open(server)
    assert children(server.proc.pid) == []
    assert server.stop() == 0, server.stderr
    fields = report(server)
    assert (fields["workers"], fields["why"]) == ("1", "CPU affinity 1")


def test_workers_from_a_real_cgroup_v1_quota(tmp_path, v1_cgroup):  # noqa: F811
    group = v1_cgroup(f"coldbrew-server-{os.getpid()}", 200000)
    server = Server("warm_apps:app", env={"WARM_STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": None},
                    prefix=("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)))
    try:
        wait_open(server)
        assert len(children(server.proc.pid)) == 2
        cgroup = Path(f"/proc/{server.proc.pid}/cgroup").read_text()
        assert f":/{group.name}\n" in cgroup, cgroup
    finally:
        assert server.stop() == 0, server.stderr
    fields = report(server)
    assert (fields["workers"], fields["why"]) == ("2", "cgroup v1 quota 2 CPU")


# --------------------------------------------------------------------------------------
# What "port open N ms after coldbrew started" counts
# --------------------------------------------------------------------------------------

SLEEP = 3


def proc_age(pid):
    """Seconds since the process was forked, as /proc says."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_open_time_leaves_out_what_ran_before_the_exec(tmp_path, workers):
    """A start-up script that works for a while, then `exec`s coldbrew, as docs/deployment.md
    recommends: the same process, so /proc dates it from before the script's work."""
    port = free_port()
    script = tmp_path / "start.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"sleep {SLEEP}\n"
        f'exec "{sys.executable}" -m coldbrew --bind 127.0.0.1:{port} --workers {workers} warm_apps:app\n'
    )
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)], cwd=str(APPS), env={**os.environ, "WARM_STATE_DIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc, timeout=SLEEP + 30)
        # The scene is the one the figure must see through: coldbrew is the script's process.
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"coldbrew"]
        assert proc_age(proc.pid) >= SLEEP
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    [fields] = [m.groupdict() for m in map(REPORT.search, err.splitlines()) if m]
    assert fields["workers"] == workers
    opened = int(fields["open"])
    assert opened < SLEEP * 1000, f"the port-open time counts the script's {SLEEP} s sleep: {opened} ms"
    # It still covers coldbrew's own start: the app's import happened within it.
    assert opened >= int(fields["import"]), fields


# --------------------------------------------------------------------------------------
# Failures at startup: one line, one traceback, whatever the worker count
# --------------------------------------------------------------------------------------


def run_server(*args, cwd=APPS, env=None, port=None):
    port = port or free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "coldbrew", "--bind", f"127.0.0.1:{port}", *args],
                          cwd=str(cwd), env=full_env, capture_output=True, text=True, timeout=60)


def worker_prefix_removed(line):
    return re.sub(r"^coldbrew: error: worker \d+ \(pid \d+\) could not start: ", "coldbrew: error: ", line)


@pytest.mark.parametrize("workers", ["1", "3"])
def test_a_failing_import_is_one_traceback_and_one_line(workers):
    result = run_server("--workers", workers, "cli_broken:app")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert lines.count("Traceback (most recent call last):") == 1, result.stderr
    assert lines[0] == "Traceback (most recent call last):", result.stderr
    errors = [line for line in lines if line.startswith("coldbrew: ")]
    assert errors == [lines[-1]], result.stderr
    assert lines[-2] == "ZeroDivisionError: division by zero"
    # Apart from naming the worker, exactly what a single process prints.
    single = run_server("--workers", "1", "cli_broken:app")
    assert single.stderr.splitlines()[-1] == (
        "coldbrew: error: cannot import module 'cli_broken': ZeroDivisionError: division by zero"
    )
    assert lines[:-1] + [worker_prefix_removed(lines[-1])] == single.stderr.splitlines()


@contextlib.contextmanager
def taken_port():
    """A port on 127.0.0.1 that a listening socket holds for the duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def write_marking_app(directory):
    """marking_app.py in `directory`: its import appends the importing pid to $IMPORT_MARKER."""
    (directory / "marking_app.py").write_text(
        "import os\n"
        "with open(os.environ['IMPORT_MARKER'], 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'']\n"
    )


@pytest.mark.parametrize("workers", ["1", "3"])
def test_a_metrics_port_in_use_is_found_before_the_app_is_imported(tmp_path, workers):
    marker = tmp_path / "imported"
    write_marking_app(tmp_path)
    with taken_port() as port:
        result = run_server("--workers", workers, "--metrics-bind", f"127.0.0.1:{port}", "marking_app:app",
                            cwd=tmp_path, env={"IMPORT_MARKER": str(marker)})
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"coldbrew: error: cannot listen for metrics on 127.0.0.1:{port}: Address already in use\n"
    assert not marker.exists()


@pytest.mark.parametrize("workers", ["1", "3"])
@pytest.mark.parametrize("spec, what", [
    ("cli_apps:asgi_app", "an async function"),
    ("cli_apps:asgi_instance", "its __call__ is a coroutine function"),
])
def test_an_asgi_app_is_served_and_the_startup_line_says_why(workers, spec, what, serve):
    server = serve(spec, "--workers", workers)
    server.stop()
    if workers == "1":
        assert f"serving ASGI app {spec} (auto: {what}) on http://" in server.stderr, server.stderr
        assert "one event loop (--threads has no use for ASGI)" in server.stderr, server.stderr
    else:
        # The supervisor did not import the app; every worker did, and served it over ASGI.
        assert f"serving app {spec} on http://" in server.stderr, server.stderr
        assert "thread(s) if WSGI, one event loop if ASGI" in server.stderr, server.stderr
        assert server.stderr.count("the app returned from the lifespan scope") == 3, server.stderr


@pytest.mark.parametrize("args", [("--workers", "1"), ("--workers", "3"), ("--workers", "3", "--preload")],
                         ids=["one worker", "three workers", "three workers preloaded"])
def test_a_port_in_use_is_found_before_the_app_is_imported(tmp_path, args):
    marker = tmp_path / "imported"
    write_marking_app(tmp_path)
    with taken_port() as port:
        result = run_server(*args, "marking_app:app", cwd=tmp_path, port=port,
                            env={"IMPORT_MARKER": str(marker)})
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"coldbrew: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not marker.exists(), f"the app was imported first, by {marker.read_text().split()}"
    # The same app does load where the port is free: the marker is not just never written.
    free = run_server(*args, "marking_app:app", "--warmup", "marking_app:no_such_function", cwd=tmp_path,
                      env={"IMPORT_MARKER": str(marker)})
    assert free.returncode == 3 and marker.exists(), free.stderr


# --------------------------------------------------------------------------------------
# The container's limits are read once per start
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("--workers", "1"), ("--workers", "2")],
                         ids=["sized from the cgroup", "one worker", "two workers"])
def test_the_container_is_probed_once(tmp_path, args):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "cpu.max").write_text("200000 100000\n")
    (root / "memory.max").write_text(f"{384 * 1024 * 1024}\n")
    server = Server("warm_apps:app", "--log-level", "debug", "--cgroup-root", str(root), *args,
                    env={"WARM_STATE_DIR": str(tmp_path), "WEB_CONCURRENCY": None})
    wait_open(server)
    assert server.stop() == 0, server.stderr
    probes = [line for line in server.stderr.splitlines() if "container probed: " in line]
    assert len(probes) == 1, server.stderr
    assert "cgroup v2, CPU quota 2 (cgroup v2 cpu.max), memory limit 402653184 bytes" in probes[0]
    fields = report(server)
    assert fields["memory"] == "memory limit 384 MiB"
    assert fields["workers"] == (args[1] if args else "2")


def test_workers_ready_when_another_fails_exit_at_once(tmp_path):
    """The ready workers were blocked waiting for "go", deaf to SIGTERM, until the KILL deadline:
    8 s of --graceful-timeout and 1.5 s more, with a "did not stop in time" warning each."""
    (tmp_path / "one_fails.py").write_text(
        "import os, time\n"
        "try:\n"
        "    os.close(os.open(os.path.join(os.environ['CLAIM_DIR'], 'claimed'), os.O_CREAT | os.O_EXCL))\n"
        "except FileExistsError:\n"
        "    pass\n"
        "else:\n"
        "    time.sleep(1)  # the others are ready by now\n"
        "    raise RuntimeError('only this worker fails')\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'']\n"
    )
    started = time.monotonic()
    result = run_server("--workers", "3", "one_fails:app", cwd=tmp_path, env={"CLAIM_DIR": str(tmp_path)})
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert lines.count("Traceback (most recent call last):") == 1, result.stderr
    assert [line for line in lines if line.startswith("coldbrew: ")] == [lines[-1]], result.stderr
    assert lines[-1].endswith("could not start: cannot import module 'one_fails': RuntimeError: only this worker fails")
    assert "did not stop in time" not in result.stderr
    assert elapsed < 6, f"took {elapsed:.1f} s: the ready workers waited for the KILL deadline"
