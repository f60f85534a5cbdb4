"""coldbrew: a Python WSGI application server with a Rust I/O core.

Importing this package is cheap: the compiled core, ``coldbrew._coldbrew``,
is imported only when something needs it.
"""

from time import monotonic as _monotonic

# When the interpreter began running coldbrew: the `coldbrew` command and `python -m coldbrew`
# both import this package first. The startup line's "port open N ms after coldbrew started"
# counts from here. The process's start time in /proc would not do: it is when the process was
# forked, and a start-up script ending in `exec coldbrew` is the same process, forked before
# all the script did. What this misses is the interpreter's own start-up before this line.
STARTED = _monotonic()

__all__ = ["get_version"]


def get_version():
    """The version of the compiled core, or "unknown" if it cannot be imported."""
    try:
        from coldbrew import _coldbrew
    except ImportError:
        return "unknown"
    return str(getattr(_coldbrew, "__version__", "unknown"))


def __getattr__(name):
    if name == "__version__":
        return get_version()
    raise AttributeError(f"module 'coldbrew' has no attribute {name!r}")
