"""The call traces a webhook started, kept by call SID for the call's Media Stream.

A call's root span starts at its webhook and lives until the call ends, and the stream that
continues it arrives a moment later on another request. Until then the trace waits here: bounded
(past `max_calls` the oldest is ended first) and for a while only (a stream can only start while
its token is valid). A trace no stream took is ended with `relay.outcome=no_stream`, at its
deadline, so that it is exported whole rather than lost.
"""

from __future__ import annotations

from collections import OrderedDict

from relay.tracing.spans import CallTrace

__all__ = ["NO_STREAM", "PendingTraces"]

NO_STREAM = "no_stream"  # the outcome of a call whose stream never came to this process


class PendingTraces:
    """Call SID -> (deadline on `time.monotonic()`, the call's trace), oldest first."""

    def __init__(self, max_calls: int) -> None:
        self.max_calls = max_calls
        self._kept: OrderedDict[str, tuple[float, CallTrace]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, trace: CallTrace, until: float, now: float) -> None:
        """Keeps `trace` for its call until `until`."""
        self.expire(now)
        self._kept[trace.call_sid] = (until, trace)
        self._kept.move_to_end(trace.call_sid)
        if len(self._kept) > self.max_calls:
            _, (_, oldest) = self._kept.popitem(last=False)
            oldest.end(outcome=NO_STREAM)

    def get(self, call_sid: str, now: float) -> CallTrace | None:
        """The trace kept for `call_sid`, still kept."""
        self.expire(now)
        kept = self._kept.get(call_sid)
        return None if kept is None else kept[1]

    def take(self, call_sid: str, now: float) -> CallTrace | None:
        """The trace kept for `call_sid`, no longer kept (its taker ends it)."""
        self.expire(now)
        kept = self._kept.pop(call_sid, None)
        return None if kept is None else kept[1]

    def discard(self, trace: CallTrace) -> None:
        """Forgets `trace` (ended by its owner), if it is the one kept for its call."""
        kept = self._kept.get(trace.call_sid)
        if kept is not None and kept[1] is trace:
            del self._kept[trace.call_sid]

    def expire(self, now: float) -> None:
        """Ends the traces whose deadline passed (at their deadline), from the oldest end."""
        while self._kept:
            call_sid, (until, trace) = next(iter(self._kept.items()))
            if until > now:
                return
            del self._kept[call_sid]
            trace.end(at=until, outcome=NO_STREAM)

    def end_all(self) -> None:
        """Ends every kept trace now (the process stops before their streams came)."""
        while self._kept:
            _, (_, trace) = self._kept.popitem(last=False)
            trace.end(outcome=NO_STREAM)
