"""Relay time of an outbound call: from `POST /calls` leaving the client to the Twilio REST create
request reaching the Twilio REST fake (the issue's goal: at most 20 ms); and, with `--answered N`,
from the callee's answer webhook (the fake requesting the call's Url) to the first greeting frame
at the callee, less the fake provider's own latency (its `response.create` to its first audio
delta): the goal is at most 10 ms. The callee opens the stream as soon as the TwiML is answered.

The relay (uvicorn, in-process), the REST fake and the client share one process and one monotonic
clock: the figure is an upper bound of the relay's own time (it includes both loopback hops and
the client's and the fake's share of the event loop). Calls are placed one after another, with
machine detection on and no answer (nothing else runs), after a warm-up that opens the relay's
REST connection. Prints the median, p95 and max; asserts nothing.

    .venv/bin/python bench/outbound.py [--calls 200] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADMIN = "bench-admin"
ACCOUNT = "AC" + "0" * 32
TOKEN = "bench-token"
WARM_UP = 10


async def measure(calls: int, redis_url: str | None) -> list[float]:
    import httpx

    from relay.app import create_app
    from relay.logs import configure_logging
    from relay.testing.server import serve_app
    from relay.testing.twilio_rest import FakeTwilioRest

    configure_logging("text", "WARNING")
    rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=TOKEN)
    assert rest.outbound is not None
    rest.outbound.answer = False
    async with rest.serve() as rest_url:
        settings = bench_settings(
            rest_url, realtime_preconnect=False, max_concurrent_calls=100_000, redis_url=redis_url
        )
        app = create_app(settings)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            body = {"to": "+15551234567", "machine_detection": True}
            figures = []
            for i in range(WARM_UP + calls):
                sent = time.monotonic()
                response = await client.post("/calls", json=body, headers=headers)
                assert response.status_code == 201, response.text
                placed = rest.outbound.calls[-1]
                if i >= WARM_UP:
                    figures.append((placed.received_at - sent) * 1000)
            return figures


async def measure_answered(calls: int) -> list[float]:
    """Answer webhook → first greeting frame at the callee, less the provider's latency, per call."""
    from relay.app import create_app
    from relay.logs import configure_logging
    from relay.testing.realtime import FakeRealtimeServer, Say
    from relay.testing.server import serve_app
    from relay.testing.twilio import FakeTwilioCall
    from relay.testing.twilio_rest import FakeTwilioRest

    configure_logging("text", "WARNING")
    rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=TOKEN)
    assert rest.outbound is not None
    greeting = [Say("Hello, this is ACME.", audio_ms=300) for _ in range(WARM_UP + calls)]
    async with FakeRealtimeServer(responses=greeting) as fake, rest.serve() as rest_url:
        settings = bench_settings(rest_url, openai_base_url=fake.openai_base_url)
        app = create_app(settings)
        async with serve_app(app) as url, httpx_client(url) as client:
            rest.outbound.relay_url = url
            figures = []
            for i in range(WARM_UP + calls):
                response = await client.post("/calls", json={"to": "+15551234567"}, headers=ADMIN_HEADERS)
                assert response.status_code == 201, response.text
                placed = await rest.outbound.wait_answered(i + 1)
                assert placed.answer is not None and placed.answered_at is not None
                callee = FakeTwilioCall(
                    base_url=url,
                    auth_token=TOKEN,
                    public_url="https://relay.example.com",
                    call_sid=placed.call_sid,
                    account_sid=ACCOUNT,
                    from_=placed.from_,
                    to=placed.to,
                )
                async with callee:
                    assert await callee.connect(placed.answer)
                    await callee.wait_for_media()
                    conn = fake.connections[-1]
                    asked = next(t for t, e in conn.received if e.get("type") == "response.create")
                    first = next(t for t, e in conn.sent if e.get("type") == "response.output_audio.delta")
                    assert callee.first_media_received_at is not None
                    total = callee.first_media_received_at - placed.answered_at
                    if i >= WARM_UP:
                        figures.append((total - (first - asked)) * 1000)
                    await callee.stop()
            return figures


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def bench_settings(rest_url: str, **more: Any) -> Any:
    """The relay's settings for these runs: the REST fake at `rest_url`, an admin token, a number."""
    from relay.config import load_settings

    return load_settings(
        _env_file=None,
        openai_api_key="sk-test",  # the fake realtime server's key (phase 1 never connects)
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_api_base_url=rest_url,
        twilio_phone_number="+15550001000",
        public_url="https://relay.example.com",
        relay_admin_token=ADMIN,
        log_level="WARNING",
        **more,
    )


def httpx_client(url: str):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.AsyncClient(base_url=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--redis", default=None, help="a Redis URL: the slot is reserved there")
    parser.add_argument("--answered", type=int, default=20, help="calls answered, for the greeting figure")
    args = parser.parse_args()
    figures = sorted(asyncio.run(measure(args.calls, args.redis)))
    p95 = figures[int(0.95 * (len(figures) - 1))]
    store = "Redis" if args.redis else "memory"
    print(f"POST /calls -> REST create request, {len(figures)} calls, limiter in {store}:")
    print(f"  median {statistics.median(figures):.2f} ms   p95 {p95:.2f} ms   max {figures[-1]:.2f} ms")
    if args.answered:
        greets = sorted(asyncio.run(measure_answered(args.answered)))
        p95 = greets[int(0.95 * (len(greets) - 1))]
        print(f"answer webhook -> first greeting frame, less the provider's latency, {len(greets)} calls:")
        print(f"  median {statistics.median(greets):.2f} ms   p95 {p95:.2f} ms   max {greets[-1]:.2f} ms")


if __name__ == "__main__":
    main()
