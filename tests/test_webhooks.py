"""`/incoming-call`, `/call-status`, `/transfer-whisper`, `/health`, `/ready` over a real uvicorn server."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import httpx
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.testing.server import serve_app
from relay.tools.whisper import WHISPER_TTL_S, mint_whisper_token
from tests.conftest import AUTH_TOKEN, make_settings
from webhooks.token import verify_stream_token

FORM = {
    "CallSid": "CA" + "1" * 32,
    "AccountSid": "AC" + "0" * 32,
    "From": "+15550001111",
    "To": "+15550002222",
}


def signed(url: str, form: dict[str, str], token: str = AUTH_TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}


async def post(base: str, path: str, form: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base) as client:
        return await client.post(path, data=form, headers=headers)


def test_signature_test_vector() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    sig = RequestValidator("12345").compute_signature("https://mycompany.com/myapp.php?foo=1&bar=2", params)
    assert sig == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


async def test_signed_incoming_call_gets_connect_stream(relay_url: str) -> None:
    r = await post(relay_url, "/incoming-call", FORM, signed("https://relay.example.com/incoming-call", FORM))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.text)
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://relay.example.com/media-stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["callSid"] == FORM["CallSid"] and params["from"] == FORM["From"]
    verify_stream_token(params["token"], FORM["CallSid"], make_settings())
    assert all(len(k or "") + len(v or "") < 500 for k, v in params.items())
    assert root.find("Say") is not None  # spoken only if the relay ends the stream on a failure


async def test_unsigned_or_wrongly_signed_incoming_call_is_403(relay_url: str, caplog) -> None:
    r = await post(relay_url, "/incoming-call", FORM, {})
    assert r.status_code == 403
    r = await post(
        relay_url, "/incoming-call", FORM, signed("https://relay.example.com/incoming-call", FORM, "x")
    )
    assert r.status_code == 403
    assert "invalid X-Twilio-Signature" in caplog.text


async def test_forwarded_headers_used_without_public_url() -> None:
    app = create_app(make_settings(public_url=""))
    async with serve_app(app) as base:
        headers = signed("https://abc.ngrok.app/incoming-call", FORM)
        headers.update({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc.ngrok.app"})
        r = await post(base, "/incoming-call", FORM, headers)
    assert r.status_code == 200
    assert 'url="wss://abc.ngrok.app/media-stream"' in r.text


async def test_unconfigured_provider_says_sorry_and_hangs_up() -> None:
    app = create_app(make_settings(openai_api_key=None))
    async with serve_app(app) as base:
        r = await post(base, "/incoming-call", FORM, signed("https://relay.example.com/incoming-call", FORM))
        async with httpx.AsyncClient(base_url=base) as client:
            ready = await client.get("/ready")
    assert r.status_code == 200
    root = ET.fromstring(r.text)
    assert root.find("Say") is not None and root.find("Hangup") is not None and root.find("Connect") is None
    assert ready.status_code == 503 and "credentials" in ready.text


async def test_over_capacity_is_busy() -> None:
    app = create_app(make_settings(max_concurrent_calls=1))
    async with serve_app(app) as base:
        assert await app.state.manager.limiter.acquire("CAbusy", 60)  # one call in progress
        r = await post(base, "/incoming-call", FORM, signed("https://relay.example.com/incoming-call", FORM))
    assert "busy" in r.text and "<Hangup" in r.text


async def test_no_auth_token_means_validation_off_with_warning(caplog) -> None:
    app = create_app(make_settings(twilio_auth_token=None))
    async with serve_app(app) as base:
        r = await post(base, "/incoming-call", FORM, {})
    assert r.status_code == 200
    assert "signatures are NOT validated" in caplog.text


async def test_call_status_records_final_state(relay_url: str) -> None:
    form = {**FORM, "CallStatus": "completed", "CallDuration": "42"}
    r = await post(relay_url, "/call-status", form, signed("https://relay.example.com/call-status", form))
    assert r.status_code == 204
    r = await post(relay_url, "/call-status", form, {})
    assert r.status_code == 403


async def test_call_status_record_in_store() -> None:
    app = create_app(make_settings())
    form = {**FORM, "CallStatus": "completed", "CallDuration": "42"}
    async with serve_app(app) as base:
        await post(base, "/call-status", form, signed("https://relay.example.com/call-status", form))
    record = await app.state.store.get(FORM["CallSid"])
    assert record is not None and record["twilio_status"] == "completed" and record["ended_at"]


async def test_health_and_ready(relay_url: str) -> None:
    async with httpx.AsyncClient(base_url=relay_url) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        r = await client.get("/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"


async def test_transfer_whisper_refuses_a_stale_or_missing_token_even_when_twilio_signed(
    relay_url: str,
) -> None:
    settings = make_settings()
    leg = {**FORM, "CallSid": "CA" + "2" * 32, "ParentCallSid": FORM["CallSid"]}
    good = mint_whisper_token(FORM["CallSid"], "Ada, order A-42.", settings)
    stale = mint_whisper_token(
        FORM["CallSid"], "Ada, order A-42.", settings, now=time.time() - WHISPER_TTL_S - 5
    )
    for query, status in ((f"t={good}", 200), (f"t={stale}", 403), ("", 403), ("t=", 403)):
        path = f"/transfer-whisper?{query}" if query else "/transfer-whisper"
        r = await post(relay_url, path, leg, signed(f"https://relay.example.com{path}", leg))
        assert r.status_code == status, (query, r.text)
    r = await post(relay_url, f"/transfer-whisper?t={good}", leg, {})  # unsigned
    assert r.status_code == 403
    no_parent = {k: v for k, v in leg.items() if k != "ParentCallSid"}
    path = f"/transfer-whisper?t={good}"
    r = await post(relay_url, path, no_parent, signed(f"https://relay.example.com{path}", no_parent))
    assert r.status_code == 200 and ET.fromstring(r.text).findtext("Say") == "Ada, order A-42."
