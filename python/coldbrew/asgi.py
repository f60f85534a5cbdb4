"""The ASGI event loop of one worker, and the lifespan protocol.

The Rust core starts one thread per worker that calls :func:`run_loop`. Requests reach the
loop through the bridge's eventfd; :meth:`Bridge.drain` turns each into a task running
:func:`_run_http`. Nothing here runs per request but that coroutine.
"""

import asyncio

from coldbrew import _coldbrew
from coldbrew.cloud_logging import current_trace


#: ``(function, text)`` of the async --warmup functions, awaited on the loop before the
#: lifespan startup (set by the command line after the app is loaded).
WARMUPS = []

# What Bridge.drain returns besides 0.
_STOPPED = 1
_START_BEAT = 2


def new_event_loop(kind):
    """An event loop of ``kind`` (auto, asyncio or uvloop) and the name of what was chosen."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("--loop uvloop: uvloop is not installed (pip install uvloop)")
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def _traceback(exc):
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


async def _run_http(app, scope, cycle, trace=None):
    if trace is not None:
        # This task's own context: the app's log records made while it runs carry the trace.
        current_trace.set(trace)
    try:
        await app(scope, cycle.receive, cycle.send)
    except BaseException as exc:  # noqa: BLE001 - every way out of the app is answered
        cycle.failed(exc, _traceback(exc))
        if not isinstance(exc, Exception):
            raise
    else:
        cycle.returned()


async def _warm_up():
    """Awaits the async --warmup functions together; None, or why one failed."""
    import time

    started = time.perf_counter()
    results = await asyncio.gather(*(function() for function, _ in WARMUPS), return_exceptions=True)
    for (_, text), result in zip(WARMUPS, results):
        if isinstance(result, BaseException):
            return f"--warmup {text} raised {type(result).__name__}: {result}\n{_traceback(result)}"
    elapsed = (time.perf_counter() - started) * 1000
    _coldbrew.log("info", f"async warm-up ({len(WARMUPS)} function(s)) took {elapsed:.0f} ms on the event loop")
    return None


def task_stack(task):
    """Where ``task`` is suspended: each coroutine of its chain of awaits, outermost first."""
    import traceback

    frames = []
    coro = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "".join(traceback.StackSummary.extract(frames).format()).rstrip()


class Lifespan:
    """The lifespan protocol, as ``--lifespan`` asks: auto, on or off."""

    def __init__(self, app, mode):
        self.app = app
        self.mode = mode
        self.state = {}
        self.supported = mode != "off"
        self._to_app = None
        self._from_app = None
        self._task = None

    async def _receive(self):
        return await self._to_app.get()

    async def _send(self, message):
        await self._from_app.put(message)

    async def _main(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001
            await self._from_app.put({"type": "_raised", "exc": exc})
            if not isinstance(exc, Exception):
                raise
        else:
            await self._from_app.put({"type": "_returned"})

    async def startup(self):
        """None when the app is ready, else the reason it is not."""
        if not self.supported:
            return None
        self._to_app = asyncio.Queue()
        self._from_app = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            return None
        if kind == "lifespan.startup.failed":
            return f"lifespan startup failed: {message.get('message', '')}".rstrip(": ")
        self.supported = False
        if kind == "_raised":
            exc = message["exc"]
            if self.mode == "on":
                return f"lifespan startup raised:\n{_traceback(exc)}"
            _coldbrew.log(
                "info",
                f"the app does not support the ASGI lifespan protocol ({type(exc).__name__}: {exc}); "
                "serving without it",
            )
            return None
        if self.mode == "on":
            return "the app returned from the lifespan scope without completing startup"
        _coldbrew.log("info", "the app returned from the lifespan scope; serving without it")
        return None

    async def shutdown(self):
        if not self.supported:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        kind = message["type"]
        if kind == "lifespan.shutdown.failed":
            _coldbrew.log("error", f"lifespan shutdown failed: {message.get('message', '')}")
        elif kind == "_raised":
            _coldbrew.log("error", f"lifespan shutdown raised:\n{_traceback(message['exc'])}")


def run_loop(bridge, loop_kind, lifespan_mode):
    """Runs the worker's event loop until the server stops."""
    try:
        loop, chosen = new_event_loop(loop_kind)
    except RuntimeError as err:
        bridge.started(str(err))
        return
    asyncio.set_event_loop(loop)
    try:
        failure = loop.run_until_complete(_warm_up()) if WARMUPS else None
        if failure is not None:
            bridge.started(failure)
            return
        lifespan = Lifespan(bridge.app, lifespan_mode)
        try:
            failure = loop.run_until_complete(lifespan.startup())
        except BaseException as exc:  # noqa: BLE001
            failure = f"lifespan startup raised:\n{_traceback(exc)}"
        if failure is not None:
            bridge.started(failure)
            return
        bridge.prepare(loop, _run_http, lifespan.state if lifespan.supported else None)
        stopped = loop.create_future()
        period = bridge.beat_period

        def beat():
            if bridge.beat():
                loop.call_later(period, beat)

        def on_wake():
            outcome = bridge.drain()
            if outcome == _START_BEAT:
                loop.call_later(period, beat)
            elif outcome == _STOPPED and not stopped.done():
                stopped.set_result(None)

        loop.add_reader(bridge.fileno(), on_wake)
        _coldbrew.log("debug", f"event loop: {chosen}")
        bridge.started(None)
        loop.run_until_complete(stopped)
        loop.remove_reader(bridge.fileno())
        budget = bridge.shutdown_budget
        try:
            loop.run_until_complete(asyncio.wait_for(lifespan.shutdown(), budget))
        except asyncio.TimeoutError:
            _coldbrew.log("warning", f"lifespan shutdown did not finish within {budget:.1f} s")
        _cancel_remaining(loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _cancel_remaining(loop):
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def loop_name(kind):
    """What ``--loop kind`` resolves to, without making a loop."""
    if kind == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if kind == "uvloop":
            return "uvloop"  # new_event_loop says it is missing
        return "asyncio"
    return "uvloop"


__all__ = ["run_loop", "new_event_loop", "loop_name", "Lifespan"]
