"""Finding the WSGI application named by an app spec such as ``main:app``.

Spec grammar: ``MODULE[:ATTR]`` where MODULE is a dotted module name and ATTR
is one of

* a name: ``app``
* a dotted attribute path: ``app.wsgi``
* a factory call with literal arguments: ``create_app('prod', debug=True)``
  (the callee may itself be a dotted path).

Without ``:ATTR`` the module's ``application`` is used, else its ``app``.
Factory arguments are evaluated with :func:`ast.literal_eval`, so nothing in a
spec is executed as code.

Every failure raises :class:`AppLoadError`; see its docstring.

For a fast start, ``ast`` is imported only for an ATTR that is not a plain
dotted name, and ``inspect`` only for an app that is not a plain function.
"""

import os
import sys

DEFAULT_ATTRS = ("application", "app")

_SPEC_HELP = (
    "expected MODULE[:ATTR], where ATTR is a name, a dotted path, or a factory "
    "call with literal arguments such as create_app('prod')"
)


class AppLoadError(Exception):
    """The app could not be loaded. ``str(err)`` is one line, without prefix.

    When ``show_traceback`` is true the failure came from the app's own code
    (importing its module or calling its factory) and ``__cause__`` holds the
    exception whose traceback is worth showing.
    """

    def __init__(self, message, show_traceback=False):
        super().__init__(message)
        self.message = message
        self.show_traceback = show_traceback


class AppSpec:
    """A parsed app spec: module name, attribute path, optional factory call."""

    __slots__ = ("text", "module", "attrs", "args", "kwargs", "is_call")

    def __init__(self, text, module, attrs, args=(), kwargs=None, is_call=False):
        self.text = text
        self.module = module
        self.attrs = attrs  # tuple of names; empty means "use DEFAULT_ATTRS"
        self.args = args
        self.kwargs = kwargs or {}
        self.is_call = is_call

    def __repr__(self):
        return f"AppSpec({self.text!r})"


def _malformed(text, detail=_SPEC_HELP):
    return AppLoadError(f"invalid app spec {text!r}: {detail}")


def _dotted_names(node):
    """('a', 'b', 'c') for the expression a.b.c, or None if it is anything else."""
    import ast

    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return tuple(reversed(names))


def _literal(node, text, attr_source):
    import ast

    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        segment = ast.get_source_segment(attr_source, node) or ast.unparse(node)
        raise _malformed(
            text,
            f"factory argument {segment!r} is not a literal "
            "(use strings, numbers, tuples, lists, dicts, sets, True, False or None)",
        ) from None


_MAX_PLAIN_NAMES = 32


def _plain_dotted_names(attr):
    """('a', 'b') for an ATTR such as ``a.b`` that ast would parse to exactly those names.

    Only a few ASCII names that are not keywords qualify (ast NFKC-normalizes
    other identifiers, and gives up on very long chains with RecursionError);
    for anything else this returns None and the caller parses ``attr`` with ast.
    """
    if not attr.isascii() or attr.count(".") >= _MAX_PLAIN_NAMES:
        return None
    names = tuple(attr.split("."))
    for name in names:
        if not name.isidentifier():
            return None
    from keyword import iskeyword

    for name in names:
        if iskeyword(name):
            return None
    return names


def parse_app_spec(text):
    """Parse ``MODULE[:ATTR]`` into an :class:`AppSpec` without importing anything."""
    module, sep, attr = text.partition(":")
    module = module.strip()
    attr = attr.strip()
    if not module:
        raise _malformed(text, "missing MODULE before ':'")
    if not all(part.isidentifier() for part in module.split(".")):
        if "/" in module or "\\" in module:
            detail = f"{module!r} is a path, not a module name (use --chdir DIR and give the module name)"
        else:
            detail = f"{module!r} is not a valid module name"
        raise _malformed(text, detail)
    if not sep:
        return AppSpec(text, module, ())
    if not attr:
        raise _malformed(text, "missing ATTR after ':'")
    names = _plain_dotted_names(attr)
    if names is not None:
        return AppSpec(text, module, names)

    import ast

    try:
        node = ast.parse(attr, mode="eval").body
    except (SyntaxError, ValueError):
        raise _malformed(text) from None

    if not isinstance(node, ast.Call):
        names = _dotted_names(node)
        if names is None:
            raise _malformed(text)
        return AppSpec(text, module, names)

    names = _dotted_names(node.func)
    if names is None:
        raise _malformed(text)
    args = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise _malformed(text, "*args is not allowed in a factory call")
        args.append(_literal(arg, text, attr))
    kwargs = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _malformed(text, "**kwargs is not allowed in a factory call")
        kwargs[keyword.arg] = _literal(keyword.value, text, attr)
    return AppSpec(text, module, names, tuple(args), kwargs, is_call=True)


def _exception_line(exc):
    """'ZeroDivisionError: division by zero', kept to a single line."""
    message = str(exc).strip()
    if isinstance(exc, SystemExit):
        message = repr(exc.code)
    first = message.splitlines()[0] if message else ""
    if first != message:
        first += " ..."
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def _is_missing(exc, module):
    """True if ``exc`` says ``module`` itself (or a parent package) does not exist."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return False
    return module == exc.name or module.startswith(exc.name + ".")


def _import(spec):
    import importlib

    try:
        return importlib.import_module(spec.module)
    except (Exception, SystemExit) as exc:
        if _is_missing(exc, spec.module):
            hint = ""
            if spec.module.endswith(".py"):
                hint = f" (did you mean {spec.module[:-3]!r}?)"
            raise AppLoadError(
                f"module {spec.module!r} not found in {os.getcwd()} or on sys.path{hint}"
            ) from None
        raise AppLoadError(
            f"cannot import module {spec.module!r}: {_exception_line(exc)}", show_traceback=True
        ) from exc


def _resolve(spec, module_obj):
    """Follow the attribute path; returns (object, display name)."""
    if not spec.attrs:
        for name in DEFAULT_ATTRS:
            if hasattr(module_obj, name):
                return getattr(module_obj, name), f"{spec.module}:{name}"
        raise AppLoadError(
            f"module {spec.module!r} has no attribute {DEFAULT_ATTRS[0]!r} or {DEFAULT_ATTRS[1]!r} "
            f"(name the app: {spec.module}:ATTR)"
        )
    obj = module_obj
    for i, name in enumerate(spec.attrs):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            if i == 0:
                raise AppLoadError(f"module {spec.module!r} has no attribute {name!r}") from None
            owner = f"{spec.module}:{'.'.join(spec.attrs[:i])}"
            raise AppLoadError(f"{owner!r} has no attribute {name!r}") from None
    return obj, f"{spec.module}:{'.'.join(spec.attrs)}"


# inspect.CO_COROUTINE: the code flag of an ``async def`` function (0x80 since 3.5).
_CO_COROUTINE = 0x80
_FunctionType = type(_exception_line)


def _looks_async(obj):
    if (
        type(obj) is _FunctionType
        and "inspect" not in sys.modules
        and getattr(obj, "_is_coroutine_marker", None) is None
    ):
        # A plain function, the usual WSGI app: what inspect would answer,
        # without importing it. (Python 3.12+ inspect also honours a marker
        # set by inspect.markcoroutinefunction(), which needs inspect imported
        # and leaves the attribute checked above.)
        return bool(obj.__code__.co_flags & _CO_COROUTINE)
    import inspect

    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)
    return not inspect.isfunction(obj) and inspect.iscoroutinefunction(call)


def load_app(spec):
    """Import and return the app (a WSGI or ASGI callable) named by ``spec`` (a string or AppSpec).

    The module is imported relative to sys.path as it stands; the CLI puts the
    working directory first. Raises :class:`AppLoadError`.
    """
    if not isinstance(spec, AppSpec):
        spec = parse_app_spec(spec)
    module_obj = _import(spec)
    obj, name = _resolve(spec, module_obj)

    if spec.is_call:
        if not callable(obj):
            raise AppLoadError(f"factory {name!r} is not callable (got {type(obj).__name__})")
        try:
            obj = obj(*spec.args, **spec.kwargs)
        except (Exception, SystemExit) as exc:
            raise AppLoadError(
                f"app factory {spec.text!r} raised {_exception_line(exc)}", show_traceback=True
            ) from exc
        if not callable(obj):
            raise AppLoadError(
                f"app factory {spec.text!r} did not return a callable (got {type(obj).__name__})"
            )
        name = spec.text
    elif not callable(obj):
        raise AppLoadError(f"{name!r} is not callable (got {type(obj).__name__})")

    return obj


def resolve_interface(app, requested="auto"):
    """``(interface, why)`` for ``app`` under ``--interface requested``."""
    if requested == "asgi":
        return "asgi", "--interface asgi"
    if requested == "wsgi":
        return "wsgi", "--interface wsgi"
    if _looks_async(app):
        import inspect

        what = "an async function" if inspect.iscoroutinefunction(app) else "its __call__ is a coroutine function"
        return "asgi", f"auto: {what}"
    return "wsgi", "auto: a plain callable"


def print_traceback(exc, file=None):
    """Print ``exc``'s traceback, leaving out the frames of coldbrew's loader and importlib."""
    import traceback

    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename == __file__ or filename.startswith("<frozen importlib") or (
            os.path.basename(os.path.dirname(filename)) == "importlib"
            and os.path.basename(filename) == "__init__.py"
        ):
            tb = tb.tb_next
            continue
        break
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__, file=file or sys.stderr)


def load_hook(text, what):
    """Import the function named by ``text`` (MODULE:FUNCTION) for ``what`` (``--warmup``...)."""
    module, _, attrs = text.partition(":")
    spec = AppSpec(text, module, tuple(attrs.split(".")))
    try:
        obj, name = _resolve(spec, _import(spec))
    except AppLoadError as err:
        raise AppLoadError(f"{what} {text}: {err.message}", err.show_traceback) from err.__cause__
    if not callable(obj):
        raise AppLoadError(f"{what} {text}: {name!r} is not callable (got {type(obj).__name__})")
    return obj


def call_hook(function, text, what):
    """Call ``function()``; its exception becomes an AppLoadError that shows the traceback."""
    try:
        function()
    except (Exception, SystemExit) as exc:
        raise AppLoadError(f"{what} {text} raised {_exception_line(exc)}", show_traceback=True) from exc
