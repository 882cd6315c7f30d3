"""The HTTP edge under uvicorn: what uvicorn lacks before the app sees a request, and how it is served.

uvicorn (checked against `UVICORN_CHECKED`) has no deadline for a request's line and headers (a
client sending one byte a second holds its connection forever) and, with httptools, no cap on
their size (a header of any length is buffered). `GuardedHttpToolsProtocol` adds both: the head
of each request must arrive within `header_timeout` (else 408, or a silent close when nothing
came) and within `max_header_bytes` (else 431), counted while reading, so no more than that is
ever buffered. A response sent before its request's body has fully arrived ends the connection
too, the rest of the body unparsed. Ending a connection: our side is shut at once, nothing more
is read (past 1 MB dropped, for an early response), and the socket is closed a second later;
closing at once would reset it under a client still writing, and the reset can destroy the
answer before the client reads it. After a WebSocket upgrade none of this runs: the audio path
is the WebSocket protocol's.

`ForwardedHeaders` decides once per connection scope whether the peer is a trusted proxy
(FORWARDED_ALLOW_IPS) and records it in the scope for the signature check (X-Forwarded-Host), then
lets uvicorn's own `ProxyHeadersMiddleware`, given the same value, apply X-Forwarded-Proto/-For:
one parse of the setting, so both agree. uvicorn's server-level proxy middleware is turned off
(`proxy_headers=False`): it would replace the peer's address before the app could see it.

This module is the only one that knows uvicorn's protocol internals; tests/test_http_edge.py pins
the versions it was checked against.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.config import Settings

UVICORN_CHECKED = "0.54.0"
HTTPTOOLS_CHECKED = "0.9.0"
# uvicorn's HttpToolsProtocol (its parser callbacks, data_received, on_response_complete,
# cycle.more_body, flow, transport) and ProxyHeadersMiddleware's trusted_hosts were read in these.
CHECKED_WITH = {"uvicorn": UVICORN_CHECKED, "httptools": HTTPTOOLS_CHECKED}
KEEP_ALIVE_S = 5  # idle time between requests on a kept-alive connection (uvicorn's default)
LINGER_S = 1.0  # after an answer sent before its request's body ended (see `_linger`)
LINGER_BYTES = 1024 * 1024

FORWARDED_TRUSTED = "relay.forwarded_trusted"  # scope key: the peer is in FORWARDED_ALLOW_IPS

log = logging.getLogger("relay.http")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refusals:
    """Counts refused request heads and logs them at most once per `every` seconds (an attack would
    otherwise write a line per connection)."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.total = 0
        self._since_log = 0
        self._logged_at = -float("inf")

    def add(self, status: int) -> None:
        self.total += 1
        self._since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= self.every:
            log.warning(
                "refused %d request head(s) since the last such line (latest: HTTP %d): headers "
                "too slow (HTTP_HEADER_TIMEOUT) or too large (HTTP_MAX_HEADER_BYTES); one line per %.0f s",
                self._since_log,
                status,
                self.every,
            )
            self._since_log, self._logged_at = 0, now


refusals = _Refusals()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a byte cap on each request's head.

    `_head_bytes` counts the bytes received since the current request's head began (None once
    the head is complete); `_head_timer` is its deadline. The first request's head begins at
    connection, the next ones at their first byte (before it, uvicorn's keep-alive timeout runs).
    The bytes of a kept-alive connection's next head that arrived in the same read as the
    previous request are not counted: at most one read (256 KB) more than the cap for that head.
    """

    header_timeout: float = 5.0
    max_header_bytes: int = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._lingering: int | None = None  # bytes dropped since the connection was ended
        self._heads = 0  # request heads begun on this connection

    # --- the head's bounds
    def _begin_head(self, received: int = 0) -> None:
        self._heads += 1
        self._head_bytes = received
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _end_head(self) -> None:
        self._head_bytes = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(408 if self._head_bytes else None)

    def _refuse(self, status: int | None) -> None:
        """Answers `status` (none: a silent close) and ends the connection; the app never sees the
        request. Nothing more is read; the socket is closed LINGER_S later, so that a client still
        writing reads the answer rather than a reset."""
        self._end_head()
        if self.transport.is_closing():
            return
        if status is None or not (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing to say, or a pipelined response is being written
            return
        refusals.add(status)
        reason = _REASONS[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(reason), reason)
        )
        self.flow.pause_reading()
        self._end_connection()

    def _end_connection(self) -> None:
        """Shuts our side now (when the transport can) and closes the socket LINGER_S later; what
        arrives meanwhile is dropped unparsed."""
        self._lingering = 0
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    # --- uvicorn's protocol, extended
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # the connection is ending: dropped
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.flow.pause_reading()  # the client's writes stall; the timer closes
            return
        if self._head_bytes is None:  # reading a body, or between requests
            super().data_received(data)
            return
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        heads = self._heads
        self._head_bytes = self.max_header_bytes
        super().data_received(data[:room])
        if self._head_bytes is not None and self._heads == heads:  # not complete within the cap
            self._refuse(431)
            return
        upgraded = self.transport.get_protocol()
        if upgraded is not self:  # a WebSocket upgrade took the connection: the rest is its
            cast(asyncio.Protocol, upgraded).data_received(data[room:])
        elif not self.transport.is_closing():
            self.data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_bytes is None:  # a kept-alive connection's next request: its first byte is here
            self._begin_head(received=1)

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._linger()  # answered before its body arrived: the rest is not read
        super().on_response_complete()

    def _linger(self) -> None:
        """Ends the connection after an answer given before the request's body was all there:
        our side is shut (the client reads the answer, then end of stream), what the client still
        sends is dropped unparsed (LINGER_BYTES at most, then reading stops), and the socket is
        closed after LINGER_S. Closing at once would reset the connection under a client still
        writing, and the reset can destroy the answer before the client has read it."""
        self._end_connection()


def guarded_http_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http=`, with the settings' header deadline and cap."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": settings.http_header_timeout, "max_header_bytes": settings.http_max_header_bytes},
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the relay's HTTP edge, from the settings."""
    return {
        "http": guarded_http_protocol(settings),
        "limit_concurrency": settings.connection_limit,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "proxy_headers": False,  # applied in the app by ForwardedHeaders, which sees the peer first
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }


class ForwardedHeaders:
    """ASGI middleware: records whether the peer is a trusted proxy (`FORWARDED_TRUSTED` in the
    scope), then applies X-Forwarded-Proto/-For through uvicorn's middleware with the same list."""

    def __init__(self, app: ASGIApp, allow_ips: str) -> None:
        self._proxy = ProxyHeadersMiddleware(app, trusted_hosts=allow_ips)  # type: ignore[arg-type]
        self._trusted = self._proxy.trusted_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            client = scope.get("client")
            scope[FORWARDED_TRUSTED] = client is not None and client[0] in self._trusted
        await self._proxy(scope, receive, send)  # type: ignore[arg-type]


def forwarded_trusted(scope: Scope) -> bool:
    """True when the request came from a peer in FORWARDED_ALLOW_IPS (see `ForwardedHeaders`)."""
    return bool(scope.get(FORWARDED_TRUSTED, False))
