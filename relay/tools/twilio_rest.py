"""Call control over Twilio's REST API: place a call (outbound), hang up, or replace a live call's
TwiML (transfer).

Uses the twilio package's async client. The REST base URL comes from TWILIO_API_BASE_URL: it is
set as the `base_url` of the client's `Api` domain (`client.api.base_url`), which is where the
twilio package builds every `api.twilio.com` URL (`Domain.absolute_url`), so tests and demos can
point it at a local fake.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from twilio.auth_strategy.auth_strategy import AuthStrategy
from twilio.auth_strategy.auth_type import AuthType
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.credential.credential_provider import CredentialProvider
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from relay.config import Settings
from relay.errors import ConfigError, ToolError

__all__ = ["DEFAULT_TWILIO_API_BASE_URL", "CreatedCall", "TwilioCalls", "TwilioRefused"]

DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"
# what the twilio package puts before Twilio's message ("Unable to create record: …")
_PACKAGE_PREFIX = re.compile(r"^Unable to \w+ record: ")


class TwilioRefused(ToolError):
    """Twilio answered a REST request with an error: `status` its HTTP status, `twilio_message`
    its own words (what `POST /calls` hands back to its client)."""

    def __init__(self, message: str, *, status: int, twilio_message: str, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.twilio_message = twilio_message


@dataclass(frozen=True, slots=True)
class CreatedCall:
    """A call Twilio accepted to place: its SID and status (`queued`)."""

    call_sid: str
    status: str


class _BasicAuth(AuthStrategy, CredentialProvider):
    """Account SID + auth token as a ready `Authorization: Basic …` header.

    Given as the client's `credential_provider`, it makes the twilio package send the header
    itself instead of handing `(sid, token)` to `AsyncTwilioHttpClient`, which wraps it in
    `aiohttp.BasicAuth` (deprecated since aiohttp 3.14: a DeprecationWarning on every request).
    """

    def __init__(self, account_sid: str, auth_token: str) -> None:
        AuthStrategy.__init__(self, AuthType.BASIC)
        pair = f"{account_sid}:{auth_token}".encode()
        self._header = "Basic " + base64.b64encode(pair).decode("ascii")

    def to_auth_strategy(self) -> AuthStrategy:
        return self

    def get_auth_string(self) -> str:
        return self._header

    def requires_authentication(self) -> bool:
        return True


class TwilioCalls:
    """Hangs up or redirects live calls of the configured account.

    Create it inside a running event loop (the aiohttp session is opened on first use) and close
    it with `aclose()` or `async with`. Every failure raises `ToolError` with a readable message.
    """

    def __init__(self, settings: Settings, *, timeout: float | None = None) -> None:
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        if not (settings.twilio_account_sid and token):
            raise ConfigError(
                "Call control needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (Twilio console, Account info)."
            )
        self._account_sid = settings.twilio_account_sid
        self._auth_token = token
        self._base_url = settings.twilio_api_base_url or DEFAULT_TWILIO_API_BASE_URL
        self._timeout = settings.twilio_api_timeout if timeout is None else timeout
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Client | None = None

    @property
    def timeout(self) -> float:
        """Seconds each REST request may take (TWILIO_API_TIMEOUT)."""
        return self._timeout

    @property
    def base_url(self) -> str:
        """The REST API base URL in use."""
        return self._base_url

    def _rest(self) -> Client:
        if self._client is None:
            self._http = AsyncTwilioHttpClient()
            client = Client(
                self._account_sid,
                self._auth_token,
                http_client=self._http,
                credential_provider=_BasicAuth(self._account_sid, self._auth_token),
            )
            client.api.base_url = self._base_url
            if self._base_url != DEFAULT_TWILIO_API_BASE_URL:
                # TWILIO_EDGE / TWILIO_REGION would rewrite the host into `api.<edge>.<region>...`.
                client.edge = None
                client.region = None
            self._client = client
        return self._client

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        url: str,
        status_callback: str,
        amd_callback: str | None = None,
    ) -> CreatedCall:
        """Places a call (`POST …/Calls.json`): Twilio requests `url` when `to` answers, and
        `status_callback` when it ends. With `amd_callback`, asynchronous answering-machine
        detection (`MachineDetection=DetectMessageEnd`, `AsyncAmd=true`) reports to it."""
        amd: dict[str, Any] = {}
        if amd_callback is not None:
            amd = {
                "machine_detection": "DetectMessageEnd",
                "async_amd": "true",
                "async_amd_status_callback": amd_callback,
                "async_amd_status_callback_method": "POST",
            }
        call = await self._request(
            "place",
            to,
            self._rest().calls.create_async(
                to=to, from_=from_, url=url, method="POST", status_callback=status_callback, **amd
            ),
        )
        return CreatedCall(str(call.sid), str(call.status or "queued"))

    async def start_recording(self, call_sid: str, status_callback: str) -> str:
        """Starts a dual-channel recording of the live call (`POST …/Calls/{sid}/Recordings.json`):
        caller and agent on separate channels; Twilio requests `status_callback` when it is
        complete (after the call ends). Returns the recording SID."""
        recording = await self._request(
            "record",
            call_sid,
            self._rest()
            .calls(call_sid)
            .recordings.create_async(
                recording_channels="dual",
                recording_track="both",
                recording_status_callback=status_callback,
                recording_status_callback_event=["completed"],
                recording_status_callback_method="POST",
            ),
        )
        return str(recording.sid)

    async def hang_up(self, call_sid: str) -> None:
        """Ends the call now (`Status=completed`)."""
        await self._update(call_sid, "hang up", status="completed")

    async def redirect(self, call_sid: str, twiml: str) -> None:
        """Replaces the call's TwiML (e.g. `<Response><Dial>…</Dial></Response>`); the stream ends."""
        await self._update(call_sid, "redirect", twiml=twiml)

    async def _update(self, call_sid: str, action: str, **fields: Any) -> None:
        await self._request(action, call_sid, self._rest().calls(call_sid).update_async(**fields))

    async def _request(self, action: str, call_sid: str, request: Coroutine[Any, Any, Any]) -> Any:
        """Awaits one REST request within the timeout; every failure becomes a ToolError (a
        TwilioRefused when Twilio answered with an error)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await request
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _rest_error(exc, call_sid, action) from exc
        except TimeoutError as exc:
            raise ToolError(
                f"Twilio did not answer the {action} request for call {call_sid} within "
                f"{self._timeout:g} s ({self._base_url}).",
                retryable=True,
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ToolError(
                f"Could not reach the Twilio REST API at {self._base_url} to {action} call {call_sid}: "
                f"{type(exc).__name__}: {exc}",
                retryable=True,
            ) from exc

    async def aclose(self) -> None:
        """Closes the HTTP session; idempotent."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def __aenter__(self) -> TwilioCalls:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _rest_error(
    exc: TwilioRestException | TwilioServiceException, call_sid: str, action: str
) -> TwilioRefused:
    """The error for Twilio's answer; `call_sid` is the number dialled when `action` is "place"."""
    status = int(exc.status)
    detail = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
    detail = _PACKAGE_PREFIX.sub("", str(detail))  # Twilio's own words, without the package's
    code = f", Twilio error {exc.code}" if exc.code else ""
    suffix = f" (HTTP {status}{code}: {detail})"
    if action == "place" and status != 401:
        message = f"Twilio refused to place a call to {call_sid}"
    elif status == 401:
        message = "Twilio rejected TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN; check them in the Twilio console"
    elif status == 403:
        message = f"Twilio refused to {action} call {call_sid} for this account"
    elif status == 404:
        message = f"Twilio has no call {call_sid} on this account (it may have ended already)"
    elif status == 400:
        message = f"Twilio could not {action} call {call_sid} (is it still in progress?)"
    elif status == 429:
        message = f"Twilio rate-limited the {action} request for call {call_sid}"
    else:
        message = f"Twilio failed to {action} call {call_sid}"
    retryable = status >= 500 or status in (408, 429)
    return TwilioRefused(message + suffix, status=status, twilio_message=str(detail), retryable=retryable)
