"""Command-line and environment configuration for coldbrew.

Parsing is kept apart from loading: :func:`parse_args` turns an argv list and
an environment mapping into a :class:`Config` without touching the process
(no chdir, no imports of the app, no os.environ writes).

Sources, lowest to highest precedence:

1. built-in defaults (``PORT``, ``SCRIPT_NAME``, ``K_SERVICE``,
   ``GOOGLE_CLOUD_PROJECT`` and ``FORWARDED_ALLOW_IPS`` feed the defaults of
   ``--bind``, ``--root-path``, ``--log-format``, ``--gcp-project`` and
   ``--forwarded-allow-ips``);
2. ``COLDBREW_<OPTION>`` environment variables, dashes as underscores
   (``COLDBREW_THREADS=4``; ``COLDBREW_APP`` for the positional APP);
3. ``COLDBREW_CMD_ARGS``, extra flags split like a shell would;
4. the real command line.

A single-valued option takes its value from the highest source that sets it.
``-e/--env`` is repeatable: its KEY=VALUE pairs from every source are kept,
lowest source first, so for the same KEY the highest source wins when applied.

Every value is validated whichever source it comes from; a bad one raises
:class:`ConfigError`, whose message names the option and its source.
"""

import os
import sys

# Start-up cost matters here: ``coldbrew MODULE:APP`` should reach the Rust
# core fast. So this module imports only modules every Python process already
# has. argparse is imported (with coldbrew._config_extras, which holds the
# parser) only for --help, --version, errors and command lines the fast parser
# below leaves to it; shlex only when COLDBREW_CMD_ARGS or COLDBREW_ENV is set.

PROG = "coldbrew"
USAGE = "coldbrew [OPTIONS] MODULE[:ATTR]"

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
DEFAULT_THREADS = 8
DEFAULT_GRACEFUL_TIMEOUT = 8.0
DEFAULT_RESPONSE_BUFFER = 1024 * 1024
DEFAULT_REQUEST_BUFFER = 256 * 1024
# gunicorn's names and defaults for the request head limits.
DEFAULT_LIMIT_REQUEST_LINE = 4094
DEFAULT_LIMIT_REQUEST_FIELDS = 100
DEFAULT_LIMIT_REQUEST_FIELD_SIZE = 8190
MAX_LIMIT_REQUEST_FIELDS = 32768
# Cloud Run refuses HTTP/1 requests over 32 MiB before they reach the container.
DEFAULT_LIMIT_REQUEST_BODY = 32 * 1024 * 1024
DEFAULT_BACKLOG = 2048
# Requests (not connections) that may wait for a free Python thread before new ones get 503.
# With the default 8 threads, 8 + 1024 covers Cloud Run's highest per-instance concurrency
# (1000), so the platform's own limit, not this one, decides there.
DEFAULT_MAX_PENDING = 1024
# A request head must arrive within this once its first byte has (slowloris).
DEFAULT_HEADER_TIMEOUT = 30.0
# Idle keep-alive: longer than the 600 s idle timeout of common load balancers, so the proxy,
# never coldbrew, closes an idle connection and never races a close into a 502.
DEFAULT_KEEP_ALIVE = 620.0
# The longest gap between two pieces of a request body.
DEFAULT_BODY_TIMEOUT = 60.0
# The longest a client may leave a response unread before its connection is closed.
DEFAULT_SEND_TIMEOUT = 60.0
# Websocket keepalive: a ping this often, and the connection is dropped when no pong came
# back within the timeout. 20 s each keeps idle websockets alive through proxies that drop
# silent connections after 30 to 60 s.
# An ASGI event loop that has not run for this long is blocked by the app: its stack is logged.
DEFAULT_LOOP_BLOCK_WARNING = 0.5
DEFAULT_WS_PING_INTERVAL = 20.0
DEFAULT_WS_PING_TIMEOUT = 20.0
# The largest websocket message a client may send (RFC 6455 close code 1009 past it).
DEFAULT_WS_MAX_SIZE = 16 * 1024 * 1024
# Peers whose X-Forwarded-* and Forwarded headers are applied: a proxy on the same host.
# On Cloud Run and Knative (K_SERVICE set) the default is "*": Google's front end is the only
# peer a container has.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"
DEFAULT_LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LOG_FORMAT = "text"
LOG_FORMATS = ("text", "json")
DEFAULT_HTTP = "auto"
HTTP_CHOICES = ("auto", "1", "2")
DEFAULT_INTERFACE = "auto"
INTERFACE_CHOICES = ("auto", "wsgi", "asgi")
DEFAULT_LOOP = "auto"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
DEFAULT_LIFESPAN = "auto"
LIFESPAN_CHOICES = ("auto", "on", "off")
# gunicorn's default access log format (the "combined" log format).
DEFAULT_ACCESS_LOGFORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
# The one-letter atoms of --access-logformat; also {NAME}i, {NAME}o and {NAME}e.
ACCESS_LOG_ATOMS = ("h", "l", "u", "t", "r", "s", "m", "U", "q", "H", "b", "B", "f", "a", "T", "D", "M", "L", "p")
_ON_OFF = {
    "on": True, "true": True, "yes": True, "1": True,
    "off": False, "false": False, "no": False, "0": False,
}

# Bound for integer options so every value fits the C int / u32 the core uses.
_INT_MAX = 2**31 - 1
# Bound for byte sizes so every value fits an i64 / u64.
_SIZE_MAX = 2**63 - 1

# parse_size() accepts what this regular expression fullmatches (ignoring case,
# ASCII only), without importing re: see _split_size().
_SIZE_PATTERN = r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)"
_DIGITS = frozenset("0123456789")
_ASCII_SPACE = frozenset(" \t\n\r\f\v")
_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_INF = float("inf")
# The characters of an HTTP header name (RFC 9110 token).
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~") | _DIGITS | _ASCII_LETTERS
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}

ENV_PREFIX = "COLDBREW_"
CMD_ARGS_ENV = "COLDBREW_CMD_ARGS"
SOURCE_COMMAND_LINE = "command line"


# Config and Invocation are plain slotted classes rather than dataclasses:
# importing dataclasses (which pulls in inspect) costs milliseconds at every start.
# --------------------------------------------------------------------------


class _Record:
    """Equality and repr from ``__slots__``."""

    __slots__ = ()

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__qualname__}({fields})"


class Config(_Record):
    """Settings the Rust core reads (by attribute name) in ``serve(app, config)``."""

    app_spec: str
    host: str
    port: int
    threads: int
    graceful_timeout: float
    root_path: str
    response_buffer: int
    request_buffer: int
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    limit_request_body: int
    backlog: int
    log_level: str
    workers: int
    log_format: str
    app_log_handler: bool
    access_logfile: str | None
    access_logformat: str
    gcp_project: str
    metrics_host: str | None
    metrics_port: int | None
    workers_reason: str
    preload: bool
    post_fork: str | None
    max_requests: int
    max_requests_jitter: int
    timeout: float
    warmup: tuple
    health_path: str | None
    cgroup_root: str | None
    forwarded_allow_ips: str
    header_timeout: float
    keep_alive: float
    body_timeout: float
    send_timeout: float
    max_pending: int
    http: str
    interface: str
    loop: str
    lifespan: str
    loop_block_warning: float
    ws_ping_interval: float
    ws_ping_timeout: float
    ws_max_size: int

    __slots__ = (
        "app_spec", "host", "port", "threads", "graceful_timeout", "root_path",
        "response_buffer", "request_buffer", "limit_request_line", "limit_request_fields",
        "limit_request_field_size", "limit_request_body", "backlog", "log_level", "workers",
        "log_format", "app_log_handler", "access_logfile", "access_logformat",
        "gcp_project", "metrics_host", "metrics_port", "workers_reason", "preload",
        "post_fork", "max_requests", "max_requests_jitter", "timeout", "warmup",
        "health_path", "cgroup_root", "forwarded_allow_ips", "header_timeout", "keep_alive",
        "body_timeout", "send_timeout", "max_pending", "http", "interface", "loop", "lifespan", "interface_reason",
        "ws_ping_interval", "ws_ping_timeout", "ws_max_size", "loop_block_warning",
    )

    def __init__(
        self,
        app_spec: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        threads: int = DEFAULT_THREADS,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
        root_path: str = "",
        response_buffer: int = DEFAULT_RESPONSE_BUFFER,
        request_buffer: int = DEFAULT_REQUEST_BUFFER,
        limit_request_line: int = DEFAULT_LIMIT_REQUEST_LINE,
        limit_request_fields: int = DEFAULT_LIMIT_REQUEST_FIELDS,
        limit_request_field_size: int = DEFAULT_LIMIT_REQUEST_FIELD_SIZE,
        limit_request_body: int = DEFAULT_LIMIT_REQUEST_BODY,
        backlog: int = DEFAULT_BACKLOG,
        log_level: str = DEFAULT_LOG_LEVEL,
        workers: int | None = None,
        log_format: str = DEFAULT_LOG_FORMAT,
        app_log_handler: bool = True,
        access_logfile: str | None = None,
        access_logformat: str = DEFAULT_ACCESS_LOGFORMAT,
        gcp_project: str = "",
        metrics_host: str | None = None,
        metrics_port: int | None = None,
        workers_reason: str = "",
        preload: bool = False,
        post_fork: str | None = None,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        timeout: float = 0.0,
        warmup: tuple = (),
        health_path: str | None = None,
        cgroup_root: str | None = None,
        forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW_IPS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        keep_alive: float = DEFAULT_KEEP_ALIVE,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        http: str = DEFAULT_HTTP,
        interface: str = DEFAULT_INTERFACE,
        loop: str = DEFAULT_LOOP,
        lifespan: str = DEFAULT_LIFESPAN,
        loop_block_warning: float = DEFAULT_LOOP_BLOCK_WARNING,
        ws_ping_interval: float = DEFAULT_WS_PING_INTERVAL,
        ws_ping_timeout: float = DEFAULT_WS_PING_TIMEOUT,
        ws_max_size: int = DEFAULT_WS_MAX_SIZE,
    ) -> None:
        self.app_spec = app_spec
        self.host = host
        self.port = port
        self.threads = threads
        self.graceful_timeout = graceful_timeout
        self.root_path = root_path
        self.response_buffer = response_buffer
        self.request_buffer = request_buffer
        self.limit_request_line = limit_request_line
        self.limit_request_fields = limit_request_fields
        self.limit_request_field_size = limit_request_field_size
        self.limit_request_body = limit_request_body
        self.backlog = backlog
        self.log_level = log_level
        self.workers = workers
        self.log_format = log_format
        self.app_log_handler = app_log_handler
        self.access_logfile = access_logfile
        self.access_logformat = access_logformat
        self.gcp_project = gcp_project
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.workers_reason = workers_reason
        self.preload = preload
        self.post_fork = post_fork
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.timeout = timeout
        self.warmup = tuple(warmup)
        self.health_path = health_path
        self.cgroup_root = cgroup_root
        self.forwarded_allow_ips = forwarded_allow_ips
        self.header_timeout = header_timeout
        self.keep_alive = keep_alive
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.max_pending = max_pending
        self.http = http
        self.interface = interface
        self.loop = loop
        self.lifespan = lifespan
        self.loop_block_warning = loop_block_warning
        self.ws_ping_interval = ws_ping_interval
        self.ws_ping_timeout = ws_ping_timeout
        self.ws_max_size = ws_max_size
        # Why the interface is what it is, once the app is loaded (the startup line says it).
        self.interface_reason = ""


class Invocation(_Record):
    """Everything one ``coldbrew`` command asks for.

    ``config`` goes to the Rust core; ``chdir`` and ``env`` are applied by the
    CLI before the app is imported. ``sources`` maps an option name ("bind",
    "chdir", ...) to the label used in error messages about its value.
    """

    config: Config
    chdir: str | None
    env: list
    sources: dict

    __slots__ = ("config", "chdir", "env", "sources")

    def __init__(
        self,
        config: Config,
        chdir: str | None = None,
        env: list | None = None,
        sources: dict | None = None,
    ) -> None:
        self.config = config
        self.chdir = chdir
        self.env = [] if env is None else env
        self.sources = {} if sources is None else sources



class ConfigError(Exception):
    """An invalid setting. ``str(err)`` is the one-line message (no prefix).

    ``usage`` is True when the error comes from the real command line, where
    printing the usage line first helps.
    """

    def __init__(self, message, usage=False):
        super().__init__(message)
        self.message = message
        self.usage = usage


# --------------------------------------------------------------------------
# Value converters. Each takes a string and returns the parsed value or
# raises argparse.ArgumentTypeError with a message that does not name the
# option (the caller adds the option and its source). argparse is imported
# only when a value is bad.
# --------------------------------------------------------------------------


def _type_error():
    """argparse.ArgumentTypeError, importing argparse on first use (error paths only)."""
    import argparse

    return argparse.ArgumentTypeError


def _bad(message):
    return _type_error()(message)


def _int_in_range(text, low, what="int"):
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"invalid {what} value: {text!r}") from None
    if value < low:
        raise _bad(f"must be at least {low} (got {value})")
    if value > _INT_MAX:
        raise _bad(f"must be at most {_INT_MAX} (got {value})")
    return value


def parse_positive_int(text):
    """An int >= 1 (threads, backlog)."""
    return _int_in_range(text, 1)


def parse_seconds(text):
    """A finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise _bad(f"invalid float value: {text!r}") from None
    if not -_INF < value < _INF:  # math.isfinite(value), without importing math
        raise _bad(f"must be a finite number of seconds (got {text!r})")
    if value < 0:
        raise _bad(f"must be at least 0 (got {text!r})")
    return value


def _split_size(text):
    """(number, unit) if ``text`` fullmatches _SIZE_PATTERN (ASCII, any case), else None."""
    end = len(text)
    i = 0
    while i < end and text[i] in _DIGITS:
        i += 1
    whole_digits = i
    if i < end and text[i] == ".":
        i += 1
        start = i
        while i < end and text[i] in _DIGITS:
            i += 1
        if not whole_digits and i == start:
            return None  # "." alone, or "." followed by no digit
    elif not whole_digits:
        return None
    number = text[:i]
    while i < end and text[i] in _ASCII_SPACE:
        i += 1
    unit = text[i:]
    for char in unit:
        if char not in _ASCII_LETTERS:
            return None
    return number, unit


def parse_size(text):
    """Bytes, with an optional binary suffix: 512, 64K, 64KB, 64KiB, 1M, 1.5M, 1G."""
    match = _split_size(text.strip())
    multiplier = _SIZE_UNITS.get(match[1].lower()) if match else None
    if multiplier is None:
        raise _bad(f"invalid size: {text!r} (use bytes or a K/M/G suffix, e.g. 64K or 1MiB)")
    number = match[0]
    value = int(float(number) * multiplier) if "." in number else int(number) * multiplier
    if value > _SIZE_MAX:
        raise _bad(f"size too large: {text!r}")
    return value


def parse_port(text):
    if not text.isdigit():
        raise _bad(f"invalid port: {text!r} (must be 1-65535)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _bad(f"invalid port: {text!r} (must be 1-65535)")
    return port


def parse_bind(text):
    """HOST:PORT, :PORT, [IPV6]:PORT, HOST, or [IPV6].

    Returns (host, port); port is None when it is to come from $PORT.
    """
    value = text.strip()
    if not value:
        raise _bad("empty address (expected HOST:PORT)")
    if value.startswith("unix:"):
        raise _bad(f"unix sockets are not supported: {text!r}")
    if value.startswith("["):
        end = value.find("]")
        host = value[1:end] if end > 0 else ""
        rest = value[end + 1 :] if end > 0 else None
        if not host or rest is None or (rest and not rest.startswith(":")):
            raise _bad(f"invalid address: {text!r} (expected [IPV6]:PORT, e.g. [::1]:8000)")
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        raise _bad(f"invalid address: {text!r} (put IPv6 addresses in brackets, e.g. [::1]:8000)")
    elif ":" in value:
        host, port_text = value.split(":", 1)
        host = host or DEFAULT_HOST
    else:
        host, port_text = value, None
    if any(c.isspace() for c in host):
        raise _bad(f"invalid host in {text!r}")
    if port_text is None:
        return host, None
    try:
        return host, parse_port(port_text)
    except _type_error():
        raise _bad(f"invalid port in {text!r} (must be 1-65535)") from None


def parse_root_path(text):
    """The SCRIPT_NAME mount prefix: '' or '/something' (trailing slash removed)."""
    if text and not text.startswith("/"):
        raise _bad(f"must start with '/' (got {text!r})")
    return text.rstrip("/")


def parse_env_pair(text):
    name, sep, value = text.partition("=")
    if not sep:
        raise _bad(f"expected KEY=VALUE, got {text!r} (missing '=')")
    if not name:
        raise _bad(f"expected KEY=VALUE, got {text!r} (empty KEY)")
    if "\0" in text:
        raise _bad(f"NUL character in {text!r}")
    return name, value


def parse_log_level(text):
    level = text.strip().lower()
    if level == "warn":
        level = "warning"
    if level not in LOG_LEVELS:
        raise _bad(f"invalid choice: {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return level


def parse_log_format(text):
    log_format = text.strip().lower()
    if log_format not in LOG_FORMATS:
        raise _bad(f"invalid choice: {text!r} (choose from {', '.join(LOG_FORMATS)})")
    return log_format


def parse_http(text):
    choice = text.strip().lower()
    if choice not in HTTP_CHOICES:
        raise _bad(f"invalid choice: {text!r} (choose from {', '.join(HTTP_CHOICES)})")
    return choice


def _parse_choice(choices):
    def parse(text):
        choice = text.strip().lower()
        if choice not in choices:
            raise _bad(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return choice

    return parse


parse_interface = _parse_choice(INTERFACE_CHOICES)
parse_loop = _parse_choice(LOOP_CHOICES)
parse_lifespan = _parse_choice(LIFESPAN_CHOICES)


def parse_on_off(text):
    """on/off, true/false, yes/no or 1/0, in any case."""
    value = _ON_OFF.get(text.strip().lower())
    if value is None:
        raise _bad(f"invalid choice: {text!r} (choose from on, off)")
    return value


def parse_logfile(text):
    """'-' (stdout) or a file path, kept as given."""
    if not text:
        raise _bad("empty path (use - for stdout)")
    if "\0" in text:
        raise _bad(f"NUL character in {text!r}")
    return text


def _access_atom_ok(atom):
    if atom in ACCESS_LOG_ATOMS:
        return True
    # {NAME}i (request header), {NAME}o (response header), {NAME}e (environment variable)
    if len(atom) < 4 or atom[0] != "{" or atom[-2] != "}" or atom[-1] not in "ioe":
        return False
    name = atom[1:-2]
    if atom[-1] == "e":
        return "=" not in name and "\0" not in name
    for char in name:
        if char not in _TOKEN_CHARS:
            return False
    return True


def parse_access_logformat(text):
    """A gunicorn-style access log format: text with %(atom)s placeholders."""
    if not text:
        raise _bad("empty format")
    rest = text
    while True:
        start = rest.find("%(")
        if start < 0:
            return text
        close = rest.find(")s", start + 2)
        if close < 0:
            raise _bad(f"unterminated atom {rest[start:]!r} (every %( must close with )s)")
        atom = rest[start + 2 : close]
        if not _access_atom_ok(atom):
            raise _bad(
                f"unknown atom {'%(' + atom + ')s'!r} (use {' '.join(ACCESS_LOG_ATOMS)}, "
                "{NAME}i, {NAME}o or {NAME}e)"
            )
        rest = rest[close + 2 :]


def parse_gcp_project(text):
    """A Google Cloud project id, or '' for none."""
    project = text.strip()
    for char in project:
        if char == "/" or char.isspace() or char == "\0":
            raise _bad(f"invalid project id: {text!r}")
    return project


def parse_metrics_bind(text):
    """Like --bind, but the port is required: (host, port)."""
    host, port = parse_bind(text)
    if port is None:
        raise _bad(f"missing port in {text!r} (expected HOST:PORT, e.g. :9090)")
    return host, port


def parse_count(text):
    """An int >= 0 (0 turns the feature off)."""
    return _int_in_range(text, 0)


def parse_header_count(text):
    """The most header fields in a request: 1 to 32768, as gunicorn allows."""
    value = _int_in_range(text, 1)
    if value > MAX_LIMIT_REQUEST_FIELDS:
        raise _bad(f"must be at most {MAX_LIMIT_REQUEST_FIELDS} (got {value})")
    return value


def parse_hook(text):
    """MODULE:FUNCTION, a function imported and called by the server."""
    spec = text.strip()
    module, sep, function = spec.partition(":")
    if not sep or not module or not function:
        raise _bad(f"expected MODULE:FUNCTION, got {text!r}")
    for part in module.split(".") + function.split("."):
        if not part.isidentifier():
            raise _bad(f"expected MODULE:FUNCTION, got {text!r}")
    return spec


def parse_health_path(text):
    """An absolute URL path, matched exactly (the query string is ignored)."""
    path = text.strip()
    if not path.startswith("/"):
        raise _bad(f"must start with '/' (got {text!r})")
    for char in path:
        if char <= " " or char in "?#\x7f":
            raise _bad(f"invalid character {char!r} in {text!r}")
    return path


def parse_dir(text):
    if not text:
        raise _bad("empty directory")
    return text


def _ipv4_ok(text):
    # Dotted decimal, no leading zeros: what the core's parser takes.
    parts = text.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not part or len(part) > 3 or not all(c in _DIGITS for c in part):
            return False
        if (len(part) > 1 and part[0] == "0") or int(part) > 255:
            return False
    return True


def _ipv6_ok(text):
    if not text or not all(c in "0123456789abcdefABCDEF:." for c in text):
        return False
    # _socket, not socket: the option is rare and this keeps the import small.
    import _socket

    try:
        _socket.inet_pton(_socket.AF_INET6, text)
    except OSError:
        return False
    return True


def parse_forwarded_allow_ips(text):
    """Comma-separated IP addresses and CIDR networks, or ``*``; '' trusts no peer.

    Returns the entries joined by commas, without spaces.
    """
    entries = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry != "*":
            address, slash, prefix = entry.partition("/")
            if address.startswith("[") and address.endswith("]"):
                address = address[1:-1]
            if _ipv4_ok(address):
                longest = 32
            elif _ipv6_ok(address):
                longest = 128
            else:
                raise _bad(f"not an IP address or network: {entry!r}")
            if slash and not (
                prefix and len(prefix) <= 3 and all(c in _DIGITS for c in prefix) and int(prefix) <= longest
            ):
                raise _bad(f"invalid prefix length in {entry!r} (0-{longest})")
        entries.append(entry)
    return ",".join(entries)


def parse_app(text):
    spec = text.strip()
    if not spec:
        raise _bad("empty app (expected MODULE[:ATTR])")
    return spec


def _format_size(n):
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------
# The option table. (dest, flags, metavar, converter, repeatable, help)
# dest is also the env var suffix: COLDBREW_<DEST upper-cased>.
# --------------------------------------------------------------------------

_OPTIONS = (
    ("bind", ("-b", "--bind"), "HOST:PORT", parse_bind, False,
     f"address to listen on: HOST:PORT, :PORT, [IPV6]:PORT or HOST "
     f"(default: {DEFAULT_HOST}:$PORT, PORT defaults to {DEFAULT_PORT})"),
    ("workers", ("-w", "--workers"), "N", parse_positive_int, False,
     "worker processes (default: $WEB_CONCURRENCY, else the cgroup CPU quota rounded up, "
     "else the CPUs this process may run on); 1 runs a single process with no supervisor, "
     "unless coldbrew is PID 1 or --max-requests is set"),
    ("interface", ("--interface",), "|".join(INTERFACE_CHOICES), parse_interface, False,
     "how the app is called: ASGI 3 when the app (or its __call__) is a coroutine function, "
     "else WSGI (auto); or as named (default: auto)"),
    ("threads", ("--threads",), "N", parse_positive_int, False,
     f"number of Python threads running a WSGI app (default: {DEFAULT_THREADS}); an ASGI app "
     "runs on one event loop per worker and has no use for it"),
    ("loop", ("--loop",), "|".join(LOOP_CHOICES), parse_loop, False,
     "the ASGI event loop: uvloop when it is installed, else asyncio (auto); or as named "
     "(default: auto)"),
    ("lifespan", ("--lifespan",), "|".join(LIFESPAN_CHOICES), parse_lifespan, False,
     "the ASGI lifespan protocol: run it and carry on if the app does not support it (auto), "
     "require it (on), or skip it (off) (default: auto)"),
    ("loop_block_warning", ("--loop-block-warning",), "SECONDS", parse_seconds, False,
     f"ASGI: when a worker's event loop has not run for SECONDS while requests wait (the app "
     f"blocks instead of awaiting), log the stack it is stuck in, once per stall (default: "
     f"{DEFAULT_LOOP_BLOCK_WARNING:g}; 0: off)"),
    ("ws_ping_interval", ("--ws-ping-interval",), "SECONDS", parse_seconds, False,
     f"ASGI websockets: ping each open websocket this often (default: "
     f"{DEFAULT_WS_PING_INTERVAL:g}; 0: no pings)"),
    ("ws_ping_timeout", ("--ws-ping-timeout",), "SECONDS", parse_seconds, False,
     f"ASGI websockets: drop a connection whose client has not answered a ping within "
     f"SECONDS; the app gets code 1006 (default: {DEFAULT_WS_PING_TIMEOUT:g})"),
    ("ws_max_size", ("--ws-max-size",), "SIZE", parse_size, False,
     f"ASGI websockets: the largest message a client may send; a larger one closes the "
     f"connection with 1009 (default: {_format_size(DEFAULT_WS_MAX_SIZE)})"),
    ("graceful_timeout", ("--graceful-timeout",), "SECONDS", parse_seconds, False,
     f"on shutdown, seconds to let in-flight requests finish (default: {DEFAULT_GRACEFUL_TIMEOUT:g})"),
    ("root_path", ("--root-path",), "PATH", parse_root_path, False,
     "URL prefix the app is mounted at, passed as SCRIPT_NAME (default: $SCRIPT_NAME or none)"),
    ("response_buffer", ("--response-buffer",), "SIZE", parse_size, False,
     f"responses up to SIZE are buffered in Rust, freeing the app thread at once "
     f"(default: {_format_size(DEFAULT_RESPONSE_BUFFER)})"),
    ("request_buffer", ("--request-buffer",), "SIZE", parse_size, False,
     f"request bodies up to SIZE are read in full before the app is called "
     f"(default: {_format_size(DEFAULT_REQUEST_BUFFER)})"),
    ("limit_request_line", ("--limit-request-line",), "SIZE", parse_size, False,
     f"longest request line; longer ones get 414 (default: {DEFAULT_LIMIT_REQUEST_LINE} bytes; "
     "0: no limit of its own)"),
    ("limit_request_fields", ("--limit-request-fields",), "N", parse_header_count, False,
     f"most header fields in a request; more get 431 (default: {DEFAULT_LIMIT_REQUEST_FIELDS}, "
     f"at most {MAX_LIMIT_REQUEST_FIELDS})"),
    ("limit_request_field_size", ("--limit-request-field-size",), "SIZE", parse_size, False,
     f"longest header field, name and value; longer ones get 431 "
     f"(default: {DEFAULT_LIMIT_REQUEST_FIELD_SIZE} bytes; 0: no limit of its own)"),
    ("limit_request_body", ("--limit-request-body",), "SIZE", parse_size, False,
     f"largest request body; larger ones get 413 "
     f"(default: {_format_size(DEFAULT_LIMIT_REQUEST_BODY)}, Cloud Run's HTTP/1 cap; 0: no limit)"),
    ("backlog", ("--backlog",), "N", parse_positive_int, False,
     f"maximum number of pending connections (default: {DEFAULT_BACKLOG})"),
    ("http", ("--http",), "|".join(HTTP_CHOICES), parse_http, False,
     "protocols on the app's port: HTTP/1.1 and, for connections that open with its preface, "
     "HTTP/2 over cleartext (auto); HTTP/1.1 only (1); or HTTP/2 only (2) (default: auto)"),
    ("max_pending", ("--max-pending",), "N", parse_positive_int, False,
     "requests that may wait for a free Python thread; beyond them new requests get 503 "
     f"with Retry-After at once (default: {DEFAULT_MAX_PENDING}); idle connections never count"),
    ("header_timeout", ("--header-timeout",), "SECONDS", parse_seconds, False,
     "close a connection whose request head has not fully arrived SECONDS after its first byte "
     f"(default: {DEFAULT_HEADER_TIMEOUT:g}; 0: no limit)"),
    ("keep_alive", ("--keep-alive",), "SECONDS", parse_seconds, False,
     "close a connection that has waited SECONDS for its next request "
     f"(default: {DEFAULT_KEEP_ALIVE:g}, above load balancers' 600; 0: no keep-alive)"),
    ("body_timeout", ("--body-timeout",), "SECONDS", parse_seconds, False,
     "answer 408 (or fail the app's wsgi.input read) when no request body bytes arrive for "
     f"SECONDS (default: {DEFAULT_BODY_TIMEOUT:g}; 0: no limit)"),
    ("send_timeout", ("--send-timeout",), "SECONDS", parse_seconds, False,
     "close a connection whose client has read none of its response for SECONDS, which frees "
     f"the app's thread if it is still writing (default: {DEFAULT_SEND_TIMEOUT:g}; 0: no limit)"),
    ("timeout", ("-t", "--timeout"), "SECONDS", parse_seconds, False,
     "per-request deadline: past it the client gets 504 and the log shows where the app is "
     "stuck (default: 0, none; an idle or CPU-throttled worker is never killed)"),
    ("preload", ("--preload",), None, parse_on_off, False,
     "import the app once in the supervisor, gc.freeze() it, then fork the workers, "
     "which share its memory copy-on-write"),
    ("post_fork", ("--post-fork",), "MODULE:FUNCTION", parse_hook, False,
     "call FUNCTION() in each worker right after the fork, e.g. to reopen clients that "
     "a preloaded app created at import time"),
    ("warmup", ("--warmup",), "MODULE:FUNCTION", parse_hook, True,
     "call FUNCTION() after the import and before the port opens; several run in parallel "
     "threads (repeatable)"),
    ("max_requests", ("--max-requests",), "N", parse_count, False,
     "replace a worker once it has served N requests (default: 0, never)"),
    ("max_requests_jitter", ("--max-requests-jitter",), "N", parse_count, False,
     "add a random 0..N to each worker's --max-requests, so they are not replaced together"),
    ("health_path", ("--health-path",), "PATH", parse_health_path, False,
     "answer PATH, whatever the method, in Rust without the app: 200 while serving, 503 "
     "while draining (default: off)"),
    ("cgroup_root", ("--cgroup-root",), "DIR", parse_dir, False,
     "where to read the container's CPU and memory limits (default: found through "
     "/proc/self/mountinfo)"),
    ("forwarded_allow_ips", ("--forwarded-allow-ips",), "IPS", parse_forwarded_allow_ips, False,
     "peers (IP addresses, CIDR networks, or * for all) whose X-Forwarded-For, "
     "X-Forwarded-Proto and Forwarded headers set REMOTE_ADDR and wsgi.url_scheme "
     f"(default: $FORWARDED_ALLOW_IPS, else * on Cloud Run, else {DEFAULT_FORWARDED_ALLOW_IPS})"),
    ("chdir", ("--chdir",), "DIR", parse_dir, False,
     "change to DIR before importing the app"),
    ("env", ("-e", "--env"), "KEY=VALUE", parse_env_pair, True,
     "set an environment variable before importing the app (repeatable)"),
    ("log_level", ("--log-level",), "LEVEL", parse_log_level, False,
     f"{'|'.join(LOG_LEVELS)} (default: {DEFAULT_LOG_LEVEL})"),
    ("log_format", ("--log-format",), "|".join(LOG_FORMATS), parse_log_format, False,
     "log lines as text, or as one JSON object per line for Cloud Logging "
     "(default: json on Cloud Run, where K_SERVICE is set; text elsewhere)"),
    ("app_log_handler", ("--app-log-handler",), "on|off", parse_on_off, False,
     "in JSON mode, route the app's `logging` records through coldbrew's JSON writer, "
     "with the request's trace (default: on)"),
    ("access_logfile", ("--access-logfile",), "-|PATH", parse_logfile, False,
     "write an access log line per request to PATH, or - for stdout "
     "(default: off; Cloud Run already logs every request)"),
    # argparse %-formats help strings, hence the %%.
    ("access_logformat", ("--access-logformat",), "FORMAT", parse_access_logformat, False,
     "access log format for text mode, in gunicorn's %%(atom)s syntax "
     "(JSON mode writes Cloud Logging's httpRequest instead)"),
    ("gcp_project", ("--gcp-project",), "ID", parse_gcp_project, False,
     "Google Cloud project id that qualifies trace ids in JSON logs "
     "(default: $GOOGLE_CLOUD_PROJECT)"),
    ("metrics_bind", ("--metrics-bind",), "HOST:PORT", parse_metrics_bind, False,
     "serve Prometheus metrics at http://HOST:PORT/metrics (default: off)"),
)

_APP_HELP = (
    "the WSGI app: MODULE[:ATTR], where ATTR is a name, a dotted path or a factory "
    "call such as create_app('prod') (without ATTR: the module's application, else its app)"
)

_EPILOG = (
    "Every option can also be set in the environment as COLDBREW_<OPTION> "
    "(e.g. COLDBREW_THREADS=4, COLDBREW_APP=main:app) or as flags in "
    "COLDBREW_CMD_ARGS. The command line overrides COLDBREW_CMD_ARGS, which "
    "overrides COLDBREW_<OPTION>."
)


def env_name(dest):
    return ENV_PREFIX + dest.upper()


def _version():
    from coldbrew import get_version

    return get_version()


def build_parser():
    """The argparse parser for the command line and COLDBREW_CMD_ARGS."""
    from coldbrew._config_extras import build_parser

    return build_parser()


def _from_environment(environ):
    """Values from COLDBREW_<OPTION> variables: {dest: value}."""
    values = {}
    options = [("app", parse_app, False)] + [(o[0], o[3], o[4]) for o in _OPTIONS]
    for dest, converter, repeatable in options:
        name = env_name(dest)
        if name not in environ:
            continue
        raw = environ[name]
        try:
            if repeatable:
                import shlex

                try:
                    items = shlex.split(raw)
                except ValueError as err:
                    raise _bad(f"cannot split {raw!r}: {err}") from None
                values[dest] = [converter(item) for item in items]
            else:
                values[dest] = converter(raw)
        except _type_error() as err:
            raise ConfigError(f"{name}: {err}") from None
    return values


def _parse_argv(parser, argv):
    return dict(vars(parser.parse_args(argv)))


# --------------------------------------------------------------------------
# The fast path. A command line such as ``main:app`` or
# ``--bind :8000 --threads 4 main:app`` does not need argparse, whose import
# and parser setup (gettext, locale, shutil, re...) cost more than the rest of
# the start-up. _parse_simple() handles only arguments whose meaning to
# argparse is beyond doubt and gives up (returns None) on anything else --
# --help, --version, "--", unknown or abbreviated flags, values starting with
# "-" (but not "-" alone, which argparse also takes as a value) or empty, a
# second positional, a value a converter rejects -- leaving argparse to parse
# the arguments again and produce its usual result or error.
# When it succeeds it returns exactly what _parse_argv() would have: the same
# keys, in the same order, with the same converted values.
# --------------------------------------------------------------------------

# flag -> (dest, converter, repeatable), for the options that take one value.
_SIMPLE_FLAGS = {
    flag: (dest, converter, repeatable)
    for dest, flags, metavar, converter, repeatable, _help in _OPTIONS
    if metavar is not None
    for flag in flags
}
# Switches (no value on the command line; on/off in the environment): flag -> dest.
_SWITCHES = {
    flag: dest
    for dest, flags, metavar, _converter, _repeatable, _help in _OPTIONS
    if metavar is None
    for flag in flags
}


def _parse_simple(args):
    """Parse ``args`` (a list) like _parse_argv(), or return None to leave it to argparse."""
    values = {}
    index = 0
    count = len(args)
    while index < count:
        arg = args[index]
        if type(arg) is not str or not arg:
            return None
        if arg[0] == "-":
            switch = _SWITCHES.get(arg)
            if switch is not None:
                values[switch] = True
                index += 1
                continue
            option = _SIMPLE_FLAGS.get(arg)
            if option is not None:
                # FLAG VALUE
                if index + 1 >= count:
                    return None
                value = args[index + 1]
                if type(value) is not str or not value or (value[0] == "-" and value != "-"):
                    return None
                index += 2
            else:
                # --FLAG=VALUE
                flag, equals, value = arg.partition("=")
                option = _SIMPLE_FLAGS.get(flag) if equals and flag[:2] == "--" else None
                if option is None or not value:
                    return None
                index += 1
            dest, converter, repeatable = option
            try:
                converted = converter(value)
            except Exception:
                return None
            if repeatable:
                values.setdefault(dest, []).append(converted)
            else:
                values[dest] = converted
        else:
            # The positional APP; a second one is an error argparse reports.
            if "app" in values:
                return None
            try:
                values["app"] = parse_app(arg)
            except Exception:
                return None
            index += 1
    return values


def _flag_label(dest):
    for option in _OPTIONS:
        if option[0] == dest:
            return "argument " + "/".join(option[1])
    return "argument APP"


def parse(argv=None, environ=None):
    """Parse ``argv`` (default sys.argv[1:]) and ``environ`` (default os.environ).

    Returns an :class:`Invocation`; raises :class:`ConfigError` on a bad value.
    ``--help`` and ``--version`` print and raise SystemExit(0), as argparse does.
    """
    if argv is None:
        argv = sys.argv[1:]
    if environ is None:
        environ = os.environ
    parser = None

    # The command line first, so --help and --version work whatever the
    # environment holds; then the lower sources.
    argv = list(argv)
    command_line = _parse_simple(argv)
    if command_line is None:
        parser = build_parser()
        try:
            command_line = _parse_argv(parser, argv)
        except ConfigError as err:
            raise ConfigError(err.message, usage=True) from None

    cmd_args = {}
    if CMD_ARGS_ENV in environ:
        import shlex

        try:
            extra = shlex.split(environ[CMD_ARGS_ENV])
        except ValueError as err:
            raise ConfigError(f"{CMD_ARGS_ENV}: cannot split {environ[CMD_ARGS_ENV]!r}: {err}") from None
        cmd_args = _parse_simple(extra)
        if cmd_args is None:
            if parser is None:
                parser = build_parser()
            try:
                cmd_args = _parse_argv(parser, extra)
            except ConfigError as err:
                raise ConfigError(f"{CMD_ARGS_ENV}: {err.message}") from None

    from_env = _from_environment(environ)

    values = {}
    sources = {}
    env_pairs = []
    for layer, label in (
        (from_env, lambda d: env_name(d)),
        (cmd_args, lambda d: f"{CMD_ARGS_ENV}: {_flag_label(d)}"),
        (command_line, _flag_label),
    ):
        for dest, value in layer.items():
            if dest == "env":
                env_pairs.extend(value)
            else:
                values[dest] = value
            sources[dest] = label(dest)

    if "app" not in values:
        raise ConfigError(
            "missing APP: give MODULE[:ATTR] on the command line or in COLDBREW_APP",
            usage=True,
        )

    host, port = values.get("bind", (DEFAULT_HOST, None))
    if port is None:
        port_text = environ.get("PORT")
        if port_text is None:
            port = DEFAULT_PORT
        else:
            try:
                port = parse_port(port_text.strip())
            except _type_error() as err:
                raise ConfigError(f"PORT: {err}") from None
            sources.setdefault("bind", "PORT")

    if "root_path" in values:
        root_path = values["root_path"]
    else:
        try:
            root_path = parse_root_path(environ.get("SCRIPT_NAME", ""))
        except _type_error() as err:
            raise ConfigError(f"SCRIPT_NAME: {err}") from None
        if root_path:
            sources["root_path"] = "SCRIPT_NAME"

    # Cloud Run and Knative set K_SERVICE; their log collectors parse JSON lines.
    if "log_format" in values:
        log_format = values["log_format"]
    elif environ.get("K_SERVICE"):
        log_format = "json"
        sources["log_format"] = "K_SERVICE"
    else:
        log_format = DEFAULT_LOG_FORMAT

    if "gcp_project" in values:
        gcp_project = values["gcp_project"]
    else:
        try:
            gcp_project = parse_gcp_project(environ.get("GOOGLE_CLOUD_PROJECT", ""))
        except _type_error() as err:
            raise ConfigError(f"GOOGLE_CLOUD_PROJECT: {err}") from None
        if gcp_project:
            sources["gcp_project"] = "GOOGLE_CLOUD_PROJECT"

    # gunicorn's variable first; then Cloud Run and Knative, where Google's front end (or the
    # Knative queue-proxy) is the only peer the container ever has.
    if "forwarded_allow_ips" in values:
        forwarded_allow_ips = values["forwarded_allow_ips"]
    elif "FORWARDED_ALLOW_IPS" in environ:
        try:
            forwarded_allow_ips = parse_forwarded_allow_ips(environ["FORWARDED_ALLOW_IPS"])
        except _type_error() as err:
            raise ConfigError(f"FORWARDED_ALLOW_IPS: {err}") from None
        sources["forwarded_allow_ips"] = "FORWARDED_ALLOW_IPS"
    elif environ.get("K_SERVICE"):
        forwarded_allow_ips = "*"
        sources["forwarded_allow_ips"] = "K_SERVICE"
    else:
        forwarded_allow_ips = DEFAULT_FORWARDED_ALLOW_IPS

    metrics_host, metrics_port = values.get("metrics_bind", (None, None))

    config = Config(
        app_spec=values["app"],
        host=host,
        port=port,
        threads=values.get("threads", DEFAULT_THREADS),
        graceful_timeout=float(values.get("graceful_timeout", DEFAULT_GRACEFUL_TIMEOUT)),
        root_path=root_path,
        response_buffer=values.get("response_buffer", DEFAULT_RESPONSE_BUFFER),
        request_buffer=values.get("request_buffer", DEFAULT_REQUEST_BUFFER),
        limit_request_line=values.get("limit_request_line", DEFAULT_LIMIT_REQUEST_LINE),
        limit_request_fields=values.get("limit_request_fields", DEFAULT_LIMIT_REQUEST_FIELDS),
        limit_request_field_size=values.get("limit_request_field_size", DEFAULT_LIMIT_REQUEST_FIELD_SIZE),
        limit_request_body=values.get("limit_request_body", DEFAULT_LIMIT_REQUEST_BODY),
        backlog=values.get("backlog", DEFAULT_BACKLOG),
        log_level=values.get("log_level", DEFAULT_LOG_LEVEL),
        workers=values.get("workers"),
        log_format=log_format,
        app_log_handler=values.get("app_log_handler", True),
        access_logfile=values.get("access_logfile"),
        access_logformat=values.get("access_logformat", DEFAULT_ACCESS_LOGFORMAT),
        gcp_project=gcp_project,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        workers_reason=sources["workers"] if "workers" in values else "",
        preload=values.get("preload", False),
        post_fork=values.get("post_fork"),
        max_requests=values.get("max_requests", 0),
        max_requests_jitter=values.get("max_requests_jitter", 0),
        timeout=float(values.get("timeout", 0.0)),
        warmup=tuple(values.get("warmup", ())),
        health_path=values.get("health_path"),
        cgroup_root=values.get("cgroup_root"),
        forwarded_allow_ips=forwarded_allow_ips,
        header_timeout=float(values.get("header_timeout", DEFAULT_HEADER_TIMEOUT)),
        keep_alive=float(values.get("keep_alive", DEFAULT_KEEP_ALIVE)),
        body_timeout=float(values.get("body_timeout", DEFAULT_BODY_TIMEOUT)),
        send_timeout=float(values.get("send_timeout", DEFAULT_SEND_TIMEOUT)),
        max_pending=values.get("max_pending", DEFAULT_MAX_PENDING),
        http=values.get("http", DEFAULT_HTTP),
        interface=values.get("interface", DEFAULT_INTERFACE),
        loop=values.get("loop", DEFAULT_LOOP),
        lifespan=values.get("lifespan", DEFAULT_LIFESPAN),
        loop_block_warning=float(values.get("loop_block_warning", DEFAULT_LOOP_BLOCK_WARNING)),
        ws_ping_interval=float(values.get("ws_ping_interval", DEFAULT_WS_PING_INTERVAL)),
        ws_ping_timeout=float(values.get("ws_ping_timeout", DEFAULT_WS_PING_TIMEOUT)),
        ws_max_size=values.get("ws_max_size", DEFAULT_WS_MAX_SIZE),
    )
    return Invocation(config=config, chdir=values.get("chdir"), env=env_pairs, sources=sources)


def parse_args(argv=None, environ=None):
    """Parse ``argv`` and ``environ`` into a :class:`Config` (pure: no side effects).

    ``--chdir`` and ``--env`` are validated but not part of Config; use
    :func:`parse` to get them too.
    """
    return parse(argv, environ).config
