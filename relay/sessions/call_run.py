"""One call, from its stream's start to its record's last write: the session serving it (realtime,
then maybe the cascade), its tools, its record, and every effect its sessions and tools ask for,
handled here in one place (`CallRun.apply`, `CallRun.perform`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twilio.twiml.voice_response import VoiceResponse

from relay.codecs.dtmf import dtmf_ulaw
from relay.config import Settings
from relay.errors import ProviderError, ToolError
from relay.sessions.call import AgentSwitch, CallSession, CallStats, EffectSink, Turn, TwilioSink
from relay.sessions.call_control import Goodbye, run_tool
from relay.sessions.call_record import CallRecorder
from relay.sessions.call_trace import Fallback, record_call_spans, trace_barge_in
from relay.sessions.effects import (
    BargeIn,
    Effect,
    Fault,
    HangUp,
    PlaybackIdle,
    ResponseDone,
    RunTool,
    SaveTurn,
    SendDigits,
    Transfer,
    Truncated,
)
from relay.sessions.providers import ProviderAdapter
from relay.sessions.realtime import RealtimeSession
from relay.tracing import CallTrace, Span
from relay.twilio_messages import Media, Start

if TYPE_CHECKING:
    from relay.sessions.manager import CallManager

log = logging.getLogger("relay.manager")

HANGUP_GRACE_S = 15.0  # longest wait for the goodbye to play before hanging up anyway
MACHINE_ENDS = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
# a call's outcome when the relay hung up on a machine: after its VOICEMAIL_MESSAGE, or at once
MACHINE_OUTCOMES = frozenset({"voicemail", "machine"})
GOODBYE_DURATION = "We have reached the time limit for this call. Thank you for calling, goodbye."


class CascadeFactory(Protocol):
    """Makes the cascade session of a call (`cascade.session.CascadeSession`, given by the app)."""

    def __call__(
        self,
        *,
        settings: Settings,
        adapter: ProviderAdapter,
        start: Start,
        twilio: TwilioSink,
        tools: list[dict[str, Any]],
        on_effect: EffectSink,
        history: Sequence[Turn],
        greet: bool,
        unheard: Sequence[Media],
    ) -> CallSession: ...


class CallRun:
    """One call: its record, its tools, and the session serving it (realtime, then maybe cascade)."""

    def __init__(self, manager: CallManager, start: Start, stream: TwilioSink) -> None:
        self.manager = manager
        self.agent, self.values = manager.call_agent(start)  # its agent, its placeholder values
        self.texts = self.agent.texts(self.values)  # INSTRUCTIONS, GREETING, VOICEMAIL_MESSAGE filled
        self.settings = self.agent.settings
        self.start = start
        self.stream = stream
        self.recorder = CallRecorder(manager.outbox, start.call_sid)
        self.session: CallSession | None = None
        self.mode = "cascade" if self.settings.relay_mode == "cascade" else "realtime"
        self.turns: list[Turn] = []  # what the caller heard, both paths, in order
        self._tasks: set[asyncio.Task[None]] = set()
        self._goodbye: Goodbye | None = None
        self._tones = 0  # DTMF tone sequences played
        self.earlier_stats: list[CallStats] = []  # the realtime phase's figures, after a fallback
        self.trace = CallTrace(start.call_sid)  # a no-op until `run` takes the call's trace
        self._cut_turns: set[tuple[int, int]] = set()  # (phase, turn) whose answer a barge-in cut
        self._fallback: Fallback | None = None  # when and why the realtime path was given up
        self.ending = ""

    # --- effects, in one place ------------------------------------------------------------------
    def apply(self, effect: Effect) -> None:
        """What a session reports: turns to record, tools to run, figures, the goodbye's progress."""
        stats = self.session.stats if self.session is not None else None
        if isinstance(effect, SaveTurn):
            self.turns.append((effect.role, effect.text))
            self.recorder.put("add_turn", effect.role, effect.text, **effect.meta)
            if "dtmf" in effect.meta:
                self.manager.metrics.dtmf_entries_total.inc()
        elif isinstance(effect, RunTool):
            self._spawn(run_tool(self, effect.call), f"tool-{effect.call.name}")
        elif isinstance(effect, BargeIn) and stats is not None:
            stats.barge_ins += 1
            trace_barge_in(self.trace, effect, stats.path)
            if stats.turn_times:  # the latest turn's answer was cut
                self._cut_turns.add((len(self.earlier_stats), len(stats.turn_times) - 1))
        elif isinstance(effect, Truncated) and stats is not None:
            stats.truncates += 1
        elif isinstance(effect, Fault) and stats is not None:
            stats.faults.append(effect.code)
        elif isinstance(effect, ResponseDone) and self._goodbye is not None:
            self._goodbye.on_response_done(effect.response_id, effect.status)
        elif isinstance(effect, PlaybackIdle) and self._goodbye is not None:
            self._goodbye.changed.set()

    async def perform(self, effect: HangUp | Transfer | SendDigits) -> None:
        """What a tool asks of the call: hang up, or transfer, once the model's answer to the tool
        (its goodbye, or "connecting you now") has played; or play DTMF tones now. Returns at once:
        the model speaks its answer only after it has the tool's output."""
        if isinstance(effect, SendDigits):
            if self.session is not None:
                self._tones += 1
                await self.session.play(dtmf_ulaw(effect.digits), f"dtmf:{self._tones}")
            return
        span = None
        if isinstance(effect, HangUp):
            log.info("hang-up requested (%s); waiting for the goodbye to play", effect.reason or "end_call")
            act = self.manager.hang_up(self.start.call_sid)
            span = self.trace.start("hang_up", reason=effect.reason or "end_call", by="tool")
        else:
            log.info("transfer requested; waiting for the model's answer to play")
            act = self.manager.redirect(self.start.call_sid, effect.twiml)
        self._goodbye = Goodbye(effect.after_response)
        self._spawn(self._after_goodbye(self._goodbye, act, span), type(effect).__name__.lower())

    def on_answered_by(self, answered_by: str) -> None:
        """Twilio's answering-machine detection: on a machine (after its beep or silence) the agent
        leaves VOICEMAIL_MESSAGE and the call is hung up once it has played; with no message, at
        once. A person (`human`) or `unknown`: the conversation goes on."""
        if answered_by in MACHINE_ENDS or answered_by == "fax":
            self._spawn(self._leave_voicemail(answered_by), "voicemail")

    async def _leave_voicemail(self, answered_by: str) -> None:
        message = self.texts.voicemail_message if answered_by != "fax" else ""
        session = self.session
        if not message or session is None:
            log.info("answered by %s: hanging up", answered_by)
            self.ending = "machine"
            span = self.trace.start("hang_up", reason=answered_by, by="machine_detection")
            await self._carry_out(self.manager.hang_up(self.start.call_sid), span)
            return
        log.info("answered by %s: leaving the voicemail message, then hanging up", answered_by)
        self._goodbye = Goodbye(after_response="")  # the next response that completes is the message
        self.ending = "voicemail"
        span = self.trace.start("hang_up", reason=answered_by, by="voicemail")
        await session.say(message, last=True)
        await self._after_goodbye(self._goodbye, self.manager.hang_up(self.start.call_sid), span)

    async def hand_off(self, name: str, reason: str) -> bool:
        """The `handoff` tool: the call moves to the agent `name`, one of its agent's `handoffs`
        (ToolError otherwise, or when that agent cannot serve it now). Its session takes the new
        agent's instructions and tools (and provider); the record lists each agent the call
        passed through. Returns `CallSession.hand_off`'s answer."""
        previous, session = self.agent, self.session
        target = self.manager.agents.get(name) if name in previous.handoffs else None
        if target is None or session is None or not target.provider_configured:
            raise ToolError(f"I can't hand this call to {name!r} right now; carry on with the caller.")
        adapter = target.adapter if self.mode == "realtime" else target.cascade_adapter()
        if adapter is None:  # on the cascade, an agent without one cannot take the call
            raise ToolError(f"The {name} agent can't take calls on this line right now; carry on.")
        texts = target.texts(self.values)
        switch = AgentSwitch(
            settings=target.call_settings(texts),
            adapter=adapter,
            opening=target.opening_for(texts),
            chat_tools=target.chat_tools(texts),
            reconnect=target.connection_key != previous.connection_key,
        )
        self.agent, self.texts, self.settings = target, texts, target.settings
        log.info(
            "handoff from %s to %s (%s)",
            previous.name,
            name,
            "new connection" if switch.reconnect and self.mode == "realtime" else "same session",
        )
        self.recorder.put("upsert", agent=name)
        entry = {"name": name, "from": previous.name, "reason": reason[:200], "at": time.time()}
        self.recorder.put("add_event", "agents", entry)
        self.manager.metrics.handoffs_total.labels(from_agent=previous.name, to_agent=name).inc()
        return await session.hand_off(switch)

    def _recording_started(self, recording_sid: str) -> None:
        self.recorder.put("upsert", recording_sid=recording_sid)

    def _answered_early(self) -> None:
        """An answering-machine result that came before this call's stream started (kept by the
        manager's notes)."""
        answered_by = self.manager.notes.take_answered_by(self.start.call_sid)
        if answered_by:
            self.on_answered_by(answered_by)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self.start.call_sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_goodbye(
        self, goodbye: Goodbye, act: Coroutine[Any, Any, None], span: Span | None = None
    ) -> None:
        try:
            async with asyncio.timeout(HANGUP_GRACE_S):
                await goodbye.played(lambda: self.session is not None and self.session.playing)
        except TimeoutError:
            log.warning(
                "the model's last words did not finish within %.0f s; going on anyway", HANGUP_GRACE_S
            )
        except asyncio.CancelledError:
            act.close()
            if span is not None:
                span.end(done=False)  # the call ended before its goodbye had played
            raise
        await self._carry_out(act, span)

    @staticmethod
    async def _carry_out(act: Coroutine[Any, Any, None], span: Span | None = None) -> None:
        """A hang-up or redirect through Twilio's REST API; a refusal is logged, the call goes on.
        `span` (a `hang_up`) ends when Twilio has answered."""
        try:
            await act
        except ToolError as exc:  # Twilio refused or did not answer: the call goes on as it is
            log.error("%s", exc)
            if span is not None:
                span.fail(str(exc))
        if span is not None:
            span.end(done=True)

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()

    # --- the call -------------------------------------------------------------------------------
    async def end_politely(self, text: str, reason: str) -> None:
        """Ends the call with a spoken goodbye: a TwiML redirect when Twilio credentials are set,
        otherwise by closing the stream (Twilio then speaks the `<Say>` after `<Connect>`)."""
        span = self.trace.start("hang_up", reason=reason, by="relay")
        if self.manager.twilio_calls is not None:
            vr = VoiceResponse()
            vr.say(text)
            vr.hangup()
            try:
                await self.manager.twilio_calls.redirect(self.start.call_sid, str(vr))
            except Exception as exc:  # the stream close below still ends the call
                log.warning("could not redirect the call to its goodbye (%s): %s", reason, exc)
                span.fail(exc)
        self.ending = reason
        await self.stream.close()
        span.end(done=True)

    def all_stats(self) -> list[CallStats]:
        return [*self.earlier_stats, *([self.session.stats] if self.session is not None else [])]

    async def run(self) -> str:
        """Serves the call; its trace (begun at its webhook, or here) spans it and ends with its
        outcome, and its log lines carry the trace's ids."""
        adapter = self.agent.adapter
        trace = self.trace = self.manager.tracing.for_stream(
            self.start.call_sid, stream_sid=self.start.stream_sid, mode=self.mode, agent=self.agent.name
        )
        outcome = "error"
        try:
            with trace.bind_logs():
                outcome = await self._run(adapter)
        finally:
            record_call_spans(trace, self.all_stats(), self._cut_turns, self._fallback)
            trace.end(outcome=outcome, mode=self.mode, agent=self.agent.name)
        return outcome

    async def _run(self, adapter: ProviderAdapter) -> str:
        self.recorder.put("add_event", "agents", {"name": self.agent.name, "at": time.time()})
        self.recorder.put(
            "upsert",
            stream_sid=self.start.stream_sid,
            agent=self.agent.name,
            provider=adapter.vendor,
            mode=self.mode,
            started_at=time.time(),
            status="in-progress",
        )
        recordings = self.manager.recordings
        if self.settings.record_calls and recordings.can_record():
            self._spawn(recordings.record(self.start.call_sid, self._recording_started), "record")
        outcome = "error"
        try:
            async with asyncio.timeout(self.settings.max_call_duration):
                outcome = await self._serve(adapter)
            if self.ending in MACHINE_OUTCOMES:  # the relay hung up on a machine: say so
                outcome = self.ending
        except TimeoutError:
            outcome = "max_duration"
            log.info("call reached MAX_CALL_DURATION (%.0f s)", self.settings.max_call_duration)
            await self.end_politely(GOODBYE_DURATION, outcome)
        except ProviderError as exc:
            outcome = "provider_error"
            log.error("%s provider failed: %s", self.mode, exc, extra={"cause": type(exc).__name__})
            self.recorder.put("add_event", "errors", {"cause": str(exc), "status": exc.status})
        finally:
            self._cancel_tasks()
            stats = [st.record() for st in self.all_stats()]
            self.recorder.finish(
                ended_at=time.time(), status="ended", outcome=outcome, mode=self.mode, stats=stats
            )
            await self.recorder.aclose()
            # its record, POSTed off the call's path (to its agent's own URL, when it has one)
            self.manager.post_call.call_ended(self.start.call_sid, self.settings.post_call_webhook_url)
            metrics = self.manager.metrics
            for stats_obj in self.all_stats():
                metrics.observe_call_end(
                    stats_obj, self.mode, outcome, provider=adapter.vendor, count=False, agent=self.agent.name
                )
            metrics.calls_total.labels(agent=self.agent.name, mode=self.mode, outcome=outcome).inc()
        log.info("call ended: %s", outcome)
        return outcome

    async def _serve(self, adapter: ProviderAdapter) -> str:
        if self.mode == "cascade":
            return await self._cascade(adapter, greet=self.settings.greeting_enabled)
        early = self.manager.early_connections
        realtime = RealtimeSession(
            settings=self.settings,
            adapter=adapter,
            start=self.start,
            twilio=self.stream,
            opening=self.agent.opening_for(self.texts),
            on_effect=self.apply,
            history=self.turns,
            early=early.take(self.start.call_sid) if early is not None else None,
            trace=self.trace,
        )
        self.session = realtime
        self._answered_early()
        try:
            return await realtime.run()
        except ProviderError as exc:
            fallback = self._fallback_adapter(adapter)
            if fallback is None:
                raise
            cause = exc.cause
            self._fallback = Fallback(time.monotonic(), cause, str(exc))
            self.manager.metrics.fallbacks_total.labels(cause=cause).inc()
            self.earlier_stats.append(realtime.stats)
            log.warning("falling back to the cascade (%s): %s", cause, exc)
            self.recorder.put(
                "add_event", "fallbacks", {"cause": cause, "error": str(exc), "at": time.time()}
            )
            self.mode = "cascade"
            self.recorder.put("upsert", mode="cascade")
            self._cancel_tasks()  # the realtime session's tools: their outputs have nowhere to go
            greet = self.settings.greeting_enabled and realtime.stats.first_audio_ms is None
            # what the caller said since the provider's last sign of life
            return await self._cascade(fallback, greet=greet, unheard=realtime.unheard_audio())

    def _fallback_adapter(self, adapter: ProviderAdapter) -> ProviderAdapter | None:
        """The adapter whose cascade takes over a failed realtime call, or None (logged why)."""
        if self.settings.relay_mode != "auto":
            return None
        fallback = self.agent.cascade_adapter()
        if fallback is None:
            log.error(
                "cannot fall back to the cascade: no STT/chat/TTS models configured for %s%s",
                adapter.display_name,
                "" if self.settings.allow_cross_provider_fallback else " (cross-provider fallback is off)",
            )
        return fallback

    async def _cascade(self, adapter: ProviderAdapter, *, greet: bool, unheard: Sequence[Media] = ()) -> str:
        cascade = self.manager.cascade_factory(
            settings=self.agent.call_settings(self.texts),
            adapter=adapter,
            start=self.start,
            twilio=self.stream,
            tools=self.agent.chat_tools(self.texts),
            on_effect=self.apply,
            history=list(self.turns),
            greet=greet,
            unheard=unheard,
        )
        self.session = cascade
        self._answered_early()
        return await cascade.run()


__all__ = ["CallRun", "CascadeFactory"]
