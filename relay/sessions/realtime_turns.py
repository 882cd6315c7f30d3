"""Per-turn latency on the realtime path, on the relay's clock (sans I/O).

The provider says where in a connection's audio its VAD ended the caller's turn (`speech_stopped`
with `audio_end_ms`, after its silence window); the relay places that moment on its own clock, then
times the turn to the first agent audio it sends Twilio (`CallStats.turn_times`) and to the moment
Twilio began playing it (`heard_latencies_ms`, from the marks Twilio echoes)."""

from __future__ import annotations

from relay.sessions.call import CallStats
from relay.sessions.playback import HeardLatency, PlaybackTracker

__all__ = ["MAX_BEHIND_MS", "RealtimeTurns"]

MAX_BEHIND_MS = 2000  # a larger gap between the audio sent and the provider's position is not a lag


class RealtimeTurns:
    """The turn being timed: set at the provider's end of speech, closed at the first agent audio
    (`waiting` tells the session, per audio frame, whether to call `first_audio`)."""

    __slots__ = ("_ended_at", "_speech_end", "frame0", "heard", "silence_s", "stats")

    def __init__(self, stats: CallStats, playback: PlaybackTracker, silence_s: float) -> None:
        """`silence_s`: how long after the caller stopped the provider's VAD reports it (server VAD's
        silence window; 0 for semantic VAD)."""
        self.stats = stats
        self.silence_s = silence_s
        self.frame0 = 0  # the caller frame (count) the current connection's audio starts at
        self._ended_at: float | None = None  # when the provider said the speech ended
        self._speech_end: float | None = None  # when it really ended (`speech_end_time`)
        self.heard = HeardLatency(playback, stats.heard_latencies_ms)  # until Twilio plays the answer

    @property
    def waiting(self) -> bool:
        """True between an end of speech and the first agent audio after it."""
        return self._ended_at is not None or self._speech_end is not None

    def speech_stopped(self, audio_end_ms: int, now: float) -> None:
        self._ended_at = now
        self._speech_end = self.speech_end_time(audio_end_ms, now)

    def first_audio(self, item_id: str, now: float) -> None:
        """The first agent audio of the turn, sent to Twilio now."""
        stats = self.stats
        if self._ended_at is not None:
            stats.response_latencies_ms.append((now - self._ended_at) * 1000)
            self._ended_at = None
        if self._speech_end is not None:
            stats.turn_times.append((self._speech_end, now))
            self.heard.expect(item_id, self._speech_end)
            self._speech_end = None

    def interrupted(self) -> None:
        """The caller spoke again: the turn (and its answer's figure) is dropped."""
        self._ended_at = self._speech_end = None
        self.heard.drop()

    def mark(self, now: float) -> None:
        """At a mark echo: the heard latency of the turn's answer, once Twilio reports it playing."""
        self.heard.mark(now)

    def speech_end_time(self, audio_end_ms: int, now: float) -> float:
        """When the caller stopped speaking, on the relay's clock. The provider says where in this
        connection's audio its VAD ended the turn (`audio_end_ms`, after its silence window); the
        audio the relay had sent past that point by now is real time that has passed since (the
        caller's frames come every 20 ms), and so is the silence window."""
        sent_ms = (self.stats.frames_in - self.frame0) * 20
        behind_ms = min(max(0, sent_ms - audio_end_ms), MAX_BEHIND_MS) if audio_end_ms > 0 else 0
        return now - behind_ms / 1000 - self.silence_s
