"""The process's calls: admission (the shared call limit), the slots that hold it (an outbound
call's from before Twilio names it), the early connections, each call's placeholder values, which
provider serves a call and which serves its fallback, and the drain at shutdown. One call's own
life is `relay.sessions.call_run.CallRun`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

from relay.config import Settings
from relay.errors import StoreError
from relay.logs import bind_call
from relay.metrics import Metrics
from relay.post_call import DeliveryPolicy, PostCallWebhook
from relay.sessions.agent_runtime import AdapterFactory, AgentRuntime
from relay.sessions.agent_set import AgentSet
from relay.sessions.call import TwilioSink
from relay.sessions.call_notes import CallNotes
from relay.sessions.call_run import CallRun, CascadeFactory
from relay.sessions.early import EARLY_TTL_S, EarlyConnections
from relay.sessions.limits import CallLimiter, MemoryLimiter
from relay.sessions.outbox import Outbox, StoreHealth
from relay.sessions.realtime_setup import open_early
from relay.sessions.recordings import Recordings
from relay.sessions.store import CallStore
from relay.tracing import Tracing
from relay.transport.provider import ProviderSocket
from relay.twilio_messages import Start

log = logging.getLogger("relay.manager")

LIMITER_DEADLINE_S = 0.5  # admission (and a slot's release) never waits longer for the shared limiter
OUTBOX_CLOSE_S = 3.0  # at shutdown, how long queued record writes get to reach the store...
OUTBOX_CLOSE_DOWN_S = 1.0  # ...and while it is known to be down: two more tries, not a long wait
POST_CALL_RECORD_WAIT_S = 5.0  # a post-call delivery waits this long for the record's writes, then retries
GOODBYE_SHUTDOWN = "Sorry, this service is restarting. Please call again in a moment. Goodbye."
END_CALLS_MARGIN_S = 2.0  # the drain's bound on ending the remaining calls: one REST timeout plus this
# An outbound call holds its slot from `POST /calls` on; while it rings nobody refreshes it, so it
# lasts this long (Twilio rings 60 s by default, at most 600 s, after queueing) or CALL_SLOT_TTL if
# longer. A call that is never answered gives it back at its final status callback.
RINGING_SLOT_TTL_S = 660.0
# The stream parameter naming the instance that holds the call's early connection (set by the
# webhook when it opened one): a stream served by another instance finds it is not its own.
EARLY_AT = "earlyAt"
MAX_INSTANCE_ID_CHARS = 32


class CallManager:
    """Admits calls and runs each one's session."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: CallStore,
        adapter_factory: AdapterFactory,
        cascade_factory: CascadeFactory,
        registry: Any = None,
        twilio_calls: Any = None,
        metrics: Metrics | None = None,
        limiter: CallLimiter | None = None,
        post_call_policy: DeliveryPolicy | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracing = tracing if tracing is not None else Tracing(settings)  # off: every call a no-op
        self.cascade_factory = cascade_factory
        self.twilio_calls = twilio_calls
        self.active: dict[str, CallRun] = {}
        self._idle = asyncio.Event()
        self.limiter = limiter if limiter is not None else MemoryLimiter(settings.max_concurrent_calls)
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.active_calls.set_function(lambda: len(self.active))
        self.store_health = StoreHealth(self.metrics)
        self.outbox = Outbox(store, self.store_health)
        self.limiter.on_lost = self._on_lost
        self.recordings = Recordings(settings, twilio_calls)
        self.post_call = PostCallWebhook(
            settings, metrics=self.metrics, load_record=self.stored_record, policy=post_call_policy
        )
        self.post_call.ready = self.recordings.ready
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False
        # this process, as the webhook names it to the stream (EARLY_AT): new at every start, so a
        # stream reaching a restarted instance finds the early connection was another's
        self.instance_id = secrets.token_hex(6)
        # the agents: the environment's (`default`) until AGENTS_FILE gives others (`agents.replace`)
        default = AgentRuntime("default", settings, adapter_factory=adapter_factory, registry=registry)
        self.agents = AgentSet(default, adapter_factory=adapter_factory, registry=registry)
        self.early_connections: EarlyConnections | None = None
        # placeholder values, outbound contexts and AMD results, until the call's stream takes them
        self.notes = CallNotes(settings, ringing_ttl=self.ringing_slot_ttl)
        if settings.realtime_preconnect:  # used by the calls of agents in realtime or auto mode
            self.early_connections = EarlyConnections(
                self._open_early,
                limit=settings.max_concurrent_calls,
                ttl=min(EARLY_TTL_S, settings.stream_token_ttl),  # a token lives < 1 s longer at most
                remember=settings.stream_token_ttl + 1,  # one per call SID while its token can be valid
            )
            counter = self.metrics.preconnects_total
            self.early_connections.on_outcome = lambda outcome: counter.labels(outcome=outcome).inc()

    async def admit(
        self, call_sid: str, *, ttl: float | None = None, agent: AgentRuntime | None = None
    ) -> str | None:
        """None when the call is admitted (a slot is held for it, `ttl` seconds, CALL_SLOT_TTL by
        default), else why not: draining, unconfigured (its agent's provider; the default agent's
        when none is given) or busy. The slot is shared by every instance
        when Redis is used; if Redis does not answer within LIMITER_DEADLINE_S the relay fails open,
        bounded by this instance's own MAX_CONCURRENT_CALLS (counted in
        relay_calls_admitted_fail_open_total)."""
        if self.draining:
            return "draining"
        if not (agent or self.agents.default).provider_configured:
            return "unconfigured"
        try:
            async with asyncio.timeout(LIMITER_DEADLINE_S):
                ok = await self.limiter.acquire(call_sid, ttl or self.settings.call_slot_ttl)
            self.store_health.succeeded()
        except (StoreError, TimeoutError) as exc:
            self.store_health.failed(exc, "taking a call slot")
            ok = len(self.active) < self.settings.max_concurrent_calls
            if ok:
                self.metrics.calls_admitted_fail_open_total.inc()
                log.info("admitted on this instance's own limit: the call limiter did not answer")
        return None if ok else "busy"

    # --- outbound calls ---------------------------------------------------------------------------
    @property
    def ringing_slot_ttl(self) -> float:
        return max(RINGING_SLOT_TTL_S, self.settings.call_slot_ttl)

    async def reserve_outbound(self, agent: AgentRuntime | None = None) -> tuple[str, str | None]:
        """Admission for a call the relay is about to place: a slot held under a reservation key
        until Twilio names the call (`bind_outbound`), so that the callee who answers finds one.
        Returns the key and None, or the key and why not (`admit`'s reasons)."""
        reservation = f"outbound-{uuid.uuid4().hex}"
        return reservation, await self.admit(reservation, ttl=self.ringing_slot_ttl, agent=agent)

    async def bind_outbound(
        self, reservation: str, call_sid: str, context: Mapping[str, str], agent: str | None = None
    ) -> None:
        """The placed call's slot moves from its reservation to its call SID, in one step, and its
        context and agent are kept here for its answer webhook (the record has them too, for
        other instances).
        A limiter that does not answer leaves the slot to expire: the answer webhook admits the
        call again (failing open then as any admission does)."""
        self.notes.keep_context(call_sid, context, agent)
        try:
            async with asyncio.timeout(LIMITER_DEADLINE_S):
                held = await self.limiter.rebind(reservation, call_sid, self.ringing_slot_ttl)
            self.store_health.succeeded()
        except (StoreError, TimeoutError) as exc:
            self.store_health.failed(exc, "moving an outbound call's slot")
            return
        if not held:
            log.warning("outbound call %s: its reserved slot had lapsed and none was free", call_sid)

    async def release_reservation(self, reservation: str) -> None:
        """A reservation whose call was not placed (Twilio refused it) gives its slot back."""
        await self._release_slot(reservation)

    async def call_not_answered(self, call_sid: str) -> None:
        """Twilio's final status for a call that never connected (busy, no-answer, failed,
        canceled): the slot it held while ringing is given back now rather than when it lapses.
        A call running here keeps its slot until it ends."""
        if call_sid not in self.active:
            self.notes.forget_context(call_sid)
            await self._release_slot(call_sid)

    def answered_by(self, call_sid: str, answered_by: str) -> bool:
        """Twilio's answering-machine detection result for a call (`AnsweredBy`: human,
        machine_end_beep, machine_end_silence, machine_end_other, fax, unknown...), handed to the
        call when it runs here (`CallRun.on_answered_by`): True then. Otherwise (its stream has not
        started yet, or runs on another instance) it is kept for a run that starts here later
        (`notes.take_answered_by`), and False; the record (written by the AMD route) has it anyway."""
        run = self.active.get(call_sid)
        if run is None or run.session is None:
            self.notes.note_answered_by(call_sid, answered_by)
            return False
        run.on_answered_by(answered_by)
        return True

    # --- agents ---------------------------------------------------------------------------------
    def call_agent(self, start: Start) -> tuple[AgentRuntime, dict[str, str]]:
        """A starting stream's agent and placeholder values, as its webhook chose them
        (`CallNotes.call`)."""
        name, values = self.notes.call(start.call_sid, start.custom_parameters)
        return self.agents.named(name), values

    async def _open_early(self, call_sid: str) -> ProviderSocket:
        """An early connection, opened by the call's agent with the call's texts (its webhook
        stored the agent's name and the values)."""
        name, values = self.notes.call(call_sid)
        agent = self.agents.named(name)
        texts = agent.texts(values)
        greet = agent.settings.realtime_early_greeting
        with self.tracing.kept(call_sid).span(
            "provider.connect", why="early", provider=agent.adapter.vendor, greeting=greet
        ):
            return await open_early(agent.adapter, agent.settings, agent.opening_for(texts))

    def open_early_connection(self, call_sid: str, agent: AgentRuntime) -> bool:
        """An admitted call: open its realtime connection now, while Twilio sets up the stream
        (unless its agent serves calls by the cascade only). True when one was started."""
        realtime = agent.settings.relay_mode != "cascade" and agent.settings.realtime_preconnect
        if self.early_connections is not None and realtime and not self.draining:
            return self.early_connections.start(call_sid)
        return False

    def _check_affinity(self, start: Start) -> None:
        """A stream whose webhook opened an early connection on another instance (EARLY_AT names
        it) is served here all the same, by a connection of its own; that early connection, and
        its greeting, were made in vain (it expires there): counted in
        relay_preconnects_missed_total and logged."""
        holder = start.custom_parameters.get(EARLY_AT, "")[:MAX_INSTANCE_ID_CHARS]
        if not holder or holder == self.instance_id:
            return
        self.metrics.preconnects_missed_total.inc()
        log.info(
            "stream served by instance %s, but its webhook opened the early provider connection on "
            "instance %s: that one is wasted (set STREAM_PUBLIC_URL per instance for call affinity)",
            self.instance_id,
            holder,
        )

    async def stored_record(self, call_sid: str) -> dict[str, Any] | None:
        """The call's record once every write queued so far is stored (the post-call webhook's);
        StoreError when they are not stored within POST_CALL_RECORD_WAIT_S or the store fails."""
        if not await self.outbox.wait_written(self.outbox.last_seq, timeout=POST_CALL_RECORD_WAIT_S):
            raise StoreError("the call's record is not all stored yet")
        return await self.store.get(call_sid)

    def start(self) -> None:
        """Starts the record outbox's writer, the post-call webhook's worker and the periodic sweep
        of expired slots (every third of CALL_SLOT_TTL), so a crashed instance's calls are marked
        lost even when no new call comes."""
        self.outbox.start()
        self.post_call.start()
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
        """At startup: every agent's cascade client, built now rather than at a call's fallback."""
        for agent in self.agents:
            agent.prepare_cascade()

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
                await run.stream.close()
        return len(cut)

    async def wait_idle(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline API
        """Returns once no call is active (their slots released); TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            while self.active:
                self._idle.clear()
                await self._idle.wait()

    async def run_call(self, start: Start, stream: TwilioSink) -> str:
        self._check_affinity(start)
        run = CallRun(self, start, stream)
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
            await self.agents.close_retired(run.agent for run in self.active.values())

    async def aclose(self) -> None:
        await self.post_call.aclose()  # first: its deliveries read records through the outbox
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.early_connections is not None:
            await self.early_connections.aclose()
        await self.agents.aclose()
        await self.outbox.aclose(OUTBOX_CLOSE_S if self.store_health.up else OUTBOX_CLOSE_DOWN_S)
        await self.limiter.close()
