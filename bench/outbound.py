"""Relay time of an outbound call: from `POST /calls` leaving the client to the Twilio REST create
request reaching the Twilio REST fake (the issue's goal: at most 20 ms).

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADMIN = "bench-admin"
ACCOUNT = "AC" + "0" * 32
TOKEN = "bench-token"
WARM_UP = 10


async def measure(calls: int, redis_url: str | None) -> list[float]:
    import httpx

    from relay.app import create_app
    from relay.config import load_settings
    from relay.logs import configure_logging
    from relay.testing.server import serve_app
    from relay.testing.twilio_rest import FakeTwilioRest

    configure_logging("text", "WARNING")
    rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=TOKEN)
    assert rest.outbound is not None
    rest.outbound.answer = False
    async with rest.serve() as rest_url:
        settings = load_settings(
            _env_file=None,
            openai_api_key="sk-bench",
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            twilio_api_base_url=rest_url,
            twilio_phone_number="+15550001000",
            public_url="https://relay.example.com",
            relay_admin_token=ADMIN,
            realtime_preconnect=False,
            max_concurrent_calls=100_000,
            redis_url=redis_url,
            log_level="WARNING",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--redis", default=None, help="a Redis URL: the slot is reserved there")
    args = parser.parse_args()
    figures = sorted(asyncio.run(measure(args.calls, args.redis)))
    p95 = figures[int(0.95 * (len(figures) - 1))]
    store = "Redis" if args.redis else "memory"
    print(f"POST /calls -> REST create request, {len(figures)} calls, limiter in {store}:")
    print(f"  median {statistics.median(figures):.2f} ms   p95 {p95:.2f} ms   max {figures[-1]:.2f} ms")


if __name__ == "__main__":
    main()
