"""The cascade end to end over real sockets: fake Twilio → relay → fake OpenAI/Azure HTTP (STT, chat,
TTS), and the realtime → cascade fallback with the conversation carried and no request to the
other vendor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from relay.app import create_app
from relay.codecs import StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16
from relay.testing.audio import correlation, silence_ulaw, speech_ulaw
from relay.testing.openai_http import FakeOpenAIHTTP
from relay.testing.openai_replies import Text, ToolCalls, ToolCallSpec, tts_audio
from relay.testing.otlp import OtlpReceiver
from relay.testing.realtime import Drop, FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.tavily import FakeTavily
from relay.testing.twilio import FakeTwilioCall
from tests.conftest import make_settings
from tests.rig import twilio_caller

QUESTION = "What is the weather like in Paris today?"


def vendor_settings(vendor: str, http_url: str) -> dict[str, Any]:
    if vendor == "openai":
        return {"openai_base_url": http_url + "/v1", "openai_api_key": "sk-test"}
    return {
        "use_azure_openai": True,
        "openai_api_key": None,
        "azure_openai_endpoint": http_url,
        "azure_openai_api_key": "azure-key",
        "azure_openai_deployment": "gpt-realtime",
        "azure_openai_stt_deployment": "stt",
        "azure_openai_chat_deployment": "chat",
        "azure_openai_tts_deployment": "tts",
    }


@dataclass
class CascadeRig:
    http: FakeOpenAIHTTP
    url: str
    app: Any

    def caller(self) -> FakeTwilioCall:
        return twilio_caller(self.url)

    async def dial(self, call: FakeTwilioCall) -> None:
        twiml = await call.fetch_twiml()
        assert await call.connect(twiml)


@contextlib.asynccontextmanager
async def cascade_rig(vendor: str, http: FakeOpenAIHTTP, **settings: Any) -> AsyncIterator[CascadeRig]:
    async with http.serve() as http_url:
        cfg = {"relay_mode": "cascade", **vendor_settings(vendor, http_url), **settings}
        app = create_app(make_settings(**cfg))
        async with serve_app(app) as url:
            yield CascadeRig(http, url, app)


def expected_ulaw(text: str) -> bytes:
    """What the caller should hear for one sentence: the fake's TTS PCM at 24 kHz → 8 kHz μ-law."""
    return pcm16_to_ulaw(StreamResampler(24000, 8000).process(tts_audio(text)))


def expected_speech(http: FakeOpenAIHTTP, first: int, last: int) -> bytes:
    """One reply's sentences (TTS requests first..last-1) as the caller hears them: the fake's PCM,
    resampled as one continuous stream, μ-law, padded to whole 20 ms frames."""
    pcm = b"".join(tts_audio(req.input or "") for req in http.speech_requests[first:last])
    resampler = StreamResampler(24000, 8000)
    audio = pcm16_to_ulaw(resampler.process(pcm) + resampler.flush())
    return audio + b"\xff" * (-len(audio) % 160)


def speech_span_ms(ulaw: bytes) -> int:
    """Milliseconds from the first to the last 20 ms frame with speech energy."""
    pcm = np.frombuffer(ulaw_to_pcm16(ulaw[: len(ulaw) // 160 * 160]), dtype=np.int16).astype(float)
    rms = np.sqrt((pcm.reshape(-1, 160) ** 2).mean(axis=1))
    active = np.nonzero(rms > 300)[0]
    return int(active[-1] - active[0] + 1) * 20


async def say(call: FakeTwilioCall, text: str) -> bytes:
    speech = speech_ulaw(text)
    await call.send_audio(silence_ulaw(300) + speech + silence_ulaw(900))
    return speech


@pytest.mark.slow
@pytest.mark.parametrize("vendor", ["openai", "azure"])
async def test_cascade_turn_end_to_end(vendor: str) -> None:
    greeting, answer = "Hello! How can I help?", "It is sunny in Paris. Anything else?"
    http = FakeOpenAIHTTP(
        transcripts=["what is the weather like in paris today"], replies=[Text(greeting), Text(answer)]
    )
    async with cascade_rig(vendor, http) as r, r.caller() as call:
        await r.dial(call)
        await http.wait_for("speech", timeout=10)  # the AI speaks first
        await call.wait_for_media(min_bytes=len(expected_ulaw(greeting)) - 320, timeout=10)
        await call.wait_playback_idle(timeout=10)
        greeting_bytes = len(call.received_audio)
        greeting_requests = len(http.speech_requests)
        assert " ".join(r.input or "" for r in http.speech_requests) == greeting
        assert correlation(call.received_audio, expected_speech(http, 0, len(http.speech_requests))) > 0.9
        speech = await say(call, QUESTION)
        stt = await http.wait_for("transcriptions", timeout=10)
        # the utterance: the speech itself, plus the detector's 300 ms pre-roll and 100 ms tail
        utterance_ms = speech_span_ms(speech) + 300 + 100
        assert stt.wav_duration_ms is not None and abs(stt.wav_duration_ms - utterance_ms) <= 100, (
            stt.wav_duration_ms,
            utterance_ms,
        )
        assert stt.wav_rate == 8000 and stt.wav_channels == 1  # the caller's samples, not upsampled
        chat = await http.wait_for("chat", n=2, timeout=10)
        assert chat.messages[-1] == {"role": "user", "content": "what is the weather like in paris today"}
        assert {"role": "assistant", "content": greeting} in chat.messages
        await http.wait_for("speech", n=greeting_requests + 2, timeout=10)  # one request per sentence
        assert [r.input for r in http.speech_requests[greeting_requests:]] == [
            "It is sunny in Paris.",
            "Anything else?",
        ]
        expected = expected_speech(http, greeting_requests, greeting_requests + 2)
        await call.wait_for_media(min_bytes=greeting_bytes + len(expected), timeout=10)
        assert correlation(call.received_audio[greeting_bytes:], expected) > 0.9
        paths = {req.path for req in http.requests}
        if vendor == "azure":
            assert all(p.startswith("/openai/deployments/") for p in paths), paths
        else:
            assert all(p.startswith("/v1/") for p in paths), paths
        await call.stop()
    record = await r.app.state.store.get(call.call_sid)
    assert record["mode"] == "cascade"
    roles = [(t["role"], t["text"]) for t in record["transcript"]]
    assert roles[:2] == [("assistant", greeting), ("user", "what is the weather like in paris today")]


@pytest.mark.slow
async def test_cascade_tool_call_through_chat_completions() -> None:
    tavily = FakeTavily()
    http = FakeOpenAIHTTP(
        transcripts=["weather in paris"],
        replies=[
            Text("Hi there."),
            ToolCalls([ToolCallSpec("web_search", {"query": "weather in Paris"}, id="call_1")]),
            Text("It is sunny."),
        ],
    )
    async with (
        tavily.serve() as tavily_url,
        cascade_rig("openai", http, tavily_api_key=tavily.api_key, tavily_base_url=tavily_url) as r,
        r.caller() as call,
    ):
        await r.dial(call)
        await http.wait_for("chat", timeout=10)
        names = [t["function"]["name"] for t in (http.chat_requests[0].body or {}).get("tools", [])]
        assert "web_search" in names
        await call.wait_playback_idle(timeout=10)
        await say(call, "What's the weather in Paris?")
        follow_up = await http.wait_for("chat", n=3, timeout=15)
        tool_msgs = [m for m in follow_up.messages if m.get("role") == "tool"]
        assert tool_msgs and tool_msgs[0]["tool_call_id"] == "call_1"
        assert "results" in tool_msgs[0]["content"]
        assert tavily.queries == ["weather in Paris"]
        await http.wait_for("speech", n=2, timeout=10)
        await call.stop()
    record = await r.app.state.store.get(call.call_sid)
    assert record["tools"][0]["name"] == "web_search" and record["tools"][0]["outcome"] == "ok"


@pytest.mark.slow
async def test_cascade_barge_in_keeps_only_what_was_heard(collector: OtlpReceiver) -> None:
    long_reply = " ".join(f"This is sentence number {i} of a very long answer." for i in range(1, 9))
    http = FakeOpenAIHTTP(
        transcripts=["tell me everything", "stop"], replies=[Text(long_reply), Text("Okay.")]
    )
    traces = {"otel_exporter_otlp_endpoint": collector.url, "otel_bsp_schedule_delay": 50}
    async with cascade_rig("openai", http, greeting_enabled=False, **traces) as r, r.caller() as call:
        await r.dial(call)
        await say(call, "Tell me everything.")
        await call.wait_for_media(min_bytes=8000 * 3, timeout=15)  # a few seconds of the answer queued
        await call.send_silence(1500)  # the caller listens a bit…
        await say(call, "Stop please.")  # …then talks over the agent
        clear = await call.wait_for_clear(timeout=10)
        chat = await http.wait_for("chat", n=2, timeout=15)
        heard = [m["content"] for m in chat.messages if m.get("role") == "assistant"]
        assert heard and 0 < len(heard[-1]) < len(long_reply)
        assert clear.played_ms < len(call.received_audio) / 8
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
        spans = await collector.wait_spans(5)  # the webhook's and the barge-in's, then the call's end
    # the trace's barge_in: what the caller had heard of the whole reply when it was cut, as the
    # caller's own playback counted it (give or take the mark round trip and a frame)
    (barge_in,) = [s for s in spans if s.name == "barge_in"]
    assert barge_in.attributes["relay.path"] == "cascade"
    assert barge_in.attributes["relay.heard_ms"] == pytest.approx(clear.played_ms, abs=100)


@dataclass
class FallbackRig:
    realtime: FakeRealtimeServer
    http: FakeOpenAIHTTP
    url: str
    app: Any

    def caller(self) -> FakeTwilioCall:
        return twilio_caller(self.url)


@contextlib.asynccontextmanager
async def fallback_rig(vendor: str, http: FakeOpenAIHTTP, **server_kw: Any) -> AsyncIterator[FallbackRig]:
    other = FakeOpenAIHTTP()  # the other vendor: must never see a request
    async with FakeRealtimeServer(**server_kw) as rt, http.serve() as http_url, other.serve() as other_url:
        cfg = {
            "relay_mode": "auto",
            **vendor_settings(vendor, http_url),
            "realtime_websocket_base_url": rt.url,
        }
        if vendor == "openai":
            cfg["realtime_websocket_base_url"] = rt.url + "/v1"
        else:  # OpenAI credentials are configured too, pointing at the other fake
            cfg.update(openai_api_key="sk-test", openai_base_url=other_url + "/v1")
        app = create_app(make_settings(**cfg))
        async with serve_app(app) as url:
            yield FallbackRig(rt, http, url, app)
        assert other.requests == [], "a request reached the other vendor"


@pytest.mark.slow
@pytest.mark.parametrize("vendor", ["openai", "azure"])
async def test_fallback_when_realtime_refuses_the_key(vendor: str, caplog) -> None:
    http = FakeOpenAIHTTP(replies=[Text("Hello from the cascade.")])
    server_kw = {"api_key": "other-key", "azure_api_key": "other-key"}
    async with fallback_rig(vendor, http, **server_kw) as r, r.caller() as call:
        assert await call.connect(await call.fetch_twiml())
        await http.wait_for("speech", timeout=10)  # the cascade greets: realtime never did
        await call.wait_for_media(timeout=10)
        await call.stop()
        assert r.realtime.rejected
    assert "falling back to the cascade (auth)" in caplog.text
    record = await r.app.state.store.get(call.call_sid)
    assert record["mode"] == "cascade" and record["fallbacks"][0]["cause"] == "auth"


@pytest.mark.slow
@pytest.mark.parametrize("vendor", ["openai", "azure"])
async def test_fallback_after_mid_call_drop_carries_the_conversation(vendor: str) -> None:
    http = FakeOpenAIHTTP(transcripts=["and tomorrow"], replies=[Text("Tomorrow it rains.")])
    replies = [
        Say("Welcome to the weather line.", audio_ms=400),
        Drop(after_ms=100, say=Say("Today it is", audio_ms=2000)),
    ]
    async with (
        fallback_rig(vendor, http, responses=replies, transcripts=["what is the weather"]) as r,
        r.caller() as call,
    ):
        assert await call.connect(await call.fetch_twiml())
        first = await r.realtime.wait_connection()
        await first.wait_for("response.done")
        await call.wait_playback_idle(timeout=5, min_bytes=first.audio_sent_bytes)
        r.realtime.reject_status = 503  # the realtime service stays down after the drop
        await say(call, "What is the weather?")
        await first.closed.wait()
        await call.wait_playback_idle(timeout=10)
        await say(call, "And tomorrow?")
        chat = await http.wait_for("chat", timeout=15)
        contents = [(m["role"], m.get("content")) for m in chat.messages]
        assert ("assistant", "Welcome to the weather line.") in contents
        assert ("user", "what is the weather") in contents
        assert contents[-1] == ("user", "and tomorrow")
        assert not [
            m
            for m in chat.messages
            if m.get("content") == "Greet the caller briefly and ask how you can help."
        ]
        await http.wait_for("speech", timeout=10)
        await call.stop()
    record = await r.app.state.store.get(call.call_sid)
    assert record["fallbacks"] and record["mode"] == "cascade"


async def test_cascade_without_greeting_waits_for_the_caller() -> None:
    http = FakeOpenAIHTTP(transcripts=["hi"], replies=[Text("Hello there.")])
    async with cascade_rig("openai", http, greeting_enabled=False) as r, r.caller() as call:
        await r.dial(call)
        await say(call, "Hi.")
        chat = await http.wait_for("chat", timeout=10)
        assert chat.messages[-1] == {"role": "user", "content": "hi"}  # no greeting turn came first
        assert len(http.transcription_requests) == 1
        await call.stop()


async def test_cascade_failure_ends_the_call_with_a_clear_log(caplog) -> None:
    http = FakeOpenAIHTTP(fail_status={"chat": 500})
    async with cascade_rig("openai", http, greeting_enabled=True) as r, r.caller() as call:
        twiml = await call.fetch_twiml()
        assert twiml.say  # Twilio speaks this apology once the relay ends the stream
        assert await call.connect(twiml)
        await call.wait_closed(timeout=15)
        await r.app.state.manager.wait_idle(timeout=5)
    assert "cascade reply failed" in caplog.text and "cascade provider failed" in caplog.text
    record = await r.app.state.store.get(call.call_sid)
    assert record["outcome"] == "provider_error"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tool", "arguments", "answer"),
    [
        ("end_call", {"reason": "caller said bye"}, "Goodbye!"),
        ("transfer_call", {"destination": "sales"}, "Connecting you to sales now."),
        ("transfer_call", {"destination": "sales", "summary": "Ada, order A-42."}, "Connecting you now."),
    ],
)
async def test_cascade_hang_up_and_transfer_wait_for_the_answer_to_play(
    tool: str, arguments: dict[str, str], answer: str
) -> None:
    from relay.testing.twilio_rest import FakeTwilioRest
    from tests.conftest import ACCOUNT_SID, AUTH_TOKEN

    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    http = FakeOpenAIHTTP(
        transcripts=["bye"],
        replies=[ToolCalls([ToolCallSpec(tool, arguments, id="c1")]), Text(answer)],
    )
    async with (
        rest.serve() as rest_url,
        cascade_rig(
            "openai",
            http,
            greeting_enabled=False,
            twilio_api_base_url=rest_url,
            transfer_allowlist="sales=+15557654321",
        ) as r,
        r.caller() as call,
    ):
        await r.dial(call)
        await say(call, "Bye.")
        update = await rest.wait_update(timeout=15)
        if tool == "end_call":
            assert update.status == "completed"
        elif "summary" in arguments:  # warm: a hold message, then a dial with the whisper's URL
            assert (update.twiml or "").startswith("<Response><Say>")
            assert '<Number method="POST" url="https://relay.example.com/transfer-whisper?t=' in (
                update.twiml or ""
            )
        else:
            assert "<Dial>+15557654321</Dial>" in (update.twiml or "")
        spoken = [req for req in http.speech_requests if req.input == answer]
        assert spoken, [req.input for req in http.speech_requests]
        chunks = [c for c in call.outbound_chunks if c.stopped_at is not None]
        assert chunks and update.at >= max(c.stopped_at for c in chunks)  # after the last byte played
        await call.stop()


@pytest.mark.slow
async def test_cascade_slow_tool_plays_a_continuous_hold_tone_then_the_answer() -> None:
    # The tone is kept about a second ahead of the caller and topped up as it plays (the same
    # HoldTone as the realtime path), so it covers a tool of any length and the clear that
    # starts the answer drops at most about a second of it.
    http = FakeOpenAIHTTP(
        transcripts=["any invoices"],
        replies=[
            Text("Hi there."),
            ToolCalls([ToolCallSpec("slow_lookup", {"topic": "invoices"}, id="call_1")]),
            Text("I found your invoices."),
        ],
    )
    async with (
        cascade_rig("openai", http, relay_tools="tests.fixtures.user_tools", slow_tool_after=0.2) as r,
        r.caller() as call,
    ):
        await r.dial(call)
        await call.wait_for_media(min_bytes=len(expected_ulaw("Hi there.")) - 160, timeout=10)
        await call.wait_playback_idle(timeout=10)
        greeting_bytes = len(call.played_audio)
        await say(call, "Do I have invoices?")
        clear = await call.wait_for_clear(timeout=10)
        # The tool sleeps 2 s; the tone starts 0.2 s in: 1.8 s of it played, more than one chunk.
        hold_played = clear.played_bytes - greeting_bytes
        assert 1.5 * 8000 <= hold_played <= 2.3 * 8000, hold_played
        assert clear.dropped_bytes <= 1.2 * 8000, clear.dropped_bytes
        follow_up = await http.wait_for("chat", n=3, timeout=10)
        assert [m["content"] for m in follow_up.messages if m.get("role") == "tool"] == ["found invoices"]
        await http.wait_for("speech", n=2, timeout=10)
        await call.wait_playback_idle(timeout=10)
        answer = len(expected_ulaw("I found your invoices."))
        assert len(call.played_audio) - clear.played_bytes >= answer - 160
        await call.stop()
