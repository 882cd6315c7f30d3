"""The post-call webhook's delivery worker: a finished call's record, POSTed off the audio path.

`CallRun.run` tells it `call_ended(call_sid)` once the call's record writes are queued; that returns
at once. The delivery then runs as a task of its own (at most `max_pending` of them; past that a
delivery is dropped and counted): it waits for `ready` (the seam for a later step: the recording),
reads the record once every write queued so far is stored, builds and signs the payload
(relay/post_call/payload.py) and POSTs it. Timeouts, connection errors, 408, 429 and 5xx are
retried after each of `delays` (6 tries over about a minute by default); any other answer is final.
Every outcome is logged with the call SID and counted in `relay_post_call_deliveries_total`.

With REDIS_URL, each pending delivery is kept in Redis (relay/post_call/pending.py) until it is
done, so one the relay could not make before it stopped is resumed by the next instance.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from relay.config import Settings
from relay.errors import StoreError
from relay.logs import bind_call
from relay.metrics import Metrics
from relay.post_call.payload import build_payload, encode, signed_headers
from relay.post_call.pending import Pending, RedisPending

__all__ = ["DeliveryPolicy", "PostCallWebhook", "RecordLoader"]

log = logging.getLogger("relay.post_call")

RecordLoader = Callable[[str], Awaitable[dict[str, Any] | None]]
"""Reads a call's stored record once its writes are in; StoreError while the store cannot say."""


@dataclass(frozen=True)
class DeliveryPolicy:
    """How deliveries are made: waits between tries, per-try timeout, bounds, Redis lease."""

    delays: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0)  # 6 tries over about a minute
    timeout: float = 10.0  # seconds a try may take (connect to the end of the answer)
    max_pending: int = 1000  # deliveries in progress in this process; past that, dropped
    concurrency: int = 8  # requests in flight at once
    lease_s: float = 30.0  # with Redis: how long a delivery stays with an instance that went quiet
    close_grace_s: float = 2.0  # at shutdown: how long a try in flight may finish


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class _Stopped(Exception):
    """The worker is closing: the delivery stops where it is (kept in Redis when there is one)."""


class PostCallWebhook:
    """Delivers each finished call's record to POST_CALL_WEBHOOK_URL, signed; off when it is empty."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics,
        load_record: RecordLoader,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        self.url = settings.post_call_webhook_url
        secret = settings.post_call_webhook_secret
        self._secret = secret.get_secret_value() if secret is not None else ""
        self.enabled = bool(self.url and self._secret)
        self.metrics = metrics
        self.load_record = load_record
        self.policy = policy or DeliveryPolicy()
        self.ready: Callable[[str], Awaitable[None]] | None = None
        """Awaited with the call SID before its record is read: where a later step waits for
        something that comes after the call (its recording's callback, at most RECORDING_WAIT_S)."""
        self._redis_url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
        self._pending: RedisPending | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._handed_back: list[str] = []
        self._closing = asyncio.Event()
        self._sends = asyncio.Semaphore(self.policy.concurrency)
        self._keeper: asyncio.Task[None] | None = None
        self._redis_warned = False
        metrics.post_call_pending.set_function(lambda: len(self._tasks))

    @property
    def pending(self) -> int:
        """Deliveries in progress in this process."""
        return len(self._tasks)

    def start(self) -> None:
        """Opens the HTTP client (without POST_CALL_WEBHOOK_URL: at the first delivery to an
        agent's own URL); with Redis, starts resuming deliveries other processes left."""
        if self.enabled and self._client is None:
            self._open()

    def _open(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.policy.timeout, follow_redirects=False)
        where = urlsplit(self.url)
        log.info(
            "post-call webhook on: each finished call is POSTed to %s (%s)",
            f"{where.scheme}://{where.hostname}" if self.url else "its agent's post_call_webhook_url",
            "pending deliveries kept in Redis"
            if self._redis_url is not None
            else "no REDIS_URL: deliveries still pending at shutdown are dropped",
        )
        if self._redis_url is not None:
            self._pending = RedisPending(self._redis_url)
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_leases(), name="post-call-leases", context=contextvars.Context()
            )

    def call_ended(self, call_sid: str, url: str | None = None) -> None:
        """A call ended and its record writes are queued: deliver it (to `url`, its agent's, when
        given, else POST_CALL_WEBHOOK_URL). Returns at once."""
        url = url if url and url != self.url else None
        if not (self.url or url) or not self._secret or self._closing.is_set() or call_sid in self._tasks:
            return
        if self._client is None:
            self._open()
        if len(self._tasks) >= self.policy.max_pending:
            log.error(
                "post-call webhook for %s dropped: %d deliveries are already pending",
                call_sid,
                len(self._tasks),
            )
            self._count("dropped")
            return
        self._spawn(Pending(call_sid, url=url), fresh=True)

    async def aclose(self) -> None:
        """Stops: tries in flight get `close_grace_s`; what is left stays in Redis for the next
        instance (handed back at once), or without Redis is dropped, logged and counted."""
        self._closing.set()
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.policy.close_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._pending is not None:
            if self._handed_back:
                try:
                    await self._pending.renew(self._handed_back, 0)
                except StoreError as exc:
                    log.warning("could not hand back post-call deliveries (their leases lapse): %s", exc)
            await self._pending.close()
        if self._client is not None:
            await self._client.aclose()

    # --- one delivery ------------------------------------------------------------------------------
    def _spawn(self, item: Pending, *, fresh: bool) -> None:
        sid = item.call_sid
        task = asyncio.get_running_loop().create_task(
            self._run(item, fresh=fresh), name=f"post-call-{sid}", context=contextvars.Context()
        )
        self._tasks[sid] = task
        task.add_done_callback(lambda _: self._tasks.pop(sid, None))

    async def _run(self, item: Pending, *, fresh: bool) -> None:
        with bind_call(item.call_sid):
            try:
                outcome = await self._deliver(item, fresh=fresh)
            except _Stopped:
                self._left_at_stop(item)
                return
            except asyncio.CancelledError:
                self._left_at_stop(item)
                raise
            self._count(outcome)
            if self._pending is not None:
                try:
                    await self._pending.remove(item.call_sid)
                except StoreError as exc:
                    log.warning(
                        "post-call webhook for %s: could not remove it from Redis (%s); "
                        "it may be delivered again",
                        item.call_sid,
                        exc,
                    )

    async def _deliver(self, item: Pending, *, fresh: bool) -> str:
        if fresh:
            await self._save(item)
        if item.body is None:
            if self.ready is not None:
                await self.ready(item.call_sid)
            record = await self._record(item.call_sid)
            if record is None:
                log.error("post-call webhook for %s not sent: the call has no record", item.call_sid)
                return "failed"
            item.body = encode(build_payload(record))
            await self._save(item)
        return await self._post(item)

    async def _record(self, call_sid: str) -> dict[str, Any] | None:
        """The stored record, read again after each of `delays` while the store cannot give it."""
        for wait in (*self.policy.delays, None):
            try:
                return await self.load_record(call_sid)
            except StoreError as exc:
                if wait is None:
                    log.error(
                        "post-call webhook for %s not sent: its record could not be read: %s", call_sid, exc
                    )
                    return None
                log.warning("post-call webhook for %s waits for its record (%s)", call_sid, exc)
                await self._pause(wait)
        return None

    async def _post(self, item: Pending) -> str:
        assert self._client is not None and item.body is not None
        sid, delays = item.call_sid, self.policy.delays
        while True:
            item.tries += 1
            status: int | None = None
            try:
                async with self._sends, asyncio.timeout(self.policy.timeout):  # the whole try, too
                    headers = signed_headers(self._secret, item.body)
                    target = item.url or self.url
                    response = await self._client.post(target, content=item.body, headers=headers)
                status = response.status_code
                why = f"HTTP {status}"
            except (httpx.TimeoutException, TimeoutError):
                why = f"no answer within {self.policy.timeout:g} s"
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if status is not None and 200 <= status < 300:
                log.info("post-call webhook for %s delivered (%s, try %d)", sid, why, item.tries)
                return "delivered"
            if status is not None and not _retryable(status):
                log.error("post-call webhook for %s refused by the receiver (%s): not retried", sid, why)
                return "rejected"
            if item.tries > len(delays):
                log.error("post-call webhook for %s given up after %d tries (last: %s)", sid, item.tries, why)
                return "failed"
            wait = delays[item.tries - 1]
            log.warning(
                "post-call webhook for %s: try %d failed (%s); next try in %g s", sid, item.tries, why, wait
            )
            await self._save(item)
            await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        """Waits `seconds`, or raises _Stopped as soon as the worker closes."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return
        raise _Stopped

    async def _save(self, item: Pending) -> None:
        if self._pending is None:
            return
        try:
            await self._pending.save(item, lease_until=time.time() + self.policy.lease_s)
        except StoreError as exc:
            log.warning("post-call webhook for %s is not kept in Redis: %s", item.call_sid, exc)

    def _left_at_stop(self, item: Pending) -> None:
        if self._pending is not None:
            log.info("post-call webhook for %s left in Redis for the next instance", item.call_sid)
            self._handed_back.append(item.call_sid)
        else:
            log.warning("post-call webhook for %s not sent: the relay stopped (no REDIS_URL)", item.call_sid)
            self._count("dropped")

    def _count(self, outcome: str) -> None:
        self.metrics.post_call_deliveries_total.labels(outcome=outcome).inc()

    # --- Redis: leases -----------------------------------------------------------------------------
    async def _keep_leases(self) -> None:
        """Renews the leases of this process's deliveries and claims the ones nobody holds, at once
        and then every third of the lease."""
        assert self._pending is not None
        lease = self.policy.lease_s
        while True:
            now = time.time()
            try:
                await self._pending.renew(list(self._tasks), now + lease)
                room = self.policy.max_pending - len(self._tasks)
                claimed = await self._pending.claim(now, now + lease, room) if room > 0 else []
            except StoreError as exc:
                if not self._redis_warned:
                    log.warning("pending post-call deliveries cannot be read from Redis: %s", exc)
                    self._redis_warned = True
            else:
                self._redis_warned = False
                for item in claimed:
                    if item.call_sid not in self._tasks:
                        log.info(
                            "post-call webhook for %s resumed (%d tries made)", item.call_sid, item.tries
                        )
                        self._spawn(item, fresh=False)
            await asyncio.sleep(lease / 3)
