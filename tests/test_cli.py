"""The coldbrew command line: option parsing, environment, app loading, exit codes.

End-to-end tests run `python -m coldbrew` in a subprocess and only exercise
paths that exit before `serve()`. The serve path itself is tested in-process
with a fake `coldbrew._coldbrew` module, so none of this needs the Rust core.
"""

import errno
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

try:
    import coldbrew
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "python"))
    import coldbrew

from conftest import free_port  # noqa: E402

from coldbrew import cli, config, loader  # noqa: E402
from coldbrew.config import Config, ConfigError, parse, parse_args  # noqa: E402
from coldbrew.loader import AppLoadError, load_app  # noqa: E402

# The directory holding the `coldbrew` package the tests import, for subprocesses.
PACKAGE_PARENT = str(Path(coldbrew.__file__).resolve().parent.parent)

# Set the _coldbrew entry to None so importing the extension fails, then run the CLI.
NO_CORE = (
    "import sys; sys.modules['coldbrew._coldbrew'] = None; "
    "from coldbrew.cli import main; sys.exit(main())"
)

ALL_FLAGS = [
    "-b", "--bind", "--threads", "--graceful-timeout", "--root-path",
    "--response-buffer", "--request-buffer", "--backlog", "--chdir",
    "-e", "--env", "--log-level", "--log-format", "--app-log-handler", "--access-logfile",
    "--access-logformat", "--gcp-project", "--metrics-bind", "--version", "--help",
    "-w", "--workers", "-t", "--timeout", "--preload", "--post-fork", "--warmup",
    "--max-requests", "--max-requests-jitter", "--health-path", "--cgroup-root",
    "--http", "--forwarded-allow-ips", "--header-timeout", "--keep-alive", "--body-timeout", "--send-timeout",
    "--max-pending", "--limit-request-line", "--limit-request-fields", "--limit-request-field-size", "--limit-request-body",
    "--interface", "--loop", "--lifespan",
    "--loop-block-warning", "--ws-ping-interval", "--ws-ping-timeout", "--ws-max-size",
]

CONFIG_FIELDS = [
    "app_spec", "host", "port", "threads", "graceful_timeout", "root_path",
    "response_buffer", "request_buffer", "limit_request_line", "limit_request_fields",
    "limit_request_field_size", "limit_request_body", "backlog", "log_level", "workers",
    "log_format", "app_log_handler", "access_logfile", "access_logformat", "gcp_project",
    "metrics_host", "metrics_port", "workers_reason", "preload", "post_fork", "max_requests",
    "max_requests_jitter", "timeout", "warmup", "health_path", "cgroup_root",
    "forwarded_allow_ips", "header_timeout", "keep_alive", "body_timeout", "send_timeout", "max_pending",
    "http", "interface", "loop", "lifespan", "interface_reason",
    "ws_ping_interval", "ws_ping_timeout", "ws_max_size", "loop_block_warning",
]

GUNICORN_ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

# Variables outside COLDBREW_* that feed coldbrew's defaults.
PLATFORM_ENV = ("PORT", "SCRIPT_NAME", "K_SERVICE", "GOOGLE_CLOUD_PROJECT", "FORWARDED_ALLOW_IPS")


def clean_env(extra=None):
    """os.environ without anything that configures coldbrew, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COLDBREW_") and k not in PLATFORM_ENV
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def command(*args, no_core=False):
    if no_core:
        return [sys.executable, "-c", NO_CORE, *args]
    return [sys.executable, "-m", "coldbrew", *args]


def run_cli(*args, env=None, cwd=APPS, no_core=False):
    return subprocess.run(
        command(*args, no_core=no_core),
        cwd=str(cwd),
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------
# End to end: python -m coldbrew
# ---------------------------------------------------------------------------


def test_help_lists_every_option():
    result = run_cli("--help", no_core=True)
    assert result.returncode == 0, result.stderr
    for flag in ALL_FLAGS:
        assert flag in result.stdout, flag
    assert "usage: coldbrew [OPTIONS] MODULE[:ATTR]" in result.stdout
    help_text = " ".join(result.stdout.split())
    assert "the WSGI app: MODULE[:ATTR]" in help_text
    assert "answer PATH, whatever the method, in Rust without the app" in help_text
    assert "COLDBREW_CMD_ARGS" in result.stdout
    assert "in gunicorn's %(atom)s syntax (JSON mode writes Cloud Logging's httpRequest instead)" in help_text
    assert "(default: json on Cloud Run, where K_SERVICE is set; text elsewhere)" in help_text
    assert result.stderr == ""


def test_help_with_python_dash_m():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: coldbrew ")


def test_version_without_core():
    result = run_cli("--version", no_core=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "coldbrew unknown\n"


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    try:
        from coldbrew import _coldbrew
    except ImportError:
        expected = "coldbrew unknown\n"
    else:
        expected = f"coldbrew {_coldbrew.__version__}\n"
    assert result.stdout == expected


def test_version_ignores_broken_environment():
    result = run_cli("--version", env={"COLDBREW_THREADS": "x"}, no_core=True)
    assert result.returncode == 0
    assert result.stdout == "coldbrew unknown\n"


def test_bad_int_from_env_is_one_line_and_status_2():
    result = run_cli("cli_apps:app", env={"COLDBREW_THREADS": "x"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["coldbrew: error: COLDBREW_THREADS: invalid int value: 'x'"]
    assert result.stdout == ""


def test_bad_value_in_cmd_args_names_the_variable():
    result = run_cli("cli_apps:app", env={"COLDBREW_CMD_ARGS": "--backlog 0"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "coldbrew: error: COLDBREW_CMD_ARGS: argument --backlog: must be at least 1 (got 0)"
    ]


def test_bad_int_on_command_line():
    result = run_cli("--threads", "many", "cli_apps:app")
    assert result.returncode == 2
    assert last_line(result.stderr) == "coldbrew: error: argument --threads: invalid int value: 'many'"
    assert len(result.stderr.splitlines()) <= 2


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:http", "::1:8000", "[::1:8000"])
def test_bad_bind(bind):
    result = run_cli("--bind", bind, "cli_apps:app")
    assert result.returncode == 2
    line = last_line(result.stderr)
    assert line.startswith("coldbrew: error: argument -b/--bind: ")
    assert repr(bind) in line


def test_bad_port_env():
    result = run_cli("cli_apps:app", env={"PORT": "eighty"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["coldbrew: error: PORT: invalid port: 'eighty' (must be 1-65535)"]


def test_env_option_without_equals():
    result = run_cli("-e", "DEBUG", "cli_apps:app")
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        "coldbrew: error: argument -e/--env: expected KEY=VALUE, got 'DEBUG' (missing '=')"
    )


def test_unknown_option_is_rejected():
    result = run_cli("--worker-class", "gevent", "cli_apps:app")
    assert result.returncode == 2
    assert last_line(result.stderr).startswith("coldbrew: error: unrecognized arguments: --worker-class")


def test_missing_app():
    result = run_cli()
    assert result.returncode == 2
    assert "missing APP" in last_line(result.stderr)


def test_import_error_prints_traceback_then_one_line_and_never_listens():
    port = free_port()
    proc = subprocess.Popen(
        command("--bind", f"127.0.0.1:{port}", "cli_broken:app"),
        cwd=str(APPS),
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    connected = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                connected = True
        except OSError:
            time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert not connected
    lines = err.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert any("cli_broken.py" in line for line in lines)
    assert "ZeroDivisionError: division by zero" in lines[-2]
    assert lines[-1] == (
        "coldbrew: error: cannot import module 'cli_broken': ZeroDivisionError: division by zero"
    )
    # The traceback starts in the app, not in coldbrew's loader.
    assert "loader.py" not in err


def test_missing_module():
    result = run_cli("no_such_module:app")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"coldbrew: error: module 'no_such_module' not found in {APPS} or on sys.path"
    ]


def test_missing_dependency_is_an_import_error_not_a_missing_module(tmp_path):
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\napp = None\n")
    result = run_cli("needs_dep:app", cwd=tmp_path)
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert last_line(result.stderr) == (
        "coldbrew: error: cannot import module 'needs_dep': "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    )


def test_missing_attribute():
    result = run_cli("cli_apps:ap")
    assert result.returncode == 3
    assert result.stderr.splitlines() == ["coldbrew: error: module 'cli_apps' has no attribute 'ap'"]


def test_not_callable():
    result = run_cli("cli_apps:not_callable")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "coldbrew: error: 'cli_apps:not_callable' is not callable (got int)"
    ]


def test_non_literal_factory_args():
    result = run_cli("cli_apps:create_app(os.environ)")
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("coldbrew: error: invalid app spec 'cli_apps:create_app(os.environ)': ")
    assert "'os.environ' is not a literal" in lines[0]


def test_factory_that_raises():
    result = run_cli("cli_apps:broken_factory()")
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert "factory failed on purpose" in result.stderr
    assert last_line(result.stderr) == (
        "coldbrew: error: app factory 'cli_apps:broken_factory()' raised "
        "ValueError: factory failed on purpose"
    )


def test_chdir_is_applied_before_import(tmp_path):
    # Run from tmp_path, where cli_apps does not exist; --chdir finds it.
    result = run_cli("--chdir", str(APPS), "cli_apps:ap", cwd=tmp_path)
    assert result.returncode == 3
    assert last_line(result.stderr) == "coldbrew: error: module 'cli_apps' has no attribute 'ap'"


def test_bad_chdir_names_its_source(tmp_path):
    missing = str(tmp_path / "missing")
    result = run_cli("--chdir", missing, "cli_apps:app")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"coldbrew: error: argument --chdir: cannot change directory to {missing!r}: No such file or directory"
    ]


def test_precedence_end_to_end(tmp_path):
    """defaults < COLDBREW_<OPTION> < COLDBREW_CMD_ARGS < command line, seen through --chdir errors."""
    a, b, c = (str(tmp_path / name) for name in "abc")
    env = {"COLDBREW_CHDIR": a}
    result = run_cli("cli_apps:app", env=env)
    assert last_line(result.stderr).startswith(f"coldbrew: error: COLDBREW_CHDIR: cannot change directory to {a!r}")

    env["COLDBREW_CMD_ARGS"] = f"--chdir {b}"
    result = run_cli("cli_apps:app", env=env)
    assert last_line(result.stderr).startswith(
        f"coldbrew: error: COLDBREW_CMD_ARGS: argument --chdir: cannot change directory to {b!r}"
    )

    result = run_cli("--chdir", c, "cli_apps:app", env=env)
    assert last_line(result.stderr).startswith(f"coldbrew: error: argument --chdir: cannot change directory to {c!r}")
    assert result.returncode == 2


def test_app_and_threads_from_environment():
    env = {"COLDBREW_APP": "cli_apps:ap", "COLDBREW_THREADS": "4"}
    result = run_cli(env=env)
    assert result.returncode == 3
    assert last_line(result.stderr) == "coldbrew: error: module 'cli_apps' has no attribute 'ap'"


# ---------------------------------------------------------------------------
# parse_args: a pure function of (argv, environ)
# ---------------------------------------------------------------------------


def test_config_has_exactly_the_core_fields():
    assert list(Config.__slots__) == CONFIG_FIELDS
    with pytest.raises(AttributeError):
        Config("m:app").not_a_field = 1


def test_defaults():
    cfg = parse_args(["main:app"], {})
    assert cfg == Config(
        app_spec="main:app",
        host="0.0.0.0",
        port=8080,
        threads=8,
        graceful_timeout=8.0,
        root_path="",
        response_buffer=1024 * 1024,
        request_buffer=256 * 1024,
        limit_request_line=4094,
        limit_request_fields=100,
        limit_request_field_size=8190,
        limit_request_body=32 * 1024 * 1024,
        backlog=2048,
        log_level="info",
        workers=None,
        log_format="text",
        app_log_handler=True,
        access_logfile=None,
        access_logformat=GUNICORN_ACCESS_FORMAT,
        gcp_project="",
        metrics_host=None,
        metrics_port=None,
        workers_reason="",
        preload=False,
        post_fork=None,
        max_requests=0,
        max_requests_jitter=0,
        timeout=0.0,
        warmup=(),
        health_path=None,
        cgroup_root=None,
        forwarded_allow_ips="127.0.0.1,::1",
        header_timeout=30.0,
        keep_alive=620.0,
        body_timeout=60.0,
        send_timeout=60.0,
        max_pending=1024,
        loop_block_warning=0.5,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        ws_max_size=16 * 1024 * 1024,
    )
    assert cfg == Config("main:app")
    assert isinstance(cfg.graceful_timeout, float)
    inv = parse(["main:app"], {})
    assert inv.chdir is None
    assert inv.env == []


def test_port_and_script_name_feed_the_defaults():
    cfg = parse_args(["main:app"], {"PORT": "9000", "SCRIPT_NAME": "/api/"})
    assert (cfg.host, cfg.port, cfg.root_path) == ("0.0.0.0", 9000, "/api")


def test_port_env_is_ignored_when_bind_has_a_port():
    cfg = parse_args(["-b", "127.0.0.1:7000", "main:app"], {"PORT": "not-a-port"})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 7000)


@pytest.mark.parametrize(
    "bind, port_env, expected",
    [
        ("127.0.0.1:8000", None, ("127.0.0.1", 8000)),
        (":8000", None, ("0.0.0.0", 8000)),
        ("[::1]:8000", None, ("::1", 8000)),
        ("[::]:1", None, ("::", 1)),
        ("localhost", None, ("localhost", 8080)),
        ("localhost", "9001", ("localhost", 9001)),
        ("[::1]", "9002", ("::1", 9002)),
        ("0.0.0.0:65535", None, ("0.0.0.0", 65535)),
    ],
)
def test_bind_forms(bind, port_env, expected):
    environ = {"PORT": port_env} if port_env else {}
    cfg = parse_args(["--bind", bind, "main:app"], environ)
    assert (cfg.host, cfg.port) == expected


@pytest.mark.parametrize(
    "bind",
    ["", "host:0", "host:65536", "host:abc", "host:", "::1:80", "[]:80", "[::1]80", "[::1", "unix:/tmp/s", "a b:80"],
)
def test_bad_bind_values(bind):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--bind", bind, "main:app"], {})
    assert exc.value.message.startswith("argument -b/--bind: ")
    assert exc.value.usage


def test_threads_from_env():
    assert parse_args(["main:app"], {"COLDBREW_THREADS": "4"}).threads == 4


def test_cmd_args():
    environ = {"COLDBREW_CMD_ARGS": "--threads 3 --bind :9000 -e 'A=x y' --log-level warning"}
    inv = parse(["main:app"], environ)
    assert (inv.config.threads, inv.config.port, inv.config.log_level) == (3, 9000, "warning")
    assert inv.env == [("A", "x y")]


def test_cmd_args_may_hold_the_app():
    assert parse_args([], {"COLDBREW_CMD_ARGS": "main:app"}).app_spec == "main:app"


def test_precedence():
    environ = {"COLDBREW_THREADS": "2", "COLDBREW_CMD_ARGS": "--threads 3"}
    assert parse_args(["--threads", "4", "main:app"], environ).threads == 4
    assert parse_args(["main:app"], environ).threads == 3
    assert parse_args(["main:app"], {"COLDBREW_THREADS": "2"}).threads == 2
    assert parse_args(["main:app"], {}).threads == 8


def test_precedence_of_app():
    environ = {"COLDBREW_APP": "env:app", "COLDBREW_CMD_ARGS": "cmd:app"}
    assert parse_args(["argv:app"], environ).app_spec == "argv:app"
    assert parse_args([], environ).app_spec == "cmd:app"
    assert parse_args([], {"COLDBREW_APP": "env:app"}).app_spec == "env:app"


def test_repeatable_env_from_every_source_in_precedence_order():
    environ = {"COLDBREW_ENV": "A=1 'B=two words'", "COLDBREW_CMD_ARGS": "-e A=2"}
    inv = parse(["-e", "A=3", "--env", "C=", "main:app"], environ)
    assert inv.env == [("A", "1"), ("B", "two words"), ("A", "2"), ("A", "3"), ("C", "")]


@pytest.mark.parametrize(
    "name, value, field, expected",
    [
        ("COLDBREW_BIND", "127.0.0.1:9000", "port", 9000),
        ("COLDBREW_THREADS", "4", "threads", 4),
        ("COLDBREW_GRACEFUL_TIMEOUT", "5", "graceful_timeout", 5.0),
        ("COLDBREW_ROOT_PATH", "/api/", "root_path", "/api"),
        ("COLDBREW_RESPONSE_BUFFER", "2M", "response_buffer", 2 * 1024 * 1024),
        ("COLDBREW_REQUEST_BUFFER", "64KiB", "request_buffer", 64 * 1024),
        ("COLDBREW_BACKLOG", "128", "backlog", 128),
        ("COLDBREW_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("COLDBREW_LOG_FORMAT", "json", "log_format", "json"),
        ("COLDBREW_APP_LOG_HANDLER", "off", "app_log_handler", False),
        ("COLDBREW_ACCESS_LOGFILE", "-", "access_logfile", "-"),
        ("COLDBREW_ACCESS_LOGFORMAT", "%(h)s %(r)s %(s)s", "access_logformat", "%(h)s %(r)s %(s)s"),
        ("COLDBREW_GCP_PROJECT", "my-project", "gcp_project", "my-project"),
        ("COLDBREW_METRICS_BIND", "127.0.0.1:9090", "metrics_port", 9090),
        ("COLDBREW_WORKERS", "3", "workers", 3),
        ("COLDBREW_TIMEOUT", "2.5", "timeout", 2.5),
        ("COLDBREW_PRELOAD", "on", "preload", True),
        ("COLDBREW_PRELOAD", "false", "preload", False),
        ("COLDBREW_POST_FORK", "hooks:reopen", "post_fork", "hooks:reopen"),
        ("COLDBREW_WARMUP", "a:warm b.c:d", "warmup", ("a:warm", "b.c:d")),
        ("COLDBREW_MAX_REQUESTS", "1000", "max_requests", 1000),
        ("COLDBREW_MAX_REQUESTS_JITTER", "50", "max_requests_jitter", 50),
        ("COLDBREW_HEALTH_PATH", "/healthz", "health_path", "/healthz"),
        ("COLDBREW_CGROUP_ROOT", "/tmp/cg", "cgroup_root", "/tmp/cg"),
        ("COLDBREW_FORWARDED_ALLOW_IPS", " 10.0.0.0/8, ::1 ", "forwarded_allow_ips", "10.0.0.0/8,::1"),
        ("COLDBREW_FORWARDED_ALLOW_IPS", "*", "forwarded_allow_ips", "*"),
        ("COLDBREW_HEADER_TIMEOUT", "7.5", "header_timeout", 7.5),
        ("COLDBREW_KEEP_ALIVE", "0", "keep_alive", 0.0),
        ("COLDBREW_BODY_TIMEOUT", "12", "body_timeout", 12.0),
        ("COLDBREW_SEND_TIMEOUT", "7", "send_timeout", 7.0),
        ("COLDBREW_MAX_PENDING", "2", "max_pending", 2),
        ("COLDBREW_HTTP", "2", "http", "2"),
        ("COLDBREW_LIMIT_REQUEST_LINE", "8190", "limit_request_line", 8190),
        ("COLDBREW_LIMIT_REQUEST_LINE", "0", "limit_request_line", 0),
        ("COLDBREW_LIMIT_REQUEST_FIELDS", "32768", "limit_request_fields", 32768),
        ("COLDBREW_LIMIT_REQUEST_FIELD_SIZE", "16K", "limit_request_field_size", 16 * 1024),
        ("COLDBREW_LIMIT_REQUEST_BODY", "1G", "limit_request_body", 1024**3),
        ("COLDBREW_LIMIT_REQUEST_BODY", "0", "limit_request_body", 0),
        ("COLDBREW_APP", "other:app", "app_spec", "other:app"),
    ],
)
def test_every_option_from_env(name, value, field, expected):
    cfg = parse_args(["main:app"] if name != "COLDBREW_APP" else [], {name: value})
    assert getattr(cfg, field) == expected


def test_chdir_and_env_from_env():
    inv = parse(["main:app"], {"COLDBREW_CHDIR": "/srv/app", "COLDBREW_ENV": "X=1"})
    assert inv.chdir == "/srv/app"
    assert inv.env == [("X", "1")]
    assert inv.sources["chdir"] == "COLDBREW_CHDIR"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("COLDBREW_THREADS", "x", "COLDBREW_THREADS: invalid int value: 'x'"),
        ("COLDBREW_THREADS", "0", "COLDBREW_THREADS: must be at least 1 (got 0)"),
        ("COLDBREW_THREADS", "", "COLDBREW_THREADS: invalid int value: ''"),
        ("COLDBREW_BACKLOG", "1.5", "COLDBREW_BACKLOG: invalid int value: '1.5'"),
        ("COLDBREW_GRACEFUL_TIMEOUT", "soon", "COLDBREW_GRACEFUL_TIMEOUT: invalid float value: 'soon'"),
        ("COLDBREW_GRACEFUL_TIMEOUT", "-1", "COLDBREW_GRACEFUL_TIMEOUT: must be at least 0 (got '-1')"),
        ("COLDBREW_GRACEFUL_TIMEOUT", "nan", "COLDBREW_GRACEFUL_TIMEOUT: must be a finite number of seconds (got 'nan')"),
        ("COLDBREW_KEEP_ALIVE", "-1", "COLDBREW_KEEP_ALIVE: must be at least 0 (got '-1')"),
        ("COLDBREW_MAX_PENDING", "0", "COLDBREW_MAX_PENDING: must be at least 1 (got 0)"),
        ("COLDBREW_HEADER_TIMEOUT", "inf", "COLDBREW_HEADER_TIMEOUT: must be a finite number of seconds (got 'inf')"),
        ("COLDBREW_ROOT_PATH", "api", "COLDBREW_ROOT_PATH: must start with '/' (got 'api')"),
        ("COLDBREW_LOG_LEVEL", "loud", "COLDBREW_LOG_LEVEL: invalid choice: 'loud' (choose from debug, info, warning, error, critical)"),
        ("COLDBREW_ENV", "NOEQUALS", "COLDBREW_ENV: expected KEY=VALUE, got 'NOEQUALS' (missing '=')"),
        ("COLDBREW_ENV", "'A=1", "COLDBREW_ENV: cannot split \"'A=1\": No closing quotation"),
        ("COLDBREW_BIND", "h:0", "COLDBREW_BIND: invalid port in 'h:0' (must be 1-65535)"),
        ("COLDBREW_LOG_FORMAT", "yaml", "COLDBREW_LOG_FORMAT: invalid choice: 'yaml' (choose from text, json)"),
        ("COLDBREW_APP_LOG_HANDLER", "maybe", "COLDBREW_APP_LOG_HANDLER: invalid choice: 'maybe' (choose from on, off)"),
        ("COLDBREW_APP_LOG_HANDLER", "", "COLDBREW_APP_LOG_HANDLER: invalid choice: '' (choose from on, off)"),
        ("COLDBREW_ACCESS_LOGFILE", "", "COLDBREW_ACCESS_LOGFILE: empty path (use - for stdout)"),
        ("COLDBREW_ACCESS_LOGFORMAT", "%(h)s %(z)s",
         "COLDBREW_ACCESS_LOGFORMAT: unknown atom '%(z)s' "
         "(use h l u t r s m U q H b B f a T D M L p, {NAME}i, {NAME}o or {NAME}e)"),
        ("COLDBREW_ACCESS_LOGFORMAT", "%(h)s %(r",
         "COLDBREW_ACCESS_LOGFORMAT: unterminated atom '%(r' (every %( must close with )s)"),
        ("COLDBREW_GCP_PROJECT", "my project", "COLDBREW_GCP_PROJECT: invalid project id: 'my project'"),
        ("COLDBREW_METRICS_BIND", "localhost", "COLDBREW_METRICS_BIND: missing port in 'localhost' (expected HOST:PORT, e.g. :9090)"),
        ("COLDBREW_METRICS_BIND", ":0", "COLDBREW_METRICS_BIND: invalid port in ':0' (must be 1-65535)"),
        ("GOOGLE_CLOUD_PROJECT", "a/b", "GOOGLE_CLOUD_PROJECT: invalid project id: 'a/b'"),
        ("COLDBREW_CMD_ARGS", "--threads", "COLDBREW_CMD_ARGS: argument --threads: expected one argument"),
        ("COLDBREW_CMD_ARGS", "--nope", "COLDBREW_CMD_ARGS: unrecognized arguments: --nope"),
        ("COLDBREW_CMD_ARGS", "'--threads", "COLDBREW_CMD_ARGS: cannot split \"'--threads\": No closing quotation"),
        ("COLDBREW_LIMIT_REQUEST_FIELDS", "0", "COLDBREW_LIMIT_REQUEST_FIELDS: must be at least 1 (got 0)"),
        ("COLDBREW_LIMIT_REQUEST_FIELDS", "32769", "COLDBREW_LIMIT_REQUEST_FIELDS: must be at most 32768 (got 32769)"),
        ("COLDBREW_LIMIT_REQUEST_BODY", "-1",
         "COLDBREW_LIMIT_REQUEST_BODY: invalid size: '-1' (use bytes or a K/M/G suffix, e.g. 64K or 1MiB)"),
        ("SCRIPT_NAME", "api", "SCRIPT_NAME: must start with '/' (got 'api')"),
        ("PORT", "0", "PORT: invalid port: '0' (must be 1-65535)"),
    ],
)
def test_bad_values_from_environment(name, value, message):
    with pytest.raises(ConfigError) as exc:
        parse_args(["main:app"], {name: value})
    assert exc.value.message == message
    assert not exc.value.usage


def test_bad_env_value_is_an_error_even_when_overridden():
    with pytest.raises(ConfigError, match="COLDBREW_THREADS"):
        parse_args(["--threads", "4", "main:app"], {"COLDBREW_THREADS": "x"})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("1024", 1024),
        ("1k", 1024),
        ("1K", 1024),
        ("1KB", 1024),
        ("1kib", 1024),
        ("64 KiB", 64 * 1024),
        ("2m", 2 * 1024**2),
        ("2MB", 2 * 1024**2),
        ("2MiB", 2 * 1024**2),
        ("1.5M", 1536 * 1024),
        ("1G", 1024**3),
        ("1gib", 1024**3),
        ("100b", 100),
    ],
)
def test_size_suffixes(text, expected):
    cfg = parse_args(["--response-buffer", text, "--request-buffer", text, "main:app"], {})
    assert cfg.response_buffer == expected
    assert cfg.request_buffer == expected


@pytest.mark.parametrize("text", ["", "K", "1X", "1T", "-1", "1.2.3", "1e6", "one"])
def test_bad_sizes(text):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--request-buffer", text, "main:app"], {})
    assert exc.value.message.startswith("argument --request-buffer: invalid size: ")


@pytest.mark.parametrize("path, expected", [("/", ""), ("", ""), ("/api", "/api"), ("/api//", "/api"), ("/a/b/", "/a/b")])
def test_root_path(path, expected):
    assert parse_args(["--root-path", path, "main:app"], {"SCRIPT_NAME": "/ignored"}).root_path == expected


def test_root_path_must_be_absolute():
    with pytest.raises(ConfigError, match="argument --root-path: must start with '/'"):
        parse_args(["--root-path", "api", "main:app"], {})


@pytest.mark.parametrize(
    "level, expected",
    [("debug", "debug"), ("info", "info"), ("warning", "warning"), ("error", "error"),
     ("critical", "critical"), ("WARNING", "warning"), ("warn", "warning")],
)
def test_log_levels(level, expected):
    assert parse_args(["--log-level", level, "main:app"], {}).log_level == expected


@pytest.mark.parametrize("pair, message", [("X", "missing '='"), ("=1", "empty KEY")])
def test_bad_env_pairs(pair, message):
    with pytest.raises(ConfigError) as exc:
        parse(["-e", pair, "main:app"], {})
    assert exc.value.message.startswith("argument -e/--env: expected KEY=VALUE")
    assert message in exc.value.message


def test_env_value_may_contain_equals():
    assert parse(["-e", "URL=a=b", "main:app"], {}).env == [("URL", "a=b")]


def test_missing_app_is_a_usage_error():
    with pytest.raises(ConfigError) as exc:
        parse_args([], {})
    assert exc.value.usage
    assert "missing APP" in exc.value.message


def test_parse_args_does_not_touch_the_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before_env = dict(os.environ)
    before_path = list(sys.path)
    parse(["--chdir", "/", "-e", "COLDBREW_TEST_SHOULD_NOT_BE_SET=1", "main:app"], {})
    assert os.getcwd() == str(tmp_path)
    assert dict(os.environ) == before_env
    assert sys.path == before_path


# ---------------------------------------------------------------------------
# Telemetry options: log format, app log handler, access log, project, metrics
# ---------------------------------------------------------------------------


def test_log_format_defaults_to_json_on_cloud_run():
    inv = parse(["main:app"], {"K_SERVICE": "my-service"})
    assert inv.config.log_format == "json"
    assert inv.sources["log_format"] == "K_SERVICE"
    inv = parse(["main:app"], {})
    assert inv.config.log_format == "text"
    assert "log_format" not in inv.sources


@pytest.mark.parametrize(
    "argv, environ, expected, source",
    [
        (["main:app"], {}, "127.0.0.1,::1", None),
        (["main:app"], {"K_SERVICE": "svc"}, "*", "K_SERVICE"),
        (["main:app"], {"K_SERVICE": ""}, "127.0.0.1,::1", None),
        (["main:app"], {"K_SERVICE": "svc", "FORWARDED_ALLOW_IPS": "10.0.0.1"}, "10.0.0.1", "FORWARDED_ALLOW_IPS"),
        (["main:app"], {"FORWARDED_ALLOW_IPS": "", "K_SERVICE": "svc"}, "", "FORWARDED_ALLOW_IPS"),
        (["main:app"], {"FORWARDED_ALLOW_IPS": "10.0.0.1", "COLDBREW_FORWARDED_ALLOW_IPS": "10.0.0.2"}, "10.0.0.2",
         "COLDBREW_FORWARDED_ALLOW_IPS"),
        (["--forwarded-allow-ips", "[fd00::]/8, 192.168.0.0/16", "main:app"], {"K_SERVICE": "svc"},
         "[fd00::]/8,192.168.0.0/16", "argument --forwarded-allow-ips"),
    ],
)
def test_forwarded_allow_ips_sources(argv, environ, expected, source):
    inv = parse(argv, environ)
    assert inv.config.forwarded_allow_ips == expected
    assert inv.sources.get("forwarded_allow_ips") == source


@pytest.mark.parametrize(
    "value, message",
    [
        ("localhost", "not an IP address or network: 'localhost'"),
        ("10.0.0.256", "not an IP address or network: '10.0.0.256'"),
        ("010.0.0.1", "not an IP address or network: '010.0.0.1'"),
        ("10.0.0.0/33", "invalid prefix length in '10.0.0.0/33' (0-32)"),
        ("::/129", "invalid prefix length in '::/129' (0-128)"),
        ("10.0.0.0/", "invalid prefix length in '10.0.0.0/' (0-32)"),
        ("fe80::1%eth0", "not an IP address or network: 'fe80::1%eth0'"),
        ("127.0.0.1 ::1", "not an IP address or network: '127.0.0.1 ::1'"),
    ],
)
def test_bad_forwarded_allow_ips(value, message):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--forwarded-allow-ips", value, "main:app"], {})
    assert exc.value.message == f"argument --forwarded-allow-ips: {message}"
    with pytest.raises(ConfigError) as exc:
        parse_args(["main:app"], {"FORWARDED_ALLOW_IPS": value})
    assert exc.value.message == f"FORWARDED_ALLOW_IPS: {message}"


def test_empty_k_service_does_not_switch_to_json():
    assert parse_args(["main:app"], {"K_SERVICE": ""}).log_format == "text"


@pytest.mark.parametrize(
    "argv, environ, expected, source",
    [
        (["--log-format", "text", "main:app"], {"K_SERVICE": "svc"}, "text", "argument --log-format"),
        (["--log-format=JSON", "main:app"], {}, "json", "argument --log-format"),
        (["main:app"], {"COLDBREW_LOG_FORMAT": "text", "K_SERVICE": "svc"}, "text", "COLDBREW_LOG_FORMAT"),
        (["main:app"], {"COLDBREW_CMD_ARGS": "--log-format json"}, "json",
         "COLDBREW_CMD_ARGS: argument --log-format"),
        (["main:app"], {"COLDBREW_CMD_ARGS": "--log-format text", "COLDBREW_LOG_FORMAT": "json"}, "text",
         "COLDBREW_CMD_ARGS: argument --log-format"),
    ],
)
def test_log_format_sources(argv, environ, expected, source):
    inv = parse(argv, environ)
    assert inv.config.log_format == expected
    assert inv.sources["log_format"] == source


@pytest.mark.parametrize("text", ["yaml", "", "json,text"])
def test_bad_log_format(text):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--log-format", text, "main:app"], {})
    assert exc.value.message == f"argument --log-format: invalid choice: {text!r} (choose from text, json)"
    assert exc.value.usage


@pytest.mark.parametrize(
    "text, expected",
    [("on", True), ("off", False), ("ON", True), ("Off", False), ("true", True), ("false", False),
     ("yes", True), ("NO", False), ("1", True), ("0", False), (" on ", True)],
)
def test_app_log_handler_values(text, expected):
    cfg = parse_args(["--app-log-handler", text, "main:app"], {})
    assert cfg.app_log_handler is expected
    assert parse_args(["main:app"], {"COLDBREW_APP_LOG_HANDLER": text}).app_log_handler is expected


@pytest.mark.parametrize("text", ["maybe", "2", "enabled", "o n", ""])
def test_bad_app_log_handler(text):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--app-log-handler", text, "main:app"], {})
    assert exc.value.message == f"argument --app-log-handler: invalid choice: {text!r} (choose from on, off)"


def test_app_log_handler_from_cmd_args_beats_env():
    environ = {"COLDBREW_APP_LOG_HANDLER": "on", "COLDBREW_CMD_ARGS": "--app-log-handler=off"}
    assert parse_args(["main:app"], environ).app_log_handler is False
    assert parse_args(["--app-log-handler", "yes", "main:app"], environ).app_log_handler is True


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["main:app"], None),
        (["--access-logfile", "-", "main:app"], "-"),
        (["--access-logfile=-", "main:app"], "-"),
        (["--access-logfile", "/var/log/access.log", "main:app"], "/var/log/access.log"),
        (["--access-logfile", "logs/a b.log", "main:app"], "logs/a b.log"),
        (["--access-logfile", " spaced ", "main:app"], " spaced "),
        (["--access-logfile=-x.log", "main:app"], "-x.log"),
    ],
)
def test_access_logfile(argv, expected):
    assert parse_args(argv, {}).access_logfile == expected


def test_access_logfile_from_env_and_cmd_args():
    assert parse_args(["main:app"], {"COLDBREW_ACCESS_LOGFILE": "-"}).access_logfile == "-"
    environ = {"COLDBREW_ACCESS_LOGFILE": "-", "COLDBREW_CMD_ARGS": "--access-logfile '/tmp/a b.log'"}
    inv = parse(["main:app"], environ)
    assert inv.config.access_logfile == "/tmp/a b.log"
    assert inv.sources["access_logfile"] == "COLDBREW_CMD_ARGS: argument --access-logfile"


@pytest.mark.parametrize("argv", [["--access-logfile", "", "main:app"], ["--access-logfile=", "main:app"]])
def test_empty_access_logfile(argv):
    with pytest.raises(ConfigError) as exc:
        parse_args(argv, {})
    assert exc.value.message == "argument --access-logfile: empty path (use - for stdout)"


@pytest.mark.parametrize(
    "fmt",
    [
        GUNICORN_ACCESS_FORMAT,
        "%(h)s %(l)s %(u)s %(t)s %(r)s %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s %(B)s %(f)s %(a)s "
        "%(T)s %(D)s %(M)s %(L)s %(p)s",
        "%({X-Request-Id}i)s %({content-type}o)s %({K_REVISION}e)s",
        "plain text, no atoms",
        "100% %s %d %%(h)s (h)s",
        "%(h)s%(s)s",
        '"%(r)s" -> %(s)s',
        "-",
        "-%(h)s %(r)s",
    ],
)
def test_good_access_log_formats(fmt):
    assert parse_args(["--access-logformat", fmt, "main:app"], {}).access_logformat == fmt
    assert parse_args([f"--access-logformat={fmt}", "main:app"], {}).access_logformat == fmt
    assert parse_args(["main:app"], {"COLDBREW_ACCESS_LOGFORMAT": fmt}).access_logformat == fmt


def test_access_log_format_starting_with_a_dash_needs_equals():
    # As for every option: argparse takes "-x" after a flag for another flag (unless it holds a space).
    assert parse_args(["--access-logformat=-%(h)s", "main:app"], {}).access_logformat == "-%(h)s"
    with pytest.raises(ConfigError, match="argument --access-logformat: expected one argument"):
        parse_args(["--access-logformat", "-%(h)s", "main:app"], {})


def test_access_log_format_in_cmd_args():
    environ = {"COLDBREW_CMD_ARGS": "--access-logformat '%(h)s \"%(r)s\" %(s)s'"}
    assert parse_args(["main:app"], environ).access_logformat == '%(h)s "%(r)s" %(s)s'


@pytest.mark.parametrize(
    "fmt, message",
    [
        ("%(x)s", "unknown atom '%(x)s'"),
        ("%(h)s %(hh)s", "unknown atom '%(hh)s'"),
        ("%()s", "unknown atom '%()s'"),
        ("%(h)d", "unterminated atom '%(h)d' (every %( must close with )s)"),
        ("%(h)s %(r", "unterminated atom '%(r' (every %( must close with )s)"),
        ("%(", "unterminated atom '%(' (every %( must close with )s)"),
        ("%({}i)s", "unknown atom '%({}i)s'"),
        ("%({X-Id}x)s", "unknown atom '%({X-Id}x)s'"),
        ("%({X-Id})s", "unknown atom '%({X-Id})s'"),
        ("%({bad header}i)s", "unknown atom '%({bad header}i)s'"),
        ("%({a=b}e)s", "unknown atom '%({a=b}e)s'"),
        ("%(H)s %(S)s", "unknown atom '%(S)s'"),
        ("", "empty format"),
    ],
)
def test_bad_access_log_formats(fmt, message):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--access-logformat", fmt, "main:app"], {})
    assert exc.value.message.startswith(f"argument --access-logformat: {message}")
    assert "\n" not in exc.value.message


def test_gcp_project_defaults_to_google_cloud_project():
    inv = parse(["main:app"], {"GOOGLE_CLOUD_PROJECT": "proj-123"})
    assert inv.config.gcp_project == "proj-123"
    assert inv.sources["gcp_project"] == "GOOGLE_CLOUD_PROJECT"
    inv = parse(["main:app"], {})
    assert inv.config.gcp_project == ""
    assert "gcp_project" not in inv.sources


@pytest.mark.parametrize(
    "argv, environ, expected",
    [
        (["--gcp-project", "other", "main:app"], {"GOOGLE_CLOUD_PROJECT": "proj"}, "other"),
        (["--gcp-project", "", "main:app"], {"GOOGLE_CLOUD_PROJECT": "proj"}, ""),
        (["--gcp-project=example.com:legacy-1", "main:app"], {}, "example.com:legacy-1"),
        (["main:app"], {"COLDBREW_GCP_PROJECT": "env-proj", "GOOGLE_CLOUD_PROJECT": "proj"}, "env-proj"),
        (["main:app"], {"COLDBREW_CMD_ARGS": "--gcp-project cmd", "COLDBREW_GCP_PROJECT": "env"}, "cmd"),
        (["main:app"], {"GOOGLE_CLOUD_PROJECT": " padded "}, "padded"),
        (["--gcp-project", "ok", "main:app"], {"GOOGLE_CLOUD_PROJECT": "bad/one"}, "ok"),
    ],
)
def test_gcp_project_sources(argv, environ, expected):
    assert parse_args(argv, environ).gcp_project == expected


@pytest.mark.parametrize("text", ["a b", "projects/x", "a\tb"])
def test_bad_gcp_project(text):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--gcp-project", text, "main:app"], {})
    assert exc.value.message == f"argument --gcp-project: invalid project id: {text!r}"


@pytest.mark.parametrize(
    "bind, expected",
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        (":9090", ("0.0.0.0", 9090)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:1", ("localhost", 1)),
        ("  0.0.0.0:65535 ", ("0.0.0.0", 65535)),
    ],
)
def test_metrics_bind_forms(bind, expected):
    cfg = parse_args(["--metrics-bind", bind, "main:app"], {"PORT": "7000"})
    assert (cfg.metrics_host, cfg.metrics_port) == expected
    assert (cfg.host, cfg.port) == ("0.0.0.0", 7000)


def test_metrics_bind_is_off_by_default_and_ignores_port():
    cfg = parse_args(["main:app"], {"PORT": "9999"})
    assert (cfg.metrics_host, cfg.metrics_port) == (None, None)


@pytest.mark.parametrize(
    "bind, message",
    [
        ("localhost", "missing port in 'localhost' (expected HOST:PORT, e.g. :9090)"),
        ("[::1]", "missing port in '[::1]' (expected HOST:PORT, e.g. :9090)"),
        ("host:0", "invalid port in 'host:0' (must be 1-65535)"),
        ("host:", "invalid port in 'host:' (must be 1-65535)"),
        ("::1:80", "invalid address: '::1:80' (put IPv6 addresses in brackets, e.g. [::1]:8000)"),
        ("unix:/tmp/m", "unix sockets are not supported: 'unix:/tmp/m'"),
        ("", "empty address (expected HOST:PORT)"),
    ],
)
def test_bad_metrics_bind(bind, message):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--metrics-bind", bind, "main:app"], {"PORT": "9090"})
    assert exc.value.message == f"argument --metrics-bind: {message}"


def test_metrics_bind_from_env_and_cmd_args():
    environ = {"COLDBREW_METRICS_BIND": ":9090"}
    cfg = parse_args(["main:app"], environ)
    assert (cfg.metrics_host, cfg.metrics_port) == ("0.0.0.0", 9090)
    environ["COLDBREW_CMD_ARGS"] = "--metrics-bind [::]:9100"
    inv = parse(["main:app"], environ)
    assert (inv.config.metrics_host, inv.config.metrics_port) == ("::", 9100)
    assert inv.sources["metrics_bind"] == "COLDBREW_CMD_ARGS: argument --metrics-bind"
    cfg = parse_args(["--metrics-bind", "127.0.0.1:9200", "main:app"], environ)
    assert (cfg.metrics_host, cfg.metrics_port) == ("127.0.0.1", 9200)


def test_every_telemetry_option_on_the_command_line():
    cfg = parse_args(
        ["--log-format", "json", "--app-log-handler", "off", "--access-logfile", "-",
         "--access-logformat", "%(h)s %(r)s", "--gcp-project", "p", "--metrics-bind", ":9090", "main:app"],
        {},
    )
    assert (cfg.log_format, cfg.app_log_handler, cfg.access_logfile, cfg.access_logformat) == (
        "json", False, "-", "%(h)s %(r)s"
    )
    assert (cfg.gcp_project, cfg.metrics_host, cfg.metrics_port) == ("p", "0.0.0.0", 9090)


def test_bad_access_log_format_end_to_end():
    result = run_cli("--access-logformat", "%(h)s %(nope)s", "cli_apps:app")
    assert result.returncode == 2
    assert last_line(result.stderr) == (
        "coldbrew: error: argument --access-logformat: unknown atom '%(nope)s' "
        "(use h l u t r s m U q H b B f a T D M L p, {NAME}i, {NAME}o or {NAME}e)"
    )
    assert len(result.stderr.splitlines()) <= 2


def test_bad_telemetry_env_end_to_end():
    result = run_cli("cli_apps:app", env={"COLDBREW_METRICS_BIND": "localhost"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "coldbrew: error: COLDBREW_METRICS_BIND: missing port in 'localhost' (expected HOST:PORT, e.g. :9090)"
    ]
    result = run_cli("cli_apps:app", env={"COLDBREW_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "coldbrew: error: COLDBREW_LOG_FORMAT: invalid choice: 'xml' (choose from text, json)"
    ]


def test_main_passes_telemetry_settings_to_the_core(fake_core):
    argv = ["--log-format", "text", "--access-logfile", "-", "--metrics-bind", "127.0.0.1:9464", "cli_apps:app"]
    assert cli.main(argv) == 0
    [(app, cfg, cwd, path)] = fake_core.calls
    assert (cfg.log_format, cfg.access_logfile, cfg.metrics_host, cfg.metrics_port) == (
        "text", "-", "127.0.0.1", 9464
    )


# ---------------------------------------------------------------------------
# loader.load_app
# ---------------------------------------------------------------------------


@pytest.fixture
def apps_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(APPS))


def call(app):
    status = []
    body = app({}, lambda s, h: status.append(s))
    return status[0], b"".join(body)


def test_factory_call_with_literal_args(apps_on_path):
    app = load_app("cli_apps:create_app('prod', debug=True)")
    assert app.factory_args == ("prod", True)
    assert call(app) == ("200 OK", b"prod debug=True")


def test_factory_call_with_container_literals(apps_on_path):
    app = load_app("cli_apps:create_app(name=('a', 1), debug={'x': [None, -2.5]})")
    assert app.factory_args == (("a", 1), {"x": [None, -2.5]})


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("cli_apps:create_app(os.environ)", "'os.environ' is not a literal"),
        ("cli_apps:create_app(name())", "'name()' is not a literal"),
        ("cli_apps:create_app('a' * 3)", "is not a literal"),
        ("cli_apps:create_app(*args)", "*args is not allowed"),
        ("cli_apps:create_app(**kw)", "**kwargs is not allowed"),
    ],
)
def test_non_literal_factory_args_are_rejected(apps_on_path, spec, fragment):
    with pytest.raises(AppLoadError) as exc:
        load_app(spec)
    assert exc.value.message.startswith(f"invalid app spec {spec!r}: ")
    assert fragment in exc.value.message
    assert "\n" not in exc.value.message


def test_default_attribute_prefers_application(apps_on_path):
    assert call(load_app("cli_apps"))[1] == b"application"


def test_default_attribute_falls_back_to_app(tmp_path, monkeypatch):
    (tmp_path / "cli_only_app.py").write_text("def app(environ, start_response):\n    return [b'x']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_app("cli_only_app").__name__ == "app"


def test_default_attribute_missing(tmp_path, monkeypatch):
    (tmp_path / "cli_no_app.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError, match="module 'cli_no_app' has no attribute 'application' or 'app'"):
        load_app("cli_no_app")


def test_dotted_attribute(apps_on_path):
    assert call(load_app("cli_apps:holder.wsgi"))[1] == b"dotted"


def test_dotted_attribute_missing(apps_on_path):
    with pytest.raises(AppLoadError) as exc:
        load_app("cli_apps:holder.nope")
    assert exc.value.message == "'cli_apps:holder' has no attribute 'nope'"


def test_factory_returning_non_callable(apps_on_path):
    with pytest.raises(AppLoadError) as exc:
        load_app("cli_apps:returns_none()")
    assert exc.value.message == "app factory 'cli_apps:returns_none()' did not return a callable (got NoneType)"


def test_factory_exception_is_chained(apps_on_path):
    with pytest.raises(AppLoadError) as exc:
        load_app("cli_apps:broken_factory()")
    assert exc.value.show_traceback
    assert isinstance(exc.value.__cause__, ValueError)


def test_an_async_function_is_an_asgi_app(apps_on_path):
    from coldbrew.loader import resolve_interface

    app = load_app("cli_apps:asgi_app")
    assert resolve_interface(app) == ("asgi", "auto: an async function")
    assert resolve_interface(app, "wsgi") == ("wsgi", "--interface wsgi")


def test_an_object_with_a_coroutine_call_is_an_asgi_app(apps_on_path):
    from coldbrew.loader import resolve_interface

    app = load_app("cli_apps:asgi_instance")
    assert resolve_interface(app) == ("asgi", "auto: its __call__ is a coroutine function")
    assert resolve_interface(load_app("cli_apps:app")) == ("wsgi", "auto: a plain callable")
    assert resolve_interface(load_app("cli_apps:app"), "asgi") == ("asgi", "--interface asgi")


@pytest.mark.parametrize(
    "spec",
    [":app", "cli_apps:", "cli_apps:app[0]", "cli_apps:app()()", "cli_apps:1", "cli_apps:a b",
     "src/main:app", "my-app:app", "cli_apps:lambda: 1"],
)
def test_malformed_specs(spec):
    with pytest.raises(AppLoadError) as exc:
        load_app(spec)
    assert exc.value.message.startswith(f"invalid app spec {spec!r}: ")
    assert not exc.value.show_traceback


def test_missing_module_suggests_dropping_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AppLoadError) as exc:
        load_app("cli_nothing_here.py")
    assert exc.value.message == (
        f"module 'cli_nothing_here.py' not found in {tmp_path} or on sys.path (did you mean 'cli_nothing_here'?)"
    )


# ---------------------------------------------------------------------------
# cli.main in-process, with a fake core standing in for coldbrew._coldbrew
# ---------------------------------------------------------------------------


@pytest.fixture
def isolated(monkeypatch):
    """Undo whatever cli.main does to the process: cwd, sys.path, os.environ."""
    for name in list(os.environ):
        if name.startswith("COLDBREW_") or name in PLATFORM_ENV:
            monkeypatch.delenv(name)
    monkeypatch.chdir(APPS)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return monkeypatch


@pytest.fixture
def fake_core(isolated):
    core = types.ModuleType("coldbrew._coldbrew")
    core.__version__ = "9.9.9"
    core.calls = []
    core.logs = []
    core.raises = None
    core.bind_raises = None
    core.bound = []

    def bind(cfg):
        core.bound.append((cfg, set(sys.modules)))
        if core.bind_raises is not None:
            raise core.bind_raises
        return object()

    def serve(app, cfg, **_timings):
        core.calls.append((app, cfg, os.getcwd(), list(sys.path)))
        if core.raises is not None:
            raise core.raises

    core.bind = bind
    core.serve = serve
    core.log = lambda level, message: core.logs.append((level, message))
    core.levels = []
    core.set_log_level = core.levels.append
    isolated.setitem(sys.modules, "coldbrew._coldbrew", core)
    isolated.setattr(coldbrew, "_coldbrew", core, raising=False)
    return core


def test_main_serves_the_loaded_app_with_the_config(fake_core):
    assert cli.main(["--threads", "3", "-b", "127.0.0.1:9999", "cli_apps:app"]) == 0
    [(app, cfg, cwd, path)] = fake_core.calls
    assert call(app)[1] == b"app"
    assert isinstance(cfg, Config)
    assert (cfg.threads, cfg.host, cfg.port, cfg.workers) == (3, "127.0.0.1", 9999, 1)
    assert any(level == "info" and "loaded app" in msg for level, msg in fake_core.logs)


def test_main_applies_env_and_chdir_before_import(fake_core, tmp_path):
    name = "cli_env_probe_app"
    (tmp_path / f"{name}.py").write_text(
        "import os\nMARKER = os.environ.get('COLDBREW_TEST_MARKER')\nCWD = os.getcwd()\n"
        "def app(environ, start_response):\n    return [MARKER.encode()]\n"
    )
    sys.modules.pop(name, None)
    try:
        os.environ.pop("COLDBREW_TEST_MARKER", None)
        status = cli.main(["--chdir", str(tmp_path), "-e", "COLDBREW_TEST_MARKER=hello", f"{name}:app"])
        assert status == 0
        module = sys.modules[name]
        assert module.MARKER == "hello"
        assert module.CWD == str(tmp_path)
        [(app, cfg, cwd, path)] = fake_core.calls
        assert cwd == str(tmp_path)
        assert path[0] == str(tmp_path)
    finally:
        os.environ.pop("COLDBREW_TEST_MARKER", None)
        sys.modules.pop(name, None)


def test_main_bind_failure_exits_1(fake_core, capsys):
    fake_core.raises = OSError(errno.EADDRINUSE, "Address already in use (os error 98)")
    assert cli.main(["-b", "[::1]:8123", "cli_apps:app"]) == 1
    assert last_line(capsys.readouterr().err) == (
        "coldbrew: error: cannot listen on [::1]:8123: Address already in use"
    )


def test_main_bind_failure_without_errno(fake_core, capsys):
    fake_core.raises = OSError("failed to resolve 'nohost'")
    assert cli.main(["-b", "nohost:8123", "cli_apps:app"]) == 1
    assert last_line(capsys.readouterr().err) == (
        "coldbrew: error: cannot listen on nohost:8123: failed to resolve 'nohost'"
    )


def test_main_binds_before_importing_the_app(fake_core, capsys):
    sys.modules.pop("cli_apps", None)
    fake_core.bind_raises = OSError(errno.EADDRINUSE, "Address already in use (os error 98)")
    assert cli.main(["-b", "127.0.0.1:8123", "cli_apps:app"]) == 1
    [(cfg, modules)] = fake_core.bound
    assert "cli_apps" not in modules and "cli_apps" not in sys.modules
    assert fake_core.calls == []
    assert capsys.readouterr().err == "coldbrew: error: cannot listen on 127.0.0.1:8123: Address already in use\n"


def test_main_keyboard_interrupt_exits_0_quietly(fake_core, capsys):
    fake_core.raises = KeyboardInterrupt()
    assert cli.main(["--log-level", "warning", "cli_apps:app"]) == 0
    assert capsys.readouterr().err == ""


def test_main_does_not_serve_when_loading_fails(fake_core, capsys):
    assert cli.main(["cli_broken:app"]) == 3
    assert fake_core.calls == []
    assert last_line(capsys.readouterr().err).startswith("coldbrew: error: cannot import module 'cli_broken'")


def test_main_log_level_filters_core_logs(fake_core):
    assert cli.main(["--log-level", "error", "cli_apps:app"]) == 0
    assert fake_core.logs == []
    assert fake_core.levels == ["error"]


def test_main_sets_core_log_level_before_logging(fake_core):
    assert cli.main(["--log-level", "debug", "cli_apps:app"]) == 0
    assert fake_core.levels == ["debug"]
    assert fake_core.logs[0][0] == "debug"


def test_main_without_core_exits_1(isolated, capsys):
    isolated.setitem(sys.modules, "coldbrew._coldbrew", None)
    isolated.delattr(coldbrew, "_coldbrew", raising=False)
    assert cli.main(["--log-level", "error", "cli_apps:app"]) == 1
    assert last_line(capsys.readouterr().err).startswith(
        "coldbrew: error: the coldbrew core (coldbrew._coldbrew) is not available"
    )


def test_main_help_and_version_return_0(fake_core, capsys):
    assert cli.main(["--help"]) == 0
    assert "--graceful-timeout" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == "coldbrew 9.9.9\n"


def test_cli_import_is_light():
    code = (
        "import sys; import coldbrew.cli; "
        "heavy = {'logging', 'importlib.metadata', 'coldbrew._coldbrew', 'coldbrew.loader'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_module_exposes_version_lazily():
    assert isinstance(coldbrew.get_version(), str)
    assert config.Config is Config
    assert loader.DEFAULT_ATTRS == ("application", "app")


# ---------------------------------------------------------------------------
# Start-up cost: the fast paths must not change behaviour
# ---------------------------------------------------------------------------

import copy  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402

# Modules a plain `coldbrew MODULE:APP` start must not import.
HEAVY_MODULES = [
    "argparse", "dataclasses", "inspect", "ast", "shlex", "re", "gettext", "locale", "shutil",
    "coldbrew._config_extras",
]

# Prints the heavy modules the code imports, beyond what the interpreter had loaded.
NEW_HEAVY = (
    "import sys\n"
    "before = set(sys.modules)\n"
    "{code}\n"
    "heavy = {heavy!r}\n"
    "print(sorted((set(sys.modules) - before) & set(heavy)))\n"
)


def run_python(code, cwd=APPS, env=None):
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=str(cwd), env=clean_env(env), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def new_heavy_modules(code, heavy=HEAVY_MODULES, **kwargs):
    return run_python(NEW_HEAVY.format(code=code, heavy=heavy), **kwargs).strip()


def test_importing_the_cli_imports_no_heavy_module():
    assert new_heavy_modules("import coldbrew.cli") == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["cli_apps:app"],
        ["--bind", "127.0.0.1:9000", "--threads", "3", "cli_apps:app"],
        ["-b", "[::1]:9000", "--threads=3", "-e", "A=1", "--env=B=2", "--log-level", "WARN", "cli_apps:app"],
        ["cli_apps:app", "--response-buffer", "1.5M", "--request-buffer=64KiB", "--backlog", "16",
         "--graceful-timeout", "2.5", "--root-path", "/api/", "--chdir", "."],
        ["--log-format", "json", "--app-log-handler=off", "--access-logfile", "-", "--access-logformat",
         '%(h)s "%(r)s" %(s)s %({x-request-id}i)s', "--gcp-project", "p-1", "--metrics-bind", ":9090",
         "cli_apps:app"],
    ],
)
def test_parsing_a_simple_command_line_does_not_import_argparse(argv):
    code = (
        f"from coldbrew.config import parse\nparse({argv!r}, {{'PORT': '9999', 'COLDBREW_THREADS': '2', "
        "'K_SERVICE': 'svc', 'GOOGLE_CLOUD_PROJECT': 'proj', 'COLDBREW_ACCESS_LOGFORMAT': '%(h)s %(r)s'})"
    )
    assert new_heavy_modules(code) == "[]"


def test_cmd_args_and_env_import_shlex_but_not_argparse():
    code = (
        "from coldbrew.config import parse\n"
        "parse(['cli_apps:app'], {'COLDBREW_CMD_ARGS': \"--threads 2 -e 'A=x y'\", 'COLDBREW_ENV': 'B=1'})"
    )
    heavy = [m for m in HEAVY_MODULES if m not in ("shlex", "re")]
    assert new_heavy_modules(code, heavy=heavy) == "[]"


def test_main_with_a_plain_app_imports_no_heavy_module():
    """cli.main() from parsing to serve(), with a fake core, stays off every slow path."""
    code = (
        "import types\n"
        "core = types.ModuleType('coldbrew._coldbrew')\n"
        "core.served = []\n"
        "core.serve = lambda app, cfg, **timings: core.served.append((app, cfg))\n"
        "core.bind = lambda cfg: object()\n"
        "core.log = lambda level, message: None\n"
        "core.set_log_level = lambda level: None\n"
        "sys.modules['coldbrew._coldbrew'] = core\n"
        "from coldbrew.cli import main\n"
        "assert main(['--threads', '2', '-b', '127.0.0.1:9', 'cli_apps:app']) == 0, 'main failed'\n"
        "[(app, cfg)] = core.served\n"
        "assert app.__name__ == 'wsgi_app' and cfg.threads == 2 and cfg.port == 9, cfg\n"
        "assert main(['cli_apps:holder.wsgi']) == 0, 'main failed'\n"
    )
    assert new_heavy_modules(code) == "[]"


def test_help_still_works_through_argparse():
    assert new_heavy_modules(
        "from coldbrew.cli import main\nimport contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])",
        heavy=["argparse"],
    ) == "['argparse']"


# --- the fast command-line parser against argparse ---------------------------

FAST_ARGVS = [
    [],
    ["main:app"],
    ["  main:app  "],
    ["main:create_app('x', debug=True)"],
    ["A=B"],
    ["--bind", ":8000", "main:app"],
    ["main:app", "--bind", ":8000"],
    ["-b", "127.0.0.1:1", "-b", "[::1]:2", "main:app"],
    ["--bind=localhost", "main:app"],
    ["--bind", "[::]", "main:app"],
    ["--threads", "4", "--threads=5", "main:app"],
    ["--threads", " 7 ", "main:app"],
    ["--graceful-timeout", "0", "main:app"],
    ["--graceful-timeout=1e3", "main:app"],
    ["--graceful-timeout", "inf"[:0] + "2.50", "main:app"],
    ["--root-path", "/", "main:app"],
    ["--root-path=/a/b//", "main:app"],
    ["--response-buffer", "64 KiB", "--request-buffer", "1g", "main:app"],
    ["--response-buffer=.5M", "main:app"],
    ["--backlog", "1", "main:app"],
    ["--chdir", "/srv/app", "main:app"],
    ["--chdir", " ", "main:app"],
    ["-e", "A=1", "--env", "A=2", "-e", "URL=a=b", "--env=C=", "main:app"],
    ["--env=-X=1", "main:app"],
    ["-e", "A=1", "main:app", "-e", "B=2"],
    ["--log-level", "DEBUG", "main:app"],
    ["--log-level=warn", "main:app"],
    ["--log-level", " Error ", "main:app"],
    ["--threads", "2"],
    ["-e", "A=1"],
    ["--log-format", "JSON", "main:app"],
    ["--log-format= text ", "main:app"],
    ["--app-log-handler", "off", "--app-log-handler=Yes", "main:app"],
    ["--app-log-handler", "0", "main:app"],
    ["--access-logfile", "-", "main:app"],
    ["--access-logfile=-", "main:app"],
    ["--access-logfile", "/var/log/a b.log", "main:app"],
    ["--access-logfile=-x", "main:app"],
    ["--access-logformat", "%(h)s %(r)s", "main:app"],
    ["--access-logformat", '%(h)s "%(r)s" %({X-Id}i)s %({ID}e)s', "main:app"],
    ["--access-logformat=%(s)s %(b)s", "main:app"],
    ["--access-logformat", "no atoms at all", "main:app"],
    ["--gcp-project", "my-proj", "main:app"],
    ["--gcp-project=example.com:p", "main:app"],
    ["--metrics-bind", ":9090", "main:app"],
    ["--metrics-bind=[::1]:9090", "main:app"],
    ["--chdir", "-", "main:app"],
    ["--bind", "-", "main:app"],
    ["--preload", "main:app"],
    ["main:app", "--preload", "-w", "4", "--timeout", "30"],
    ["--workers=2", "--post-fork", "hooks:reopen", "main:app"],
    ["--warmup", "a:b", "--warmup=c.d:e", "--max-requests", "100", "main:app"],
    ["--max-requests-jitter", "0", "--health-path", "/healthz", "--cgroup-root", "/cg", "main:app"],
    ["--limit-request-line", "0", "--limit-request-fields=50", "--limit-request-field-size", "16K", "main:app"],
    ["--limit-request-body", "100M", "main:app"],
]

SLOW_ARGVS = [
    ["--help"],
    ["-h"],
    ["--version"],
    ["main:app", "--version"],
    ["--", "main:app"],
    ["main:app", "--"],
    ["-"],
    [""],
    ["   "],
    ["main:app", "other:app"],
    ["--threads"],
    ["main:app", "--threads"],
    ["--threads", "-1", "main:app"],
    ["--threads", "0", "main:app"],
    ["--threads", "x", "main:app"],
    ["--threads", "", "main:app"],
    ["--threads=", "main:app"],
    ["--root-path", "", "main:app"],
    ["--root-path=", "main:app"],
    ["--root-path", "-x", "main:app"],
    ["--root-path=-x", "main:app"],
    ["--threads", "--bind", "main:app"],
    ["--thread", "2", "main:app"],
    ["--thread=2", "main:app"],
    ["--worker", "2", "main:app"],
    ["--preload=yes", "main:app"],
    ["--workers", "0", "main:app"],
    ["--post-fork", "nocolon", "main:app"],
    ["--warmup", "a:", "main:app"],
    ["--health-path", "healthz", "main:app"],
    ["--max-requests", "-1", "main:app"],
    ["--limit-request-fields", "0", "main:app"],
    ["--limit-request-fields", "32769", "main:app"],
    ["--limit-request-body", "-1", "main:app"],
    ["--limit-request-line", "4K4", "main:app"],
    ["-b=:8000", "main:app"],
    ["-b:8000", "main:app"],
    ["-e", "-X=1", "main:app"],
    ["-eA=1", "main:app"],
    ["--env", "NOEQUALS", "main:app"],
    ["--env=", "main:app"],
    ["--bind", "host:0", "main:app"],
    ["--bind", "unix:/tmp/s", "main:app"],
    ["--log-level", "loud", "main:app"],
    ["--graceful-timeout", "nan", "main:app"],
    ["--graceful-timeout", "-1", "main:app"],
    ["--response-buffer", "1T", "main:app"],
    ["--chdir", "", "main:app"],
    ["-1", "main:app"],
    ["-x y", "main:app"],
    ["main:app", "-e"],
    ["--bind"],
    ["--log-format", "xml", "main:app"],
    ["--app-log-handler", "maybe", "main:app"],
    ["--access-logfile", "", "main:app"],
    ["--access-logfile", "-x", "main:app"],
    ["--access-logfile", "--", "main:app"],
    ["--access-logformat", "%(x)s", "main:app"],
    ["--access-logformat", "%(h", "main:app"],
    ["--access-logformat", "-%(h)s", "main:app"],
    ["--access-logformat", "", "main:app"],
    ["--gcp-project", "", "main:app"],
    ["--gcp-project", "a b", "main:app"],
    ["--metrics-bind", "localhost", "main:app"],
    ["--metrics-bind", "-", "main:app"],
    ["--metrics-bind=", "main:app"],
    ["--access-log", "-", "main:app"],
    ["-", "-"],
]


def argparse_dict(argv):
    """What argparse makes of ``argv`` (a dict in namespace order), or the error it raises."""
    try:
        return config._parse_argv(config.build_parser(), list(argv))
    except ConfigError as err:
        return ("ConfigError", err.message)
    except SystemExit as exc:
        return ("SystemExit", exc.code)


def assert_same_parse(fast, slow):
    assert fast == slow
    assert list(fast) == list(slow)  # same key order, as sources and repr depend on it
    for key in fast:
        assert type(fast[key]) is type(slow[key]), key


@pytest.mark.parametrize("argv", FAST_ARGVS)
def test_fast_parser_matches_argparse(argv, capsys):
    fast = config._parse_simple(list(argv))
    assert fast is not None, "expected the fast path to handle this command line"
    assert_same_parse(fast, argparse_dict(argv))


@pytest.mark.parametrize("argv", SLOW_ARGVS)
def test_fast_parser_leaves_the_rest_to_argparse(argv, capsys):
    assert config._parse_simple(list(argv)) is None


def test_fast_parser_matches_argparse_on_random_command_lines(capsys):
    pool = [
        "main:app", "other:app", "", " ", "-", "--", "-1", "x y", "A=1", "=1", "-X=1",
        "-b", "--bind", "--bind=:80", "--bind=", ":80", "[::1]:80", "host:0", "-b=:80",
        "--threads", "--threads=2", "3", "0", "--thread", "--threads=",
        "--graceful-timeout", "1.5", "nan", "--root-path", "/api/", "api", "--root-path=/",
        "--response-buffer", "--request-buffer=2M", "64K", "1T", "--backlog", "--chdir", "/srv",
        "-e", "--env", "--env=A=2", "--log-level", "WARN", "loud", "--log-level=debug",
        "--help", "--version", "--workers", "--preload", "--preload=1", "-w", "--timeout",
        "--warmup", "a:b", "--max-requests", "--health-path", "/h",
        "--log-format", "json", "TEXT", "--app-log-handler", "off", "--access-logfile", "--access-logfile=-",
        "--access-logformat", "%(h)s %(r)s", "%(x)s", "%(h", "--gcp-project", "p", "--metrics-bind",
        "--metrics-bind=:9090", "localhost",
        "--forwarded-allow-ips", "*", "10.0.0.0/8, ::1", "--forwarded-allow-ips=*", "--max-pending", "--keep-alive",
        "--header-timeout=0", "--body-timeout", "620",
    ]
    rng = random.Random(1234)
    fast_count = 0
    for _ in range(3000):
        argv = [rng.choice(pool) for _ in range(rng.randint(0, 6))]
        fast = config._parse_simple(list(argv))
        if fast is not None:
            fast_count += 1
            assert_same_parse(fast, argparse_dict(argv))
    assert fast_count > 100


def full_parse(argv, environ):
    try:
        return parse(argv, environ)
    except ConfigError as err:
        return ("ConfigError", err.message, err.usage)
    except SystemExit as exc:
        return ("SystemExit", exc.code)


PARSE_CASES = [
    (["main:app"], {}),
    ([], {"COLDBREW_APP": "env:app", "COLDBREW_THREADS": "4"}),
    (["--threads", "3", "main:app"], {"COLDBREW_THREADS": "2", "COLDBREW_CMD_ARGS": "--threads 5 -e A=1"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "--bind :9000 --env 'B=x y' --log-level=warning"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "--help"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "--nope"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "--threads"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "cmd:app other:app"}),
    ([], {"COLDBREW_CMD_ARGS": "cmd:app"}),
    (["-b", "host", "main:app"], {"PORT": "7000", "SCRIPT_NAME": "/x/"}),
    (["-b", "host:1", "main:app"], {"PORT": "bad"}),
    (["main:app"], {"PORT": "bad"}),
    (["main:app"], {"SCRIPT_NAME": "nope"}),
    (["--root-path", "/r", "main:app"], {"SCRIPT_NAME": "nope"}),
    (["-e", "A=3", "--chdir", "/tmp", "main:app"], {"COLDBREW_ENV": "A=1 B=2", "COLDBREW_CHDIR": "/srv"}),
    (["--threads", "0", "main:app"], {"COLDBREW_THREADS": "x"}),
    (["main:app"], {"COLDBREW_THREADS": "x"}),
    (["--threads", "4"], {}),
    (["--version"], {"COLDBREW_THREADS": "x"}),
    (["main:app"], {"K_SERVICE": "svc", "GOOGLE_CLOUD_PROJECT": "proj"}),
    (["--log-format", "text", "--gcp-project", "", "main:app"], {"K_SERVICE": "svc", "GOOGLE_CLOUD_PROJECT": "proj"}),
    (["--access-logfile", "-", "main:app"], {"COLDBREW_ACCESS_LOGFORMAT": '%(h)s "%(r)s"'}),
    (["--access-logformat", "%(h)s %(r)s", "main:app"], {"COLDBREW_CMD_ARGS": "--access-logfile - --log-format json"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "--access-logformat '-%(h)s' --metrics-bind :9090 --app-log-handler off"}),
    (["main:app"], {"COLDBREW_CMD_ARGS": "--access-logformat '%(x)s'"}),
    (["--metrics-bind", "localhost", "main:app"], {"PORT": "9090"}),
    (["main:app"], {"COLDBREW_METRICS_BIND": "localhost"}),
    (["main:app"], {"GOOGLE_CLOUD_PROJECT": "a b"}),
    (["--access-logformat", "%(nope)s", "main:app"], {}),
    (["main:app"], {"K_SERVICE": "svc", "FORWARDED_ALLOW_IPS": "10.0.0.1"}),
    (["--forwarded-allow-ips", "*", "main:app"], {"FORWARDED_ALLOW_IPS": "bad"}),
    (["main:app"], {"FORWARDED_ALLOW_IPS": "bad"}),
    (["--forwarded-allow-ips", "10.0.0.0/99", "main:app"], {}),
]


@pytest.mark.parametrize("argv, environ", PARSE_CASES)
def test_parse_gives_the_same_result_with_and_without_the_fast_path(argv, environ, monkeypatch, capsys):
    fast = full_parse(list(argv), dict(environ))
    fast_out = capsys.readouterr()
    monkeypatch.setattr(config, "_parse_simple", lambda args: None)
    slow = full_parse(list(argv), dict(environ))
    assert capsys.readouterr() == fast_out
    assert fast == slow
    assert repr(fast) == repr(slow)
    if isinstance(fast, config.Invocation):
        assert list(fast.sources) == list(slow.sources)


# --- sizes without re --------------------------------------------------------


def old_split_size(text):
    match = re.fullmatch(config._SIZE_PATTERN, text, re.ASCII | re.IGNORECASE)
    return (match.group(1), match.group(2)) if match else None


def test_size_parser_matches_the_regular_expression():
    alphabet = "0123456789.. \t\n\x0b\x0c\rkKmMgGbBiItTx\u00a0\u212a\u0131\u017f\u0661-+e_"
    rng = random.Random(99)
    samples = ["", ".", "1.", ".5", "1..", "1 .5", " 1", "1 ", "1\u00a0K", "1\u212a", "1 k b", "12kib"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7))) for _ in range(20000)]
    for text in samples:
        assert config._split_size(text) == old_split_size(text), repr(text)


# --- Config and Invocation -----------------------------------------------------


def test_config_records_compare_and_print_by_field():
    ours = Config("m:app", "::1", 1, 4)
    assert ours == Config("m:app", "::1", 1, 4)
    assert ours != Config("m:app", "::1", 1, 5)
    assert ours.__eq__(object()) is NotImplemented
    assert repr(ours).startswith("Config(app_spec='m:app', host='::1', port=1, threads=4, ")
    with pytest.raises(TypeError):
        hash(ours)
    assert copy.deepcopy(ours) == ours
    assert pickle.loads(pickle.dumps(ours)) == ours


def test_invocation_defaults_are_fresh_containers():
    cfg = Config("m:app")
    first, second = config.Invocation(cfg), config.Invocation(cfg)
    assert (first.env, first.sources) == ([], {})
    assert first.env is not second.env and first.sources is not second.sources
    assert first == config.Invocation(cfg, None, [], {})


# --- loader: ast and inspect only when needed ---------------------------------


ATTR_SPECS = [
    "m", "m:app", "m:a.b.c", "m:_", "m:match", "m:case", "m:type", "m:__debug__", "m:print",
    "m: app ", "m:a . b", "m:a.\nb", "m:None", "m:True", "m:a.None", "m:lambda", "m:a.class", "m:async",
    "m:await", "m:a..b", "m:a.", "m:.a", "m:1a", "m:a-b", "m:\ufb01le", "m:caf\u00e9", "m:a\x00",
    "m:create_app()", "m:a.b(1, x='y')", "m:" + ".".join(["a"] * 31), "m:" + ".".join(["a"] * 32),
    "m:" + ".".join(["a"] * 40), "m:" + ".".join(["a"] * 5000),
]


def spec_or_error(text):
    try:
        spec = loader.parse_app_spec(text)
    except AppLoadError as err:
        return ("AppLoadError", err.message, err.show_traceback)
    except Exception as err:  # e.g. RecursionError from ast on a huge chain
        return (type(err).__name__,)
    return (spec.text, spec.module, spec.attrs, spec.args, spec.kwargs, spec.is_call)


@pytest.mark.parametrize("text", ATTR_SPECS, ids=range(len(ATTR_SPECS)))
def test_app_spec_without_ast_matches_ast(text, monkeypatch):
    fast = spec_or_error(text)
    monkeypatch.setattr(loader, "_plain_dotted_names", lambda attr: None)
    assert fast == spec_or_error(text)


def test_plain_dotted_names_are_parsed_without_ast():
    assert new_heavy_modules(
        "from coldbrew.loader import parse_app_spec\n"
        "assert parse_app_spec('m:app').attrs == ('app',)\n"
        "assert parse_app_spec('m:a.b_c.D1').attrs == ('a', 'b_c', 'D1')\n"
        "assert parse_app_spec('m').attrs == ()",
        heavy=["ast", "inspect", "re"],
    ) == "[]"


def test_async_check_without_inspect_matches_inspect():
    """loader._looks_async, run before anything imports inspect, against the inspect-based check."""
    code = '''
import functools, sys
from coldbrew import loader
assert "inspect" not in sys.modules

def plain(environ, start_response): pass
async def coroutine(environ, start_response): pass
def generator(environ, start_response): yield b""
async def async_generator(environ, start_response): yield b""
marked = lambda environ, start_response: None
marked._is_coroutine_marker = object()
class AsyncCallable:
    async def __call__(self, environ, start_response): pass
class Callable:
    def __call__(self, environ, start_response): pass
class Method:
    async def app(self, environ, start_response): pass
candidates = [plain, coroutine, generator, async_generator, lambda e, s: None, marked,
              AsyncCallable(), Callable(), Method().app, functools.partial(coroutine), print, Callable]
fast = [loader._looks_async(c) for c in candidates[:5]]
assert "inspect" not in sys.modules, "the plain functions needed inspect"
fast += [loader._looks_async(c) for c in candidates[5:]]

import inspect
def reference(obj):
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)
    return not inspect.isfunction(obj) and inspect.iscoroutinefunction(call)
assert inspect.CO_COROUTINE == loader._CO_COROUTINE
print(fast == [reference(c) for c in candidates], fast)
'''
    out = run_python(code)
    assert out.startswith("True "), out
    assert out.strip() == "True [False, True, False, False, False, False, True, False, True, True, False, False]"


def test_build_parser_gives_an_argparse_parser():
    import argparse as argparse_module

    assert isinstance(config.build_parser(), argparse_module.ArgumentParser)

def test_converters_still_raise_argparse_errors():
    import argparse as argparse_module

    for converter, text in [(config.parse_size, "1T"), (config.parse_bind, "h:0"), (config.parse_seconds, "inf"),
                            (config.parse_positive_int, "0"), (config.parse_env_pair, "X"),
                            (config.parse_log_format, "xml"), (config.parse_on_off, "maybe"),
                            (config.parse_logfile, ""), (config.parse_access_logformat, "%(x)s"),
                            (config.parse_gcp_project, "a b"), (config.parse_metrics_bind, "host")]:
        with pytest.raises(argparse_module.ArgumentTypeError):
            converter(text)
