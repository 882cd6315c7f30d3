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


def readme_blocks() -> list[list[list[str]]]:
    """The README's bash blocks: one argv per line, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [b.replace("\\\n", " ").splitlines() for b in blocks]  # continued lines joined
    # a comment starts at a word's start, as in bash (`--digits 1042#` keeps its '#')
    return [
        [shlex.split(re.sub(r"(^|\s)#.*", "", line)) for line in block if line.strip()] for block in lines
    ]


def readme_fakes_commands() -> list[list[str]]:
    """The README's `relay serve --fakes` example block of an inbound call."""
    (block,) = [
        b
        for b in readme_blocks()
        if any(argv[1:3] == ["serve", "--fakes"] for argv in b) and not any("--outbound" in a for a in b)
    ]
    return block


def readme_outbound_commands() -> tuple[dict[str, str], list[list[str]], list[list[str]]]:
    """The variables the README's outbound examples export, their `relay serve` commands and every
    distinct `relay call` with --outbound or --digits, in the README's order."""
    env: dict[str, str] = {}
    serves: list[list[str]] = []
    calls: list[list[str]] = []
    for block in readme_blocks():
        if not any("--outbound" in argv or "--digits" in argv for argv in block):
            continue
        for argv in block:
            if argv[0] == "export":
                env.update(pair.split("=", 1) for pair in argv[1:])  # type: ignore[misc]
            elif argv[1] == "serve" and argv not in serves:
                serves.append(argv)
            elif argv[1] == "call" and argv not in calls:
                calls.append(argv)
    return env, serves, calls


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


SIGNINGS = {
    "no-account-at-all": {},
    "signed-with-the-users-token": {
        "TWILIO_AUTH_TOKEN": "my-own-token",
        "PUBLIC_URL": "https://relay.example.com",
    },
}


@pytest.mark.slow
async def test_the_readme_fakes_example_works_as_written(tmp_path: Path) -> None:
    """Both ways a user runs it, at once (each a relay and a caller of its own): with no account
    at all, and signed with the user's own token."""
    folders = {name: tmp_path / name for name in SIGNINGS}
    for folder in folders.values():
        folder.mkdir()
    await asyncio.gather(
        *(_readme_fakes_example(folders[name], signing) for name, signing in SIGNINGS.items())
    )


async def _readme_fakes_example(folder: Path, signing: dict[str, str]) -> None:
    serve_argv, call_argv = readme_fakes_commands()
    assert serve_argv[:4] == [".venv/bin/relay", "serve", "--fakes", "--port"] and call_argv[1] == "call"
    port = str(free_port())

    def as_run(argv: list[str]) -> list[str]:
        return [RELAY, *(a.replace("8000", port) for a in argv[1:])]

    env = clean_env(RELAY_ADMIN_TOKEN="admin-token", **signing)
    async with started(as_run(serve_argv), env, folder) as relay:
        await relay.wait_for(f"Uvicorn running on http://127.0.0.1:{port}")
        call = await asyncio.create_subprocess_exec(
            *as_run(call_argv), env=env, cwd=folder, stdout=asyncio.subprocess.PIPE
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


@pytest.mark.slow
async def test_the_readme_outbound_and_key_press_examples_work_as_written(tmp_path: Path) -> None:
    """The relay on the fakes places the README's outbound calls and `relay call` is their callee:
    the answering machine gets the agent's message and the relay hangs up through the fake Twilio
    REST API; the person says a line; an inbound caller presses keys."""
    exported, serves, calls = readme_outbound_commands()
    assert set(exported) == {"RELAY_ADMIN_TOKEN", "TWILIO_AUTH_TOKEN"}
    (serve_argv,) = serves
    assert serve_argv[1:4] == ["serve", "--fakes", "--port"]
    assert [("--voicemail" in c, "--digits" in c, "--outbound" in c) for c in calls] == [
        (True, False, True),
        (False, False, True),
        (False, True, False),
    ]
    port = str(free_port())

    def as_run(argv: list[str]) -> list[str]:
        return [RELAY, *(a.replace("8000", port) for a in argv[1:])]

    env = clean_env(**exported)

    async def run(argv: list[str]) -> str:
        call = await asyncio.create_subprocess_exec(
            *as_run(argv), env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(call.communicate(), timeout=60)
        assert call.returncode == 0, out.decode() + relay.text
        return out.decode()

    async with started(as_run(serve_argv), env, tmp_path) as relay:
        await relay.wait_for(f"Uvicorn running on http://127.0.0.1:{port}")
        voicemail, person, keys = await asyncio.gather(
            *(run(argv) for argv in calls)
        )  # three callers at once
    for needle in (
        "relay call --outbound +15551234567 (the callee)",
        "placed     POST /calls → 201, call CA",
        "POST /outbound-answer → 200",
        'machine    greeting: "Hi, you have reached Ada. Please leave a message after the tone."',
        "machine    beep: 1 kHz tone (0.5 s)",
        "POST /amd-status AnsweredBy=machine_end_beep MachineDetectionDuration=",
        "ms after the beep",
        "the relay hung up: Twilio's REST API completed the call (Status=completed)",
        "voicemail        a message was left",
        "hang-up          by the relay, through Twilio's REST API (Status=completed)",
        "answered_by      machine_end_beep (AMD,",
        "outcome          voicemail",  # the relay hung up on the machine after its message
        "result           OK",
    ):
        assert needle in voicemail, voicemail
    for needle in ("AnsweredBy=human → HTTP 204", 'says: "Yes, this is Ada."', "answered_by      human"):
        assert needle in person, person
    assert "hang-up          by the caller" in person
    for needle in (
        "presses 1042# (5 keys, 120 ms apart)",
        "last key → first agent audio",
        "The caller pressed 1042#",
    ):
        assert needle in keys, keys
    log = relay.text
    assert "PUBLIC_URL is not set: it is http://127.0.0.1:" + port in log
    assert "TWILIO_PHONE_NUMBER is not set: outbound calls come from +15555550100" in log
    assert "Traceback" not in log
