"""The benchmark harness (bench/run.py) works end to end, quickly.

Runs `bench/run.py --quick --no-setup --servers coldbrew --scenarios hello,cold` with the
coldbrew installed in this interpreter's environment, writing its JSON to a temporary
directory (docs/ and bench/results/ are left alone), and checks the figures it recorded.
Needs wrk; skipped when wrk is not installed.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "bench" / "run.py"

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="wrk is not installed (apt-get install wrk); the benchmark harness needs it",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-results")
    cmd = [
        sys.executable,
        str(RUNNER),
        "--quick",
        "--no-setup",
        "--no-docs",
        "--servers",
        "coldbrew",
        "--scenarios",
        "hello,cold",
        "--coldbrew-python",
        sys.executable,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"run.py exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    latest = out / "latest.json"
    assert latest.exists(), proc.stdout
    stamped = [p for p in out.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1, [p.name for p in out.iterdir()]
    return json.loads(latest.read_text()), proc


def test_hello_has_positive_throughput(quick_run):
    results, proc = quick_run
    entry = results["results"]["hello"]["coldbrew"]
    assert "error" not in entry, entry["error"]
    for conns in ("c1", "c64", "c256"):
        run = entry["runs"][conns]
        assert run["ok_rps"] > 0, (conns, run)
        assert run["requests"] > 0
        assert run["errors"]["status"] == 0, (conns, run["errors"])
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["peak_rss_mib"] > 0
    assert entry["idle_rss_mib"] > 0
    assert entry["processes"] == 1


def test_cold_start_recorded(quick_run):
    results, _ = quick_run
    entry = results["results"]["cold"]["coldbrew"]
    assert "error" not in entry, entry["error"]
    hello = entry["apps"]["hello"]
    assert "error" not in hello, hello["error"]
    assert hello["median_ms"] > 0
    assert len(hello["samples_ms"]) == 2
    assert hello["import_floor_ms"] > 0


def test_environment_recorded(quick_run):
    results, _ = quick_run
    env = results["environment"]
    assert env["coldbrew_env"]["coldbrew"]
    assert env["coldbrew_env"]["python"]
    assert env["kernel"]
    assert env["wrk"]
    assert results["servers"] == ["coldbrew"]
    assert results["interrupted"] is False


def test_rendering_from_results(quick_run, tmp_path):
    # The renderer turns the same JSON into Markdown and SVG without touching docs/.
    results, _ = quick_run
    spec = importlib.util.spec_from_file_location("bench_run", RUNNER)
    bench_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_run)
    bench_run.render_docs(results, docs_dir=tmp_path)
    md = (tmp_path / "benchmarks.md").read_text()
    assert "## hello" in md and "## Cold start" in md and "## Methodology" in md
    assert "| coldbrew |" in md
    svg = (tmp_path / "benchmarks-hello.svg").read_text()
    assert svg.startswith("<svg") and "coldbrew" in svg
