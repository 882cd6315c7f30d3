"""The post-call webhook over real sockets: a realtime call ends, the fake receiver
(relay/testing/webhook_receiver.py) gets its record signed; retries with backoff, a final 4xx,
a receiver that hangs while calls go on, and pending deliveries that survive a restart in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from relay.app import create_app
from relay.post_call import DeliveryPolicy, build_payload
from relay.post_call.pending import PENDING_KEY
from relay.testing.realtime import Say
from relay.testing.server import bind_free_port, serve_app
from relay.testing.webhook_receiver import WebhookReceiver
from tests.conftest import make_settings
from tests.redis_server import RedisServer, redis_server
from tests.rig import Rig, rig, speak

__all__ = ["redis_server"]

SECRET = "post-call-test-secret"
FAST = DeliveryPolicy(delays=(0.2, 0.4, 0.8, 1.6, 3.2), timeout=5.0, close_grace_s=0.5)
README = Path(__file__).parent.parent / "README.md"


def hook_settings(url: str, **more: Any) -> dict[str, Any]:
    return {"post_call_webhook_url": url, "post_call_webhook_secret": SECRET, **more}


@contextlib.asynccontextmanager
async def hooked_rig(
    url: str, policy: DeliveryPolicy = FAST, settings: dict[str, Any] | None = None, **kw: Any
) -> AsyncIterator[Rig]:
    """The realtime rig with the webhook pointed at `url` and `policy` for its deliveries."""
    kw.setdefault("responses", [Say("Hi.", audio_ms=300)])
    cfg = hook_settings(url, **(settings or {}))
    async with rig("openai-ga", settings=cfg, post_call_policy=policy, **kw) as r:
        yield r


@contextlib.contextmanager
def log_line(needle: str) -> Iterator[asyncio.Event]:
    """An event set when relay.post_call logs a line containing `needle`."""
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if needle in record.getMessage():
                seen.set()

    handler = Watch()
    logger = logging.getLogger("relay.post_call")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def delivered(app: Any, outcome: str) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "relay_post_call_deliveries_total", {"outcome": outcome}
    )
    return float(value or 0)


async def short_call(r: Rig) -> str:
    """A call that hears its greeting and hangs up; returns its SID."""
    async with r.caller() as call:
        conn = await r.dial(call)
        await conn.wait_for("response.done")
        await call.wait_playback_idle(min_bytes=conn.audio_sent_bytes)
        await call.stop()
    return call.call_sid


async def test_a_finished_call_is_posted_once_signed_with_what_the_caller_heard() -> None:
    receiver = WebhookReceiver(SECRET)
    replies = [Say("Hello, how can I help?", audio_ms=600), Say("It is noon.", audio_ms=400)]
    async with (
        receiver.serve() as url,
        hooked_rig(url, responses=replies, transcripts=["what time is it"]) as r,
        r.caller() as call,
    ):
        conn = await r.dial(call)
        await conn.wait_for("response.done")
        await call.wait_playback_idle(min_bytes=conn.audio_sent_bytes)
        await speak(call)
        await conn.wait_for("response.done", n=2)
        await call.wait_playback_idle(min_bytes=conn.audio_sent_bytes)
        await call.stop()
        [delivery] = await receiver.wait_accepted(1)
        record = await r.app.state.store.get(call.call_sid)
    assert delivered(r.app, "delivered") == 1  # counted once the relay has the answer; read after the stop
    assert len(receiver.requests) == 1 and delivery.verified
    assert delivery.headers["content-type"] == "application/json"
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", delivery.headers["x-relay-signature"])
    payload = delivery.json()
    assert payload["call_sid"] == call.call_sid and payload["direction"] == "inbound"
    assert (payload["from"], payload["to"]) == (call.from_, call.to)
    assert payload["outcome"] == "twilio_stop" == record["outcome"]
    assert payload["started_at"] <= payload["ended_at"]
    said = [(t["role"], t["text"]) for t in payload["transcript"]]
    assert said == [(t["role"], t["text"]) for t in record["transcript"]]
    assert [text for role, text in said if role == "assistant"] == ["Hello, how can I help?", "It is noon."]
    assert ("user", "what time is it") in said
    assert payload["tool_calls"] == [] and payload["fallback"] is None
    assert payload["answered_by"] is None and payload["recording_url"] is None
    assert payload["agent"] == "default" and payload["agents"] == ["default"]  # no AGENTS_FILE
    assert len(payload["response_latencies_ms"]) == 1 and payload["response_latencies_ms"][0] > 0
    assert payload == build_payload(record)


async def test_the_readme_receiver_snippet_verifies_a_real_delivery() -> None:
    section = README.read_text().split("## Post-call webhook", 1)[1].split("\n## ", 1)[0]
    [snippet] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    verify = namespace["verify"]
    receiver = WebhookReceiver(SECRET)
    async with receiver.serve() as url, hooked_rig(url) as r:
        await short_call(r)
        [delivery] = await receiver.wait_accepted(1)
    ts, sig = delivery.headers["x-relay-timestamp"], delivery.headers["x-relay-signature"]
    assert verify(SECRET, ts, sig, delivery.body)
    assert not verify("another-secret", ts, sig, delivery.body)
    assert not verify(SECRET, ts, sig, delivery.body.replace(b"inbound", b"outbound"))
    assert not verify(SECRET, str(int(ts) - 3600), sig, delivery.body)  # stale


async def test_a_failing_receiver_gets_retries_with_backoff_then_one_delivery() -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.fail(503, times=2)
    async with (
        receiver.serve() as url,
        hooked_rig(url) as r,
    ):
        sid = await short_call(r)
        await receiver.wait_accepted(1)
    assert delivered(r.app, "delivered") == 1 and delivered(r.app, "failed") == 0
    first, second, third = receiver.requests
    assert [d.status for d in receiver.requests] == [503, 503, 200]
    assert first.body == second.body == third.body and all(d.verified for d in receiver.requests)
    assert first.json()["call_sid"] == sid
    # the waits between tries grow: at least the policy's first and second delays
    assert second.at - first.at >= FAST.delays[0] and third.at - second.at >= FAST.delays[1]


async def test_a_receiver_that_is_down_then_up_gets_the_delivery_once(caplog) -> None:
    receiver = WebhookReceiver(SECRET)
    sock = bind_free_port()  # bound, nobody listening: connections are refused until serve()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{receiver.path}"
    with log_line("try 1 failed") as refused:
        async with hooked_rig(url) as r:
            sid = await short_call(r)
            await asyncio.wait_for(refused.wait(), 5)
            async with receiver.serve(sock):
                [delivery] = await receiver.wait_accepted(1)
    assert len(receiver.requests) == 1 and delivery.json()["call_sid"] == sid
    assert "ConnectError" in caplog.text


async def test_a_4xx_is_final_logged_and_counted(caplog) -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.fail(400)
    with log_line("refused by the receiver") as refused:
        async with (
            receiver.serve() as url,
            hooked_rig(url) as r,
        ):
            await short_call(r)
            await asyncio.wait_for(refused.wait(), 5)
    # final: no retry was waiting when the relay stopped (it would have been counted as dropped)
    assert delivered(r.app, "rejected") == 1 and delivered(r.app, "dropped") == 0
    assert delivered(r.app, "delivered") == 0
    assert [d.status for d in receiver.requests] == [400]
    assert "HTTP 400" in caplog.text and "not retried" in caplog.text


async def test_a_hanging_receiver_never_delays_the_call_or_its_slot() -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.hang()
    async with (
        receiver.serve() as url,
        hooked_rig(url) as r,
    ):
        manager = r.app.state.manager
        sid = await short_call(r)
        await receiver.wait_requests(1)  # the delivery is in flight, and hangs
        await manager.wait_idle(2.0)  # the call ended and its slot was released meanwhile
        assert not manager.active and await manager.limiter.count() == 0
        assert receiver.requests[0].status == 0 and manager.post_call.pending == 1
        record = await r.app.state.store.get(sid)
        assert record["status"] == "ended"


async def test_a_pending_delivery_survives_a_restart_with_redis(redis_server: RedisServer) -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.fail(503, times=1000)  # failing until told otherwise
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with receiver.serve() as url:
            extra = {"redis_url": redis_server.url}
            slow = DeliveryPolicy(delays=(5.0,) * 5, close_grace_s=0.5)  # stopped while it waits
            async with hooked_rig(url, slow, settings=extra) as r:
                sid = await short_call(r)
                await receiver.wait_requests(1)
            # the first relay stopped while the receiver failed: the delivery waits in Redis
            assert await client.hexists(PENDING_KEY, sid)
            receiver.recover()
            app = create_app(make_settings(**hook_settings(url, **extra)))
            async with serve_app(app):  # a new relay, the same Redis: it resumes the delivery
                [*_, delivery] = await receiver.wait_accepted(1)
            assert delivered(app, "delivered") == 1
        assert len(receiver.accepted) == 1 and delivery.verified
        assert delivery.json()["call_sid"] == sid and delivery.json()["transcript"][0]["text"] == "Hi."
        assert not await client.hexists(PENDING_KEY, sid)
    finally:
        await client.aclose()


def test_the_payload_takes_what_the_record_holds() -> None:
    """An outbound call answered by a machine, recorded, with a fallback: every phase's figures."""
    record = {
        "call_sid": "CA" + "1" * 32,
        "direction": "outbound-api",
        "from": "+15551230000",
        "to": "+15557654321",
        "started_at": 10.0,
        "ended_at": 70.0,
        "outcome": "twilio_stop",
        "answered_by": "machine_end_beep",
        "recording_url": "https://api.twilio.com/recordings/RE1",
        "fallbacks": [{"cause": "unresponsive", "error": "quiet", "at": 30.0}],
        "tools": [{"name": "end_call", "outcome": "ok"}],
        "transcript": [{"role": "assistant", "text": "Hi.", "ts": 11.0, "interrupted": False}],
        "stats": [
            {"first_audio_ms": 300.0, "response_latencies_ms": [500.0], "turn_timings": []},
            {"first_audio_ms": None, "response_latencies_ms": [900.0], "turn_timings": [{"stt_ms": 200.0}]},
        ],
    }
    payload = build_payload(record)
    assert payload["direction"] == "outbound-api" and payload["answered_by"] == "machine_end_beep"
    assert payload["recording_url"] == "https://api.twilio.com/recordings/RE1"
    assert payload["fallback"] == record["fallbacks"] and payload["tool_calls"] == record["tools"]
    assert payload["transcript"] == [{"role": "assistant", "text": "Hi."}]
    assert payload["first_audio_ms"] == 300.0 and payload["response_latencies_ms"] == [500.0, 900.0]
    assert payload["turn_timings"] == [{"stt_ms": 200.0}]
    assert build_payload({"call_sid": "CA" + "2" * 32})["direction"] == "inbound"


async def test_a_try_that_times_out_is_retried() -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.hang(times=1)  # the first try gets no answer at all
    quick = DeliveryPolicy(delays=FAST.delays, timeout=0.5, close_grace_s=0.5)
    with log_line("no answer within 0.5 s") as timed_out:
        async with receiver.serve() as url, hooked_rig(url, quick) as r:
            sid = await short_call(r)
            [*_, delivery] = await receiver.wait_accepted(1)
            assert timed_out.is_set()
    # the hung first request is only answered (503) when the receiver stops, long after the retry
    assert [d.status for d in receiver.requests] == [503, 200] and delivery.json()["call_sid"] == sid
    assert delivered(r.app, "delivered") == 1


async def test_an_agents_calls_go_to_its_own_webhook_url(tmp_path: Path) -> None:
    """With AGENTS_FILE, an agent with `post_call_webhook_url` gets its calls' records there, signed
    with POST_CALL_WEBHOOK_SECRET; the environment's URL gets the other agents' calls."""
    from relay.testing.twilio import FakeTwilioCall
    from tests.conftest import AUTH_TOKEN
    from tests.rig import PUBLIC_URL

    environment, clinic = WebhookReceiver(SECRET), WebhookReceiver(SECRET)
    async with environment.serve() as env_url, clinic.serve() as clinic_url:
        agents = tmp_path / "agents.toml"
        agents.write_text(
            f'[agents.clinic]\nnumbers = ["+15550100001"]\npost_call_webhook_url = "{clinic_url}"\n'
        )
        async with hooked_rig(env_url, settings={"agents_file": str(agents)}) as r:
            default_sid = await short_call(r)  # a random number: the default agent
            call = FakeTwilioCall(
                base_url=r.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, to="+15550100001"
            )
            async with call:
                conn = await r.dial(call)
                await conn.wait_for("response.done")
                await call.stop()
            [to_clinic] = await clinic.wait_accepted(1)
            [to_env] = await environment.wait_accepted(1)
    assert to_clinic.verified and to_clinic.json()["call_sid"] == call.call_sid
    assert to_clinic.json()["agent"] == "clinic"
    assert (
        to_env.verified and to_env.json()["call_sid"] == default_sid and to_env.json()["agent"] == "default"
    )


def test_a_pending_delivery_keeps_its_agents_url_and_reads_entries_without_one() -> None:
    """What Redis keeps of a delivery: an agent's own URL survives a restart; an entry written
    before agents had URLs reads back with none (POST_CALL_WEBHOOK_URL then)."""
    from relay.post_call.pending import Pending

    kept = Pending("CA" + "1" * 32, b'{"a": 1}', 2, "https://clinic.example.com/calls")
    assert Pending.loads(kept.dumps()) == kept
    older = Pending.loads('{"call_sid": "CA' + "2" * 32 + '", "body": null, "tries": 0}')
    assert older.url is None and older.body is None
