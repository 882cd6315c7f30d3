"""A real `redis-server` process on 127.0.0.1, for the tests and the fleet harness.

`start_redis(executable, directory)` starts one on a free port, without persistence, in `directory`;
readiness is read from the server's own log line, not polled. `RedisServer` also kills, freezes
(SIGSTOP), thaws and restarts it, for outages. The pytest fixture is `tests.redis_server`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import socket

__all__ = ["RedisServer", "RedisStartError", "free_port", "start_redis"]

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
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

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


async def start_redis(executable: str, directory: str, attempts: int = 3) -> RedisServer:
    """A running redis-server on a free port; tries again when the port was taken meanwhile."""
    for attempt in range(attempts):  # the free port may be taken between free_port() and the bind
        server = RedisServer(executable, directory, free_port())
        try:
            await server.start()
            return server
        except RedisStartError:
            if attempt == attempts - 1:
                raise
    raise RedisStartError("no attempt to start redis-server")
