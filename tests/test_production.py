"""Production behaviour over real sockets and a real redis-server: records survive a relay restart,
Redis dying mid-call loses no audio, two relays share the concurrency limit, and draining.
(Redis outages at every stage of a call: tests/test_redis_outage.py.)"""

from __future__ import annotations

import asyncio

import httpx

from relay.app import create_app
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio_rest import FakeTwilioRest
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from tests.redis_server import redis_server  # noqa: F401
from tests.rig import speak, twilio_caller

FORM = {"CallSid": "CA" + "9" * 32, "From": "+15550001111", "To": "+15550002222"}


def relay_settings(rt: FakeRealtimeServer, **kw):
    return make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url, **kw)


caller = twilio_caller


async def test_records_survive_a_relay_restart(redis_server) -> None:  # noqa: F811
    async with FakeRealtimeServer(responses=[Say("Hello and welcome.", audio_ms=300)]) as rt:
        settings = relay_settings(rt, redis_url=redis_server.url)
        async with serve_app(create_app(settings)) as url, caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            conn = await rt.wait_connection()
            await conn.wait_for("response.done")
            await call.wait_for_media(min_bytes=300 * 8)
            await call.wait_playback_idle()
            await call.stop()
        restarted = create_app(settings)  # a new process would build exactly this
        async with serve_app(restarted):
            record = await restarted.state.store.get(call.call_sid)
    assert record is not None and record["outcome"] == "twilio_stop"
    assert [t["text"] for t in record["transcript"]] == ["Hello and welcome."]


async def test_redis_killed_mid_call_the_call_goes_on_and_the_outage_is_reported(
    redis_server,  # noqa: F811
    caplog,
) -> None:
    replies = [Say("Hi.", audio_ms=200), Say("Still talking to you.", audio_ms=400)]
    async with FakeRealtimeServer(responses=replies) as rt:
        app = create_app(relay_settings(rt, redis_url=redis_server.url))
        async with serve_app(app) as url, caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            conn = await rt.wait_connection()
            await conn.wait_for("response.done")
            await call.wait_for_media(min_bytes=200 * 8)
            await call.wait_playback_idle()
            await redis_server.kill()
            await speak(call)  # the call goes on without Redis
            await conn.wait_for("response.done", n=2)
            await call.wait_for_media(min_bytes=(200 + 400) * 8)
            await call.wait_playback_idle()
            assert call.received_audio == b"".join(bytes(a) for a in conn.audio_sent.values())
            await call.stop()
            async with httpx.AsyncClient(base_url=url) as client:
                ready = await client.get("/ready")
                metrics = (await client.get("/metrics")).text
    assert ready.status_code == 200 and ready.json()["store"] == "degraded"  # this instance still serves
    errors = [line for line in metrics.splitlines() if line.startswith("relay_store_errors_total ")]
    assert errors and float(errors[0].split()[1]) >= 1
    assert "relay_store_up 0.0" in metrics
    assert caplog.text.count("call store unreachable") == 1  # once for the outage, not per write


async def test_two_relays_share_the_concurrency_limit(redis_server) -> None:  # noqa: F811
    async with FakeRealtimeServer(responses=[Say("Hello.", audio_ms=2000)]) as rt:
        settings = relay_settings(rt, redis_url=redis_server.url, max_concurrent_calls=1)
        app_a = create_app(settings)
        async with serve_app(app_a) as url_a, serve_app(create_app(settings)) as url_b:
            async with caller(url_a) as first:
                assert await first.connect(await first.fetch_twiml())
                await rt.wait_connection()
                second = caller(url_b)
                twiml = await second.fetch_twiml()  # the other instance is full too
                assert twiml.say and "busy" in twiml.say and twiml.hangup and not twiml.stream_url
                await first.stop()
                await app_a.state.manager.wait_idle(timeout=5)  # the call ended and released its slot
            third = caller(url_b)
            twiml = await third.fetch_twiml()  # the slot came back
            assert twiml.stream_url


async def test_drain_stops_new_calls_then_ends_active_ones_with_goodbye() -> None:
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    async with FakeRealtimeServer(responses=[Say("Hello.", audio_ms=500)]) as rt, rest.serve() as rest_url:
        app = create_app(relay_settings(rt, twilio_api_base_url=rest_url))
        async with serve_app(app) as url, caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            await rt.wait_connection()
            await call.wait_for_media()  # the greeting reached the caller: the call's session runs
            drain = asyncio.create_task(app.state.manager.drain(grace=0.5))
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/ready")).status_code == 503
            refused = await caller(url).fetch_twiml()
            assert refused.say and "restarting" in refused.say and refused.hangup
            assert await drain == 1  # the call did not end by itself within the grace period
            update = await rest.wait_update()
            assert "restarting" in (update.twiml or "") and "<Hangup" in (update.twiml or "")
            await call.wait_closed()
        record = await app.state.store.get(call.call_sid)
    assert record["status"] == "ended"


async def test_max_call_duration_ends_the_call_with_a_goodbye() -> None:
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    async with FakeRealtimeServer(responses=[Say("Hello.", audio_ms=300)]) as rt, rest.serve() as rest_url:
        app = create_app(relay_settings(rt, twilio_api_base_url=rest_url, max_call_duration=1.0))
        async with serve_app(app) as url, caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            update = await rest.wait_update(timeout=5)
            assert "time limit" in (update.twiml or "") and "<Hangup" in (update.twiml or "")
            await call.wait_closed(timeout=5)
        await app.state.manager.wait_idle(timeout=5)
        record = await app.state.store.get(call.call_sid)
    assert record["outcome"] == "max_duration"
