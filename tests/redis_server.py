"""A real `redis-server` per test, for the Redis store and limiter tests.

Import the fixture into a test module (`from tests.redis_server import redis_server`). Each test
gets its own server on 127.0.0.1 and a free port, without persistence, in a temporary directory;
readiness is read from the server's own log line, not polled. Tests skip when redis-server is not
installed (`make test` installs it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from relay.sessions.redis_store import RedisStore

READY_LINE = b"Ready to accept connections"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisStartError(RuntimeError):
    """redis-server exited or stayed silent before it was ready; carries the end of its log."""


class RedisServer:
    """One redis-server process: `url`, `port`, and `kill()`, `restart()`, `freeze()` for outages."""

    def __init__(self, executable: str, directory: str, port: int) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port
        self.log: collections.deque[str] = collections.deque(maxlen=50)
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Starts the server and returns once it logs that it accepts connections."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        proc = self._proc = await asyncio.create_subprocess_exec(
            self.executable,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", self.directory, "--daemonize", "no", "--logfile", ""),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while READY_LINE not in (line := await proc.stdout.readline()):
                    if not line:  # EOF: the server exited (port taken, bad option...)
                        raise RedisStartError(self._failure("exited before it was ready"))
                    self.log.append(line.decode(errors="replace").rstrip())
        except TimeoutError:
            await self._reap(kill=True)
            raise RedisStartError(self._failure(f"was not ready within {START_TIMEOUT_S:.0f} s")) from None
        except RedisStartError:
            await self._reap(kill=True)
            raise
        self._drain = asyncio.create_task(self._read_log(proc.stdout), name=f"redis-log-{self.port}")

    async def kill(self) -> None:
        """SIGKILL, as when Redis dies: no shutdown, clients see their connections drop."""
        await self._reap(kill=True)

    async def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing, like a hung or partitioned Redis."""
        self._signal(signal.SIGSTOP)

    async def thaw(self) -> None:
        """SIGCONT after `freeze()`."""
        self._signal(signal.SIGCONT)

    async def restart(self) -> None:
        """Starts a fresh (empty) server on the same port; kills the running one first."""
        await self._reap(kill=True)
        await self.start()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL when it does not exit in time."""
        await self._reap(kill=False)

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            raise RuntimeError("redis-server is not running")
        self._proc.send_signal(signum)

    async def _reap(self, *, kill: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
                proc.send_signal(signal.SIGCONT)  # a frozen server handles SIGTERM once it runs again
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            await self._drain  # ends at EOF, now that the process is gone
            self._drain = None
        elif proc.stdout is not None:
            with contextlib.suppress(Exception):
                rest = await proc.stdout.read()
                self.log.extend(line.decode(errors="replace") for line in rest.splitlines())
        self._proc = None

    async def _read_log(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():  # keeps the pipe from filling up
            self.log.append(line.decode(errors="replace").rstrip())

    def _failure(self, what: str) -> str:
        tail = "\n".join(self.log) or "(no output)"
        return f"redis-server on port {self.port} {what}; its log:\n{tail}"


async def wait_for_record(
    server: RedisServer,
    call_sid: str,
    done: Callable[[dict[str, Any] | None], bool],
    timeout: float = 5.0,  # noqa: ASYNC109 - a test bound
) -> dict[str, Any] | None:
    """The call's record (read through RedisStore) once `done(record)` holds; TimeoutError otherwise.

    Woken by Redis keyspace notifications on the call's keys, so it waits for writes without polling.
    Enables the notifications on the server (again after a restart: a fresh server has them off).
    """
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    store = RedisStore(server.url, ttl_seconds=3600)
    pubsub = client.pubsub()
    try:
        await client.config_set("notify-keyspace-events", "KA")
        await pubsub.psubscribe(f"__keyspace@0__:relay:call:{call_sid}*")
        async with asyncio.timeout(timeout):
            while not done(record := await store.get(call_sid)):
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        return record
    finally:
        await pubsub.aclose()
        await client.aclose()
        await store.close()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A running redis-server for this test only; stopped afterwards."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip(
            "redis-server is not installed: run `make test` (installs it) or `apt-get install redis-server`"
        )
    with tempfile.TemporaryDirectory(prefix="relay-redis-") as directory:
        server: RedisServer | None = None
        for attempt in range(3):  # the free port may be taken between free_port() and the bind
            server = RedisServer(executable, directory, free_port())
            try:
                await server.start()
                break
            except RedisStartError:
                if attempt == 2:
                    raise
        assert server is not None
        try:
            yield server
        finally:
            await server.stop()
