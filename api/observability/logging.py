"""Structured logs: one JSON object per line, each carrying the id of the request it belongs to.

`LOG_FORMAT=json` (the default when stderr is not a terminal) or `text`; `LOG_LEVEL` (default INFO).
The request id lives in a context variable set by the middleware for the duration of a request; a
handler filter copies it onto every record, so lines logged deep inside a handler carry it too.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import logging
import re
import sys
import traceback
import uuid
from typing import Any, Literal

import orjson

#: The current request's id; None outside a request.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

#: An incoming `X-Request-ID` is kept when it looks like an id: 1..128 of these characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}

LogFormat = Literal["json", "text"]


def accept_request_id(incoming: str | None) -> str:
    """The incoming id when it is well formed, else a new uuid4."""
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())


def api_key_id(key: str | bytes) -> str:
    """A key's public name in logs and limits: the first 8 hex digits of its SHA-256, never the key."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:8]


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record passing through the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: ts, level, logger, msg, request_id, then its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """A record as one readable line, extras as key=value at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = None
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time (test runners swap it), one line per record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def resolve_format(log_format: LogFormat | None) -> LogFormat:
    """The configured format, or json off a terminal and text on one."""
    if log_format is not None:
        return log_format
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(*, log_format: LogFormat | None = None, level: str = "INFO") -> None:
    """Send every log record (the service's and uvicorn's) to stderr through one formatted handler.

    Idempotent: a second call replaces the handler the first one installed and leaves other handlers
    (a test runner's capture) alone. uvicorn's access log is switched off: the middleware writes one
    richer access line per request (`api.access`), so `--no-access-log` is not needed.
    """
    handler = _StderrHandler()
    handler.set_name("retail-service")
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if resolve_format(log_format) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "retail-service"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn installs its own handlers at start-up; route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
