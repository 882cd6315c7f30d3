"""The Twilio Media Stream's socket: the server end of a WebSocket, over uvicorn's own ASGI callables.

`TwilioSocket` offers the session layer an ordered `send(text)` and a `receive()`, plus the
handshake and the close. Everything it does goes through the server's own `receive`/`send`, never
through Starlette's `WebSocket` (whose per-message state checks and exception-handling wrappers
would run 50 times a second each way per call), so the socket keeps its own state: it knows when
the peer left and does not write after that.

`MediaStreamEntry` is how a route gets those callables: an ASGI middleware that serves WebSocket
requests for its paths itself, with the `receive`/`send` it was called with, and passes every
other request on to the app. Listed after the proxy-header middleware and before Starlette's
routing, it sees the server's callables as they are (Starlette's exception layer wraps `send` in a
coroutine of its own below user middleware).

Order without a lock: uvicorn writes a message to the transport inside `send`, after waiting for a
paused transport to drain. A task whose `send` finds the socket free writes at once (no queue hop,
no task switch: the audio path's common case); while a write waits for a paused transport, the
messages of other tasks wait in the socket's own queue and the waiting task writes them after its
own, in the order they were given. So two tasks never wait inside uvicorn's `send` together, and
nothing depends on the order they would be woken in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Collection

from starlette.types import ASGIApp, Receive, Scope, Send

CHECKED_WITH = {"uvicorn": "0.54.0"}  # the `websockets-sansio` implementation's send, read for the above
FLUSH_ON_CLOSE_S = 2.0  # how long `close` lets queued messages go out before closing anyway

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class TwilioSocket:
    """One accepted (or about to be accepted) Media Stream WebSocket. `receive()` gives text
    frames as `str`, binary frames as `bytes`, and None once the peer is gone."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._queue: deque[str] = deque()  # messages waiting for the write in progress
        self._busy = False  # a task is writing (maybe waiting for a paused transport)
        self._free: asyncio.Future[None] | None = None  # `close` waiting for the writes to end
        self.open = True  # False once the peer left, a write failed, or we closed
        self.close_code: int | None = None
        self.messages_out = 0

    async def accept(self) -> None:
        """Completes the handshake: takes the server's `websocket.connect`, answers the upgrade."""
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise RuntimeError(f"expected the ASGI 'websocket.connect' first, got {message['type']!r}")
        await self._send({"type": "websocket.accept"})

    async def receive(self) -> str | bytes | None:
        """The next frame; None once the socket is closed (the peer's close code in `close_code`)."""
        if not self.open:
            return None
        try:
            message = await self._receive()
        except (RuntimeError, OSError):
            self.open = False
            return None
        if message["type"] == "websocket.disconnect":
            self.close_code = message.get("code")
            self.open = False
            return None
        text = message.get("text")
        if text is not None:
            return text
        data = message.get("bytes")
        if data is None:  # not a frame at all
            raise RuntimeError(f"unexpected ASGI message {message['type']!r} on an open WebSocket")
        return data

    async def send(self, text: str) -> None:
        """Sends one text message; later calls, from any task, never overtake it. Returns at once
        when another task's write is in progress (that task writes this one after its own). A
        closed socket drops it."""
        if self._busy or self._queue:  # after those (a queue left by a writer that was cancelled)
            if self.open:
                self._queue.append(text)
            if not self._busy:
                await self._write_queued()
            return
        if not self.open:
            return
        self._busy = True
        try:
            await self._send({"type": "websocket.send", "text": text})
            self.messages_out += 1
            if self._queue:
                await self._write_queued()
        except (RuntimeError, OSError):  # the peer is gone (uvicorn's ClientDisconnected is an OSError)
            self._gone()
        finally:
            self._release()

    async def _write_queued(self) -> None:
        """Writes what waits in the queue, in order (the lane may already be this task's)."""
        self._busy = True
        queue, send = self._queue, self._send
        try:
            while queue and self.open:
                await send({"type": "websocket.send", "text": queue[0]})
                queue.popleft()
                self.messages_out += 1
        except (RuntimeError, OSError):
            self._gone()
        finally:
            self._release()

    def _gone(self) -> None:
        self.open = False
        self._queue.clear()

    def _release(self) -> None:
        self._busy = False
        if self._free is not None:
            self._free.set_result(None)
            self._free = None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Lets queued messages go out (for at most FLUSH_ON_CLOSE_S), then closes (idempotent)."""
        if not self.open:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_ON_CLOSE_S):
                while self._busy:
                    self._free = asyncio.get_running_loop().create_future()
                    await self._free
                if self._queue:
                    await self._write_queued()
        if not self.open:
            return
        self.open = False
        self._queue.clear()
        with contextlib.suppress(RuntimeError, OSError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class MediaStreamEntry:
    """ASGI middleware: serves WebSocket requests for `paths` with `handler(scope, receive, send)`,
    given the server's own `receive`/`send`; passes every other request on to `app`."""

    def __init__(self, app: ASGIApp, *, paths: Collection[str], handler: Handler) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] in self.paths:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)


__all__ = ["CHECKED_WITH", "MediaStreamEntry", "TwilioSocket"]
