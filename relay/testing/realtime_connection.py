"""What the fake Realtime server records of each connection (`FakeConnection`), and how tests wait.

Everything a test may want to assert is recorded on `FakeConnection` (events both ways with their
times, audio, truncations, items, responses, refused events); `wait_for` waits for an event without
polling. `relay.testing.realtime_engine` fills it in; tests import it from `relay.testing.realtime`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from websockets.datastructures import Headers

from relay.testing.realtime_dialects import Dialect
from relay.testing.realtime_replies import Event, ResponseRecord

if TYPE_CHECKING:
    from relay.testing.realtime_engine import ConnectionEngine

__all__ = [
    "AuthKind",
    "Direction",
    "EventNotSeen",
    "FakeConnection",
    "InvalidEvent",
    "Provider",
    "TruncateRecord",
]

AuthKind = Literal["bearer", "api-key", "api-key-query"]
Provider = Literal["openai", "azure"]
Direction = Literal["received", "sent", "any"]


class EventNotSeen(TimeoutError):
    """`wait_for` / `wait_connection` gave up: timeout, or the connection closed first."""


@dataclass(frozen=True)
class TruncateRecord:
    """One `conversation.item.truncate` as received, and whether the fake accepted it."""

    item_id: str
    content_index: int
    audio_end_ms: int
    audio_ms: float | None  # audio of the item available at that moment (sent, or already truncated)
    accepted: bool
    error: str | None = None


@dataclass(frozen=True)
class InvalidEvent:
    """A client frame refused as malformed (bad JSON, unknown type, wrong shape for the dialect)."""

    event: Any
    code: str
    message: str


@dataclass(eq=False)
class FakeConnection:
    """What one accepted connection did. Lists only grow; read them after `wait_for`."""

    path: str
    query: dict[str, str]
    headers: Headers
    provider: Provider
    dialect: Dialect
    protocol_auth: AuthKind
    model: str  # the model (OpenAI) or deployment (Azure)
    api_version: str | None
    beta_header: bool  # an `OpenAI-Beta: realtime=v1` header was sent
    session: Event = field(default_factory=dict)
    received: list[tuple[float, Event]] = field(default_factory=list)
    sent: list[tuple[float, Event]] = field(default_factory=list)
    audio_in: bytearray = field(default_factory=bytearray)
    audio_sent: dict[str, bytearray] = field(default_factory=dict)
    truncates: list[TruncateRecord] = field(default_factory=list)
    function_outputs: dict[str, str] = field(default_factory=dict)
    items: list[Event] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    transcripts: list[tuple[str, str]] = field(default_factory=list)  # (user item id, transcript)
    responses: list[ResponseRecord] = field(default_factory=list)
    invalid_events: list[InvalidEvent] = field(default_factory=list)
    errors: list[Event] = field(default_factory=list)  # the `error` objects of every error event sent
    active_response_conflicts: int = 0
    dropped: bool = False
    frozen_at: float | None = None  # time.monotonic() when the connection went silent (knobs)
    garbage_sent: int = 0  # malformed frames sent by the `flood_after_responses` knob
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)
    _waiters: int = field(default=0, repr=False)
    _engine: ConnectionEngine | None = field(default=None, repr=False)

    @property
    def audio_sent_bytes(self) -> int:
        """μ-law (or PCM) bytes of response audio sent so far, over all items."""
        return sum(len(audio) for audio in self.audio_sent.values())

    def events(self, event_type: str, direction: Direction = "any") -> list[Event]:
        """Events of `event_type` received from the client and/or sent by the fake, in order."""
        sources = {"received": [self.received], "sent": [self.sent], "any": [self.received, self.sent]}
        return [e for src in sources[direction] for _, e in src if e.get("type") == event_type]

    async def wait_for(
        self,
        event_type: str,
        timeout: float = 5.0,  # noqa: ASYNC109 - the API the tests use
        predicate: Callable[[Event], bool] | None = None,
        *,
        n: int = 1,
        direction: Direction = "any",
    ) -> Event:
        """The `n`-th event of `event_type` (matching `predicate`), waiting for it if needed.

        Client and server event names never collide, so `direction="any"` finds either. Raises
        `EventNotSeen` on timeout or when the connection closes without it.
        """

        def found() -> list[Event]:
            return [e for e in self.events(event_type, direction) if predicate is None or predicate(e)]

        async with self._cond:
            self._waiters += 1
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: len(found()) >= n or self.closed.is_set())
            except TimeoutError:
                pass
            finally:
                self._waiters -= 1
            hits = found()
            if len(hits) >= n:
                return hits[n - 1]
        why = "the connection closed" if self.closed.is_set() else f"{timeout}s passed"
        got = [e.get("type") for _, e in self.received][-15:], [e.get("type") for _, e in self.sent][-15:]
        raise EventNotSeen(
            f"{event_type!r} #{n} not seen before {why}; last received {got[0]}, sent {got[1]}"
        )

    async def send_event(self, event: Event) -> None:
        """Sends a raw server event (as given, plus an `event_id`), e.g. to inject oddities."""
        assert self._engine is not None
        await self._engine.send(event, raw=True)

    async def send_raw(self, text: str) -> None:
        """Sends one text frame exactly as given (not JSON, wrong shapes...), bypassing `frozen`."""
        assert self._engine is not None
        await self._engine.ws.send(text)

    async def drop(self) -> None:
        """Closes the socket abruptly now (like the `Drop` reply, honouring `close_code`)."""
        assert self._engine is not None
        await self._engine.drop()

    async def _record(self, log: list[tuple[float, Event]], event: Event) -> None:
        # CLOCK_MONOTONIC, read now: asyncio's default loop.time() is the same clock, while uvloop's
        # is cached per loop turn at ms resolution (the benchmarks run this fake under uvloop).
        log.append((time.monotonic(), event))
        if self._waiters:  # nobody waiting (the benchmarks): no lock and notify per event
            async with self._cond:
                self._cond.notify_all()
