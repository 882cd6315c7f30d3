"""Structured logging: readable text by default, JSON lines with LOG_FORMAT=json.

Every line logged while a call is active carries its call SID and stream SID, taken from context
variables that the Media Stream endpoint sets once per call (`bind_call`).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")
stream_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("stream_sid", default="-")

# Standard record attributes, plus uvicorn's duplicate of its message with terminal colours.
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


@contextmanager
def bind_call(call_sid: str, stream_sid: str = "-") -> Iterator[None]:
    """Tags every log line in this context (and tasks started from it) with the call."""
    t1 = call_sid_var.set(call_sid or "-")
    t2 = stream_sid_var.set(stream_sid or "-")
    try:
        yield
    finally:
        call_sid_var.reset(t1)
        stream_sid_var.reset(t2)


class _CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_sid"):
            record.call_sid = call_sid_var.get()
        if not hasattr(record, "stream_sid"):
            record.stream_sid = stream_sid_var.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STD_ATTRS and k not in ("call_sid", "stream_sid") and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # UTC timestamps (the "Z" suffix says so)

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "call_sid": getattr(record, "call_sid", "-"),
            "stream_sid": getattr(record, "stream_sid", "-"),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d} {record.levelname:<7} "
            f"[{getattr(record, 'call_sid', '-')}] {record.name}: {record.getMessage()}"
        )
        extras = _extras(record)
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Installs one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_relay_handler", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._relay_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_CallContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("websockets", "httpx", "httpx2", "uvicorn.access", "azure"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def install_context_filter(handler: logging.Handler) -> None:
    """Lets tests' capture handlers see call_sid/stream_sid too."""
    handler.addFilter(_CallContextFilter())
