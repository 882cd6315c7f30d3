"""`relay serve` (what `make run` starts) as a real process: /health, a signed /incoming-call, an
unsigned one refused; and a configuration error named on the command line."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx
from twilio.request_validator import RequestValidator

from relay.testing.server import bind_free_port

FORM = {"CallSid": "CA" + "2" * 32, "From": "+15550001111", "To": "+15550002222"}


async def test_relay_serve_answers_health_and_signed_webhook(tmp_path) -> None:
    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-test",
        "TWILIO_AUTH_TOKEN": "cli-token",
        "PUBLIC_URL": "https://relay.example.com",
        "LOG_LEVEL": "INFO",
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
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(20):
            while "Application startup complete" not in "".join(seen):
                line = await proc.stderr.readline()
                assert line, "relay serve exited: " + "".join(seen)
                seen.append(line.decode())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            sig = RequestValidator("cli-token").compute_signature(
                "https://relay.example.com/incoming-call", FORM
            )
            ok = await client.post("/incoming-call", data=FORM, headers={"X-Twilio-Signature": sig})
            refused = await client.post("/incoming-call", data=FORM)
        assert ok.status_code == 200 and "<Connect><Stream" in ok.text
        assert refused.status_code == 403
        assert any("Using OpenAI for voice calls" in line for line in seen)
    finally:
        proc.terminate()
        await proc.wait()


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

    async with FakeRealtimeServer(responses=[Say("Hello there, I am still talking.", audio_ms=3000)]) as rt:
        sock = bind_free_port()
        port = sock.getsockname()[1]
        sock.close()
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": rt.openai_base_url,
            "RELAY_MODE": "realtime",
            "TWILIO_AUTH_TOKEN": "cli-token",
            "PUBLIC_URL": "https://relay.example.com",
            "DRAIN_TIMEOUT": "20",
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
        assert proc.stderr is not None
        seen: list[str] = []

        async def read_until(needle: str) -> None:
            async with asyncio.timeout(20):
                while needle not in "".join(seen):
                    line = await proc.stderr.readline()
                    assert line, "relay serve exited: " + "".join(seen)
                    seen.append(line.decode())

        url = f"http://127.0.0.1:{port}"
        try:
            await read_until("Application startup complete")
            async with FakeTwilioCall(
                base_url=url, auth_token="cli-token", public_url="https://relay.example.com"
            ) as call:
                assert await call.connect(await call.fetch_twiml())
                await call.wait_for_media(min_bytes=800)
                proc.send_signal(signal.SIGTERM)
                await read_until("draining: 1 active calls")
                async with httpx.AsyncClient(base_url=url) as client:
                    assert (await client.get("/ready")).status_code == 503
                refused = await FakeTwilioCall(
                    base_url=url, auth_token="cli-token", public_url="https://relay.example.com"
                ).fetch_twiml()
                assert refused.say and "restarting" in refused.say
                await call.wait_for_media(min_bytes=3000 * 8, timeout=5)  # the live call keeps its audio
                await call.stop()
            assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
