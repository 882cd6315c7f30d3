"""`POST /incoming-call` and `POST /call-status`: Twilio's voice webhook and status callback.

Both read their form through `webhooks.form` (a bounded body, 413/408/415/400 otherwise), then
check the signature (403), then the SIDs' format (400). The voice webhook answers TwiML that
connects the call to STREAM_PUBLIC_URL when set (this instance's own address: call affinity), else
to `wss://<public host>/media-stream` (`ws://` only for a relay reached over plain HTTP with no
PUBLIC_URL and no trusted proxy: see `public_base`; no query string: Twilio drops it), with
`<Parameter>`s for the caller, the call SID, a short-lived stream token, and the instance that
holds the call's early provider connection (`earlyAt`, when one was opened). When the relay
cannot serve the call it says so and hangs up: never a 500 (draining behind a load balancer that
sends `X-Relay-Failover`: 503, for it to try another instance). A bad signature gets 403. A signed
webhook replayed for a call whose stream already started (running or ended) gets the apology and
a hang-up too, and no new token (`webhooks.replay`).
Record writes are queued (the manager's outbox), never awaited: a Redis outage costs no webhook.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.twiml.voice_response import Connect, VoiceResponse

from relay.config_checks import STREAM_PATH
from relay.logs import bind_call
from relay.sessions.manager import EARLY_AT
from relay.sids import is_account_sid, is_call_sid
from relay.tracing import CallTrace
from relay.transport.http import forwarded_trusted
from webhooks.form import FormRefused, read_form
from webhooks.signature import public_base, request_signature_ok
from webhooks.token import mint_stream_token

log = logging.getLogger("relay.webhooks")

TWIML = "application/xml"
APOLOGY = "Sorry, our assistant is unavailable right now. Please call again later."
BUSY = "Sorry, all our lines are busy right now. Please call again in a few minutes."
DRAINING = "Sorry, this service is restarting. Please call again in a moment."
FINAL_STATUSES = {"completed", "busy", "failed", "no-answer", "canceled"}
NOT_CONNECTED = FINAL_STATUSES - {"completed"}  # the call ended before anyone answered
CALL_STATUS = re.compile("[a-z-]{1,20}")  # queued, ringing, in-progress, completed, no-answer...
DURATION = re.compile("[0-9]{1,9}")
MAX_NUMBER_CHARS = 64  # From/To: E.164 is 16 characters; client: and sip: identities are longer
# Sent by a load balancer that passes a 503 on to another instance (deploy/nginx/relay.conf): a
# draining instance then answers the voice webhook 503 instead of its spoken refusal.
FAILOVER_HEADER = "x-relay-failover"


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


def _refusal(status: int, text: str) -> Response:
    """A plain-text refusal. When the body is not all read, the connection ends after it, the rest
    unread (relay/transport/http.py)."""
    return PlainTextResponse(text, status_code=status)


def refuse_malformed(request: Request, route: str, what: str, answer: str, status: int = 400) -> Response:
    """A request refused for its form (unreadable, or a signed one with a malformed field):
    logged (`refused ROUTE: WHAT`), counted as malformed, answered `status` with `answer`."""
    log.warning("refused %s: %s", route, what)
    request.app.state.metrics.observe_rejection("malformed")
    return _refusal(status, answer)


async def signed_form(request: Request, route: str) -> dict[str, str] | Response:
    """The webhook's form once its body is bounded, its signature valid and its SIDs well-formed;
    else the response that refuses it. Nothing from the request is logged before it is checked."""
    state = request.app.state
    try:
        form = await read_form(request, within=state.settings.webhook_body_timeout)
    except FormRefused as exc:
        return refuse_malformed(request, route, f"HTTP {exc.status}, {exc.reason}", exc.reason, exc.status)
    call_sid = form.get("CallSid", "")
    with bind_call(call_sid if is_call_sid(call_sid) else "-"):
        if not request_signature_ok(request, state.settings, form):
            log.warning("rejected %s: invalid X-Twilio-Signature (is PUBLIC_URL right?)", route)
            state.metrics.observe_rejection("signature")
            return PlainTextResponse("invalid signature", status_code=403)
        account_sid = form.get("AccountSid")  # Twilio always sends it; checked when present
        if not is_call_sid(call_sid) or (account_sid is not None and not is_account_sid(account_sid)):
            answer = "CallSid must be 'CA' and AccountSid 'AC' followed by 32 hex digits"
            return refuse_malformed(request, route, "CallSid or AccountSid is not a Twilio SID", answer)
    return form


async def incoming_call(request: Request) -> Response:
    form = await signed_form(request, "/incoming-call")
    if isinstance(form, Response):
        return form
    with bind_call(form["CallSid"]):
        return await connect_call(request, form, direction="inbound")


async def connect_call(
    request: Request,
    form: dict[str, str],
    *,
    direction: str,
    context: dict[str, str] | None = None,
    agent: str | None = None,
) -> Response:
    """The TwiML that connects a signed, answered call (inbound, or outbound once answered) to the
    Media Stream: refused when replayed or not admitted; otherwise its agent is chosen (the one an
    outbound call asked for, else by the number called), its early provider connection starts,
    its agent and placeholder values are remembered for its stream (and named in the stream's
    parameters, for an instance that did not see this webhook), and its record gets its parties.

    The call's trace starts here (kept for its stream), with a `webhook` span around the answer; a
    refused call's trace ends with the refusal as its outcome."""
    trace = request.app.state.tracing.call(form["CallSid"], direction=direction)
    with trace.span("webhook", **{"http.route": request.url.path}) as span:
        response, refusal = await _answer(
            request, form, trace, direction=direction, context=context, agent=agent
        )
        span.set(outcome=refusal or "connected")
    if refusal is not None:
        trace.end(outcome=refusal)
    return response


async def _answer(
    request: Request,
    form: dict[str, str],
    trace: CallTrace,
    *,
    direction: str,
    context: dict[str, str] | None,
    agent: str | None,
) -> tuple[Response, str | None]:
    """`connect_call`'s answer, and the refusal (None: the call is connected)."""
    state = request.app.state
    settings = state.settings
    call_sid = form["CallSid"]
    if await state.stream_gate.had_stream(call_sid):  # a replay: no fresh token for this call
        log.warning(
            "refusing a replayed %s: call %s already had its Media Stream; "
            "answering with the apology and a hang-up, no new stream token",
            request.url.path,
            call_sid,
        )
        state.metrics.observe_rejection("replayed_webhook")
        return say_and_hang_up(APOLOGY), "replayed_webhook"
    caller, called = form.get("From", "")[:MAX_NUMBER_CHARS], form.get("To", "")[:MAX_NUMBER_CHARS]
    chosen = state.manager.agents.for_call(called if direction == "inbound" else caller, agent)
    refusal = await state.manager.admit(call_sid, agent=chosen)
    if refusal is not None:
        log.warning("refusing call: %s", refusal)
        state.metrics.observe_rejection(refusal)
        if refusal == "draining" and direction == "inbound" and _balancer_fails_over(request):
            return PlainTextResponse(DRAINING, status_code=503, headers={"Retry-After": "1"}), refusal
        text = {"busy": BUSY, "draining": DRAINING}.get(refusal, APOLOGY)
        return say_and_hang_up(text), refusal
    if trace.recording:  # nothing to work out for a trace that is not exported
        trace.set(
            agent=chosen.name,
            provider="azure_openai" if chosen.settings.use_azure_openai else "openai",
            provider_host=urlsplit(chosen.adapter.realtime_url).hostname,
        )
    # the call's agent and placeholder values first: its early connection's opening needs them
    state.manager.notes.remember_call(
        call_sid, agent=chosen.name, caller=caller, called=called, direction=direction, context=context
    )
    # the provider handshake overlaps Twilio's stream setup
    early = state.manager.open_early_connection(call_sid, chosen)
    # STREAM_PUBLIC_URL: this instance's own address, so the stream comes back here (call affinity)
    stream_url = settings.stream_public_url or (public_base(request, settings, websocket=True) + STREAM_PATH)
    params = {
        "callSid": call_sid,
        "from": caller,
        "to": called,
        "direction": direction,
        "agent": chosen.name,
        "token": mint_stream_token(call_sid, settings),
    }
    if early:  # which instance holds the early connection: a stream served elsewhere counts it wasted
        params[EARLY_AT] = state.manager.instance_id
    record = {"from": params["from"], "to": params["to"], "direction": direction, "agent": chosen.name}
    state.manager.outbox.put(call_sid, "upsert", **record)
    log.info("%s call from %s, connecting stream to %s", direction, params["from"], stream_url)
    return Response(connect_twiml(stream_url, params, APOLOGY), media_type=TWIML), None


def _balancer_fails_over(request: Request) -> bool:
    """A trusted proxy (FORWARDED_ALLOW_IPS) said it passes a 503 on to another instance: this
    instance's refusal to drain is then that proxy's to route around, not the caller's to hear.
    The voice webhook only: deploy/nginx/relay.conf retries no other POST, so an outbound call's
    answer keeps its spoken refusal."""
    return bool(request.headers.get(FAILOVER_HEADER)) and forwarded_trusted(request.scope)


async def call_status(request: Request) -> Response:
    state = request.app.state
    form = await signed_form(request, "/call-status")
    if isinstance(form, Response):
        return form
    call_sid = form["CallSid"]
    with bind_call(call_sid):
        status = form.get("CallStatus", "")
        duration = form.get("CallDuration", "")
        if not CALL_STATUS.fullmatch(status) or (duration and not DURATION.fullmatch(duration)):
            answer = "CallStatus must be a Twilio call status, CallDuration whole seconds"
            return refuse_malformed(request, "/call-status", "malformed CallStatus or CallDuration", answer)
        fields: dict[str, object] = {"twilio_status": status}
        if duration:
            fields["duration_s"] = duration
        if status in FINAL_STATUSES:
            fields["ended_at"] = time.time()
        if status in NOT_CONNECTED:  # no stream ever ran: this is the call's end
            fields.update(status="ended", outcome=status)
            await state.manager.call_not_answered(call_sid)
        state.manager.outbox.put(call_sid, "upsert", **fields)
        log.info("call status %s", status)
        return Response(status_code=204)


routes = [
    Route("/incoming-call", incoming_call, methods=["POST"]),
    Route("/call-status", call_status, methods=["POST"]),
]
