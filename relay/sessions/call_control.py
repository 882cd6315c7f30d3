"""A call's tools: how one runs (`run_tool`), what it may do to its call (`ToolControl`, the
call's `relay.tools.CallControl`) and when a requested hang-up or transfer may happen (`Goodbye`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.sessions import events as ev
from relay.sessions.call_trace import trace_tool
from relay.sessions.effects import HangUp, SendDigits, Transfer

if TYPE_CHECKING:
    from relay.sessions.call_run import CallRun

__all__ = ["Goodbye", "ToolControl", "run_tool"]


class ToolControl:
    """What one tool call may do to the call (relay.tools.CallControl), as effects for the call."""

    def __init__(self, run: CallRun, response_id: str) -> None:
        self._run = run
        self._response_id = response_id  # the response that called the tool
        self.output_wanted = True  # False once a handoff moved the call to a new connection

    async def hang_up_after_playback(self, reason: str) -> None:
        await self._run.perform(HangUp(reason, self._response_id))

    async def transfer(self, twiml: str) -> None:
        await self._run.perform(Transfer(twiml, self._response_id))

    async def send_digits(self, digits: str) -> None:
        await self._run.perform(SendDigits(digits))

    async def handoff(self, agent: str, reason: str) -> bool:
        self.output_wanted = await self._run.hand_off(agent, reason)
        return self.output_wanted


class Goodbye:
    """When a requested hang-up or transfer may happen: once a response after the tool's own (the
    goodbye, or "connecting you now") has finished and Twilio has played all of it."""

    def __init__(self, after_response: str) -> None:
        self.after_response = after_response
        self.said = False
        self.changed = asyncio.Event()

    def on_response_done(self, response_id: str, status: str) -> None:
        if response_id != self.after_response and status != "cancelled":  # an interrupted one is not it
            self.said = True
        self.changed.set()

    async def played(self, playing: Callable[[], bool]) -> None:
        while not (self.said and not playing()):
            self.changed.clear()
            await self.changed.wait()


async def run_tool(run: CallRun, call: ev.ToolCall) -> None:
    """Runs a tool of the call `run` for either path: its context, the hold tone when it is slow,
    its audit on the record and its span; the output goes back to the session that asked."""
    from relay.tools import ToolCallRequest, ToolContext

    session, registry = run.session, run.agent.registry
    if session is None:
        return
    if registry is None:  # no tools were offered: the model made one up
        await session.tool_finished(call.call_id, '{"error": "no tools are available"}')
        return
    control = ToolControl(run, call.response_id)
    ctx = ToolContext(
        call_sid=run.start.call_sid,
        stream_sid=run.start.stream_sid,
        settings=run.settings,
        control=control,
        twilio=run.manager.twilio_calls,
    )
    started = time.monotonic()
    dispatch = asyncio.ensure_future(
        registry.dispatch(
            ToolCallRequest(call.call_id, call.name, call.arguments),
            ctx,
            run.agent.hidden_tools(run.texts),
        )
    )
    try:
        if run.settings.slow_tool_feedback == "tone":
            done, _ = await asyncio.wait({dispatch}, timeout=run.settings.slow_tool_after)
            if not done:
                await session.hold()
        result = await dispatch
    finally:
        dispatch.cancel()
    audit = result.audit()
    run.recorder.put("add_event", "tools", audit)
    run.manager.metrics.observe_tool(audit)
    trace_tool(run.trace, audit, started)
    # not to a session that has gone (a fallback), nor after a handoff to a new connection
    if session is run.session and control.output_wanted:
        await session.tool_finished(call.call_id, str(result.output))
