"""A call's spans that are recorded from what the call kept, off the audio path: one `turn` span
per turn (from the end of speech and first-audio times the sessions keep), the cascade's
`cascade.stt`, `cascade.llm` and `cascade.tts` per reply (from its hop timings), the `fallback`
(from the realtime failure to the cascade's first audio), one `tool` span per tool call (from its
audit entry) and a `barge_in` per interruption. The root span and its lifetime are `CallRun.run`'s;
the `provider.connect` spans are opened around the connections themselves."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.sessions.call import CallStats
from relay.sessions.effects import BargeIn
from relay.tracing import CallTrace, SpanName

__all__ = ["Fallback", "record_call_spans", "trace_barge_in", "trace_tool"]

# A cascade reply's hops: span name, its start and end timings, and its "first" timing, whose
# distance from the start is an attribute (LLM: time to first token; TTS: time to first byte).
_HOPS: tuple[tuple[SpanName, str, str, tuple[str, str] | None], ...] = (
    ("cascade.stt", "stt_sent", "stt_done", None),
    ("cascade.llm", "chat_sent", "chat_done", ("first_token", "ttft_ms")),
    ("cascade.tts", "tts_sent", "tts_done", ("tts_first_bytes", "ttfb_ms")),
)


@dataclass(frozen=True, slots=True)
class Fallback:
    """The realtime → cascade fallback of a call: when the realtime path was given up (monotonic),
    why (`cause`, the metric's label) and the error."""

    at: float
    cause: str
    error: str


def record_call_spans(
    trace: CallTrace,
    phases: Sequence[CallStats],
    cut: set[tuple[int, int]],
    fallback: Fallback | None = None,
) -> None:
    """The spans of a call that ended, from its phases' figures (realtime, then the cascade after a
    `fallback`): each turn's `turn` span (its latency, path, and whether a barge-in cut its answer;
    `cut`: (phase, turn) indexes), the cascade's hops, and the fallback."""
    if not trace.recording:
        return
    end = time.monotonic()
    for phase, stats in enumerate(phases):
        for index, (start, first_audio) in enumerate(stats.turn_times):
            latency = round((first_audio - start) * 1000, 1)
            interrupted = (phase, index) in cut
            trace.record(
                "turn",
                start=start,
                end=first_audio,
                latency_ms=latency,
                path=stats.path,
                interrupted=interrupted,
            )
        for reply, timing in enumerate(stats.turn_timings):
            _record_hops(trace, timing, reply, end)
    if fallback is not None:
        cascade = phases[-1].turn_timings
        resumed = next((t["first_frame"] for t in cascade if "first_frame" in t), None)
        trace.record(
            "fallback",
            start=fallback.at,
            end=resumed if resumed is not None else fallback.at,
            cause=fallback.cause,
            error=fallback.error[:300],
            resumed=resumed is not None,  # the cascade's audio reached the caller
        )


def _record_hops(trace: CallTrace, timing: dict[str, float], reply: int, end: float) -> None:
    """The STT, LLM and TTS spans of one cascade reply; a hop still running when the call ended
    ends with it, `relay.finished` false."""
    for name, first, last, attribute in _HOPS:
        if first not in timing:
            continue
        start = timing[first]
        attrs: dict[str, Any] = {"reply": reply, "finished": last in timing}
        if attribute is not None and attribute[0] in timing:
            attrs[attribute[1]] = round((timing[attribute[0]] - start) * 1000, 1)
        trace.record(name, start=start, end=timing.get(last, end), **attrs)


def trace_barge_in(trace: CallTrace, barge_in: BargeIn, path: str) -> None:
    """A barge-in, as an instant span: when the agent's audio was cleared, and how much of the
    answer the caller had heard by then."""
    trace.record("barge_in", start=barge_in.at, end=barge_in.at, heard_ms=barge_in.heard_ms, path=path)


def trace_tool(trace: CallTrace, audit: dict[str, Any], started: float) -> None:
    """A tool call's span, from `started` (monotonic) to now: name, outcome, duration; its bounded
    arguments only with OTEL_RECORD_TOOL_ARGUMENTS."""
    attrs: dict[str, Any] = {
        "tool.name": audit["name"],
        "outcome": audit["outcome"],
        "duration_ms": audit["duration_ms"],
    }
    if trace.record_tool_arguments:
        attrs["tool.arguments"] = orjson.dumps(audit["arguments"]).decode()
    trace.record("tool", start=started, end=time.monotonic(), **attrs)
