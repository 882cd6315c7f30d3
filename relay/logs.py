"""Structured logging: readable text by default, JSON lines with LOG_FORMAT=json.

Every line logged while a call is active carries its call SID and stream SID, taken from context
variables that the Media Stream endpoint sets once per call (`bind_call`). With tracing on
(relay/tracing/), a call's JSON lines also carry the `trace_id` and `span_id` of its trace, bound
the same way (`bind_trace`); with tracing off they carry neither.

A log line is one line whatever a client sent: the text format escapes control characters
(newline, CR, ESC...) in the message and the extras, and indents tracebacks, so no request can
forge a line; both formats cut the message at MAX_MESSAGE_CHARS and each extra at MAX_EXTRA_CHARS.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

call_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_sid", default="-")
stream_sid_var: contextvars.ContextVar[str] = contextvars.ContextVar("stream_sid", default="-")
# (trace id, span id) as 32 and 16 hex digits, while a traced call's span is current; else None
trace_var: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("trace", default=None)
_TRACE_FIELDS = ("trace_id", "span_id")

# Standard record attributes, plus uvicorn's duplicate of its message with terminal colours.
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


MAX_MESSAGE_CHARS = 4000
MAX_EXTRA_CHARS = 500

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators some viewers break lines at
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def bound(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many were left out."""
    return text if len(text) <= limit else f"{text[:limit]}…[{len(text) - limit} more chars]"


def escape(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` bounded, its control characters written as escapes (`\\n`, `\\x1b`): one line."""
    text = bound(text, limit)
    return _CONTROL.sub(_escape_char, text) if _CONTROL.search(text) else text


def _indent_traceback(text: str) -> str:
    """A traceback's lines indented (its last line quotes the exception, whatever it holds)."""
    return "\n".join("    " + _CONTROL_BUT_NEWLINE.sub(_escape_char, line) for line in text.split("\n"))


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


@contextmanager
def bind_trace(trace_id: str, span_id: str) -> Iterator[None]:
    """Tags every log line in this context (and tasks started from it) with a span of a trace."""
    token = trace_var.set((trace_id, span_id))
    try:
        yield
    finally:
        trace_var.reset(token)


class _CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_sid"):
            record.call_sid = call_sid_var.get()
        if not hasattr(record, "stream_sid"):
            record.stream_sid = stream_sid_var.get()
        trace = trace_var.get()
        if trace is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = trace
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STD_ATTRS
        and k not in ("call_sid", "stream_sid", *_TRACE_FIELDS)
        and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # UTC timestamps (the "Z" suffix says so)

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": bound(record.getMessage(), MAX_MESSAGE_CHARS),
            "call_sid": getattr(record, "call_sid", "-"),
            "stream_sid": getattr(record, "stream_sid", "-"),
        }
        if hasattr(record, "trace_id"):
            doc.update((k, getattr(record, k, "-")) for k in _TRACE_FIELDS)
        doc.update(
            (k, bound(v, MAX_EXTRA_CHARS) if isinstance(v, str) else v) for k, v in _extras(record).items()
        )
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d} {record.levelname:<7} "
            f"[{escape(str(getattr(record, 'call_sid', '-')), 40)}] {record.name}: "
            f"{escape(record.getMessage())}"
        )
        extras = _extras(record)
        if extras:
            pairs = (f"{escape(k, 64)}={escape(str(v), MAX_EXTRA_CHARS)}" for k, v in extras.items())
            base += " " + " ".join(pairs)
        if record.exc_info:
            base += "\n" + _indent_traceback(self.formatException(record.exc_info))
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
