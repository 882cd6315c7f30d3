"""Realtime session lifecycle: replaced before the cap, on session_expired and after a drop, with the
conversation carried over; a provider that cannot be reopened ends the call politely."""

from __future__ import annotations

import pytest

from relay.testing.realtime import Drop, Say
from tests.rig import rig, speak


def texts(conn, role: str) -> list[str]:
    return [
        part["text"]
        for item in conn.items
        if item.get("type") == "message" and item.get("role") == role
        for part in item.get("content", [])
    ]


@pytest.mark.parametrize("kind", ["openai-ga", "azure-preview"])
async def test_session_replaced_before_cap_keeps_conversation(kind: str) -> None:
    replies = [Say("Welcome to the shop.", audio_ms=300), Say("Still here for you.", audio_ms=300)]
    async with (
        rig(kind, settings={"realtime_session_max_minutes": 0.01}, responses=replies) as r,
        r.caller() as call,
    ):
        first = await r.dial(call)
        await first.wait_for("response.done")
        await call.wait_playback_idle(min_bytes=first.audio_sent_bytes)
        second = await r.server.wait_connection(n=2, timeout=5)
        await second.wait_for("conversation.item.create", direction="received")
        assert texts(second, "assistant") == ["Welcome to the shop."]
        assert not second.events("response.create", "received")  # no second greeting
        await first.closed.wait()
        await speak(call)  # the call goes on, on the new session
        await second.wait_for("response.done")
        await call.wait_for_media(min_bytes=600 * 8)
        assert not second.invalid_events and second.active_response_conflicts == 0
        await call.stop()
    record = await r.app.state.store.get(call.call_sid)
    assert record["stats"][-1]["reconnects"] >= 1


async def test_session_expired_reopens_at_once(caplog) -> None:
    replies = [Say("Hi.", audio_ms=200)]
    async with rig("openai-ga", session_expired_after=1.0, responses=replies) as r, r.caller() as call:
        first = await r.dial(call)
        await first.wait_for("response.done")
        await call.wait_playback_idle(min_bytes=first.audio_sent_bytes)
        await first.wait_for("error", predicate=lambda e: e["error"]["code"] == "session_expired", timeout=5)
        second = await r.server.wait_connection(n=2, timeout=5)
        await second.wait_for("conversation.item.create", direction="received")
        assert texts(second, "assistant") == ["Hi."]
        await call.stop()
    assert "session_expired" in caplog.text


async def test_drop_mid_response_reopens_and_call_goes_on(caplog) -> None:
    replies = [
        Drop(after_ms=200, say=Say("This reply is cut off.", audio_ms=2000)),
        Say("Sorry, as I said.", audio_ms=300),
    ]
    async with rig("openai-ga", responses=replies) as r, r.caller() as call:
        first = await r.dial(call)
        await first.closed.wait()
        second = await r.server.wait_connection(n=2, timeout=5)
        await speak(call)
        await second.wait_for("response.done", timeout=10)
        await call.wait_for_media(min_bytes=(200 + 300) * 8)
        await call.stop()
    assert "closed the realtime connection" in caplog.text and "reopening" in caplog.text


async def test_drop_that_cannot_be_reopened_ends_call_with_clear_log(caplog) -> None:
    replies = [Drop(after_ms=100, say=Say("Cut.", audio_ms=1000))]
    async with rig("openai-ga", responses=replies) as r, r.caller() as call:
        first = await r.dial(call)
        r.server.reject_status = 503  # every later connect is refused
        await first.closed.wait()
        await call.wait_closed(timeout=10)
    assert "503" in caplog.text and "realtime provider failed" in caplog.text
    record = await r.app.state.store.get(call.call_sid)
    assert record["outcome"] == "provider_error"
    assert not r.app.state.manager.active
