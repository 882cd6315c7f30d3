"""Per-turn latency as the relay sees it (the caller's end of speech → the first agent audio sent to
Twilio) agrees with what the caller measures (`relay call`: its last loud frame → the first agent
audio it receives) within 40 ms on a local call, and reaches the record, the post-call payload's
source and `relay_turn_latency_seconds{path, agent}`."""

from __future__ import annotations

import pytest

from relay.post_call import build_payload
from relay.simulate import CallOptions, Utterance, run_call
from relay.testing.audio import tone_ulaw
from relay.testing.realtime import Say
from tests.conftest import AUTH_TOKEN
from tests.rig import PUBLIC_URL, rig

AGREE_MS = 40


@pytest.mark.slow
@pytest.mark.parametrize("silence_ms", [300])
async def test_the_relays_turn_latency_agrees_with_the_callers(silence_ms: int) -> None:
    replies = [Say("Hi.", audio_ms=300), Say("One.", audio_ms=300), Say("Two.", audio_ms=300)]
    loud = tone_ulaw(500, 600, 0.6)
    utterances = [Utterance("first", loud), Utterance("second", loud)]
    settings = {"vad_silence_duration_ms": silence_ms}
    async with rig("openai-ga", responses=replies, settings=settings) as r:
        result = await run_call(
            CallOptions(
                url=r.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, utterances=utterances, quiet_ms=300
            )
        )
        await r.app.state.manager.wait_idle(timeout=5)
        record = await r.app.state.store.get(result.call_sid)
        metrics = r.app.state.metrics.registry
    assert result.ok, result.timeline.text()
    callers = [turn.latency_ms for turn in result.turns]
    relays = record["stats"][0]["turn_latencies_ms"]
    assert len(relays) == len(callers) == 2, (relays, callers)
    for caller_ms, relay_ms in zip(callers, relays, strict=True):
        assert caller_ms is not None
        print(f"turn: caller {caller_ms:.1f} ms, relay {relay_ms:.1f} ms")
        assert abs(caller_ms - relay_ms) <= AGREE_MS, (callers, relays)
        assert relay_ms >= silence_ms  # the provider's silence window is inside the turn
    heard = record["stats"][0]["heard_latencies_ms"]
    assert len(heard) == 2 and all(0 <= h - t < 60 for h, t in zip(heard, relays, strict=True)), (
        heard,
        relays,
    )
    payload = build_payload(record)
    assert payload["turn_latencies_ms"] == relays and payload["heard_latencies_ms"] == heard
    labels = {"path": "realtime", "agent": "default"}
    assert metrics.get_sample_value("relay_turn_latency_seconds_count", labels) == 2
    assert metrics.get_sample_value("relay_turn_latency_seconds_sum", labels) == pytest.approx(
        sum(relays) / 1000
    )


@pytest.mark.slow
async def test_on_the_cascade_too() -> None:
    from relay.testing.openai_http import FakeOpenAIHTTP
    from relay.testing.openai_replies import Text
    from tests.test_cascade_e2e import cascade_rig

    http = FakeOpenAIHTTP(transcripts=["what time is it"], replies=[Text("It is noon.")])
    utterances = [Utterance.say("What time is it?")]
    async with cascade_rig("openai", http, greeting_enabled=False) as r:
        result = await run_call(
            CallOptions(
                url=r.url,
                public_url=PUBLIC_URL,
                auth_token=AUTH_TOKEN,
                utterances=utterances,
                quiet_ms=300,
                greeting_timeout=0.5,
            )
        )
        await r.app.state.manager.wait_idle(timeout=5)
        record = await r.app.state.store.get(result.call_sid)
    assert result.ok, result.timeline.text()
    [caller_ms] = [turn.latency_ms for turn in result.turns]
    [relay_ms] = record["stats"][0]["turn_latencies_ms"]
    [heard_ms] = record["stats"][0]["heard_latencies_ms"]
    print(f"cascade turn: caller {caller_ms:.1f} ms, relay {relay_ms:.1f} ms, heard {heard_ms:.1f} ms")
    assert 0 <= heard_ms - relay_ms < 60
    assert caller_ms is not None and abs(caller_ms - relay_ms) <= AGREE_MS
    assert (
        r.app.state.metrics.registry.get_sample_value(
            "relay_turn_latency_seconds_count", {"path": "cascade", "agent": "default"}
        )
        == 1
    )


def test_the_realtime_turn_clock_places_the_end_of_speech_and_times_the_answer() -> None:
    """`RealtimeTurns` without sockets: the provider's end of speech less the audio sent past its
    position (at most MAX_BEHIND_MS) and the silence window; the first answer frame closes the
    turn, the mark that reports it played gives the heard figure; a barge-in drops the turn."""
    from relay.sessions.call import CallStats
    from relay.sessions.playback import PlaybackTracker
    from relay.sessions.realtime_turns import MAX_BEHIND_MS, RealtimeTurns

    stats, playback = CallStats(path="realtime"), PlaybackTracker()
    turns = RealtimeTurns(stats, playback, silence_s=0.5)
    stats.frames_in = 150  # 3 s of caller audio sent; the provider's VAD ended the turn at 2.8 s
    turns.speech_stopped(2800, now=10.0)
    assert turns.waiting
    turns.first_audio("i1", now=10.3)
    assert stats.turn_times == [(10.0 - 0.2 - 0.5, 10.3)] and not turns.waiting
    mark = playback.on_audio_sent("i1", 800, 10.3)  # 100 ms of μ-law
    assert mark is not None and playback.on_mark(mark, 10.45)
    turns.mark(10.45)
    assert stats.heard_latencies_ms == pytest.approx([(10.45 - 0.1 - 9.3) * 1000])
    turns.frame0, stats.frames_in = 100, 300  # a new connection, from the 100th frame: 4 s sent
    assert turns.speech_end_time(0, now=20.0) == 20.0 - 0.5  # no position given: no correction
    assert turns.speech_end_time(1, now=20.0) == 20.0 - MAX_BEHIND_MS / 1000 - 0.5  # bounded
    turns.speech_stopped(900, now=21.0)
    turns.interrupted()
    turns.first_audio("i2", now=21.2)
    assert len(stats.turn_times) == 1 and len(stats.response_latencies_ms) == 1
