"""Replayed streams and webhooks, injected for real: the exact upgrade and `start` of a live call
replayed by a second fake Twilio caller, a signed `/incoming-call` replayed N times. One stream per
call SID, one use per stream token, one early provider connection per call. Real sockets: fake
Twilio -> relay (uvicorn) -> fake Realtime."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as aioredis

from relay.app import create_app
from relay.testing.audio import silence_ulaw, tone_ulaw
from relay.testing.realtime import FakeConnection, FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from relay.testing.twilio_twiml import Twiml
from tests.conftest import AUTH_TOKEN, make_settings
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.rig import PUBLIC_URL, all_audio, rig, speak, twilio_caller
from webhooks.replay import MemoryLedger, StreamRefusal
from webhooks.token import mint_stream_token

GREETING = Say("Hello, how can I help?", audio_ms=400)
ANSWER = Say("Sure, one moment.", audio_ms=400)
CALLER_SPEECH = tone_ulaw(500, 400, 0.6) + silence_ulaw(700)  # what `speak` sends


def replay_of(call: FakeTwilioCall, url: str) -> FakeTwilioCall:
    """A second Twilio client with the call's exact identity: the same signed upgrade (the signature
    covers only the URL) and the same `start` (SIDs, account, custom parameters, token)."""
    return FakeTwilioCall(
        base_url=url,
        auth_token=AUTH_TOKEN,
        public_url=PUBLIC_URL,
        call_sid=call.call_sid,
        account_sid=call.account_sid,
        from_=call.from_,
        to=call.to,
        stream_sid=call.stream_sid,
    )


async def replay_stream(
    call: FakeTwilioCall, url: str, twiml: Twiml, parameters: dict[str, str] | None = None
) -> FakeTwilioCall:
    """Replays the call's stream with `twiml`'s token (or `parameters`), sends audio the provider
    must never get, and returns the replay once the relay has closed it."""
    async with replay_of(call, url) as dup:
        await dup.connect(twiml, parameters=parameters)
        await dup.send_audio(tone_ulaw(900, 200, 0.6), realtime=False)
        await dup.wait_closed()
    return dup


def said(record: dict) -> list[str]:
    return [t["text"] for t in record["transcript"] if t["role"] == "assistant"]


def rejected(app, reason: str) -> float:
    value = app.state.metrics.registry.get_sample_value("relay_calls_rejected_total", {"reason": reason})
    return value or 0.0


def preconnects(app, outcome: str) -> float:
    return app.state.metrics.registry.get_sample_value("relay_preconnects_total", {"outcome": outcome}) or 0.0


async def the_call_goes_on(call: FakeTwilioCall, conn: FakeConnection) -> None:
    """Both ways: the caller's next words reach the provider, and its answer reaches the caller."""
    await call.wait_playback_idle(timeout=5, min_bytes=GREETING.audio_ms * 8)  # heard the greeting whole
    await speak(call)
    await conn.wait_for("response.done", n=2)
    await call.wait_playback_idle(timeout=5, min_bytes=conn.audio_sent_bytes)
    assert call.received_audio == all_audio(conn)
    await conn.wait_for("input_audio_buffer.append", n=len(CALLER_SPEECH) // 160, direction="received")
    assert bytes(conn.audio_in) == CALLER_SPEECH  # the replay's audio never reached the provider


async def test_a_second_stream_for_a_live_call_is_refused_and_the_first_goes_on(caplog) -> None:
    async with rig("openai-ga", responses=[GREETING, ANSWER]) as r, r.caller() as call:
        twiml = await call.fetch_twiml()
        assert await call.connect(twiml)
        conn = await r.server.wait_connection()
        await conn.wait_for("response.done")
        await call.wait_for_media(min_bytes=GREETING.audio_ms * 8)
        run = r.app.state.manager.active[call.call_sid]

        dup = await replay_stream(call, r.url, twiml)
        assert (dup.close_code, dup.close_reason) == (1008, "call already has a stream")
        assert dup.received_audio == b"" and dup.closed_by_relay
        assert len(r.server.connections) == 1  # no provider was contacted for the replay
        assert r.app.state.manager.active == {call.call_sid: run}  # the first call's run, not replaced
        assert rejected(r.app, "duplicate_stream") == 1

        await the_call_goes_on(call, conn)
        await call.stop()
        await conn.closed.wait()
        await r.app.state.manager.wait_idle(5)
    record = await r.app.state.store.get(call.call_sid)
    assert record["stream_sid"] == call.stream_sid and record["status"] == "ended"
    assert (record["from"], record["to"]) == (call.from_, call.to)
    assert said(record) == [GREETING.text, ANSWER.text]
    warnings = [rec for rec in caplog.records if "second Media Stream" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert call.call_sid in warnings[0].getMessage() and warnings[0].call_sid == call.call_sid


async def test_a_token_is_refused_the_second_time_even_after_its_stream_ended() -> None:
    async with rig("openai-ga", responses=[GREETING]) as r, r.caller() as call:
        twiml = await call.fetch_twiml()
        assert await call.connect(twiml)
        conn = await r.server.wait_connection()
        await call.wait_for_media(min_bytes=GREETING.audio_ms * 8)
        await call.stop()
        await conn.closed.wait()
        await r.app.state.manager.wait_idle(5)
        before = await r.app.state.store.get(call.call_sid)

        dup = await replay_stream(call, r.url, twiml)
        assert (dup.close_code, dup.close_reason) == (1008, "stream token already used")
        assert dup.received_audio == b""
        assert len(r.server.connections) == 1 and not r.app.state.manager.active
        assert rejected(r.app, "replayed_token") == 1
        assert await r.app.state.store.get(call.call_sid) == before  # the record is untouched


async def test_a_replayed_webhook_opens_one_early_connection_and_gets_no_token_once_streamed() -> None:
    async with rig("openai-ga", responses=[GREETING, ANSWER]) as r, r.caller() as call:
        n = 5
        async with asyncio.TaskGroup() as tg:  # Twilio's webhook, and 4 replays of it at once
            fetches = [tg.create_task(call.fetch_twiml()) for _ in range(n)]
        answers = [f.result() for f in fetches]
        assert all(a.status_code == 200 and a.stream_url for a in answers)  # no stream yet: tokens
        early = await r.server.wait_connection()
        assert preconnects(r.app, "repeated") == n - 1

        assert await call.connect(answers[0])
        await call.wait_for_media(min_bytes=GREETING.audio_ms * 8)
        while_live = await call.fetch_twiml()  # the stream runs: no new token
        assert while_live.status_code == 200 and while_live.stream_url is None
        assert while_live.say and while_live.hangup and "token" not in while_live.body
        # another replay's token (minted before the stream started) cannot open a second stream
        dup = await replay_stream(call, r.url, answers[1])
        assert (dup.close_code, dup.close_reason) == (1008, "call already has a stream")

        await the_call_goes_on(call, early)
        await call.stop()
        await early.closed.wait()
        await r.app.state.manager.wait_idle(5)

        after = await call.fetch_twiml()
        assert after.status_code == 200 and after.stream_url is None and after.hangup
        # a token no stream used, as a replay a few seconds after the first webhook got it
        unused = mint_stream_token(call.call_sid, r.app.state.settings, now=time.time() + 3)
        assert unused != answers[0].parameters["token"]
        late = await replay_stream(call, r.url, answers[0], {**answers[0].parameters, "token": unused})
        assert (late.close_code, late.close_reason) == (1008, "call already had its stream")
        assert len(r.server.connections) == 1  # exactly one provider connection for the call
        assert rejected(r.app, "replayed_webhook") == 2 and rejected(r.app, "call_had_stream") == 1
        record = await r.app.state.store.get(call.call_sid)
    assert record["status"] == "ended" and (record["from"], record["to"]) == (call.from_, call.to)
    assert said(record) == [GREETING.text, ANSWER.text]


async def two_streams_at_once(**extra: str) -> None:
    """Twilio's stream and a replay of it started at the same moment: one provider session.

    With Redis the token's check awaits a round trip, so the second stream's `start` is read while
    the first one's check is in flight. The call SID is claimed before that await: one of the two
    (whichever the relay reads first) runs and the other is refused."""
    async with FakeRealtimeServer(responses=[GREETING]) as rt:
        app = create_app(make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url, **extra))
        async with serve_app(app) as url, twilio_caller(url) as call, replay_of(call, url) as twin:
            twiml = await call.fetch_twiml()
            conn = await rt.wait_connection()
            async with asyncio.TaskGroup() as tg:
                for stream in (call, twin):
                    tg.create_task(stream.connect(twiml))
            closing = [asyncio.create_task(stream.wait_closed()) for stream in (call, twin)]
            await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
            for task in closing:
                task.cancel()
            await asyncio.wait(closing)
            refused, served = (call, twin) if call.close_code is not None else (twin, call)
            assert (refused.close_code, refused.close_reason) == (1008, "call already has a stream")
            await served.wait_playback_idle(timeout=5, min_bytes=GREETING.audio_ms * 8)
            assert served.received_audio == all_audio(conn) and refused.received_audio == b""
            assert len(rt.connections) == 1 and len(app.state.manager.active) == 1


async def test_two_streams_started_at_once_for_one_call_get_one_provider_session() -> None:
    await two_streams_at_once()


async def test_two_streams_started_at_once_with_redis_get_one_provider_session(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    await two_streams_at_once(redis_url=redis_server.url)


# --- the in-memory ledger on its own (sans-I/O, an injected clock) --------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_memory_ledger_uses_a_token_once_and_forgets_it_when_it_expires() -> None:
    clock = Clock()
    ledger = MemoryLedger(clock=clock, remember_calls_s=100)
    assert ledger.consume_now("tok-a", "CA1", expires_at=1_060) is None
    assert ledger.consume_now("tok-a", "CA1", expires_at=1_060) is StreamRefusal.REPLAYED_TOKEN
    assert ledger.consume_now("tok-b", "CA1", expires_at=1_060) is StreamRefusal.CALL_HAD_STREAM
    assert ledger.knows_call("CA1") and not ledger.knows_call("CA2")
    clock.now = 1_061  # both tokens expired: pruned at the next use
    assert ledger.consume_now("tok-c", "CA2", expires_at=1_121) is None
    assert len(ledger) == 1
    clock.now = 1_101  # CA1 forgotten after remember_calls_s, CA2 still known
    assert not ledger.knows_call("CA1") and ledger.knows_call("CA2")


def test_memory_ledger_is_bounded() -> None:
    ledger = MemoryLedger(max_entries=3, clock=Clock())
    for i in range(10):
        assert ledger.consume_now(f"tok-{i}", f"CA{i}", expires_at=2_000) is None
    assert len(ledger) == 3
    assert ledger.consume_now("tok-9", "CA9", expires_at=2_000) is StreamRefusal.REPLAYED_TOKEN
    assert not ledger.knows_call("CA0") and ledger.knows_call("CA9")


@pytest.mark.parametrize("sids", [["CA1", "CA1"], ["CA1", "CA2"]])
async def test_gate_claims_one_live_stream_per_call(sids: list[str]) -> None:
    from webhooks.replay import StreamGate

    gate = StreamGate(MemoryLedger())
    first = await gate.admit("tok-1", sids[0], 2e9)
    second = await gate.admit("tok-2", sids[1], 2e9)
    assert first is None
    assert second is (StreamRefusal.DUPLICATE_STREAM if sids[0] == sids[1] else None)
    gate.release(sids[0])
    assert sids[0] not in gate.live and await gate.had_stream(sids[0])


# --- with Redis: the ledger shared by every instance, and what an outage costs ----------------------


def fallbacks(app) -> float:
    return app.state.metrics.registry.get_sample_value("relay_replay_check_fallbacks_total") or 0.0


def redis_settings(rt: FakeRealtimeServer, redis: RedisServer):
    return make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url, redis_url=redis.url)


async def test_with_redis_a_stream_accepted_by_one_instance_is_refused_by_another(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async with FakeRealtimeServer(responses=[GREETING, ANSWER]) as rt:
        settings = redis_settings(rt, redis_server)
        here, there = create_app(settings), create_app(settings)
        async with (
            serve_app(here) as url_here,
            serve_app(there) as url_there,
            twilio_caller(url_here) as call,
        ):
            twiml = await call.fetch_twiml()
            assert await call.connect(twiml)
            conn = await rt.wait_connection()
            await call.wait_for_media(min_bytes=GREETING.audio_ms * 8)

            dup = await replay_stream(call, url_there, twiml)  # the replay reaches another instance
            assert (dup.close_code, dup.close_reason) == (1008, "stream token already used")
            assert dup.received_audio == b""
            replayed = await replay_of(call, url_there).fetch_twiml()
            assert replayed.status_code == 200 and replayed.stream_url is None and replayed.hangup
            assert len(rt.connections) == 1 and not there.state.manager.active
            assert rejected(there, "replayed_token") == 1 and rejected(there, "replayed_webhook") == 1

            await the_call_goes_on(call, conn)
            await call.stop()
            await here.state.manager.wait_idle(5)
            assert fallbacks(here) == fallbacks(there) == 0
            record = await here.state.store.get(call.call_sid)
            assert record["status"] == "ended" and said(record) == [GREETING.text, ANSWER.text]

            client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                keys = await client.keys("relay:stream-token:*")
                assert len(keys) == 1 and twiml.parameters["token"] not in keys[0]  # a digest, not the token
                assert 0 < await client.ttl(keys[0]) <= settings.stream_token_ttl + 1
                assert await client.exists(f"relay:stream-call:{call.call_sid}")
            finally:
                await client.aclose()


@pytest.mark.parametrize("outage", ["killed", "hung"])
async def test_a_redis_outage_costs_no_call_and_the_instance_still_refuses_replays(
    redis_server: RedisServer,  # noqa: F811
    outage: str,
) -> None:
    async with FakeRealtimeServer(responses=[GREETING, ANSWER]) as rt:
        app = create_app(redis_settings(rt, redis_server))
        async with serve_app(app) as url, twilio_caller(url) as call:
            twiml = await call.fetch_twiml()  # Redis up: admitted, the early connection opens
            conn = await rt.wait_connection()
            await (redis_server.kill() if outage == "killed" else redis_server.freeze())

            assert await call.connect(twiml)
            await call.wait_for_media(min_bytes=GREETING.audio_ms * 8)
            assert call.first_media_received_at is not None and call.started_at is not None
            waited = call.first_media_received_at - call.started_at
            assert waited < 0.9, f"the greeting waited {waited:.3f} s for Redis"
            assert fallbacks(app) >= 1

            dup = await replay_stream(call, url, twiml)
            assert (dup.close_code, dup.close_reason) == (1008, "call already has a stream")
            replayed = await replay_of(call, url).fetch_twiml()  # this instance remembers the call
            assert replayed.stream_url is None and replayed.hangup
            await the_call_goes_on(call, conn)
            if outage == "hung":
                await redis_server.thaw()  # the call's record writes may go on
            await call.stop()
            await app.state.manager.wait_idle(10)

            late = await replay_stream(call, url, twiml)
            assert (late.close_code, late.close_reason) == (1008, "stream token already used")
            assert len(rt.connections) == 1
