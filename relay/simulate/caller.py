"""One simulated call, start to end: the webhook, the Media Stream, the greeting, each utterance
(or key presses) and the agent's answer to it, the barge-ins, the hang-up; `run_call` runs it and
writes the WAVs. As the callee of an outbound call (`CallOptions.outbound`), the relay is asked to
place the call first and the webhook is the answer's (relay.simulate.outbound)."""

from __future__ import annotations

import asyncio
import time

import httpx

from relay.simulate.explain import explain_close, explain_refusal
from relay.simulate.outbound import (
    ANSWER_PATH,
    Callee,
    OutboundRefused,
    answering_machine,
    machine_utterances,
    place_call,
)
from relay.simulate.recording import write_conversation_wav
from relay.simulate.results import BargeIn, CallResult, Timeline, Turn
from relay.simulate.script import KEY_GAP_MS, CallOptions, Utterance
from relay.simulate.voice import Voice
from relay.testing.audio import BYTES_PER_MS, write_wav_ulaw
from relay.testing.twilio import FakeTwilioCall

__all__ = ["Caller", "run_call"]


class Caller:
    """The simulated Twilio call and its caller (or callee): what `run_call` drives."""

    def __init__(self, options: CallOptions, timeline: Timeline, *, call_sid: str | None = None) -> None:
        self.o = options
        self.t = timeline
        out = options.outbound
        self.call = FakeTwilioCall(
            base_url=options.url,
            auth_token=options.auth_token,
            public_url=options.public_url or options.url,
            call_sid=call_sid,
            account_sid=out.account_sid if out else None,
            from_=out.from_ if out else None,
            to=out.to if out else options.to,
        )
        self.result = CallResult(call_sid=self.call.call_sid, timeline=timeline, outbound=out is not None)
        self.voice = Voice(self.call)
        self.callee = Callee(options, self.call, self) if out else None
        self.machine: tuple[Utterance, Utterance] | None = None  # the answering machine's greeting, beep
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
        path = ANSWER_PATH if self.callee else "/incoming-call"
        try:
            twiml = await call.fetch_twiml(
                path, extra_params=self.callee.answer_params() if self.callee else None
            )
        except httpx.HTTPError as exc:
            self.error(
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
            self.t.add("webhook", f"POST {path} → HTTP {twiml.status_code} {twiml.body[:120]!r}")
            self.error(f"the relay rejected the webhook with HTTP {twiml.status_code}{hint}")
            return
        if twiml.stream_url is None:
            self.t.add("webhook", f"POST {path} → 200, verbs {twiml.verbs}")
            self.error(explain_refusal(twiml.say, twiml.parse_error))
            return
        self.t.add("webhook", f'POST {path} → 200, <Connect><Stream url="{twiml.stream_url}">')
        if not await call.connect(twiml):
            if call.upgrade_status == 101:  # accepted, then closed at once: the close code says why
                self.error(explain_close(call.close_code, call.close_reason, call.stream_url))
            elif call.upgrade_status:
                self.error(
                    f"the relay refused the Media Stream upgrade with HTTP {call.upgrade_status} "
                    f"{call.upgrade_body[:120]!r}"
                )
            else:
                self.error(f"the Media Stream could not be opened: {call.upgrade_body}")
            return
        assert call.started_at is not None
        r.connected_ms = r.stream_started_ms = self.t.ms(call.started_at)
        self.t.add("connected", f"media stream open (call {call.call_sid})", at=call.started_at)

        tasks = [
            asyncio.create_task(self.voice.run(), name="relay-call-voice"),
            asyncio.create_task(self.watch_clears(), name="relay-call-clears"),
        ]
        if self.callee is not None:
            tasks.append(asyncio.create_task(self.callee.watch_hang_up(), name="relay-call-watch"))
        try:
            await self._answered(call.started_at)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _answered(self, started_at: float) -> None:
        """The call once its stream is open: a person (after the AMD report `human` when machine
        detection is on) or the answering machine of an outbound call, or an inbound caller."""
        if self.callee is None:
            await self._conversation(started_at)
        elif self.machine is not None:
            await answering_machine(self, self.callee, self.machine)
        else:
            if self.callee.outbound.machine_detection:
                await self.callee.report_amd("human", round((time.monotonic() - started_at) * 1000))
            await self._conversation(started_at)

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
            turn = Turn(index, utterance.label, utterance.barge_in_ms, keys=bool(utterance.digits))
            r.turns.append(turn)
            end = await (self._press(utterance, turn) if utterance.digits else self._say(utterance, turn))
            if end is None:
                break  # the stream closed while the caller was speaking or typing
            turn.speech_end_ms = self.t.ms(end)
            previous = await self.first_audio_after(
                end, self.o.answer_timeout, f"waiting for the answer to turn {index}"
            )
            if previous is None:
                if call.is_open:
                    self.t.add("agent", f"no answer within {self.o.answer_timeout:g} s")
                continue
            turn.first_audio_ms = self.t.ms(previous)
            latency = (previous - end) * 1000
            since = "the last key" if utterance.digits else "the caller's end of speech"
            self.t.add("agent", f"first audio, {latency:.0f} ms after {since}", at=previous)
        if previous is not None and call.is_open:
            await self._agent_done()

    async def _say(self, utterance: Utterance, turn: Turn) -> float | None:
        """Speaks the utterance; its end of speech (None: the stream closed first)."""
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
        if speech.speech_end_at is not None:
            self.t.add("caller", "end of speech", at=speech.speech_end_at)
        return speech.speech_end_at

    async def _press(self, utterance: Utterance, turn: Turn) -> float | None:
        """Presses the keys, one `dtmf` event each, KEY_GAP_MS apart; the last key's time (None: the
        stream closed first). The voice keeps sending silence meanwhile, as a phone line does."""
        pressed_at: float | None = None
        for n, key in enumerate(utterance.digits):
            if n:
                await asyncio.sleep(KEY_GAP_MS / 1000)  # the typing rhythm, not a wait for the relay
            if not await self.call.send_dtmf(key):
                return None
            pressed_at = time.monotonic()
            if n == 0:
                turn.started_ms = self.t.ms(pressed_at)
                verb = "barges in, presses" if utterance.barge_in_ms is not None else "presses"
                keys = len(utterance.digits)
                self.t.add(
                    "caller", f"{verb} {utterance.digits} ({keys} keys, {KEY_GAP_MS} ms apart)", at=pressed_at
                )
        if pressed_at is not None:
            self.t.add("caller", "last key", at=pressed_at)
        return pressed_at

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
        if r.hung_up_via_api:  # the callee's watch stopped the stream, as Twilio does: said already
            return
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
                    self.error(why)
            else:
                self.error(f"the agent sent no audio at all ({call.summary()})")

    def error(self, message: str) -> None:
        self.result.errors.append(message)
        self.t.add("error", message)


async def run_call(options: CallOptions, *, timeline: Timeline | None = None) -> CallResult:
    """Runs one simulated call against the relay at `options.url`; never raises for what the relay
    does (see `CallResult.errors` and `protocol_errors`)."""
    timeline = timeline or Timeline()
    caller = await _placed(options, timeline) if options.outbound else Caller(options, timeline)
    if isinstance(caller, str):  # the relay did not place the call: nothing else to do
        return CallResult(call_sid="", timeline=timeline, outbound=True, errors=[caller])
    try:
        try:
            async with asyncio.timeout(options.timeout):
                await caller.run()
        except TimeoutError:
            caller.error(f"the call did not finish within --timeout {options.timeout:g} s")
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


async def _placed(options: CallOptions, timeline: Timeline) -> Caller | str:
    """The callee of an outbound call, once the relay placed it; else why it was not (also on the
    timeline). The answering machine's speech is made first, so a missing espeak-ng never leaves a
    call ringing."""
    assert options.outbound is not None
    try:
        machine = machine_utterances(options.outbound) if options.outbound.voicemail else None
        call_sid = await place_call(options, timeline)
    except (OutboundRefused, RuntimeError) as exc:
        timeline.add("error", str(exc))
        return str(exc)
    caller = Caller(options, timeline, call_sid=call_sid)
    caller.machine = machine
    return caller
