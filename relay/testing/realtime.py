"""A protocol-faithful fake of the OpenAI / Azure OpenAI Realtime service over a real WebSocket.

It serves the three URL shapes of PROTOCOLS.md §2–3 on 127.0.0.1 and a free port
(`relay.testing.realtime_routes`):

* OpenAI GA ``/v1/realtime?model=M`` with ``Authorization: Bearer KEY``;
* Azure GA ``/openai/v1/realtime?model=DEPLOYMENT`` with ``api-key`` or a bearer (no ``api-version``);
* Azure preview ``/openai/realtime?api-version=V&deployment=D``, which speaks the beta protocol.

Each connection gets `session.created`, validates every client event against the openai SDK's
types, runs an energy VAD on the caller's audio, and answers `response.create` (or the end of a
turn) with the next scripted `Reply` (`relay.testing.realtime_replies`, played by
`relay.testing.realtime_script` and `relay.testing.realtime_engine`). Everything a test may want to
assert is recorded on `FakeConnection` (`relay.testing.realtime_connection`); waits are event
driven (`wait_for`). This module is the server (lifecycle, handshake, connections) and what tests
import: the names above are re-exported here.

Usage::

    async with FakeRealtimeServer(responses=[Say("Hi!"), Call("web_search", {"q": "x"})]) as server:
        client = AsyncOpenAI(api_key="sk-test", websocket_base_url=server.url + "/v1")
        ...
        conn = await server.wait_connection()
        await conn.wait_for("response.done")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.testing.realtime_audio import expected_audio
from relay.testing.realtime_connection import EventNotSeen, FakeConnection, InvalidEvent, TruncateRecord
from relay.testing.realtime_dialects import dialect_spec, parse_server_event
from relay.testing.realtime_engine import ConnectionEngine
from relay.testing.realtime_replies import (
    Call,
    Calls,
    Drop,
    Error,
    Event,
    Fail,
    Reply,
    ResponseRecord,
    Say,
    Unknown,
)
from relay.testing.realtime_routes import Reject, Route, knob_body, route

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
        self._pending: dict[Any, Route] = {}
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
            accepted = route(self, split.path, query, request.headers)
        except Reject as rej:
            return self._reject(connection, request.path, rej.status, rej.body)
        self._attempts += 1
        if self.reject_status is not None and (self.reject_first <= 0 or self._attempts <= self.reject_first):
            body = knob_body(accepted, self.reject_status)
            return self._reject(connection, request.path, self.reject_status, body)
        self._pending[connection.id] = accepted
        return None

    def _reject(self, connection: ServerConnection, path: str, status: int, body: Event) -> Response:
        response = connection.respond(status, orjson.dumps(body).decode() + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        self.rejected.append((path, status))
        logger.info("fake realtime server rejected %s with %d", path, status)
        return response

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
        engine = ConnectionEngine(self, conn, ws)
        conn._engine = engine
        async with self._cond:
            self.connections.append(conn)
            self._cond.notify_all()
        logger.info("fake realtime connection %s %s (%s)", route.provider, route.dialect, route.auth)
        await engine.run()
