"""What a simulated call saw: the timeline (emitted line by line as it grows), the turns and their
latencies, the barge-ins, how the call ended, and the summary `relay call` prints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["BargeIn", "CallResult", "Timeline", "TimelineEntry", "Turn"]


@dataclass(frozen=True)
class TimelineEntry:
    """One line of the timeline: `at_ms` from the start of the call, a `kind`, the text."""

    at_ms: float
    kind: str
    text: str

    def format(self) -> str:
        return f"{self.at_ms:>+9.0f} ms  {self.kind:<10} {self.text}"


class Timeline:
    """The call's timeline on the `time.monotonic()` clock, emitted line by line as it grows.

    `emit` receives each formatted line (e.g. `print`); `t0` is the call's start (default: now).
    `relay demo` shares one timeline between the call and its own observers.
    """

    def __init__(self, emit: Callable[[str], None] | None = None, *, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.entries: list[TimelineEntry] = []
        self._emit = emit

    def ms(self, at: float) -> float:
        """`at` (monotonic seconds) as ms since the start."""
        return (at - self.t0) * 1000

    def add(self, kind: str, text: str, *, at: float | None = None) -> TimelineEntry:
        entry = TimelineEntry(self.ms(time.monotonic() if at is None else at), kind, text)
        self.entries.append(entry)
        if self._emit is not None:
            self._emit(entry.format())
        return entry

    def kinds(self) -> list[str]:
        return [e.kind for e in self.entries]

    def text(self) -> str:
        return "\n".join(e.format() for e in self.entries)


@dataclass
class Turn:
    """One utterance of the caller and the agent's answer to it (times in ms since the start)."""

    index: int
    label: str
    barge_in_ms: int | None
    started_ms: float | None = None
    speech_end_ms: float | None = None
    first_audio_ms: float | None = None
    """First agent audio after the caller's end of speech (None: the agent did not answer)."""
    keys: bool = False
    """Key presses: `speech_end_ms` is the last key's."""

    @property
    def latency_ms(self) -> float | None:
        """End of speech (or last key) → first agent audio."""
        if self.first_audio_ms is None or self.speech_end_ms is None:
            return None
        return self.first_audio_ms - self.speech_end_ms


@dataclass(frozen=True)
class BargeIn:
    """A `clear` from the relay: when, how much queued agent audio it dropped, and how long after
    the caller started speaking (None when the caller was not speaking)."""

    at_ms: float
    dropped_ms: float
    after_speech_start_ms: float | None


@dataclass
class CallResult:
    """Everything `run_call` saw. `exit_code` is what `relay call` exits with."""

    call_sid: str
    timeline: Timeline
    webhook_status: int | None = None
    connected_ms: float | None = None
    greeting_ms: float | None = None
    """First agent audio before the caller said anything, ms since the start (None: no greeting)."""
    stream_started_ms: float | None = None
    turns: list[Turn] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    played_ms: float = 0.0
    dropped_ms: float = 0.0
    closed_by_relay: bool | None = None
    close_code: int | None = None
    close_reason: str | None = None
    hangup_ms: float | None = None
    protocol_errors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    played_audio: bytes = field(default=b"", repr=False)
    outbound: bool = False
    """The callee of an outbound call (`relay call --outbound`)."""
    answered_by: str | None = None
    """The AnsweredBy the callee reported to `/amd-status` (None: not reported)."""
    amd_status: int | None = None
    """The relay's HTTP status for that report."""
    voicemail: bool = False
    """The callee was an answering machine."""
    message_ms: float | None = None
    """How much agent audio the machine recorded after its beep (None or 0: no message was left)."""
    hung_up_via_api: bool = False
    """The relay ended the call through Twilio's REST API (Status=completed): Twilio then stops
    the stream, as the simulator did."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.protocol_errors

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary_lines(self) -> list[str]:
        """The figures, one per line, for the end of the output."""
        lines = []
        if self.connected_ms is not None:
            lines.append(f"connected        {self.connected_ms:.0f} ms")
        if self.greeting_ms is not None:
            since = (
                f" ({self.greeting_ms - self.stream_started_ms:.0f} ms after the stream started)"
                if self.stream_started_ms is not None
                else ""
            )
            lines.append(f"greeting         first audio at {self.greeting_ms:.0f} ms{since}")
        for turn in self.turns:
            latency = f"{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else "no answer"
            since = "last key" if turn.keys else "end of speech"
            lines.append(f"turn {turn.index:<11} {latency:<10} {since} → first agent audio  {turn.label}")
        if self.barge_ins:
            delays = ", ".join(
                f"{b.after_speech_start_ms:.0f} ms"
                for b in self.barge_ins
                if b.after_speech_start_ms is not None
            )
            detail = f" (clear after the caller started speaking: {delays})" if delays else ""
            lines.append(f"barge-ins        {len(self.barge_ins)}{detail}")
        lines.append(
            f"agent audio      {self.played_ms / 1000:.1f} s played"
            + (f", {self.dropped_ms / 1000:.1f} s dropped by clears" if self.dropped_ms else "")
        )
        lines.extend(self._outbound_lines())
        if self.hung_up_via_api:
            lines.append("hang-up          by the relay, through Twilio's REST API (Status=completed)")
        elif self.close_code is not None or self.closed_by_relay is not None:
            who = "the relay" if self.closed_by_relay else "the caller"
            lines.append(f"hang-up          by {who}, code {self.close_code}")
        lines.append(f"protocol errors  {len(self.protocol_errors)}")
        lines.extend(f"  {e}" for e in self.protocol_errors)
        lines.extend(f"error            {e}" for e in self.errors)
        lines.append(f"result           {'OK' if self.ok else 'FAILED'}")
        return lines

    def _outbound_lines(self) -> list[str]:
        if not self.outbound or self.connected_ms is None:  # not placed, or never answered
            return []
        lines = [f"answered by      {'an answering machine' if self.voicemail else 'a person'}"]
        if self.answered_by is not None:
            lines.append(f"AMD report       AnsweredBy={self.answered_by} → HTTP {self.amd_status}")
        else:
            lines.append("AMD report       none (machine detection off for this call)")
        if self.voicemail:
            left = (
                f"a message was left: {self.message_ms / 1000:.1f} s of agent audio after the beep"
                if self.message_ms
                else "no message was left"
            )
            lines.append(f"voicemail        {left}")
        return lines
