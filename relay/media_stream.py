"""`WS /media-stream`: the Twilio side of a call.

Checks `X-Twilio-Signature` on the upgrade and the stream token in `start.customParameters`
before any provider is contacted (close 1008 otherwise), refuses a second stream for a call that
has one here and a token presented before (1008, `webhooks.replay`), then hands a
`TwilioChannel` to the session the manager picks. Bad input never reaches the session: malformed
JSON, bad base64, binary frames, oversize frames and media before `start` are logged with the
stream SID and dropped; a stream that keeps sending garbage is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from relay.errors import ProtocolError, StreamAuthError
from relay.logs import bind_call
from relay.sids import is_call_sid, is_stream_sid
from relay.twilio_messages import MAX_MESSAGE_BYTES, Connected, Start, TwilioEvent, Unknown, parse_message
from webhooks.replay import StreamRefusal
from webhooks.signature import websocket_signature_ok
from webhooks.token import verify_stream_token

log = logging.getLogger("relay.media_stream")

WS_1008_POLICY_VIOLATION = 1008
WS_1011_INTERNAL_ERROR = 1011
MAX_BAD_MESSAGES = 50  # a stream sending more garbage than this is closed
START_TIMEOUT_S = 10.0


class TwilioChannel:
    """The session's view of the Twilio socket: typed events in, text out through one writer task.

    `send` queues for the writer task and never blocks. `write` is the audio path's fast lane:
    when nothing is queued or being written it writes at once from the calling task (uvicorn's
    send returns without suspending unless the transport is paused), saving a queue hop and a
    task switch per message; otherwise it queues behind the others, so order holds. `_backlog`
    counts what was handed to the writer task and is not yet written (including a message the
    writer has taken but waits to write): the fast lane never overtakes it. `_busy` marks a write
    in progress, from either lane: uvicorn waits for a paused transport *before* writing, so the
    writer task, woken first, must not write while the fast lane waits (tests/test_write_order.py).
    A flag and a future only when the two lanes meet cost less than a lock per message.

    `receive`/`send` are the ASGI callables (`relay.media_stream.MediaStreamApp` passes the
    server's own; by default the Starlette WebSocket's, which add a state check per message).
    """

    def __init__(
        self,
        websocket: WebSocket,
        stream_sid: str = "-",
        *,
        receive: Receive | None = None,
        send: Send | None = None,
    ) -> None:
        self._ws = websocket
        self._asgi_receive: Receive = receive or websocket.receive
        self._asgi_send: Send = send or websocket.send
        self.stream_sid = stream_sid
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._backlog = 0  # messages handed to the writer task and not yet written
        self._busy = False  # a write is in progress
        self._idle: asyncio.Future[None] | None = None  # the writer task waiting for the fast lane
        self._bad = 0
        self._unknown_logged: set[str] = set()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.frames_in = 0
        self.frames_out = 0

    def start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"twilio-writer-{self.stream_sid}")

    async def _write_loop(self) -> None:
        while (text := await self._queue.get()) is not None:
            while self._busy:  # the fast lane is waiting for a paused transport: after it
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
            await self._write(text)
            self._backlog -= 1
            if self.closed.is_set():
                return

    async def _write(self, text: str) -> None:
        self._busy = True
        try:
            await self._asgi_send({"type": "websocket.send", "text": text})
            self.frames_out += 1
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed.set()
        finally:
            self._busy = False
            if self._idle is not None:
                self._wake_writer()

    def _wake_writer(self) -> None:
        """The writer task waits for the write that just ended."""
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def send(self, text: str) -> None:
        """Queues one message for Twilio (never blocks the caller)."""
        if not self.closed.is_set():
            self._backlog += 1
            self._queue.put_nowait(text)

    async def write(self, text: str) -> None:
        """Sends at once when the writer is idle, else queues behind what is waiting."""
        if self.closed.is_set():
            return
        if self._busy or self._backlog or self._writer is None:
            self.send(text)
            return
        # `_write`, inlined on purpose: this runs for every message of every call, and calling
        # `_write` instead cost 1.8-4.5 % more CPU at 40 calls (4 rounds side by side). Keep the two
        # in step.
        self._busy = True
        try:
            await self._asgi_send({"type": "websocket.send", "text": text})
            self.frames_out += 1
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed.set()
        finally:
            self._busy = False
            if self._idle is not None:
                self._wake_writer()

    async def receive(self) -> TwilioEvent | None:
        """The next valid event; None once the socket is closed. Bad messages are logged and skipped."""
        while not self.closed.is_set():
            try:
                message = await self._asgi_receive()
            except (RuntimeError, OSError):
                break
            if message["type"] == "websocket.disconnect":
                self.close_code = message.get("code")
                break
            event = self._parse(message)
            if event is not None:
                return event
        self.closed.set()
        return None

    def _parse(self, message: Mapping[str, Any]) -> TwilioEvent | None:
        text = message.get("text")
        try:
            if text is None:
                raise ProtocolError("binary frame received; Media Streams sends JSON text frames only")
            event = parse_message(text)
        except ProtocolError as exc:
            self._bad += 1
            log.warning("dropped bad Twilio message: %s", exc, extra={"bad_messages": self._bad})
            if self._bad > MAX_BAD_MESSAGES:
                log.error("closing stream: more than %d bad messages", MAX_BAD_MESSAGES)
                self.closed.set()
            return None
        if isinstance(event, Unknown):
            if event.event not in self._unknown_logged:
                self._unknown_logged.add(event.event)
                log.info("ignoring unknown Twilio event %r (logged once)", event.event)
            return None
        self.frames_in += 1
        return event

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Flushes queued messages, then closes the socket (idempotent)."""
        self._queue.put_nowait(None)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer, timeout=2.0)
        self.closed.set()
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self._ws.close(code=code, reason=reason)


async def _await_start(channel: TwilioChannel) -> Start | None:
    """Reads until `start`; media or marks before it are protocol errors and are dropped."""
    while (event := await channel.receive()) is not None:
        if isinstance(event, Start):
            return event
        if not isinstance(event, Connected):
            log.warning("dropped %s before 'start': the stream has not started", type(event).__name__.lower())
    return None


SERVER_CHANNEL = "relay.server_channel"  # scope key: the server's own (receive, send)


class ServerChannel:
    """ASGI middleware: keeps the server's own `receive`/`send` of a WebSocket scope in the scope
    (`SERVER_CHANNEL`), before Starlette's exception layer, which sits below user middleware,
    wraps `send` in a coroutine of its own, run for every message sent. Only `MediaStreamApp`
    reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SERVER_CHANNEL] = (receive, send)
        await self.app(scope, receive, send)


class MediaStreamApp:
    """`WS /media-stream` as a plain ASGI app, so that the call's channel reads and writes through
    the server's own `receive`/`send` (from `ServerChannel` when the app has it, else as the route
    gets them): a function endpoint would get them wrapped by Starlette's exception handling, and
    its WebSocket adds a state check per message (together about 3 % of the relay's CPU at 100
    calls, 50 frames a second each way). The handshake, the headers and the close still go
    through Starlette's `WebSocket`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        receive, send = scope.get(SERVER_CHANNEL, (receive, send))
        await media_stream_endpoint(websocket, receive=receive, send=send)


async def media_stream_endpoint(websocket: WebSocket, *, receive: Receive, send: Send) -> None:
    """Checks the upgrade and the stream token, then runs the call. `receive`/`send`: the ASGI
    callables for the audio path (see `MediaStreamApp`)."""
    app = websocket.app
    settings = app.state.settings
    if not websocket_signature_ok(websocket, settings):
        log.warning("rejected Media Stream: missing or invalid X-Twilio-Signature on the upgrade")
        app.state.metrics.observe_rejection("signature")
        await websocket.accept()  # then close with 1008, so the peer sees a policy violation, not a 403
        await websocket.close(code=WS_1008_POLICY_VIOLATION, reason="invalid signature")
        return
    await websocket.accept()
    channel = TwilioChannel(websocket, receive=receive, send=send)
    try:  # a timeout scope, not wait_for: no task of its own, one loop turn less on the greeting's way
        async with asyncio.timeout(START_TIMEOUT_S):
            start = await _await_start(channel)
    except TimeoutError:
        start = None
        log.warning("no 'start' within %.0f s; closing", START_TIMEOUT_S)
    if start is None:
        await channel.close(WS_1008_POLICY_VIOLATION, "no start")
        return
    if not (is_call_sid(start.call_sid) and is_stream_sid(start.stream_sid)):
        log.warning("rejected Media Stream: the start's callSid or streamSid is not a Twilio SID")
        app.state.metrics.observe_rejection("malformed")
        await channel.close(WS_1008_POLICY_VIOLATION, "malformed start")
        return
    channel.stream_sid = start.stream_sid
    with bind_call(start.call_sid, start.stream_sid):
        token = start.custom_parameters.get("token", "")
        try:
            expires_at = verify_stream_token(token, start.call_sid, settings)
        except StreamAuthError as exc:
            log.warning("rejected Media Stream: %s", exc)
            app.state.metrics.observe_rejection("signature")
            await channel.close(WS_1008_POLICY_VIOLATION, "invalid stream token")
            return
        gate = app.state.stream_gate
        refusal = await gate.admit(token, start.call_sid, expires_at)
        if refusal is not None:
            _log_refusal(refusal, start)
            app.state.metrics.observe_rejection(refusal.value)
            await channel.close(WS_1008_POLICY_VIOLATION, REFUSAL_REASONS[refusal])
            return
        try:
            channel.start_writer()
            try:
                await app.state.manager.run_call(start, channel)
            except Exception:
                log.exception("call failed")
                await channel.close(WS_1011_INTERNAL_ERROR, "internal error")
            else:
                await channel.close()
        finally:
            gate.release(start.call_sid)


REFUSAL_REASONS = {  # the close frame's reason
    StreamRefusal.DUPLICATE_STREAM: "call already has a stream",
    StreamRefusal.REPLAYED_TOKEN: "stream token already used",
    StreamRefusal.CALL_HAD_STREAM: "call already had its stream",
}


def _log_refusal(refusal: StreamRefusal, start: Start) -> None:
    why = {
        StreamRefusal.DUPLICATE_STREAM: "the call already has a live stream on this instance (it goes on "
        "untouched)",
        StreamRefusal.REPLAYED_TOKEN: "its stream token was used before (a replayed stream)",
        StreamRefusal.CALL_HAD_STREAM: "the call already had its stream (a token from a replayed webhook)",
    }[refusal]
    log.warning(
        "rejected a second Media Stream for call %s (stream %s): %s; closed with 1008",
        start.call_sid,
        start.stream_sid,
        why,
    )


__all__ = [
    "MAX_MESSAGE_BYTES",
    "SERVER_CHANNEL",
    "MediaStreamApp",
    "ServerChannel",
    "TwilioChannel",
    "media_stream_endpoint",
]
