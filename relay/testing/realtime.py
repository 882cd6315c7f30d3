"""A protocol-faithful fake of the OpenAI / Azure OpenAI Realtime service over a real WebSocket.

It serves the three URL shapes of PROTOCOLS.md §2–3 on 127.0.0.1 and a free port:

* OpenAI GA ``/v1/realtime?model=M`` with ``Authorization: Bearer KEY``;
* Azure GA ``/openai/v1/realtime?model=DEPLOYMENT`` with ``api-key`` or a bearer (no ``api-version``);
* Azure preview ``/openai/realtime?api-version=V&deployment=D``, which speaks the beta protocol.

Each connection gets `session.created`, validates every client event against the openai SDK's
types, runs an energy VAD on the caller's audio, and answers `response.create` (or the end of a
turn) with the next scripted `Reply` (see `relay.testing.realtime_script`). Everything a test may
want to assert is recorded on `FakeConnection`; waits are event driven (`wait_for`).

Usage::

    async with FakeRealtimeServer(responses=[Say("Hi!"), Call("web_search", {"q": "x"})]) as server:
        client = AsyncOpenAI(api_key="sk-test", websocket_base_url=server.url + "/v1")
        ...
        conn = await server.wait_connection()
        await conn.wait_for("response.done")
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relay.testing.realtime_audio import PCM16, AudioFormat, SpeechDetector, TurnDetection, expected_audio
from relay.testing.realtime_dialects import ClientEventError, Dialect, dialect_spec, parse_server_event
from relay.testing.realtime_script import (
    Call,
    Calls,
    ConversationEntry,
    Drop,
    Error,
    Event,
    Fail,
    Reply,
    ReplyEngine,
    ResponseRecord,
    Say,
    Unknown,
)

__all__ = [
    "Call",
    "Calls",
    "Drop",
    "Error",
    "EventNotSeen",
    "Fail",
    "FakeConnection",
    "FakeRealtimeServer",
    "InvalidEvent",
    "Reply",
    "ResponseRecord",
    "Say",
    "TruncateRecord",
    "Unknown",
    "expected_audio",
    "parse_server_event",
]

logger = logging.getLogger(__name__)

AuthKind = Literal["bearer", "api-key", "api-key-query"]
Provider = Literal["openai", "azure"]
Direction = Literal["received", "sent", "any"]

_AZURE_BAD_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
    "key for an active subscription and use a correct regional API endpoint for your resource."
)
_AZURE_BAD_TOKEN = "Unauthorized. Access token is missing, invalid, audience is incorrect, or have expired."


class EventNotSeen(TimeoutError):
    """`wait_for` / `wait_connection` gave up: timeout, or the connection closed first."""


@dataclass(frozen=True)
class TruncateRecord:
    """One `conversation.item.truncate` as received, and whether the fake accepted it."""

    item_id: str
    content_index: int
    audio_end_ms: int
    audio_ms: float | None  # audio of the item available at that moment (sent, or already truncated)
    accepted: bool
    error: str | None = None


@dataclass(frozen=True)
class InvalidEvent:
    """A client frame refused as malformed (bad JSON, unknown type, wrong shape for the dialect)."""

    event: Any
    code: str
    message: str


@dataclass(eq=False)
class FakeConnection:
    """What one accepted connection did. Lists only grow; read them after `wait_for`."""

    path: str
    query: dict[str, str]
    headers: Headers
    provider: Provider
    dialect: Dialect
    protocol_auth: AuthKind
    model: str  # the model (OpenAI) or deployment (Azure)
    api_version: str | None
    beta_header: bool  # an `OpenAI-Beta: realtime=v1` header was sent
    session: Event = field(default_factory=dict)
    received: list[tuple[float, Event]] = field(default_factory=list)
    sent: list[tuple[float, Event]] = field(default_factory=list)
    audio_in: bytearray = field(default_factory=bytearray)
    audio_sent: dict[str, bytearray] = field(default_factory=dict)
    truncates: list[TruncateRecord] = field(default_factory=list)
    function_outputs: dict[str, str] = field(default_factory=dict)
    items: list[Event] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    transcripts: list[tuple[str, str]] = field(default_factory=list)  # (user item id, transcript)
    responses: list[ResponseRecord] = field(default_factory=list)
    invalid_events: list[InvalidEvent] = field(default_factory=list)
    errors: list[Event] = field(default_factory=list)  # the `error` objects of every error event sent
    active_response_conflicts: int = 0
    dropped: bool = False
    frozen_at: float | None = None  # time.monotonic() when the connection went silent (knobs)
    garbage_sent: int = 0  # malformed frames sent by the `flood_after_responses` knob
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)
    _waiters: int = field(default=0, repr=False)
    _engine: _Engine | None = field(default=None, repr=False)

    @property
    def audio_sent_bytes(self) -> int:
        """μ-law (or PCM) bytes of response audio sent so far, over all items."""
        return sum(len(audio) for audio in self.audio_sent.values())

    def events(self, event_type: str, direction: Direction = "any") -> list[Event]:
        """Events of `event_type` received from the client and/or sent by the fake, in order."""
        sources = {"received": [self.received], "sent": [self.sent], "any": [self.received, self.sent]}
        return [e for src in sources[direction] for _, e in src if e.get("type") == event_type]

    async def wait_for(
        self,
        event_type: str,
        timeout: float = 5.0,  # noqa: ASYNC109 - the API the tests use
        predicate: Callable[[Event], bool] | None = None,
        *,
        n: int = 1,
        direction: Direction = "any",
    ) -> Event:
        """The `n`-th event of `event_type` (matching `predicate`), waiting for it if needed.

        Client and server event names never collide, so `direction="any"` finds either. Raises
        `EventNotSeen` on timeout or when the connection closes without it.
        """

        def found() -> list[Event]:
            return [e for e in self.events(event_type, direction) if predicate is None or predicate(e)]

        async with self._cond:
            self._waiters += 1
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: len(found()) >= n or self.closed.is_set())
            except TimeoutError:
                pass
            finally:
                self._waiters -= 1
            hits = found()
            if len(hits) >= n:
                return hits[n - 1]
        why = "the connection closed" if self.closed.is_set() else f"{timeout}s passed"
        got = [e.get("type") for _, e in self.received][-15:], [e.get("type") for _, e in self.sent][-15:]
        raise EventNotSeen(
            f"{event_type!r} #{n} not seen before {why}; last received {got[0]}, sent {got[1]}"
        )

    async def send_event(self, event: Event) -> None:
        """Sends a raw server event (as given, plus an `event_id`), e.g. to inject oddities."""
        assert self._engine is not None
        await self._engine.send(event, raw=True)

    async def send_raw(self, text: str) -> None:
        """Sends one text frame exactly as given (not JSON, wrong shapes...), bypassing `frozen`."""
        assert self._engine is not None
        await self._engine.ws.send(text)

    async def drop(self) -> None:
        """Closes the socket abruptly now (like the `Drop` reply, honouring `close_code`)."""
        assert self._engine is not None
        await self._engine.drop()

    async def _record(self, log: list[tuple[float, Event]], event: Event) -> None:
        # CLOCK_MONOTONIC, read now: asyncio's default loop.time() is the same clock, while uvloop's
        # is cached per loop turn at ms resolution (the benchmarks run this fake under uvloop).
        log.append((time.monotonic(), event))
        if self._waiters:  # nobody waiting (the benchmarks): no lock and notify per event
            async with self._cond:
                self._cond.notify_all()


@dataclass(frozen=True)
class _Route:
    provider: Provider
    dialect: Dialect
    auth: AuthKind
    model: str
    api_version: str | None
    beta_header: bool


class _Reject(Exception):
    def __init__(self, status: int, body: Event) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _openai_error(message: str, code: str | None, type_: str = "invalid_request_error") -> Event:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _azure_error(code: str, message: str) -> Event:
    return {"error": {"code": code, "message": message}}


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class FakeRealtimeServer:
    """The fake Realtime service. Start with `async with` (or `start()` / `stop()`).

    Auth and routing: `api_key` (OpenAI bearer), `azure_api_key` (Azure `api-key` header or query
    parameter, also accepted as a bearer like Microsoft's quickstart sends it), `bearer_tokens`
    (valid Entra tokens), `models` (OpenAI), `deployments` (Azure), `preview_versions`.

    Script: `responses` are consumed in order by every connection together (a reconnect goes on
    with the next reply); then `default_reply`. `transcripts` likewise ("hello" when exhausted).
    `pace`: 0 streams audio as fast as possible, else each chunk takes `pace` × its duration.
    `delta_ms`: audio per `output_audio.delta`. VAD: `vad_rms_threshold`, `min_speech_ms`.

    Failure knobs: `connect_delay` (seconds before answering the upgrade), `reject_status` with
    `reject_first` (reject the first N valid upgrades, every one when 0), `drop_after_responses`
    (close abruptly after the N-th `response.done` of a connection), `session_expired_after`
    (seconds, then `error` code `session_expired` and a close), `unknown_events` (sprinkle events
    of unknown types), `close_code` (None = drop without a close frame, the client sees 1006),
    `beta_header_selects_preview` (make `OpenAI-Beta: realtime=v1` on a GA path switch to the
    preview protocol, as OpenAI's endpoint once did; by default it is only recorded).

    A service that fails without closing (each read when a connection is accepted, so a test may
    change them for later connections): `silent` (accept the WebSocket and never send an event, not
    even `session.created`), `freeze_after_responses` (after the connection's N-th `response.done`
    send nothing more and answer nothing, while still reading and answering WebSocket pings and
    close frames), `flood_after_responses` (after the N-th `response.done`, 0: at once, send only malformed
    frames, `flood_rate` a second, at most `flood_limit`: text that is not JSON, JSON that is not
    an object, events whose fields have the wrong types).
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        azure_api_key: str = "azure-key",
        bearer_tokens: Iterable[str] = (),
        models: Iterable[str] = ("gpt-realtime",),
        deployments: Iterable[str] = ("gpt-realtime",),
        preview_versions: Iterable[str] = ("2025-04-01-preview", "2024-12-17", "2024-10-01-preview"),
        responses: Iterable[Reply] = (),
        transcripts: Iterable[str] = (),
        default_reply: Reply | None = None,
        pace: float = 0.0,
        delta_ms: int = 100,
        vad_rms_threshold: float = 500.0,
        min_speech_ms: int = 60,
        connect_delay: float = 0.0,
        reject_status: int | None = None,
        reject_first: int = 0,
        drop_after_responses: int | None = None,
        session_expired_after: float | None = None,
        unknown_events: bool = False,
        close_code: int | None = None,
        beta_header_selects_preview: bool = False,
        silent: bool = False,
        freeze_after_responses: int | None = None,
        flood_after_responses: int | None = None,
        flood_rate: float = 100.0,
        flood_limit: int = 5000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.azure_api_key = azure_api_key
        self.bearer_tokens = set(bearer_tokens)
        self.models = set(models)
        self.deployments = set(deployments)
        self.preview_versions = set(preview_versions)
        self.default_reply: Reply = default_reply or Say("This is the fake realtime server.", audio_ms=1000)
        self.pace = pace
        self.delta_ms = delta_ms
        self.vad_rms_threshold = vad_rms_threshold
        self.min_speech_ms = min_speech_ms
        self.connect_delay = connect_delay
        self.reject_status = reject_status
        self.reject_first = reject_first
        self.drop_after_responses = drop_after_responses
        self.session_expired_after = session_expired_after
        self.unknown_events = unknown_events
        self.close_code = close_code
        self.beta_header_selects_preview = beta_header_selects_preview
        self.silent = silent
        self.freeze_after_responses = freeze_after_responses
        self.flood_after_responses = flood_after_responses
        self.flood_rate = flood_rate
        self.flood_limit = flood_limit
        self.host = host
        self.port = port
        self.connections: list[FakeConnection] = []
        self.rejected: list[tuple[str, int]] = []
        self._script: deque[Reply] = deque(responses)
        self._transcripts: deque[str] = deque(transcripts)
        self._replies_started = 0
        self._attempts = 0
        self._ids = itertools.count(1)
        self._pending: dict[Any, _Route] = {}
        self._server: Server | None = None
        self._cond = asyncio.Condition()
        self._stopping = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> FakeRealtimeServer:
        """Binds and serves; `url` is valid afterwards."""
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=2**24,
            close_timeout=2,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        logger.info("fake realtime server listening on %s", self.url)
        return self

    async def stop(self) -> None:
        """Closes every connection (1001) and stops listening."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeRealtimeServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """`ws://127.0.0.1:PORT`: add `/v1` (OpenAI GA), `/openai/v1` (Azure GA) or `/openai` (preview)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`, for `AsyncOpenAI(base_url=...)`."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, for `AsyncAzureOpenAI(azure_endpoint=...)`."""
        return f"http://{self.host}:{self.port}"

    # -- script ---------------------------------------------------------------------------------
    def _next_reply(self) -> tuple[int, Reply]:
        index, self._replies_started = self._replies_started, self._replies_started + 1
        return index, (self._script.popleft() if self._script else self.default_reply)

    def _next_transcript(self) -> str:
        return self._transcripts.popleft() if self._transcripts else "hello"

    def new_id(self, prefix: str) -> str:
        """A server-wide unique id such as `item_000042`."""
        return f"{prefix}_{next(self._ids):06d}"

    async def wait_connection(self, n: int = 1, timeout: float = 5.0) -> FakeConnection:  # noqa: ASYNC109
        """The `n`-th accepted connection (1-based), waiting for it if needed."""
        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: len(self.connections) >= n)
            except TimeoutError:
                raise EventNotSeen(
                    f"connection #{n} not accepted within {timeout}s (rejected: {self.rejected})"
                ) from None
            return self.connections[n - 1]

    # -- handshake ------------------------------------------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.connect_delay > 0:
            with contextlib.suppress(TimeoutError):  # released early when the server stops
                async with asyncio.timeout(self.connect_delay):
                    await self._stopping.wait()
        split = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            route = self._route(split.path, query, request.headers)
        except _Reject as rej:
            return self._reject(connection, request.path, rej.status, rej.body)
        self._attempts += 1
        if self.reject_status is not None and (self.reject_first <= 0 or self._attempts <= self.reject_first):
            return self._reject(connection, request.path, self.reject_status, self._knob_body(route))
        self._pending[connection.id] = route
        return None

    def _reject(self, connection: ServerConnection, path: str, status: int, body: Event) -> Response:
        response = connection.respond(status, orjson.dumps(body).decode() + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        self.rejected.append((path, status))
        logger.info("fake realtime server rejected %s with %d", path, status)
        return response

    def _knob_body(self, route: _Route) -> Event:
        status = self.reject_status or 500
        if route.provider == "azure":
            return _azure_error(str(status), f"Simulated failure {status}.")
        if status == 429:
            return _openai_error("Rate limit reached for requests.", "rate_limit_exceeded", "requests")
        if status == 401:
            return _openai_error("Incorrect API key provided.", "invalid_api_key")
        return _openai_error("The server had an error while processing your request.", None, "server_error")

    def _route(self, path: str, query: dict[str, str], headers: Headers) -> _Route:
        beta = any("realtime=v1" in v for v in headers.get_all("OpenAI-Beta"))
        ga_dialect: Dialect = "preview" if beta and self.beta_header_selects_preview else "ga"
        if path == "/v1/realtime":
            token = _bearer(headers)
            if not token:
                raise _Reject(
                    401, _openai_error("You didn't provide an API key (Authorization: Bearer).", None)
                )
            if token != self.api_key:
                raise _Reject(
                    401, _openai_error(f"Incorrect API key provided: {token[:6]}***.", "invalid_api_key")
                )
            model = query.get("model", "")
            if model not in self.models:
                msg = f"The model '{model}' does not exist or you do not have access to it."
                raise _Reject(404, _openai_error(msg, "model_not_found"))
            return _Route("openai", ga_dialect, "bearer", model, None, beta)
        if path == "/openai/v1/realtime":
            if "api-version" in query:
                raise _Reject(
                    401, _azure_error("401", "api-version is not supported on the /openai/v1 path.")
                )
            auth = self._azure_auth(headers, query)
            deployment = query.get("model", "")
            self._check_deployment(deployment)
            return _Route("azure", ga_dialect, auth, deployment, None, beta)
        if path == "/openai/realtime":
            version = query.get("api-version")
            if not version or version not in self.preview_versions:
                raise _Reject(404, _azure_error("404", "Resource not found"))
            auth = self._azure_auth(headers, query)
            deployment = query.get("deployment", "")
            self._check_deployment(deployment)
            return _Route("azure", "preview", auth, deployment, version, beta)
        if path.startswith("/openai"):
            raise _Reject(404, _azure_error("404", "Resource not found"))
        raise _Reject(404, _openai_error(f"Invalid URL (GET {path})", None))

    def _azure_auth(self, headers: Headers, query: dict[str, str]) -> AuthKind:
        # UNVERIFIED: with both an `api-key` header and a bearer, the fake checks the api-key only.
        key = headers.get("api-key")
        if key is not None:
            if key != self.azure_api_key:
                raise _Reject(401, _azure_error("401", _AZURE_BAD_KEY))
            return "api-key"
        token = _bearer(headers)
        if token is not None:
            if token not in self.bearer_tokens and token != self.azure_api_key:
                raise _Reject(401, _azure_error("401", _AZURE_BAD_TOKEN))
            return "bearer"
        if query.get("api-key") == self.azure_api_key:
            return "api-key-query"
        raise _Reject(401, _azure_error("401", _AZURE_BAD_KEY))

    def _check_deployment(self, deployment: str) -> None:
        if deployment not in self.deployments:
            msg = "The API deployment for this resource does not exist."
            raise _Reject(404, _azure_error("DeploymentNotFound", msg))

    # -- connections ----------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        route = self._pending.pop(ws.id)
        split = urlsplit(ws.request.path if ws.request else "")
        conn = FakeConnection(
            path=split.path,
            query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
            headers=ws.request.headers if ws.request else Headers(),
            provider=route.provider,
            dialect=route.dialect,
            protocol_auth=route.auth,
            model=route.model,
            api_version=route.api_version,
            beta_header=route.beta_header,
        )
        conn.session = dialect_spec(route.dialect).default_session(route.model, self.new_id("sess"))
        engine = _Engine(self, conn, ws)
        conn._engine = engine
        async with self._cond:
            self.connections.append(conn)
            self._cond.notify_all()
        logger.info("fake realtime connection %s %s (%s)", route.provider, route.dialect, route.auth)
        await engine.run()


class _Engine(ReplyEngine):
    """One connection: reads client events, validates them and acts; `ReplyEngine` does the talking."""

    def __init__(self, server: FakeRealtimeServer, conn: FakeConnection, ws: ServerConnection) -> None:
        super().__init__(server, conn, ws)
        self.detector = SpeechDetector(server.vad_rms_threshold, server.min_speech_ms)
        self.buffer_ms = 0.0
        self.buffer_start_ms = 0
        self.vad_item_id: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._read_session: Event | None = None  # the session `_input` was read from
        self._input: tuple[AudioFormat, TurnDetection | None] = (PCM16, None)
        self.freeze_at = server.freeze_after_responses
        self.flood_at = server.flood_after_responses
        if server.silent:
            self.freeze()

    def freeze(self) -> None:
        """From now on the service sends nothing; the socket stays open and pings are answered."""
        if not self.frozen:
            self.frozen = True
            self.conn.frozen_at = time.monotonic()
            logger.info("fake realtime connection frozen: it sends nothing from now on")

    def after_response(self) -> None:
        done = self.responses_done
        if self.freeze_at is not None and done >= self.freeze_at:
            self.freeze()
        if self.flood_at is not None and done >= self.flood_at and not self.frozen:
            self.freeze()
            self.tasks.add(asyncio.create_task(self._flood()))

    async def _flood(self) -> None:
        """Malformed frames only, `flood_rate` a second: what a broken proxy or service might send."""
        shapes = [
            "garbage that is not JSON {",
            '["a", "JSON", "array"]',
            '{"type": 42}',
            '{"type": "response.created", "response": "not an object"}',
            '{"type": "response.output_audio.delta", "delta": null, "item_id": 7}',
        ]
        with contextlib.suppress(ConnectionClosed):
            for i in range(self.s.flood_limit):
                await self.ws.send(shapes[i % len(shapes)])
                self.conn.garbage_sent += 1
                await asyncio.sleep(1 / self.s.flood_rate)

    async def run(self) -> None:
        try:
            if self.flood_at == 0:
                self.after_response()  # a flood from the first frame: no session.created
            await self.send({"type": "session.created", "session": self.conn.session})
            if self.s.unknown_events:
                await self.unknown("session.future_feature", note="clients must ignore unknown events")
            if self.s.session_expired_after is not None:
                self.tasks.add(asyncio.create_task(self._expire(self.s.session_expired_after)))
            async for message in self.ws:
                await self.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            pending = [t for t in self.tasks if not t.done()]
            if self.active is not None and self.active.task is not None:
                pending.append(self.active.task)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self.conn.close_code = self.ws.close_code
            self.conn.closed.set()
            async with self.conn._cond:
                self.conn._cond.notify_all()

    async def _expire(self, after: float) -> None:
        await asyncio.sleep(after)
        with contextlib.suppress(ConnectionClosed):
            # UNVERIFIED: the real limit is N minutes (30 in beta) and the close code is unknown.
            await self.send_error("session_expired", "Your session hit the maximum duration of 30 minutes.")
            await self.ws.close(1000, "session expired")

    async def invalid(self, event: Any, exc: ClientEventError) -> None:
        self.conn.invalid_events.append(InvalidEvent(event, exc.code, exc.message))
        logger.warning("fake realtime: invalid client event (%s): %s", exc.code, exc.message)
        event_id = event.get("event_id") if isinstance(event, dict) else None
        await self.send_error(exc.code, exc.message, param=exc.param, event_id=event_id)

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self.invalid(
                message[:64], ClientEventError("invalid_json", "Binary frames are not supported.")
            )
            return
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            await self.invalid(message[:200], ClientEventError("invalid_json", f"Invalid JSON: {exc}."))
            return
        if not isinstance(event, dict):
            await self.invalid(event, ClientEventError("invalid_json", "Expected a JSON object."))
            return
        await self.conn._record(self.conn.received, event)
        try:
            self.spec.validate_client_event(event)
        except ClientEventError as exc:
            await self.invalid(event, exc)
            return
        handler = getattr(self, "on_" + event["type"].replace(".", "_"), None)
        if handler is None:
            msg = f"The event '{event['type']}' is not supported on this WebSocket connection."
            await self.send_error("unsupported_event", msg, event_id=event.get("event_id"))  # UNVERIFIED
            return
        await handler(event)

    # -- session and input audio ----------------------------------------------------------------
    async def on_session_update(self, event: Event) -> None:
        try:
            audio_sent = any(self.conn.audio_sent.values())
            self.spec.check_session_update(event["session"], self.conn.session, audio_sent)
        except ClientEventError as exc:
            await self.invalid(event, exc)
            return
        self.conn.session = self.spec.merge_session(self.conn.session, event["session"])
        await self.send({"type": "session.updated", "session": self.conn.session})

    async def on_input_audio_buffer_append(self, event: Event) -> None:
        try:
            raw = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, ValueError):
            await self.invalid(
                event, ClientEventError("invalid_value", "Invalid base64 in 'audio'.", "audio")
            )
            return
        self.conn.audio_in.extend(raw)
        session = self.conn.session
        if session is not self._read_session:  # every update makes a new session dict
            self._read_session = session
            self._input = self.spec.input_format(session), self.spec.turn_detection(session)
        fmt, turn = self._input
        self.buffer_ms += len(raw) / fmt.bytes_per_ms
        for vad in self.detector.feed(raw, fmt, turn):
            assert turn is not None
            if vad.kind == "start":
                await self._speech_started(vad.ms, turn)
            else:
                await self._speech_stopped(vad.ms, turn)

    async def _speech_started(self, ms: int, turn: TurnDetection) -> None:
        self.vad_item_id = self.s.new_id("item")
        start = max(self.buffer_start_ms, ms - turn.prefix_padding_ms)
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": start,
                "item_id": self.vad_item_id,
            }
        )
        if self.active is not None and turn.interrupt_response:
            await self.cancel_active("turn_detected")

    async def _speech_stopped(self, ms: int, turn: TurnDetection) -> None:
        item_id = self.vad_item_id or self.s.new_id("item")
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id})
        await self._commit(item_id)
        if turn.create_response and self.active is None:
            await self.start_response("vad", {})

    async def _commit(self, item_id: str) -> None:
        previous, seconds = self.last_item_id, round(self.buffer_ms / 1000, 3)
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous}
        )
        item: Event = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user"}
        item |= {"status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
        await self.add_item(ConversationEntry(item), previous)
        await self.item_done(item)
        self.buffer_ms, self.buffer_start_ms, self.vad_item_id = 0.0, self.detector.position_ms, None
        if self.spec.transcription_enabled(self.conn.session):
            text = self.s._next_transcript()
            self.conn.transcripts.append((item_id, text))
            base = {"item_id": item_id, "content_index": 0}
            await self.send(
                {"type": "conversation.item.input_audio_transcription.delta", **base, "delta": text}
            )
            usage = {"type": "duration", "seconds": seconds}
            done = {
                "type": "conversation.item.input_audio_transcription.completed",
                **base,
                "transcript": text,
            }
            await self.send(done | {"usage": usage})

    async def on_input_audio_buffer_commit(self, event: Event) -> None:
        if self.buffer_ms < 100:
            msg = (
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {self.buffer_ms:.2f}ms of audio."
            )
            await self.send_error("input_audio_buffer_commit_empty", msg, event_id=event.get("event_id"))
            return
        self.detector.reset()
        await self._commit(self.vad_item_id or self.s.new_id("item"))

    async def on_input_audio_buffer_clear(self, event: Event) -> None:
        self.detector.reset()
        self.buffer_ms, self.buffer_start_ms, self.vad_item_id = 0.0, self.detector.position_ms, None
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_output_audio_buffer_clear(self, event: Event) -> None:
        msg = "output_audio_buffer.clear is only supported for WebRTC and SIP connections."  # UNVERIFIED
        await self.send_error("unsupported_event", msg, event_id=event.get("event_id"))

    # -- conversation ---------------------------------------------------------------------------
    async def on_conversation_item_create(self, event: Event) -> None:
        item = {"object": "realtime.item", "status": "completed", **event["item"]}
        item.setdefault("id", self.s.new_id("item"))
        eid = event.get("event_id")
        if item.get("type") == "function_call_output":
            if item["call_id"] not in self.call_ids:  # UNVERIFIED message and code
                msg = f"Tool call ID '{item['call_id']}' not found in conversation."
                await self.send_error("invalid_value", msg, param="item.call_id", event_id=eid)
                return
            self.conn.function_outputs[item["call_id"]] = item["output"]
        elif item.get("type") == "function_call" and item.get("call_id"):
            self.call_ids.add(item["call_id"])
        elif item.get("type") == "message":
            self.conn.items.append(item)
        await self.add_item(ConversationEntry(item), event.get("previous_item_id") or self.last_item_id)
        await self.item_done(item)

    async def on_conversation_item_truncate(self, event: Event) -> None:
        item_id, index, end = event["item_id"], event["content_index"], event["audio_end_ms"]
        entry = self.items.get(item_id)
        available: float | None = None
        if entry is None:
            error = f"Item with item_id '{item_id}' not found."
        elif entry.bytes_per_ms == 0:
            error = "Only assistant messages with audio can be truncated."
        else:
            available = len(self.conn.audio_sent.get(item_id, b"")) / entry.bytes_per_ms
            if entry.truncated_ms is not None:
                available = min(available, entry.truncated_ms)
            if index != 0:
                error = f"Invalid content_index {index}: the item has one audio content part (index 0)."
            elif end < 0:
                error = f"Invalid audio_end_ms {end}: must be >= 0."
            elif end > available:
                error = f"Audio content of {int(available)}ms is already shorter than {end}ms"
            else:
                error = ""
        self.conn.truncates.append(TruncateRecord(item_id, index, end, available, not error, error or None))
        if error:  # UNVERIFIED codes; the message follows what users report (PROTOCOLS.md §2.4)
            await self.send_error(
                "invalid_value", error, param="audio_end_ms", event_id=event.get("event_id")
            )
            return
        assert entry is not None
        entry.truncated_ms = end
        for content in entry.item.get("content") or []:
            content["transcript"] = None  # the service drops the transcript of unheard audio
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end,
            }
        )

    async def on_conversation_item_delete(self, event: Event) -> None:
        item_id = event["item_id"]
        if self.items.pop(item_id, None) is None:
            msg = f"Error deleting item: the item with id '{item_id}' does not exist."  # UNVERIFIED
            await self.send_error("invalid_value", msg, param="item_id", event_id=event.get("event_id"))
            return
        self.conn.deleted.append(item_id)
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def on_conversation_item_retrieve(self, event: Event) -> None:
        entry = self.items.get(event["item_id"])
        if entry is None:
            msg = f"Item with item_id '{event['item_id']}' not found."
            await self.send_error("invalid_value", msg, param="item_id", event_id=event.get("event_id"))
            return
        await self.send({"type": "conversation.item.retrieved", "item": entry.item})

    # -- responses ------------------------------------------------------------------------------
    async def on_response_create(self, event: Event) -> None:
        if self.active is not None:
            self.conn.active_response_conflicts += 1
            msg = (
                f"Conversation already has an active response in progress: {self.active.record.id}. "
                "Wait until the response is finished before creating a new one."
            )
            await self.send_error(
                "conversation_already_has_active_response", msg, event_id=event.get("event_id")
            )
            return
        await self.start_response("client", event.get("response") or {})

    async def on_response_cancel(self, event: Event) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted and wanted != self.active.record.id):  # UNVERIFIED code
            msg = "Cancellation failed: no active response found"
            await self.send_error("response_cancel_not_active", msg, event_id=event.get("event_id"))
            return
        await self.cancel_active("client_cancelled")
