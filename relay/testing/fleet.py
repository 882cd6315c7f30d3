"""A real fleet on loopback: nginx with deploy/nginx/relay.conf, N `relay serve` processes and one
`redis-server`, for tests/test_fleet.py and bench/fleet.py.

The relays reach the provider and the Twilio REST API the caller gives (fakes in the caller's
process: `FakeRealtimeServer`, `FakeTwilioRest`); simulated Twilio calls go to `Fleet.url`, nginx,
as Twilio's would: the webhook, then the stream the TwiML names.

nginx runs the committed `deploy/nginx/relay.conf`, rendered by `render_nginx_conf` with one
documented substitution: `listen 80;` becomes this fleet's port on 127.0.0.1, and each line naming
`127.0.0.1:800K` (instance K's upstream server and its `/i/relay-K/` route) names instance K's port,
or is left out when the fleet has fewer than K instances. `nginx_main_conf` is the main context
(what Debian's /etc/nginx/nginx.conf provides: pid, logs, temporary paths, workers) that includes
it. Every process logs to a bounded tail (`log`) and is awaited on its own "ready" line, not polled.

Instance K (1-based) listens on its own port with `STREAM_PUBLIC_URL=ws://127.0.0.1:NGINX/i/relay-K/
media-stream` when `affinity` is on, REDIS_URL, LOG_FORMAT=text and LOG_LEVEL=INFO (its ready and
drain lines are INFO); its other settings are `settings` (environment names), and nothing of this
process's environment but PATH, HOME and the locale (no `.env`: it runs in a temporary directory).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from relay.testing.redis_server import RedisServer, free_port, start_redis

__all__ = [
    "NGINX_CONF",
    "RELAY_SERVE",
    "Fleet",
    "FleetStartError",
    "ManagedProcess",
    "RelayInstance",
    "fleet",
    "nginx_main_conf",
    "render_nginx_conf",
    "write_nginx_confs",
]

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "relay.conf"
INSTANCE_ADDRESS = re.compile(r"127\.0\.0\.1:800([1-9])\b")
LISTEN = re.compile(r"^(\s*)listen 80;", re.MULTILINE)
RELAY_READY = "Uvicorn running on"
NGINX_READY = "start worker process"
START_TIMEOUT_S = 30.0  # a relay process imports a lot; two cores may be shared
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
RELAY_SERVE = ("serve", "--host", "127.0.0.1", "--port")  # the README's command, then the port


class FleetStartError(RuntimeError):
    """A process of the fleet exited or stayed silent before it was ready; carries its log's end."""


def render_nginx_conf(text: str, *, listen_port: int, relay_ports: Sequence[int]) -> str:
    """deploy/nginx/relay.conf for this fleet (see the module docstring): the substitution only."""
    if not 1 <= len(relay_ports) <= 9:
        raise ValueError("relay.conf names instances 1 to 9 at most")
    rendered, found = LISTEN.subn(rf"\g<1>listen 127.0.0.1:{listen_port};", text)
    if found != 1:
        raise ValueError("relay.conf must have exactly one `listen 80;`")
    lines = []
    for line in rendered.splitlines(keepends=True):
        match = INSTANCE_ADDRESS.search(line)
        if match is None:
            lines.append(line)
        elif (k := int(match.group(1))) <= len(relay_ports):
            lines.append(INSTANCE_ADDRESS.sub(f"127.0.0.1:{relay_ports[k - 1]}", line))
    named = {int(k) for k in INSTANCE_ADDRESS.findall(text)}
    if not set(range(1, len(relay_ports) + 1)) <= named:
        raise ValueError(f"relay.conf names instances {sorted(named)}, fewer than {len(relay_ports)}")
    return "".join(lines)


def nginx_main_conf(directory: Path, include: Path, *, worker_connections: int = 4096) -> str:
    """nginx's main context around `include` (relay.conf), everything in `directory`."""
    d = directory
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr notice;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {include};
}}
"""


def write_nginx_confs(directory: Path, conf: Path, *, listen_port: int, relay_ports: Sequence[int]) -> Path:
    """Writes the rendered `conf` and the main context around it into `directory`; returns the
    main one's path (nginx's `-c`)."""
    rendered = directory / "relay.conf"
    rendered.write_text(render_nginx_conf(conf.read_text(), listen_port=listen_port, relay_ports=relay_ports))
    main = directory / "nginx.conf"
    main.write_text(nginx_main_conf(directory, rendered))
    return main


class ManagedProcess:
    """One child process whose output (stdout and stderr together) is kept in a bounded `log`."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lines = asyncio.Condition()
        self._printed = 0
        self._eof = False  # the output ended: the process exited (or closed it)

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, ready: str, timeout: float = START_TIMEOUT_S) -> None:  # noqa: ASYNC109
        """Starts the process and returns once it prints a line containing `ready`."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(), name=f"log-{self.name}")
        try:
            await self.wait_line(ready, timeout)
        except TimeoutError:
            await self.kill()
            raise FleetStartError(self.failure(f"was not ready within {timeout:.0f} s")) from None
        except FleetStartError:
            await self.kill()
            raise

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            async with self._lines:
                self.log.append(line.decode(errors="replace").rstrip())
                self._printed += 1
                self._lines.notify_all()
        async with self._lines:
            self._eof = True
            self._lines.notify_all()

    async def wait_line(self, text: str, timeout: float, *, after: int = 0) -> str:  # noqa: ASYNC109
        """The first line containing `text` (among the last ones kept, from the `after`-th line
        printed since the start); FleetStartError when the process ends first."""
        async with asyncio.timeout(timeout), self._lines:
            while True:
                seen = self.lines_printed - len(self.log)
                for i, line in enumerate(self.log):
                    if seen + i >= after and text in line:
                        return line
                if self._eof:
                    raise FleetStartError(self.failure(f"ended before printing {text!r}"))
                await self._lines.wait()

    @property
    def lines_printed(self) -> int:
        """How many lines the process printed so far (a mark for `wait_line(after=)`)."""
        return self._printed

    def signal(self, signum: int) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109
        """The exit status, once the process has exited (TimeoutError after `timeout` s)."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """SIGTERM, then SIGKILL when it has not exited within `timeout` s."""
        if self.running:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await self.wait(timeout)
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL (when still running), then reaps it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        if self._reader is not None:
            await self._reader

    def failure(self, what: str) -> str:
        tail = "\n".join(list(self.log)[-40:]) or "(no output)"
        return f"{self.name} {what}; the end of its log:\n{tail}"


@dataclass
class RelayInstance:
    """Instance K of the fleet: its `relay serve` process and port."""

    index: int
    port: int
    process: ManagedProcess

    @property
    def name(self) -> str:
        return f"relay-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def metrics(self) -> str:
        """Its `/metrics` text, asked of the instance itself (nginx does not expose it)."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(self.url + "/metrics")
            response.raise_for_status()
            return response.text

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
        total = 0.0
        for family in text_string_to_metric_families(await self.metrics()):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total


@dataclass
class Fleet:
    """The running fleet: `url` is nginx, which Twilio would reach."""

    url: str
    port: int
    redis: RedisServer
    relays: list[RelayInstance]
    nginx: ManagedProcess
    directory: Path

    def stream_public_url(self, index: int) -> str:
        """Instance `index`'s STREAM_PUBLIC_URL: its affinity route through nginx."""
        return f"ws://127.0.0.1:{self.port}/i/relay-{index}/media-stream"

    def instance_of(self, stream_url: str | None) -> RelayInstance | None:
        """The instance a TwiML's stream URL routes to (None: the balanced /media-stream)."""
        match = re.search(r"/i/relay-([0-9]+)/", stream_url or "")
        return self.relays[int(match.group(1)) - 1] if match else None


def relay_env(settings: Mapping[str, str]) -> dict[str, str]:
    """A relay's environment: `settings` and nothing of ours but PATH, HOME and the locale."""
    env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    return {**env, "PYTHONUNBUFFERED": "1", **settings}


@contextlib.asynccontextmanager
async def fleet(
    n: int,
    *,
    settings: Mapping[str, str],
    affinity: bool = True,
    conf: Path = NGINX_CONF,
) -> AsyncIterator[Fleet]:
    """Starts redis-server, `n` relays (`settings`: environment names, plus REDIS_URL,
    STREAM_PUBLIC_URL and LOG_FORMAT set here) and nginx; stops them all on exit (SIGTERM, then
    SIGKILL after 10 s)."""
    redis_exe = shutil.which("redis-server")
    nginx_exe = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if redis_exe is None or nginx_exe is None:
        raise FleetStartError("the fleet needs redis-server and nginx: `make sysdeps` installs them")
    with tempfile.TemporaryDirectory(prefix="relay-fleet-") as tmp:
        directory = Path(tmp)
        port = free_port()
        ports = [free_port() for _ in range(n)]
        redis = await start_redis(redis_exe, tmp)
        relays: list[RelayInstance] = []
        nginx: ManagedProcess | None = None
        try:
            for k, relay_port in enumerate(ports, start=1):
                env = {**settings, "REDIS_URL": redis.url, "LOG_FORMAT": "text", "LOG_LEVEL": "INFO"}
                if affinity:
                    env["STREAM_PUBLIC_URL"] = f"ws://127.0.0.1:{port}/i/relay-{k}/media-stream"
                argv = [sys.executable, "-m", "relay", *RELAY_SERVE, str(relay_port)]
                process = ManagedProcess(f"relay-{k}", argv, env=relay_env(env), cwd=directory)
                relays.append(RelayInstance(k, relay_port, process))
            async with asyncio.TaskGroup() as starting:  # one failing stops the others' waits
                for relay in relays:
                    starting.create_task(relay.process.start(RELAY_READY))
            main_conf = write_nginx_confs(directory, conf, listen_port=port, relay_ports=ports)
            argv = [nginx_exe, "-p", tmp, "-e", "stderr", "-c", str(main_conf)]
            nginx = ManagedProcess("nginx", argv, env=relay_env({}), cwd=directory)
            await nginx.start(NGINX_READY)
            yield Fleet(f"http://127.0.0.1:{port}", port, redis, relays, nginx, directory)
        finally:
            if nginx is not None:
                await nginx.stop()
            await asyncio.gather(*(r.process.stop() for r in relays if r.process.proc is not None))
            await redis.stop()
