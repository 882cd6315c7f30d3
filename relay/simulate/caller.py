"""One simulated call, start to end: the webhook, the Media Stream, the greeting, each utterance
and the agent's answer to it, the barge-ins, the hang-up; `run_call` runs it and writes the WAVs."""

from __future__ import annotations

import asyncio
import time

import httpx

from relay.simulate.explain import explain_close, explain_refusal
from relay.simulate.recording import write_conversation_wav
from relay.simulate.results import BargeIn, CallResult, Timeline, Turn
from relay.simulate.script import CallOptions
from relay.simulate.voice import Voice
from relay.testing.audio import BYTES_PER_MS, write_wav_ulaw
from relay.testing.twilio import FakeTwilioCall

__all__ = ["run_call"]


class _Caller:
    def __init__(self, options: CallOptions, timeline: Timeline) -> None:
        self.o = options
        self.t = timeline
        self.call = FakeTwilioCall(
            base_url=options.url, auth_token=options.auth_token, public_url=options.public_url or options.url
        )
        self.result = CallResult(call_sid=self.call.call_sid, timeline=timeline)
        self.voice = Voice(self.call)
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
