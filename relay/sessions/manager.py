"""Which provider and which mode serve a call, admission, and everything around one call's session:
its record, its tools, its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from twilio.twiml.voice_response import VoiceResponse

# The cascade (and the openai SDK under it) is imported with the relay, not at a call's first
# fallback: that import took 290-330 ms on the event loop, a stall in every live call's audio.
from cascade.session import CascadeSession
from relay.config import Settings
from relay.errors import (
    ProviderClosedError,
    ProviderError,
    ProviderMalformedError,
    ProviderUnresponsiveError,
    StoreError,
)
from relay.logs import bind_call
from relay.metrics import Metrics
from relay.sessions import events as ev
from relay.sessions.bridge import Effect, Notice, RunTool, SaveTurn
from relay.sessions.limits import CallLimiter, MemoryLimiter
from relay.sessions.outbox import Outbox, StoreHealth
from relay.sessions.preconnect import PRECONNECT_TTL_S, Preconnector
from relay.sessions.providers import ProviderAdapter
from relay.sessions.realtime import RealtimeSession, connect_primed
from relay.sessions.store import CallStore, WriteOp
from relay.twilio_messages import Media, Start

log = logging.getLogger("relay.manager")

HANGUP_GRACE_S = 15.0  # longest wait for the goodbye to play before hanging up anyway
LIMITER_DEADLINE_S = 0.5  # admission (and a slot's release) never waits longer for the shared limiter
RECORD_WAIT_S = 2.0  # an ended call waits this long at most for its record (not at all if the store is down)
OUTBOX_CLOSE_S = 3.0  # at shutdown, how long queued record writes get to reach the store...
OUTBOX_CLOSE_DOWN_S = 1.0  # ...and while it is known to be down: two more tries, not a long wait
GOODBYE_DURATION = "We have reached the time limit for this call. Thank you for calling, goodbye."
GOODBYE_SHUTDOWN = "Sorry, this service is restarting. Please call again in a moment. Goodbye."
END_CALLS_MARGIN_S = 2.0  # the drain's bound on ending the remaining calls: one REST timeout plus this


class CallRecorder:
    """A call's record writes, queued in the process's outbox: the call never waits for the store."""

    def __init__(self, outbox: Outbox, call_sid: str) -> None:
        self.outbox = outbox
        self.call_sid = call_sid
        self._last = 0
        self._finished = False

    def put(self, method: WriteOp, *args: Any, **kwargs: Any) -> None:
        """Queues `store.<method>(call_sid, *args, **kwargs)`; ignored once `finish` was called."""
        if not self._finished:
            self._last = self.outbox.put(self.call_sid, method, *args, **kwargs)

    def finish(self, **fields: Any) -> None:
        """Queues the record's last upsert; later writes (a slot keeper's) are ignored."""
        self.put("upsert", **fields)
        self._finished = True

    async def aclose(self) -> None:
        """Waits a little for this call's writes to be stored: not at all while the store is down."""
        await self.outbox.wait_written(self._last, timeout=RECORD_WAIT_S)


class CallControlImpl:
    """What tools may do to the call (relay.tools.CallControl): hang up after the goodbye, transfer."""

    def __init__(self, manager: CallManager, call_sid: str) -> None:
        self.manager = manager
        self.call_sid = call_sid
        self.session: RealtimeSession | CascadeSession | None = None
        self.tool_response_id = ""  # the response whose tool call is running
        self._goodbye_done = False
        self._armed_for: str | None = None
        self._changed = asyncio.Event()
        self.hung_up = asyncio.Event()

    async def hang_up_after_playback(self, reason: str) -> None:
        """Hangs up once a response after the tool's own has finished and its audio has played."""
        self._armed_for = self.tool_response_id
        log.info("hang-up requested (%s); waiting for the goodbye to play", reason or "end_call")
        asyncio.get_running_loop().create_task(self._hang_up_when_played())

    def _goodbye_played(self) -> bool:
        playing = self.session is not None and self.session.playing
        return self._goodbye_done and not playing

    async def _hang_up_when_played(self) -> None:
        try:
            async with asyncio.timeout(HANGUP_GRACE_S):
                while not self._goodbye_played():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            log.warning("the goodbye did not finish within %.0f s; hanging up anyway", HANGUP_GRACE_S)
        await self.manager.hang_up(self.call_sid)
        self.hung_up.set()

    async def transfer(self, twiml: str) -> None:
        await self.manager.redirect(self.call_sid, twiml)

    def on_notice(self, notice: Notice) -> None:
        armed = self._armed_for is not None
        if armed and notice.kind == "response_done" and notice.detail.get("response_id") != self._armed_for:
            self._goodbye_done = True
        self._changed.set()


class CallManager:
    """Admits calls and runs each one's session."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: CallStore,
        adapter_factory: Callable[[], ProviderAdapter],
        registry: Any = None,
        twilio_calls: Any = None,
        alternate_adapter_factory: Callable[[], ProviderAdapter | None] | None = None,
        metrics: Metrics | None = None,
        limiter: CallLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.adapter_factory = adapter_factory
        self.registry = registry
        self.twilio_calls = twilio_calls
        self.alternate_adapter_factory = alternate_adapter_factory
        self.active: dict[str, CallRun] = {}
        self._idle = asyncio.Event()
        self.limiter = limiter if limiter is not None else MemoryLimiter(settings.max_concurrent_calls)
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.active_calls.set_function(lambda: len(self.active))
        self.store_health = StoreHealth(self.metrics)
        self.outbox = Outbox(store, self.store_health)
        self.limiter.on_lost = self._on_lost
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False
        self._adapter: ProviderAdapter | None = None
        self.preconnector: Preconnector | None = None
        if settings.realtime_preconnect and settings.relay_mode != "cascade":
            self.preconnector = Preconnector(
                lambda: connect_primed(self.adapter, settings, self.realtime_tools()),
                limit=settings.max_concurrent_calls,
                ttl=min(PRECONNECT_TTL_S, settings.stream_token_ttl),  # a token lives < 1 s longer at most
                remember=settings.stream_token_ttl + 1,  # one per call SID while its token can be valid
            )
            counter = self.metrics.preconnects_total
            self.preconnector.on_outcome = lambda outcome: counter.labels(outcome=outcome).inc()

    @property
    def adapter(self) -> ProviderAdapter:
        if self._adapter is None:
            self._adapter = self.adapter_factory()
        return self._adapter

    async def admit(self, call_sid: str) -> str | None:
        """None when the call is admitted (a slot is held for it), else why not: draining, unconfigured
        or busy. The slot is shared by every instance when Redis is used; if Redis does not answer
        within LIMITER_DEADLINE_S the relay fails open, bounded by this instance's own
        MAX_CONCURRENT_CALLS (counted in relay_calls_admitted_fail_open_total)."""
        if self.draining:
            return "draining"
        if not self.settings.provider_configured:
            return "unconfigured"
        try:
            async with asyncio.timeout(LIMITER_DEADLINE_S):
                ok = await self.limiter.acquire(call_sid, self.settings.call_slot_ttl)
            self.store_health.succeeded()
        except (StoreError, TimeoutError) as exc:
            self.store_health.failed(exc, "taking a call slot")
            ok = len(self.active) < self.settings.max_concurrent_calls
            if ok:
                self.metrics.calls_admitted_fail_open_total.inc()
                log.info("admitted on this instance's own limit: the call limiter did not answer")
        return None if ok else "busy"

    def realtime_tools(self) -> list[dict[str, Any]]:
        """The tools every realtime session is configured with."""
        return self.registry.realtime_tools() if self.registry is not None else []

    def preconnect(self, call_sid: str) -> None:
        """An admitted call: open its realtime connection now, while Twilio sets up the stream."""
        if self.preconnector is not None and not self.draining:
            self.preconnector.start(call_sid)

    def start(self) -> None:
        """Starts the record outbox's writer and the periodic sweep of expired slots (every third of
        CALL_SLOT_TTL), so a crashed instance's calls are marked lost even when no new call comes."""
        self.outbox.start()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_slots(), name="slot-sweeper")

    async def _sweep_slots(self) -> None:
        while True:
            await asyncio.sleep(self.settings.call_slot_ttl / 3)
            try:
                await self.limiter.sweep()  # its marks reach _on_lost
            except StoreError as exc:
                self.store_health.failed(exc, "sweeping expired call slots")
            else:
                self.store_health.succeeded()

    def _on_lost(self, call_sids: list[str]) -> None:
        self.metrics.calls_lost_total.inc(len(call_sids))
        for sid in call_sids:
            with bind_call(sid):
                log.warning(
                    "call marked ended (outcome lost): its slot expired, so the instance serving it "
                    "stopped refreshing it (crashed, or cut off from Redis for CALL_SLOT_TTL)"
                )

    async def _keep_slot(self, run: CallRun) -> None:
        """Holds the call's slot while it runs (taken here when admission failed open or happened on
        another instance), refreshing it so that a crashed instance's slots expire. A slot found
        lapsed (Redis was away longer than CALL_SLOT_TTL) may have had the call marked lost: the
        record is set back in progress."""
        call_sid, ttl = run.start.call_sid, self.settings.call_slot_ttl
        held = False
        while True:
            try:
                if held and not await self.limiter.refresh(call_sid, ttl):
                    log.warning("the call's slot had lapsed; taking it again")
                    run.recorder.put("upsert", status="in-progress", outcome="", ended_at=None)
                    held = False
                if not held:
                    held = await self.limiter.acquire(call_sid, ttl)
            except StoreError as exc:
                self.store_health.failed(exc, "refreshing a call slot")
            else:
                self.store_health.succeeded()
            await asyncio.sleep(ttl / 3)

    async def _release_slot(self, call_sid: str) -> None:
        try:
            async with asyncio.timeout(LIMITER_DEADLINE_S):
                await self.limiter.release(call_sid)
        except (StoreError, TimeoutError) as exc:  # the slot expires by itself
            self.store_health.failed(exc, "releasing a call slot")

    async def hang_up(self, call_sid: str) -> None:
        if self.twilio_calls is None:
            log.warning("cannot hang up: TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are not set")
            return
        await self.twilio_calls.hang_up(call_sid)

    async def redirect(self, call_sid: str, twiml: str) -> None:
        if self.twilio_calls is None:
            log.warning("cannot transfer: TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are not set")
            return
        await self.twilio_calls.redirect(call_sid, twiml)

    def prepare_cascade(self) -> None:
        """At startup: builds the cascade's SDK client (an HTTP client and its TLS context, 20-150 ms)
        now rather than on the event loop at a call's first fallback (RELAY_MODE auto or cascade)."""
        if self.settings.relay_mode == "realtime" or not self.settings.provider_configured:
            return
        if all(self.adapter.cascade_models().values()):
            self.adapter.cascade_client()

    def cascade_adapter(self) -> ProviderAdapter | None:
        """The adapter whose cascade serves a fallback: the same vendor's, unless that one has no
        cascade models and ALLOW_CROSS_PROVIDER_FALLBACK permits the other configured vendor."""
        if all(self.adapter.cascade_models().values()):
            return self.adapter
        if self.settings.allow_cross_provider_fallback and self.alternate_adapter_factory is not None:
            other = self.alternate_adapter_factory()
            if other is not None and all(other.cascade_models().values()):
                return other
        return None

    async def drain(self, grace: float) -> int:
        """Graceful shutdown: stop taking calls, let active ones finish for up to `grace` seconds,
        then end the rest with a spoken goodbye. Returns how many calls had to be ended."""
        self.draining = True
        log.info("draining: %d active calls, waiting up to %.0f s", len(self.active), grace)
        with contextlib.suppress(TimeoutError):
            await self.wait_idle(grace)
        remaining = list(self.active.values())
        if remaining:
            started = time.monotonic()
            cut = await self._end_calls(remaining)
            log.warning(
                "drain timeout: ended %d calls with a goodbye in %.1f s (%d cut without it)",
                len(remaining),
                time.monotonic() - started,
                cut,
            )
        return len(remaining)

    async def _end_calls(self, runs: list[CallRun]) -> int:
        """Ends `runs` concurrently, each with its spoken goodbye (a Twilio REST redirect), within
        one REST timeout in total (plus END_CALLS_MARGIN_S): a call whose redirect has not
        returned by then has its stream closed, and Twilio speaks the `<Say>` after `<Connect>`.
        Returns how many were cut that way."""
        rest_timeout = getattr(self.twilio_calls, "timeout", 0.0) if self.twilio_calls is not None else 0.0
        tasks = [
            asyncio.create_task(
                run.end_politely(GOODBYE_SHUTDOWN, "shutdown"), name=f"end-{run.start.call_sid}"
            )
            for run in runs
        ]
        _, pending = await asyncio.wait(tasks, timeout=rest_timeout + END_CALLS_MARGIN_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cut = [run for run, task in zip(runs, tasks, strict=True) if task in pending]
        for run in cut:
            run.ending = "shutdown"
            with contextlib.suppress(Exception):
                await run.channel.close()
        return len(cut)

    async def wait_idle(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline API
        """Returns once no call is active (their slots released); TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            while self.active:
                self._idle.clear()
                await self._idle.wait()

    async def run_call(self, start: Start, channel: Any) -> str:
        run = CallRun(self, start, channel)
        self.active[start.call_sid] = run
        keeper = asyncio.create_task(self._keep_slot(run))
        try:
            return await run.run()
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            await self._release_slot(start.call_sid)
            self.active.pop(start.call_sid, None)
            self._idle.set()

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.preconnector is not None:
            await self.preconnector.aclose()
        if self._adapter is not None:
            await self._adapter.aclose()
        await self.outbox.aclose(OUTBOX_CLOSE_S if self.store_health.up else OUTBOX_CLOSE_DOWN_S)
        await self.limiter.close()


class CallRun:
    """One call: its record, its tools, and the session serving it (realtime, then maybe cascade)."""

    def __init__(self, manager: CallManager, start: Start, channel: Any) -> None:
        self.manager = manager
        self.settings = manager.settings
        self.start = start
        self.channel = channel
        self.recorder = CallRecorder(manager.outbox, start.call_sid)
        self.control = CallControlImpl(manager, start.call_sid)
        self.session: RealtimeSession | CascadeSession | None = None
        self.mode = "cascade" if self.settings.relay_mode == "cascade" else "realtime"
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self.earlier_stats: list[Any] = []  # the realtime phase's figures, after a fallback
        self.ending = ""

    async def end_politely(self, text: str, reason: str) -> None:
        """Ends the call with a spoken goodbye: a TwiML redirect when Twilio credentials are set,
        otherwise by closing the stream (Twilio then speaks the `<Say>` after `<Connect>`)."""
        if self.manager.twilio_calls is not None:
            vr = VoiceResponse()
            vr.say(text)
            vr.hangup()
            try:
                await self.manager.twilio_calls.redirect(self.start.call_sid, str(vr))
            except Exception as exc:  # the stream close below still ends the call
                log.warning("could not redirect the call to its goodbye (%s): %s", reason, exc)
        self.ending = reason
        await self.channel.close()

    def all_stats(self) -> list[Any]:
        return [*self.earlier_stats, *([self.session.stats] if self.session is not None else [])]

    def on_effect(self, effect: Effect) -> None:
        if isinstance(effect, SaveTurn):
            self.recorder.put("add_turn", effect.role, effect.text, **effect.meta)
        elif isinstance(effect, RunTool):
            task = asyncio.create_task(self._realtime_tool(effect.call))
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)
        elif isinstance(effect, Notice):
            self.control.on_notice(effect)

    async def run(self) -> str:
        adapter = self.manager.adapter
        self.recorder.put(
            "upsert",
            stream_sid=self.start.stream_sid,
            provider=adapter.vendor,
            mode=self.mode,
            started_at=time.time(),
            status="in-progress",
        )
        outcome = "error"
        try:
            async with asyncio.timeout(self.settings.max_call_duration):
                outcome = await self._serve(adapter)
        except TimeoutError:
            outcome = "max_duration"
            log.info("call reached MAX_CALL_DURATION (%.0f s)", self.settings.max_call_duration)
            await self.end_politely(GOODBYE_DURATION, outcome)
        except ProviderError as exc:
            outcome = "provider_error"
            log.error("%s provider failed: %s", self.mode, exc, extra={"cause": type(exc).__name__})
            self.recorder.put(
                "add_event", "errors", {"cause": str(exc), "status": getattr(exc, "status", None)}
            )
        finally:
            for task in self._tool_tasks:
                task.cancel()
            stats = [vars(st) for st in self.all_stats()]
            self.recorder.finish(
                ended_at=time.time(), status="ended", outcome=outcome, mode=self.mode, stats=stats
            )
            await self.recorder.aclose()
            metrics = self.manager.metrics
            for stats_obj in self.all_stats():
                metrics.observe_call_end(stats_obj, self.mode, outcome, provider=adapter.vendor, count=False)
            metrics.calls_total.labels(mode=self.mode, outcome=outcome).inc()
        log.info("call ended: %s", outcome)
        return outcome

    async def _serve(self, adapter: ProviderAdapter) -> str:
        if self.mode == "cascade":
            return await self._cascade(adapter, history=[], greet=self.settings.greeting_enabled)
        realtime = RealtimeSession(
            settings=self.settings,
            adapter=adapter,
            start=self.start,
            twilio=self.channel,
            tools=self.manager.realtime_tools(),
            on_effect=self.on_effect,
            early=self.manager.preconnector.take(self.start.call_sid) if self.manager.preconnector else None,
        )
        self.session = self.control.session = realtime
        try:
            return await realtime.run()
        except ProviderError as exc:
            if self.settings.relay_mode != "auto":
                raise
            fallback = self.manager.cascade_adapter()
            if fallback is None:
                log.error(
                    "cannot fall back to the cascade: no STT/chat/TTS models configured for %s%s",
                    adapter.display_name,
                    ""
                    if self.settings.allow_cross_provider_fallback
                    else " (cross-provider fallback is off)",
                )
                raise
            cause = fallback_cause(exc)
            self.manager.metrics.fallbacks_total.labels(cause=cause).inc()
            self.earlier_stats.append(realtime.stats)
            log.warning("falling back to the cascade (%s): %s", cause, exc)
            self.recorder.put(
                "add_event", "fallbacks", {"cause": cause, "error": str(exc), "at": time.time()}
            )
            self.mode = "cascade"
            self.recorder.put("upsert", mode="cascade")
            greeted = realtime.stats.first_audio_ms is not None
            for task in self._tool_tasks:
                task.cancel()
            greet = self.settings.greeting_enabled and not greeted
            unheard = realtime.unheard_audio()  # what the caller said since the provider's last sign of life
            return await self._cascade(fallback, history=realtime.turns, greet=greet, unheard=unheard)

    async def _cascade(
        self,
        adapter: ProviderAdapter,
        *,
        history: list[tuple[str, str]],
        greet: bool,
        unheard: Sequence[Media] = (),
    ) -> str:
        registry = self.manager.registry
        cascade = CascadeSession(
            settings=self.settings,
            adapter=adapter,
            start=self.start,
            twilio=self.channel,
            tools=registry.chat_tools() if registry is not None else [],
            run_tool=self._dispatch,
            on_effect=self.on_effect,
            history=history,
            greet=greet,
            unheard=unheard,
        )
        self.session = self.control.session = cascade
        return await cascade.run()

    async def _dispatch(self, call: ev.ToolCall) -> str:
        """Runs a tool for either path: context, hold tone when slow, audit on the record."""
        from relay.tools import ToolCallRequest, ToolContext

        assert self.session is not None and self.manager.registry is not None
        self.control.tool_response_id = call.response_id
        ctx = ToolContext(
            call_sid=self.start.call_sid,
            stream_sid=self.start.stream_sid,
            settings=self.settings,
            control=self.control,
            twilio=self.manager.twilio_calls,
        )
        timer = None
        if self.settings.slow_tool_feedback == "tone":
            timer = asyncio.get_running_loop().call_later(self.settings.slow_tool_after, self.session.hold)
        try:
            request = ToolCallRequest(call.call_id, call.name, call.arguments)
            result = await self.manager.registry.dispatch(request, ctx)
        finally:
            if timer is not None:
                timer.cancel()
        audit = result.audit()
        self.recorder.put("add_event", "tools", audit)
        self.manager.metrics.observe_tool(audit)
        return str(result.output)

    async def _realtime_tool(self, call: ev.ToolCall) -> None:
        output = await self._dispatch(call)
        if isinstance(self.session, RealtimeSession):
            self.session.tool_finished(call.call_id, output)


def fallback_cause(exc: ProviderError) -> str:
    """A short label for metrics and the record: auth, not_found, rate_limited, server_error, timeout,
    unresponsive (open but silent or frozen), malformed (a flood of events that do not parse)…"""
    if isinstance(exc, ProviderUnresponsiveError):
        return "unresponsive"
    if isinstance(exc, ProviderMalformedError):
        return "malformed"
    status = exc.status
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status is not None and status >= 500:
        return "server_error"
    if "did not answer" in str(exc):
        return "timeout"
    return "dropped" if isinstance(exc, ProviderClosedError) else "unreachable"
