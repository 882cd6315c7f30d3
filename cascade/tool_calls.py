"""The chat model's tool calls on the cascaded path.

The cascade does not run tools itself: like the realtime session, it asks the call to run each one
(a `RunTool` effect, handled by the call) and waits until the call hands the output back
(`CascadeSession.tool_finished`), so tools behave the same on both paths.
"""

from __future__ import annotations

import asyncio

from relay.sessions import events as ev
from relay.sessions.call import EffectSink
from relay.sessions.effects import RunTool


class ToolCalls:
    """One call's tool calls in flight: each asked of the call, its output awaited by call id."""

    def __init__(self, on_effect: EffectSink) -> None:
        self._on_effect = on_effect
        self._waits: dict[str, asyncio.Future[str]] = {}  # call_id -> its output, from the call

    async def run(self, calls: list[ev.ToolCall]) -> list[str]:
        """Asks the call to run `calls` (`RunTool`) and waits for their outputs (`finished`), in
        the order of `calls`."""
        loop = asyncio.get_running_loop()
        waits = {call.call_id: loop.create_future() for call in calls}
        self._waits.update(waits)
        try:
            for call in calls:
                self._on_effect(RunTool(call))
            return [await waits[call.call_id] for call in calls]
        finally:
            for call_id in waits:
                self._waits.pop(call_id, None)

    def finished(self, call_id: str, output: str) -> None:
        """The call ran a tool: its output goes to the reply waiting for it (if one still is)."""
        waiter = self._waits.get(call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(output)
