"""Redis outages at every stage of a call, over real sockets and a real redis-server (killed, hung
with SIGSTOP, restarted on the same port): the webhook still answers <Connect><Stream> within 3 s,
the caller hears the agent, the record catches up once Redis is back, /ready keeps the instance in
service, and a crashed instance's calls are marked lost when their slots expire."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.testing.realtime import FakeConnection, FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from tests.conftest import make_settings
from tests.redis_server import RedisServer, redis_server, wait_for_record  # noqa: F401
from tests.rig import all_audio, speak, twilio_caller
from tests.test_cli import relay_serve

WEBHOOK_BUDGET_S = 3.0  # the bound for /incoming-call whatever Redis does
CATCH_UP_BUDGET_S = 3.0  # a record complete in Redis after Redis is back (measured: README)
LAPSED = "the call's slot had lapsed; taking it again"
GREETING = Say("Hello, how can I help?", audio_ms=300)
ANSWER = Say("It is sunny in Oslo today.", audio_ms=400)


def relay_settings(rt: FakeRealtimeServer, redis: RedisServer, **kw: Any):
    return make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url, redis_url=redis.url, **kw)


async def break_redis(server: RedisServer, fault: str) -> None:
    await (server.kill() if fault == "killed" else server.freeze())


async def mend_redis(server: RedisServer, fault: str) -> None:
    await (server.restart() if fault == "killed" else server.thaw())


async def timed_twiml(call: FakeTwilioCall) -> tuple[Any, float]:
    started = time.monotonic()
    twiml = await call.fetch_twiml()
    return twiml, time.monotonic() - started


async def greeted(call: FakeTwilioCall, rt: FakeRealtimeServer) -> FakeConnection:
    conn = await rt.wait_connection()
    await conn.wait_for("response.done")
    await call.wait_for_media(min_bytes=GREETING.audio_ms * 8)
    await call.wait_playback_idle()
    return conn


async def asks_and_is_answered(call: FakeTwilioCall, conn: FakeConnection) -> None:
    await speak(call)
    await conn.wait_for("response.done", n=2)
    await call.wait_for_media(min_bytes=(GREETING.audio_ms + ANSWER.audio_ms) * 8)
    await call.wait_playback_idle()
    assert call.received_audio == all_audio(conn)  # every byte the agent said reached the caller


def ended(record: dict[str, Any] | None) -> bool:
    return record is not None and record["status"] == "ended"


def assert_whole_record(record: dict[str, Any] | None) -> None:
    assert record is not None
    assert (record["status"], record["outcome"], record["provider"], record["mode"]) == (
        "ended",
        "twilio_stop",
        "openai",
        "realtime",
    )
    assert record["from"] and record["to"] and record["stream_sid"]  # the webhook's write and the stream's
    said = [turn["text"] for turn in record["transcript"] if turn["role"] == "assistant"]
    assert said == [GREETING.text, ANSWER.text]
    assert [turn["role"] for turn in record["transcript"]].count("user") == 1
    stamps = [turn["ts"] for turn in record["transcript"]]
    assert stamps == sorted(stamps) and stamps[-1] < record["ended_at"]  # when said, not when stored


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_a_call_during_an_outage_is_served_and_its_record_catches_up(
    fault: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async with FakeRealtimeServer(responses=[GREETING, ANSWER]) as rt:
        app = create_app(relay_settings(rt, redis_server))
        async with serve_app(app) as url, twilio_caller(url) as call:
            await break_redis(redis_server, fault)
            twiml, webhook_s = await timed_twiml(call)
            assert twiml.status_code == 200 and twiml.stream_url, twiml.body
            assert webhook_s < WEBHOOK_BUDGET_S
            assert await call.connect(twiml)
            conn = await greeted(call, rt)
            await asks_and_is_answered(call, conn)
            await call.stop()
            await app.state.manager.wait_idle(timeout=5)
            assert app.state.manager.outbox.pending > 0  # the record waits for Redis, the call did not

            await mend_redis(redis_server, fault)
            back = time.monotonic()
            record = await wait_for_record(redis_server, call.call_sid, ended, timeout=CATCH_UP_BUDGET_S)
            assert time.monotonic() - back < CATCH_UP_BUDGET_S
            metrics = app.state.metrics.registry
    assert_whole_record(record)
    assert metrics.get_sample_value("relay_calls_admitted_fail_open_total") == 1
    assert metrics.get_sample_value("relay_store_dropped_total") == 0
    assert metrics.get_sample_value("relay_store_up") == 1


@pytest.mark.slow
async def test_redis_restarted_mid_call(redis_server: RedisServer) -> None:  # noqa: F811
    async with FakeRealtimeServer(responses=[GREETING, ANSWER]) as rt:
        app = create_app(relay_settings(rt, redis_server))
        async with serve_app(app) as url, twilio_caller(url) as call:
            await redis_server.kill()
            twiml, webhook_s = await timed_twiml(call)
            assert twiml.stream_url and webhook_s < WEBHOOK_BUDGET_S
            assert await call.connect(twiml)
            conn = await greeted(call, rt)
            await redis_server.restart()  # same port, empty: every write so far is still queued
            await asks_and_is_answered(call, conn)
            await call.stop()
            record = await wait_for_record(redis_server, call.call_sid, ended, timeout=CATCH_UP_BUDGET_S)
    assert_whole_record(record)


@pytest.mark.slow
async def test_redis_hung_mid_call_costs_the_caller_nothing(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeRealtimeServer(responses=[GREETING, ANSWER]) as rt:
        app = create_app(relay_settings(rt, redis_server))
        async with serve_app(app) as url, twilio_caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            conn = await greeted(call, rt)
            await redis_server.freeze()
            await asks_and_is_answered(call, conn)
            await call.stop()
            await app.state.manager.wait_idle(timeout=5)
            await redis_server.thaw()
            record = await wait_for_record(redis_server, call.call_sid, ended, timeout=CATCH_UP_BUDGET_S)
    assert_whole_record(record)  # no turn twice, though Redis ran requests it had held
    assert caplog.text.count("call store unreachable") == 1
    assert caplog.text.count("call store reachable again") == 1


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose TCP handshake never completes (its listen queue is full and nobody accepts), like
    a Redis host that drops packets: a connect waits for its timeout."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port


async def test_a_redis_that_never_completes_the_handshake_costs_the_webhook_half_a_second() -> None:
    with unanswered_port() as port:
        async with FakeRealtimeServer(responses=[GREETING]) as rt:
            settings = make_settings(
                relay_mode="realtime",
                openai_base_url=rt.openai_base_url,
                redis_url=f"redis://127.0.0.1:{port}/0",
            )
            async with serve_app(create_app(settings)) as url, twilio_caller(url) as call:
                twiml, webhook_s = await timed_twiml(call)
                assert twiml.stream_url and webhook_s < 1.5  # the limiter's 0.5 s deadline covers connecting
                assert await call.connect(twiml)
                await greeted(call, rt)
                async with httpx.AsyncClient(base_url=url) as client:
                    started = time.monotonic()
                    ready = await client.get("/ready")
                    assert time.monotonic() - started < 1.0
                assert ready.status_code == 200 and ready.json()["store"] == "degraded"
                await call.stop()


@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_ready_reports_a_degraded_store_and_keeps_the_instance_in_service(
    fault: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    app = create_app(make_settings(redis_url=redis_server.url))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/ready")).json()["store"] == "ok"
        await break_redis(redis_server, fault)
        started = time.monotonic()
        degraded = await client.get("/ready")
        ready_s = time.monotonic() - started
        await app.state.manager.drain(grace=0)  # no calls: returns at once
        draining = await client.get("/ready")
        await mend_redis(redis_server, fault)
        again = await client.get("/ready")
    assert degraded.status_code == 200 and ready_s < 1.0
    assert degraded.json() == {"status": "ready", "store": "degraded", "active_calls": 0, "pending_writes": 0}
    assert draining.status_code == 503 and draining.json()["problems"] == ["draining"]
    assert again.json()["store"] == "ok"


@pytest.mark.slow
async def test_a_crashed_instance_calls_are_marked_lost_when_their_slots_expire(
    tmp_path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async with FakeRealtimeServer(responses=[Say("Hello, I keep talking.", audio_ms=5000)]) as rt:
        env = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": rt.openai_base_url,
            "RELAY_MODE": "realtime",
            "REDIS_URL": redis_server.url,
            "CALL_SLOT_TTL": "1",
        }
        survivors = [create_app(relay_settings(rt, redis_server, call_slot_ttl=1.0)) for _ in range(2)]
        async with relay_serve(tmp_path, **env) as doomed:
            caller = FakeTwilioCall(
                base_url=doomed.url, auth_token="cli-token", public_url="https://relay.example.com"
            )
            async with caller as call:
                assert await call.connect(await call.fetch_twiml())
                await call.wait_for_media(min_bytes=800)
                live = await wait_for_record(
                    redis_server, call.call_sid, lambda r: bool(r and r["stream_sid"])
                )
                assert live is not None and live["status"] == "in-progress"
                doomed.proc.send_signal(signal.SIGKILL)  # no drain, no release: its slot is left to expire
                await doomed.proc.wait()
                killed = time.monotonic()
                async with serve_app(survivors[0]), serve_app(survivors[1]):
                    record = await wait_for_record(redis_server, call.call_sid, ended, timeout=5)
                    lost_after = time.monotonic() - killed
                    await survivors[0].state.manager.limiter.sweep()  # later sweeps mark nothing more
    assert record is not None and (record["outcome"], record["from"]) == ("lost", live["from"])
    assert record["ended_at"] > live["started_at"]
    assert lost_after < 1.0 + 1.0  # the slot's TTL, then a sweep (every TTL/3) by a survivor
    marked = [app.state.metrics.registry.get_sample_value("relay_calls_lost_total") for app in survivors]
    assert sorted(marked) == [0, 1]  # exactly once, by one survivor


@pytest.mark.slow
async def test_a_live_call_marked_lost_while_redis_was_hung_is_set_back_in_progress(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeRealtimeServer(responses=[GREETING, ANSWER]) as rt:
        app = create_app(relay_settings(rt, redis_server, call_slot_ttl=1.0))
        async with serve_app(app) as url, twilio_caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            conn = await greeted(call, rt)
            await wait_for_record(redis_server, call.call_sid, lambda r: bool(r and r["stream_sid"]))
            await redis_server.freeze()
            await asks_and_is_answered(call, conn)  # longer than the 1 s slot TTL: the slot expires
            await call.send_silence(500)
            # The first script to run marks the call lost: a sweep, the keeper's refresh, or one
            # that Redis held during the freeze (whose answer nobody reads, so no metric counts it).
            await redis_server.thaw()
            back = await wait_for_record(
                redis_server,
                call.call_sid,
                lambda r: r is not None and r["status"] == "in-progress" and LAPSED in caplog.text,
            )
            await call.stop()
            record = await wait_for_record(redis_server, call.call_sid, ended, timeout=CATCH_UP_BUDGET_S)
    assert back is not None and back["outcome"] == "" and back["ended_at"] is None
    assert_whole_record(record)


@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_an_admin_read_of_a_record_during_an_outage_is_a_clear_503(
    fault: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    call_sid = "CA" + "ab" * 16
    app = create_app(make_settings(redis_url=redis_server.url, relay_admin_token="admin-secret"))
    auth = {"Authorization": "Bearer admin-secret"}
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, headers=auth) as client:
        assert (await client.get(f"/calls/{call_sid}")).status_code == 404
        await break_redis(redis_server, fault)
        started = time.monotonic()
        refused = await client.get(f"/calls/{call_sid}")
        refused_s = time.monotonic() - started
        await mend_redis(redis_server, fault)
        again = await client.get(f"/calls/{call_sid}")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert "REDIS_URL" in refused.json()["error"] and refused_s < 3.0
    assert again.status_code == 404  # served again once Redis is back
