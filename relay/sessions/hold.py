"""The hold tone both paths play while a slow tool runs. Sans-I/O: it returns the Twilio messages.

About a second of tone is kept queued at Twilio and topped up as it plays (on every mark echo and
every tick of the shell), so a tool taking 3 s or 30 s is covered alike; stopping clears what is
queued and starts a new playback generation, so the tone's own marks echoed by the `clear` move
nothing.
"""

from __future__ import annotations

import base64
import functools
import math

from relay.codecs import pcm16_to_ulaw
from relay.sessions.playback import PlaybackTracker
from relay.twilio_messages import b64_len, clear_message, mark_message, media_message

HOLD_CHUNK_MS = 1000  # queued ahead of what the caller has heard


@functools.cache
def hold_tone() -> str:
    """One second of a soft hold tone (a 150 ms, 440 Hz beep, then silence), base64 μ-law."""
    beep = 1200  # samples: 150 ms
    samples = [
        int(2600 * math.sin(2 * math.pi * 440 * n / 8000)) if n < beep else 0
        for n in range(8 * HOLD_CHUNK_MS)
    ]
    pcm = b"".join(v.to_bytes(2, "little", signed=True) for v in samples)
    return base64.b64encode(pcm16_to_ulaw(pcm)).decode()


class HoldTone:
    """Plays the hold tone as playback item `item` of `playback`, one session's tracker."""

    def __init__(self, playback: PlaybackTracker, stream_sid: str) -> None:
        self.playback = playback
        self.stream_sid = stream_sid
        self.item: str | None = None

    @property
    def active(self) -> bool:
        return self.item is not None

    def start(self, item: str, now: float) -> list[str]:
        self.item = item
        return self.feed(now)

    def feed(self, now: float) -> list[str]:
        """Tops the queue at Twilio up to HOLD_CHUNK_MS ahead of what was heard."""
        item = self.item
        out: list[str] = []
        if item is None:
            return out
        payload = hold_tone()
        while self.playback.sent_ms(item) - self.playback.heard_ms(item, now) < HOLD_CHUNK_MS:
            mark = self.playback.on_audio_sent(item, b64_len(payload), now)
            out.append(media_message(self.stream_sid, payload))
            out.append(mark_message(self.stream_sid, mark or ""))
        return out

    def stop(self, now: float) -> list[str]:
        """Ends the tone; clears it at Twilio if some is still queued."""
        item, self.item = self.item, None
        if item is None:
            return []
        out = []
        if item in self.playback.pending_items():
            self.playback.interrupt(now)  # a new generation: the tone's marks echoed by clear are ignored
            out.append(clear_message(self.stream_sid))
        self.playback.forget(item)
        return out

    def drop(self) -> None:
        """Forgets the tone without a message (the caller's barge-in already cleared everything)."""
        if self.item is not None:
            self.playback.forget(self.item)
        self.item = None


__all__ = ["HOLD_CHUNK_MS", "HoldTone", "hold_tone"]
