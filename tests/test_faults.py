"""Faults: a provider slow to connect or rate-limiting at connect, random input to /incoming-call,
and after each scenario no leaked tasks or sockets (counted) and other calls undisturbed."""

from __future__ import annotations

import asyncio
import os
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from relay.app import create_app
from relay.sids import is_account_sid, is_call_sid
from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.server import serve_app
from tests.conftest import AUTH_TOKEN, make_settings
from tests.rig import twilio_caller


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def other_tasks() -> set[asyncio.Task]:
    """Tasks other than the test's own; the fake provider's handshake handlers (websockets'
    Server.conn_handler, which may outlive a deliberately stalled handshake) are the fake's, not ours."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and t.get_coro().__qualname__ != "Server.conn_handler"
    }


async def leaked_tasks(before: set[asyncio.Task]) -> set[asyncio.Task]:
    """Tasks started since `before` that are still pending once the loop has settled (bounded yields)."""
    for _ in range(200):
        leaked = {t for t in other_tasks() - before if not t.done()}
        if not leaked:
            break
        await asyncio.sleep(0)
    return leaked


caller = twilio_caller


@pytest.mark.parametrize(
    ("server_kw", "settings_kw", "needle"),
    [
        ({"connect_delay": 3.0}, {"provider_connect_timeout": 0.5}, "did not answer within 0.5 s"),
        ({"reject_status": 429}, {}, "429: OpenAI rate-limited the connection"),
        ({"reject_status": 500}, {}, "500: OpenAI refused the realtime connection"),
    ],
)
async def test_provider_connect_faults_end_call_cleanly_without_leaks(
    server_kw, settings_kw, needle, caplog
) -> None:
    async with FakeRealtimeServer(**server_kw) as rt:
        app = create_app(
            make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url, **settings_kw)
        )
        async with serve_app(app) as url:
            tasks_before, fds_before = other_tasks(), open_fds()
            async with caller(url) as call:
                assert await call.connect(await call.fetch_twiml())
                await call.wait_closed(timeout=10)
            await app.state.manager.wait_idle(timeout=5)
            assert needle in caplog.text
            assert not app.state.manager.active
            leaked = {t for t in other_tasks() - tasks_before if not t.done()}
            assert not leaked, leaked
            assert open_fds() <= fds_before


async def test_500_at_connect_is_retried_once(caplog) -> None:
    async with FakeRealtimeServer(
        reject_status=500, reject_first=1, responses=[Say("Hi.", audio_ms=200)]
    ) as rt:
        app = create_app(make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url))
        async with serve_app(app) as url, caller(url) as call:
            assert await call.connect(await call.fetch_twiml())
            await call.wait_for_media(timeout=5)  # the retry connected
            assert rt.rejected and len(rt.connections) == 1
            await call.stop()
    assert "retrying once" in caplog.text


async def test_a_failing_call_does_not_disturb_another() -> None:
    async with FakeRealtimeServer(responses=[Say("Hello.", audio_ms=1500)]) as rt:
        app = create_app(make_settings(relay_mode="realtime", openai_base_url=rt.openai_base_url))
        async with serve_app(app) as url, caller(url) as good, caller(url) as bad:
            assert await good.connect(await good.fetch_twiml())
            conn = await rt.wait_connection()
            assert await bad.connect(await bad.fetch_twiml())
            for _ in range(60):
                await bad.send_text("{garbage")
            await bad.send_binary(b"\x00" * 70000)
            await bad.hangup(abrupt=True)
            await good.wait_for_media(min_bytes=1500 * 8, timeout=5)
            await good.wait_playback_idle(timeout=5)
            assert good.received_audio == b"".join(bytes(a) for a in conn.audio_sent.values())
            assert good.is_open
            await good.stop()


form_values = st.text(alphabet=string.printable + "éü☎", max_size=40)


@pytest.fixture(scope="module")
def fuzz_app():
    return create_app(make_settings())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    form=st.dictionaries(st.sampled_from(["CallSid", "From", "To", "AccountSid", "Junk", ""]), form_values)
)
async def test_incoming_call_random_signed_input_never_500(fuzz_app, form) -> None:
    sig = RequestValidator(AUTH_TOKEN).compute_signature("https://relay.example.com/incoming-call", form)
    transport = httpx.ASGITransport(app=fuzz_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.example.com") as client:
        r = await client.post("/incoming-call", data=form, headers={"X-Twilio-Signature": sig})
    if not form:  # httpx sends no body and no Content-Type: not a form
        assert r.status_code == 415
    elif is_call_sid(form.get("CallSid")) and is_account_sid(form.get("AccountSid", "AC" + "0" * 32)):
        assert r.status_code == 200 and r.text.startswith("<?xml")
    else:  # signed, but not Twilio's SIDs: refused, and said why
        assert r.status_code == 400 and "32 hex digits" in r.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300),
    ctype=st.sampled_from(["application/x-www-form-urlencoded", "text/plain", ""]),
)
async def test_incoming_call_random_bytes_never_500(fuzz_app, body, ctype) -> None:
    transport = httpx.ASGITransport(app=fuzz_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay.example.com") as client:
        r = await client.post("/incoming-call", content=body, headers={"Content-Type": ctype})
    assert r.status_code == (403 if ctype.startswith("application/x-www") else 415) or r.status_code == 400
