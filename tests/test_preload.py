"""--preload and --post-fork with several worker processes, on real processes.

- The memory --preload saves, measured by bench/preload_memory.py on the Django example: the
  process tree's total PSS is lower with it (a memory comparison; run with -s to see the table).
- --preload imports the app once, in the supervisor; without it every worker imports it.
- --post-fork runs in every worker after the fork, so it can replace what the preloaded app
  made in the supervisor (a client holding a connection, say).
- A --post-fork hook that raises stops the startup with exit status 3.
"""

import http.client
import importlib.util
import os
import re
import sys

import pytest

from conftest import ROOT

WORKERS = 4
APP = "preload_apps:app"


def _bench_module():
    spec = importlib.util.spec_from_file_location("preload_memory", ROOT / "bench" / "preload_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_module()


def fetch(server, path="/"):
    """One GET on its own connection (so that requests spread over the workers)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def pids_in(path):
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def start(serve, tmp_path, *args):
    env = {
        "PRELOAD_APPS_IMPORT_LOG": str(tmp_path / "imports.log"),
        "PRELOAD_APPS_HOOK_LOG": str(tmp_path / "hook.log"),
    }
    server = serve(APP, "--workers", str(WORKERS), *args, env=env)
    workers = bench.children(server.proc.pid)
    assert len(workers) == WORKERS, f"workers under {server.proc.pid}: {workers}"
    return server, set(workers)


def served_pids(server, count=40):
    """(worker pid, client pid) of `count` responses."""
    pairs = []
    for _ in range(count):
        status, body = fetch(server)
        assert status == 200, body
        worker, client = body.split()
        pairs.append((int(worker), int(client)))
    return pairs


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


def test_preload_lowers_the_process_trees_pss():
    pytest.importorskip("django")
    without = bench.measure(preload=False, workers=WORKERS, requests=300)
    with_preload = bench.measure(preload=True, workers=WORKERS, requests=300)
    print()
    print(bench.markdown([without, with_preload]))
    for result in (without, with_preload):
        assert [p["role"] for p in result["processes"]] == ["supervisor"] + ["worker"] * WORKERS
    assert with_preload["total_pss_kib"] < without["total_pss_kib"], bench.markdown([without, with_preload])


# --------------------------------------------------------------------------------------
# Where the app is imported
# --------------------------------------------------------------------------------------


def test_preload_imports_the_app_once_in_the_supervisor(serve, tmp_path):
    server, workers = start(serve, tmp_path, "--preload")
    assert pids_in(tmp_path / "imports.log") == [server.proc.pid]
    assert server.proc.pid not in workers


def test_without_preload_every_worker_imports_the_app(serve, tmp_path):
    server, workers = start(serve, tmp_path)
    imports = pids_in(tmp_path / "imports.log")
    assert len(imports) == WORKERS, imports
    assert set(imports) == workers, (imports, workers)
    assert server.proc.pid not in imports


# --------------------------------------------------------------------------------------
# --post-fork
# --------------------------------------------------------------------------------------


def test_preloaded_objects_belong_to_the_supervisor_without_a_hook(serve, tmp_path):
    # What the hook is for: the client the preloaded module made is the supervisor's.
    server, workers = start(serve, tmp_path, "--preload")
    for worker, client in served_pids(server):
        assert worker in workers
        assert client == server.proc.pid


def test_post_fork_hook_runs_in_every_worker_after_the_fork(serve, tmp_path):
    server, workers = start(serve, tmp_path, "--preload", "--post-fork", "preload_apps:reopen")
    assert pids_in(tmp_path / "imports.log") == [server.proc.pid]
    hooked = pids_in(tmp_path / "hook.log")
    assert sorted(hooked) == sorted(workers), (hooked, workers)
    for worker, client in served_pids(server):
        assert worker in workers
        assert client == worker, "the client was not made again in the worker"


HOOK_ERROR = ("--post-fork preload_apps:broken_hook raised RuntimeError: "
              "cannot reach the database (marker-5d1c)")


def start_broken(serve, preload):
    args = ["--workers", str(WORKERS), "--post-fork", "preload_apps:broken_hook"]
    server = serve(APP, *args, *(["--preload"] if preload else []), ready=False)
    out, err = server.proc.communicate(timeout=30)
    server.stdout += out
    server.stderr += err
    return server.proc.returncode, server.stderr.strip().splitlines()


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_failing_post_fork_hook_stops_startup_with_status_3(serve, preload):
    code, lines = start_broken(serve, preload)
    stderr = "\n".join(lines)
    assert code == 3, stderr
    assert lines and lines[-1].startswith("coldbrew: error: "), stderr
    # The first worker to fail names the hook and its exception, and the supervisor prints its
    # traceback once (not once per worker) before that last line.
    assert re.fullmatch(r"coldbrew: error: worker \d+ \(pid \d+\) could not start: " + re.escape(HOOK_ERROR),
                        lines[-1]), stderr
    assert [line for line in lines if line.startswith("coldbrew: error: ")] == [lines[-1]], stderr
    assert lines.count("Traceback (most recent call last):") == 1, stderr
    assert lines[-2] == "RuntimeError: cannot reach the database (marker-5d1c)", stderr


def test_failing_post_fork_hook_is_named_on_the_last_line(serve):
    code, lines = start_broken(serve, preload=True)
    assert code == 3
    assert "--post-fork preload_apps:broken_hook" in lines[-1], lines[-1]
