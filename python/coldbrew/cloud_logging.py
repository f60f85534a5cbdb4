"""The app's ``logging`` records as Cloud Logging JSON, with the current request's trace.

In JSON mode (``--log-format json``, the default on Cloud Run) the ``coldbrew`` command
installs :class:`CloudLoggingHandler` on the root logger, unless ``--app-log-handler off``.
Each record is handed to coldbrew's log writer thread, which formats and writes it with the
server's own lines: the app needs neither google-cloud-logging nor its start-up cost.
"""

import contextvars
import logging

from coldbrew import _coldbrew

#: The trace of the request being served, set by coldbrew before it calls the app: an object
#: with ``trace_id``, ``span_id`` and ``sampled``, or None.
current_trace = contextvars.ContextVar("coldbrew_current_trace", default=None)


class CloudLoggingHandler(logging.Handler):
    """Sends records to coldbrew's JSON log writer."""

    def emit(self, record):
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{_formatter.formatException(record.exc_info)}"
            if record.stack_info:
                message = f"{message}\n{record.stack_info}"
            _coldbrew.emit_app_log(
                record.levelno,
                message,
                record.name,
                record.pathname,
                record.lineno or 0,
                record.funcName or "",
                current_trace.get(),
            )
        except Exception:
            self.handleError(record)


_formatter = logging.Formatter()


def install(level):
    """Put the handler on the root logger, replacing none of the app's own handlers.

    The root level is set to the server's ``--log-level`` so that an app's ``logging.info()``
    reaches Cloud Logging as it would under the platform's own client library.
    """
    root = logging.getLogger()
    if not any(isinstance(h, CloudLoggingHandler) for h in root.handlers):
        root.addHandler(CloudLoggingHandler())
    root.setLevel(level.upper())
