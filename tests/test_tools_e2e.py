"""Tools end to end over real sockets: fake Realtime asks for a tool → relay runs it against the
fake Tavily / Twilio REST → the output goes back with the same call_id → one response.create."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
import orjson
import pytest
from twilio.request_validator import RequestValidator

from relay.testing.realtime import Call, Calls, FakeConnection, Say
from relay.testing.tavily import FakeTavily
from relay.testing.twilio_rest import FakeTwilioRest
from relay.tools.whisper import HOLD_MESSAGE
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.rig import PUBLIC_URL, Rig, rig, speak


@dataclass
class ToolRig:
    rt: Rig
    tavily: FakeTavily
    rest: FakeTwilioRest


@contextlib.asynccontextmanager
async def tool_rig(
    replies: list[Any], *, tavily: FakeTavily | None = None, **settings: Any
) -> AsyncIterator[ToolRig]:
    tavily = tavily or FakeTavily()
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    async with tavily.serve() as tavily_url, rest.serve() as rest_url:
        cfg = {
            "greeting_enabled": False,
            "tavily_api_key": tavily.api_key,
            "tavily_base_url": tavily_url,
            "twilio_api_base_url": rest_url,
            **settings,
        }
        async with rig("openai-ga", settings=cfg, responses=replies) as r:
            yield ToolRig(r, tavily, rest)


def output(conn: FakeConnection, call_id: str) -> dict[str, Any]:
    return orjson.loads(conn.function_outputs[call_id])


def creates_after_outputs(conn: FakeConnection) -> list[str]:
    """Client events after the first function_call_output: outputs and response.creates, in order."""
    kinds = [
        "function_call_output" if e["type"] == "conversation.item.create" else e["type"]
        for _, e in conn.received
        if e["type"] in ("conversation.item.create", "response.create")
    ]
    return kinds[kinds.index("function_call_output") :]


async def test_web_search_round_trip() -> None:
    replies = [
        Call("web_search", {"query": "weather in Paris"}, call_id="call_ws"),
        Say("It is sunny.", audio_ms=300),
    ]
    async with tool_rig(replies) as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await conn.wait_for("session.updated")
        assert "web_search" in [tool["name"] for tool in conn.session["tools"]]
        await speak(call)
        await conn.wait_for("response.done", n=2)
        assert t.tavily.queries == ["weather in Paris"]
        assert t.tavily.requests[0].api_key == t.tavily.api_key
        result = output(conn, "call_ws")
        assert result["answer"] and result["results"][0]["url"].startswith("http")
        assert set(result["results"][0]) == {"title", "url", "snippet"}
        assert creates_after_outputs(conn) == ["function_call_output", "response.create"]
        assert conn.active_response_conflicts == 0 and not conn.invalid_events
        await call.stop()
    record = await t.rt.app.state.store.get(call.call_sid)
    audit = record["tools"][0]
    assert audit["name"] == "web_search" and audit["outcome"] == "ok" and audit["output_bytes"] > 0


async def test_two_tool_calls_in_one_response_one_response_create() -> None:
    replies = [
        Calls(
            [
                Call("web_search", {"query": "a"}, call_id="c1"),
                Call("web_search", {"query": "b"}, call_id="c2"),
            ]
        ),
        Say("Both done.", audio_ms=300),
    ]
    async with tool_rig(replies) as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2)
        assert sorted(q or "" for q in t.tavily.queries) == ["a", "b"]
        assert set(conn.function_outputs) == {"c1", "c2"}
        assert creates_after_outputs(conn) == [
            "function_call_output",
            "function_call_output",
            "response.create",
        ]
        assert conn.active_response_conflicts == 0
        await call.stop()


@pytest.mark.parametrize(
    ("status", "delay", "needle"), [(401, 0.0, "key"), (429, 0.0, "limit"), (None, 30.0, "")]
)
async def test_tavily_failures_become_speakable_outputs(status, delay, needle) -> None:
    tavily = FakeTavily(status=status, delay=delay)
    replies = [Call("web_search", {"query": "news"}, call_id="c1"), Say("Sorry about that.", audio_ms=300)]
    async with tool_rig(replies, tavily=tavily) as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2, timeout=20)
        result = output(conn, "c1")
        assert "error" in result and needle in result["error"].lower()
        await call.wait_for_media()  # the call goes on: the next reply is played
        await call.stop()


async def test_invalid_arguments_become_error_output() -> None:
    replies = [Call("web_search", '{"query": ', call_id="c1"), Say("Let me try again.", audio_ms=200)]
    async with tool_rig(replies) as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2)
        assert "error" in output(conn, "c1") and not t.tavily.requests
        await call.stop()


async def test_end_call_hangs_up_only_after_goodbye_played() -> None:
    replies = [Call("end_call", {"reason": "caller said bye"}, call_id="c1"), Say("Goodbye!", audio_ms=800)]
    async with tool_rig(replies) as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        update = await t.rest.wait_update(timeout=10)
        assert update.status == "completed" and update.call_sid == call.call_sid
        goodbye = conn.audio_sent[list(conn.audio_sent)[-1]]
        assert len(goodbye) == 800 * 8
        chunks = [c for c in call.outbound_chunks if c.stopped_at is not None]
        assert sum(c.played_bytes for c in chunks) >= len(goodbye)
        assert update.at >= max(c.stopped_at for c in chunks)  # hung up after the last byte played
        await call.stop()
    record = await t.rt.app.state.store.get(call.call_sid)
    assert record["tools"][0]["name"] == "end_call"


async def test_transfer_off_allowlist_refused_and_allowed_one_redirects() -> None:
    replies = [
        Call("transfer_call", {"destination": "+19999999999"}, call_id="bad"),
        Say("I can't transfer you there.", audio_ms=200),
        Call("transfer_call", {"destination": "sales"}, call_id="good"),
        Say("Connecting you to sales.", audio_ms=200),
    ]
    async with tool_rig(replies, transfer_allowlist="sales=+15557654321") as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2)
        refusal = output(conn, "bad")
        assert "sales" in str(refusal) and not t.rest.updates
        await speak(call)
        update = await t.rest.wait_update(timeout=10)
        assert "<Dial>+15557654321</Dial>" in (update.twiml or "")
        confirmation = conn.audio_sent[list(conn.audio_sent)[-1]]
        chunks = [c for c in call.outbound_chunks if c.stopped_at is not None]
        assert sum(c.played_bytes for c in chunks) >= len(confirmation) == 200 * 8
        assert update.at >= max(c.stopped_at for c in chunks)  # "connecting you" was heard first
        await call.stop()


def _whisper_url(twiml: str) -> str:
    number = ElementTree.fromstring(twiml).find("./Dial/Number")
    assert number is not None, twiml
    return number.attrib["url"]


async def _post_whisper(
    rt: Rig, url: str, form: dict[str, str], *, signed_url: str | None = None
) -> httpx.Response:
    """POSTs the whisper request as Twilio does: signed over the whole public URL (query included)."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(signed_url or url, form)
    parts = urlsplit(url)
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            f"{rt.url}{parts.path}?{parts.query}", data=form, headers={"X-Twilio-Signature": signature}
        )


async def test_warm_transfer_holds_the_caller_and_whispers_the_summary() -> None:
    """With a summary: the caller hears a hold message, the person dialled hears the summary (the
    signed `<Number url>` route) before the call is bridged; unsigned or tampered requests get 403."""
    summary = "Ada Lovelace\n wants to upgrade order A-42 & asks about <express> delivery."
    replies = [
        Call("transfer_call", {"destination": "sales", "summary": "x" * 301}, call_id="long"),
        Say("Let me try that again.", audio_ms=200),
        Call("transfer_call", {"destination": "sales", "summary": summary}, call_id="warm"),
        Say("Connecting you to sales.", audio_ms=200),
    ]
    async with tool_rig(replies, transfer_allowlist="sales=+15557654321") as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2)
        refusal = output(conn, "long")["error"]
        assert "summary" in refusal and "300" in refusal and not t.rest.updates
        await speak(call)
        update = await t.rest.wait_update(timeout=10)
        assert output(conn, "warm")["warm"] is True
        twiml = update.twiml or ""
        root = ElementTree.fromstring(twiml)
        assert [child.tag for child in root] == ["Say", "Dial"]
        assert root[0].text == HOLD_MESSAGE
        assert root.find("./Dial/Number").text == "+15557654321"  # type: ignore[union-attr]
        url = _whisper_url(twiml)
        assert url.startswith(PUBLIC_URL + "/transfer-whisper?") and len(url) < 2000
        assert summary not in url  # carried in the signed token, not readable in the URL
        chunks = [c for c in call.outbound_chunks if c.stopped_at is not None]
        assert update.at >= max(c.stopped_at for c in chunks)  # "connecting you" was heard first
        await call.stop()

        form = {  # the new leg's webhook: its own CallSid, the transferred call as ParentCallSid
            "CallSid": "CA" + "f" * 32,
            "ParentCallSid": call.call_sid,
            "AccountSid": ACCOUNT_SID,
            "From": "+15550001111",
            "To": "+15557654321",
            "CallStatus": "in-progress",
            "Direction": "outbound-dial",
        }
        answer = await _post_whisper(t.rt, url, form)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/xml")
        spoken = ElementTree.fromstring(answer.text)
        assert [child.tag for child in spoken] == ["Say"]
        assert spoken[0].text == " ".join(summary.split())

        async with httpx.AsyncClient(timeout=10) as client:  # unsigned
            unsigned = await client.post(t.rt.url + urlsplit(url).path + "?" + urlsplit(url).query, data=form)
        assert unsigned.status_code == 403
        token = urlsplit(url).query.removeprefix("t=")
        body, sig = token.split(".")
        forged_body = (
            base64.urlsafe_b64encode(
                base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(b"Ada", b"Bob")
            )
            .rstrip(b"=")
            .decode()
        )
        forged = f"{PUBLIC_URL}/transfer-whisper?t={forged_body}.{sig}"
        assert (await _post_whisper(t.rt, forged, form)).status_code == 403  # Twilio-signed, token forged
        other_url = url + "x"  # signed for another URL than the one requested
        assert (await _post_whisper(t.rt, url, form, signed_url=other_url)).status_code == 403
        stranger = {**form, "ParentCallSid": "CA" + "e" * 32}
        assert (await _post_whisper(t.rt, url, stranger)).status_code == 400
    record = await t.rt.app.state.store.get(call.call_sid)
    audits = {entry["call_id"]: entry for entry in record["tools"]}
    assert audits["long"]["outcome"] == "invalid_arguments"
    assert audits["warm"]["outcome"] == "ok" and audits["warm"]["arguments"]["summary"]


async def test_a_transfer_without_summary_stays_a_plain_dial() -> None:
    replies = [
        Call("transfer_call", {"destination": "sales", "summary": "  "}, call_id="t1"),
        Say("Connecting you to sales.", audio_ms=200),
    ]
    async with tool_rig(replies, transfer_allowlist="sales=+15557654321") as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await conn.wait_for("session.updated")
        (schema,) = [tool["parameters"] for tool in conn.session["tools"] if tool["name"] == "transfer_call"]
        assert schema["properties"]["summary"]["maxLength"] == 300 and schema["required"] == ["destination"]
        await speak(call)
        update = await t.rest.wait_update(timeout=10)
        assert update.twiml == "<Response><Dial>+15557654321</Dial></Response>"
        assert output(conn, "t1")["warm"] is False
        await call.stop()


async def test_a_transfer_twilio_refuses_is_logged_and_the_call_goes_on(caplog) -> None:
    """The transfer happens after "connecting you" played; if Twilio then refuses it, the error is
    logged with Twilio's reason and the caller is still connected to the agent."""
    replies = [
        Call("transfer_call", {"destination": "sales"}, call_id="t1"),
        Say("Connecting you to sales.", audio_ms=200),
        Say("Still here.", audio_ms=200),
    ]
    async with tool_rig(replies, transfer_allowlist="sales=+15557654321") as t, t.rt.caller() as call:
        t.rest.status = 404  # the call is unknown to Twilio
        conn = await t.rt.dial(call)
        await speak(call)
        await t.rest.wait_requests(1, timeout=10)
        await speak(call)
        await conn.wait_for("response.done", n=3)
        await call.wait_for_media(min_bytes=400 * 8, timeout=5)  # the agent answered after the failure
        await call.stop()
    assert "Twilio has no call" in caplog.text and "HTTP 404" in caplog.text
    record = await t.rt.app.state.store.get(call.call_sid)
    assert record["outcome"] != "error" and record["tools"][0]["outcome"] == "ok"


async def test_user_tool_module_loaded_and_called() -> None:
    replies = [
        Call("order_status", {"order_id": "A-42"}, call_id="c1"),
        Say("Your order has shipped.", audio_ms=200),
    ]
    async with tool_rig(replies, relay_tools="tests.fixtures.user_tools") as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await conn.wait_for("session.updated")
        assert "order_status" in [tool["name"] for tool in conn.session["tools"]]
        await speak(call)
        await conn.wait_for("response.done", n=2)
        assert output(conn, "c1") == {"order_id": "A-42", "status": "shipped", "call_sid": call.call_sid}
        await call.stop()


@pytest.mark.slow
async def test_slow_tool_plays_hold_tone_then_answer_and_barge_in_still_works() -> None:
    replies = [
        Call("slow_lookup", {"topic": "invoices"}, call_id="c1"),
        Say("I found your invoices.", audio_ms=300),
        Call("slow_lookup", {"topic": "refunds"}, call_id="c2"),
        Say("Yes?", audio_ms=200),
    ]
    async with tool_rig(replies, relay_tools="tests.fixtures.user_tools") as t, t.rt.caller() as call:
        conn = await t.rt.dial(call)
        await speak(call)
        await conn.wait_for("response.done", n=2, timeout=10)
        assert conn.function_outputs["c1"] == "found invoices"
        # the hold tone played while the tool ran, then was cleared for the answer
        await call.wait_for_clear(timeout=5)
        await call.wait_for_media(min_bytes=8000 + 300 * 8)
        await call.wait_playback_idle()
        hold_bytes = len(call.received_audio) - sum(len(a) for a in conn.audio_sent.values())
        assert hold_bytes >= 8000
        # second slow tool: the caller talks over the hold tone
        await speak(call)
        await call.wait_for_clear(timeout=10, count=2)
        await speak(call)  # speaking during the hold: the hold stops, no truncate of a real item
        await conn.wait_for("response.done", n=3, timeout=10)
        assert not conn.truncates or all(tr.accepted for tr in conn.truncates)
        assert not [e for e in conn.errors if e.get("code") != "session_expired"]
        assert conn.active_response_conflicts == 0
        await call.stop()
