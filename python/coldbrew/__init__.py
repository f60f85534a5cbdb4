"""coldbrew: a Python WSGI application server with a Rust I/O core.

Importing this package is cheap: the compiled core, ``coldbrew._coldbrew``,
is imported only when something needs it.
"""

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
