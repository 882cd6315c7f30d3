"""Call record writes off every call's path: the process's outbox, and the store's health.

`Outbox` is one bounded FIFO of `RecordWrite`s per process, drained by one writer task. A write the
store cannot take now (Redis down or hung) is retried with backoff, and the writes behind it wait:
each call's writes reach the store in the order they were queued. While the store is away the
queue grows up to `max_writes`; past that the oldest waiting write is dropped, counted in
`relay_store_dropped_total` and logged once per `DROP_LOG_INTERVAL_S`, not once per write.

`StoreHealth` is what the relay knows about the store's reachability, from every operation that
touches it (record writes, limiter calls, readiness pings): one WARNING when it becomes
unreachable, one INFO when it is back, and `relay_store_up`.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import logging
import time
import uuid
from typing import Any

from relay.errors import StoreError
from relay.metrics import Metrics
from relay.sessions.records import RecordWrite, WriteOp
from relay.sessions.store import CallStore

log = logging.getLogger("relay.store")

OUTBOX_MAX_WRITES = 20_000
"""Writes kept while the store is away: about 8 minutes of 100 calls (a turn every ~5 s per side)
at about 1 KB each."""

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 0.5
"""Retry delays of a write the store refused: doubling from the first to the max. The max bounds
how long records lag behind once the store is back."""

DROP_LOG_INTERVAL_S = 10.0


class StoreHealth:
    """Whether the call store answers, as last seen; logs and counts the transitions."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.up = True
        self._down_since = 0.0
        metrics.store_up.set(1)

    def failed(self, exc: BaseException, action: str) -> None:
        """An operation on the store failed (`exc`, a StoreError or our own deadline's TimeoutError)."""
        self.metrics.store_errors_total.inc()
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            self.metrics.store_up.set(0)
            reason = str(exc).rstrip(". ") or f"it did not answer in time while {action}"
            log.warning(
                "call store unreachable: %s. Calls go on: admission falls back to this instance's "
                "MAX_CONCURRENT_CALLS and record writes are queued until it is back.",
                reason,
            )

    def succeeded(self) -> None:
        """An operation on the store succeeded."""
        if not self.up:
            self.up = True
            self.metrics.store_up.set(1)
            log.info("call store reachable again after %.1f s", time.monotonic() - self._down_since)


class Outbox:
    """The process's record writes: `put` never waits; one writer task applies them in order."""

    def __init__(
        self,
        store: CallStore,
        health: StoreHealth,
        *,
        max_writes: int = OUTBOX_MAX_WRITES,
    ) -> None:
        if max_writes < 1:
            raise ValueError(f"max_writes must be at least 1, not {max_writes}")
        self.store = store
        self.health = health
        self.metrics = health.metrics
        self.max_writes = max_writes
        self.writer = uuid.uuid4().hex[:16]  # this process's writes, for the store's at-most-once check
        self._seq = itertools.count(1)
        self.last_seq = 0  # the sequence number of the latest write queued
        self._queue: collections.deque[RecordWrite] = collections.deque()
        self._inflight: RecordWrite | None = None
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unlogged_drops = 0
        self._last_drop_reason = ""
        self._drops_logged_at = -DROP_LOG_INTERVAL_S
        self._behind_since: float | None = None
        self.metrics.store_pending_writes.set_function(lambda: self.pending)

    @property
    def pending(self) -> int:
        """Writes queued or being written."""
        return len(self._queue) + (self._inflight is not None)

    def put(self, call_sid: str, op: WriteOp, /, *args: Any, **kwargs: Any) -> int:
        """Queues `store.<op>(call_sid, *args, **kwargs)`; returns its sequence number."""
        write = RecordWrite(call_sid, op, args, kwargs, writer=self.writer, seq=next(self._seq))
        if self.pending >= self.max_writes and self._queue:
            self._drop(self._queue.popleft(), f"the outbox is full ({self.max_writes} writes), oldest first")
        self._queue.append(write)
        self.last_seq = write.seq
        self.start()
        self._wakeup.set()
        return write.seq

    def start(self) -> None:
        """Starts the writer task (the app's lifespan does; the first `put` would otherwise)."""
        if self._task is None or self._task.done():
            # A context of its own: the writer's log lines belong to no call.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="record-outbox", context=contextvars.Context()
            )

    def written(self, seq: int) -> bool:
        """True once every write up to `seq` was applied or dropped."""
        head = self._inflight or (self._queue[0] if self._queue else None)
        return head is None or head.seq > seq

    async def wait_written(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a deadline API
        """Waits until `written(seq)`, at most `timeout` s, and not at all while the store is down."""
        try:
            async with asyncio.timeout(timeout):
                while not self.written(seq) and self.health.up:
                    await self._progress.wait()
        except TimeoutError:
            pass
        return self.written(seq)

    async def aclose(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a deadline API
        """Writes what is queued for at most `timeout` s (even while the store is down), then stops;
        what is left is dropped and counted."""
        if self._task is not None:
            last = next(self._seq) - 1
            try:
                async with asyncio.timeout(timeout):
                    while not self.written(last):
                        await self._progress.wait()
            except TimeoutError:
                pass
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        left = [*([self._inflight] if self._inflight is not None else []), *self._queue]
        self._inflight = None
        self._queue.clear()
        for write in left:
            self._drop(write, "the relay stopped before the store took it", log_now=False)
        self._log_drops(force=True)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._inflight = self._queue.popleft()
            await self._write(self._inflight)
            self._inflight = None
            self._notify()
            if not self._queue and self._behind_since is not None:
                behind = time.monotonic() - self._behind_since
                log.info("call record writes caught up (%.1f s after the first that failed)", behind)
                self._behind_since = None
                self._log_drops(force=True)

    async def _write(self, write: RecordWrite) -> None:
        """Applies `write`, retrying while the store is unreachable; drops it if the store refuses it."""
        delay = BACKOFF_FIRST_S
        while True:
            try:
                await self.store.apply(write)
            except StoreError as exc:
                if not exc.retryable:  # the store answered, and would answer the same again
                    self.metrics.store_errors_total.inc()
                    self._drop(write, f"the store refused the last: {exc}")
                    return
                self.health.failed(exc, "writing call records")
            except Exception as exc:  # a value the store cannot encode must not block every later write
                self._drop(write, f"the last failed: {type(exc).__name__}: {exc}")
                return
            else:
                self.health.succeeded()
                return
            if self._behind_since is None:
                self._behind_since = time.monotonic()
            self._notify()  # waiters stop waiting while the store is down
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _drop(self, write: RecordWrite, why: str, *, log_now: bool = True) -> None:
        self.metrics.store_dropped_total.inc()
        self._unlogged_drops += 1
        self._last_drop_reason = why
        if log_now:
            self._log_drops()

    def _log_drops(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._unlogged_drops and (force or now - self._drops_logged_at >= DROP_LOG_INTERVAL_S):
            log.warning(
                "dropped %d call record writes; %s (relay_store_dropped_total counts them all)",
                self._unlogged_drops,
                self._last_drop_reason,
            )
            self._unlogged_drops = 0
            self._drops_logged_at = now
