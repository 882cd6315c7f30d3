"""Twilio's call recordings, as the REST fake plays them: `POST …/Calls/{CallSid}/Recordings.json`
starts one (answering the recording resource), and `complete(call_sid)` sends the
`RecordingStatusCallback` Twilio sends after the call ends: signed with the auth token, with
`RecordingSid`, `RecordingUrl`, `RecordingStatus`, `RecordingDuration`, `RecordingChannels`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from relay.testing.twilio_callbacks import TwilioCallbacks

API_VERSION = "2010-04-01"
_SIDS = itertools.count(1)


@dataclass
class StartedRecording:
    account_sid: str
    call_sid: str
    recording_sid: str
    form: dict[str, str]
    callbacks: list[tuple[str, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://api.twilio.com/{API_VERSION}/Accounts/{self.account_sid}/Recordings/{self.recording_sid}"


@dataclass
class FakeRecordings:
    auth_token: str
    relay_url: str | None = None
    """Where callbacks really go: the relay's base URL replaces `PUBLIC_URL`'s scheme and host."""
    started: list[StartedRecording] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._callbacks = TwilioCallbacks(self.auth_token)

    def create(self, account_sid: str, call_sid: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        sid = f"RE{next(_SIDS):032x}"
        self.started.append(StartedRecording(account_sid, call_sid, sid, form))
        body = {
            "sid": sid,
            "call_sid": call_sid,
            "account_sid": account_sid,
            "status": "in-progress",
            "channels": 2 if form.get("RecordingChannels") == "dual" else 1,
            "source": "StartCallRecordingAPI",
            "uri": f"/{API_VERSION}/Accounts/{account_sid}/Recordings/{sid}.json",
        }
        return 201, body

    async def complete(self, call_sid: str, duration_s: int = 7) -> int:
        """Sends the `completed` callback of the call's recording; returns the relay's HTTP status."""
        recording = next(r for r in self.started if r.call_sid == call_sid)
        url = recording.form["RecordingStatusCallback"]
        params = {
            "AccountSid": recording.account_sid,
            "CallSid": call_sid,
            "RecordingSid": recording.recording_sid,
            "RecordingUrl": recording.url,
            "RecordingStatus": "completed",
            "RecordingDuration": str(duration_s),
            "RecordingChannels": "2",
            "RecordingSource": "StartCallRecordingAPI",
        }
        response = await self._callbacks.post(url, params, self.relay_url)
        recording.callbacks.append((url, response.status_code))
        return response.status_code

    async def aclose(self) -> None:
        await self._callbacks.aclose()


__all__ = ["FakeRecordings", "StartedRecording"]
