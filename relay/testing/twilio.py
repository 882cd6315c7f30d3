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

The TwiML parsing is in `relay.testing.twilio_twiml`; the playback clock and the records of what
the relay sent are in `relay.testing.twilio_playback`.

Every timestamp recorded here is `time.monotonic()` seconds, the clock of asyncio's default event
loop. Nothing is raised from background work: protocol violations by the relay are collected in
`protocol_errors`, a rejected upgrade in `upgrade_status`, a close in `close_code`/`close_reason`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from relay.testing.audio import silence_ulaw
from relay.testing.twilio_playback import (
    SAMPLE_RATE,
    ClearRecord,
    MarkEcho,
    PlaybackClock,
    PlayedChunk,
    Received,
)
from relay.testing.twilio_twiml import Twiml, ws_url

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms, the size Twilio sends
FRAME_SECONDS = FRAME_BYTES / SAMPLE_RATE
SIGNATURE_HEADER = "X-Twilio-Signature"
DTMF_DIGITS = frozenset("0123456789*#ABCD")


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _phone() -> str:
    return "+1555" + "".join(str(secrets.randbelow(10)) for _ in range(7))


# --------------------------------------------------------------------------- the call


class CallEndedError(TimeoutError):
    """A wait can no longer succeed because the stream is closed (a `TimeoutError`, raised early)."""


@dataclass(slots=True)
class _PendingMark:
    name: str
    received_at: float
    handle: asyncio.TimerHandle | None


class FakeTwilioCall:
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
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.auth_token = auth_token
        self.call_sid = call_sid or _sid("CA")
        self.account_sid = account_sid or _sid("AC")
        self.from_ = from_ or _phone()
        self.to = to or _phone()
        self.stream_sid = stream_sid or _sid("MZ")
        self.open_timeout = open_timeout

        self.stream_url: str | None = None  # the wss:// URL signed at connect
        self.custom_parameters: dict[str, str] = {}
        self.upgrade_status: int | None = None  # 101 when accepted, else the HTTP status
        self.upgrade_body: str = ""
        self.close_code: int | None = None  # from the close frame received; 1006 if none
        self.close_reason: str | None = None
        self.closed_by_relay: bool | None = None
        self.protocol_errors: list[str] = []
        self.messages: list[Received] = []
        self.sent: list[tuple[float, dict[str, Any] | str | bytes]] = []
        self.clears: list[ClearRecord] = []
        self.mark_echoes: list[MarkEcho] = []
        self.started_at: float | None = None  # when `start` was sent
        self.first_media_received_at: float | None = None
        self.closed_at: float | None = None

        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self._clock = PlaybackClock()
        self._received = bytearray()
        self._media_messages = 0
        self._pending_marks: list[_PendingMark] = []
        self._drain_timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._chunk = 0
        self._next_ts_ms = 0
        self._pace_next = 0.0
        self._stop_sent = False

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
    ) -> bool:
        """Opens the Media Stream and sends `connected` and `start`; True when the stream is open.

        The URL Twilio would open is `stream_url`, else the TwiML's `<Stream url>`, else
        `public_url` (as ws/wss) + `/media-stream`. The fake connects to the same path on
        `base_url` and signs that public URL with params `{}` (unless `sign` is false; `signature`
        overrides the header). Query strings are dropped as Twilio does (recorded as a protocol
        error, as is a non-wss URL taken from TwiML). `customParameters` are `parameters`, else
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
        local_url = urlunsplit((base.scheme, base.netloc, parts.path or "/", "", ""))
        if parameters is None:
            parameters = dict(twiml.parameters) if twiml is not None else {}
        self.custom_parameters = dict(parameters)

        headers: dict[str, str] = {}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        elif sign and self.auth_token is not None:
            headers[SIGNATURE_HEADER] = self.sign(self.stream_url, {})

        try:
            ws = await ws_connect(
                local_url, additional_headers=headers, open_timeout=self.open_timeout, close_timeout=2.0
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

        await self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.started_at = time.monotonic()
        self._pace_next = self.started_at
        await self._send_sequenced(
            lambda seq: {
                "event": "start",
                "sequenceNumber": seq,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(self.custom_parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )
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
        if not ulaw:
            return 0
        frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
        if len(frames[-1]) < FRAME_BYTES:
            frames[-1] = frames[-1] + silence_ulaw((FRAME_BYTES - len(frames[-1])) / 8)
        started_at = self.started_at
        t0 = max(time.monotonic(), self._pace_next) if realtime else time.monotonic()
        sent = 0
        for i, frame in enumerate(frames):
            if realtime:
                slot = t0 + i * FRAME_SECONDS
                delay = slot - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                slot = time.monotonic()
            ts = max(self._next_ts_ms, round((slot - started_at) * 1000))
            self._next_ts_ms = ts + round(FRAME_SECONDS * 1000)
            payload = base64.b64encode(frame).decode("ascii")
            ok = await self._send_sequenced(
                functools.partial(self._media_message, payload=payload, timestamp=ts)
            )
            if not ok:
                break
            sent += 1
        if realtime:
            self._pace_next = t0 + len(frames) * FRAME_SECONDS
        return sent

    def _media_message(self, seq: str, payload: str, timestamp: int) -> dict[str, Any]:
        self._chunk += 1
        return {
            "event": "media",
            "sequenceNumber": seq,
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(timestamp),
                "payload": payload,
            },
            "streamSid": self.stream_sid,
        }

    async def send_silence(self, ms: float, *, realtime: bool = True) -> int:
        """Streams `ms` ms of μ-law silence (see `send_audio`)."""
        return await self.send_audio(silence_ulaw(ms), realtime=realtime)

    async def send_dtmf(self, digit: str) -> bool:
        """Sends a `dtmf` message for one key (0-9, *, #, A-D)."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return await self._send_sequenced(
            lambda seq: {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": seq,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def send_text(self, raw: str) -> bool:
        """Sends a raw text frame as is (for malformed-input tests); False if the socket is closed."""
        return await self._send_raw(raw)

    async def send_binary(self, raw: bytes) -> bool:
        """Sends a raw binary frame (Twilio never does; for bad-input tests)."""
        return await self._send_raw(raw)

    async def stop(self) -> None:
        """Ends the stream as Twilio does when the call ends: sends `stop`, then closes (1000)."""
        if not self.is_open or self._ws is None:
            return
        if not self._stop_sent:
            self._stop_sent = True
            await self._send_sequenced(
                lambda seq: {
                    "event": "stop",
                    "sequenceNumber": seq,
                    "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                    "streamSid": self.stream_sid,
                }
            )
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

    async def _send_sequenced(self, make: Callable[[str], dict[str, Any]]) -> bool:
        async with self._send_lock:
            if not self.is_open:
                return False
            self._seq += 1
            return await self._send_json_locked(make(str(self._seq)))

    async def _send_json(self, message: dict[str, Any]) -> bool:
        async with self._send_lock:
            return await self._send_json_locked(message)

    async def _send_json_locked(self, message: dict[str, Any]) -> bool:
        if self._ws is None or not self.is_open:
            return False
        try:
            await self._ws.send(json.dumps(message, separators=(",", ":")))
        except ConnectionClosed:
            return False
        self.sent.append((time.monotonic(), message))
        return True

    async def _send_raw(self, raw: str | bytes) -> bool:
        async with self._send_lock:
            if self._ws is None or not self.is_open:
                return False
            try:
                await self._ws.send(raw)
            except ConnectionClosed:
                return False
            self.sent.append((time.monotonic(), raw))
            return True

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

    def _on_message(self, raw: str | bytes) -> None:
        now = time.monotonic()
        if isinstance(raw, bytes):
            self.messages.append(Received(now, "<binary>", None, raw))
            self._protocol_error(f"binary frame of {len(raw)} bytes (Twilio error 31950: text frames only)")
            return
        try:
            message = json.loads(raw)
        except ValueError as exc:
            message = None
            error = f"invalid JSON ({exc}): {raw[:80]!r}"
        else:
            error = "" if isinstance(message, dict) else f"not a JSON object: {raw[:80]!r}"
        if message is None or not isinstance(message, dict):
            self.messages.append(Received(now, "<invalid>", None, raw))
            self._protocol_error(error)
            return
        event = message.get("event")
        self.messages.append(Received(now, str(event), message, raw))
        if event not in ("media", "mark", "clear"):
            self._protocol_error(f"unexpected event {event!r} from the relay: {raw[:80]!r}")
            return
        if message.get("streamSid") != self.stream_sid:
            self._protocol_error(
                f"{event} with streamSid {message.get('streamSid')!r}, expected {self.stream_sid!r} (ignored)"
            )
            return
        if event == "media":
            self._on_media(now, message)
        elif event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self._protocol_error(f"mark without a string mark.name: {raw[:80]!r}")
                return
            self._on_mark(now, name)
        else:
            self._on_clear(now)
        self._bump()

    def _on_media(self, now: float, message: dict[str, Any]) -> None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self._protocol_error("media without a string media.payload")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._protocol_error(f"media.payload is not valid base64: {payload[:40]!r}")
            return
        if audio[:4] == b"RIFF":
            self._protocol_error("media.payload starts with a WAV header (Twilio plays it as noise)")
        if self.first_media_received_at is None:
            self.first_media_received_at = now
        self._media_messages += 1
        self._received += audio
        self._clock.enqueue(now, audio)
        self._schedule_drain(now)

    def _on_mark(self, now: float, name: str) -> None:
        # ASSUMPTION (UNVERIFIED in PROTOCOLS.md §1.2): a mark with nothing queued is echoed at once.
        pending = _PendingMark(name, now, None)
        if self._clock.idle(now):
            self._echo(pending, cleared=False)
            return
        due = self._clock.time_of(self._clock.queued_end)
        loop = asyncio.get_running_loop()
        pending.handle = loop.call_later(max(0.0, due - now), self._mark_due, pending)
        self._pending_marks.append(pending)

    def _mark_due(self, pending: _PendingMark) -> None:
        if pending in self._pending_marks:
            self._pending_marks.remove(pending)
            self._echo(pending, cleared=False)
            self._bump()

    def _on_clear(self, now: float) -> None:
        self.clears.append(self._clock.clear(now))
        pending, self._pending_marks = self._pending_marks, []
        for mark in pending:
            if mark.handle is not None:
                mark.handle.cancel()
            self._echo(mark, cleared=True)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _echo(self, pending: _PendingMark, *, cleared: bool) -> None:
        self.mark_echoes.append(MarkEcho(pending.name, pending.received_at, time.monotonic(), cleared))
        task = asyncio.create_task(
            self._send_sequenced(
                lambda seq: {
                    "event": "mark",
                    "sequenceNumber": seq,
                    "streamSid": self.stream_sid,
                    "mark": {"name": pending.name},
                }
            ),
            name=f"fake-twilio-mark-echo-{self.call_sid}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_drain(self, now: float) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        due = self._clock.drain_time(now)
        if due is not None:
            self._drain_timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._on_drain)

    def _on_drain(self) -> None:
        self._drain_timer = None
        now = time.monotonic()
        if not self._clock.idle(now):  # fired a hair early: try again at the exact time
            self._schedule_drain(now)
            return
        self._bump()

    def _on_closed(self, code: int | None, reason: str | None, *, by_relay: bool) -> None:
        if self._closed.is_set():
            return
        now = time.monotonic()
        self.closed_at = now
        self.close_code = code
        self.close_reason = reason
        self.closed_by_relay = by_relay
        self._clock.halt(now)
        self._cancel_timers()
        self._closed.set()
        self._bump()

    def _cancel_timers(self) -> None:
        for mark in self._pending_marks:
            if mark.handle is not None:
                mark.handle.cancel()
        self._pending_marks = []
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _protocol_error(self, error: str) -> None:
        log.warning("protocol error (call %s): %s", self.call_sid, error)
        self.protocol_errors.append(error)
        self._bump()

    def _bump(self) -> None:
        """Wakes every waiter; each re-checks its condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ observations

    @property
    def received_audio(self) -> bytes:
        """Every outbound μ-law byte received from the relay, in order (played or not)."""
        return bytes(self._received)

    @property
    def played_audio(self) -> bytes:
        """The μ-law bytes actually played so far, in order (received minus unplayed/cleared)."""
        return self._clock.played_audio(time.monotonic())

    @property
    def played_ms(self) -> float:
        """Milliseconds of outbound audio played so far, from the playback clock."""
        return self._clock.position(time.monotonic()) / (SAMPLE_RATE / 1000)

    @property
    def outbound_chunks(self) -> list[PlayedChunk]:
        """Playback record of every outbound `media` payload, computed now (see `PlayedChunk`)."""
        return self._clock.chunks(time.monotonic())

    @property
    def media_message_count(self) -> int:
        """Number of valid outbound `media` messages received."""
        return self._media_messages

    @property
    def marks_received(self) -> list[str]:
        """Names of the marks the relay sent, in order."""
        return [
            r.message["mark"]["name"]
            for r in self.messages
            if r.event == "mark" and r.message is not None and isinstance(r.message.get("mark"), dict)
        ]

    @property
    def first_media_at(self) -> float | None:
        """Seconds from sending `start` to the first outbound `media` (None before any)."""
        if self.first_media_received_at is None or self.started_at is None:
            return None
        return self.first_media_received_at - self.started_at

    def summary(self) -> str:
        """One line describing what was seen so far (used in timeout messages)."""
        if self.is_open:
            state = "open"
        elif self.upgrade_status is None:
            state = "not connected"
        elif self.upgrade_status != 101:
            state = f"upgrade rejected with HTTP {self.upgrade_status}"
        else:
            state = f"closed (code {self.close_code}, reason {self.close_reason!r})"
        return (
            f"{len(self._received)} media bytes in {self._media_messages} messages, "
            f"{self.played_ms:.0f} ms played, {len(self.marks_received)} marks, "
            f"{len(self.mark_echoes)} echoed, "
            f"{len(self.clears)} clears, {len(self.protocol_errors)} protocol errors; stream {state}"
        )

    # ------------------------------------------------------------------ waiting

    async def _wait(self, what: str, done: Callable[[], bool], timeout: float, *, needs_open: bool) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    if needs_open and self._closed.is_set():
                        raise CallEndedError(
                            f"stream closed while waiting for {what}; seen: {self.summary()}"
                        )
                    await self._changed.wait()
        except CallEndedError:
            raise
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout:g} s waiting for {what}; seen: {self.summary()}"
            ) from None

    async def wait_for_media(self, min_bytes: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Waits until at least `min_bytes` of outbound audio were received in total."""
        await self._wait(
            f"{min_bytes} bytes of outbound media",
            lambda: len(self._received) >= min_bytes,
            timeout,
            needs_open=True,
        )

    async def wait_for_clear(self, timeout: float = 5.0, *, count: int = 1) -> ClearRecord:  # noqa: ASYNC109
        """Waits until `count` clears were received in total; returns the `count`-th."""
        await self._wait(f"clear #{count}", lambda: len(self.clears) >= count, timeout, needs_open=True)
        return self.clears[count - 1]

    async def wait_for_mark_echo(self, name: str | None = None, timeout: float = 5.0) -> MarkEcho:  # noqa: ASYNC109
        """Waits until the mark `name` (or, with None, any mark) was echoed; returns the echo."""

        def found() -> MarkEcho | None:
            return next((m for m in self.mark_echoes if name is None or m.name == name), None)

        await self._wait(
            f"the echo of mark {name!r}" if name else "a mark echo",
            lambda: found() is not None,
            timeout,
            needs_open=True,
        )
        echo = found()
        if echo is None:  # unreachable: the wait returned because found() was not None
            raise RuntimeError("mark echo vanished")
        return echo

    async def wait_closed(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Waits until the stream is closed (by either side) or the upgrade was rejected."""
        await self._wait("the stream to close", self._closed.is_set, timeout, needs_open=False)

    async def wait_playback_idle(self, timeout: float = 5.0, *, min_bytes: int = 0) -> None:  # noqa: ASYNC109
        """Waits until at least `min_bytes` of outbound audio were received and all audio received
        so far has played (or the stream ended). `min_bytes` matters when the relay may not have
        forwarded a reply yet: with nothing received, playback is idle at once."""
        await self._wait(
            "playback to go idle" + (f" after {min_bytes} bytes" if min_bytes else ""),
            lambda: len(self._received) >= min_bytes and self._clock.idle(time.monotonic()),
            timeout,
            needs_open=False,
        )
