"""End to end over real sockets: fake Twilio → relay (uvicorn) → fake Realtime server.

One suite, parametrized over OpenAI GA, Azure GA with a key, Azure GA with Entra ID (a fake async
credential) and Azure preview. The relay reaches the fake only through its normal configuration.
"""

from __future__ import annotations

import asyncio

import pytest

from relay.testing.audio import silence_ulaw, tone_ulaw
from relay.testing.realtime import Say
from tests.rig import PROVIDERS, all_audio, rig


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_greeting_and_audio_byte_identical_both_ways(kind: str) -> None:
    async with rig(kind, responses=[Say("Hello, how can I help?", audio_ms=600)]) as r, r.caller() as call:
        conn = await r.dial(call)
        assert conn.dialect == ("preview" if kind == "azure-preview" else "ga")
        assert conn.protocol_auth == ("bearer" if kind in ("openai-ga", "azure-ga-entra") else "api-key")
        caller_audio = tone_ulaw(300, 200, 0.005) + silence_ulaw(200)  # quiet: below the fake VAD
        await call.send_audio(caller_audio)
        await call.wait_for_media(min_bytes=600 * 8, timeout=5)
        await conn.wait_for("response.done")
        await call.wait_playback_idle(timeout=5, min_bytes=conn.audio_sent_bytes)
        # agent → caller: byte-identical; caller → agent: byte-identical (no transcoding)
        assert call.received_audio == all_audio(conn)
        await conn.wait_for("input_audio_buffer.append", n=len(caller_audio) // 160, direction="received")
        assert bytes(conn.audio_in) == caller_audio
        assert not conn.invalid_events and conn.active_response_conflicts == 0
        create = conn.events("response.create", "received")[0]
        assert "Greet the caller" in create["response"]["instructions"]
        assert call.first_media_at is not None
        await call.stop()
        await conn.closed.wait()
    record = await r.app.state.store.get(call.call_sid)
    assert record["provider"] == ("openai" if kind == "openai-ga" else "azure")
    assert [t["text"] for t in record["transcript"] if t["role"] == "assistant"] == [
        "Hello, how can I help?"
    ], record
    if kind == "azure-ga-entra":
        assert r.credential.scopes == [("https://cognitiveservices.azure.com/.default",)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_barge_in_truncates_at_what_the_caller_heard(kind: str) -> None:
    replies = [
        Say("This is a long greeting that the caller will interrupt halfway.", audio_ms=4000),
        Say("Sure, go ahead.", audio_ms=300),
    ]
    async with rig(kind, responses=replies) as r, r.caller() as call:
        conn = await r.dial(call)
        await call.wait_for_media(min_bytes=4000 * 8, timeout=5)
        await call.send_silence(1000)  # the caller listens for a second…
        await call.send_audio(tone_ulaw(500, 400, 0.6))  # …then speaks over the agent
        clear = await call.wait_for_clear(timeout=5)
        truncate = await conn.wait_for("conversation.item.truncate", direction="received")
        item = truncate["item_id"]
        sent_ms = len(conn.audio_sent[item]) // 8
        heard_ms = clear.played_ms  # the fake Twilio's playback clock at the clear
        assert abs(truncate["audio_end_ms"] - heard_ms) <= 40, (truncate, heard_ms)
        assert 0 < truncate["audio_end_ms"] <= sent_ms
        assert not [e for e in conn.errors if "shorter" in str(e.get("message"))]
        await call.send_silence(800)
        await conn.wait_for("response.done", n=2)
        assert len(conn.truncates) == 1  # marks echoed after the clear moved nothing
        assert conn.active_response_conflicts == 0
        await call.stop()
    record = await r.app.state.store.get(call.call_sid)
    cut = [t for t in record["transcript"] if t.get("interrupted")]
    assert cut and len(cut[0]["text"]) < len(replies[0].text)


@pytest.mark.parametrize("kind", ["openai-ga", "azure-preview"])
async def test_unknown_provider_events_do_not_disturb(kind: str, caplog) -> None:
    async with (
        rig(kind, unknown_events=True, responses=[Say("Hi there.", audio_ms=400)]) as r,
        r.caller() as call,
    ):
        conn = await r.dial(call)
        await conn.wait_for("response.done")
        await call.wait_for_media(min_bytes=400 * 8)
        await call.wait_playback_idle()
        assert call.received_audio == all_audio(conn)
        await call.stop()
    assert "logged once" in caplog.text


async def test_two_concurrent_calls_share_nothing() -> None:
    replies = [Say("One.", audio_ms=300), Say("Two.", audio_ms=500)]
    async with rig("openai-ga", responses=replies) as r, r.caller() as a, r.caller() as b:
        conn_a = await r.dial(a)
        conn_b = await r.dial(b)
        audio_a, audio_b = tone_ulaw(200, 300, 0.005), tone_ulaw(350, 300, 0.005)
        await asyncio.gather(a.send_audio(audio_a), b.send_audio(audio_b))
        await asyncio.gather(conn_a.wait_for("response.done"), conn_b.wait_for("response.done"))
        await asyncio.gather(
            a.wait_playback_idle(min_bytes=conn_a.audio_sent_bytes),
            b.wait_playback_idle(min_bytes=conn_b.audio_sent_bytes),
        )
        assert a.received_audio == all_audio(conn_a) and b.received_audio == all_audio(conn_b)
        assert a.received_audio != b.received_audio
        await conn_a.wait_for("input_audio_buffer.append", n=len(audio_a) // 160, direction="received")
        await conn_b.wait_for("input_audio_buffer.append", n=len(audio_b) // 160, direction="received")
        assert bytes(conn_a.audio_in) == audio_a and bytes(conn_b.audio_in) == audio_b
        await a.stop()
        await conn_a.closed.wait()
        assert not conn_b.closed.is_set()  # b goes on
        await b.stop()


@pytest.mark.parametrize(
    ("kind", "settings", "needle"),
    [
        (
            "openai-ga",
            {"openai_api_key": "sk-wrong"},
            "401: the OpenAI key was rejected; check OPENAI_API_KEY",
        ),
        ("azure-ga-key", {"azure_openai_api_key": "wrong"}, "401: the Azure OpenAI key was rejected"),
        ("azure-ga-key", {"azure_openai_deployment": "nope"}, "404: deployment 'nope' not found on resource"),
        ("openai-ga", {"openai_realtime_model": "nope"}, "404: model 'nope' not found"),
    ],
)
async def test_rejected_connect_gives_clear_log_line_and_ends_call(kind, settings, needle, caplog) -> None:
    async with rig(kind, settings=settings) as r, r.caller() as call:
        twiml = await call.fetch_twiml()
        assert twiml.say  # the apology Twilio speaks when the relay ends the stream
        assert await call.connect(twiml)
        await call.wait_closed(timeout=5)
    assert needle in caplog.text
    assert r.server.rejected


async def test_twilio_stop_closes_provider_within_a_second() -> None:
    async with rig("openai-ga", responses=[Say("Hello.", audio_ms=2000)]) as r, r.caller() as call:
        conn = await r.dial(call)
        await call.wait_for_media()
        await call.stop()
        async with asyncio.timeout(1.0):
            await conn.closed.wait()


async def test_twilio_drop_mid_response_closes_provider() -> None:
    async with rig("openai-ga", responses=[Say("Hello.", audio_ms=3000)], pace=1.0) as r, r.caller() as call:
        conn = await r.dial(call)
        await call.wait_for_media()
        await call.hangup(abrupt=True)
        async with asyncio.timeout(2.0):
            await conn.closed.wait()
    assert not r.app.state.manager.active


async def test_caller_audio_sent_before_provider_ready_is_not_lost() -> None:
    async with (
        rig("openai-ga", connect_delay=0.3, responses=[Say("Hi.", audio_ms=200)]) as r,
        r.caller() as call,
    ):
        twiml = await call.fetch_twiml()
        assert await call.connect(twiml)
        first_words = tone_ulaw(250, 200, 0.005)
        await call.send_audio(first_words)  # while the relay is still connecting
        conn = await r.server.wait_connection()
        await conn.wait_for("input_audio_buffer.append", n=len(first_words) // 160, direction="received")
        assert bytes(conn.audio_in) == first_words
        appends = [t for t, e in conn.received if e["type"] == "input_audio_buffer.append"]
        updates = [t for t, e in conn.received if e["type"] == "session.update"]
        assert updates[0] <= appends[0]  # configured (μ-law) before any audio
        await call.stop()
