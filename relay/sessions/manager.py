"""Which provider and which mode serve a call, admission, and everything around one call's session:
its record, its tools, its limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from relay.config import Settings
from relay.errors import ProviderError
from relay.sessions.bridge import Effect, Notice, RunTool, SaveTurn
from relay.sessions.providers import ProviderAdapter
from relay.sessions.realtime import RealtimeSession
from relay.sessions.store import CallStore
from relay.twilio_messages import Start

log = logging.getLogger("relay.manager")

HANGUP_GRACE_S = 15.0  # longest wait for the goodbye to play before hanging up anyway


class CallRecorder:
    """Writes a call's record off the audio path: one writer task draining a queue."""

    def __init__(self, store: CallStore, call_sid: str) -> None:
        self.store = store
        self.call_sid = call_sid
        self._queue: asyncio.Queue[tuple[str, tuple[Any, ...], dict[str, Any]] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"recorder-{call_sid}")
        self.lost = 0

    def put(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._queue.put_nowait((method, args, kwargs))

    async def _run(self) -> None:
        while (job := await self._queue.get()) is not None:
            method, args, kwargs = job
            try:
                await getattr(self.store, method)(self.call_sid, *args, **kwargs)
            except Exception as exc:  # a store failure must never touch the call
                self.lost += 1
                log.warning("call record write lost (%s): %s", method, exc)

    async def aclose(self) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=5.0)


class CallControlImpl:
    """What tools may do to the call (relay.tools.CallControl): hang up after the goodbye, transfer."""

    def __init__(self, manager: CallManager, call_sid: str) -> None:
        self.manager = manager
        self.call_sid = call_sid
        self.session: RealtimeSession | None = None
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
        playing = self.session is not None and self.session.core.playback.outstanding
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
    ) -> None:
        self.settings = settings
        self.store = store
        self.adapter_factory = adapter_factory
        self.registry = registry
        self.twilio_calls = twilio_calls
        self.active: dict[str, RealtimeSession] = {}
        self.draining = False
        self._adapter: ProviderAdapter | None = None

    @property
    def adapter(self) -> ProviderAdapter:
        if self._adapter is None:
            self._adapter = self.adapter_factory()
        return self._adapter

    def admission(self) -> str | None:
        """None when a new call can be served, else why not: draining, busy, unconfigured."""
        if self.draining:
            return "draining"
        if not self.settings.provider_configured:
            return "unconfigured"
        if len(self.active) >= self.settings.max_concurrent_calls:
            return "busy"
        return None

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

    async def run_call(self, start: Start, channel: Any) -> str:
        call_sid = start.call_sid
        recorder = CallRecorder(self.store, call_sid)
        adapter = self.adapter
        recorder.put(
            "upsert",
            stream_sid=start.stream_sid,
            provider=adapter.vendor,
            mode="realtime",
            started_at=time.time(),
            status="in-progress",
        )
        control = CallControlImpl(self, call_sid)
        tool_tasks: set[asyncio.Task[None]] = set()
        session: RealtimeSession | None = None

        def on_effect(effect: Effect) -> None:
            if isinstance(effect, SaveTurn):
                recorder.put("add_turn", effect.role, effect.text, **effect.meta)
            elif isinstance(effect, RunTool):
                task = asyncio.create_task(self._run_tool(effect, session, control, recorder))
                tool_tasks.add(task)
                task.add_done_callback(tool_tasks.discard)
            elif isinstance(effect, Notice):
                control.on_notice(effect)

        tools = self.registry.realtime_tools() if self.registry is not None else []
        session = RealtimeSession(
            settings=self.settings,
            adapter=adapter,
            start=start,
            twilio=channel,
            tools=tools,
            on_effect=on_effect,
        )
        control.session = session
        self.active[call_sid] = session
        outcome = "error"
        try:
            async with asyncio.timeout(self.settings.max_call_duration):
                outcome = await session.run()
        except TimeoutError:
            outcome = "max_duration"
            log.info("call reached MAX_CALL_DURATION (%.0f s)", self.settings.max_call_duration)
        except ProviderError as exc:
            outcome = "provider_error"
            log.error("realtime provider failed: %s", exc, extra={"cause": type(exc).__name__})
            recorder.put("add_event", "errors", {"cause": str(exc), "status": getattr(exc, "status", None)})
        finally:
            for task in tool_tasks:
                task.cancel()
            self.active.pop(call_sid, None)
            recorder.put(
                "upsert", ended_at=time.time(), status="ended", outcome=outcome, stats=vars(session.stats)
            )
            await recorder.aclose()
        log.info("call ended: %s", outcome)
        return outcome

    async def _run_tool(
        self,
        effect: RunTool,
        session: RealtimeSession | None,
        control: CallControlImpl,
        recorder: CallRecorder,
    ) -> None:
        from relay.tools import ToolCallRequest, ToolContext

        assert session is not None
        call = effect.call
        control.tool_response_id = call.response_id
        ctx = ToolContext(
            call_sid=session.start.call_sid,
            stream_sid=session.start.stream_sid,
            settings=self.settings,
            control=control,
            twilio=self.twilio_calls,
        )
        timer = None
        if self.settings.slow_tool_feedback == "tone":
            timer = asyncio.get_running_loop().call_later(self.settings.slow_tool_after, session.hold)
        try:
            request = ToolCallRequest(call.call_id, call.name, call.arguments)
            result = await self.registry.dispatch(request, ctx)
        finally:
            if timer is not None:
                timer.cancel()
        recorder.put("add_event", "tools", result.audit())
        session.tool_finished(call.call_id, result.output)

    async def aclose(self) -> None:
        if self._adapter is not None:
            await self._adapter.aclose()
