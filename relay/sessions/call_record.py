"""A call's record writes, queued in the process's outbox: the call never waits for the store."""

from __future__ import annotations

from typing import Any

from relay.sessions.outbox import Outbox
from relay.sessions.store import WriteOp

__all__ = ["RECORD_WAIT_S", "CallRecorder"]

RECORD_WAIT_S = 2.0  # an ended call waits this long at most for its record (not at all if the store is down)


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
