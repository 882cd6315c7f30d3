"""Call records and transcripts: one interface, in memory by default (Redis when REDIS_URL).

What a record holds and `RecordWrite` are in relay/sessions/records.py; the Redis store, and its
layout, in relay/sessions/redis_store.py.

The relay never awaits a store write on a call's path: its writes go through the process's outbox
(relay/sessions/outbox.py) as `RecordWrite`s, which retries them while the store is away and hands
them to `apply` in order. A write may therefore reach Redis twice (a timed-out attempt that Redis
ran after all, then the retry): `apply` runs each (writer, seq) at most once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from relay.sessions.records import EVENT_KINDS, LIST_FIELDS, RecordWrite, WriteOp, new_record
from relay.sessions.redis_store import RedisStore

if TYPE_CHECKING:
    from relay.config import Settings

__all__ = [
    "EVENT_KINDS",
    "LIST_FIELDS",
    "CallStore",
    "MemoryStore",
    "RecordWrite",
    "RedisStore",
    "WriteOp",
    "make_store",
    "new_record",
]


class CallStore(Protocol):
    async def apply(self, write: RecordWrite) -> None:
        """Runs `write` (the outbox's way in); a (writer, seq) already applied is skipped."""

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        """Creates the record when missing, then sets the given fields."""

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        """Appends one transcript turn ('user' or 'assistant')."""

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        """Appends to a list field of the record: 'tools' (audit), 'fallbacks', 'errors' or 'agents'."""

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

    async def apply(self, write: RecordWrite) -> None:
        # Nothing to deduplicate: a write to a dict cannot half-fail.
        if write.op == "add_turn":
            role, text = write.args
            self._record(write.call_sid)["transcript"].append(
                {"role": role, "text": text, "ts": write.at, **write.kwargs}
            )
        else:
            await getattr(self, write.op)(write.call_sid, *write.args, **write.kwargs)

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        self._record(call_sid).update(fields)

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        await self.apply(RecordWrite(call_sid, "add_turn", (role, text), meta))

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        self._record(call_sid).setdefault(kind, []).append(entry)

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        rec = self._records.get(call_sid)
        return None if rec is None else {**rec, "transcript": list(rec["transcript"])}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def make_store(settings: Settings) -> CallStore:
    """RedisStore when REDIS_URL is set (records kept CALL_RECORD_TTL_DAYS), else MemoryStore."""
    if settings.redis_url is None:
        return MemoryStore()
    return RedisStore(
        settings.redis_url.get_secret_value(), ttl_seconds=settings.call_record_ttl_days * 86_400
    )
