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
