"""Outbound calls over real sockets: `POST /calls` → the Twilio REST fake's create request → its
signed request of the answer URL → `<Connect><Stream>` with a token for the new SID → a Media
Stream and a realtime session; the AMD callback; every refusal; `relay dial`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from relay.app import create_app
from relay.placeholders import CallTexts, call_values, texts_for_call
from relay.sids import is_call_sid
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio import FakeTwilioCall
from relay.testing.twilio_rest import FakeTwilioRest
from relay.twilio_messages import Start
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from tests.redis_server import redis_server  # noqa: F401
from tests.rig import PUBLIC_URL
from webhooks.token import verify_stream_token

ADMIN = "admin-outbound-token"
FROM = "+15550001000"
TO = "+15551234567"
TEXTS = {
    "instructions": "You call {name} from ACME ({direction} call to {called}).",
    "greeting": "Greet {name} by name.",
    "voicemail_message": "Hello {name}, ACME here. Please call us back.",
}


@dataclass
class Outbound:
    url: str
    app: Any
    rest: FakeTwilioRest
    server: FakeRealtimeServer

    async def post(self, body: Any, token: str | None = ADMIN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with httpx.AsyncClient(base_url=self.url) as client:
            if isinstance(body, bytes):
                return await client.post("/calls", content=body, headers=headers)
            return await client.post("/calls", json=body, headers=headers)

    async def record(self, call_sid: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url) as client:
            return await client.get(f"/calls/{call_sid}", headers={"Authorization": f"Bearer {ADMIN}"})

    def metric(self, name: str, **labels: str) -> float | None:
        return self.app.state.metrics.registry.get_sample_value(name, labels)


@contextlib.asynccontextmanager
async def outbound(replies: list[Any] | None = None, **settings: Any) -> AsyncIterator[Outbound]:
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    server_kw = {"responses": replies} if replies is not None else {}
    async with FakeRealtimeServer(**server_kw) as server, rest.serve() as rest_url:
        config: dict[str, Any] = {
            "relay_mode": "realtime",
            "openai_base_url": server.openai_base_url,
            "twilio_api_base_url": rest_url,
            "twilio_phone_number": FROM,
            "relay_admin_token": ADMIN,
            "public_url": PUBLIC_URL,
            **TEXTS,
            **settings,
        }
        app = create_app(make_settings(**config))
        async with serve_app(app) as url:
            assert rest.outbound is not None
            rest.outbound.relay_url = url
            yield Outbound(url, app, rest, server)


def texts_of(manager: Any, start: Start) -> CallTexts:
    """The texts a call starting with `start` gets from its agent."""
    agent, values = manager.call_agent(start)
    return agent.texts(values)


async def record_with(env: Outbound, call_sid: str, field: str) -> dict[str, Any]:
    """The call's record once it has `field` (record writes are queued, not awaited)."""
    seq = env.app.state.manager.outbox.put(call_sid, "upsert")  # a marker behind the writes so far
    assert await env.app.state.manager.outbox.wait_written(seq, timeout=5)
    response = await env.record(call_sid)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    assert field in record, record
    return record


async def test_post_calls_places_the_call_and_the_answer_connects_a_stream() -> None:
    async with outbound() as env:
        response = await env.post({"to": TO, "context": {"name": "Ada"}})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "queued" and is_call_sid(body["call_sid"])
        call_sid = body["call_sid"]

        assert env.rest.outbound is not None
        placed = await env.rest.outbound.wait_answered()
        assert placed.call_sid == call_sid and placed.to == TO and placed.from_ == FROM
        assert placed.form["Url"] == f"{PUBLIC_URL}/outbound-answer"
        assert placed.form["StatusCallback"] == f"{PUBLIC_URL}/call-status"
        assert placed.form["MachineDetection"] == "DetectMessageEnd" and placed.form["AsyncAmd"] == "true"
        assert placed.form["AsyncAmdStatusCallback"] == f"{PUBLIC_URL}/amd-status"
        assert env.rest.requests[0].username == ACCOUNT_SID and env.rest.requests[0].password == AUTH_TOKEN
        assert placed.callbacks == [(f"{PUBLIC_URL}/outbound-answer", 200), (f"{PUBLIC_URL}/amd-status", 204)]

        twiml = placed.answer
        assert twiml is not None and twiml.stream_url == "wss://relay.example.com/media-stream", twiml
        assert twiml.parameters["callSid"] == call_sid and twiml.parameters["direction"] == "outbound-api"
        assert twiml.parameters["from"] == FROM and twiml.parameters["to"] == TO
        verify_stream_token(twiml.parameters["token"], call_sid, env.app.state.settings)

        callee = callee_for(env, call_sid)
        async with callee:
            assert await callee.connect(twiml)
            conn = await env.server.wait_connection()  # opened early, at the answer webhook
            update = await conn.wait_for("session.update", direction="received")
            assert "send_digits" in [tool["name"] for tool in update["session"]["tools"]]  # outbound
            record = await record_with(env, call_sid, "answered_by")
            assert record["direction"] == "outbound-api" and record["from"] == FROM and record["to"] == TO
            assert record["context"] == {"name": "Ada"} and record["machine_detection"] is True
            assert record["answered_by"] == "human" and record["stream_sid"] == callee.stream_sid
        assert env.metric("relay_outbound_calls_total", outcome="created") == 1
        assert env.metric("relay_amd_results_total", answered_by="human") == 1


async def test_the_answer_webhook_fills_the_texts_for_the_call_and_amd_reaches_the_record() -> None:
    async with outbound() as env:
        assert env.rest.outbound is not None
        env.rest.outbound.answered_by = "machine_end_beep"
        response = await env.post({"to": TO, "context": {"name": "Ada", "ref": 42}})
        call_sid = response.json()["call_sid"]
        await env.rest.outbound.wait_answered()
        texts = texts_of(env.app.state.manager, Start(stream_sid="MZ" + "0" * 32, call_sid=call_sid))
        values = call_values({"name": "Ada", "ref": "42"}, caller=FROM, called=TO, direction="outbound-api")
        assert texts == texts_for_call(env.app.state.settings, values)
        assert texts.instructions == f"You call Ada from ACME (outbound-api call to {TO})."
        assert texts.greeting == "Greet Ada by name."
        assert texts.voicemail_message == "Hello Ada, ACME here. Please call us back."
        record = await record_with(env, call_sid, "answered_by")
        assert record["answered_by"] == "machine_end_beep" and record["machine_detection_ms"] == 2300
        assert env.metric("relay_amd_results_total", answered_by="machine_end_beep") == 1
        # no stream ran yet: the result waits for the call's run, once
        assert env.app.state.manager.notes.take_answered_by(call_sid) == "machine_end_beep"
        assert env.app.state.manager.notes.take_answered_by(call_sid) is None


async def test_an_inbound_call_fills_caller_called_and_direction_and_records_its_direction() -> None:
    async with outbound() as env:
        caller = FakeTwilioCall(base_url=env.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL, to=FROM)
        twiml = await caller.fetch_twiml()
        assert twiml.status_code == 200 and twiml.parameters["direction"] == "inbound"
        start = Start(stream_sid="MZ" + "0" * 32, call_sid=caller.call_sid)
        texts = texts_of(env.app.state.manager, start)
        assert texts.instructions == f"You call  from ACME (inbound call to {FROM})."  # no context: empty
        record = await record_with(env, caller.call_sid, "direction")
        assert record["direction"] == "inbound" and record["from"] == caller.from_


async def test_without_machine_detection_no_amd_is_asked() -> None:
    async with outbound(outbound_machine_detection=False) as env:
        assert env.rest.outbound is not None
        assert (await env.post({"to": TO, "context": {"name": "Ada"}})).status_code == 201
        with_amd = {"to": TO, "context": {"name": "Bo"}, "machine_detection": True}
        assert (await env.post(with_amd)).status_code == 201
        first, second = await env.rest.outbound.wait_answered(1), await env.rest.outbound.wait_answered(2)
        assert not {"MachineDetection", "AsyncAmd", "AsyncAmdStatusCallback"} & set(first.form)
        assert second.form["AsyncAmd"] == "true"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        ([TO], "must be a JSON object"),
        ({"context": {"name": "Ada"}}, "'to' is missing"),
        ({"to": "555-1234", "context": {"name": "Ada"}}, "E.164"),
        ({"to": 15551234567}, "not a string"),
        ({"to": TO, "context": ["Ada"]}, "context must be a JSON object"),
        ({"to": TO, "context": {"first name": "Ada"}}, "not a placeholder name"),
        ({"to": TO, "context": {"name": "Ada", "caller": "x"}}, "the relay's own placeholder"),
        ({"to": TO, "context": {"name": "x" * 1001}}, "at most 1000"),
        ({"to": TO, "context": {f"k{i}": "v" for i in range(33)}}, "at most 32"),
        ({"to": TO, "context": {"name": {"first": "Ada"}}}, "a string, a number or a boolean"),
        ({"to": TO, "context": {"name": "Ada"}, "machine_detection": "yes"}, "true or false"),
        ({"to": TO, "context": {"name": "Ada"}, "agent": 7}, "'agent' must be a name"),
        ({"to": TO, "context": {"name": "Ada"}, "callback": "x"}, "unknown field 'callback'"),
        ({"to": TO}, "unknown placeholder {name} in INSTRUCTIONS"),
    ],
)
async def test_a_bad_request_is_400_with_its_reason_and_nothing_is_placed(body: Any, reason: str) -> None:
    async with outbound() as env:
        response = await env.post(body)
        assert response.status_code == 400 and reason in response.json()["error"], response.text
        assert env.rest.requests == []
        assert env.metric("relay_outbound_calls_total", outcome="bad_request") == 1


async def test_an_unknown_placeholder_of_the_voicemail_message_is_named() -> None:
    texts = {"instructions": "Be brief.", "greeting": "Hi.", "voicemail_message": "Call {agent_name}."}
    async with outbound(**texts) as env:
        response = await env.post({"to": TO})
        assert response.status_code == 400
        assert "unknown placeholder {agent_name} in VOICEMAIL_MESSAGE" in response.json()["error"]
        assert (await env.post({"to": TO, "context": {"agent_name": "Bo"}})).status_code == 201


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_without_the_admin_token_it_is_401(token: str | None) -> None:
    async with outbound() as env:
        response = await env.post({"to": TO, "context": {"name": "Ada"}}, token=token)
        assert response.status_code == 401 and env.rest.requests == []
        assert env.metric("relay_outbound_calls_total", outcome="unauthorized") == 1


async def test_without_an_admin_token_the_route_does_not_exist() -> None:
    async with outbound(relay_admin_token=None) as env:
        assert (await env.post({"to": TO}, token="anything")).status_code in (404, 405)


async def test_at_max_concurrent_calls_it_is_503_until_an_unanswered_call_ends() -> None:
    async with outbound(max_concurrent_calls=1) as env:
        assert env.rest.outbound is not None
        env.rest.outbound.answer = False  # the first call rings, holding the only slot
        first = await env.post({"to": TO, "context": {"name": "Ada"}})
        assert first.status_code == 201
        busy = await env.post({"to": TO, "context": {"name": "Bo"}})
        assert busy.status_code == 503 and busy.json()["error"].startswith("busy"), busy.text
        assert busy.headers["retry-after"] == "5"
        placed = await env.rest.outbound.wait_call()
        assert await env.rest.outbound.send_status(placed, "no-answer") == 204
        assert (await env.post({"to": TO, "context": {"name": "Bo"}})).status_code == 201
        record = await record_with(env, first.json()["call_sid"], "outcome")
        assert record["status"] == "ended" and record["outcome"] == "no-answer"
        assert env.metric("relay_outbound_calls_total", outcome="busy") == 1


async def test_the_reserved_slot_is_the_callees_when_it_answers_at_capacity() -> None:
    """The only slot is the ringing outbound call's: an inbound caller meanwhile hears that the
    lines are busy, and the callee who answers gets the stream."""
    async with outbound(max_concurrent_calls=1) as env:
        assert env.rest.outbound is not None
        env.rest.outbound.answer = False
        assert (await env.post({"to": TO, "context": {"name": "Ada"}})).status_code == 201
        inbound = await FakeTwilioCall(
            base_url=env.url, auth_token=AUTH_TOKEN, public_url=PUBLIC_URL
        ).fetch_twiml()
        assert inbound.stream_url is None and inbound.say is not None and "busy" in inbound.say
        placed = await env.rest.outbound.wait_call()
        twiml = await env.rest.outbound.answer_call(placed)
        assert twiml.stream_url == "wss://relay.example.com/media-stream" and "busy" not in (twiml.say or "")
        assert twiml.parameters["callSid"] == placed.call_sid


async def test_while_draining_it_is_503() -> None:
    async with outbound() as env:
        assert await env.app.state.manager.drain(0) == 0
        response = await env.post({"to": TO, "context": {"name": "Ada"}})
        assert response.status_code == 503 and response.json()["error"].startswith("draining")
        assert env.rest.requests == []


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"twilio_phone_number": ""}, "TWILIO_PHONE_NUMBER is not set"),
        ({"twilio_account_sid": ""}, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set"),
        ({"public_url": ""}, "PUBLIC_URL is not set"),
        ({"openai_api_key": None}, "no provider credentials"),
    ],
)
async def test_without_what_placing_a_call_needs_it_is_503_naming_it(
    settings: dict[str, Any], reason: str
) -> None:
    async with outbound(**settings) as env:
        response = await env.post({"to": TO, "context": {"name": "Ada"}})
        assert response.status_code == 503 and reason in response.json()["error"], response.text
        assert env.metric("relay_outbound_calls_total", outcome="unconfigured") == 1


async def test_a_twilio_error_is_502_with_twilios_message_and_the_slot_is_given_back() -> None:
    async with outbound(max_concurrent_calls=1) as env:
        env.rest.status = 400
        response = await env.post({"to": TO, "context": {"name": "Ada"}})
        assert response.status_code == 502, response.text
        body = response.json()
        assert body["twilio_status"] == 400
        assert body["twilio_message"] == "The 'To' number +15550000000 is not a valid phone number."
        assert body["twilio_message"] in body["error"]
        env.rest.status = None
        assert (await env.post({"to": TO, "context": {"name": "Ada"}})).status_code == 201
        assert env.metric("relay_outbound_calls_total", outcome="twilio_error") == 1


async def test_unsigned_answer_and_amd_callbacks_are_403_and_store_nothing() -> None:
    async with outbound() as env:
        call_sid = "CA" + "7" * 32
        form = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": FROM, "To": TO}
        async with httpx.AsyncClient(base_url=env.url) as client:
            answer = await client.post("/outbound-answer", data={**form, "Direction": "outbound-api"})
            amd = await client.post(
                "/amd-status", data={**form, "AnsweredBy": "human"}, headers={"X-Twilio-Signature": "bad"}
            )
        assert answer.status_code == 403 and amd.status_code == 403
        assert env.metric("relay_calls_rejected_total", reason="signature") == 2
        seq = env.app.state.manager.outbox.put("CA" + "8" * 32, "upsert")
        assert await env.app.state.manager.outbox.wait_written(seq, timeout=5)
        assert (await env.record(call_sid)).status_code == 404
        assert env.metric("relay_amd_results_total", answered_by="human") is None
        assert env.server.connections == []  # no early provider connection either


async def test_a_signed_answer_with_a_malformed_direction_is_refused_logged_and_counted(caplog) -> None:
    """A signed `/outbound-answer` whose Direction is not one of Twilio's: 400, one WARNING naming
    the value, counted as malformed; no stream is offered and nothing is connected."""
    from tests.test_webhooks import signed

    async with outbound() as env:
        form = {"CallSid": "CA" + "6" * 32, "AccountSid": ACCOUNT_SID, "From": FROM, "To": TO}
        form["Direction"] = "sideways<script>"
        headers = signed(PUBLIC_URL + "/outbound-answer", form)
        async with httpx.AsyncClient(base_url=env.url) as client:
            answer = await client.post("/outbound-answer", data=form, headers=headers)
        assert answer.status_code == 400 and "Direction must be" in answer.text
        assert "<Stream" not in answer.text
        assert "refused /outbound-answer: Direction 'sideways<script>'" in caplog.text
        assert env.metric("relay_calls_rejected_total", reason="malformed") == 1
        assert env.server.connections == []


async def test_another_instance_answers_with_the_context_from_redis(redis_server) -> None:  # noqa: F811
    """Placed by one instance, answered by another: the context comes from the shared record."""
    async with outbound(redis_url=redis_server.url) as placing:
        other = create_app(placing.app.state.settings)
        async with serve_app(other) as other_url:
            assert placing.rest.outbound is not None
            placing.rest.outbound.answer = False
            response = await placing.post({"to": TO, "context": {"name": "Ada"}})
            call_sid = response.json()["call_sid"]
            await record_with(placing, call_sid, "context")
            placing.rest.outbound.relay_url = other_url
            placed = await placing.rest.outbound.wait_call()
            twiml = await placing.rest.outbound.answer_call(placed)
            assert twiml.status_code == 200 and twiml.parameters["callSid"] == call_sid
            texts = texts_of(other.state.manager, Start(stream_sid="MZ" + "0" * 32, call_sid=call_sid))
            assert texts.greeting == "Greet Ada by name."


async def test_relay_dial_prints_the_call_sid(tmp_path) -> None:
    async with outbound() as env:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "dial", TO, "--context", "name=Ada", "--url", env.url,
            "--token", ADMIN, "--machine-detection", "off",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err.decode()
        assert env.rest.outbound is not None
        placed = await env.rest.outbound.wait_call()
        assert out.decode() == placed.call_sid + "\n"
        assert placed.to == TO and "AsyncAmd" not in placed.form


async def test_relay_dial_says_why_the_relay_refused(tmp_path) -> None:
    async with outbound() as env:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "dial", "555-1234", "--url", env.url, "--token", ADMIN,
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 1 and out == b""
        assert "HTTP 400" in err.decode() and "E.164" in err.decode()


def callee_for(env: Outbound, call_sid: str) -> FakeTwilioCall:
    return FakeTwilioCall(
        base_url=env.url,
        auth_token=AUTH_TOKEN,
        public_url=PUBLIC_URL,
        call_sid=call_sid,
        account_sid=ACCOUNT_SID,
        from_=FROM,
        to=TO,
    )


@contextlib.asynccontextmanager
async def answered_by_machine(env: Outbound, answered_by: str) -> AsyncIterator[FakeTwilioCall]:
    """An outbound call to Ada that a machine answers (AMD reports `answered_by`), its stream open."""
    assert env.rest.outbound is not None
    env.rest.outbound.answered_by = answered_by
    call_sid = (await env.post({"to": TO, "context": {"name": "Ada"}})).json()["call_sid"]
    placed = await env.rest.outbound.wait_answered()
    assert placed.answer is not None
    async with callee_for(env, call_sid) as callee:
        assert await callee.connect(placed.answer)
        yield callee
        await callee.stop()


@pytest.mark.parametrize("early_greeting", [True, False])
async def test_a_machine_gets_the_voicemail_message_and_the_call_ends_after_it_played(
    early_greeting: bool,
) -> None:
    """AnsweredBy machine_end_beep: the agent says VOICEMAIL_MESSAGE (placeholders filled) instead
    of going on with the greeting, and the relay hangs up once it has played, as end_call does."""
    message = "Hello Ada, ACME here. Please call us back."
    replies = [
        Say("Hi Ada, this is ACME calling about your order.", audio_ms=2000),
        Say(message, audio_ms=800),
    ]
    async with (
        outbound(replies, realtime_early_greeting=early_greeting) as env,
        answered_by_machine(env, "machine_end_beep") as callee,
    ):
        conn = await env.server.wait_connection()
        asked = await conn.wait_for(
            "response.create",
            direction="received",
            predicate=lambda e: message in str((e.get("response") or {}).get("instructions", "")),
        )
        assert asked["response"]["instructions"].endswith(message)
        # from the message on, the machine's sounds start no answer and interrupt nothing
        quiet = conn.events("session.update", "received")[-1]["session"]["audio"]["input"]["turn_detection"]
        assert quiet["create_response"] is False and quiet["interrupt_response"] is False
        hang_up = await env.rest.wait_update(timeout=15)
        assert hang_up.status == "completed" and hang_up.call_sid == callee.call_sid
        said = conn.audio_sent[list(conn.audio_sent)[-1]]
        chunks = [c for c in callee.outbound_chunks if c.stopped_at is not None]
        assert len(said) == 800 * 8 and sum(c.played_bytes for c in chunks) >= len(said)
        assert hang_up.at >= max(c.stopped_at for c in chunks)  # after the message played
    assert conn.active_response_conflicts == 0
    await env.app.state.manager.wait_idle(timeout=5)
    assert (await env.app.state.store.get(callee.call_sid))["outcome"] == "voicemail"


async def test_a_machine_with_no_voicemail_message_is_hung_up_at_once() -> None:
    async with (
        outbound(voicemail_message="") as env,
        answered_by_machine(env, "machine_end_silence") as callee,
    ):
        hang_up = await env.rest.wait_update(timeout=5)
        assert hang_up.status == "completed" and hang_up.call_sid == callee.call_sid
    await env.app.state.manager.wait_idle(timeout=5)
    assert (await env.app.state.store.get(callee.call_sid))["outcome"] == "machine"


OUTBOUND_AGENTS = f"""
[agents.collections]
numbers = ["{FROM}"]
instructions = "You are Collections, calling {{name}}."
greeting = "Greet {{name}}."

[agents.sales]
description = "Offers."
instructions = "You are Sales, calling {{name}} about {{offer}}."
greeting = "Greet {{name}}."
"""


async def test_an_outbound_call_is_made_by_the_agent_it_names_else_by_its_numbers_agent(tmp_path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(OUTBOUND_AGENTS)
    async with outbound(agents_file=str(path)) as env:
        assert env.rest.outbound is not None
        refused = await env.post({"to": TO, "agent": "marketing"})
        assert refused.status_code == 400 and "unknown agent 'marketing'" in refused.json()["error"]
        assert "collections, default, sales" in refused.json()["error"]
        missing = await env.post({"to": TO, "agent": "sales", "context": {"name": "Ada"}})
        assert missing.status_code == 400 and "{offer} in INSTRUCTIONS" in missing.json()["error"]
        assert not env.rest.outbound.calls  # nothing was placed
        sales = await env.post({"to": TO, "agent": "sales", "context": {"name": "Ada", "offer": "fibre"}})
        own = await env.post({"to": TO, "context": {"name": "Bo"}})  # From is collections' number
        for n, (response, expected) in enumerate(
            [(sales, "You are Sales, calling Ada about fibre."), (own, "You are Collections, calling Bo.")],
            start=1,
        ):
            assert response.status_code == 201, response.text
            placed = await env.rest.outbound.wait_answered(n)
            assert placed.answer is not None
            async with callee_for(env, placed.call_sid) as callee:
                assert await callee.connect(placed.answer)
                conn = await env.server.wait_connection(n=n)
                update = await conn.wait_for("session.update", direction="received")
                assert update["session"]["instructions"] == expected
            record = await record_with(env, placed.call_sid, "agent")
            assert record["agent"] == ("sales" if n == 1 else "collections")


async def test_relay_dial_names_the_agent(tmp_path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(OUTBOUND_AGENTS)
    async with outbound(agents_file=str(path)) as env:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "dial", TO, "--agent", "sales", "--context", "name=Ada",
            "--context", "offer=fibre", "--url", env.url, "--token", ADMIN,
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err.decode()
        call_sid = out.decode().strip()
        record = await record_with(env, call_sid, "agent")
        assert record["agent"] == "sales"
