"""RECORD_CALLS over real sockets: the dual-channel recording started at stream start through the
Twilio REST fake, the notice said before the greeting, the signed recording-status callback Twilio
sends after the call, and the post-call webhook that waits for it (RECORDING_WAIT_S)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from twilio.request_validator import RequestValidator

from relay.testing.realtime import Say
from relay.testing.twilio_rest import FakeTwilioRest
from relay.testing.webhook_receiver import WebhookReceiver
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.rig import PUBLIC_URL, Rig, rig
from tests.test_post_call import FAST, SECRET, hook_settings

NOTICE = "This call is recorded."


@contextlib.asynccontextmanager
async def recorded(wait_s: float = 30.0) -> AsyncIterator[tuple[Rig, FakeTwilioRest, WebhookReceiver]]:
    rest = FakeTwilioRest(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    receiver = WebhookReceiver(SECRET)
    async with rest.serve() as rest_url, receiver.serve() as hook_url:
        settings: dict[str, Any] = hook_settings(
            hook_url,
            twilio_api_base_url=rest_url,
            record_calls=True,
            recording_notice=NOTICE,
            recording_wait_s=wait_s,
        )
        replies = [Say("Hello, how can I help?", audio_ms=400)]
        async with rig("openai-ga", settings=settings, post_call_policy=FAST, responses=replies) as r:
            assert rest.recordings is not None
            rest.recordings.relay_url = r.url
            yield r, rest, receiver


async def test_a_recorded_call_says_the_notice_first_and_its_webhook_carries_the_recording() -> None:
    async with recorded() as (r, rest, receiver), r.caller() as call:
        conn = await r.dial(call)
        greeting = await conn.wait_for("response.create", direction="received")
        instructions = greeting["response"]["instructions"]
        assert f'"{NOTICE}"' in instructions and instructions.index(NOTICE) < instructions.index("Then:")
        [started] = [req for req in await rest.wait_requests(1) if req.form.get("RecordingChannels")]
        assert started.call_sid == call.call_sid and started.form["RecordingChannels"] == "dual"
        assert started.form["RecordingStatusCallback"] == f"{PUBLIC_URL}/recording-status"
        assert started.form["RecordingStatusCallbackEvent"] == "completed"
        await conn.wait_for("response.done")
        await call.wait_playback_idle(min_bytes=conn.audio_sent_bytes)
        await call.stop()
        await r.app.state.manager.wait_idle(5)
        assert receiver.requests == []  # the webhook waits for the recording Twilio sends after the call
        assert rest.recordings is not None
        assert await rest.recordings.complete(call.call_sid, duration_s=9) == 204
        [delivery] = await receiver.wait_accepted(1)
    recording = rest.recordings.started[0]
    assert delivery.json()["recording_url"] == recording.url
    record = await r.app.state.store.get(call.call_sid)
    assert record["recording_url"] == recording.url and record["recording_duration_s"] == 9
    assert record["recording_sid"] == recording.recording_sid


async def test_without_the_recording_report_the_webhook_goes_after_recording_wait_s() -> None:
    async with recorded(wait_s=0.5) as (r, _rest, receiver), r.caller() as call:
        conn = await r.dial(call)
        await conn.wait_for("response.done")
        await call.stop()
        ended = time.monotonic()
        [delivery] = await receiver.wait_accepted(1)
    assert time.monotonic() - ended >= 0.5
    assert delivery.json()["recording_url"] is None


async def test_an_unsigned_recording_report_is_refused_and_stores_nothing() -> None:
    async with recorded() as (r, _rest, _receiver):
        call_sid = "CA" + "7" * 32
        form = {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT_SID,
            "RecordingSid": "RE" + "1" * 32,
            "RecordingUrl": "https://evil.example.com/x",
            "RecordingStatus": "completed",
        }
        async with httpx.AsyncClient(base_url=r.url) as client:
            response = await client.post("/recording-status", data=form)
        assert response.status_code == 403
        assert await r.app.state.store.get(call_sid) is None


async def test_a_recording_twilio_refuses_is_logged_and_neither_the_call_nor_its_webhook_waits(
    caplog,
) -> None:
    async with recorded() as (r, rest, receiver), r.caller() as call:
        rest.status = 500  # Twilio fails the recording request
        conn = await r.dial(call)
        await rest.wait_requests(1)
        await conn.wait_for("response.done")
        await call.wait_playback_idle(min_bytes=conn.audio_sent_bytes)  # the call went on
        await call.stop()
        ended = time.monotonic()
        [delivery] = await receiver.wait_accepted(1)
    assert time.monotonic() - ended < 10  # not the 30 s RECORDING_WAIT_S: nothing was recording
    assert delivery.json()["recording_url"] is None
    assert "could not start the call's recording" in caplog.text
    record = await r.app.state.store.get(call.call_sid)
    assert "recording_sid" not in record and record["outcome"] == "twilio_stop"


async def test_a_signed_but_malformed_recording_report_is_refused_and_stores_nothing() -> None:
    async with recorded() as (r, _rest, _receiver):
        call_sid = "CA" + "8" * 32
        form = {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT_SID,
            "RecordingSid": "not-a-recording-sid",
            "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/x/Recordings/y",
            "RecordingStatus": "completed",
            "RecordingDuration": "9",
        }
        signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC_URL}/recording-status", form)
        async with httpx.AsyncClient(base_url=r.url) as client:
            response = await client.post(
                "/recording-status", data=form, headers={"X-Twilio-Signature": signature}
            )
        assert response.status_code == 400 and "RecordingSid" in response.text
        assert await r.app.state.store.get(call_sid) is None
