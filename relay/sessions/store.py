"""Call records and transcripts: one interface, in memory by default (Redis when REDIS_URL).

A record holds the call's SIDs, parties, provider and mode, start and end, outcome, fallbacks,
the transcript turns of both sides (only what the caller heard) and the tool audit.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


def new_record(call_sid: str, **fields: Any) -> dict[str, Any]:
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


class CallStore(Protocol):
    async def upsert(self, call_sid: str, **fields: Any) -> None:
        """Creates the record when missing, then sets the given fields."""

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        """Appends one transcript turn ('user' or 'assistant')."""

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        """Appends to a list field of the record: 'tools' (audit) or 'fallbacks'."""

    async def get(self, call_sid: str) -> dict[str, Any] | None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """The default store: a dict, bounded to the most recent `max_calls` records."""

    def __init__(self, max_calls: int = 10_000) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._max = max_calls

    def _record(self, call_sid: str) -> dict[str, Any]:
        rec = self._records.get(call_sid)
        if rec is None:
            if len(self._records) >= self._max:
                self._records.pop(next(iter(self._records)))
            rec = self._records[call_sid] = new_record(call_sid)
        return rec

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        self._record(call_sid).update(fields)

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        self._record(call_sid)["transcript"].append({"role": role, "text": text, "ts": time.time(), **meta})

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        self._record(call_sid).setdefault(kind, []).append(entry)

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        rec = self._records.get(call_sid)
        return None if rec is None else {**rec, "transcript": list(rec["transcript"])}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
