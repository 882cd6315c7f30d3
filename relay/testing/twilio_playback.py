"""Twilio's outbound playback as the fake call models it, and the records of what the relay sent.

`PlaybackClock` is a sans-I/O model of Twilio's playback buffer: audio plays in real time from the
moment it is queued, and a `clear` drops what has not played. `Handset`
(relay/testing/twilio_handset.py), the receiving side of `FakeTwilioCall`, drives it with
`time.monotonic()` seconds and exposes these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAMPLE_RATE = 8000  # μ-law bytes per second
_EPSILON = 1e-6  # float slack (in bytes) when mapping the clock to byte positions


@dataclass(frozen=True, slots=True)
class Received:
    """One WebSocket message from the relay: arrival time, event name, parsed JSON, raw frame.

    `event` is `"<binary>"` for a binary frame and `"<invalid>"` for text that is not a JSON
    object; `message` is None for both.
    """

    at: float
    event: str
    message: dict[str, Any] | None
    raw: str | bytes


@dataclass(frozen=True, slots=True)
class PlayedChunk:
    """Playback record of one outbound `media` payload, as of the moment it was read.

    `arrived_at`: when the message was received. `started_at`: when its first byte started
    playing (None if it has not, or was cleared before it could). `stopped_at`: when playback of
    it ended, either at its last byte or cut by a `clear` (None while playing or queued).
    `played_bytes`: bytes of it actually played so far. `cleared`: a `clear` dropped part or all
    of it (`size - played_bytes` bytes, once stopped).
    """

    index: int
    arrived_at: float
    size: int
    started_at: float | None
    stopped_at: float | None
    played_bytes: int
    cleared: bool

    @property
    def dropped_bytes(self) -> int:
        """Bytes a `clear` discarded (0 unless `cleared`)."""
        return self.size - self.played_bytes if self.cleared else 0


@dataclass(frozen=True, slots=True)
class ClearRecord:
    """A `clear` from the relay: when, total bytes played by then, unplayed bytes it dropped."""

    at: float
    played_bytes: int
    dropped_bytes: int

    @property
    def played_ms(self) -> float:
        """Milliseconds of audio played in total when the clear arrived."""
        return self.played_bytes / (SAMPLE_RATE / 1000)


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """A mark sent back to the relay: its name, when the relay's mark arrived, when it was echoed,
    and whether it was echoed because of a `clear` (True) rather than after playback (False)."""

    name: str
    received_at: float
    echoed_at: float
    cleared: bool


@dataclass(slots=True)
class _Chunk:
    index: int
    payload: bytes
    arrived_at: float
    start_pos: int  # position of its first byte on the playback timeline
    end_pos: int  # one past its last byte; lowered by a clear
    run_start: float  # the playback run it belongs to began at this time...
    run_base: int  # ...at this position
    cleared: bool = False


class PlaybackClock:
    """Sans-I/O model of Twilio's outbound playback buffer; times are passed in (seconds).

    Audio is played at 8 bytes per ms from the moment it is queued; playback idles when the
    queue is empty, so a gap in delivery is a gap in playback. Positions count bytes on one
    timeline of everything ever queued minus what `clear` dropped; a continuous stretch of
    playback is a "run", which maps positions to times linearly.
    """

    def __init__(self) -> None:
        self._chunks: list[_Chunk] = []
        self._queued_end = 0  # position one past the last queued (and not cleared) byte
        self._run_start = 0.0
        self._run_base = 0
        self._halted_at: float | None = None

    @property
    def queued_end(self) -> int:
        """Position one past the last queued byte: where a mark received now would sit."""
        return self._queued_end

    @property
    def halted(self) -> bool:
        """True once `halt` was called (the stream ended)."""
        return self._halted_at is not None

    def position(self, now: float) -> int:
        """Total bytes played by time `now`."""
        if self._halted_at is not None:
            now = min(now, self._halted_at)
        elapsed = int((now - self._run_start) * SAMPLE_RATE + _EPSILON)
        return max(self._run_base, min(self._queued_end, self._run_base + elapsed))

    def idle(self, now: float) -> bool:
        """True when nothing queued is left to play at `now` (always True once halted)."""
        return self.halted or self.position(now) >= self._queued_end

    def time_of(self, pos: int) -> float:
        """When position `pos` (within the queued audio of the current run) is reached."""
        return self._run_start + (pos - self._run_base) / SAMPLE_RATE

    def drain_time(self, now: float) -> float | None:
        """When the queue will be empty, or None if it already is."""
        return None if self.idle(now) else self.time_of(self._queued_end)

    def enqueue(self, now: float, payload: bytes) -> None:
        """Queues a payload that arrived at `now`; starts a new run if playback was idle."""
        if self.halted:
            return
        if self.position(now) >= self._queued_end:
            self._run_start = now
            self._run_base = self._queued_end
        start = self._queued_end
        self._queued_end += len(payload)
        self._chunks.append(
            _Chunk(len(self._chunks), payload, now, start, self._queued_end, self._run_start, self._run_base)
        )

    def clear(self, now: float) -> ClearRecord:
        """Drops everything not yet played at `now`; returns what was played and dropped."""
        played = self.position(now)
        dropped = self._queued_end - played
        for chunk in reversed(self._chunks):
            if chunk.end_pos <= played:
                break
            chunk.end_pos = max(chunk.start_pos, played)
            chunk.cleared = True
        self._queued_end = played
        return ClearRecord(now, played, dropped)

    def halt(self, now: float) -> None:
        """Stops the clock for good (the socket closed): nothing plays after `now`."""
        if self._halted_at is None:
            self._halted_at = now

    def chunks(self, now: float) -> list[PlayedChunk]:
        """Playback records of every payload as of `now`."""
        pos = self.position(now)
        out: list[PlayedChunk] = []
        for c in self._chunks:
            played = max(0, min(pos, c.end_pos) - c.start_pos)
            started = c.run_start + (c.start_pos - c.run_base) / SAMPLE_RATE if played > 0 else None
            stopped: float | None = None
            if played > 0 and pos >= c.end_pos:
                stopped = c.run_start + (c.end_pos - c.run_base) / SAMPLE_RATE
            out.append(
                PlayedChunk(c.index, c.arrived_at, len(c.payload), started, stopped, played, c.cleared)
            )
        return out

    def played_audio(self, now: float) -> bytes:
        """The μ-law bytes actually played by `now`, in order."""
        pos = self.position(now)
        parts: list[bytes] = []
        for c in self._chunks:
            n = min(pos, c.end_pos) - c.start_pos
            if n > 0:
                parts.append(c.payload[:n])
        return b"".join(parts)
