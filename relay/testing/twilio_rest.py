"""A fake of Twilio's REST calls: update (`POST /2010-04-01/Accounts/{sid}/Calls/{CallSid}.json`),
and create (`POST …/Calls.json`, with the callbacks Twilio then sends: relay/testing/twilio_rest_calls.py,
`fake.outbound`).

It checks HTTP Basic auth (account SID and auth token), reads the form fields `Status` / `Twiml`,
records each update and answers a call resource. Errors use Twilio's JSON shape
`{code, message, more_info, status}`. Failure knobs: `status` (answer that HTTP status instead),
`delay` (answer that many seconds late) and `hang` (never answer while served: the client times out).

It also answers Twilio's reads of calls, `GET …/Calls.json` (list) and `GET …/Calls/{CallSid}.json`
(fetch: `status` is `completed` once an update ended the call). A fetch may carry the fake-only query
`Wait=S`: the answer is held until the call is completed or S seconds passed (at most 30), so the
simulated callee of `relay call --outbound` learns at once that the relay hung up through the API.

    fake = FakeTwilioRest()
    async with fake.serve() as url:        # TWILIO_API_BASE_URL=url
        ...
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from relay.testing.server import serve_app
from relay.testing.twilio_rest_calls import FakeOutbound
from relay.testing.twilio_rest_recordings import FakeRecordings

__all__ = ["CallUpdate", "FakeTwilioRest", "TwilioRestRequest"]

API_VERSION = "2010-04-01"
# status -> (Twilio error code, message)
_ERRORS = {
    400: (21220, "Call is not in-progress. Cannot redirect."),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
}

# a create refused with this status: (message, code), as Twilio words it
_CREATE_ERRORS = {
    400: ("The 'To' number +15550000000 is not a valid phone number.", 21211),
}


@dataclass(frozen=True, slots=True)
class TwilioRestRequest:
    """One request the fake received, authenticated or not."""

    account_sid: str
    call_sid: str
    username: str | None
    password: str | None
    form: dict[str, str]


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """An accepted update of a call."""

    account_sid: str
    call_sid: str
    form: dict[str, str]
    at: float = 0.0  # time.monotonic() when it was received

    @property
    def status(self) -> str | None:
        return self.form.get("Status")

    @property
    def twiml(self) -> str | None:
        return self.form.get("Twiml")


@dataclass
class FakeTwilioRest:
    """Scripted Twilio REST API for call updates."""

    account_sid: str = "AC" + "0" * 32
    auth_token: str = "test-auth-token"
    status: int | None = None
    """Failure knob: answer authenticated requests with this HTTP status (400, 404, 500…)."""
    delay: float = 0.0
    """Failure knob: seconds before answering each request (a slow API)."""
    hang: bool = False
    """Failure knob: never answer (until the fake stops), so the client's timeout fires."""
    requests: list[TwilioRestRequest] = field(default_factory=list)
    updates: list[CallUpdate] = field(default_factory=list)
    outbound: FakeOutbound | None = None
    """Created calls and their callbacks (a FakeOutbound signing with `auth_token` by default)."""
    recordings: FakeRecordings | None = None
    """Started recordings and their callbacks (signing with `auth_token` by default)."""

    def __post_init__(self) -> None:
        if self.outbound is None:
            self.outbound = FakeOutbound(auth_token=self.auth_token)
        if self.recordings is None:
            self.recordings = FakeRecordings(auth_token=self.auth_token)
        self._updated = asyncio.Event()
        self._received = asyncio.Event()
        self._stopping = asyncio.Event()
        path = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls/{{call_sid}}.json"
        create = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls.json"
        record = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls/{{call_sid}}/Recordings.json"
        self.app = Starlette(
            routes=[
                Route(create, self._create_call, methods=["POST"]),
                Route(record, self._start_recording, methods=["POST"]),
                Route(path, self._update_call, methods=["POST"]),
                Route(create, self._list_calls, methods=["GET"]),
                Route(path, self._fetch_call, methods=["GET"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serves the fake; yields its base URL (`http://127.0.0.1:PORT`)."""
        async with serve_app(self.app) as url:
            try:
                yield url
            finally:
                self._stopping.set()  # a hanging answer returns, so the server can stop
                if self.outbound is not None:
                    await self.outbound.aclose()
                if self.recordings is not None:
                    await self.recordings.aclose()

    async def wait_update(self, n: int = 1, timeout: float = 5.0) -> CallUpdate:  # noqa: ASYNC109
        """The `n`-th accepted update, waiting for it; TimeoutError says what was seen."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.updates) < n:
                    self._updated.clear()
                    await self._updated.wait()
        except TimeoutError:
            raise TimeoutError(f"update #{n} not received in {timeout}s; got {self.updates}") from None
        return self.updates[n - 1]

    async def wait_requests(self, n: int, timeout: float = 5.0) -> list[TwilioRestRequest]:  # noqa: ASYNC109
        """The first `n` requests received (answered or not), waiting for them."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.requests) < n:
                    self._received.clear()
                    await self._received.wait()
        except TimeoutError:
            raise TimeoutError(f"request #{n} not received in {timeout}s; got {self.requests}") from None
        return self.requests[:n]

    async def _create_call(self, request: Request) -> JSONResponse:
        form, refusal = await self._receive(request, call_sid="")
        if refusal is not None:
            return refusal
        assert self.outbound is not None
        status, body = self.outbound.create(request.path_params["account_sid"], form)
        if status >= 400:
            return _error(status, body["message"], code=body["code"])
        return JSONResponse(body, status_code=status)

    async def _start_recording(self, request: Request) -> JSONResponse:
        call_sid = request.path_params["call_sid"]
        form, refusal = await self._receive(request, call_sid)
        if refusal is not None:
            return refusal
        assert self.recordings is not None
        status, body = self.recordings.create(request.path_params["account_sid"], call_sid, form)
        return JSONResponse(body, status_code=status)

    async def _receive(self, request: Request, call_sid: str) -> tuple[dict[str, str], JSONResponse | None]:
        """Records the request; its form, and the error answer when it is to be refused (the knobs,
        the credentials, the account)."""
        account_sid = request.path_params["account_sid"]
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        username, password = _basic_auth(request.headers.get("authorization", ""))
        self.requests.append(TwilioRestRequest(account_sid, call_sid, username, password, form))
        self._received.set()
        if self.hang or self.delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if self.hang else self.delay):
                    await self._stopping.wait()
            if self.hang:  # released by the fake's stop: the update never took effect
                return form, _error(503)
        if not (
            username is not None
            and password is not None
            and secrets.compare_digest(username, self.account_sid)
            and secrets.compare_digest(password, self.auth_token)
        ):
            return form, _error(401)
        if account_sid != self.account_sid:
            return form, _error(404)
        if self.status is not None and self.status != 200:
            if not call_sid and self.status in _CREATE_ERRORS:  # a create
                text, code = _CREATE_ERRORS[self.status]
                return form, _error(self.status, text, code=code)
            return form, _error(self.status)
        return form, None

    async def _update_call(self, request: Request) -> JSONResponse:
        account_sid = request.path_params["account_sid"]
        call_sid = request.path_params["call_sid"]
        form, refusal = await self._receive(request, call_sid)
        if refusal is not None:
            return refusal
        if "Status" not in form and "Twiml" not in form and "Url" not in form:
            return _error(400, "Nothing to update: send Status, Twiml or Url.", code=21201)
        self.updates.append(CallUpdate(account_sid, call_sid, form, time.monotonic()))
        self._updated.set()
        return JSONResponse(_call_resource(account_sid, call_sid, form))

    def call_status(self, call_sid: str) -> str | None:
        """The call's status as a fetch reports it: `completed` once an accepted update set
        `Status=completed`, else `in-progress` for a call the fake placed or updated; None for a
        call it never saw."""
        mine = [u for u in self.updates if u.call_sid == call_sid]
        if any(u.status == "completed" for u in mine):
            return "completed"
        placed = self.outbound is not None and any(c.call_sid == call_sid for c in self.outbound.calls)
        return "in-progress" if mine or placed else None

    def _read_refusal(self, request: Request) -> JSONResponse | None:
        """Reads are authenticated like writes, and not recorded in `requests`."""
        username, password = _basic_auth(request.headers.get("authorization", ""))
        if not (
            username is not None
            and password is not None
            and secrets.compare_digest(username, self.account_sid)
            and secrets.compare_digest(password, self.auth_token)
        ):
            return _error(401)
        if request.path_params["account_sid"] != self.account_sid:
            return _error(404)
        return None

    async def _list_calls(self, request: Request) -> JSONResponse:
        refusal = self._read_refusal(request)
        if refusal is not None:
            return refusal
        calls = self.outbound.calls if self.outbound is not None else []
        resources = [_call_resource(self.account_sid, c.call_sid, {}) for c in calls]
        for resource in resources:
            resource["status"] = self.call_status(resource["sid"])
        return JSONResponse({"calls": resources, "page": 0, "page_size": 50, "start": 0})

    async def _fetch_call(self, request: Request) -> JSONResponse:
        refusal = self._read_refusal(request)
        if refusal is not None:
            return refusal
        call_sid = request.path_params["call_sid"]
        try:
            wait = min(float(request.query_params.get("Wait", "0")), 30.0)
        except ValueError:
            return _error(400, "Wait must be seconds (a fake-only parameter)", code=20001)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0.0)):
                while self.call_status(call_sid) == "in-progress" and not self._stopping.is_set():
                    self._updated.clear()
                    waits = [asyncio.ensure_future(e.wait()) for e in (self._updated, self._stopping)]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiting in waits:
                            waiting.cancel()
        status = self.call_status(call_sid)
        if status is None:
            return _error(404)
        resource = _call_resource(self.account_sid, call_sid, {"Status": status})
        resource["status"] = status
        return JSONResponse(resource)


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else (None, None)


def _error(status: int, message: str | None = None, *, code: int | None = None) -> JSONResponse:
    default_code, default_message = _ERRORS.get(status, (status * 100, f"HTTP {status}"))
    code = code or default_code
    body = {
        "code": code,
        "message": message or default_message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)


def _call_resource(account_sid: str, call_sid: str, form: dict[str, str]) -> dict[str, Any]:
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{call_sid}.json"
    return {
        "sid": call_sid,
        "account_sid": account_sid,
        "status": "completed" if form.get("Status") == "completed" else "in-progress",
        "direction": "inbound",
        "from": "+15550001111",
        "to": "+15550002222",
        "api_version": API_VERSION,
        "date_created": "Mon, 01 Jan 2024 00:00:00 +0000",
        "date_updated": "Mon, 01 Jan 2024 00:00:00 +0000",
        "start_time": "Mon, 01 Jan 2024 00:00:00 +0000",
        "end_time": None,
        "duration": None,
        "uri": uri,
        "subresource_uris": {},
    }
