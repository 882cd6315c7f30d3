"""`relay serve` (what `make run` starts) as a real process: /health, a signed /incoming-call, an
unsigned one refused; and a configuration error named on the command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from twilio.request_validator import RequestValidator

from relay.testing.server import bind_free_port

FORM = {"CallSid": "CA" + "2" * 32, "From": "+15550001111", "To": "+15550002222"}


@dataclass
class RelayProcess:
    proc: asyncio.subprocess.Process
    url: str
    seen: list[str]

    async def read_until(self, needle: str, timeout: float = 20) -> None:  # noqa: ASYNC109
        """Reads the relay's log until `needle` appears (or fails with what was seen)."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while needle not in "".join(self.seen):
                line = await self.proc.stderr.readline()
                assert line, "relay serve exited: " + "".join(self.seen)
                self.seen.append(line.decode())


@contextlib.asynccontextmanager
async def relay_serve(tmp_path, **env_vars: str) -> AsyncIterator[RelayProcess]:
    """`python -m relay serve` on a free port with these variables, started and ready."""
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": "cli-token",
        "PUBLIC_URL": "https://relay.example.com",
        **env_vars,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    relay = RelayProcess(proc, f"http://127.0.0.1:{port}", [])
    try:
        await relay.read_until("Application startup complete")
        yield relay
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def test_relay_serve_answers_health_and_signed_webhook(tmp_path) -> None:
    async with relay_serve(tmp_path, OPENAI_API_KEY="sk-test", LOG_LEVEL="INFO") as relay:
        async with httpx.AsyncClient(base_url=relay.url) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            sig = RequestValidator("cli-token").compute_signature(
                "https://relay.example.com/incoming-call", FORM
            )
            ok = await client.post("/incoming-call", data=FORM, headers={"X-Twilio-Signature": sig})
            refused = await client.post("/incoming-call", data=FORM)
        assert ok.status_code == 200 and "<Connect><Stream" in ok.text
        assert refused.status_code == 403
        assert any("Using OpenAI for voice calls" in line for line in relay.seen)


async def test_config_error_is_named_and_exit_code_2(tmp_path) -> None:
    env = {
        **os.environ,
        "USE_AZURE_OPENAI": "true",
        "AZURE_OPENAI_ENDPOINT": "",
        "AZURE_OPENAI_DEPLOYMENT": "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 2
    assert b"AZURE_OPENAI_ENDPOINT" in err


async def test_sigterm_drains_live_call_then_exits(tmp_path) -> None:
    import signal

    from relay.testing.realtime import FakeRealtimeServer, Say
    from relay.testing.twilio import FakeTwilioCall

    def caller(url: str) -> FakeTwilioCall:
        return FakeTwilioCall(base_url=url, auth_token="cli-token", public_url="https://relay.example.com")

    async with FakeRealtimeServer(responses=[Say("Hello there, I am still talking.", audio_ms=3000)]) as rt:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": rt.openai_base_url, "RELAY_MODE": "realtime"}
        async with relay_serve(tmp_path, DRAIN_TIMEOUT="20", **env) as relay, caller(relay.url) as call:
            assert await call.connect(await call.fetch_twiml())
            await call.wait_for_media(min_bytes=800)
            relay.proc.send_signal(signal.SIGTERM)
            await relay.read_until("draining: 1 active calls")
            async with httpx.AsyncClient(base_url=relay.url) as client:
                assert (await client.get("/ready")).status_code == 503
            refused = await caller(relay.url).fetch_twiml()
            assert refused.say and "restarting" in refused.say
            await call.wait_for_media(min_bytes=3000 * 8, timeout=5)  # the live call keeps its audio
            await call.stop()
            assert await asyncio.wait_for(relay.proc.wait(), timeout=15) == 0


def test_the_readme_test_command_is_what_ci_runs_and_names_what_it_installs() -> None:
    """The README's two commands: `.ci/run` runs exactly `make test`, and the quickstart's comment
    on `make test` names every Debian package `make sysdeps` installs when missing."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ci = [line for line in (root / ".ci" / "run").read_text().splitlines() if line and line[0] not in "#"]
    assert ci[-1] == "make test" and not any("pytest" in line for line in ci)
    (sysdeps,) = re.findall(r"^sysdeps:\n\t@scripts/sysdeps\.sh (.+)$", (root / "Makefile").read_text(), re.M)
    packages = [pair.split(":")[1] for pair in sysdeps.split()]
    (comment,) = re.findall(r"^make test +# (.+)$", (root / "README.md").read_text(), re.M)
    assert packages and all(package in comment for package in packages), (packages, comment)
