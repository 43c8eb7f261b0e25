"""Process-wide logging, configured in one place: human lines, or one JSON object per line.

Why here: ``videoloop serve``, ``videoloop worker`` and every other command configure logging
through :func:`configure_logging`, and a worker needs only ``training/``, so this cannot live in
``backend/``. ``LOG_FORMAT=json`` is for log shippers (Loki, Elasticsearch, CloudWatch): each
line carries ``time``, ``level``, ``logger``, ``message`` and, when known, the ``project``,
``task`` and ``job`` it is about, from ``extra=`` or from :func:`log_context` (a contextvar,
so it follows the request or job, not the thread pool it happens to run on).

Secrets: messages are built not to carry any (the API key is never formatted, URLs go through
``redact_url``), and both formats pass every message and traceback through
:func:`redact_urls` once more, so a URL with a presigned query that slips into an exception
text is still cut before it leaves the process.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

from training.video.media_policy import redact_url

LOG_FORMATS = ("text", "json")
"""Values of LOG_FORMAT: ``text`` (human-readable, the default) or ``json``."""

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
"""The human-readable line; the pid tells gunicorn's worker processes apart."""

CONTEXT_FIELDS = ("project", "task", "job")
"""Fields a JSON line carries when known (``extra=`` wins over :func:`log_context`)."""

_context: ContextVar[Mapping[str, object]] = ContextVar(
    "videoloop_log_context", default=MappingProxyType({})
)

_URL = re.compile(r"https?://[^\s'\"<>]+")
_OURS = "_videoloop_handler"
"""Attribute marking the root handler configure_logging installed (replaced, never stacked)."""


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Name the project, task or job that the log lines inside this block are about.

    Nested blocks add to the outer one; ``None`` values are left out. Thread pools do not
    inherit it: submit ``contextvars.copy_context().run`` to carry it over.
    """
    known = {k: v for k, v in fields.items() if v is not None}
    token = _context.set({**_context.get(), **known})
    try:
        yield
    finally:
        _context.reset(token)


def get_log_context() -> Mapping[str, object]:
    """The fields :func:`log_context` set for this thread or task."""
    return _context.get()


def redact_urls(text: str) -> str:
    """``text`` with every http(s) URL's query, fragment and ``user:pass@`` cut (redact_url)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


class TextFormatter(logging.Formatter):
    """The human-readable line (TEXT_FORMAT), URLs redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_urls(record.getMessage()),
            "process": record.process,
        }
        context = _context.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            if value is not None:
                entry[name] = value if isinstance(value, int | float | str) else str(value)
        if record.exc_info:
            entry["exception"] = redact_urls(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_urls(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for a LOG_FORMAT value.

    Raises:
        ValueError: not one of LOG_FORMATS.
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every logger's records to stderr at ``level``, in ``log_format``.

    Replaces the handler an earlier call installed (``videoloop serve`` configures logging
    in the command line, then again in the server), and leaves other root handlers alone
    (pytest's, say). RQ's workers log through it too: they add handlers of their own only
    when the root has none; so do Python's warnings (``py.warnings``), which would otherwise
    be bare lines in a JSON log.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
