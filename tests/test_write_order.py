"""Each transport's `send` keeps call order across tasks while its socket is backed up.

The Twilio socket and the provider socket each write a message at once from the calling task when
nothing is waiting, and otherwise queue it behind the write in progress, whose task writes it
next. Checked here over real sockets whose buffers are made tiny so that the transports pause,
with the production classes: `TwilioSocket` behind `MediaStreamEntry` under uvicorn, and
`ProviderSocket` over a websockets client connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import orjson
import websockets
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

from relay.testing.server import bind_free_port, serve_app
from relay.transport.provider import ProviderSocket
from relay.transport.twilio import MediaStreamEntry, TwilioSocket

SMALL_BUFFER = 4096  # bytes of kernel buffer: a few messages fill it
MESSAGES = 240
PAD = "x" * 8000  # each message is larger than the buffers
SLOW_READER_TURNS = 4
QUEUED_EVERY_TURNS = 8  # loop turns a slow peer lets pass after each message it reads


def numbered(i: int) -> str:
    return orjson.dumps({"n": i, "pad": PAD}).decode()


class LoopTurns:
    """Counts event-loop turns, to tell a call that suspended (its socket was paused) from one that
    returned at once."""

    def __init__(self) -> None:
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LoopTurns]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def tiny_buffer_connect(url: str, **kwargs: object) -> ClientConnection:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await websockets.connect(url, sock=sock, max_size=None, **kwargs)


async def test_twilio_socket_sends_from_two_tasks_arrive_in_call_order() -> None:
    """One task sends with loop turns between messages (as the timers and tools do), another sends
    back to back (as the readers do); with a backed-up socket some sends wait, and the peer still
    gets every message in the order `send` was called."""
    called: list[int] = []
    suspended: list[int] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        twilio = TwilioSocket(receive, send)
        await twilio.accept()

        async def sparse() -> None:
            for i in range(MESSAGES // 8):
                called.append(-i)
                await twilio.send(numbered(-i))
                for _ in range(QUEUED_EVERY_TURNS):  # loop turns, as between two timer ticks
                    await asyncio.sleep(0)

        async def dense(loop_turns: LoopTurns) -> None:
            for i in range(1, MESSAGES):
                called.append(i)
                before = loop_turns.turns
                await twilio.send(numbered(i))
                if loop_turns.turns != before:
                    suspended.append(i)
                await asyncio.sleep(0)  # as a reader awaits its socket between messages

        async with LoopTurns().running() as loop_turns:
            await asyncio.gather(sparse(), dense(loop_turns))
        await twilio.close()

    listener = bind_free_port()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)  # accepted sockets inherit it
    app = Starlette(middleware=[Middleware(MediaStreamEntry, paths=["/ws"], handler=handler)])
    async with serve_app(app, sock=listener) as url:
        client = await tiny_buffer_connect(url.replace("http://", "ws://") + "/ws")
        got: list[int] = []
        async with client:
            async for message in client:  # a slow reader: the relay's socket backs up and pauses
                got.append(orjson.loads(message)["n"])
                for _ in range(SLOW_READER_TURNS):
                    await asyncio.sleep(0)
    assert suspended, "the socket never backed up: the test did not exercise the paused path"
    assert got == called


async def test_provider_socket_sends_from_two_tasks_arrive_in_call_order() -> None:
    """Two tasks send on one provider connection; with the provider not reading, the transport
    pauses and sends wait, and the provider still gets the messages in the order they were given.
    Before the buffers fill, sends return at once (written without websockets' `send`)."""
    received: list[int] = []
    reading, finished = asyncio.Event(), asyncio.Event()

    async def provider(connection: ServerConnection) -> None:
        await reading.wait()
        async for message in connection:
            received.append(orjson.loads(message)["n"])
        finished.set()

    listener = bind_free_port()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    async with websockets.serve(provider, sock=listener, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = await tiny_buffer_connect(f"ws://127.0.0.1:{port}/", write_limit=SMALL_BUFFER)
        sock = ProviderSocket(client)
        called: list[int] = []
        suspended = at_once = 0

        async def lane(first: int) -> None:
            nonlocal suspended, at_once
            async with LoopTurns().running() as loop_turns:
                for i in range(first, MESSAGES, 2):
                    called.append(i)
                    before = loop_turns.turns
                    await sock.send(numbered(i))
                    if loop_turns.turns != before:
                        suspended += 1
                    else:
                        at_once += 1
                    if len(called) == 8:
                        reading.set()  # the provider starts reading once the buffers are full

        async with client:
            await asyncio.wait_for(asyncio.gather(lane(0), lane(1)), timeout=30)
        await asyncio.wait_for(finished.wait(), timeout=10)
    assert suspended, "the connection never backed up: the test did not exercise the paused path"
    assert at_once, "no send returned at once: the test did not exercise the direct write"
    assert received == called


async def test_a_closed_provider_socket_keeps_what_it_could_not_send() -> None:
    """A message given to a closed connection is not lost: `unsent()` returns it, oldest first, for
    the session to hand a replacement connection; `receive()` says the connection is gone."""
    received: list[str] = []

    async def provider(connection: ServerConnection) -> None:
        async for message in connection:
            received.append(str(message))

    async with websockets.serve(provider, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sock = ProviderSocket(await websockets.connect(f"ws://127.0.0.1:{port}/"))
        await sock.send("one")
        assert sock.unsent() == []  # open: nothing held back
        await sock.close()
        await sock.send("two")
        await sock.send("three")
        assert await sock.receive() is None and not sock.open
        assert sock.unsent() == ["two", "three"]
    assert received == ["one"]
