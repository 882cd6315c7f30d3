"""What a call record is, and one change to it as the outbox queues it (`RecordWrite`).

A record holds the call's SIDs, parties, provider and mode, start and end, outcome, fallbacks,
the transcript turns of both sides (only what the caller heard) and the tool audit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EVENT_KINDS", "LIST_FIELDS", "RecordWrite", "WriteOp", "new_record"]

EVENT_KINDS = ("tools", "fallbacks", "errors", "agents")
"""The kinds `add_event` accepts: the tool audit, provider fallbacks, errors during the call, and
the agents the call passed through (its first, then one per handoff)."""

LIST_FIELDS = ("transcript", *EVENT_KINDS)
"""Record fields that are lists: one Redis list each, appended to without rewriting the record."""

WriteOp = Literal["upsert", "add_turn", "add_event"]


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One change to one call's record, as the outbox queues it: the store method `op` with `args`
    and `kwargs` after the call SID. `at` is when it was queued (the record's `started_at` when it
    creates the record, a turn's `ts`); `writer` (one per process) and `seq` (increasing) let a store
    apply a retried write at most once. An empty `writer` skips that check.
    """

    call_sid: str
    op: WriteOp
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    writer: str = ""
    seq: int = 0


def new_record(call_sid: str, **fields: Any) -> dict[str, Any]:
    """A fresh record with every field at its default, then `fields`."""
    record: dict[str, Any] = {
        "call_sid": call_sid,
        "stream_sid": "",
        "from": "",
        "to": "",
        "provider": "",
        "mode": "",
        "started_at": time.time(),
        "ended_at": None,
        "status": "in-progress",
        "outcome": "",
        "fallbacks": [],
        "transcript": [],
        "tools": [],
    }
    record.update(fields)
    return record
