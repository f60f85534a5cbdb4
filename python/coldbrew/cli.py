"""The ``coldbrew`` command: parse the configuration, load the app, serve it.

Exit status:

* 0 -- clean shutdown, ``--help``, ``--version``, or Ctrl-C (KeyboardInterrupt)
* 1 -- the server could not start or failed (e.g. cannot listen on the address)
* 2 -- invalid configuration, from the command line or the environment
* 3 -- the app could not be loaded (import error, missing attribute, ...)

Every failure ends with one line on stderr starting with ``coldbrew: error: ``.
"""

import os
import sys

from coldbrew.config import CMD_ARGS_ENV, USAGE, ConfigError, parse

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_APP_ERROR = 3

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _error(message):
    print(f"coldbrew: error: {message}", file=sys.stderr, flush=True)


def _core():
    """The compiled core module, imported on first use."""
    import importlib

    return importlib.import_module("coldbrew._coldbrew")


def _log(config, level, message):
    """Log through the Rust core when it offers ``log``, else to stderr."""
    if _LEVELS[level] < _LEVELS.get(config.log_level, 20):
        return
    try:
        core_log = _core().log
    except (ImportError, AttributeError):
        core_log = None
    if core_log is not None:
        core_log(level, message)
    else:
        print(f"coldbrew: {level}: {message}", file=sys.stderr, flush=True)


def _set_core_log_level(config):
    """Tell the core the log level before the first log line, if it lets us."""
    try:
        set_level = _core().set_log_level
    except (ImportError, AttributeError):
        return
    set_level(config.log_level)
    set_format = getattr(_core(), "set_log_format", None)
    if set_format is not None:
        set_format(getattr(config, "log_format", "text"), getattr(config, "gcp_project", ""))


def _display_address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _apply_environment(invocation):
    """Apply --env, then --chdir, then put the working directory first on sys.path."""
    for name, value in invocation.env:
        os.environ[name] = value
    if invocation.chdir is not None:
        try:
            os.chdir(invocation.chdir)
        except OSError as err:
            source = invocation.sources.get("chdir", "--chdir")
            raise ConfigError(f"{source}: cannot change directory to {invocation.chdir!r}: {err.strerror or err}") from None
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)


# In a worker process, the link to the supervisor, which reports why this worker could not start.
_worker_link = None


def _report_load_error(err):
    from coldbrew.loader import print_traceback

    show = err.show_traceback and err.__cause__ is not None
    if _worker_link is not None:
        # The supervisor prints it, once: every worker imports the same app, and N workers
        # printing the same traceback at once would interleave them.
        traceback = None
        if show:
            import io

            text = io.StringIO()
            print_traceback(err.__cause__, file=text)
            traceback = text.getvalue()
        _worker_link.report_failure(err.message, traceback)
        return
    if show:
        print_traceback(err.__cause__)
    _error(err.message)


def _load(config):
    """Import the app; returns (app, seconds), or (None, 0) after reporting why not."""
    import time

    from coldbrew.loader import AppLoadError, load_app, resolve_interface

    _log(config, "debug", f"loading {config.app_spec!r} from {os.getcwd()}")
    started = time.perf_counter()
    try:
        app = load_app(config.app_spec)
    except AppLoadError as err:
        _report_load_error(err)
        return None, 0.0
    elapsed = time.perf_counter() - started
    config.interface, why = resolve_interface(app, config.interface)
    config.interface_reason = why
    _log(config, "info", f"loaded app {config.app_spec!r} in {elapsed * 1000:.0f} ms")
    return app, elapsed


def _warm_up(config):
    """Run the --warmup functions in parallel threads; returns seconds, or None on failure."""
    if not config.warmup:
        return 0.0
    import threading
    import time

    from coldbrew.loader import AppLoadError, call_hook, load_hook

    started = time.perf_counter()
    try:
        # Imported one after the other here: the import lock would serialise them anyway.
        functions = [(load_hook(text, "--warmup"), text) for text in config.warmup]
    except AppLoadError as err:
        _report_load_error(err)
        return None
    failures = []
    import inspect

    if config.interface == "asgi":
        # An async warm-up runs on the worker's own event loop, before the lifespan startup:
        # what it makes (clients, pools) belongs to the loop the requests run on.
        from coldbrew import asgi

        asgi.WARMUPS[:] = [item for item in functions if inspect.iscoroutinefunction(item[0])]
        functions = [item for item in functions if not inspect.iscoroutinefunction(item[0])]
        if not functions:
            return time.perf_counter() - started

    def warm(function, text):
        try:
            if inspect.iscoroutinefunction(function):
                # A WSGI app has no loop: the coroutine gets one of its own, in its thread.
                import asyncio

                call_hook(lambda: asyncio.run(function()), text, "--warmup")
            else:
                call_hook(function, text, "--warmup")
        except AppLoadError as err:
            failures.append(err)

    threads = [
        threading.Thread(target=warm, args=item, name=f"coldbrew-warmup-{i}", daemon=True)
        for i, item in enumerate(functions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        _report_load_error(failures[0])
        return None
    elapsed = time.perf_counter() - started
    _log(config, "info", f"warm-up ({len(functions)} function(s)) took {elapsed * 1000:.0f} ms")
    return elapsed


def _post_fork(config):
    """Call --post-fork in a new worker; returns False after reporting a failure."""
    if not config.post_fork:
        return True
    from coldbrew.loader import AppLoadError, call_hook, load_hook

    try:
        call_hook(load_hook(config.post_fork, "--post-fork"), config.post_fork, "--post-fork")
    except AppLoadError as err:
        _report_load_error(err)
        return False
    return True


def _started():
    import coldbrew

    return coldbrew.STARTED


def _serving_errors(config, action):
    """Run ``action()`` and turn the core's exceptions into an exit status."""
    try:
        result = action()
    except ValueError as err:
        _error(str(err))
        return EXIT_CONFIG_ERROR
    except RuntimeError as err:
        _error(str(err))
        return EXIT_SERVER_ERROR
    except OSError as err:
        address = _display_address(config.host, config.port)
        reason = os.strerror(err.errno) if err.errno else (err.strerror or str(err))
        _error(f"cannot listen on {address}: {reason}")
        return EXIT_SERVER_ERROR
    return EXIT_OK if result is None else result


def _size_workers(config):
    """Fill in ``config.workers`` when it was not given, and say why in ``workers_reason``."""
    if config.workers is not None:
        source = config.workers_reason
        if not source or source.startswith("argument") or source.startswith(CMD_ARGS_ENV):
            source = "--workers"
        config.workers_reason = f"set by {source}"
        return None
    probe = getattr(_core(), "container_resources", None)
    if probe is None:
        config.workers, config.workers_reason = 1, "default"
        return None
    resources = probe(config.cgroup_root, os.environ.get("WEB_CONCURRENCY"))
    config.workers = resources["workers"]
    config.workers_reason = resources["workers_reason"]
    return resources


def _exit_on_signal(signum, frame):
    raise SystemExit(EXIT_OK)


def _supervised(config):
    """Whether a supervisor process runs the workers.

    One worker is one process, unless recycling needs someone to start the replacement, or
    coldbrew is PID 1 and so must reap orphans it did not start: reaping them in the process
    that runs the app would steal exit statuses from the app's own subprocesses.
    """
    return config.workers > 1 or config.max_requests > 0 or os.getpid() == 1


def run(invocation):
    """Apply the invocation, load the app and serve it; returns the exit status."""
    config = invocation.config
    try:
        _apply_environment(invocation)
    except ConfigError as err:
        _error(err.message)
        return EXIT_CONFIG_ERROR

    try:
        core = _core()
        serve = core.serve
    except (ImportError, AttributeError) as err:
        _error(f"the coldbrew core (coldbrew._coldbrew) is not available: {err}")
        return EXIT_SERVER_ERROR

    _set_core_log_level(config)
    try:
        _size_workers(config)
    except ValueError as err:
        _error(str(err))
        return EXIT_CONFIG_ERROR
    _log(config, "debug", f"{config}")
    if getattr(config, "log_format", "text") == "json" and getattr(config, "app_log_handler", True):
        # Before the app's import, so that an app calling logging.basicConfig() finds the root
        # logger configured and does not add a second, plain-text handler.
        from coldbrew import cloud_logging

        cloud_logging.install(config.log_level)

    # Bound, not listening, before anything of the app's is imported: a port in use is then
    # reported at once, whether one process serves or a supervisor runs the workers.
    sockets = _serving_errors(config, lambda: core.bind(config))
    if isinstance(sockets, int):
        return sockets

    app = None
    import_seconds = 0.0
    worker = None
    if _supervised(config):
        if os.getpid() == 1:
            # PID 1 never gets a signal whose action is the default: until the supervisor takes
            # TERM and QUIT over, a stop asked for during a long --preload import would be lost.
            import signal

            for signum in (signal.SIGTERM, signal.SIGQUIT):
                signal.signal(signum, _exit_on_signal)
        if config.preload:
            app, import_seconds = _load(config)
            if app is None:
                return EXIT_APP_ERROR
            import gc

            # Objects that exist now move to a generation the collector never visits, so it
            # does not write to (and un-share) the pages the workers inherit.
            gc.freeze()
        worker = _serving_errors(config, lambda: core.supervise(config, sockets, _started()))
        if isinstance(worker, int):
            return worker  # the supervisor could not start
        if isinstance(worker, tuple):
            status, failure, traceback = worker  # the supervisor is done
            if traceback:
                sys.stderr.write(traceback)
            if failure:
                _error(failure)
            return status
        # From here on this is a worker process.
        global _worker_link
        _worker_link = worker
        if not _post_fork(config):
            return EXIT_APP_ERROR
    if app is None:
        app, import_seconds = _load(config)
        if app is None:
            return EXIT_APP_ERROR
    warmup_seconds = _warm_up(config)
    if warmup_seconds is None:
        return EXIT_APP_ERROR
    timings = (import_seconds, warmup_seconds)
    if worker is None:
        return _serving_errors(
            config, lambda: serve(app, config, sockets=sockets, timings=timings, started=_started())
        )
    return _serving_errors(config, lambda: serve(app, config, worker=worker, timings=timings))


def main(argv=None):
    """Entry point of the ``coldbrew`` command; returns the exit status."""
    try:
        try:
            invocation = parse(argv, os.environ)
        except ConfigError as err:
            if err.usage:
                print(f"usage: {USAGE}", file=sys.stderr)
            _error(err.message)
            return EXIT_CONFIG_ERROR
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        return run(invocation)
    except KeyboardInterrupt:
        return EXIT_OK
