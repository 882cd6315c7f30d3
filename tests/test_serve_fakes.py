"""`relay serve --fakes` and `relay call`, run as the README shows them (real processes, real
sockets): the call goes through with no account, the relay says loudly that it runs on fakes; and
`relay serve` without --fakes never imports `relay.testing`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.fakes import FAKE_REPLY
from relay.testing.server import bind_free_port

README = Path(__file__).parent.parent / "README.md"
RELAY = str(Path(sys.executable).parent / "relay")  # `.venv/bin/relay`, the installed entry point


def readme_fakes_commands() -> list[list[str]]:
    """The README's `relay serve --fakes` example block: one argv per command, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "relay serve --fakes" in b]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def free_port() -> int:
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    return port


def clean_env(**variables: str) -> dict[str, str]:
    """The environment without any of the relay's settings, plus `variables`."""
    from relay.config import Settings

    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["HOST"] = "127.0.0.1"  # listen on loopback only
    env.update(variables)
    return env


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        """Reads stderr to the end (the pipe never fills while the test waits elsewhere)."""
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self.changed.set()
        self.changed.set()

    async def wait_for(self, needle: str, timeout: float = 30) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not any(needle in line for line in self.lines):
                assert self.proc.returncode is None, "the relay exited:\n" + self.text
                self.changed.clear()
                await self.changed.wait()

    @property
    def text(self) -> str:
        return "".join(self.lines)


@contextlib.asynccontextmanager
async def started(argv: list[str], env: dict[str, str], cwd: Path) -> AsyncIterator[Server]:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE)
    server = Server(proc)
    pump = asyncio.create_task(server.pump())
    try:
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=30)
        await pump


@pytest.mark.slow
@pytest.mark.parametrize(
    "signing",
    [{}, {"TWILIO_AUTH_TOKEN": "my-own-token", "PUBLIC_URL": "https://relay.example.com"}],
    ids=["no-account-at-all", "signed-with-the-users-token"],
)
async def test_the_readme_fakes_example_works_as_written(tmp_path: Path, signing: dict[str, str]) -> None:
    serve_argv, call_argv = readme_fakes_commands()
    assert serve_argv[:4] == [".venv/bin/relay", "serve", "--fakes", "--port"] and call_argv[1] == "call"
    port = str(free_port())

    def as_run(argv: list[str]) -> list[str]:
        return [RELAY, *(a.replace("8000", port) for a in argv[1:])]

    env = clean_env(RELAY_ADMIN_TOKEN="admin-token", **signing)
    async with started(as_run(serve_argv), env, tmp_path) as relay:
        await relay.wait_for(f"Uvicorn running on http://127.0.0.1:{port}")
        call = await asyncio.create_subprocess_exec(
            *as_run(call_argv), env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(call.communicate(), timeout=60)
        printed = out.decode()
        assert call.returncode == 0, printed + relay.text
        relay.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay.proc.wait(), timeout=30) == 0
    signed = "signed for https://relay.example.com" if signing else "unsigned"
    assert f"relay call → http://127.0.0.1:{port} ({signed}" in printed
    for needle in (
        "media stream open",
        "first audio (greeting)",
        """says: "What's the weather in Paris?\"""",
        "ms after the caller's end of speech",
        "result           OK",
        "transcript (as the relay stored it",
        f"assistant  {FAKE_REPLY}",
    ):
        assert needle in printed, printed
    turn = re.search(r"turn 1\s+(\d+) ms", printed)
    assert turn and int(turn.group(1)) < 3000, printed  # the latency figure of the turn
    log = relay.text
    assert (
        "WARNING" in log
        and "running on LOCAL FAKES (relay serve --fakes): no real service is contacted" in log
    )
    assert "realtime model → fake at ws://127.0.0.1:" in log and "call control (Twilio REST) → fake" in log
    assert log.count("no real service is contacted; this call goes to the fake realtime model at") == 1
    assert "Traceback" not in log


@pytest.mark.parametrize(("fakes", "imported"), [(False, False), (True, True)], ids=["serve", "serve-fakes"])
async def test_relay_testing_is_imported_only_by_serve_fakes(
    tmp_path: Path, fakes: bool, imported: bool
) -> None:
    """`python -X importtime` lists every module the process imports, on stderr."""
    port = str(free_port())
    argv = [sys.executable, "-X", "importtime", "-m", "relay", "serve", *(["--fakes"] if fakes else [])]
    async with started([*argv, "--port", port], clean_env(), tmp_path) as relay:
        await relay.wait_for(f"Uvicorn running on http://127.0.0.1:{port}")
    modules = {line.rsplit("|", 1)[-1].strip() for line in relay.lines if line.startswith("import time:")}
    assert "relay.app" in modules and "relay.sessions.manager" in modules  # the listing works
    assert any(m.startswith("relay.testing") for m in modules) is imported
    assert ("relay.fakes" in modules) is imported
