"""A call's spans that are recorded from what the call kept, off the audio path: one `turn` span
per turn (from the end of speech and first-audio times the sessions keep) and one `tool` span per
tool call (from its audit entry). The root span and its lifetime are `CallRun.run`'s."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from relay.sessions.call import CallStats
from relay.tracing import CallTrace

__all__ = ["record_turns", "trace_tool"]


def record_turns(trace: CallTrace, phases: Sequence[CallStats], cut: set[tuple[int, int]]) -> None:
    """A `turn` span per turn of every phase (realtime, then the cascade after a fallback): its
    latency, its path, and whether a barge-in cut its answer (`cut`: (phase, turn) indexes)."""
    for phase, stats in enumerate(phases):
        for index, (start, end) in enumerate(stats.turn_times):
            latency = round((end - start) * 1000, 1)
            interrupted = (phase, index) in cut
            trace.record(
                "turn", start=start, end=end, latency_ms=latency, path=stats.path, interrupted=interrupted
            )


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
