"""The realtime provider's socket: a websockets client connection with an ordered `send(text)`.

`ProviderSocket.send` writes a message at once when nothing is waiting and the connection's
transport is open and not paused: it frames the message and hands the bytes to the transport,
which is what websockets' own `send` does on that path, without its async context manager and its
drain coroutine for every message (the audio path sends 50 a second per call). That relies on
three attributes websockets lists among its private ones: `protocol` (the sans-I/O connection's
`send_text`), `paused` and `send_data()`, and on the public `transport`. Otherwise (a paused
transport, a write in progress) it uses websockets' `send`, one task at a time: the messages other
tasks give meanwhile wait in the socket's queue and go out after it, in order.

A message that meets a closed connection is kept (`unsent()`): the session decides what of it a
replacement connection gets.
"""

from __future__ import annotations

from collections import deque

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

CHECKED_WITH = {"websockets": "15.0.1"}  # the private attributes named above were read in this version
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


async def connect(
    url: str, *, headers: dict[str, str], open_timeout: float, user_agent: str
) -> ProviderSocket:
    """Opens the provider's WebSocket. Raises what websockets raises (InvalidStatus, InvalidHandshake,
    InvalidURI, OSError, TimeoutError): the provider adapter explains them."""
    conn = await websockets.connect(
        url,
        additional_headers=headers,
        open_timeout=open_timeout,
        close_timeout=1.0,
        compression=None,  # base64 audio does not compress; deflate would only cost CPU
        max_size=MAX_MESSAGE_BYTES,
        ping_interval=20,
        ping_timeout=20,
        user_agent_header=user_agent,
    )
    return ProviderSocket(conn)


class ProviderSocket:
    """One realtime connection. `receive()` gives each message as bytes (JSON that orjson reads as
    it is), and None once the connection is closed (`close_code`, `close_reason` say how)."""

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self._recv = conn.recv
        self._queue: deque[str] = deque()
        self._busy = False

    @property
    def open(self) -> bool:
        return self._conn.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        return self._conn.close_code

    @property
    def close_reason(self) -> str | None:
        return self._conn.close_reason

    async def receive(self) -> bytes | None:
        try:
            data = await self._recv(decode=False)
        except ConnectionClosed:
            return None
        return data if isinstance(data, bytes) else data.encode()

    async def send(self, text: str) -> None:
        """Sends one text message; later calls, from any task, never overtake it."""
        if self._busy or self._queue:
            self._queue.append(text)
            if not self._busy:
                await self._write_queued()
            return
        conn = self._conn
        if conn.protocol.state is State.OPEN and not conn.paused and not conn.transport.is_closing():
            conn.protocol.send_text(text.encode())
            conn.send_data()
            return
        self._queue.append(text)
        await self._write_queued()

    async def _write_queued(self) -> None:
        self._busy = True
        queue, conn = self._queue, self._conn
        text = ""
        try:
            while queue and conn.state is State.OPEN:
                text = queue.popleft()  # websockets writes it before it waits for the buffer to drain
                await conn.send(text)
        except ConnectionClosed:
            queue.appendleft(text)  # kept for `unsent`: the connection may not have taken it
        finally:
            self._busy = False

    def unsent(self) -> list[str]:
        """Messages given to `send` that a closed connection never took (oldest first)."""
        if self.open:
            return []
        out = list(self._queue)
        self._queue.clear()
        return out

    async def close(self) -> None:
        await self._conn.close()


__all__ = ["CHECKED_WITH", "ProviderSocket", "connect"]
