"""Twilio's own requests to the relay (a call's Url, the AMD and recording callbacks), as the REST
fake sends them: signed with the account's auth token over the public URL Twilio was given, and
sent to the relay's real address when the test knows it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator


class TwilioCallbacks:
    """One HTTP client for every callback, like Twilio's warm connections: a new client per request
    would build an SSL context each time (tens of milliseconds), which is not Twilio's latency."""

    def __init__(self, auth_token: str) -> None:
        self.auth_token = auth_token
        self._client: httpx.AsyncClient | None = None

    async def post(self, url: str, params: dict[str, str], relay_url: str | None) -> httpx.Response:
        """POSTs `params` to `url`, signed; to `relay_url`'s scheme and host instead of `url`'s when
        given (the relay's `http://127.0.0.1:PORT` behind its public `https://` name)."""
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        target = url
        if relay_url is not None:
            relay, parts = urlsplit(relay_url), urlsplit(url)
            target = urlunsplit((relay.scheme, relay.netloc, parts.path, parts.query, ""))
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        return await self._client.post(target, data=params, headers={"X-Twilio-Signature": signature})

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


__all__ = ["TwilioCallbacks"]
