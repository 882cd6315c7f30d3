"""What a tool may do to its call (`ToolControl`, the call's `relay.tools.CallControl`) and when a
requested hang-up or transfer may happen (`Goodbye`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.sessions.effects import HangUp, SendDigits, Transfer

if TYPE_CHECKING:
    from relay.sessions.call_run import CallRun

__all__ = ["Goodbye", "ToolControl"]


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
