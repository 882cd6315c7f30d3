"""Early connections: provider connections opened while Twilio is still setting up the call,
keyed by call SID.

`POST /incoming-call` starts the realtime connection (TCP, TLS, the WebSocket upgrade, and an
Entra token on Azure) the moment the call is admitted, so it runs in parallel with Twilio fetching
the TwiML and opening the Media Stream, typically a few hundred milliseconds. With
REALTIME_EARLY_GREETING the connect step also sends the session's opening events, its
configuration and the greeting's request (`relay.sessions.realtime_setup.open_early`), so when
`start` arrives the session takes a socket whose greeting is ready or on its way; without it, the
session configures and greets at `start`.

Safe: only a signed, admitted webhook starts one, and only the stream whose token verifies for
that call SID can take it. One per call SID, however often its webhook is replayed: a call SID
that had one is remembered for `remember` seconds (a stream token's lifetime), whether its
connection is waiting, was taken or expired. Bounded: at most MAX_CONCURRENT_CALLS wait at a time,
each for `EARLY_TTL_S` or STREAM_TOKEN_TTL if shorter (no valid stream can start after its
token expired); one not taken by then is closed and counted as expired: behind a load balancer
without call affinity (STREAM_PUBLIC_URL) the stream may land on another instance, which then
connects by itself (and counts the miss: `CallManager`, `relay_preconnects_missed_total`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from relay.errors import ProviderConnectError
from relay.expiring import ExpiringKeys
from relay.transport.provider import ProviderSocket

log = logging.getLogger("relay.early")

EARLY_TTL_S = 15.0  # Twilio opens the stream well within this after the TwiML answer
MAX_REMEMBERED = 100_000  # call SIDs remembered at most (the oldest is forgotten first)

Connect = Callable[[str], Coroutine[Any, Any, ProviderSocket]]  # the call SID's connection
Outcome = Callable[[str], None]


class EarlyConnections:
    """Early connections waiting for their call's stream."""

    def __init__(
        self, connect: Connect, *, limit: int, ttl: float = EARLY_TTL_S, remember: float | None = None
    ) -> None:
        self._connect = connect
        self.limit = limit
        self.ttl = ttl
        self.remember = ttl if remember is None else max(ttl, remember)
        self._waiting: dict[str, tuple[asyncio.Task[ProviderSocket], asyncio.TimerHandle]] = {}
        self._started: ExpiringKeys[str] = ExpiringKeys(MAX_REMEMBERED)  # call SIDs (monotonic clock)
        self._closing: set[asyncio.Task[None]] = set()
        self.on_outcome: Outcome = lambda outcome: None  # used, expired, failed, full, repeated

    def __len__(self) -> int:
        return len(self._waiting)

    def start(self, call_sid: str) -> bool:
        """Starts connecting for `call_sid`; False when the call already had one within `remember`
        seconds (a replayed webhook: counted as repeated) or the bound is reached."""
        if not call_sid:
            return False
        now = time.monotonic()
        if self._started.contains(call_sid, now) or call_sid in self._waiting:
            log.info("early provider connection for %s already opened once: not opening another", call_sid)
            self.on_outcome("repeated")
            return False
        if len(self._waiting) >= self.limit:
            self.on_outcome("full")
            return False
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._connect(call_sid), name=f"early-{call_sid}")
        task.add_done_callback(self._log_failure)
        timer = loop.call_later(self.ttl, self._expire, call_sid)
        self._waiting[call_sid] = (task, timer)
        self._started.add(call_sid, now + self.remember, now)
        return True

    def take(self, call_sid: str) -> asyncio.Task[ProviderSocket] | None:
        """The connection started for `call_sid` (done or still connecting), now the caller's to close."""
        entry = self._waiting.pop(call_sid, None)
        if entry is None:
            return None
        task, timer = entry
        timer.cancel()
        self.on_outcome("used")
        return task

    def _log_failure(self, task: asyncio.Task[ProviderSocket]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.on_outcome("failed")
            if not isinstance(exc, ProviderConnectError):
                log.warning("early provider connection failed: %r", exc)

    def _expire(self, call_sid: str) -> None:
        entry = self._waiting.pop(call_sid, None)
        if entry is None:
            return
        log.info(
            "early provider connection for %s unused after %.0f s: closed (no stream arrived here)",
            call_sid,
            self.ttl,
        )
        self.on_outcome("expired")
        self._discard(entry[0])

    def _discard(self, task: asyncio.Task[ProviderSocket]) -> None:
        closer = asyncio.get_running_loop().create_task(discard(task))
        self._closing.add(closer)
        closer.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Closes every waiting connection (shutdown)."""
        entries = list(self._waiting.values())
        self._waiting.clear()
        for task, timer in entries:
            timer.cancel()
            self._discard(task)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def discard(task: asyncio.Task[ProviderSocket]) -> None:
    """Cancels a connect still in progress, or closes the connection it made."""
    if not task.done():
        task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is None:
        await task.result().close()


__all__ = ["EARLY_TTL_S", "EarlyConnections", "discard"]
