"""`POST /transfer-whisper`: what the person a warm transfer dials hears before the caller joins.

The URL is the `<Number url>` of a warm `transfer_call` (`relay.tools.whisper`); Twilio requests it
when that person answers, signed over the whole URL (its `?t=` token included) like every webhook.
The form is the child call's (`CallSid` of the new leg, `ParentCallSid` the transferred call). The
token, minted by the relay, carries the summary: the answer is `<Response><Say>summary</Say></Response>`.
A token that is missing, forged or expired gets 403, like a bad signature; a `ParentCallSid` other
than the token's call, 400.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.twiml.voice_response import VoiceResponse

from relay.logs import bind_call
from relay.tools.whisper import WHISPER_PATH, WhisperTokenError, verify_whisper_token
from webhooks.routes import TWIML, refuse_malformed, signed_form

log = logging.getLogger("relay.webhooks")


async def transfer_whisper(request: Request) -> Response:
    state = request.app.state
    form = await signed_form(request, WHISPER_PATH)
    if isinstance(form, Response):
        return form
    try:
        whisper = verify_whisper_token(request.query_params.get("t", ""), state.settings)
    except WhisperTokenError as exc:
        log.warning("rejected %s: %s", WHISPER_PATH, exc)
        state.metrics.observe_rejection("signature")
        return PlainTextResponse("invalid whisper token", status_code=403)
    with bind_call(whisper.call_sid):
        parent = form.get("ParentCallSid")
        if parent is not None and parent != whisper.call_sid:
            what, answer = (
                "ParentCallSid is not the transferred call",
                "ParentCallSid is not the call this whisper is for",
            )
            return refuse_malformed(request, WHISPER_PATH, what, answer)
        log.info("transfer answered (leg %s): whispering the summary", form["CallSid"])
        response = VoiceResponse()
        response.say(whisper.summary)
        return Response(str(response), media_type=TWIML)


routes = [Route(WHISPER_PATH, transfer_whisper, methods=["POST"])]
