"""BridgeCore without sockets: events in, outboxes out."""

import base64

import orjson

from relay.sessions import events as ev
from relay.sessions.bridge import MARK_EVERY_MS, BridgeCore
from relay.sessions.client_events import opening_events
from relay.sessions.effects import BargeIn, PrebufferDropped, RunTool, SaveTurn
from relay.sessions.hold import HOLD_CHUNK_MS, HoldTone
from relay.sessions.playback import PlaybackTracker
from relay.twilio_messages import Media, b64_len

PAYLOAD = base64.b64encode(b"\xff" * 160).decode()  # one 20 ms frame


def core(greeting: str | None = "Say hi") -> BridgeCore:
    return BridgeCore(
        stream_sid="MZ1", session_update={"type": "session.update", "session": {}}, greeting=greeting
    )


def sent(texts: list[str]) -> list[dict]:
    return [orjson.loads(t) for t in texts]


def test_b64_len_matches_decoding() -> None:
    import base64

    for n in range(0, 50):
        assert b64_len(base64.b64encode(bytes(n)).decode()) == n


def test_audio_before_provider_is_buffered_then_flushed_after_session_update() -> None:
    c = core()
    for i in range(3):
        c.on_media(Media(payload=PAYLOAD, timestamp=i * 20, size=160))
    assert c.drain()[1] == []
    c.provider_opened(0.0)
    out = sent(c.drain()[1])
    assert [e["type"] for e in out] == ["session.update", "response.create"] + [
        "input_audio_buffer.append"
    ] * 3
    assert out[1]["response"]["instructions"] == "Say hi"
    assert out[2]["audio"] == PAYLOAD  # passed through untouched


def test_a_socket_primed_with_the_opening_events_is_not_sent_them_again() -> None:
    c = core()
    early = sent(opening_events({"type": "session.update", "session": {}}, "Say hi"))
    c.on_media(Media(payload=PAYLOAD, timestamp=0, size=160))
    c.provider_opened(0.0, early=True)
    assert [e["type"] for e in sent(c.drain()[1])] == ["input_audio_buffer.append"]
    assert [e["type"] for e in early] == ["session.update", "response.create"]
    assert early[1]["response"]["instructions"] == "Say hi"
    c.on_backend(ev.ResponseStarted("r1"), 0.1)  # the primed greeting's response, read from the socket
    c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.1)
    assert [m["event"] for m in sent(c.drain()[0])] == ["media"]
    c.provider_lost()
    c.provider_opened(1.0)
    assert [e["type"] for e in sent(c.drain()[1])] == ["session.update"]


def test_prebuffer_is_bounded() -> None:
    c = core(None)
    for i in range(150):
        c.on_media(Media(payload=PAYLOAD, timestamp=i * 20, size=160))
    c.provider_opened(0.0)
    _, to_provider, effects = c.drain()
    assert len(to_provider) == 1 + 100
    assert effects == [PrebufferDropped(50)]


def test_audio_out_goes_to_twilio_marks_every_mark_interval_and_at_item_end() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.drain()
    frames = MARK_EVERY_MS // 20
    for _ in range(frames):  # 20 ms chunks
        c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.0)
    tw = sent(c.drain()[0])
    assert tw[0] == {"event": "media", "streamSid": "MZ1", "media": {"payload": PAYLOAD}}
    assert [m["event"] for m in tw] == ["media"] * frames + ["mark"]
    assert tw[-1]["mark"]["name"] == "0:1"
    c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.0)
    assert [m["event"] for m in sent(c.drain()[0])] == ["media"]  # not yet a mark's worth
    c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i2", response_id="r1"), 0.0)
    assert [m["event"] for m in sent(c.drain()[0])] == ["mark", "media"]  # i1 ended
    c.on_backend(ev.ResponseDone("r1"), 0.0)
    assert [m["event"] for m in sent(c.drain()[0])] == ["mark"]  # the response's tail


def test_barge_in_clears_truncates_and_drops_late_audio() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.on_backend(ev.ResponseStarted("r1"), 0.0)
    for _ in range(2 * MARK_EVERY_MS // 20):  # two marks' worth, all sent at once
        c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.0)
    c.on_backend(ev.Transcript("assistant", "Hello there my friend", "i1", final=False), 0.0)
    first_mark_s = MARK_EVERY_MS / 1000
    c.on_mark("0:1", first_mark_s)  # the first mark's audio has played
    c.drain()
    c.on_backend(ev.Interrupted(item_id="u1"), first_mark_s + 0.03)
    heard = MARK_EVERY_MS + 30  # acknowledged, plus 30 ms into the next chunk
    tw, pv, fx = c.drain()
    assert sent(tw) == [{"event": "clear", "streamSid": "MZ1"}]
    trunc = sent(pv)[0]
    assert trunc == {
        "type": "conversation.item.truncate",
        "item_id": "i1",
        "content_index": 0,
        "audio_end_ms": heard,
    }
    assert BargeIn(first_mark_s + 0.03, heard) in fx  # when, and what the caller had heard
    saved = [e for e in fx if isinstance(e, SaveTurn)]
    assert saved and saved[0].meta["interrupted"] and saved[0].meta["heard_ms"] == heard
    # 530 of the 1000 ms sent, the text's spoken length (5 syllables) about the same: 2.65 syllables
    assert saved[0].text == "Hello there"
    # audio of the interrupted response still in flight is not forwarded
    c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), first_mark_s + 0.04)
    assert c.drain()[0] == []
    # the old generation's mark echoed after clear changes nothing
    c.on_mark("0:2", first_mark_s + 0.05)
    assert c.drain() == ([], [], [])


def test_barge_in_with_nothing_heard_deletes_instead_of_truncating() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.on_backend(ev.ResponseStarted("r1"), 0.0)
    c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 1.0)
    c.drain()
    c.on_backend(ev.Interrupted(), 1.0)
    pv = sent(c.drain()[1])
    assert pv == [{"type": "conversation.item.delete", "item_id": "i1"}]


def test_no_barge_in_when_nothing_plays() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.drain()
    c.on_backend(ev.Interrupted(), 1.0)
    assert c.drain() == ([], [], [])


def test_tool_calls_one_response_create_after_all_outputs_and_done() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.on_backend(ev.ResponseStarted("r1"), 0.0)
    c.on_backend(ev.ToolCall("c1", "a", "{}", response_id="r1"), 0.0)
    c.on_backend(ev.ToolCall("c2", "b", "{}", response_id="r1"), 0.0)
    fx = c.drain()[2]
    assert [e.call.call_id for e in fx if isinstance(e, RunTool)] == ["c1", "c2"]
    c.on_tool_output("c1", '{"x":1}', 0.1)
    assert [e["type"] for e in sent(c.drain()[1])] == ["conversation.item.create"]
    c.on_backend(ev.ResponseDone("r1"), 0.2)
    assert sent(c.drain()[1]) == []  # c2 still running
    c.on_tool_output("c2", "ok", 0.3)
    types = [e["type"] for e in sent(c.drain()[1])]
    assert types == ["conversation.item.create", "response.create"]


def test_tool_output_waits_for_active_response() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.on_backend(ev.ResponseStarted("r1"), 0.0)
    c.on_backend(ev.ToolCall("c1", "a", "{}", response_id="r1"), 0.0)
    c.on_backend(ev.ResponseDone("r1"), 0.1)
    c.on_backend(ev.ResponseStarted("r2"), 0.1)  # e.g. server VAD started another one
    c.drain()
    c.on_tool_output("c1", "ok", 0.2)
    assert [e["type"] for e in sent(c.drain()[1])] == ["conversation.item.create"]
    c.on_backend(ev.ResponseDone("r2"), 0.3)
    assert [e["type"] for e in sent(c.drain()[1])] == ["response.create"]


def test_transcript_saved_only_after_audio_played() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.0)
    c.on_backend(ev.Transcript("assistant", "Hi!", "i1", final=True), 0.0)
    c.on_backend(ev.ResponseDone("r1"), 0.0)  # its mark follows the last audio
    assert not [e for e in c.drain()[2] if isinstance(e, SaveTurn)]
    c.on_mark("0:1", 0.02)
    saved = [e for e in c.drain()[2] if isinstance(e, SaveTurn)]
    assert saved == [SaveTurn("assistant", "Hi!", {"item_id": "i1"})]


def test_user_transcript_saved() -> None:
    c = core(None)
    c.on_backend(ev.Transcript("user", "what time is it", "u1"), 0.0)
    assert c.drain()[2] == [SaveTurn("user", "what time is it", {"item_id": "u1"})]


def test_known_events_without_action_are_not_logged_unknown_ones_once(caplog) -> None:
    c = core(None)
    c.on_backend(ev.Other("session.created"), 0.0)
    c.on_backend(ev.Other("rate_limits.updated"), 0.0)
    c.on_backend(ev.Other("response.future_feature"), 0.0)
    c.on_backend(ev.Other("response.future_feature"), 0.0)
    assert "session.created" not in caplog.text and "rate_limits.updated" not in caplog.text
    assert caplog.text.count("response.future_feature") == 1


def test_hold_tone_stays_a_second_ahead_and_clears_on_stop() -> None:
    playback = PlaybackTracker()
    hold = HoldTone(playback, "MZ1")
    assert [m["event"] for m in sent(hold.start("hold:1", 0.0))] == ["media", "mark"]  # 1 s queued
    assert hold.feed(0.0) == []  # a second ahead already
    # Half of it has played by 0.5 s (the heard position runs with the clock): topped up again.
    assert [m["event"] for m in sent(hold.feed(0.5))] == ["media", "mark"]
    assert playback.sent_ms("hold:1") == 2 * HOLD_CHUNK_MS
    generation = playback.generation
    assert [m["event"] for m in sent(hold.stop(0.7))] == ["clear"]
    assert playback.generation == generation + 1 and not hold.active
    assert hold.stop(0.8) == [] and hold.feed(0.8) == []


def test_a_replacement_socket_gets_carried_events_before_audio_buffered_since() -> None:
    c = core(None)
    c.provider_opened(0.0)
    c.drain()
    c.provider_lost()
    c.on_media(Media(payload=PAYLOAD, timestamp=40))  # buffered while reconnecting: the newest audio
    history = '{"type":"conversation.item.create"}'
    unsent = '{"type":"input_audio_buffer.append","audio":"older"}'  # queued for the old socket
    c.provider_opened(1.0, greet=False, carried=[history, unsent])
    types = [(m["type"], m.get("audio")) for m in sent(c.drain()[1])]
    assert types == [
        ("session.update", None),
        ("conversation.item.create", None),
        ("input_audio_buffer.append", "older"),
        ("input_audio_buffer.append", PAYLOAD),
    ]


def test_say_now_cancels_what_the_agent_says_and_asks_for_the_text_word_for_word() -> None:
    core = BridgeCore(stream_sid="MZ1", session_update={"type": "session.update", "session": {}})
    core.provider_opened(0.0)
    core.on_backend(ev.ResponseStarted("r1"), 0.0)
    core.on_backend(ev.AudioOut(payload=PAYLOAD, item_id="i1", response_id="r1"), 0.0)
    core.drain()
    core.say_now("Hi Ada, call us back.", 0.01)
    to_twilio, to_provider, _ = core.drain()
    assert [m["event"] for m in sent(to_twilio)] == ["clear"]
    assert [e["type"] for e in sent(to_provider)] == ["response.cancel", "conversation.item.truncate"]
    core.on_backend(ev.ResponseDone("r1", status="cancelled"), 0.1)
    create = sent(core.drain()[1])
    assert [e["type"] for e in create] == ["response.create"]
    assert create[0]["response"]["instructions"].endswith(": Hi Ada, call us back.")
