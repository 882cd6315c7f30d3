"""Call creation in the Twilio REST fake (`POST /2010-04-01/Accounts/{sid}/Calls.json`), and what
Twilio does after it: request the call's `Url` when the callee answers, then, with `AsyncAmd=true`,
post the answering-machine detection result to `AsyncAmdStatusCallback`.

Every callback is a form POST signed with the account's auth token exactly as Twilio signs
(`X-Twilio-Signature` over the callback's own URL), sent to `relay_url` when set (the relay's real
address, for a callback URL under a PUBLIC_URL nobody listens on), else to the URL itself. The
answer's TwiML is kept (`PlacedCall.answer`), so a test can open the Media Stream with it as
Twilio would (`FakeTwilioCall(..., call_sid=placed.call_sid).connect(placed.answer)`).

Knobs: `answer` (request the `Url` as soon as the call is created; else `answer_call` does it),
`answered_by` (the `AnsweredBy` reported: human, machine_end_beep, …).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.testing.twilio_callbacks import TwilioCallbacks
from relay.testing.twilio_twiml import Twiml

__all__ = ["FakeOutbound", "PlacedCall"]

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"


@dataclass
class PlacedCall:
    """One call the fake accepted to place, and what happened to it."""

    call_sid: str
    account_sid: str
    form: dict[str, str]
    received_at: float  # time.monotonic() when the create request arrived
    answered_at: float | None = None  # time.monotonic() when the fake requested the Url (the answer)
    answer: Twiml | None = None  # the relay's answer to the call's Url
    amd_status: int | None = None  # the HTTP status of the AMD callback, once sent
    callbacks: list[tuple[str, int]] = field(default_factory=list)  # (url, HTTP status) in order

    @property
    def to(self) -> str:
        return self.form.get("To", "")

    @property
    def from_(self) -> str:
        return self.form.get("From", "")


@dataclass
class FakeOutbound:
    """Calls created through the fake, and Twilio's callbacks for them."""

    auth_token: str = "test-auth-token"
    relay_url: str | None = None
    """Where callbacks are really sent (`http://127.0.0.1:PORT`); None: to their own URL."""
    answer: bool = True
    """Request the call's Url (then the AMD callback) as soon as it is created."""
    answered_by: str = "human"
    """The AnsweredBy of the AMD callback."""
    calls: list[PlacedCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._callbacks = TwilioCallbacks(self.auth_token)

    def create(self, account_sid: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """A create request (already authenticated): (HTTP status, JSON body) as Twilio answers."""
        missing = [name for name in ("To", "From", "Url") if not form.get(name)]
        if missing:
            message = f"Required parameter {missing[0]} missing."
            return 400, {"code": 21201, "message": message, "status": 400}
        call = PlacedCall("CA" + secrets.token_hex(16), account_sid, dict(form), time.monotonic())
        self.calls.append(call)
        self._notify()
        if self.answer:
            task = asyncio.get_running_loop().create_task(self.answer_call(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return 201, _call_resource(call)

    async def answer_call(self, call: PlacedCall) -> Twiml:
        """The callee answers: Twilio requests the Url (its TwiML is kept), then reports AMD."""
        params = {**self._base_params(call), "CallStatus": "in-progress"}
        call.answered_at = time.monotonic()
        status, body = await self._post(call, call.form["Url"], params)
        call.answer = Twiml.parse(status, body, call.form["Url"])
        self._notify()
        if call.form.get("AsyncAmd") == "true" and call.form.get("AsyncAmdStatusCallback"):
            amd = {
                **self._base_params(call),
                "AnsweredBy": self.answered_by,
                "MachineDetectionDuration": "2300",
            }
            call.amd_status, _ = await self._post(call, call.form["AsyncAmdStatusCallback"], amd)
            self._notify()
        return call.answer

    async def send_status(self, call: PlacedCall, status: str) -> int:
        """Twilio's status callback with `CallStatus=status` (completed, no-answer, busy…)."""
        params = {**self._base_params(call), "CallStatus": status}
        code, _ = await self._post(call, call.form["StatusCallback"], params)
        return code

    async def wait_call(self, n: int = 1, timeout: float = 5.0) -> PlacedCall:  # noqa: ASYNC109
        """The `n`-th placed call, once it exists."""
        return await self._wait(lambda: self.calls[n - 1] if len(self.calls) >= n else None, timeout)

    async def wait_answered(self, n: int = 1, timeout: float = 5.0) -> PlacedCall:  # noqa: ASYNC109
        """The `n`-th placed call, once the relay answered its Url (and its AMD callback, if any)."""

        def done() -> PlacedCall | None:
            if len(self.calls) < n:
                return None
            call = self.calls[n - 1]
            amd = call.form.get("AsyncAmd") == "true"
            return call if call.answer is not None and (not amd or call.amd_status is not None) else None

        return await self._wait(done, timeout)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._callbacks.aclose()

    def _base_params(self, call: PlacedCall) -> dict[str, str]:
        return {
            "CallSid": call.call_sid,
            "AccountSid": call.account_sid,
            "From": call.from_,
            "To": call.to,
            "Direction": "outbound-api",
            "ApiVersion": API_VERSION,
        }

    async def _post(self, call: PlacedCall, url: str, params: dict[str, str]) -> tuple[int, str]:
        response = await self._callbacks.post(url, params, self.relay_url)
        call.callbacks.append((url, response.status_code))
        log.debug("callback %s -> %d", url, response.status_code)
        return response.status_code, response.text

    async def _wait(
        self,
        ready: Callable[[], PlacedCall | None],
        timeout: float,  # noqa: ASYNC109
    ) -> PlacedCall:
        try:
            async with asyncio.timeout(timeout):
                while (found := ready()) is None:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"not seen within {timeout}s; calls: {self.calls}") from None
        return found

    def _notify(self) -> None:
        self._changed.set()


def _call_resource(call: PlacedCall) -> dict[str, Any]:
    uri = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.call_sid}.json"
    return {
        "sid": call.call_sid,
        "account_sid": call.account_sid,
        "status": "queued",
        "direction": "outbound-api",
        "from": call.from_,
        "to": call.to,
        "api_version": API_VERSION,
        "date_created": None,
        "date_updated": None,
        "start_time": None,
        "end_time": None,
        "duration": None,
        "uri": uri,
        "subresource_uris": {},
    }
