"""Worker sizing from the container's limits: made-up cgroup trees, and real processes under
taskset and in a real cgroup v1 with a CPU quota where the machine allows one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coldbrew._coldbrew import container_resources

# Prints what a fresh process sees, and which cgroups it is in.
CHILD = (
    "import json; from coldbrew._coldbrew import container_resources; "
    "print(json.dumps({'resources': container_resources(), 'cgroup': open('/proc/self/cgroup').read()}))"
)

V1_UNLIMITED = "9223372036854771712\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def no_limit_workers():
    """What the sizing falls back to in this process without a quota."""
    affinity, cores = len(os.sched_getaffinity(0)), os.cpu_count()
    if affinity < cores:
        return affinity, f"CPU affinity {affinity}"
    return cores, f"{cores} cores" if cores != 1 else "1 core"


def own_v1_path(controller):
    """This process's cgroup in the v1 hierarchy holding `controller`, '/' if there is none."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return "/"


def test_v2_tree_with_limits(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpuset cpu io memory pids\n")
    write(tmp_path / "cpu.max", "150000 100000\n")
    write(tmp_path / "memory.max", "536870912\n")
    r = container_resources(str(tmp_path))
    assert r["cgroup_version"] == 2
    assert r["cpu_quota"] == 1.5
    assert r["cpu_quota_source"] == "cgroup v2 cpu.max"
    assert r["memory_limit"] == 512 * 1024 * 1024
    assert (r["workers"], r["workers_reason"]) == (2, "cgroup v2 quota 1.5 CPU")


def test_v2_tree_without_limits(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu memory\n")
    write(tmp_path / "cpu.max", "max 100000\n")
    write(tmp_path / "memory.max", "max\n")
    r = container_resources(tmp_path)
    assert (r["cgroup_version"], r["cpu_quota"], r["cpu_quota_source"], r["memory_limit"]) == (2, None, None, None)
    assert (r["workers"], r["workers_reason"]) == no_limit_workers()


def test_v1_tree_with_combined_cpu_mount(tmp_path):
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "50000\n")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)
    r = container_resources(tmp_path)
    assert r["cgroup_version"] == 1
    assert r["cpu_quota"] == 0.5
    assert r["cpu_quota_source"] == "cgroup v1 cpu.cfs_quota_us"
    assert r["memory_limit"] is None
    assert (r["workers"], r["workers_reason"]) == (1, "cgroup v1 quota 0.5 CPU")


def test_v1_tree_without_quota(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    r = container_resources(tmp_path)
    assert (r["cgroup_version"], r["cpu_quota"], r["memory_limit"]) == (1, None, None)
    assert (r["workers"], r["workers_reason"]) == no_limit_workers()


def test_v1_memory_limit_is_the_tightest_on_the_path(tmp_path):
    # The tree mirrors this process's own memory cgroup path, so the probe walks from it up.
    own = tmp_path / "memory" / own_v1_path("memory").lstrip("/")
    write(tmp_path / "memory" / "memory.limit_in_bytes", "1073741824\n")
    write(own / "memory.limit_in_bytes", "268435456\n")
    assert container_resources(tmp_path)["memory_limit"] == 256 * 1024 * 1024
    write(tmp_path / "memory" / "memory.limit_in_bytes", "134217728\n")
    assert container_resources(tmp_path)["memory_limit"] == 128 * 1024 * 1024


def test_garbage_and_missing_files_mean_no_limit(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu memory\n")
    write(tmp_path / "cpu.max", "one and a half\n")
    (tmp_path / "memory.max").write_bytes(b"\xff\xfe\x00")
    r = container_resources(tmp_path)
    assert (r["cgroup_version"], r["cpu_quota"], r["memory_limit"]) == (2, None, None)

    empty = tmp_path / "empty"
    empty.mkdir()
    r = container_resources(empty)
    assert (r["cgroup_version"], r["cpu_quota"], r["memory_limit"]) == (None, None, None)
    assert (r["workers"], r["workers_reason"]) == no_limit_workers()


def test_web_concurrency_comes_first(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu\n")
    write(tmp_path / "cpu.max", "150000 100000\n")
    r = container_resources(tmp_path, "5")
    assert (r["workers"], r["workers_reason"]) == (5, "WEB_CONCURRENCY=5")
    assert r["cpu_quota"] == 1.5


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", ""])
def test_bad_web_concurrency_is_a_value_error(value):
    with pytest.raises(ValueError) as info:
        container_resources(None, value)
    assert str(info.value) == f"WEB_CONCURRENCY: expected a positive integer, got '{value}'"


def test_cores_and_affinity_are_the_os_view():
    r = container_resources()
    assert r["cores"] == os.cpu_count()
    assert r["affinity"] == len(os.sched_getaffinity(0))


def run_child(prefix):
    proc = subprocess.run([*prefix, sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_taskset_limits_a_real_child_to_one_worker():
    cpu = min(os.sched_getaffinity(0))
    child = run_child(["taskset", "-c", str(cpu)])
    r = child["resources"]
    assert r["affinity"] == 1
    if r["cpu_quota"] is not None:
        pytest.skip(f"this process's cgroup has a CPU quota ({r['workers_reason']}), which outranks the affinity")
    assert r["workers"] == 1
    assert "affinity" in r["workers_reason"]


def v1_cpu_mount():
    """The writable cgroup v1 mount holding the cpu controller, or a reason to skip."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        dash = fields.index("-", 6)
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            mount = Path(fields[4])
            if fields[3] != "/":
                return None, f"the cgroup v1 cpu mount at {mount} shows {fields[3]}, not the hierarchy's root"
            if not os.access(mount, os.W_OK):
                return None, f"the cgroup v1 cpu mount at {mount} is not writable"
            return mount, None
    return None, "no cgroup v1 mount with the cpu controller (cgroup v2, or no cgroups)"


@pytest.fixture
def v1_cgroup():
    """Makes cgroups under the v1 cpu mount and removes them (deepest first) afterwards."""
    mount, reason = v1_cpu_mount()
    if mount is None:
        pytest.skip(reason)
    made = []

    def make(relative, quota_us, period_us=100000):
        path = mount / relative
        try:
            path.mkdir()
        except OSError as err:
            pytest.skip(f"cannot create a cgroup under {mount}: {err}")
        made.append(path)
        (path / "cpu.cfs_period_us").write_text(f"{period_us}\n")
        (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        return path

    yield make
    for path in reversed(made):
        path.rmdir()


def run_in_cgroup(path):
    # The shell moves itself into the cgroup and then becomes the Python child, which thus
    # starts inside it.
    script = 'echo $$ > "$0/cgroup.procs" && exec "$1" -c "$2"'
    proc = subprocess.run(["sh", "-c", script, str(path), sys.executable, CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout)
    own = "/" + str(path.relative_to(v1_cpu_mount()[0]))
    cpu_lines = [line for line in child["cgroup"].splitlines() if "cpu" in line.split(":")[1].split(",")]
    assert [line.split(":", 2)[2] for line in cpu_lines] == [own], child["cgroup"]
    return child["resources"]


def test_real_cgroup_v1_quota(v1_cgroup):
    group = v1_cgroup(f"coldbrew-test-{os.getpid()}", 150000)
    r = run_in_cgroup(group)
    assert r["cgroup_version"] == 1
    assert r["cpu_quota"] == 1.5
    assert r["cpu_quota_source"] == "cgroup v1 cpu.cfs_quota_us"
    assert (r["workers"], r["workers_reason"]) == (2, "cgroup v1 quota 1.5 CPU")


def test_real_cgroup_v1_parent_quota_limits_the_child(v1_cgroup):
    parent = v1_cgroup(f"coldbrew-test-{os.getpid()}", 150000)
    inner = v1_cgroup(f"{parent.name}/inner", -1)
    r = run_in_cgroup(inner)
    assert r["cpu_quota"] == 1.5
    assert (r["workers"], r["workers_reason"]) == (2, "cgroup v1 quota 1.5 CPU")

    (inner / "cpu.cfs_quota_us").write_text("50000\n")
    r = run_in_cgroup(inner)
    assert r["cpu_quota"] == 0.5
    assert (r["workers"], r["workers_reason"]) == (1, "cgroup v1 quota 0.5 CPU")
