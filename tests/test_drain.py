"""The drain ends the calls left after DRAIN_TIMEOUT concurrently: with a slow or hanging Twilio
REST API (the fake's `delay` / `hang` knobs) it takes about one REST timeout in total, not one per
call, and every call is ended. Real relay, fake Realtime, fake Twilio REST, fake callers."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from relay.app import create_app
from relay.sessions.manager import END_CALLS_MARGIN_S
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio_rest import FakeTwilioRest
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from tests.rig import twilio_caller

CALLS = 4
GRACE = 0.1


@pytest.mark.parametrize(
    ("knob", "rest_timeout", "redirected"),
    [({"delay": 0.8}, 10.0, True), ({"hang": True}, 1.0, False)],
    ids=["slow-rest", "hanging-rest"],
)
async def test_drain_ends_the_remaining_calls_concurrently(
    knob: dict[str, Any], rest_timeout: float, redirected: bool
) -> None:
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, **knob)
    talking = Say("I keep talking for a while.", audio_ms=3000)
    async with FakeRealtimeServer(default_reply=talking) as rt, rest.serve() as rest_url:
        settings = make_settings(
            relay_mode="realtime",
            openai_base_url=rt.openai_base_url,
            twilio_api_base_url=rest_url,
            twilio_api_timeout=rest_timeout,
        )
        app = create_app(settings)
        async with serve_app(app) as url, contextlib.AsyncExitStack() as stack:
            calls = [await stack.enter_async_context(twilio_caller(url)) for _ in range(CALLS)]
            for call in calls:
                assert await call.connect(await call.fetch_twiml())
            for call in calls:
                await call.wait_for_media()  # every call's session runs and the agent talks
            started = time.monotonic()
            ended = await app.state.manager.drain(GRACE)
            took = time.monotonic() - started - GRACE
            for call in calls:
                await call.wait_closed(timeout=5)
            requests = await rest.wait_requests(CALLS, timeout=1)
        records = [await app.state.store.get(call.call_sid) for call in calls]
    assert ended == CALLS
    assert sorted(r.call_sid for r in requests) == sorted(call.call_sid for call in calls)
    assert all("restarting" in r.form.get("Twiml", "") for r in requests)  # each asked its goodbye
    assert all(call.closed_by_relay for call in calls)
    assert all(record is not None and record["status"] == "ended" for record in records)
    per_call = knob.get("delay") or rest_timeout
    # Concurrent: about one REST answer (or timeout) in total; one at a time would take CALLS of them.
    assert per_call * 0.9 <= took < per_call + END_CALLS_MARGIN_S, took
    assert took < per_call * CALLS * 0.6, took
    assert (len(rest.updates) == CALLS) is redirected
