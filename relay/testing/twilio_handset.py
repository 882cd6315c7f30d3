"""Twilio's ear on one call: what the relay sends over the Media Stream, played as a phone would.

`Handset` checks each message the relay sends (`media`, `mark` and `clear`; anything else is a
protocol error, recorded in `protocol_errors`), plays the audio on a simulated real-time clock
(`relay.testing.twilio_playback.PlaybackClock`), echoes each `mark` once the audio before it has
played, and on `clear` drops the unplayed audio and echoes every pending mark at once. It records
all of it (`messages`, `clears`, `mark_echoes`, the audio) and offers waits that wake on each
change, never by polling.

`FakeTwilioCall` (relay.testing.twilio) is a Handset that also dials: it sends the mark echoes
(`_send_mark_echo`), says what state the stream is in (`_stream_state`), and stops the playback
when the stream closes (`_halt`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.testing.twilio_playback import (
    SAMPLE_RATE,
    ClearRecord,
    MarkEcho,
    PlaybackClock,
    PlayedChunk,
    Received,
)

__all__ = ["CallEndedError", "Handset"]

log = logging.getLogger("relay.testing.twilio")


class CallEndedError(TimeoutError):
    """A wait can no longer succeed because the stream is closed (a `TimeoutError`, raised early)."""


@dataclass(slots=True)
class _PendingMark:
    name: str
    received_at: float
    handle: asyncio.TimerHandle | None


class Handset:
    """The receiving side of one fake Twilio call (see the module docstring)."""

    def __init__(self, *, call_sid: str, stream_sid: str) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.protocol_errors: list[str] = []
        self.messages: list[Received] = []
        self.clears: list[ClearRecord] = []
        self.mark_echoes: list[MarkEcho] = []
        self.started_at: float | None = None  # when the caller sent `start`
        self.first_media_received_at: float | None = None
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self._clock = PlaybackClock()
        self._received = bytearray()
        self._media_messages = 0
        self._pending_marks: list[_PendingMark] = []
        self._drain_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ what the caller side adds

    def _send_mark_echo(self, name: str) -> None:
        """Sends the echo of mark `name` to the relay (without blocking the caller)."""
        raise NotImplementedError

    def _stream_state(self) -> str:
        """The stream's state in a few words, for `summary`."""
        raise NotImplementedError

    def _halt(self, now: float) -> None:
        """The stream closed at `now`: playback stops, pending marks are never echoed, waits end."""
        self._clock.halt(now)
        self._cancel_timers()
        self._closed.set()
        self._bump()

    # ------------------------------------------------------------------ receiving

    def _on_message(self, raw: str | bytes) -> None:
        now = time.monotonic()
        if isinstance(raw, bytes):
            self.messages.append(Received(now, "<binary>", None, raw))
            self._protocol_error(f"binary frame of {len(raw)} bytes (Twilio error 31950: text frames only)")
            return
        try:
            message = json.loads(raw)
        except ValueError as exc:
            message = None
            error = f"invalid JSON ({exc}): {raw[:80]!r}"
        else:
            error = "" if isinstance(message, dict) else f"not a JSON object: {raw[:80]!r}"
        if message is None or not isinstance(message, dict):
            self.messages.append(Received(now, "<invalid>", None, raw))
            self._protocol_error(error)
            return
        event = message.get("event")
        self.messages.append(Received(now, str(event), message, raw))
        if event not in ("media", "mark", "clear"):
            self._protocol_error(f"unexpected event {event!r} from the relay: {raw[:80]!r}")
            return
        if message.get("streamSid") != self.stream_sid:
            self._protocol_error(
                f"{event} with streamSid {message.get('streamSid')!r}, expected {self.stream_sid!r} (ignored)"
            )
            return
        if event == "media":
            self._on_media(now, message)
        elif event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self._protocol_error(f"mark without a string mark.name: {raw[:80]!r}")
                return
            self._on_mark(now, name)
        else:
            self._on_clear(now)
        self._bump()

    def _on_media(self, now: float, message: dict[str, Any]) -> None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self._protocol_error("media without a string media.payload")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._protocol_error(f"media.payload is not valid base64: {payload[:40]!r}")
            return
        if audio[:4] == b"RIFF":
            self._protocol_error("media.payload starts with a WAV header (Twilio plays it as noise)")
        if self.first_media_received_at is None:
            self.first_media_received_at = now
        self._media_messages += 1
        self._received += audio
        self._clock.enqueue(now, audio)
        self._schedule_drain(now)

    def _on_mark(self, now: float, name: str) -> None:
        # ASSUMPTION (UNVERIFIED in PROTOCOLS.md §1.2): a mark with nothing queued is echoed at once.
        pending = _PendingMark(name, now, None)
        if self._clock.idle(now):
            self._echo(pending, cleared=False)
            return
        due = self._clock.time_of(self._clock.queued_end)
        loop = asyncio.get_running_loop()
        pending.handle = loop.call_later(max(0.0, due - now), self._mark_due, pending)
        self._pending_marks.append(pending)

    def _mark_due(self, pending: _PendingMark) -> None:
        if pending in self._pending_marks:
            self._pending_marks.remove(pending)
            self._echo(pending, cleared=False)
            self._bump()

    def _on_clear(self, now: float) -> None:
        self.clears.append(self._clock.clear(now))
        pending, self._pending_marks = self._pending_marks, []
        for mark in pending:
            if mark.handle is not None:
                mark.handle.cancel()
            self._echo(mark, cleared=True)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _echo(self, pending: _PendingMark, *, cleared: bool) -> None:
        self.mark_echoes.append(MarkEcho(pending.name, pending.received_at, time.monotonic(), cleared))
        self._send_mark_echo(pending.name)

    def _schedule_drain(self, now: float) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        due = self._clock.drain_time(now)
        if due is not None:
            self._drain_timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._on_drain)

    def _on_drain(self) -> None:
        self._drain_timer = None
        now = time.monotonic()
        if not self._clock.idle(now):  # fired a hair early: try again at the exact time
            self._schedule_drain(now)
            return
        self._bump()

    def _cancel_timers(self) -> None:
        for mark in self._pending_marks:
            if mark.handle is not None:
                mark.handle.cancel()
        self._pending_marks = []
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _protocol_error(self, error: str) -> None:
        log.warning("protocol error (call %s): %s", self.call_sid, error)
        self.protocol_errors.append(error)
        self._bump()

    def _bump(self) -> None:
        """Wakes every waiter; each re-checks its condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ observations

    @property
    def received_audio(self) -> bytes:
        """Every outbound μ-law byte received from the relay, in order (played or not)."""
        return bytes(self._received)

    @property
    def played_audio(self) -> bytes:
        """The μ-law bytes actually played so far, in order (received minus unplayed/cleared)."""
        return self._clock.played_audio(time.monotonic())

    @property
    def played_ms(self) -> float:
        """Milliseconds of outbound audio played so far, from the playback clock."""
        return self._clock.position(time.monotonic()) / (SAMPLE_RATE / 1000)

    @property
    def outbound_chunks(self) -> list[PlayedChunk]:
        """Playback record of every outbound `media` payload, computed now (see `PlayedChunk`)."""
        return self._clock.chunks(time.monotonic())

    @property
    def media_message_count(self) -> int:
        """Number of valid outbound `media` messages received."""
        return self._media_messages

    @property
    def marks_received(self) -> list[str]:
        """Names of the marks the relay sent, in order."""
        return [
            r.message["mark"]["name"]
            for r in self.messages
            if r.event == "mark" and r.message is not None and isinstance(r.message.get("mark"), dict)
        ]

    @property
    def first_media_at(self) -> float | None:
        """Seconds from sending `start` to the first outbound `media` (None before any)."""
        if self.first_media_received_at is None or self.started_at is None:
            return None
        return self.first_media_received_at - self.started_at

    def summary(self) -> str:
        """One line describing what was seen so far (used in timeout messages)."""
        return (
            f"{len(self._received)} media bytes in {self._media_messages} messages, "
            f"{self.played_ms:.0f} ms played, {len(self.marks_received)} marks, "
            f"{len(self.mark_echoes)} echoed, {len(self.clears)} clears, "
            f"{len(self.protocol_errors)} protocol errors; stream {self._stream_state()}"
        )

    # ------------------------------------------------------------------ waiting

    async def _wait(self, what: str, done: Callable[[], bool], timeout: float, *, needs_open: bool) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    if needs_open and self._closed.is_set():
                        raise CallEndedError(
                            f"stream closed while waiting for {what}; seen: {self.summary()}"
                        )
                    await self._changed.wait()
        except CallEndedError:
            raise
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout:g} s waiting for {what}; seen: {self.summary()}"
            ) from None

    async def wait_for_media(self, min_bytes: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Waits until at least `min_bytes` of outbound audio were received in total."""
        await self._wait(
            f"{min_bytes} bytes of outbound media",
            lambda: len(self._received) >= min_bytes,
            timeout,
            needs_open=True,
        )

    async def wait_for_clear(self, timeout: float = 5.0, *, count: int = 1) -> ClearRecord:  # noqa: ASYNC109
        """Waits until `count` clears were received in total; returns the `count`-th."""
        await self._wait(f"clear #{count}", lambda: len(self.clears) >= count, timeout, needs_open=True)
        return self.clears[count - 1]

    async def wait_for_mark_echo(self, name: str | None = None, timeout: float = 5.0) -> MarkEcho:  # noqa: ASYNC109
        """Waits until the mark `name` (or, with None, any mark) was echoed; returns the echo."""

        def found() -> MarkEcho | None:
            return next((m for m in self.mark_echoes if name is None or m.name == name), None)

        await self._wait(
            f"the echo of mark {name!r}" if name else "a mark echo",
            lambda: found() is not None,
            timeout,
            needs_open=True,
        )
        echo = found()
        if echo is None:  # unreachable: the wait returned because found() was not None
            raise RuntimeError("mark echo vanished")
        return echo

    async def wait_closed(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Waits until the stream is closed (by either side) or the upgrade was rejected."""
        await self._wait("the stream to close", self._closed.is_set, timeout, needs_open=False)

    async def wait_playback_idle(self, timeout: float = 5.0, *, min_bytes: int = 0) -> None:  # noqa: ASYNC109
        """Waits until at least `min_bytes` of outbound audio were received and all audio received
        so far has played (or the stream ended). `min_bytes` matters when the relay may not have
        forwarded a reply yet: with nothing received, playback is idle at once."""
        await self._wait(
            "playback to go idle" + (f" after {min_bytes} bytes" if min_bytes else ""),
            lambda: len(self._received) >= min_bytes and self._clock.idle(time.monotonic()),
            timeout,
            needs_open=False,
        )
