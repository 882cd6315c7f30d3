"""A realtime provider that misbehaves without closing: silent from the start, frozen mid-call (its
WebSocket layer still answering pings), sending events of the wrong types, flooding garbage. Each
fault is injected by the fake Realtime server over a real socket; each test asserts what the caller
hears (audio at the fake Twilio caller) and what is stored (the call record, the metrics)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from relay.app import create_app
from relay.errors import ProviderEventError
from relay.sessions.dialects import parse_event
from relay.testing.audio import tone_ulaw
from relay.testing.openai_http import FakeOpenAIHTTP
from relay.testing.openai_replies import Text
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from tests.conftest import make_settings
from tests.rig import all_audio, rig, speak, twilio_caller
from tests.test_cascade_e2e import FallbackRig, say
from tests.test_cli import relay_serve

CLI_PUBLIC_URL = "https://relay.example.com"  # what tests.test_cli.relay_serve sets

# Events the bridge core acts on, each with a field of the wrong type, missing, or null.
WRONG_TYPES: list[dict[str, Any]] = [
    {"type": "response.created", "response": "resp_1"},  # a string where an object is expected
    {"type": "response.created", "response": None},  # null
    {"type": "response.created"},  # missing
    {"type": "response.done", "response": {"id": 5, "status": "completed"}},  # a number for a string
    {"type": "response.done", "response": {"id": "r", "status_details": {"error": "boom"}}},
    {"type": "response.done", "response": ["r"]},
    {"type": "response.output_audio.delta", "item_id": "item_1"},  # no delta
    {"type": "response.output_audio.delta", "delta": None, "item_id": "item_1"},
    {"type": "response.output_audio.delta", "delta": "//8=", "item_id": 7},
    {"type": "response.output_audio.delta", "delta": "//8=", "item_id": "i", "content_index": "0"},
    {"type": "response.output_audio_transcript.delta", "delta": ["words"], "item_id": "item_1"},
    {"type": "response.output_audio_transcript.done", "transcript": 42, "item_id": "item_1"},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": "soon", "item_id": "item_2"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": -5, "item_id": "item_2"},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": True},
    {"type": "conversation.item.input_audio_transcription.completed", "transcript": 123},
    {"type": "response.function_call_arguments.done", "call_id": None, "name": "web_search"},
    {"type": "response.function_call_arguments.done", "call_id": "c", "name": "x", "arguments": {}},
    {"type": "error", "error": "something broke"},
    {"type": None},
    {"type": 17},
]
NOT_EVENTS = [b"not JSON at all {", b"[1, 2, 3]", b'"a string"', b"null", b"\xff\xfe"]


@pytest.mark.parametrize("event", WRONG_TYPES, ids=lambda e: str(e.get("type")))
@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_wrong_types_are_a_parse_error_at_the_edge(event: dict[str, Any], dialect: str) -> None:
    with pytest.raises(ProviderEventError):
        parse_event(orjson.dumps(event), dialect)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", NOT_EVENTS)
def test_frames_that_are_not_events_are_a_parse_error(data: bytes) -> None:
    with pytest.raises(ProviderEventError):
        parse_event(data, "ga")


def test_absent_and_null_optional_fields_take_their_defaults() -> None:
    audio = parse_event(b'{"type":"response.output_audio.delta","delta":"//8=","item_id":"i"}', "ga")
    assert (audio.payload, audio.response_id, audio.content_index) == ("//8=", "", 0)  # type: ignore[union-attr]
    done = parse_event(b'{"type":"response.done","response":{"id":"r","status_details":null}}', "ga")
    assert (done.response_id, done.status, done.error) == ("r", "completed", None)  # type: ignore[union-attr]
    fault = parse_event(b'{"type":"error","error":null}', "ga")
    assert fault.code == "error"  # type: ignore[union-attr]
    preview = parse_event(b'{"type":"response.audio.delta","delta":"//8=","item_id":"i"}', "preview")
    assert preview.item_id == "i"  # type: ignore[union-attr]


async def test_wrong_type_events_are_logged_counted_dropped_and_the_call_goes_on(caplog) -> None:
    replies = [Say("Hello there.", audio_ms=400), Say("Here is the answer.", audio_ms=600)]
    async with rig("openai-ga", responses=replies) as r, r.caller() as call:
        first = await r.dial(call)
        await first.wait_for("response.done")
        for event in WRONG_TYPES:
            await first.send_event(event)
        for data in NOT_EVENTS:
            await first.send_raw(data.decode(errors="replace"))
        await speak(call)
        await first.wait_for("response.done", n=2, timeout=10)
        await call.wait_for_media(min_bytes=first.audio_sent_bytes, timeout=5)
        assert call.received_audio == all_audio(first)  # both replies, whole: nothing was lost
        assert call.is_open
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    bad = len(WRONG_TYPES) + len(NOT_EVENTS)
    record = await r.app.state.store.get(call.call_sid)
    assert record["outcome"] == "twilio_stop" and record["mode"] == "realtime"
    assert record["stats"][0]["bad_events"] == bad
    assert len(r.server.connections) == 1  # a few bad events are not a fault: no reconnect
    metrics = r.app.state.metrics.render()[0].decode()
    assert f"relay_provider_bad_events_total {float(bad)}" in metrics
    lines = [rec for rec in caplog.records if "malformed provider event" in rec.getMessage()]
    assert 1 <= len(lines) <= 5 + 2  # the first five one by one, then summaries
    assert all(getattr(rec, "call_sid", None) == call.call_sid for rec in lines)
    assert "1011" not in caplog.text


@contextlib.asynccontextmanager
async def fallback_rig(
    http: FakeOpenAIHTTP, settings: dict[str, Any] | None = None, **server_kw: Any
) -> AsyncIterator[FallbackRig]:
    """RELAY_MODE=auto: realtime on the fake Realtime server, the cascade on the fake HTTP API."""
    async with FakeRealtimeServer(**server_kw) as rt, http.serve() as http_url:
        cfg = {
            "relay_mode": "auto",
            "openai_base_url": http_url + "/v1",
            "realtime_websocket_base_url": rt.url + "/v1",
            **(settings or {}),
        }
        app = create_app(make_settings(**cfg))
        async with serve_app(app) as url:
            yield FallbackRig(rt, http, url, app)


def fallbacks(app: Any, cause: str) -> float:
    text = app.state.metrics.render()[0].decode()
    for line in text.splitlines():
        if line.startswith(f'relay_fallbacks_total{{cause="{cause}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
@pytest.mark.parametrize("preconnect", [True, False])
async def test_a_silent_provider_is_left_for_the_cascade_greeting_within_10_s(preconnect: bool) -> None:
    """Defaults (PROVIDER_FIRST_EVENT_TIMEOUT=5): the caller hears the cascade's greeting within 10 s
    of the stream's start. With REALTIME_PRECONNECT the early connection is the silent one."""
    http = FakeOpenAIHTTP(replies=[Text("Hello from the cascade.")])
    async with (
        fallback_rig(http, {"realtime_preconnect": preconnect}, silent=True) as r,
        twilio_caller(r.url) as call,
    ):
        twiml = await call.fetch_twiml()
        started = time.monotonic()
        assert await call.connect(twiml)
        await call.wait_for_media(timeout=12)
        waited = time.monotonic() - started
        print(f"silent provider (preconnect={preconnect}): cascade greeting after {waited:.2f} s")
        assert 5.0 <= waited < 10.0
        assert r.realtime.connections and r.realtime.connections[0].sent == []
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    record = await r.app.state.store.get(call.call_sid)
    assert record["mode"] == "cascade" and record["fallbacks"][0]["cause"] == "unresponsive"
    assert "PROVIDER_FIRST_EVENT_TIMEOUT" in record["fallbacks"][0]["error"]
    assert len(r.realtime.connections) == 1  # a connection that never answered is not retried
    assert fallbacks(r.app, "unresponsive") == 1


async def test_an_early_connections_waiting_events_count_however_late_the_stream_starts(caplog) -> None:
    """REALTIME_PRECONNECT + REALTIME_EARLY_GREETING: `session.created` and the whole greeting wait
    in the early connection's socket while Twilio opens the stream. The first-event deadline runs
    from when the session starts reading it, so a stream that starts later than
    PROVIDER_FIRST_EVENT_TIMEOUT after the connect is no fault."""
    timeout = 0.3
    settings = {"provider_first_event_timeout": timeout}
    async with (
        rig("openai-ga", settings=settings, responses=[Say("Hello.", audio_ms=400)]) as r,
        r.caller() as call,
    ):
        twiml = await call.fetch_twiml()
        early = await r.server.wait_connection()
        await early.wait_for("response.done")  # the greeting is generated, unread
        # The stimulus: Twilio is slow to open the stream, and the early connection's events
        # wait in its socket for twice the first-event deadline.
        await asyncio.sleep(2 * timeout)
        assert await call.connect(twiml)
        await call.wait_for_media(min_bytes=early.audio_sent_bytes, timeout=5)
        assert call.received_audio == all_audio(early)
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    record = await r.app.state.store.get(call.call_sid)
    assert record["outcome"] == "twilio_stop" and record["stats"][0]["reconnects"] == 0
    assert len(r.server.connections) == 1 and "sent no event" not in caplog.text


async def test_a_freeze_mid_call_reopens_once_and_the_new_session_hears_the_question(caplog) -> None:
    """The provider freezes after the greeting (WebSocket pings still answered). The heartbeat goes
    unanswered, the session is reopened with the conversation so far and the caller's audio since
    the provider's last sign of life: the new session answers the question asked during the freeze."""
    replies = [Say("Welcome.", audio_ms=300), Say("The answer to your question.", audio_ms=500)]
    fast = {"provider_heartbeat_after": 0.5, "provider_heartbeat_timeout": 0.5}
    async with (
        rig("openai-ga", settings=fast, responses=replies, freeze_after_responses=1) as r,
        r.caller() as call,
    ):
        first = await r.dial(call)
        r.server.freeze_after_responses = None  # later connections are healthy
        await first.wait_for("response.done")
        await call.wait_playback_idle(timeout=5, min_bytes=first.audio_sent_bytes)
        question = tone_ulaw(500, 400, 0.6)
        await call.send_audio(question)  # asked to the frozen session
        await call.send_silence(700)
        second = await r.server.wait_connection(n=2, timeout=10)
        await second.wait_for("response.done", timeout=10)
        await call.wait_for_media(min_bytes=(300 + 500) * 8, timeout=5)
        assert call.received_audio[300 * 8 :] == all_audio(second)
        # the question reached the new session (its audio is in what it was sent)
        assert question in bytes(second.audio_in)
        history = [e["item"] for e in second.events("conversation.item.create", "received")]
        assert any(i.get("role") == "assistant" for i in history)
        heartbeats = first.events("session.update", "received")[1:]  # after the configuration
        assert heartbeats and all(h["session"] == {"type": "realtime"} for h in heartbeats)
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    record = await r.app.state.store.get(call.call_sid)
    assert record["outcome"] == "twilio_stop" and record["mode"] == "realtime"
    assert record["stats"][0]["reconnects"] == 1
    assert "ProviderUnresponsiveError" in record["stats"][0]["faults"]
    assert "no answer to a heartbeat" in caplog.text and "reopening once" in caplog.text


@pytest.mark.slow
async def test_after_a_freeze_and_a_silent_reconnect_the_cascade_answers_within_12_s() -> None:
    """Defaults. The provider freezes after the greeting and every new connection is silent: the
    caller's question, asked during the freeze, is answered by the cascade (which hears it from
    the ring of caller frames) within 12 s of its end."""
    http = FakeOpenAIHTTP(transcripts=["what is the weather"], replies=[Text("It is sunny.")])
    replies = [Say("Welcome to the weather line.", audio_ms=400)]
    async with (
        fallback_rig(http, responses=replies, transcripts=["-"], freeze_after_responses=1) as r,
        twilio_caller(r.url) as call,
    ):
        assert await call.connect(await call.fetch_twiml())
        first = await r.realtime.wait_connection()
        r.realtime.silent = True  # the service is hung: new connections get no event
        await first.wait_for("response.done")
        await call.wait_playback_idle(timeout=5, min_bytes=first.audio_sent_bytes)
        heard = len(call.received_audio)
        await say(call, "What is the weather?")
        asked = time.monotonic() - 0.9  # say() ends with 900 ms of silence
        await call.wait_for_media(min_bytes=heard + 160, timeout=15)
        waited = time.monotonic() - asked
        print(f"freeze: cascade answer {waited:.2f} s after the end of the question")
        assert waited < 12.0
        chat = http.chat_requests[-1]
        assert chat.messages[-1] == {"role": "user", "content": "what is the weather"}
        assert ("assistant", "Welcome to the weather line.") in [
            (m["role"], m.get("content")) for m in chat.messages
        ]
        assert len(r.realtime.connections) == 2 and r.realtime.connections[1].sent == []
        assert first.frozen_at is not None
        noticed = r.realtime.connections[1].received[0][0] - first.frozen_at
        print(f"freeze: noticed and reopened {noticed:.2f} s after the provider froze")
        assert noticed < 2.0 + 3.0 + 0.5  # PROVIDER_HEARTBEAT_AFTER + _TIMEOUT, and the reconnect
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    record = await r.app.state.store.get(call.call_sid)
    assert record["mode"] == "cascade" and record["fallbacks"][0]["cause"] == "unresponsive"
    assert fallbacks(r.app, "unresponsive") == 1


@pytest.mark.slow
async def test_a_garbage_flood_falls_back_and_the_log_stays_bounded(caplog) -> None:
    """The provider sends only malformed frames after the greeting, and so does every reconnect:
    the flood is a fault (PROVIDER_MALFORMED_LIMIT in a row), the cascade takes the call, and the log
    has a bounded number of lines however long the flood."""
    caplog.set_level(logging.INFO)
    http = FakeOpenAIHTTP(transcripts=["are you there"], replies=[Text("Yes, I am here.")])
    replies = [Say("Welcome.", audio_ms=300)]
    async with (
        fallback_rig(http, responses=replies, flood_after_responses=1, flood_rate=500) as r,
        twilio_caller(r.url) as call,
    ):
        assert await call.connect(await call.fetch_twiml())
        first = await r.realtime.wait_connection()
        r.realtime.flood_after_responses = 0  # reconnects flood from their first frame
        await first.wait_for("response.done")
        await call.wait_playback_idle(timeout=5, min_bytes=first.audio_sent_bytes)
        heard = len(call.received_audio)
        await say(call, "Are you there?")
        await call.wait_for_media(min_bytes=heard + 160, timeout=15)
        assert http.chat_requests[-1].messages[-1] == {"role": "user", "content": "are you there"}
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    record = await r.app.state.store.get(call.call_sid)
    assert record["mode"] == "cascade" and record["fallbacks"][0]["cause"] == "malformed"
    assert fallbacks(r.app, "malformed") == 1
    sent = sum(c.garbage_sent for c in r.realtime.connections)
    assert sent > 2 * 51
    bad = record["stats"][0]["bad_events"]
    assert bad >= 2 * 51  # two connections, each past the limit of 50 in a row
    lines = [rec for rec in caplog.records if "malformed" in rec.getMessage()]
    assert len(lines) <= 12, [rec.getMessage() for rec in lines]


async def loop_lag(url: str) -> tuple[float, float]:
    """The relay's own event-loop lag histogram: (samples, total lag in seconds)."""
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        if line.startswith("relay_event_loop_lag_seconds_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values["relay_event_loop_lag_seconds_count"], values["relay_event_loop_lag_seconds_sum"]


@pytest.mark.slow
async def test_the_first_fallback_of_a_fresh_process_stalls_no_live_call(tmp_path) -> None:
    """A fresh `relay serve` process with a call whose audio is flowing; a second call falls back
    to the cascade, the process's first. Importing the cascade and the openai SDK then (and
    building its client) stalled the event loop ~320 ms on this host: every live call's audio with
    it. They are loaded at startup now. Measured by the relay's own loop-lag histogram (a 100 ms
    timer; a stall shows as at least its length less 100 ms): the lag added up over the fallback
    stays under 100 ms (1-7 ms measured; 185-206 ms with the import at the first fallback)."""
    http = FakeOpenAIHTTP(replies=[Text("Hello from the cascade.")])
    live_reply = Say("A long answer that keeps playing.", audio_ms=5000)
    async with FakeRealtimeServer(responses=[live_reply], pace=1.0) as rt, http.serve() as http_url:
        env = {
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": http_url + "/v1",
            "REALTIME_WEBSOCKET_BASE_URL": rt.url + "/v1",
            "RELAY_MODE": "auto",
            "LOG_LEVEL": "INFO",
        }
        async with relay_serve(tmp_path, **env) as relay:
            live = FakeTwilioCall(base_url=relay.url, auth_token="cli-token", public_url=CLI_PUBLIC_URL)
            other = FakeTwilioCall(base_url=relay.url, auth_token="cli-token", public_url=CLI_PUBLIC_URL)
            async with live, other:
                assert await live.connect(await live.fetch_twiml())
                await live.wait_for_media(min_bytes=8 * 500, timeout=10)  # its audio is flowing
                samples_before, lag_before = await loop_lag(relay.url)
                rt.reject_status = 401  # the next call falls back to the cascade at connect
                assert await other.connect(await other.fetch_twiml())
                await other.wait_for_media(timeout=10)  # the cascade's greeting
                await relay.read_until("falling back to the cascade (auth)")
                samples, _ = await loop_lag(relay.url)
                async with asyncio.timeout(5):  # a few more samples, after the fallback
                    while (await loop_lag(relay.url))[0] < samples + 3:
                        await live.wait_for_media(min_bytes=len(live.received_audio) + 160)
                samples_after, lag_after = await loop_lag(relay.url)
                assert live.is_open
                await other.stop()
                await live.stop()
    added = lag_after - lag_before
    print(f"first fallback: loop lag {added * 1000:.0f} ms over {samples_after - samples_before:.0f} samples")
    assert added < 0.100, f"the event loop stalled {added * 1000:.0f} ms around the first fallback"


@pytest.mark.slow
async def test_a_second_freeze_in_the_same_call_falls_back_instead_of_reopening_again() -> None:
    """Every connection freezes after its first response: the first freeze is reopened (the new
    session answers the question), the second falls back to the cascade, which answers the next."""
    http = FakeOpenAIHTTP(transcripts=["and now"], replies=[Text("The cascade answers.")])
    replies = [Say("Welcome.", audio_ms=300), Say("First answer.", audio_ms=300)]
    fast = {"provider_heartbeat_after": 0.5, "provider_heartbeat_timeout": 0.5}
    async with (
        fallback_rig(http, fast, responses=replies, freeze_after_responses=1) as r,
        twilio_caller(r.url) as call,
    ):
        assert await call.connect(await call.fetch_twiml())
        first = await r.realtime.wait_connection()
        await first.wait_for("response.done")
        await call.wait_playback_idle(timeout=5, min_bytes=first.audio_sent_bytes)
        await speak(call)  # asked to the frozen first session, answered by the second
        second = await r.realtime.wait_connection(n=2, timeout=10)
        await second.wait_for("response.done", timeout=10)
        await call.wait_playback_idle(timeout=5, min_bytes=(300 + 300) * 8)
        heard = len(call.received_audio)
        await say(call, "And now?")  # the second session froze too: the cascade answers
        await call.wait_for_media(min_bytes=heard + 160, timeout=15)
        assert http.chat_requests[-1].messages[-1] == {"role": "user", "content": "and now"}
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
    record = await r.app.state.store.get(call.call_sid)
    assert len(r.realtime.connections) == 2
    assert record["stats"][0]["reconnects"] == 1
    assert record["mode"] == "cascade" and record["fallbacks"][0]["cause"] == "unresponsive"


def test_the_caller_ring_keeps_only_what_came_since_the_last_sign_of_life() -> None:
    from relay.sessions.liveness import CallerRing
    from relay.twilio_messages import Media

    payloads = [base64.b64encode(bytes([i]) * 160).decode() for i in range(1, 13)]
    frames = [Media(p, 20 * i, size=160) for i, p in enumerate(payloads, start=1)]
    ring = CallerRing(maxlen=10)
    for frame in frames:
        ring.append(frame)
    assert ring.since(12, 0) == frames[2:]  # bounded: the oldest two fell out; rebuilt as they came
    assert ring.since(12, 9) == frames[9:]
    ring.trim(12, 9)  # the provider was alive after frame 9: frames up to it were heard
    assert len(ring) == 3 and ring.since(12, 9) == frames[9:]
    ring.trim(12, 12)
    assert len(ring) == 0 and ring.since(12, 12) == []
