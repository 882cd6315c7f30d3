"""A call's spans, behind a small API that costs nothing when tracing is off.

`Span` wraps an OpenTelemetry span, or nothing: with tracing off every method returns at once.
Attributes are given as keywords: `call_sid` and `stream_sid` become `twilio.call_sid` and
`twilio.stream_sid`, a name with a dot (passed as `**{"http.route": path}`) is taken as it is,
any other name `x` becomes `relay.x`; a None value is left out. Times given to `record` are
`time.monotonic()` readings, the clock the call cores keep: a span can be recorded after the fact
from two timestamps, so the per-frame path never touches the tracer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

from opentelemetry import trace as otel
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue as OtelValue

from relay.logs import bind_trace

__all__ = [
    "NO_SPAN",
    "AttributeValue",
    "CallTrace",
    "Span",
    "SpanName",
    "attribute_name",
    "epoch_ns",
    "otel_attributes",
]

SpanName = Literal[
    "call",  # the root: one per call, from its webhook (or stream) to its end
    "webhook",  # /incoming-call or /outbound-answer
    "provider.connect",  # the realtime connection, and each reconnect
    "turn",  # end of the caller's speech to the first agent audio
    "tool",
    "cascade.stt",
    "cascade.llm",
    "cascade.tts",
    "fallback",
    "barge_in",
    "hang_up",
]
AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float] | None

# Spans that serve a request or call another service; the others are INTERNAL.
_KINDS: dict[str, otel.SpanKind] = {
    "webhook": otel.SpanKind.SERVER,
    "provider.connect": otel.SpanKind.CLIENT,
    "cascade.stt": otel.SpanKind.CLIENT,
    "cascade.llm": otel.SpanKind.CLIENT,
    "cascade.tts": otel.SpanKind.CLIENT,
}
_TWILIO = {"call_sid": "twilio.call_sid", "stream_sid": "twilio.stream_sid"}


def attribute_name(key: str) -> str:
    """The attribute a keyword names (see the module's docstring)."""
    return key if "." in key else _TWILIO.get(key) or f"relay.{key}"


def otel_attributes(attrs: Mapping[str, AttributeValue]) -> dict[str, OtelValue]:
    """Keywords as OpenTelemetry attributes: their names (`attribute_name`), None values left out."""
    return {attribute_name(k): v for k, v in attrs.items() if v is not None}


def epoch_ns(monotonic_s: float) -> int:
    """A `time.monotonic()` reading as nanoseconds since the epoch, the time spans carry."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


class Span:
    """One span of a call's trace, or nothing (tracing off, or the trace not sampled)."""

    __slots__ = ("_span", "_tracer")

    def __init__(self, span: otel.Span | None = None, tracer: otel.Tracer | None = None) -> None:
        self._span = span if span is not None and span.is_recording() else None
        self._tracer = tracer

    @property
    def recording(self) -> bool:
        """True when this span is exported (tracing on, and its trace sampled)."""
        return self._span is not None

    @property
    def ids(self) -> tuple[str, str] | None:
        """(trace id, span id) in hex, as the JSON logs carry them; None when not recording."""
        if self._span is None:
            return None
        context = self._span.get_span_context()
        return otel.format_trace_id(context.trace_id), otel.format_span_id(context.span_id)

    def set(self, **attrs: AttributeValue) -> None:
        """Sets attributes on this span."""
        if self._span is not None:
            self._span.set_attributes(otel_attributes(attrs))

    def event(self, name: str, /, **attrs: AttributeValue) -> None:
        """A timestamped event on this span (e.g. `reconnect`, `mark`)."""
        if self._span is not None:
            self._span.add_event(name, otel_attributes(attrs))

    def fail(self, error: BaseException | str) -> None:
        """Marks this span failed: an exception is recorded as its event, a text is the status."""
        if self._span is None:
            return
        if isinstance(error, BaseException):
            self._span.record_exception(error)
            error = f"{type(error).__name__}: {error}"
        self._span.set_status(otel.Status(otel.StatusCode.ERROR, error))

    def start(self, name: SpanName, /, *, at: float | None = None, **attrs: AttributeValue) -> Span:
        """A child span, started now (or at `at`, a `time.monotonic()` reading); `end()` ends it."""
        return self._child(name, at, attrs)

    def _child(self, name: SpanName, at: float | None, attrs: Mapping[str, AttributeValue]) -> Span:
        if self._span is None or self._tracer is None:
            return NO_SPAN
        child = self._tracer.start_span(
            name,
            context=otel.set_span_in_context(self._span, Context()),
            kind=_KINDS.get(name, otel.SpanKind.INTERNAL),
            attributes=otel_attributes(attrs),
            start_time=None if at is None else epoch_ns(at),
        )
        return Span(child, self._tracer)

    @contextmanager
    def span(self, name: SpanName, /, **attrs: AttributeValue) -> Iterator[Span]:
        """A child span for the `with` block, whose log lines carry its ids; an exception that
        leaves the block marks it failed."""
        child = self._child(name, None, attrs)
        ids = child.ids
        try:
            if ids is None:
                yield child
            else:
                with bind_trace(*ids):
                    yield child
        except BaseException as exc:
            child.fail(exc)
            raise
        finally:
            child.end()

    def record(self, name: SpanName, /, *, start: float, end: float, **attrs: AttributeValue) -> None:
        """A finished child span from two `time.monotonic()` readings."""
        if self._span is not None:
            self._child(name, start, attrs).end(at=end)

    def end(self, *, at: float | None = None, **attrs: AttributeValue) -> None:
        """Ends this span (now, or at `at`), with last attributes; again: nothing."""
        span, self._span = self._span, None
        if span is not None:
            if attrs:
                span.set_attributes(otel_attributes(attrs))
            span.end(end_time=None if at is None else epoch_ns(at))


NO_SPAN = Span()  # the span of nothing: every method returns at once


class CallTrace(Span):
    """The root span of one call, kept open for the call: its children are the webhook, the
    provider connections, the turns, the tools... `end(outcome=...)` ends the call's trace."""

    __slots__ = ("_forget", "call_sid", "record_tool_arguments")

    def __init__(
        self,
        call_sid: str,
        span: otel.Span | None = None,
        tracer: otel.Tracer | None = None,
        *,
        record_tool_arguments: bool = False,
        forget: Callable[[CallTrace], None] | None = None,
    ) -> None:
        super().__init__(span, tracer)
        self.call_sid = call_sid
        self.record_tool_arguments = record_tool_arguments  # OTEL_RECORD_TOOL_ARGUMENTS
        self._forget = forget

    @contextmanager
    def bind_logs(self) -> Iterator[None]:
        """Log lines in this context carry the call's trace id and root span id."""
        ids = self.ids
        if ids is None:
            yield
        else:
            with bind_trace(*ids):
                yield

    def end(self, *, at: float | None = None, **attrs: AttributeValue) -> None:
        """Ends the call's trace, e.g. `end(outcome="completed")`; no longer kept for a stream."""
        if self._forget is not None:
            forget, self._forget = self._forget, None
            forget(self)
        super().end(at=at, **attrs)
