"""A whole call's trace, as the issue asks: a realtime call with a barge-in and a tool, and a call
the cascade took over, each exported to a fake OTLP/HTTP collector on 127.0.0.1 as one trace whose
root names the call SID, with the child spans of what happened in it: the webhook, the provider
connections, the turns (their latency), the tools, the barge-ins (what was heard), the fallback
(its cause), the cascade's STT, LLM (time to first token) and TTS (time to first byte), and the
hang-up."""

from __future__ import annotations

import pytest

from relay.testing.openai_http import FakeOpenAIHTTP
from relay.testing.openai_replies import Text
from relay.testing.otlp import OtlpReceiver, ReceivedSpan
from relay.testing.realtime import Call, Say
from relay.testing.twilio_rest import FakeTwilioRest
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.rig import rig, speak, twilio_caller
from tests.test_cascade_e2e import say
from tests.test_provider_faults import fallback_rig
from tests.test_tracing import traced


def one_trace(collector: OtlpReceiver, call_sid: str) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The call's root span and its children: every span received is of this one trace, and every
    span but the root is the root's child."""
    (root,) = collector.named("call")
    assert root.attributes["twilio.call_sid"] == call_sid and root.parent_span_id == ""
    spans = collector.spans
    assert {s.trace_id for s in spans} == {root.trace_id}
    children = [s for s in spans if s is not root]
    assert all(s.parent_span_id == root.span_id for s in children)
    return root, children


def ordered(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_ns)


def ms(span: ReceivedSpan) -> float:
    return (span.end_ns - span.start_ns) / 1e6


async def test_a_realtime_call_with_a_barge_in_and_a_tool_is_one_trace(collector: OtlpReceiver) -> None:
    """The early provider connection, two turns (the first cut by a barge-in, at what the caller
    had heard), the `end_call` tool and the hang-up it asked for, all in the call's one trace."""
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    replies = [
        Say("Hello.", audio_ms=200),
        Say("A long answer that the caller cuts short.", audio_ms=3000),
        Call("end_call", {"reason": "done"}, call_id="t1"),
        Say("Goodbye.", audio_ms=200),
    ]
    async with rest.serve() as rest_url:
        settings = traced(collector, realtime_preconnect=True, twilio_api_base_url=rest_url)
        async with rig("openai-ga", settings=settings, responses=replies) as r:
            async with r.caller() as call:
                conn = await r.dial(call)
                await call.wait_playback_idle(min_bytes=200 * 8)
                await speak(call)  # turn 1: the long answer starts...
                await call.wait_for_media(min_bytes=200 * 8 + 800 * 8)
                await speak(call)  # ...and is cut: turn 2 gets end_call, then the goodbye
                await rest.wait_update(timeout=10)
                await call.stop()
            await r.app.state.manager.wait_idle(timeout=5)
            record = await r.app.state.store.get(call.call_sid)
            await collector.wait_spans(8)
    root, spans = one_trace(collector, call.call_sid)
    assert root.attributes["twilio.stream_sid"] == call.stream_sid
    assert root.attributes["relay.mode"] == "realtime"
    assert root.attributes["relay.provider"] == "openai" and root.attributes["relay.agent"] == "default"
    assert [s.name for s in ordered(spans, "webhook")] == ["webhook"]
    (connect,) = ordered(spans, "provider.connect")  # the early one, which the stream took
    assert connect.attributes["relay.why"] == "early" and connect.attributes["relay.greeting"] is True
    assert connect.kind == 3 and not connect.failed and len(r.server.connections) == 1
    turns = ordered(spans, "turn")
    figures = record["stats"][0]["turn_latencies_ms"]
    assert [t.attributes["relay.latency_ms"] for t in turns] == pytest.approx(figures, abs=0.1)
    assert [t.attributes["relay.interrupted"] for t in turns] == [True, False]
    assert all(t.attributes["relay.path"] == "realtime" for t in turns)
    (barge_in,) = ordered(spans, "barge_in")
    heard = record["transcript"][2]  # the cut answer, as heard
    assert heard["interrupted"] and barge_in.attributes["relay.heard_ms"] == heard["heard_ms"] > 0
    assert turns[0].end_ns < barge_in.start_ns < turns[1].start_ns + 1_000_000_000
    (tool,) = ordered(spans, "tool")
    assert tool.attributes["tool.name"] == "end_call" and tool.attributes["relay.outcome"] == "ok"
    assert "tool.arguments" not in tool.attributes  # only with OTEL_RECORD_TOOL_ARGUMENTS
    (hang_up,) = ordered(spans, "hang_up")
    assert hang_up.attributes["relay.reason"] == "done" and hang_up.attributes["relay.by"] == "tool"
    assert hang_up.attributes["relay.done"] is True and not hang_up.failed
    assert tool.start_ns <= hang_up.start_ns and hang_up.end_ns <= root.end_ns
    assert [u.status for u in rest.updates] == ["completed"]  # the hang-up Twilio got
    assert "turn_times" not in record["stats"][0]  # the spans' clock readings stay out of the record
    assert conn.function_outputs["t1"]


@pytest.mark.slow
async def test_a_call_the_cascade_took_over_is_one_trace(collector: OtlpReceiver) -> None:
    """The realtime key is refused at the early connection: its `provider.connect` span failed,
    the `fallback` span names the cause and ends at the cascade's first audio, and the cascade's
    replies (the greeting, then an answer) have their STT, LLM and TTS spans and the turn its
    latency, in the one trace of the call."""
    http = FakeOpenAIHTTP(transcripts=["what is the weather"], replies=[Text("Hello."), Text("It is sunny.")])
    settings = traced(collector, realtime_preconnect=True)
    async with fallback_rig(http, settings, api_key="another-key") as r, twilio_caller(r.url) as call:
        assert await call.connect(await call.fetch_twiml())
        await call.wait_for_media(timeout=10)  # the cascade's greeting
        await call.wait_playback_idle(timeout=10)
        heard = len(call.received_audio)
        await say(call, "What is the weather?")
        await call.wait_for_media(min_bytes=heard + 160, timeout=10)
        await call.wait_playback_idle(timeout=10)
        await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
        record = await r.app.state.store.get(call.call_sid)
        await collector.wait_spans(10)
    root, spans = one_trace(collector, call.call_sid)
    assert root.attributes["relay.mode"] == "cascade" and root.attributes["relay.outcome"] == "twilio_stop"
    (connect,) = ordered(spans, "provider.connect")
    assert connect.failed and "401" in connect.status_message
    (fallback,) = ordered(spans, "fallback")
    assert fallback.attributes["relay.cause"] == "auth" == record["fallbacks"][0]["cause"]
    assert fallback.attributes["relay.resumed"] is True and connect.end_ns <= fallback.start_ns
    timings = record["stats"][-1]["turn_timings"]
    hops = {"vad_end", "chat_sent", "first_token", "first_sentence", "chat_done", "tts_sent"}
    hops |= {"tts_first_bytes", "tts_done", "first_frame"}
    assert set(timings[0]) == hops and set(timings[1]) == hops | {"stt_sent", "stt_done"}
    greeting = (timings[0]["first_frame"] - timings[0]["vad_end"]) * 1000  # its reply's own time
    assert greeting - 0.1 <= ms(fallback) < greeting + 200  # from the failure to the first audio
    stt, llm, tts = (ordered(spans, name) for name in ("cascade.stt", "cascade.llm", "cascade.tts"))
    assert len(stt) == 1 and len(llm) == len(tts) == 2  # the greeting is not transcribed
    assert all(s.kind == 3 and s.attributes["relay.finished"] for s in stt + llm + tts)
    answer = timings[1]
    assert ms(stt[0]) == pytest.approx((answer["stt_done"] - answer["stt_sent"]) * 1000, abs=1)
    for span, first, start in ((llm[1], "first_token", "chat_sent"), (tts[1], "tts_first_bytes", "tts_sent")):
        key = "relay.ttft_ms" if span.name == "cascade.llm" else "relay.ttfb_ms"
        assert span.attributes[key] == pytest.approx((answer[first] - answer[start]) * 1000, abs=0.1)
        assert 0 < span.attributes[key] <= ms(span) + 0.1
    assert stt[0].end_ns <= llm[1].start_ns <= tts[1].start_ns
    (turn,) = ordered(spans, "turn")
    assert turn.attributes["relay.path"] == "cascade" and not turn.attributes["relay.interrupted"]
    assert turn.attributes["relay.latency_ms"] == pytest.approx(
        record["stats"][-1]["turn_latencies_ms"][0], abs=0.1
    )
    assert turn.start_ns < stt[0].start_ns and tts[1].start_ns < turn.end_ns


async def test_each_provider_connection_is_a_span_the_reconnect_says_why(collector: OtlpReceiver) -> None:
    """Without the early connection the session connects at the stream's start (`first`); when the
    provider drops the connection after the greeting, the new one is a span of its own (`reconnect`)."""
    settings = traced(collector, realtime_preconnect=False)
    async with rig("openai-ga", settings=settings, drop_after_responses=1) as r:
        async with r.caller() as call:
            await r.dial(call)
            second = await r.server.wait_connection(2)
            await second.wait_for("session.update")
            await call.stop()
        await r.app.state.manager.wait_idle(timeout=5)
        await collector.wait_spans(4)
    _, spans = one_trace(collector, call.call_sid)
    connects = ordered(spans, "provider.connect")
    assert [c.attributes["relay.why"] for c in connects] == ["first", "reconnect"]
    assert not any(c.failed for c in connects) and connects[0].end_ns < connects[1].start_ns
    assert len(r.server.connections) == 2


async def test_the_relays_own_hang_ups_are_spans_too(collector: OtlpReceiver) -> None:
    """MAX_CALL_DURATION: the relay redirects the call to its goodbye (`relay.by=relay`). A tool's
    hang-up whose goodbye the caller did not wait for ends `relay.done=false`."""
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    async with rest.serve() as rest_url:
        settings = traced(collector, twilio_api_base_url=rest_url, max_call_duration=1.0)
        async with rig("openai-ga", settings=settings, responses=[Say("Hello.", audio_ms=300)]) as r:
            async with r.caller() as call:
                await r.dial(call)
                await rest.wait_update(timeout=5)
                await call.wait_closed(timeout=5)
            await r.app.state.manager.wait_idle(timeout=5)
            await collector.wait_spans(4)
        (hang_up,) = collector.named("hang_up")
        assert (
            hang_up.attributes["relay.by"] == "relay" and hang_up.attributes["relay.reason"] == "max_duration"
        )
        assert hang_up.attributes["relay.done"] is True
        collector.spans.clear()
        replies = [Call("end_call", {"reason": "bye"}, call_id="t1"), Say("Goodbye.", audio_ms=3000)]
        settings = traced(collector, twilio_api_base_url=rest_url)
        async with rig("openai-ga", settings=settings, responses=replies) as r:
            async with r.caller() as call:
                conn = await r.dial(call)
                await conn.wait_for("conversation.item.create", predicate=lambda e: "output" in str(e))
                await call.stop()  # before the goodbye has played
            await r.app.state.manager.wait_idle(timeout=5)
            await collector.wait_spans(4)
    (hang_up,) = collector.named("hang_up")
    assert hang_up.attributes["relay.by"] == "tool" and hang_up.attributes["relay.done"] is False
    assert len(rest.updates) == 1  # only the first call's goodbye reached Twilio
