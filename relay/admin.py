"""Operator endpoints: `GET /metrics` (Prometheus) and `GET /calls/{call_sid}` (a call's record).

The call record holds the transcript and the parties' numbers, so it is served only with
`Authorization: Bearer <RELAY_ADMIN_TOKEN>`; without RELAY_ADMIN_TOKEN the route does not exist.
The endpoints read what the app factory put on `app.state`: `metrics` (relay.metrics.Metrics),
`settings` and `store`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.config import Settings
from relay.errors import StoreError
from relay.logs import bind_call
from relay.sids import is_call_sid

log = logging.getLogger("relay.admin")

_NO_STORE = {"Cache-Control": "no-store"}
STORE_READ_TIMEOUT_S = 2.0  # a hung Redis answers the operator in this long, not never


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: this app's metrics in the Prometheus text format."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, headers={"Content-Type": content_type})


def bearer_ok(request: Request, settings: Settings) -> bool:
    """True when the request carries `Authorization: Bearer <RELAY_ADMIN_TOKEN>` (constant time)."""
    token = settings.relay_admin_token
    if token is None:
        return False
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    expected = token.get_secret_value().encode()
    return secrets.compare_digest(supplied.strip().encode(), expected)


async def call_record_endpoint(request: Request) -> Response:
    """`GET /calls/{call_sid}`: the call's record as JSON; 401 without the admin bearer, 400 for what
    is not a call SID (never logged as such), 404 unknown, 503 while the store cannot be read."""
    state = request.app.state
    call_sid = request.path_params["call_sid"]
    if state.settings.relay_admin_token is None:  # the route is not mounted then; never serve it anyway
        return JSONResponse({"error": "not found"}, status_code=404)
    if not bearer_ok(request, state.settings):
        client = request.client.host if request.client else "-"
        shown = call_sid if is_call_sid(call_sid) else "<not a call SID>"
        log.warning("refused GET /calls/%s from %s: missing or wrong admin bearer token", shown, client)
        return JSONResponse(
            {"error": "unauthorized: send Authorization: Bearer <RELAY_ADMIN_TOKEN>"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="relay-admin"'},
        )
    if not is_call_sid(call_sid):
        return JSONResponse(
            {"error": "call_sid must be 'CA' followed by 32 hex digits"}, status_code=400, headers=_NO_STORE
        )
    try:
        async with asyncio.timeout(STORE_READ_TIMEOUT_S):
            record = await state.store.get(call_sid)
    except (StoreError, TimeoutError) as exc:
        log.warning("could not read the record of call %s: %s", call_sid, exc or "timed out")
        pending = state.manager.outbox.pending
        return JSONResponse(
            {
                "error": "the call store (REDIS_URL) is unreachable: try again once it is back; "
                f"{pending} record writes are queued for it meanwhile",
            },
            status_code=503,
            headers={**_NO_STORE, "Retry-After": "5"},
        )
    if record is None:
        return JSONResponse({"error": f"no record for call {call_sid}"}, status_code=404, headers=_NO_STORE)
    with bind_call(call_sid):
        log.info("call record served to an admin")
    # orjson: records hold floats (NaN becomes null) and whatever tools put in their arguments.
    body = orjson.dumps(record, default=str)
    return Response(body, media_type="application/json", headers=_NO_STORE)


def admin_routes(settings: Settings) -> list[Route]:
    """`/metrics` always; `/calls/{call_sid}` only when RELAY_ADMIN_TOKEN is set."""
    routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
    if settings.relay_admin_token is not None:
        routes.append(Route("/calls/{call_sid}", call_record_endpoint, methods=["GET"]))
    return routes


__all__ = ["admin_routes", "bearer_ok", "call_record_endpoint", "metrics_endpoint"]
