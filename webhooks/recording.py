"""`POST /recording-status`: the `RecordingStatusCallback` of a call's recording (RECORD_CALLS),
signed like every Twilio webhook. The recording's URL, SID and duration go on the call's record,
and the post-call webhook waiting for them (RECORDING_WAIT_S) is told."""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.logs import bind_call
from relay.sessions.recordings import STATUS_PATH
from webhooks.routes import refuse_malformed, signed_form

log = logging.getLogger("relay.webhooks")

RECORDING_PATH = STATUS_PATH
RECORDING_SID = re.compile("RE[0-9a-f]{32}")
RECORDING_URL = re.compile(r"https://[A-Za-z0-9.-]{1,100}(/[A-Za-z0-9/_.-]{1,300})")
STATUS = re.compile("[a-z-]{1,20}")  # in-progress, completed, absent, failed
DURATION_S = re.compile("[0-9]{1,6}")


async def recording_status(request: Request) -> Response:
    state = request.app.state
    form = await signed_form(request, RECORDING_PATH)
    if isinstance(form, Response):
        return form
    call_sid = form["CallSid"]
    with bind_call(call_sid):
        sid, url = form.get("RecordingSid", ""), form.get("RecordingUrl", "")
        status, duration = form.get("RecordingStatus", ""), form.get("RecordingDuration", "")
        if not (
            RECORDING_SID.fullmatch(sid)
            and STATUS.fullmatch(status)
            and (not url or RECORDING_URL.fullmatch(url))
            and (not duration or DURATION_S.fullmatch(duration))
        ):
            what = "a malformed recording SID, URL, status or duration"
            answer = "RecordingSid, RecordingUrl, RecordingStatus or RecordingDuration is malformed"
            return refuse_malformed(request, RECORDING_PATH, what, answer)
        fields: dict[str, Any] = {"recording_sid": sid, "recording_status": status}
        if url and status == "completed":
            fields["recording_url"] = url
        if duration:
            fields["recording_duration_s"] = int(duration)
        state.manager.outbox.put(call_sid, "upsert", **fields)
        log.info("recording %s %s (%s s)", sid, status, duration or "?")
        state.manager.recordings.settled(call_sid)
        return Response(status_code=204)


routes = [Route(RECORDING_PATH, recording_status, methods=["POST"])]
