"""`POST /calls`: the relay places an outbound call (admin token; absent without RELAY_ADMIN_TOKEN).

The body is JSON `{"to": "+15551234567", "context": {"name": "Ada"}, "machine_detection": true,
"agent": "sales"}`; only `to` is required. `context` fills the `{name}`-style placeholders of
INSTRUCTIONS, GREETING and VOICEMAIL_MESSAGE of the call's agent (relay.placeholders);
`machine_detection` defaults to OUTBOUND_MACHINE_DETECTION; `agent` names the agent that makes the
call (default: the default agent; an unknown name is refused).

Order of work, for the time to Twilio's REST request: the token, the body, the configuration, a
concurrency slot reserved under a key of its own (`CallManager.reserve_outbound`), then the REST
request; only then the slot moves to the SID Twilio gave the call and the record is queued
(`direction`, `from`, `to`, `context`, `machine_detection`), never awaited.

Answers: 201 `{"call_sid", "status": "queued"}`; 400 with the reason (not JSON, unknown or
malformed fields, a number that is not E.164, an unknown agent, an unknown placeholder); 401
without the token;
503 with the reason (busy, draining, no provider, no TWILIO_PHONE_NUMBER, Twilio credentials or
PUBLIC_URL); 502 with Twilio's own message when Twilio refuses or does not answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.admin import bearer_ok
from relay.config import Settings
from relay.errors import ToolError
from relay.logs import bind_call
from relay.phone_numbers import is_e164
from relay.placeholders import (
    BUILTIN_NAMES,
    ContextError,
    check_context,
    configured_texts,
    unknown_placeholders,
)
from relay.tools.twilio_rest import TwilioRefused
from webhooks.outbound import AMD_PATH, ANSWER_PATH

log = logging.getLogger("relay.outbound")

MAX_BODY_BYTES = 16 * 1024
MAX_AGENT_CHARS = 64
STATUS_PATH = "/call-status"
FIELDS = ("to", "context", "machine_detection", "agent")
_NO_STORE = {"Cache-Control": "no-store"}
REFUSALS = {
    "busy": "busy: MAX_CONCURRENT_CALLS calls are in progress; try again later",
    "draining": "draining: this instance is shutting down; try another instance or again in a moment",
    "unconfigured": "unconfigured: no provider credentials (OPENAI_API_KEY, or the Azure settings)",
}


class BadRequest(Exception):
    """The request is refused with 400 and this reason."""


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A checked `POST /calls` body."""

    to: str
    context: dict[str, str]
    machine_detection: bool
    agent: str | None


def _answer(status: int, body: dict[str, Any], **headers: str) -> Response:
    return JSONResponse(body, status_code=status, headers={**_NO_STORE, **headers})


async def _read_body(request: Request, within: float) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise BadRequest(f"the body is at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise BadRequest(f"the body is at most {MAX_BODY_BYTES} bytes")
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {within:g} s") from None
    except ClientDisconnect:
        raise BadRequest("the client left before its body was complete") from None
    return bytes(body)


def parse_request(body: bytes, settings: Settings) -> OutboundRequest:
    """The body checked field by field; BadRequest with the reason otherwise. (The placeholders of
    the agent's texts are checked against its context by `check_placeholders`.)"""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest('the body is not JSON: send {"to": "+15551234567", "context": {...}}') from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object: {"to": "+15551234567", ...}')
    unknown = [str(name)[:40] for name in data if name not in FIELDS]
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
    to = data.get("to")
    if not isinstance(to, str) or not is_e164(to):
        shown = repr(to[:40]) if isinstance(to, str) else "missing" if to is None else "not a string"
        raise BadRequest(f"'to' is {shown}: an E.164 number, such as '+15551234567', is required")
    try:
        context = check_context(data.get("context"))
    except ContextError as exc:
        raise BadRequest(str(exc)) from None
    detection = data.get("machine_detection", settings.outbound_machine_detection)
    if not isinstance(detection, bool):
        raise BadRequest("'machine_detection' must be true or false")
    agent = data.get("agent")
    if agent is not None and not (isinstance(agent, str) and 0 < len(agent) <= MAX_AGENT_CHARS):
        raise BadRequest(f"'agent' must be a name of at most {MAX_AGENT_CHARS} characters")
    return OutboundRequest(to, context, detection, agent)


def resolve_agent(call: OutboundRequest, manager: Any) -> Any:
    """The agent that makes the call (an `AgentRuntime`): the one named, else the one whose
    numbers hold TWILIO_PHONE_NUMBER (the call's From), else the default; an unknown name, or
    texts with placeholders the context does not fill, are a BadRequest."""
    if call.agent is not None and call.agent not in manager.agents:
        names = ", ".join(sorted(manager.agents.names))
        raise BadRequest(f"unknown agent {call.agent[:MAX_AGENT_CHARS]!r}: the agents are {names}")
    agent = manager.agents.for_call(manager.settings.twilio_phone_number, call.agent)
    check_placeholders(agent.settings, call.context)
    return agent


def check_placeholders(settings: Settings, context: dict[str, str]) -> None:
    """The texts' placeholders against the call's context and the built-in names; BadRequest
    naming the first one nothing fills."""
    known = set(context) | set(BUILTIN_NAMES)
    missing = unknown_placeholders(configured_texts(settings), known)
    if missing:
        setting, name = missing[0]
        raise BadRequest(
            f"unknown placeholder {{{name}}} in {setting}: add {name!r} to the context "
            f"(or use one of {', '.join('{' + n + '}' for n in BUILTIN_NAMES)})"
        )


def _missing_configuration(settings: Settings, twilio_calls: Any) -> str | None:
    if not settings.twilio_phone_number:
        return "TWILIO_PHONE_NUMBER is not set: the relay needs a Twilio number to call from"
    if twilio_calls is None:
        return "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set: the relay cannot reach Twilio's API"
    if not settings.public_url:
        return "PUBLIC_URL is not set: Twilio needs the relay's public URL to fetch the call's TwiML"
    return None


async def place_call_endpoint(request: Request) -> Response:
    """`POST /calls` (see the module docstring)."""
    state = request.app.state
    settings: Settings = state.settings
    manager = state.manager
    count = state.metrics.outbound_calls_total
    if settings.relay_admin_token is None:  # the route is not mounted then; never serve it anyway
        return _answer(404, {"error": "not found"})
    if not bearer_ok(request, settings):
        client = request.client.host if request.client else "-"
        log.warning("refused POST /calls from %s: missing or wrong admin bearer token", client)
        count.labels(outcome="unauthorized").inc()
        return _answer(
            401,
            {"error": "unauthorized: send Authorization: Bearer <RELAY_ADMIN_TOKEN>"},
            **{"WWW-Authenticate": 'Bearer realm="relay-admin"'},
        )
    try:
        call = parse_request(await _read_body(request, settings.webhook_body_timeout), settings)
        agent = resolve_agent(call, manager)
    except BadRequest as exc:
        log.info("refused POST /calls: %s", exc)
        count.labels(outcome="bad_request").inc()
        return _answer(400, {"error": str(exc)})
    problem = _missing_configuration(settings, manager.twilio_calls)
    if problem is not None:
        log.warning("refused POST /calls: %s", problem)
        count.labels(outcome="unconfigured").inc()
        return _answer(503, {"error": problem})
    reservation, refusal = await manager.reserve_outbound(agent)
    if refusal is not None:
        log.warning("refused POST /calls: %s", refusal)
        count.labels(outcome=refusal).inc()
        return _answer(503, {"error": REFUSALS.get(refusal, refusal)}, **{"Retry-After": "5"})
    return await _place(request, call, agent.name, reservation)


async def _place(request: Request, call: OutboundRequest, agent: str, reservation: str) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    manager = state.manager
    count = state.metrics.outbound_calls_total
    base = settings.public_url
    try:
        created = await manager.twilio_calls.create_call(
            to=call.to,
            from_=settings.twilio_phone_number,
            url=base + ANSWER_PATH,
            status_callback=base + STATUS_PATH,
            amd_callback=base + AMD_PATH if call.machine_detection else None,
        )
    except ToolError as exc:
        await manager.release_reservation(reservation)
        log.error("POST /calls: %s", exc)
        count.labels(outcome="twilio_error").inc()
        body: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, TwilioRefused):
            body.update(twilio_status=exc.status, twilio_message=exc.twilio_message)
        return _answer(502, body)
    call_sid = created.call_sid
    await manager.bind_outbound(reservation, call_sid, call.context, agent)
    fields: dict[str, Any] = {
        "direction": "outbound-api",
        "from": settings.twilio_phone_number,
        "to": call.to,
        "context": call.context,
        "machine_detection": call.machine_detection,
        "status": "queued",
        "twilio_status": created.status,
        "agent": agent,
    }
    manager.outbox.put(call_sid, "upsert", **fields)
    count.labels(outcome="created").inc()
    with bind_call(call_sid):
        log.info("outbound call to %s placed (machine detection %s)", call.to, call.machine_detection)
    return _answer(201, {"call_sid": call_sid, "status": created.status})


def outbound_routes(settings: Settings) -> list[Route]:
    """`POST /calls`, only when RELAY_ADMIN_TOKEN is set."""
    if settings.relay_admin_token is None:
        return []
    return [Route("/calls", place_call_endpoint, methods=["POST"])]


__all__ = [
    "BadRequest",
    "OutboundRequest",
    "check_placeholders",
    "outbound_routes",
    "parse_request",
    "place_call_endpoint",
    "resolve_agent",
]
