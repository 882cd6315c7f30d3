"""Both writer lanes keep call order while the socket is backed up.

The Twilio channel and the realtime session each write a message at once from the calling task
when nothing is queued for that socket, else queue it for the socket's writer task; there is no
lock between the two lanes (a lock cost a coroutine per message on the audio path). Order then
rests on two library properties, checked here over real sockets whose buffers are made tiny so
that the transports pause: uvicorn wakes senders waiting for a paused transport in the order they
called, and websockets writes a message to the transport inside `send`, before it waits for the
buffer to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.media_stream import TwilioChannel
from relay.sessions.realtime import write_now
from relay.testing.server import bind_free_port, serve_app

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


async def test_twilio_channel_direct_and_queued_writes_arrive_in_call_order() -> None:
    """One task queues messages for the writer task (`send`, as the shell's `flush` does), another
    writes directly (`write`, as the readers do); with a backed-up socket all of them wait, and
    the peer still gets them in the order they were handed over."""
    called: list[int] = []
    suspended: list[int] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        channel = TwilioChannel(websocket, "MZorder")
        channel.start_writer()

        async def queued() -> None:
            for i in range(MESSAGES // 8):
                called.append(-i)
                channel.send(numbered(-i))
                for _ in range(QUEUED_EVERY_TURNS):  # loop turns, as between two flushes
                    await asyncio.sleep(0)

        async def direct(loop_turns: LoopTurns) -> None:
            for i in range(1, MESSAGES):
                called.append(i)
                before = loop_turns.turns
                await channel.write(numbered(i))
                if loop_turns.turns != before:
                    suspended.append(i)
                await asyncio.sleep(0)  # as a reader awaits its socket between messages

        async with LoopTurns().running() as loop_turns:
            await asyncio.gather(queued(), direct(loop_turns))
        await channel.close()

    listener = bind_free_port()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)  # accepted sockets inherit it
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
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


async def test_provider_sends_from_two_tasks_arrive_in_call_order() -> None:
    """The realtime session's direct lane (a reader task: `write_now`, else `send` once the
    transport is paused) and its writer task (`send`) share one websockets connection; with the
    provider not reading, both wait for the buffer to drain, and the provider still gets the
    messages in the order they were handed over."""
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
        called: list[int] = []
        suspended = written_now = 0

        async def lane(first: int, *, direct: bool) -> None:
            nonlocal suspended, written_now
            async with LoopTurns().running() as loop_turns:
                for i in range(first, MESSAGES, 2):
                    called.append(i)
                    before = loop_turns.turns
                    if direct and write_now(client, numbered(i)):
                        written_now += 1
                    else:
                        await client.send(numbered(i))
                    suspended += loop_turns.turns != before
                    if len(called) == 8:
                        reading.set()  # the provider starts reading once the buffers are full

        async with client:
            await asyncio.wait_for(asyncio.gather(lane(0, direct=True), lane(1, direct=False)), timeout=30)
        await asyncio.wait_for(finished.wait(), timeout=10)
    assert suspended, "the connection never backed up: the test did not exercise the paused path"
    assert written_now, "the direct lane never wrote at once: the test did not exercise write_now"
    assert received == called


async def test_write_now_declines_a_closed_connection() -> None:
    """`write_now` writes nothing to a closed connection and says so; `send` then raises
    ConnectionClosed, which the session turns into a queued message for the next connection."""
    received: list[str] = []

    async def provider(connection: ServerConnection) -> None:
        async for message in connection:
            received.append(str(message))

    async with websockets.serve(provider, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await websockets.connect(f"ws://127.0.0.1:{port}/")
        assert write_now(client, "one")
        await client.close()
        assert not write_now(client, "two")
        with pytest.raises(ConnectionClosed):
            await client.send("two")
    assert received == ["one"]
