"""`POST /incoming-call` and `POST /call-status`: Twilio's voice webhook and status callback.

The voice webhook answers TwiML that connects the call to `wss://<public host>/media-stream`
(no query string: Twilio drops it) with `<Parameter>`s for the caller, the call SID and a
short-lived stream token. When the relay cannot serve the call it says so and hangs up: never a
500. A bad signature gets 403. A signed webhook replayed for a call whose stream already started
(running or ended) gets the apology and a hang-up too, and no new token (`webhooks.replay`).
Record writes are queued (the manager's outbox), never awaited: a Redis outage costs no webhook.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.twiml.voice_response import Connect, VoiceResponse

from relay.logs import bind_call
from webhooks.signature import public_base, request_signature_ok
from webhooks.token import mint_stream_token

log = logging.getLogger("relay.webhooks")

TWIML = "application/xml"
APOLOGY = "Sorry, our assistant is unavailable right now. Please call again later."
BUSY = "Sorry, all our lines are busy right now. Please call again in a few minutes."
DRAINING = "Sorry, this service is restarting. Please call again in a moment."
FINAL_STATUSES = {"completed", "busy", "failed", "no-answer", "canceled"}


def say_and_hang_up(text: str) -> Response:
    vr = VoiceResponse()
    vr.say(text)
    vr.hangup()
    return Response(str(vr), media_type=TWIML)


def connect_twiml(stream_url: str, parameters: dict[str, str], fallback_text: str) -> str:
    """`<Connect><Stream>` with parameters; what follows `</Connect>` runs if the relay closes the stream."""
    vr = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    vr.append(connect)
    vr.say(fallback_text)  # heard only when the relay ends the stream on a failure
    vr.hangup()
    return str(vr)


async def incoming_call(request: Request) -> Response:
    state = request.app.state
    settings = state.settings
    form = dict(await request.form())
    call_sid = str(form.get("CallSid", ""))
    with bind_call(call_sid or "-"):
        if not request_signature_ok(request, settings, form):
            log.warning("rejected /incoming-call: invalid X-Twilio-Signature (is PUBLIC_URL right?)")
            state.metrics.observe_rejection("signature")
            return PlainTextResponse("invalid signature", status_code=403)
        if await state.stream_gate.had_stream(call_sid):  # a replay: no fresh token for this call
            log.warning(
                "refusing a replayed /incoming-call: call %s already had its Media Stream; "
                "answering with the apology and a hang-up, no new stream token",
                call_sid,
            )
            state.metrics.observe_rejection("replayed_webhook")
            return say_and_hang_up(APOLOGY)
        refusal = await state.manager.admit(call_sid)
        if refusal is not None:
            log.warning("refusing call: %s", refusal)
            state.metrics.observe_rejection(refusal)
            text = {"busy": BUSY, "draining": DRAINING}.get(refusal, APOLOGY)
            return say_and_hang_up(text)
        state.manager.preconnect(call_sid)  # the provider handshake overlaps Twilio's stream setup
        host = urlsplit(public_base(request, settings)).netloc
        params = {
            "callSid": call_sid,
            "from": str(form.get("From", ""))[:64],
            "to": str(form.get("To", ""))[:64],
            "token": mint_stream_token(call_sid, settings),
        }
        state.manager.outbox.put(call_sid, "upsert", **{"from": params["from"], "to": params["to"]})
        log.info("incoming call from %s, connecting stream to wss://%s/media-stream", params["from"], host)
        return Response(connect_twiml(f"wss://{host}/media-stream", params, APOLOGY), media_type=TWIML)


async def call_status(request: Request) -> Response:
    state = request.app.state
    form = dict(await request.form())
    call_sid = str(form.get("CallSid", ""))
    with bind_call(call_sid or "-"):
        if not request_signature_ok(request, state.settings, form):
            log.warning("rejected /call-status: invalid X-Twilio-Signature")
            return PlainTextResponse("invalid signature", status_code=403)
        status = str(form.get("CallStatus", ""))
        fields: dict[str, object] = {"twilio_status": status}
        if form.get("CallDuration"):
            fields["duration_s"] = str(form["CallDuration"])
        if status in FINAL_STATUSES:
            fields["ended_at"] = time.time()
        if call_sid:
            state.manager.outbox.put(call_sid, "upsert", **fields)
        log.info("call status %s", status)
        return Response(status_code=204)


routes = [
    Route("/incoming-call", incoming_call, methods=["POST"]),
    Route("/call-status", call_status, methods=["POST"]),
]
