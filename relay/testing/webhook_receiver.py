"""A fake post-call webhook receiver: what a user's endpoint does, with failure knobs.

It checks each delivery as a user's receiver should (the HMAC-SHA256 signature over
`timestamp + "." + body`, and the timestamp's freshness), records every request and answers 200
(401 when the check fails). Knobs script the next answers: `fail(503, times=2)`, `hang(times=1)`
(the request waits until `release()` or the end), `fail(400)`. Served on 127.0.0.1 by `serve()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.testing.server import serve_app

__all__ = ["Delivery", "WebhookReceiver"]

HANG = -1  # a scripted "answer": hold the request until released


@dataclass
class Delivery:
    """One request the receiver got, and how it answered."""

    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: bytes
    verified: bool  # signature valid and timestamp fresh
    status: int = 0  # what the receiver answered (0: it hung until released)

    def json(self) -> Any:
        return orjson.loads(self.body)


class WebhookReceiver:
    """The endpoint at `url` (once `serve()` runs); `requests` holds every request in order."""

    def __init__(self, secret: str, *, path: str = "/hooks/calls", max_age_s: float = 300.0) -> None:
        self.secret = secret
        self.path = path
        self.max_age_s = max_age_s
        self.url = ""
        self.requests: list[Delivery] = []
        self._script: collections.deque[int] = collections.deque()
        self._released = asyncio.Event()
        self._changed = asyncio.Event()
        self.app = Starlette(routes=[Route(path, self._endpoint, methods=["POST"])])

    # --- knobs ---------------------------------------------------------------------------------
    def fail(self, status: int, times: int = 1) -> None:
        """The next `times` requests are answered `status` (e.g. 503, 400) whatever they hold."""
        self._script.extend([status] * times)

    def hang(self, times: int = 1) -> None:
        """The next `times` requests get no answer until `release()` (or the receiver stops)."""
        self._released.clear()
        self._script.extend([HANG] * times)

    def recover(self) -> None:
        """Scripted answers not given yet are forgotten: from now on, normal answers."""
        self._script.clear()

    def release(self) -> None:
        """Hung requests are answered 503 now (a receiver that gave up)."""
        self._released.set()

    # --- what it got ---------------------------------------------------------------------------
    @property
    def accepted(self) -> list[Delivery]:
        """Requests answered 2xx."""
        return [d for d in self.requests if 200 <= d.status < 300]

    async def wait_requests(self, n: int, timeout: float = 10.0) -> list[Delivery]:  # noqa: ASYNC109
        """Returns once `n` requests have arrived (answered or hanging)."""
        return await self._wait(lambda: len(self.requests) >= n, timeout)

    async def wait_accepted(self, n: int = 1, timeout: float = 10.0) -> list[Delivery]:  # noqa: ASYNC109
        """Returns once `n` requests were answered 2xx."""
        return await self._wait(lambda: len(self.accepted) >= n, timeout)

    async def _wait(self, done: Any, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()
        return list(self.requests)

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        """The check a user's receiver makes: a fresh timestamp, and the signature over it and the body."""
        timestamp = headers.get("x-relay-timestamp", "")
        signature = headers.get("x-relay-signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.max_age_s:
            return False
        mac = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(f"sha256={mac.hexdigest()}", signature)

    # --- serving -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serve(self, sock: Any = None) -> AsyncIterator[str]:
        """Serves on 127.0.0.1 (on `sock` when given: a bound socket nobody listens on until now);
        yields the endpoint's URL."""
        async with serve_app(self.app, sock=sock) as base:
            self.url = base + self.path
            try:
                yield self.url
            finally:
                self.release()

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        delivery = Delivery(time.monotonic(), headers, body, self.verify(headers, body))
        self.requests.append(delivery)
        self._changed.set()
        scripted = self._script.popleft() if self._script else None
        if scripted == HANG:
            await self._released.wait()
            scripted = 503
        delivery.status = scripted or (200 if delivery.verified else 401)
        self._changed.set()
        return Response(status_code=delivery.status)
