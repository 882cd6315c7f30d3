"""Relay time of a handoff (the `handoff` tool, AGENTS_FILE): from the tool call (the fake
provider's `response.done` of the response that called it) to the caller's first frame of the new
agent, less what the provider takes.

* Same provider: less the provider's latency (its `response.create` to its first audio delta).
  The issue's goal: at most 20 ms.
* Across providers (OpenAI to Azure, two fake servers): less the provider's latency and the
  connect time, a WebSocket handshake to the new provider measured by this script with the same
  library, median of as many. The goal: at most 20 ms.

The relay (uvicorn, in-process), both fake providers and the caller share one process and one
monotonic clock, so the figure is an upper bound of the relay's own time (it includes the loopback
hops and the fakes' share of the event loop). Calls run one after another, greeting off, after a
warm-up. Prints the median, p95 and max; asserts nothing.

    .venv/bin/python bench/handoff.py [--calls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "bench-token"
WARM_UP = 3
SUPPORT, CLINIC = "+15550100001", "+4930120000"
AGENTS = """
[agents.support]
numbers = ["+15550100001"]
instructions = "You are Support."
handoffs = ["sales", "praxis"]

[agents.sales]
description = "Prices."
instructions = "You are Sales."

[agents.praxis]
description = "Appointments."
instructions = "Du bist die Praxis."
provider = "azure"
azure_endpoint = "AZURE"
azure_deployment = "gpt-realtime"
api_key_env = "BENCH_PRAXIS_KEY"
"""


def _first(events: list[tuple[float, dict[str, Any]]], kind: str, after: float = 0.0) -> float:
    return next(t for t, e in events if e.get("type") == kind and t >= after)


async def _handshakes(url: str, n: int) -> float:
    """The median time of a WebSocket handshake to `url` (the new provider's connect time)."""
    from websockets.asyncio.client import connect

    times = []
    for _ in range(n):
        started = time.monotonic()
        async with connect(url, additional_headers={"api-key": "azure-key"}) as ws:
            times.append(time.monotonic() - started)
            await ws.recv()  # session.created
    return statistics.median(times)


async def measure(calls: int, target: str) -> list[float]:
    import os

    from relay.app import create_app
    from relay.config import load_settings
    from relay.logs import configure_logging
    from relay.testing.realtime import Call, FakeRealtimeServer, Say
    from relay.testing.server import serve_app
    from relay.testing.twilio import FakeTwilioCall

    configure_logging("text", "WARNING")
    os.environ["BENCH_PRAXIS_KEY"] = "azure-key"  # the Azure agent's key, by name, as the file says
    n = WARM_UP + calls
    cross = target == "praxis"
    handoffs = [Call("handoff", {"agent": target}) for _ in range(n)]
    answers = [Say("The new agent speaks.", audio_ms=300) for _ in range(n)]
    openai_replies = handoffs if cross else [r for pair in zip(handoffs, answers, strict=True) for r in pair]
    async with (
        FakeRealtimeServer(responses=openai_replies) as openai,
        FakeRealtimeServer(responses=answers if cross else []) as azure,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "agents.toml"
            path.write_text(AGENTS.replace("AZURE", azure.azure_endpoint))
            settings = load_settings(
                _env_file=None,
                openai_api_key="sk-test",
                openai_base_url=openai.openai_base_url,
                twilio_auth_token=TOKEN,
                public_url="https://relay.example.com",
                relay_mode="realtime",
                greeting_enabled=False,
                agents_file=str(path),
                log_level="WARNING",
            )
            app = create_app(settings)
            realtime = azure.url + "/openai/v1/realtime?model=gpt-realtime"
            connect = await _handshakes(realtime, 20) if cross else 0.0
            figures = []
            async with serve_app(app) as url:
                for i in range(n):
                    call = FakeTwilioCall(
                        base_url=url, auth_token=TOKEN, public_url="https://relay.example.com", to=SUPPORT
                    )
                    async with call:
                        twiml = await call.fetch_twiml()
                        assert await call.connect(twiml)
                        first = await openai.wait_connection(n=i + 1)
                        await first.wait_for("session.update")
                        await call.send_audio(_tone())
                        await call.send_silence(700)
                        await call.wait_for_media(timeout=10)
                        heard = call.first_media_received_at
                        assert heard is not None
                        tool_done = _first(first.sent, "response.done")
                        new = azure.connections[-1] if cross else first
                        asked = _first(new.received, "response.create", after=tool_done)
                        delta = _first(new.sent, "response.output_audio.delta", after=asked)
                        relay = (heard - tool_done) - (delta - asked) - connect
                        if i >= WARM_UP:
                            figures.append(relay * 1000)
                        await call.stop()
                    await app.state.manager.wait_idle(timeout=5)
    return figures


def _tone() -> bytes:
    from relay.testing.audio import tone_ulaw

    return tone_ulaw(500, 400, 0.6)


def _report(label: str, figures: list[float]) -> None:
    figures = sorted(figures)
    p95 = figures[int(0.95 * (len(figures) - 1))]
    print(f"{label}, {len(figures)} calls:")
    print(f"  median {statistics.median(figures):.2f} ms   p95 {p95:.2f} ms   max {figures[-1]:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        _report(
            "handoff on the same provider: tool call -> caller hears the new agent, less provider latency",
            asyncio.run(measure(args.calls, "sales")),
        )
        _report(
            "handoff to another provider: tool call -> caller hears the new agent, less provider latency "
            "and connect time",
            asyncio.run(measure(args.calls, "praxis")),
        )


if __name__ == "__main__":
    main()
