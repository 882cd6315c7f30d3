"""`relay call --outbound` and `--digits` against the relay under uvicorn, a fake Realtime server and
a Twilio REST fake that places calls without answering them (the simulator is the callee): the
voicemail left and the relay's REST hang-up, the AMD report of a person, key presses and their
latency, every refusal; and the fake's held fetch that tells the callee the call is completed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from relay.app import create_app
from relay.cli import main
from relay.simulate import CallOptions, Utterance, run_call
from relay.simulate.outbound import BEEP_HZ, BEEP_MS, machine_utterances
from relay.simulate.script import KEY_GAP_MS, OutboundCall
from relay.testing.audio import ulaw_to_float
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from relay.testing.twilio_rest import FakeTwilioRest
from relay.testing.twilio_rest_calls import FakeOutbound
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, make_settings
from tests.rig import PUBLIC_URL

ADMIN = "admin-simulate-token"
FROM = "+15550001000"
TO = "+15551234567"


@dataclass
class Env:
    url: str
    app: Any
    rest: FakeTwilioRest
    rest_url: str
    server: FakeRealtimeServer

    def options(self, *, admin: str | None = ADMIN, api: str | None = None, **outbound: Any) -> CallOptions:
        """The callee of a call to Ada, with the relay's credentials; `outbound` overrides."""
        call = {"to": TO, "context": {"name": "Ada"}, "account_sid": ACCOUNT_SID, "from_": FROM, **outbound}
        return CallOptions(
            url=self.url,
            public_url=PUBLIC_URL,
            auth_token=AUTH_TOKEN,
            admin_token=admin,
            quiet_ms=300,
            timeout=40,
            outbound=OutboundCall(**call, twilio_api_url=api or self.rest_url),
        )

    async def record(self, call_sid: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.get(f"/calls/{call_sid}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record


@contextlib.asynccontextmanager
async def relay_placing_calls(replies: list[Any] | None = None, **settings: Any) -> AsyncIterator[Env]:
    """The relay, its realtime model and a Twilio REST fake that never answers the calls it places."""
    rest = FakeTwilioRest(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        outbound=FakeOutbound(auth_token=AUTH_TOKEN, answer=False),
    )
    server_kw: dict[str, Any] = {"responses": replies} if replies is not None else {}
    async with FakeRealtimeServer(**server_kw) as server, rest.serve() as rest_url:
        config: dict[str, Any] = {
            "relay_mode": "realtime",
            "openai_base_url": server.openai_base_url,
            "twilio_api_base_url": rest_url,
            "twilio_phone_number": FROM,
            "relay_admin_token": ADMIN,
            "public_url": PUBLIC_URL,
            "voicemail_message": "Hello {name}, ACME here. Please call us back.",
            **settings,
        }
        app = create_app(make_settings(**config))
        async with serve_app(app) as url:
            yield Env(url, app, rest, rest_url, server)


@pytest.mark.slow
async def test_a_voicemail_callee_records_the_message_and_reports_the_relays_hang_up() -> None:
    async with relay_placing_calls([Say("Hi Ada, ACME here.", audio_ms=1500)]) as env:
        result = await run_call(env.options(voicemail=True))
        record = await env.record(result.call_sid)
        hang_up = await env.rest.wait_update(timeout=1)
    text = result.timeline.text()
    assert result.ok, text
    assert env.rest.outbound is not None and len(env.rest.outbound.calls) == 1
    placed = env.rest.outbound.calls[0]
    assert placed.call_sid == result.call_sid and placed.to == TO and placed.form["AsyncAmd"] == "true"
    assert result.voicemail and result.answered_by == "machine_end_beep" and result.amd_status == 204
    # the relay hung up through the API (after the message played), and the callee said so
    assert hang_up.call_sid == result.call_sid and hang_up.status == "completed"
    assert result.hung_up_via_api and result.message_ms is not None and result.message_ms > 500
    assert result.message_ms <= result.played_ms
    kinds = [e.kind for e in result.timeline.entries]
    order = ["placed", "webhook", "connected", "machine", "machine", "amd", "agent", "hang-up", "machine"]
    assert [k for k in kinds if k in set(order)][: len(order)] == order, text
    assert 'greeting: "Hi, you have reached Ada. Please leave a message after the tone."' in text
    assert "AnsweredBy=machine_end_beep" in text and "→ HTTP 204" in text
    summary = "\n".join(result.summary_lines())
    assert "voicemail        a message was left" in summary
    assert "hang-up          by the relay, through Twilio's REST API (Status=completed)" in summary
    assert record["answered_by"] == "machine_end_beep" and record["direction"] == "outbound-api"


async def test_a_person_is_reported_human_and_their_keys_reach_the_model() -> None:
    """Machine detection on: AnsweredBy=human is reported; `--digits 12#` sends three dtmf events,
    KEY_GAP_MS apart, and the turn's latency runs from the last key."""
    replies = [Say("Hi Ada.", audio_ms=300), Say("Thanks.", audio_ms=300)]
    async with relay_placing_calls(replies) as env:
        options = env.options(machine_detection=True)
        options.utterances = [Utterance.keys("12#")]
        result = await run_call(options)
        conn = await env.server.wait_connection()
        entry = await conn.wait_for(
            "conversation.item.create", direction="received", predicate=lambda e: "12#" in str(e)
        )
    assert result.ok, result.timeline.text()
    assert result.answered_by == "human" and result.amd_status == 204 and not result.voicemail
    assert "The caller pressed 12#" in str(entry)
    (turn,) = result.turns
    assert turn.keys and turn.label == "keys 12#"
    assert turn.started_ms is not None and turn.speech_end_ms is not None
    assert 2 * KEY_GAP_MS <= turn.speech_end_ms - turn.started_ms < 2 * KEY_GAP_MS + 100
    assert turn.latency_ms is not None and 0 <= turn.latency_ms < 1000  # '#' ends the entry at once
    assert not result.hung_up_via_api and result.closed_by_relay is False  # the callee hung up
    assert "last key → first agent audio" in "\n".join(result.summary_lines())


async def test_without_machine_detection_nothing_is_reported_and_none_is_asked() -> None:
    async with relay_placing_calls([Say("Hi Ada.", audio_ms=300)]) as env:
        result = await run_call(env.options(machine_detection=False))
    assert result.ok, result.timeline.text()
    assert env.rest.outbound is not None and "AsyncAmd" not in env.rest.outbound.calls[0].form
    assert result.answered_by is None and "amd" not in result.timeline.kinds()
    assert "AMD report       none (machine detection off for this call)" in result.summary_lines()


async def test_an_inbound_callers_keys_without_hash_end_after_the_dtmf_timeout() -> None:
    async with relay_placing_calls(
        [Say("Hi.", audio_ms=300), Say("Noted.", audio_ms=300)], dtmf_timeout_ms=400
    ) as env:
        options = CallOptions(
            url=env.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, quiet_ms=300,
            utterances=[Utterance.keys("42")],
        )  # fmt: skip
        result = await run_call(options)
    assert result.ok, result.timeline.text()
    (turn,) = result.turns
    assert turn.latency_ms is not None and 400 <= turn.latency_ms < 1400, turn


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"api": "relay"}, "does not serve the fake Twilio REST API"),
        ({"admin": "wrong-token"}, "HTTP 401"),
        ({"to": "555-1234"}, "HTTP 400: 'to' is '555-1234': an E.164 number"),
        ({"admin": None}, "set RELAY_ADMIN_TOKEN"),
    ],
    ids=["relay-not-on-fakes", "wrong-admin-token", "not-e164", "no-admin-token"],
)
async def test_a_call_the_relay_does_not_place_fails_with_its_reason(
    change: dict[str, Any], reason: str
) -> None:
    async with relay_placing_calls() as env:
        if change.get("api") == "relay":
            change["api"] = env.url  # the relay itself serves no Twilio REST API
        result = await run_call(env.options(**change))
    assert result.exit_code == 1 and reason in result.errors[0], result.errors
    assert env.rest.outbound is not None and env.rest.outbound.calls == []
    assert env.server.connections == []


async def test_the_fakes_fetch_is_held_until_the_call_is_completed() -> None:
    rest = FakeTwilioRest(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        outbound=FakeOutbound(auth_token=AUTH_TOKEN, answer=False),
    )
    calls = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls"
    async with rest.serve() as url, httpx.AsyncClient(base_url=url, auth=(ACCOUNT_SID, AUTH_TOKEN)) as client:
        created = await client.post(calls + ".json", data={"To": TO, "From": FROM, "Url": PUBLIC_URL + "/a"})
        sid = created.json()["sid"]
        assert (await client.get(f"{calls}/{sid}.json")).json()["status"] == "in-progress"
        held = asyncio.create_task(client.get(f"{calls}/{sid}.json", params={"Wait": "10"}))
        done, _ = await asyncio.wait([held], timeout=0.3)
        assert not done  # held while the call is in progress
        await client.post(f"{calls}/{sid}.json", data={"Status": "completed"})
        fetched = await asyncio.wait_for(held, timeout=2)
        assert fetched.json()["status"] == "completed"
        listed = (await client.get(calls + ".json")).json()["calls"]
        assert [(c["sid"], c["status"]) for c in listed] == [(sid, "completed")]
        assert (await client.get(f"{calls}/CA{'0' * 32}.json")).status_code == 404
        refused = await client.get(calls + ".json", auth=(ACCOUNT_SID, "wrong"))
        assert refused.status_code == 401
    assert [r.form for r in rest.requests][-1] == {"Status": "completed"}  # reads are not recorded


def test_the_answering_machines_beep_is_a_pure_1_khz_tone_of_half_a_second() -> None:
    outbound = OutboundCall(to=TO, context={"name": "Ada"}, voicemail=True)
    greeting, beep = machine_utterances(outbound)
    assert greeting.label == '"Hi, you have reached Ada. Please leave a message after the tone."'
    assert greeting.duration_ms > 2000
    assert beep.duration_ms == BEEP_MS
    samples = ulaw_to_float(beep.audio)
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.argmax(spectrum) * 8000 / len(samples)
    assert abs(peak_hz - BEEP_HZ) <= 4
    assert (
        spectrum[np.abs(np.fft.rfftfreq(len(samples), 1 / 8000) - BEEP_HZ) > 50].max() < 0.05 * spectrum.max()
    )


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["--voicemail"], {}, "--voicemail, --context, --machine-detection and --agent go with --outbound"),
        (["--to", "555-0100"], {}, "--to '555-0100': an E.164 number, such as +15551234567"),
        (["--outbound", TO], {"RELAY_ADMIN_TOKEN": ""}, "set RELAY_ADMIN_TOKEN"),
        (["--outbound", TO], {"RELAY_ADMIN_TOKEN": "a", "TWILIO_AUTH_TOKEN": ""}, "set TWILIO_AUTH_TOKEN"),
        (["--outbound", TO, "--context", "Ada"], {"RELAY_ADMIN_TOKEN": "a"}, "--context takes name=value"),
        (["--digits", "12x"], {}, "--digits takes the keys 0-9, *, #, A-D"),
    ],
    ids=["voicemail-alone", "to-not-e164", "no-admin-token", "no-auth-token", "bad-context", "bad-key"],
)
def test_relay_call_refuses_what_it_cannot_do_before_calling(
    argv: list[str], env: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    for name, value in env.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    assert main(["call", "--url", "http://127.0.0.1:9", *argv]) == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    ("users", "host", "expected"),
    [
        ({}, "0.0.0.0", {"twilio_phone_number": "+15555550100", "public_url": "http://127.0.0.1:8123"}),
        (
            {"public_url": "", "twilio_phone_number": FROM},
            "127.0.0.2",
            {"public_url": "http://127.0.0.2:8123"},
        ),
        ({"public_url": PUBLIC_URL, "twilio_phone_number": FROM}, "0.0.0.0", {}),
    ],
    ids=["nothing-set", "a-number", "both-set"],
)
def test_serve_fakes_sets_only_what_outbound_calls_lack_and_says_so(
    users: dict[str, str], host: str, expected: dict[str, str]
) -> None:
    from relay.fakes import outbound_overrides

    settings = make_settings(**{"public_url": "", "relay_admin_token": ADMIN, **users})
    overrides, lines = outbound_overrides(settings, host, 8123)
    assert overrides == expected
    said = "\n".join(lines)
    assert ("PUBLIC_URL is not set: it is " + expected.get("public_url", "") in said) is (
        "public_url" in expected
    )
    assert ("TWILIO_PHONE_NUMBER is not set" in said) is ("twilio_phone_number" in expected)
    assert "`relay call --outbound NUMBER` is the callee" in said and "POST /calls is off" not in said
