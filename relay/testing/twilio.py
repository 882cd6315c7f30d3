"""A protocol-faithful fake of Twilio's side of one phone call, for tests and the `relay call` command.

`FakeTwilioCall` does what Twilio does against the relay (see PROTOCOLS.md §1):

1. fetches the TwiML with a signed, form-encoded webhook POST (`fetch_twiml`);
2. opens the Media Stream WebSocket with an `X-Twilio-Signature` over the `wss://` URL of the
   TwiML, then sends `connected` and `start` (`connect`);
3. streams caller audio as 20 ms `media` frames paced in real time, plus `dtmf`, `stop`, or a
   dropped socket;
4. plays the audio the relay sends back on a simulated real-time clock, echoes `mark`s when the
   audio before them has played, and on `clear` drops unplayed audio and echoes every pending
   mark at once.

This module places the call (webhook, upgrade, closing). What Twilio sends is in
`relay.testing.twilio_sender`; how it receives and plays what the relay sends, with the waits on
it, in `relay.testing.twilio_handset` (`FakeTwilioCall` is a `Handset`); the TwiML parsing in
`relay.testing.twilio_twiml`; the playback clock and the records of what the relay sent in
`relay.testing.twilio_playback`.

Every timestamp recorded here is `time.monotonic()` seconds, the clock of asyncio's default event
loop. Nothing is raised from background work: protocol violations by the relay are collected in
`protocol_errors`, a rejected upgrade in `upgrade_status`, a close in `close_code`/`close_reason`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relay.testing.audio import silence_ulaw
from relay.testing.twilio_handset import CallEndedError, Handset
from relay.testing.twilio_sender import FRAME_BYTES, CallerSender
from relay.testing.twilio_twiml import Twiml, ws_url

__all__ = ["FRAME_BYTES", "SIGNATURE_HEADER", "CallEndedError", "FakeTwilioCall"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _phone() -> str:
    return "+1555" + "".join(str(secrets.randbelow(10)) for _ in range(7))


# --------------------------------------------------------------------------- the call


class FakeTwilioCall(Handset):
    """An async fake of one Twilio call against the relay; use as `async with FakeTwilioCall(...)`.

    `base_url` is where the relay really listens (`http://127.0.0.1:PORT`); `public_url` is the
    URL Twilio believes it calls (default `base_url`), over which signatures are computed exactly
    as Twilio does. Signatures are added when `auth_token` is set.
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth_token: str | None = None,
        public_url: str | None = None,
        call_sid: str | None = None,
        account_sid: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        stream_sid: str | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        super().__init__(call_sid=call_sid or _sid("CA"), stream_sid=stream_sid or _sid("MZ"))
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.auth_token = auth_token
        self.account_sid = account_sid or _sid("AC")
        self.from_ = from_ or _phone()
        self.to = to or _phone()
        self.open_timeout = open_timeout

        self.stream_url: str | None = None  # the wss:// URL signed at connect
        self.custom_parameters: dict[str, str] = {}
        self.upgrade_status: int | None = None  # 101 when accepted, else the HTTP status
        self.upgrade_body: str = ""
        self.close_code: int | None = None  # from the close frame received; 1006 if none
        self.close_reason: str | None = None
        self.closed_by_relay: bool | None = None
        self.closed_at: float | None = None

        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender = CallerSender(
            account_sid=self.account_sid,
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            is_open=lambda: self.is_open,
        )

    @property
    def sent(self) -> list[tuple[float, dict[str, Any] | str | bytes]]:
        """Every frame sent to the relay, with its time: parsed JSON, or raw text or bytes."""
        return self._sender.sent

    # ------------------------------------------------------------------ context manager

    async def __aenter__(self) -> FakeTwilioCall:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Ends the call (`stop` + close if still open) and cancels every task and timer."""
        if self.is_open:
            try:
                await self.stop()
            except Exception:  # closing must not fail; the close is recorded by the reader
                log.debug("stop during close failed", exc_info=True)
        if self._ws is not None and self._reader is not None and not self._reader.done():
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._reader)
            except TimeoutError:
                pass
            self._ws.transport.abort()
        tasks = [t for t in (self._reader, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._cancel_timers()
        if not self._closed.is_set():
            self._on_closed(self.close_code, self.close_reason, by_relay=False)

    # ------------------------------------------------------------------ webhook

    def sign(self, url: str, params: dict[str, str]) -> str:
        """Twilio's `X-Twilio-Signature` for `url` and form `params` (needs `auth_token`)."""
        if self.auth_token is None:
            raise ValueError("cannot sign without an auth_token")
        return str(RequestValidator(self.auth_token).compute_signature(url, params))

    async def fetch_twiml(
        self,
        path: str = "/incoming-call",
        *,
        extra_params: dict[str, str] | None = None,
        sign: bool = True,
        signature: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (an HTTP client timeout, not a deadline)
    ) -> Twiml:
        """POSTs the incoming-call webhook as Twilio does and parses the TwiML answer.

        The form has `CallSid, AccountSid, From, To, CallStatus=ringing, Direction=inbound` (plus
        `extra_params`); `X-Twilio-Signature` is computed over `public_url + path` when
        `auth_token` is set and `sign` is true, or is `signature` verbatim when given. HTTP error
        statuses are returned, not raised.
        """
        params = {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.from_,
            "To": self.to,
            "CallStatus": "ringing",
            "Direction": "inbound",
        }
        params.update(extra_params or {})
        signed_url = self.public_url + path
        headers: dict[str, str] = {}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        elif sign and self.auth_token is not None:
            headers[SIGNATURE_HEADER] = self.sign(signed_url, params)
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(self.base_url + path, data=params, headers=headers)
        log.debug("webhook %s -> %d", path, response.status_code)
        return Twiml.parse(response.status_code, response.text, signed_url)

    # ------------------------------------------------------------------ connect

    async def connect(
        self,
        twiml: Twiml | None = None,
        *,
        stream_url: str | None = None,
        parameters: dict[str, str] | None = None,
        sign: bool = True,
        signature: str | None = None,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Opens the Media Stream and sends `connected` and `start`; True when the stream is open.

        The URL Twilio would open is `stream_url`, else the TwiML's `<Stream url>`, else
        `public_url` (as ws/wss) + `/media-stream`. The fake connects to the same path on
        `base_url` (or to `path`, as a proxy that rewrites it would, with `headers` added as a
        proxy adds them) and signs that public URL with params `{}` (unless `sign` is false;
        `signature` overrides the header). Query strings are dropped as Twilio does (recorded as a
        protocol error, as is a non-wss URL taken from TwiML). `customParameters` are `parameters`, else
        the TwiML's. A rejected upgrade returns False and sets `upgrade_status`/`upgrade_body`.
        """
        if self._ws is not None or self._closed.is_set():
            raise RuntimeError("this FakeTwilioCall already connected once; make a new one per call")
        if stream_url is None and twiml is not None:
            stream_url = twiml.resolved_stream_url
            if stream_url is None:
                raise ValueError(f"the TwiML has no <Connect><Stream url>: {twiml.body!r}")
            # Twilio opens wss:// only. A caller dialling a relay directly over plain http (no
            # PUBLIC_URL: `relay call` against `make run`) takes the ws:// the relay advertises then.
            insecure_ok = urlsplit(self.public_url).scheme == "http"
            if urlsplit(stream_url).scheme != "wss" and not insecure_ok:
                self._protocol_error(f"<Stream url> must be wss:// (Twilio rejects others): {stream_url}")
        if stream_url is None:
            stream_url = ws_url(self.public_url) + "/media-stream"
        parts = urlsplit(stream_url)
        if parts.query:
            self._protocol_error(f"<Stream url> has a query string, which Twilio drops: {stream_url}")
        self.stream_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        base = urlsplit(ws_url(self.base_url))
        local_url = urlunsplit((base.scheme, base.netloc, path or parts.path or "/", "", ""))
        if parameters is None:
            parameters = dict(twiml.parameters) if twiml is not None else {}
        self.custom_parameters = dict(parameters)

        upgrade_headers = dict(headers or {})
        if signature is not None:
            upgrade_headers[SIGNATURE_HEADER] = signature
        elif sign and self.auth_token is not None:
            upgrade_headers[SIGNATURE_HEADER] = self.sign(self.stream_url, {})

        try:
            ws = await ws_connect(
                local_url,
                additional_headers=upgrade_headers,
                open_timeout=self.open_timeout,
                close_timeout=2.0,
            )
        except InvalidStatus as exc:
            self.upgrade_status = exc.response.status_code
            self.upgrade_body = exc.response.body.decode(errors="replace") if exc.response.body else ""
            log.info("media stream upgrade rejected: HTTP %d %s", self.upgrade_status, self.upgrade_body)
            self._on_closed(None, None, by_relay=True)
            return False
        except InvalidHandshake as exc:
            self.upgrade_body = str(exc)
            self._protocol_error(f"WebSocket handshake failed: {exc}")
            self._on_closed(None, None, by_relay=True)
            return False
        self.upgrade_status = 101
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws), name=f"fake-twilio-reader-{self.call_sid}")
        log.info(
            "media stream open: %s (call %s, stream %s)", self.stream_url, self.call_sid, self.stream_sid
        )

        self._sender.ws = ws
        self.started_at = await self._sender.start(self.custom_parameters)
        return self.is_open

    # ------------------------------------------------------------------ sending

    @property
    def is_open(self) -> bool:
        """True while the stream is connected and not closed."""
        return self._ws is not None and not self._closed.is_set()

    async def send_audio(self, ulaw: bytes, *, realtime: bool = True) -> int:
        """Streams caller audio as `media` messages of 160 bytes (the last one padded with silence).

        With `realtime`, frame i is sent at `t0 + i * 20 ms` on an absolute schedule (no drift),
        where `t0` is now or, if an earlier realtime send is still "playing", the end of its
        schedule, so consecutive calls form one continuous stream. `timestamp` is the frame's ms
        from `start`: the wall-clock time of its slot, never less than the previous timestamp +
        20. Returns the number of frames sent; stops early, quietly, if the socket closed.
        """
        if self.started_at is None:
            if self._closed.is_set():  # the upgrade was rejected: nothing to send to
                return 0
            raise RuntimeError("connect() first")
        return await self._sender.send_audio(ulaw, realtime=realtime)

    async def send_silence(self, ms: float, *, realtime: bool = True) -> int:
        """Streams `ms` ms of μ-law silence (see `send_audio`)."""
        return await self.send_audio(silence_ulaw(ms), realtime=realtime)

    async def send_dtmf(self, digit: str) -> bool:
        """Sends a `dtmf` message for one key (0-9, *, #, A-D)."""
        return await self._sender.send_dtmf(digit)

    async def send_text(self, raw: str) -> bool:
        """Sends a raw text frame as is (for malformed-input tests); False if the socket is closed."""
        return await self._sender.send_raw(raw)

    async def send_binary(self, raw: bytes) -> bool:
        """Sends a raw binary frame (Twilio never does; for bad-input tests)."""
        return await self._sender.send_raw(raw)

    def _send_mark_echo(self, name: str) -> None:
        task = asyncio.create_task(
            self._sender.send_mark_echo(name), name=f"fake-twilio-mark-echo-{self.call_sid}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Ends the stream as Twilio does when the call ends: sends `stop`, then closes (1000)."""
        if not self.is_open or self._ws is None:
            return
        await self._sender.send_stop()
        await self._ws.close()
        await self._wait_reader()

    async def hangup(self, *, abrupt: bool = False) -> None:
        """Drops the stream without `stop`: a clean close (1000), or with `abrupt` a TCP reset
        without any close frame (the relay sees 1006)."""
        if not self.is_open or self._ws is None:
            return
        if abrupt:
            self._ws.transport.abort()
        else:
            await self._ws.close()
        await self._wait_reader()

    async def _wait_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            try:
                async with asyncio.timeout(3.0):
                    await asyncio.shield(self._reader)
            except TimeoutError:
                log.warning("reader did not finish after the close")

    # ------------------------------------------------------------------ receiving

    async def _read(self, ws: ClientConnection) -> None:
        try:
            while True:
                raw = await ws.recv()
                self._on_message(raw)
        except ConnectionClosed as exc:
            by_relay = exc.rcvd is not None and (exc.sent is None or bool(exc.rcvd_then_sent))
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            log.info("media stream closed: code %s %r (by %s)", code, reason, "relay" if by_relay else "us")
            self._on_closed(code, reason, by_relay=by_relay)
        except Exception as exc:  # a bug here must not vanish in a background task
            log.exception("fake Twilio reader failed")
            self._protocol_error(f"reader failed: {exc!r}")
            self._on_closed(1006, "", by_relay=False)

    def _on_closed(self, code: int | None, reason: str | None, *, by_relay: bool) -> None:
        if self._closed.is_set():
            return
        now = time.monotonic()
        self.closed_at = now
        self.close_code = code
        self.close_reason = reason
        self.closed_by_relay = by_relay
        self._halt(now)

    def _stream_state(self) -> str:
        if self.is_open:
            return "open"
        if self.upgrade_status is None:
            return "not connected"
        if self.upgrade_status != 101:
            return f"upgrade rejected with HTTP {self.upgrade_status}"
        return f"closed (code {self.close_code}, reason {self.close_reason!r})"
