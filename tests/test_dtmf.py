"""Key presses (Twilio `dtmf` events): collected until `#` or DTMF_TIMEOUT_MS of quiet, then the
caller's turn for the model on both paths; a key press interrupts the agent like speech."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from relay.codecs.dtmf import GAP_MS, TONE_MS, dtmf_ulaw
from relay.sessions import events as ev
from relay.sessions.bridge import BridgeCore
from relay.sessions.dtmf import MAX_DIGITS, DigitCollector
from relay.sessions.effects import BargeIn, SaveTurn
from relay.testing.audio import speech_ulaw
from relay.testing.dtmf import detect_digits
from relay.testing.openai_http import FakeOpenAIHTTP
from relay.testing.openai_replies import Text, ToolCalls, ToolCallSpec
from relay.testing.realtime import Call, FakeConnection, Say
from tests.rig import rig, speak
from tests.test_cascade_e2e import cascade_rig, say

PAYLOAD = base64.b64encode(b"\xff" * 160).decode()
LATE_MS = 50  # the goal: the model has the entry this soon after `#` or the timeout


def test_an_entry_ends_at_hash_or_after_the_quiet_time() -> None:
    keys = DigitCollector(timeout_s=2.0)
    assert keys.press("1", 0.0) is None and keys.deadline == 2.0
    assert keys.press("2", 1.5) is None and keys.deadline == 3.5
    assert keys.due(3.4) is None
    assert keys.due(3.5) == "12" and keys.deadline is None and keys.due(9.0) is None
    assert keys.press("4", 10.0) is None and keys.press("#", 10.1) == "4#" and keys.deadline is None
    for _ in range(MAX_DIGITS - 1):
        assert keys.press("9", 20.0) is None
    assert keys.press("9", 20.0) == "9" * MAX_DIGITS  # bounded


def sent(texts: list[str]) -> list[dict]:
    return [orjson.loads(t) for t in texts]


def test_a_key_press_while_the_agent_speaks_cancels_and_cuts_at_what_was_heard() -> None:
    core = BridgeCore(stream_sid="MZ1", session_update={"type": "session.update", "session": {}})
    core.provider_opened(0.0)
    core.on_backend(ev.ResponseStarted("r1"), 0.0)
    for _ in range(25):  # 500 ms of agent audio
        core.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.0)
    core.drain()
    core.on_dtmf("1", 0.2)
    to_twilio, to_provider, effects = core.drain()
    assert [m["event"] for m in sent(to_twilio)] == ["clear"]
    assert [e["type"] for e in sent(to_provider)] == ["response.cancel", "conversation.item.truncate"]
    assert sent(to_provider)[1]["audio_end_ms"] == 200 and BargeIn(0.2, 200) in effects
    core.on_dtmf("#", 0.3)
    _, to_provider, effects = core.drain()
    item = sent(to_provider)
    assert [e["type"] for e in item] == ["conversation.item.create"]  # the cancelled response is active
    assert item[0]["item"]["content"] == [{"type": "input_text", "text": "The caller pressed 1#"}]
    assert effects == [SaveTurn("user", "The caller pressed 1#", {"dtmf": "1#"})]
    core.on_backend(ev.ResponseDone("r1", status="cancelled"), 0.4)
    assert [e["type"] for e in sent(core.drain()[1])] == ["response.create"]  # once it is done


def item_text(event: dict) -> str:
    return event["item"]["content"][0]["text"]


def received_at(conn: FakeConnection, event: dict) -> float:
    return next(t for t, e in conn.received if e is event)


@pytest.mark.parametrize("kind", ["openai-ga", "azure-preview"])
async def test_keys_reach_the_realtime_model_as_the_callers_turn(kind: str) -> None:
    settings = {"greeting_enabled": False, "dtmf_timeout_ms": 300}
    async with (
        rig(kind, settings=settings, responses=[Say("Got it.", audio_ms=300)]) as r,
        r.caller() as call,
    ):
        conn = await r.dial(call)
        update = await conn.wait_for("session.update", direction="received")
        assert "send_digits" not in str(update)  # an inbound call without DTMF_TOOL
        for digit in "1234":
            assert await call.send_dtmf(digit)
        hashed_at = time.monotonic()
        assert await call.send_dtmf("#")
        item = await conn.wait_for("conversation.item.create", direction="received")
        assert item_text(item) == "The caller pressed 1234#"
        late_ms = (received_at(conn, item) - hashed_at) * 1000
        await conn.wait_for("response.create", direction="received")
        await call.wait_for_media(min_bytes=300 * 8)  # the model's answer is played
        assert await call.send_dtmf("7")
        typed_at = time.monotonic()
        quiet = await conn.wait_for("conversation.item.create", direction="received", n=2)
        assert item_text(quiet) == "The caller pressed 7"
        after_timeout_ms = (received_at(conn, quiet) - typed_at) * 1000 - 300
        await call.stop()
    print(f"DTMF: entry at the model {late_ms:.1f} ms after '#', {after_timeout_ms:.1f} ms after the timeout")
    assert late_ms <= LATE_MS and -5 <= after_timeout_ms <= LATE_MS
    assert r.app.state.metrics.registry.get_sample_value("relay_dtmf_entries_total") == 2
    record = await r.app.state.store.get(call.call_sid)
    users = [t["text"] for t in record["transcript"] if t["role"] == "user"]
    assert users[:2] == ["The caller pressed 1234#", "The caller pressed 7"]


async def test_a_key_press_interrupts_the_realtime_agent() -> None:
    replies = [Say("This is a long greeting that a key press will interrupt.", audio_ms=4000)]
    async with rig("openai-ga", responses=replies) as r, r.caller() as call:
        conn = await r.dial(call)
        await call.wait_for_media(min_bytes=1000 * 8, timeout=5)
        await call.send_silence(600)
        assert await call.send_dtmf("0")
        clear = await call.wait_for_clear(timeout=5)
        truncate = await conn.wait_for("conversation.item.truncate", direction="received")
        assert abs(truncate["audio_end_ms"] - clear.played_ms) <= 40
        await call.stop()
    assert conn.active_response_conflicts == 0 and not conn.errors


@pytest.mark.slow
async def test_keys_reach_the_cascade_model_as_the_callers_turn() -> None:
    http = FakeOpenAIHTTP(replies=[Text("You pressed four two."), Text("And seven.")])
    async with (
        cascade_rig("openai", http, greeting_enabled=False, dtmf_timeout_ms=300) as r,
        r.caller() as call,
    ):
        await r.dial(call)
        await call.send_silence(200)
        for digit in "42#":
            assert await call.send_dtmf(digit)
        await call.wait_for_media(min_bytes=8000, timeout=10)
        await call.wait_playback_idle()
        heard = len(call.received_audio)
        assert await call.send_dtmf("7")  # no '#': the entry ends after DTMF_TIMEOUT_MS of quiet
        await call.wait_for_media(min_bytes=heard + 2000, timeout=10)
        await call.wait_playback_idle()
        await call.stop()
    chat = http.chat_requests[0]
    assert chat.messages[-1] == {"role": "user", "content": "The caller pressed 42#"}
    assert http.chat_requests[1].messages[-1] == {"role": "user", "content": "The caller pressed 7"}
    assert not http.transcription_requests  # no speech to transcribe
    record = await r.app.state.store.get(call.call_sid)
    assert [t["text"] for t in record["transcript"]][:2] == [
        "The caller pressed 42#",
        "You pressed four two.",
    ]


def test_the_tones_are_q23_pairs_and_a_detector_finds_them_in_order() -> None:
    tones = dtmf_ulaw("0123456789*#ABCD")
    assert len(tones) == 16 * (TONE_MS + GAP_MS) * 8 and TONE_MS >= 70 and GAP_MS >= 60
    assert detect_digits(tones) == "0123456789*#ABCD"
    assert detect_digits(speech_ulaw("Press one for sales, two for support.")) == ""  # speech is not keys
    with pytest.raises(ValueError, match="not DTMF keys"):
        dtmf_ulaw("12x")


async def test_send_digits_plays_the_keys_to_the_other_side_on_the_realtime_path() -> None:
    replies = [Call("send_digits", {"digits": "12#"}, call_id="d1"), Say("Done.", audio_ms=300)]
    settings = {"greeting_enabled": False, "dtmf_tool": True}
    async with rig("openai-ga", settings=settings, responses=replies) as r, r.caller() as call:
        conn = await r.dial(call)
        await conn.wait_for("session.updated")
        assert "send_digits" in [tool["name"] for tool in conn.session["tools"]]
        await speak(call)
        await conn.wait_for("response.done", n=2)
        await call.wait_playback_idle()
        await call.stop()
    assert orjson.loads(conn.function_outputs["d1"]) == {"status": "sent", "digits": "12#"}
    assert detect_digits(call.received_audio) == "12#"  # every key, in order, and nothing else


@pytest.mark.slow
async def test_send_digits_plays_the_keys_to_the_other_side_on_the_cascade_path() -> None:
    http = FakeOpenAIHTTP(
        transcripts=["press nine"],
        replies=[ToolCalls([ToolCallSpec("send_digits", {"digits": "9*"}, id="d1")]), Text("Pressed.")],
    )
    async with (
        cascade_rig("openai", http, greeting_enabled=False, dtmf_tool=True) as r,
        r.caller() as call,
    ):
        await r.dial(call)
        await say(call, "Press nine.")
        await call.wait_for_media(min_bytes=2 * (TONE_MS + GAP_MS) * 8, timeout=10)
        await call.wait_playback_idle()
        await call.stop()
    assert detect_digits(call.received_audio) == "9*"
