"""REALTIME_PRECONNECT: the realtime connection is opened during `/incoming-call`, handed to the
call's stream by call SID, and closed when no stream comes (another instance took it, or the
caller hung up first). Real sockets: fake Twilio → relay → fake Realtime."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from relay.app import create_app
from relay.sessions.early import EarlyConnections
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.transport.provider import ProviderSocket
from relay.transport.provider import connect as connect_provider
from tests.conftest import make_settings
from tests.rig import twilio_caller


def settings_for(rt: FakeRealtimeServer, **kw):
    return make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url, **kw)


def preconnects(app, outcome: str) -> float:
    return app.state.metrics.registry.get_sample_value("relay_preconnects_total", {"outcome": outcome}) or 0.0


async def test_the_webhook_opens_the_connection_and_the_stream_uses_it() -> None:
    async with FakeRealtimeServer(responses=[Say("Hello there.", audio_ms=400)]) as rt:
        app = create_app(settings_for(rt))
        async with serve_app(app) as url, twilio_caller(url) as call:
            twiml = await call.fetch_twiml()
            conn = await rt.wait_connection()  # open before any stream exists
            # REALTIME_EARLY_GREETING: configured, and the greeting asked for and spoken, before the
            # stream starts; it waits in the socket until the call's session reads it.
            await conn.wait_for("session.update")
            await conn.wait_for("response.create")
            await conn.wait_for("response.done")
            assert await call.connect(twiml)
            await call.wait_for_media(min_bytes=400 * 8)
            (greeting,) = conn.audio_sent.values()
            assert call.received_audio == bytes(greeting)  # all of it, in order, once
            assert len(rt.connections) == 1
            assert preconnects(app, "used") == 1
            await call.send_silence(200)  # the session goes on as usual: audio reaches the provider
            await conn.wait_for("input_audio_buffer.append", n=10)
            await call.stop()
            await conn.closed.wait()
            # configured and greeted once: the session did not repeat what the early socket sent
            assert len(conn.events("session.update")) == 1
            assert len(conn.events("response.create")) == 1
            assert conn.active_response_conflicts == 0 and not conn.invalid_events


async def test_without_the_early_greeting_the_session_is_configured_at_stream_start() -> None:
    async with FakeRealtimeServer(responses=[Say("Hello there.", audio_ms=400)]) as rt:
        app = create_app(settings_for(rt, realtime_early_greeting=False))
        async with serve_app(app) as url, twilio_caller(url) as call:
            twiml = await call.fetch_twiml()
            conn = await rt.wait_connection()
            connecting_at = time.monotonic()  # the fake stamps events with this clock
            assert await call.connect(twiml)
            await conn.wait_for("response.create")
            # the early socket got its first event only once the stream was on its way
            assert conn.received[0][0] >= connecting_at
            await call.wait_for_media(min_bytes=400 * 8)
            assert len(conn.events("session.update")) == 1 and len(conn.events("response.create")) == 1
            assert preconnects(app, "used") == 1


async def test_off_connects_at_stream_start() -> None:
    async with FakeRealtimeServer(responses=[Say("Hello there.", audio_ms=200)]) as rt:
        app = create_app(settings_for(rt, realtime_preconnect=False))
        async with serve_app(app) as url, twilio_caller(url) as call:
            twiml = await call.fetch_twiml()
            assert app.state.manager.early_connections is None
            assert await call.connect(twiml)
            conn = await rt.wait_connection()
            await conn.wait_for("response.create")
            await call.wait_for_media(min_bytes=200 * 8)
            assert len(rt.connections) == 1
            assert preconnects(app, "used") == 0


async def test_unused_connection_is_closed_when_no_stream_comes() -> None:
    # The stream went to another instance behind the load balancer: that one connects by itself,
    # and this one closes its early connection once the stream token has expired.
    async with FakeRealtimeServer(responses=[Say("Hello there.", audio_ms=200)]) as rt:
        settings = settings_for(rt, stream_token_ttl=1.0)
        here, there = create_app(settings), create_app(settings)
        async with serve_app(here) as url_here, serve_app(there) as url_there:
            call = twilio_caller(url_here)
            twiml = await call.fetch_twiml()
            early = await rt.wait_connection()
            call.base_url = url_there  # the load balancer sends the stream elsewhere
            async with call:
                assert await call.connect(twiml)
                used = await rt.wait_connection(n=2)
                await used.wait_for("response.create")
                async with asyncio.timeout(5):
                    await early.closed.wait()
                # the cost of REALTIME_EARLY_GREETING behind such a load balancer: a greeting asked
                # for in vain
                assert len(early.events("response.create")) == 1
                assert preconnects(here, "expired") == 1 and preconnects(there, "used") == 0
                assert len(here.state.manager.early_connections) == 0
                await used.wait_for("response.done")
                (greeting,) = used.audio_sent.values()
                await call.wait_for_media(min_bytes=len(greeting))
                assert call.received_audio == bytes(greeting)  # from the connection in use only


async def test_early_connection_dropped_before_the_stream_is_replaced() -> None:
    async with FakeRealtimeServer(responses=[Say("Hello there.", audio_ms=200)]) as rt:
        app = create_app(settings_for(rt))
        async with serve_app(app) as url, twilio_caller(url) as call:
            twiml = await call.fetch_twiml()
            early = await rt.wait_connection()
            await early.wait_for("response.create")
            await early.drop()  # before its greeting reached anyone
            assert await call.connect(twiml)
            conn = await rt.wait_connection(n=2)
            await conn.wait_for("session.update")
            await conn.wait_for("response.create")  # the new connection greets by itself
            await conn.wait_for("response.done")
            (greeting,) = conn.audio_sent.values()
            await call.wait_for_media(min_bytes=len(greeting))
            assert call.received_audio == bytes(greeting)


async def test_a_rejected_key_surfaces_at_stream_start_with_its_cause(caplog) -> None:
    async with FakeRealtimeServer(api_key="sk-right") as rt:
        app = create_app(settings_for(rt, openai_api_key="sk-wrong"))
        async with serve_app(app) as url, twilio_caller(url) as call:
            twiml = await call.fetch_twiml()
            assert await call.connect(twiml)
            await call.wait_closed()
        assert preconnects(app, "failed") == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "401" in r.getMessage()]
    assert errors and errors[0].call_sid == call.call_sid


async def test_shutdown_closes_waiting_connections() -> None:
    async with FakeRealtimeServer() as rt:
        app = create_app(settings_for(rt))
        async with serve_app(app) as url:
            await twilio_caller(url).fetch_twiml()
            early = await rt.wait_connection()
            assert len(app.state.manager.early_connections) == 1
        async with asyncio.timeout(5):
            await early.closed.wait()


# --- the early connections on their own, against the fake over a real socket ------------------------------


def connector(rt: FakeRealtimeServer):
    url = f"{rt.url}/v1/realtime?model=gpt-realtime"

    async def connect(call_sid: str) -> ProviderSocket:
        headers = {"Authorization": "Bearer sk-test"}
        return await connect_provider(url, headers=headers, open_timeout=5, user_agent="test")

    return connect


async def test_bounded_one_per_call_and_expiring() -> None:
    async with FakeRealtimeServer() as rt:
        outcomes: list[str] = []
        pre = EarlyConnections(connector(rt), limit=2, ttl=0.3, remember=60)
        pre.on_outcome = outcomes.append
        assert pre.start("CA1") and pre.start("CA2")
        assert not pre.start("CA1") and outcomes == ["repeated"]  # one per call
        assert not pre.start("CA3") and outcomes == ["repeated", "full"]  # the bound
        task = pre.take("CA1")
        assert task is not None and pre.take("CA1") is None
        assert not pre.start("CA1")  # taken: still one per call (a replayed webhook)
        conn = await task
        assert conn.open
        expired = await rt.wait_connection(n=2)
        async with asyncio.timeout(5):
            await expired.closed.wait()  # CA2's stream never came
        assert not pre.start("CA2")  # expired: still remembered
        assert outcomes == ["repeated", "full", "used", "repeated", "expired", "repeated"] and len(pre) == 0
        assert len(rt.connections) == 2
        await conn.close()
        assert not conn.open
        await pre.aclose()


async def test_a_failed_early_connect_is_counted_and_raises_when_taken() -> None:
    async with FakeRealtimeServer(api_key="sk-other") as rt:
        outcomes: list[str] = []
        pre = EarlyConnections(connector(rt), limit=5)
        pre.on_outcome = outcomes.append
        pre.start("CA1")
        task = pre.take("CA1")
        assert task is not None
        with pytest.raises(websockets.exceptions.InvalidStatus):
            await task
        assert outcomes == ["used", "failed"]
        await pre.aclose()
