"""What the caller has heard: outbound marks, playback generations and the truncation point.

Outbound audio is covered by named marks `<generation>:<seq>` (after every chunk, or after a run
of chunks: the bridge marks every ≥ 500 ms and each item's end); Twilio echoes a mark when the
audio before it has played **or** was discarded by a `clear`. So every `clear` bumps the playback
generation and marks of an older generation are ignored: they are not evidence of playback.

The heard position of an item is what marks acknowledged, plus the time elapsed since the chunk
now playing started (the later of the previous acknowledgement and the chunk's send time), capped
at the end of that chunk: never more than was sent. Times come from the caller (an injected
clock), in seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BYTES_PER_MS = 8  # μ-law 8 kHz


@dataclass(slots=True)
class _PendingMark:
    name: str | None  # None: audio sent but not yet followed by a mark (always the last entry)
    item_id: str
    start_ms: int  # position of this chunk's first byte within its item
    end_ms: float  # position after this chunk within its item
    sent_at: float


@dataclass(frozen=True, slots=True)
class Cut:
    """Where playback stopped: truncate `item_id` at `audio_end_ms`; delete the items in `unheard`."""

    item_id: str
    audio_end_ms: int
    sent_ms: int
    unheard: tuple[str, ...] = ()


class PlaybackTracker:
    """Tracks outbound audio per item against Twilio's mark echoes. Sans-I/O."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix  # distinguishes this tracker's marks from another session's on the same call
        self.generation = 0
        self._seq = 0
        self._pending: deque[_PendingMark] = deque()
        self._sent_bytes: dict[str, int] = {}
        self._acked_ms: dict[str, float] = {}
        self._last_ack_at: float | None = None

    # --- outbound -------------------------------------------------------------------------------
    def on_audio_sent(self, item_id: str, nbytes: int, now: float, *, mark: bool = True) -> str | None:
        """Records a chunk sent to Twilio. With `mark`, returns the name of the mark to send right
        after it; without, the chunk joins the audio the next mark will cover (fewer messages)."""
        start = self._sent_bytes.get(item_id, 0)
        total = start + nbytes
        self._sent_bytes[item_id] = total
        tail = self._pending[-1] if self._pending else None
        if tail is not None and tail.name is None and tail.item_id == item_id:
            tail.end_ms = total / BYTES_PER_MS
        else:
            self.mark(now)  # the previous item's unmarked audio gets its own mark first
            entry = _PendingMark(None, item_id, start // BYTES_PER_MS, total / BYTES_PER_MS, now)
            self._pending.append(entry)
        return self.mark(now) if mark else None

    def mark(self, now: float) -> str | None:
        """Names the audio sent since the last mark; returns the mark to send, or None if there is none."""
        tail = self._pending[-1] if self._pending else None
        if tail is None or tail.name is not None:
            return None
        self._seq += 1
        tail.name = f"{self.prefix}{self.generation}:{self._seq}"
        return tail.name

    def unmarked_ms(self) -> float:
        tail = self._pending[-1] if self._pending else None
        return tail.end_ms - tail.start_ms if tail is not None and tail.name is None else 0.0

    def sent_ms(self, item_id: str) -> int:
        return self._sent_bytes.get(item_id, 0) // BYTES_PER_MS

    # --- inbound ----------------------------------------------------------------------------------
    def on_mark(self, name: str, now: float) -> bool:
        """Handles a mark echo. Returns False for marks of an older generation or unknown names."""
        gen, _, _ = name.partition(":")
        if gen != f"{self.prefix}{self.generation}":
            return False
        while self._pending:
            mark = self._pending.popleft()
            self._acked_ms[mark.item_id] = mark.end_ms
            self._last_ack_at = now
            if mark.name == name:
                return True
        return False

    def started_playing(self, item_id: str, now: float) -> float | None:
        """When Twilio began playing `item_id`, once its mark echoes report some of it played: that
        much audio before `now` (Twilio plays in real time). None while none of it is reported."""
        played_ms = self._acked_ms.get(item_id, 0.0)
        return now - played_ms / 1000 if played_ms > 0 else None

    @property
    def outstanding(self) -> bool:
        """True while Twilio holds audio we sent that has not played yet."""
        return bool(self._pending)

    def pending_items(self) -> set[str]:
        """Items with audio still queued at Twilio."""
        return {m.item_id for m in self._pending}

    def heard_ms(self, item_id: str, now: float) -> int:
        """Milliseconds of `item_id` the caller has heard by `now`."""
        acked = self._acked_ms.get(item_id, 0.0)
        if self._pending and self._pending[0].item_id == item_id:
            mark = self._pending[0]  # the chunk playing now
            began = mark.sent_at if self._last_ack_at is None else max(self._last_ack_at, mark.sent_at)
            return round(min(mark.start_ms + max(0.0, now - began) * 1000.0, mark.end_ms))
        # Either an earlier item is still playing (nothing of this one heard yet) or all of it played.
        return int(acked)

    # --- barge-in ---------------------------------------------------------------------------------
    def interrupt(self, now: float, item_id: str | None = None) -> Cut | None:
        """The caller barged in: returns where to cut, then starts a new generation.

        `item_id` is the item being generated (it may have no audio outstanding). Returns None
        when nothing was sent for it and nothing is outstanding.
        """
        pending_items = list(dict.fromkeys(m.item_id for m in self._pending))
        playing = pending_items[0] if pending_items else (item_id or "")
        cut: Cut | None = None
        if playing and playing in self._sent_bytes:
            heard = self.heard_ms(playing, now)
            later = tuple(i for i in pending_items[1:] if i != playing)
            cut = Cut(playing, heard, self.sent_ms(playing), later)
        self.generation += 1
        self._pending.clear()
        self._last_ack_at = None
        return cut

    def forget(self, item_id: str) -> None:
        """Drops bookkeeping of a finished item."""
        self._sent_bytes.pop(item_id, None)
        self._acked_ms.pop(item_id, None)


class HeardLatency:
    """A turn's answer from its first frame sent until Twilio reports it playing, for both paths:
    at the first mark echo that reports some of it played, it began playing that much audio ago
    (Twilio plays in real time), and the turn's heard latency (its end of speech to then, ms) is
    appended to `figures`. A barge-in before that drops the answer (`drop`): no figure."""

    __slots__ = ("_awaiting", "figures", "playback")

    def __init__(self, playback: PlaybackTracker, figures: list[float]) -> None:
        self.playback = playback
        self.figures = figures  # the session's CallStats.heard_latencies_ms
        self._awaiting: tuple[str, float] | None = None  # the answer's item, its turn's end of speech

    def expect(self, item_id: str, speech_end: float) -> None:
        """The turn's answer (its first item) was sent; the caller stopped speaking at `speech_end`."""
        self._awaiting = (item_id, speech_end)

    def drop(self) -> None:
        self._awaiting = None

    def mark(self, now: float) -> None:
        """At a mark echo (after `PlaybackTracker.on_mark`)."""
        if self._awaiting is None:
            return
        item_id, speech_end = self._awaiting
        began = self.playback.started_playing(item_id, now)
        if began is not None:
            self.figures.append((began - speech_end) * 1000)
            self._awaiting = None
