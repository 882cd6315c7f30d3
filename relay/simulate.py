"""`relay call`: a simulated Twilio phone call against a running relay, as a command.

It is the fake Twilio of `relay.testing.twilio` driven by a small script: fetch the TwiML from
`/incoming-call` (signed like Twilio), open the Media Stream, listen to the greeting, say each
utterance (espeak-ng speech or a WAV file) in real time and wait for the agent's answer to play,
then hang up. Between utterances the caller sends silence, as a real Twilio stream does.

What it measures, on one clock (ms from the moment the call started, i.e. the webhook POST):

* connected: the Media Stream is open;
* greeting: the first agent audio;
* per turn: the caller's end of speech → the first agent audio after it;
* barge-ins: every Twilio `clear` the relay sent, how soon after the caller started speaking,
  and how much queued agent audio it dropped;
* the hang-up: who closed the stream, with which code.

`run_call` is the core: an async function returning a `CallResult` (tests and `relay demo` call it
directly). The timeline is printed line by line as things happen, so long calls show progress.
This is a development tool, not part of the server: it may use `relay.testing`.
"""

from __future__ import annotations

import asyncio
import base64
import time
import wave
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from relay.testing.audio import read_wav_ulaw, silence_ulaw, speech_ulaw, ulaw_to_float, write_wav_ulaw
from relay.testing.twilio import FakeTwilioCall
from relay.testing.twilio_sender import FRAME_BYTES
from webhooks.routes import APOLOGY, BUSY, DRAINING

__all__ = [
    "DEFAULT_URL",
    "BargeIn",
    "CallOptions",
    "CallResult",
    "Timeline",
    "TimelineEntry",
    "Turn",
    "Utterance",
    "build_utterances",
    "explain_close",
    "explain_refusal",
    "run_call",
    "write_conversation_wav",
]

DEFAULT_URL = "http://127.0.0.1:8000"
BYTES_PER_MS = 8  # 8 kHz μ-law
SPEECH_RMS = 0.01  # a 20 ms frame louder than this (fraction of full scale) counts as speech


# --------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class Utterance:
    """One thing the caller says: 8 kHz μ-law `audio`, a `label` for the timeline, and optionally
    `barge_in_ms`: speak that many ms after the agent starts talking instead of waiting for it to
    finish (None: wait until the agent's audio has played)."""

    label: str
    audio: bytes = field(repr=False)
    barge_in_ms: int | None = None

    @classmethod
    def say(cls, text: str, *, barge_in_ms: int | None = None) -> Utterance:
        """`text` spoken by espeak-ng (RuntimeError when espeak-ng is missing)."""
        return cls(f'"{text}"', speech_ulaw(text), barge_in_ms)

    @classmethod
    def wav(cls, path: str | Path, *, barge_in_ms: int | None = None) -> Utterance:
        """The audio of a WAV file (16-bit PCM or μ-law, any rate; ValueError otherwise)."""
        return cls(Path(path).name, read_wav_ulaw(path), barge_in_ms)

    @property
    def duration_ms(self) -> float:
        return len(self.audio) / BYTES_PER_MS


def build_utterances(script: Sequence[tuple[str, str]]) -> list[Utterance]:
    """Turns the command line's ordered `(kind, value)` items into utterances.

    Kinds: `say` (text), `wav` (a path), `barge-in` (ms; applies to the `say`/`wav` that follows
    it). Raises ValueError for a dangling or invalid `barge-in`, RuntimeError without espeak-ng.
    """
    utterances: list[Utterance] = []
    barge_in: int | None = None
    for kind, value in script:
        if kind == "barge-in":
            try:
                barge_in = int(value)
            except ValueError:
                raise ValueError(f"--barge-in takes milliseconds, got {value!r}") from None
            if barge_in < 0:
                raise ValueError(f"--barge-in must be >= 0 ms, got {barge_in}")
        elif kind == "say":
            utterances.append(Utterance.say(value, barge_in_ms=barge_in))
            barge_in = None
        elif kind == "wav":
            utterances.append(Utterance.wav(value, barge_in_ms=barge_in))
            barge_in = None
        else:
            raise ValueError(f"unknown script item {kind!r}")
    if barge_in is not None:
        raise ValueError(
            "--barge-in MS applies to the --say/--wav that follows it; put it before the utterance "
            "that should interrupt the agent"
        )
    return utterances


@dataclass
class CallOptions:
    """What `run_call` does. Times are seconds unless named `_ms`."""

    url: str = DEFAULT_URL
    """Where the relay listens (the webhook and the Media Stream go here)."""
    public_url: str | None = None
    """The URL Twilio believes it calls, over which signatures are computed (default: `url`)."""
    auth_token: str | None = None
    """TWILIO_AUTH_TOKEN to sign with; None sends unsigned requests."""
    utterances: Sequence[Utterance] = ()
    out: Path | None = None
    """Write the agent's audio as played (mono 8 kHz WAV)."""
    record: Path | None = None
    """Write both sides on the call's timeline (stereo WAV: caller left, agent right)."""
    timeout: float = 120.0
    """Bound on the whole call."""
    greeting_timeout: float = 8.0
    """How long to wait for the agent to speak first before the caller talks anyway."""
    answer_timeout: float = 20.0
    """How long to wait, after the caller's end of speech, for the first agent audio."""
    playback_timeout: float = 60.0
    """Bound on waiting for one answer of the agent to finish playing."""
    quiet_ms: int = 1000
    """The agent has finished when its audio has played and nothing new arrived for this long."""
    progress_every: float = 5.0
    """A progress line every this many seconds of waiting."""
    admin_token: str | None = None
    """RELAY_ADMIN_TOKEN: after the call, fetch the relay's record (transcript, tool calls) and print it."""


# --------------------------------------------------------------------------- the results


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

    @property
    def latency_ms(self) -> float | None:
        """End of speech → first agent audio."""
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
            lines.append(
                f"turn {turn.index:<11} {latency:<10} end of speech → first agent audio  {turn.label}"
            )
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
        if self.close_code is not None or self.closed_by_relay is not None:
            who = "the relay" if self.closed_by_relay else "the caller"
            lines.append(f"hang-up          by {who}, code {self.close_code}")
        lines.append(f"protocol errors  {len(self.protocol_errors)}")
        lines.extend(f"  {e}" for e in self.protocol_errors)
        lines.extend(f"error            {e}" for e in self.errors)
        lines.append(f"result           {'OK' if self.ok else 'FAILED'}")
        return lines


# --------------------------------------------------------------------------- the caller's voice


@dataclass(eq=False)
class _Speech:
    utterance: Utterance
    frames: list[bytes]
    last_loud: int
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    started_at: float | None = None
    speech_end_at: float | None = None
    ended_at: float | None = None


def _frames(audio: bytes) -> tuple[list[bytes], int]:
    """20 ms frames (the last one padded with silence) and the index of the last loud one."""
    frames = [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)] or [silence_ulaw(20)]
    if len(frames[-1]) < FRAME_BYTES:
        frames[-1] += silence_ulaw((FRAME_BYTES - len(frames[-1])) / BYTES_PER_MS)
    samples = ulaw_to_float(b"".join(frames)).reshape(len(frames), FRAME_BYTES)
    loud = np.flatnonzero(np.sqrt(np.mean(samples * samples, axis=1)) > SPEECH_RMS)
    return frames, int(loud[-1]) if loud.size else len(frames) - 1


class _Voice:
    """The caller's microphone: one 20 ms frame every 20 ms, speech when there is some, else
    silence (a Twilio stream never pauses). One task owns the sending, so pacing stays exact."""

    def __init__(self, call: FakeTwilioCall) -> None:
        self.call = call
        self.current: _Speech | None = None
        self._queue: deque[_Speech] = deque()
        self._silence = silence_ulaw(20)

    async def run(self) -> None:
        try:
            while self.call.is_open:
                speech = self._queue[0] if self._queue else None
                frame = speech.frames[speech.sent] if speech is not None else self._silence
                if not await self.call.send_audio(frame):
                    break
                if speech is None:
                    continue
                now = time.monotonic()
                if speech.sent == 0:
                    speech.started_at = now
                    self.current = speech
                    speech.started.set()
                if speech.sent == speech.last_loud:
                    speech.speech_end_at = now + FRAME_BYTES / (BYTES_PER_MS * 1000)
                speech.sent += 1
                if speech.sent == len(speech.frames):
                    speech.ended_at = now
                    self._queue.popleft()
                    speech.done.set()
        finally:
            for speech in self._queue:
                speech.started.set()
                speech.done.set()
            self._queue.clear()

    def say(self, utterance: Utterance) -> _Speech:
        """Queues the utterance; its `started` and `done` events are set as it is sent (both are
        set if the stream closes first)."""
        frames, last_loud = _frames(utterance.audio)
        speech = _Speech(utterance, frames, last_loud)
        if not self.call.is_open:
            speech.started.set()
            speech.done.set()
        else:
            self._queue.append(speech)
        return speech


# --------------------------------------------------------------------------- the call


class _Caller:
    def __init__(self, options: CallOptions, timeline: Timeline) -> None:
        self.o = options
        self.t = timeline
        self.call = FakeTwilioCall(
            base_url=options.url, auth_token=options.auth_token, public_url=options.public_url or options.url
        )
        self.result = CallResult(call_sid=self.call.call_sid, timeline=timeline)
        self.voice = _Voice(self.call)
        self._cursor = 0  # index into call.messages already scanned for media

    # ---- waiting helpers
    def _media_after(self, after: float) -> float | None:
        messages = self.call.messages
        while self._cursor < len(messages):
            received = messages[self._cursor]
            if received.event == "media" and received.at > after:
                return received.at
            self._cursor += 1
        return None

    def _progress(self, what: str, since: float) -> None:
        self.t.add("waiting", f"… {what} ({time.monotonic() - since:.0f} s)")

    async def first_audio_after(self, after: float, timeout: float, what: str) -> float | None:  # noqa: ASYNC109
        """Arrival time of the first agent media after `after`; None on timeout or hang-up."""
        self._cursor = 0
        start = time.monotonic()
        deadline = start + timeout
        while (found := self._media_after(after)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.call.is_open:
                return None
            try:
                await self.call.wait_for_media(
                    min_bytes=len(self.call.received_audio) + 1,
                    timeout=min(remaining, self.o.progress_every),
                )
            except TimeoutError:  # CallEndedError too: the loop sees the stream closed
                if self.call.is_open and deadline - time.monotonic() > 0:
                    self._progress(what, start)
        return found

    async def agent_finished(self) -> float | None:
        """Waits until the agent's audio has played and nothing new came for `quiet_ms`; returns
        when playback went idle (None when the bound passed first)."""
        start = time.monotonic()
        deadline = start + self.o.playback_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await self.call.wait_playback_idle(timeout=min(remaining, self.o.progress_every))
            except TimeoutError:
                self._progress("the agent is still talking", start)
                continue
            idle_at = time.monotonic()
            if not self.call.is_open:
                return idle_at
            try:
                await self.call.wait_for_media(
                    min_bytes=len(self.call.received_audio) + 1, timeout=self.o.quiet_ms / 1000
                )
            except TimeoutError:  # quiet (or the stream closed): the agent has finished
                return idle_at

    async def watch_clears(self) -> None:
        count = 0
        while True:
            count += 1
            try:
                record = await self.call.wait_for_clear(timeout=24 * 3600, count=count)
            except TimeoutError:
                return
            speech = self.voice.current
            after: float | None = None
            if speech is not None and speech.started_at is not None:
                ended = speech.ended_at
                if ended is None or record.at - ended < 1.0:
                    after = (record.at - speech.started_at) * 1000
            dropped = record.dropped_bytes / BYTES_PER_MS
            self.result.barge_ins.append(BargeIn(self.t.ms(record.at), dropped, after))
            who = (
                f"{after:.0f} ms after the caller started speaking"
                if after is not None
                else "(the caller was not speaking)"
            )
            self.t.add(
                "barge-in",
                f"the relay sent clear {who}; {dropped:.0f} ms of unplayed agent audio dropped",
                at=record.at,
            )

    # ---- the call
    async def run(self) -> None:
        r, call = self.result, self.call
        try:
            twiml = await call.fetch_twiml()
        except httpx.HTTPError as exc:
            self._error(
                f"cannot reach the relay at {self.o.url}: {type(exc).__name__}: {exc or 'no answer'}. "
                "Is `relay serve` running there (or give --url)?"
            )
            return
        r.webhook_status = twiml.status_code
        if twiml.status_code != 200:
            hint = (
                " — the signature was refused: TWILIO_AUTH_TOKEN differs from the relay's, or "
                f"--public-url ({call.public_url}) is not the relay's PUBLIC_URL"
                if twiml.status_code == 403
                else ""
            )
            self.t.add("webhook", f"POST /incoming-call → HTTP {twiml.status_code} {twiml.body[:120]!r}")
            self._error(f"the relay rejected the webhook with HTTP {twiml.status_code}{hint}")
            return
        if twiml.stream_url is None:
            self.t.add("webhook", f"POST /incoming-call → 200, verbs {twiml.verbs}")
            self._error(explain_refusal(twiml.say, twiml.parse_error))
            return
        self.t.add("webhook", f'POST /incoming-call → 200, <Connect><Stream url="{twiml.stream_url}">')
        if not await call.connect(twiml):
            if call.upgrade_status == 101:  # accepted, then closed at once: the close code says why
                self._error(explain_close(call.close_code, call.close_reason, call.stream_url))
            elif call.upgrade_status:
                self._error(
                    f"the relay refused the Media Stream upgrade with HTTP {call.upgrade_status} "
                    f"{call.upgrade_body[:120]!r}"
                )
            else:
                self._error(f"the Media Stream could not be opened: {call.upgrade_body}")
            return
        assert call.started_at is not None
        r.connected_ms = r.stream_started_ms = self.t.ms(call.started_at)
        self.t.add("connected", f"media stream open (call {call.call_sid})", at=call.started_at)

        voice = asyncio.create_task(self.voice.run(), name="relay-call-voice")
        clears = asyncio.create_task(self.watch_clears(), name="relay-call-clears")
        try:
            await self._conversation(call.started_at)
        finally:
            for task in (voice, clears):
                task.cancel()
            await asyncio.gather(voice, clears, return_exceptions=True)

    async def _conversation(self, started_at: float) -> None:
        r, call = self.result, self.call
        timeout = self.o.greeting_timeout if self.o.utterances else self.o.answer_timeout
        previous = await self.first_audio_after(started_at, timeout, "waiting for the greeting")
        if previous is not None:
            r.greeting_ms = self.t.ms(previous)
            self.t.add(
                "agent",
                f"first audio (greeting), {(previous - started_at) * 1000:.0f} ms after the stream started",
                at=previous,
            )
        elif call.is_open:
            self.t.add("agent", f"no greeting within {timeout:g} s; the caller speaks first")
        for index, utterance in enumerate(self.o.utterances, start=1):
            if not call.is_open:
                break
            if previous is not None:
                if utterance.barge_in_ms is not None:
                    delay = previous + utterance.barge_in_ms / 1000 - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the scripted moment of the interruption
                else:
                    await self._agent_done()
            if not call.is_open:
                break
            turn = Turn(index, utterance.label, utterance.barge_in_ms)
            r.turns.append(turn)
            speech = self.voice.say(utterance)
            await speech.started.wait()
            if speech.started_at is not None:
                turn.started_ms = self.t.ms(speech.started_at)
                verb = "barges in" if utterance.barge_in_ms is not None else "says"
                self.t.add(
                    "caller",
                    f"{verb}: {utterance.label} ({utterance.duration_ms / 1000:.1f} s)",
                    at=speech.started_at,
                )
            await speech.done.wait()
            if speech.speech_end_at is None:
                break  # the stream closed while the caller was speaking
            turn.speech_end_ms = self.t.ms(speech.speech_end_at)
            self.t.add("caller", "end of speech", at=speech.speech_end_at)
            previous = await self.first_audio_after(
                speech.speech_end_at, self.o.answer_timeout, f"waiting for the answer to turn {index}"
            )
            if previous is None:
                if call.is_open:
                    self.t.add("agent", f"no answer within {self.o.answer_timeout:g} s")
                continue
            turn.first_audio_ms = self.t.ms(previous)
            latency = (previous - speech.speech_end_at) * 1000
            self.t.add(
                "agent", f"first audio, {latency:.0f} ms after the caller's end of speech", at=previous
            )
        if previous is not None and call.is_open:
            await self._agent_done()

    async def _agent_done(self) -> None:
        idle_at = await self.agent_finished()
        if idle_at is None:
            self.t.add("agent", f"still talking after {self.o.playback_timeout:g} s; going on")
        elif self.call.is_open:
            self.t.add(
                "agent", f"finished speaking ({self.call.played_ms / 1000:.1f} s played so far)", at=idle_at
            )

    async def hang_up(self) -> None:
        r, call = self.result, self.call
        if call.is_open:
            hung_up_at = time.monotonic()
            await call.stop()
            r.hangup_ms = self.t.ms(hung_up_at)
            self.t.add(
                "hang-up",
                f"the caller hung up (stop); the stream closed with code {call.close_code}",
                at=hung_up_at,
            )
        elif call.upgrade_status == 101 and call.closed_at is not None:
            r.hangup_ms = self.t.ms(call.closed_at)
            reason = f" {call.close_reason!r}" if call.close_reason else ""
            by = "the relay" if call.closed_by_relay else "the caller"
            self.t.add("hang-up", f"closed by {by}, code {call.close_code}{reason}", at=call.closed_at)

    def finish(self) -> None:
        r, call = self.result, self.call
        r.closed_by_relay = call.closed_by_relay
        r.close_code = call.close_code
        r.close_reason = call.close_reason
        r.played_audio = call.played_audio
        r.played_ms = len(r.played_audio) / BYTES_PER_MS
        r.dropped_ms = sum(b.dropped_ms for b in r.barge_ins)
        r.protocol_errors = list(call.protocol_errors)
        for error in r.protocol_errors:
            self.t.add("protocol", error)
        if call.upgrade_status == 101 and call.media_message_count == 0:
            if call.closed_by_relay and call.close_code not in (None, 1000):
                why = explain_close(call.close_code, call.close_reason, call.stream_url)
                if why not in self.result.errors:
                    self._error(why)
            else:
                self._error(f"the agent sent no audio at all ({call.summary()})")

    def _error(self, message: str) -> None:
        self.result.errors.append(message)
        self.t.add("error", message)


_REFUSALS = {
    APOLOGY: (
        "the relay cannot serve calls: most often it has no provider credentials (OPENAI_API_KEY, or "
        "USE_AZURE_OPENAI=true with AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT)"
    ),
    BUSY: "the relay is at MAX_CONCURRENT_CALLS (fleet-wide when REDIS_URL is set)",
    DRAINING: "the relay is shutting down (draining after SIGTERM)",
}


def explain_refusal(say: str | None, parse_error: str | None = None) -> str:
    """Why the webhook answered without `<Connect><Stream>`: the relay's `<Say>` and what it means."""
    if say is None:
        return f"the relay answered without a <Connect><Stream> and without a <Say>{parse_error or ''}"
    why = _REFUSALS.get(say, "see the relay's log ('refusing call: …') for why")
    return (
        f"the relay refused the call: it answered <Say> {say!r} and <Hangup/> instead of "
        f"<Connect><Stream>; {why}. Run `relay doctor` where the relay runs: it says what to fix."
    )


_CLOSE_CHECKS = {
    "invalid signature": (
        "the X-Twilio-Signature of the upgrade was refused. This caller signed {url} (the <Stream "
        "url> of the TwiML) with TWILIO_AUTH_TOKEN: check that the token is the relay's, and that "
        "the relay checks that same URL (its PUBLIC_URL, scheme and host; behind a proxy, the "
        "X-Forwarded-Proto/-Host it receives)"
    ),
    "invalid stream token": (
        "the stream token of the TwiML was refused: it expired (STREAM_TOKEN_TTL), was used "
        "already, or the stream reached another instance whose TWILIO_AUTH_TOKEN or "
        "STREAM_TOKEN_SECRET differs from the one that answered the webhook"
    ),
}


def explain_close(code: int | None, reason: str | None, stream_url: str | None) -> str:
    """Why the relay closed a Media Stream it had accepted (before any agent audio)."""
    said = f"code {code}" + (f" {reason!r}" if reason else "")
    head = f"the relay accepted the Media Stream (HTTP 101) and then closed it with {said}: "
    check = _CLOSE_CHECKS.get(reason or "")
    if check is not None:
        return head + check.format(url=stream_url or "the stream URL") + "."
    if code == 1008:
        return head + "a policy violation; the relay's log says why (grep this call SID)."
    if code == 1011:
        return head + "an internal error; the relay's log has the traceback (grep this call SID)."
    if code in (1012, 1013):
        return head + "the relay is restarting or overloaded; try again in a moment."
    if code == 1006:
        return "the Media Stream was cut without a close frame (code 1006): the relay or a proxy died."
    return head + "see the relay's log for this call SID."


async def run_call(options: CallOptions, *, timeline: Timeline | None = None) -> CallResult:
    """Runs one simulated call against the relay at `options.url`; never raises for what the relay
    does (see `CallResult.errors` and `protocol_errors`)."""
    timeline = timeline or Timeline()
    caller = _Caller(options, timeline)
    try:
        try:
            async with asyncio.timeout(options.timeout):
                await caller.run()
        except TimeoutError:
            caller._error(f"the call did not finish within --timeout {options.timeout:g} s")
        await caller.hang_up()
    finally:
        await caller.call.aclose()
    caller.finish()
    result = caller.result
    if options.out is not None:
        write_wav_ulaw(options.out, result.played_audio)
        timeline.add("wrote", f"{options.out}: {result.played_ms / 1000:.1f} s of agent audio as played")
    if options.record is not None:
        seconds = write_conversation_wav(options.record, caller.call)
        timeline.add("wrote", f"{options.record}: {seconds:.1f} s, caller left, agent right")
    return result


def write_conversation_wav(path: str | Path, call: FakeTwilioCall) -> float:
    """Writes both sides of `call` on its own timeline as a stereo 16-bit 8 kHz WAV (caller left,
    agent right, as played); returns the duration in seconds."""
    caller: list[tuple[int, bytes]] = []
    agent: list[tuple[int, bytes]] = []
    started = call.started_at
    if started is not None:
        for _, message in call.sent:
            if isinstance(message, dict) and message.get("event") == "media":
                media = message["media"]
                caller.append((int(media["timestamp"]) * BYTES_PER_MS, base64.b64decode(media["payload"])))
        received = call.received_audio
        offset = 0
        for chunk in call.outbound_chunks:
            if chunk.started_at is not None and chunk.played_bytes > 0:
                position = round((chunk.started_at - started) * 1000 * BYTES_PER_MS)
                agent.append((max(0, position), received[offset : offset + chunk.played_bytes]))
            offset += chunk.size
    length = max((pos + len(data) for pos, data in caller + agent), default=0)
    tracks = np.zeros((length, 2), dtype=np.float64)
    for channel, parts in enumerate((caller, agent)):
        for pos, data in parts:
            tracks[pos : pos + len(data), channel] = ulaw_to_float(data)
    pcm = np.clip(np.round(tracks * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(BYTES_PER_MS * 1000)
        w.writeframes(pcm.tobytes())
    return length / (BYTES_PER_MS * 1000)


# --------------------------------------------------------------------------- the command


def print_line(line: str) -> None:
    """Prints one timeline line at once (the output may be a pipe)."""
    print(line, flush=True)


def record_lines(record: dict[str, Any]) -> list[str]:
    """The relay's view of a call: the transcript it stored (only what the caller heard) and the
    tool audit. A Media Stream carries only audio, so this comes from `GET /calls/{call_sid}`."""
    lines: list[str] = []
    transcript = record.get("transcript") or []
    if transcript:
        lines.append("transcript (as the relay stored it: only what the caller heard)")
        for turn in transcript:
            cut = "  [interrupted]" if turn.get("interrupted") else ""
            lines.append(f"  {turn.get('role', '?'):<10} {turn.get('text', '')}{cut}")
    for tool in record.get("tools") or []:
        lines.append(
            f"tool audit       {tool.get('name')} {orjson.dumps(tool.get('arguments')).decode()} → "
            f"{tool.get('outcome')} in {tool.get('duration_ms')} ms"
        )
    for fallback in record.get("fallbacks") or []:
        lines.append(f"fallback         to the cascade ({fallback.get('cause')}): {fallback.get('error')}")
    return lines


async def fetch_record(options: CallOptions, call_sid: str) -> dict[str, Any] | None:
    """The relay's record of the call, waiting briefly for the call to be closed; None if unavailable."""
    headers = {"Authorization": f"Bearer {options.admin_token}"}
    async with httpx.AsyncClient(base_url=options.url, timeout=5.0) as client:
        record: dict[str, Any] | None = None
        for _ in range(20):  # the relay writes the end of the record just after the stream closes
            response = await client.get(f"/calls/{call_sid}", headers=headers)
            if response.status_code != 200:
                return None
            record = response.json()
            if record.get("ended_at"):
                break
            await asyncio.sleep(0.1)
        return record


async def call_command(options: CallOptions, emit: Callable[[str], None] = print_line) -> int:
    """`relay call`: runs the call, prints the timeline as it happens and a summary; the exit status."""
    signing = (
        f"signed for {options.public_url or options.url}"
        if options.auth_token
        else "unsigned: TWILIO_AUTH_TOKEN is not set"
    )
    emit(f"relay call → {options.url} ({signing})")
    result = await run_call(options, timeline=Timeline(emit))
    emit("summary")
    for line in result.summary_lines():
        emit("  " + line)
    if options.admin_token:
        try:
            record = await fetch_record(options, result.call_sid)
        except httpx.HTTPError as exc:
            record = None
            emit(f"record           not fetched: {exc}")
        if record is None:
            emit("record           not available (is RELAY_ADMIN_TOKEN the relay's?)")
        for line in record_lines(record or {}):
            emit(line)
    return result.exit_code
