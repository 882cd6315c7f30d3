"""The callbacks of an outbound call (`POST /calls`), both signed like every Twilio webhook.

`POST /outbound-answer` is the call's `Url`: Twilio requests it when the callee answers, and it
answers the same `<Connect><Stream>` TwiML as `/incoming-call` (`webhooks.routes.connect_call`),
the stream token bound to the call SID, with the call's context for its placeholders and the agent
it asked for: from this instance's memory when it placed the call, else from the call's record
(another instance placed it; with Redis every instance reads it).

`POST /amd-status` is the `AsyncAmdStatusCallback` of answering-machine detection: `AnsweredBy`
goes on the call's record, is counted (`relay_amd_results_total`) and is handed to the running
call (`CallManager.answered_by`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.errors import StoreError
from relay.logs import bind_call
from webhooks.routes import connect_call, refuse_malformed, signed_form

log = logging.getLogger("relay.webhooks")

ANSWER_PATH = "/outbound-answer"
AMD_PATH = "/amd-status"
CONTEXT_READ_TIMEOUT_S = 0.5  # a hung store costs the answer webhook this much, then no context
ANSWERED_BY = re.compile("[a-z_]{1,32}")  # human, machine_end_beep, fax, unknown...
DIRECTION = re.compile("[a-z-]{1,20}")
DURATION_MS = re.compile("[0-9]{1,7}")


async def _stored_context(request: Request, call_sid: str) -> tuple[dict[str, str], str | None]:
    """The call's context and agent from its record (placed by another instance); no context and
    the default agent when there is none or the store does not answer in time (its placeholders
    are then filled with empty text)."""
    state = request.app.state
    try:
        async with asyncio.timeout(CONTEXT_READ_TIMEOUT_S):
            record: dict[str, Any] | None = await state.store.get(call_sid)
    except (StoreError, TimeoutError) as exc:
        state.manager.store_health.failed(exc, "reading an outbound call's context")
        log.warning("answering without the call's context: the call store did not answer")
        return {}, None
    context = (record or {}).get("context")
    agent = (record or {}).get("agent")
    if not isinstance(context, dict):
        log.warning("answering without a context: the call's record has none (not placed by a relay?)")
        return {}, None
    return {str(k): str(v) for k, v in context.items()}, agent if isinstance(agent, str) else None


async def outbound_answer(request: Request) -> Response:
    form = await signed_form(request, ANSWER_PATH)
    if isinstance(form, Response):
        return form
    call_sid = form["CallSid"]
    with bind_call(call_sid):
        direction = form.get("Direction", "outbound-api")
        if not DIRECTION.fullmatch(direction):
            answer = "Direction must be a Twilio call direction"
            return refuse_malformed(request, ANSWER_PATH, f"Direction {direction[:40]!r}", answer)
        placed = request.app.state.manager.notes.context(call_sid)
        if placed is None:
            placed = await _stored_context(request, call_sid)
        context, agent = placed
        return await connect_call(request, form, direction=direction, context=context, agent=agent)


async def amd_status(request: Request) -> Response:
    state = request.app.state
    form = await signed_form(request, AMD_PATH)
    if isinstance(form, Response):
        return form
    call_sid = form["CallSid"]
    with bind_call(call_sid):
        answered_by = form.get("AnsweredBy", "")
        duration = form.get("MachineDetectionDuration", "")
        if not ANSWERED_BY.fullmatch(answered_by) or (duration and not DURATION_MS.fullmatch(duration)):
            what = "malformed AnsweredBy or MachineDetectionDuration"
            answer = "AnsweredBy must be a Twilio AMD result, MachineDetectionDuration milliseconds"
            return refuse_malformed(request, AMD_PATH, what, answer)
        fields: dict[str, Any] = {"answered_by": answered_by}
        if duration:
            fields["machine_detection_ms"] = int(duration)
        state.manager.outbox.put(call_sid, "upsert", **fields)
        state.metrics.observe_amd(answered_by)
        running = state.manager.answered_by(call_sid, answered_by)
        log.info("answered by %s (%s)", answered_by, "call notified" if running else "no call running here")
        return Response(status_code=204)


routes = [
    Route(ANSWER_PATH, outbound_answer, methods=["POST"]),
    Route(AMD_PATH, amd_status, methods=["POST"]),
]
