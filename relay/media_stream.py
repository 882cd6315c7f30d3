"""`WS /media-stream`: the Twilio side of a call.

Served at `/media-stream` and at STREAM_PUBLIC_URL's path. Checks `X-Twilio-Signature` on the
upgrade (against STREAM_PUBLIC_URL and the URL as requested: `webhooks.signature.stream_urls`)
and the stream token in `start.customParameters` before any provider is contacted (close 1008
otherwise), refuses a second stream for a call that has one here and a token presented before
(1008, `webhooks.replay`), then hands a `TwilioStream` to the call the manager runs. Bad input
never reaches the session: malformed JSON, bad base64, binary frames, oversize frames and media
before `start` are logged with the stream SID and dropped; a stream that keeps sending garbage
is closed.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from relay.config import Settings
from relay.errors import ProtocolError, StreamAuthError
from relay.logs import bind_call
from relay.sids import is_call_sid, is_stream_sid
from relay.transport.twilio import TwilioSocket
from relay.twilio_messages import MAX_MESSAGE_BYTES, Connected, Start, TwilioEvent, Unknown, parse_message
from webhooks.replay import StreamRefusal
from webhooks.signature import stream_urls, websocket_signature_ok
from webhooks.token import verify_stream_token

log = logging.getLogger("relay.media_stream")

PATHS = ("/media-stream", "/media-stream/")


def stream_paths(settings: Settings) -> tuple[str, ...]:
    """Where the stream is served: `/media-stream`, and STREAM_PUBLIC_URL's own path when set (a
    proxy may hand on `/i/relay-2/media-stream` as it is, or strip the prefix)."""
    path = urlsplit(settings.stream_public_url).path
    return PATHS + ((path, path + "/") if path and path not in PATHS else ())


WS_1008_POLICY_VIOLATION = 1008
WS_1011_INTERNAL_ERROR = 1011
MAX_BAD_MESSAGES = 50  # a stream sending more garbage than this is closed
START_TIMEOUT_S = 10.0


class TwilioStream:
    """The caller's side of a call as its session sees it (`relay.sessions.call.TwilioSink`):
    valid Twilio events in, JSON text out through the socket's ordered `send`. Bad messages are
    logged with the stream SID and dropped; a stream that keeps sending them is closed."""

    def __init__(self, socket: TwilioSocket) -> None:
        self.socket = socket
        self.send = socket.send
        self._bad = 0
        self._unknown_logged: set[str] = set()
        self._given_up = False  # too many bad messages: read no more

    async def receive(self) -> TwilioEvent | None:
        """The next valid event; None once the socket is closed. Bad messages are logged and skipped."""
        receive = self.socket.receive
        while (frame := await receive()) is not None:
            event = self._parse(frame)
            if event is not None:
                return event
            if self._given_up:
                break
        return None

    def _parse(self, frame: str | bytes) -> TwilioEvent | None:
        try:
            if not isinstance(frame, str):
                raise ProtocolError("binary frame received; Media Streams sends JSON text frames only")
            event = parse_message(frame)
        except ProtocolError as exc:
            self._bad += 1
            log.warning("dropped bad Twilio message: %s", exc, extra={"bad_messages": self._bad})
            if self._bad > MAX_BAD_MESSAGES:
                log.error("closing stream: more than %d bad messages", MAX_BAD_MESSAGES)
                self._given_up = True
            return None
        if isinstance(event, Unknown):
            if event.event not in self._unknown_logged:
                self._unknown_logged.add(event.event)
                log.info("ignoring unknown Twilio event %r (logged once)", event.event)
            return None
        return event

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Lets queued messages go out, then closes the socket (idempotent)."""
        await self.socket.close(code, reason)


async def _await_start(stream: TwilioStream) -> Start | None:
    """Reads until `start`; media or marks before it are protocol errors and are dropped."""
    while (event := await stream.receive()) is not None:
        if isinstance(event, Start):
            return event
        if not isinstance(event, Connected):
            log.warning("dropped %s before 'start': the stream has not started", type(event).__name__.lower())
    return None


async def serve_media_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """`WS /media-stream`, with the server's own `receive`/`send` (`relay.transport.twilio.
    MediaStreamEntry`). Checks the upgrade and the stream token, then runs the call. Starlette's
    `WebSocket` only reads the request (headers, URL, the app)."""
    request = WebSocket(scope, receive, send)
    app = request.app
    settings = app.state.settings
    socket = TwilioSocket(receive, send)
    await socket.accept()  # a refusal below is a close with 1008, so the peer sees why, not a 403
    stream = TwilioStream(socket)
    if not websocket_signature_ok(request, settings):
        log.warning(
            "rejected Media Stream: missing or invalid X-Twilio-Signature on the upgrade; it is not "
            "Twilio's signature of %s (STREAM_PUBLIC_URL, when set, must be the URL this instance's "
            "TwiML names; behind a proxy, see PUBLIC_URL and FORWARDED_ALLOW_IPS)",
            " or ".join(dict.fromkeys(url.rstrip("/") for url in stream_urls(request, settings))),
        )
        app.state.metrics.observe_rejection("signature")
        await stream.close(WS_1008_POLICY_VIOLATION, "invalid signature")
        return
    try:  # a timeout scope, not wait_for: no task of its own, one loop turn less on the greeting's way
        async with asyncio.timeout(START_TIMEOUT_S):
            start = await _await_start(stream)
    except TimeoutError:
        start = None
        log.warning("no 'start' within %.0f s; closing", START_TIMEOUT_S)
    if start is None:
        await stream.close(WS_1008_POLICY_VIOLATION, "no start")
        return
    if not (is_call_sid(start.call_sid) and is_stream_sid(start.stream_sid)):
        log.warning("rejected Media Stream: the start's callSid or streamSid is not a Twilio SID")
        app.state.metrics.observe_rejection("malformed")
        await stream.close(WS_1008_POLICY_VIOLATION, "malformed start")
        return
    with bind_call(start.call_sid, start.stream_sid):
        token = start.custom_parameters.get("token", "")
        try:
            expires_at = verify_stream_token(token, start.call_sid, settings)
        except StreamAuthError as exc:
            log.warning("rejected Media Stream: %s", exc)
            app.state.metrics.observe_rejection("signature")
            await stream.close(WS_1008_POLICY_VIOLATION, "invalid stream token")
            return
        gate = app.state.stream_gate
        refusal = await gate.admit(token, start.call_sid, expires_at)
        if refusal is not None:
            _log_refusal(refusal, start)
            app.state.metrics.observe_rejection(refusal.value)
            await stream.close(WS_1008_POLICY_VIOLATION, REFUSAL_REASONS[refusal])
            return
        try:
            try:
                await app.state.manager.run_call(start, stream)
            except Exception:
                log.exception("call failed")
                await stream.close(WS_1011_INTERNAL_ERROR, "internal error")
            else:
                await stream.close()
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


__all__ = ["MAX_MESSAGE_BYTES", "PATHS", "TwilioStream", "serve_media_stream", "stream_paths"]
