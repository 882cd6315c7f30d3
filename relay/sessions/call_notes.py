"""What the relay learns about a call before its stream starts, kept for the stream: the call's
agent and placeholder values (from its webhook), an outbound call's context and agent (from
`POST /calls` until its answer webhook) and its answering-machine result when that comes first.

Each is kept in memory, bounded (oldest first) and for a while only: the values until the
stream token can no longer be used, the context and the AMD result while the call may ring.
Another instance learns the context from the call's record (webhooks/outbound.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from relay.config import Settings
from relay.expiring import ExpiringValues
from relay.placeholders import call_values

__all__ = ["MAX_REMEMBERED_CALLS", "CallNotes"]

MAX_REMEMBERED_CALLS = 20_000  # calls remembered at most, per kind of note (the oldest first)


class CallNotes:
    """Per-call notes of one process, each forgotten after its own deadline."""

    def __init__(self, settings: Settings, *, ringing_ttl: float) -> None:
        self.settings = settings
        self.ringing_ttl = ringing_ttl
        # call SID -> (agent name, placeholder values); call SID -> (context, agent name or None)
        self._values: ExpiringValues[str, tuple[str, dict[str, str]]] = ExpiringValues(MAX_REMEMBERED_CALLS)
        self._contexts: ExpiringValues[str, tuple[dict[str, str], str | None]] = ExpiringValues(
            MAX_REMEMBERED_CALLS
        )
        self._answered_by: ExpiringValues[str, str] = ExpiringValues(MAX_REMEMBERED_CALLS)

    def remember_call(
        self,
        call_sid: str,
        *,
        agent: str,
        caller: str,
        called: str,
        direction: str,
        context: Mapping[str, str] | None = None,
    ) -> None:
        """At a call's webhook: its agent's name and placeholder values, until its stream starts."""
        now = time.monotonic()
        values = call_values(context or {}, caller=caller, called=called, direction=direction)
        self._values.put(call_sid, (agent, values), now + self.settings.stream_token_ttl + 1, now)

    def call(
        self, call_sid: str, stream_parameters: Mapping[str, str] | None = None
    ) -> tuple[str | None, dict[str, str]]:
        """The call's agent name and placeholder values: as its webhook remembered them (for the
        early connection at the webhook, then at the stream's start), else (a stream whose webhook
        was served elsewhere) from its stream parameters `agent`, `from`, `to` and `direction`,
        with no context."""
        remembered = self._values.get(call_sid, time.monotonic())
        if remembered is not None:
            return remembered
        params = stream_parameters or {}
        values = call_values(
            {},
            caller=params.get("from", ""),
            called=params.get("to", ""),
            direction=params.get("direction", "inbound"),
        )
        return params.get("agent") or None, values

    def keep_context(self, call_sid: str, context: Mapping[str, str], agent: str | None = None) -> None:
        """An outbound call's context and the agent it asked for, until its answer webhook."""
        now = time.monotonic()
        self._contexts.put(call_sid, (dict(context), agent), now + self.ringing_ttl, now)

    def context(self, call_sid: str) -> tuple[dict[str, str], str | None] | None:
        """The context and agent of a call this instance placed; None for any other call."""
        return self._contexts.get(call_sid, time.monotonic())

    def forget_context(self, call_sid: str) -> None:
        self._contexts.pop(call_sid)

    def note_answered_by(self, call_sid: str, answered_by: str) -> None:
        """An AMD result, for a run that starts after it arrived (`take_answered_by`)."""
        now = time.monotonic()
        self._answered_by.put(call_sid, answered_by, now + self.ringing_ttl, now)

    def take_answered_by(self, call_sid: str) -> str | None:
        """The AMD result that arrived before the call's run asked, if any (taken)."""
        return self._answered_by.pop(call_sid)
