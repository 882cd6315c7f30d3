"""A fake of the OpenAI / Azure OpenAI HTTP APIs the cascade uses, served over a real socket.

It answers the three calls of PROTOCOLS.md §4.3 the way the openai SDK (3.5x) sends them:

* transcriptions: ``POST /v1/audio/transcriptions`` (multipart: ``file`` + ``model`` + optional
  fields), answering ``{"text": …}`` (or plain text, or SSE when ``stream=true``);
* chat: ``POST /v1/chat/completions`` (JSON); ``stream: true`` answers SSE chunks
  ``data: {chunk}\\n\\n`` … ``data: [DONE]\\n\\n``, text as content deltas and tool calls as
  index-keyed fragments, exactly like OpenAI;
* speech: ``POST /v1/audio/speech`` (JSON); ``response_format: "pcm"`` streams raw PCM16 24 kHz
  mono little-endian (``tts_audio(input)``) in chunks.

Azure equivalents live under ``/openai/deployments/{deployment}/…?api-version=V``. Auth is
``Authorization: Bearer KEY`` on OpenAI paths, ``api-key: KEY`` or ``Authorization: Bearer TOKEN``
on Azure paths; failures answer with each provider's JSON error shape, so the SDK raises its usual
exceptions (`AuthenticationError`, `NotFoundError`, `RateLimitError`, …).

The scripted replies (`Text`, `ToolCalls`), recorded requests (`RecordedRequest`) and `tts_audio`
live in `relay.testing.openai_replies`; how a request is read and checked (auth, model, body) in
`relay.testing.openai_requests`; the error shapes, streams and transcription formats on the wire
in `relay.testing.openai_wire`. Every request is recorded (`FakeOpenAIHTTP.requests`) and waits are
event driven::

    fake = FakeOpenAIHTTP(transcripts=["what's the weather"], replies=[ToolCalls([ToolCallSpec(
        "web_search", {"query": "weather"})]), Text("It is sunny. Anything else?")])
    async with fake.serve() as base_url:
        client = AsyncOpenAI(api_key="sk-test", base_url=base_url + "/v1")
        ...
        request = await fake.wait_for("speech")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import get_args

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.testing.openai_replies import (
    TTS_BYTES_PER_MS,
    ChatReply,
    Kind,
    Provider,
    RecordedRequest,
    RequestNotSeen,
    Text,
    ToolCalls,
    tts_audio,
    wav_bytes,
)
from relay.testing.openai_requests import check_request, read_request
from relay.testing.openai_wire import (
    DROP_FILTER,
    ChatAnswer,
    ChunkedResponse,
    DropLogFilter,
    Reject,
    azure_error,
    injected_failure,
    openai_error,
    sse_event,
    transcription_events,
    transcription_response,
    transcription_usage,
)
from relay.testing.server import serve_app

__all__ = [
    "DEFAULT_API_VERSIONS",
    "DEFAULT_DEPLOYMENTS",
    "DEFAULT_MODELS",
    "FakeOpenAIHTTP",
]

logger = logging.getLogger(__name__)

KINDS: tuple[Kind, ...] = get_args(Kind)
DEFAULT_MODELS = frozenset({"whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-mini", "gpt-4o-mini-tts"})
DEFAULT_DEPLOYMENTS = frozenset({"stt", "chat", "tts"})
DEFAULT_API_VERSIONS = frozenset({"2024-10-21", "2025-03-01-preview", "2025-04-01-preview"})

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# --------------------------------------------------------------------------- the fake


class FakeOpenAIHTTP:
    """Scripted OpenAI / Azure OpenAI HTTP service (transcriptions, chat completions, speech).

    All arguments are keyword-only:

    * `api_key`: the OpenAI key (``Authorization: Bearer``); `azure_api_key`: the Azure
      ``api-key``; `bearer_tokens`: Entra ID tokens accepted on Azure paths.
    * `models`: model names accepted on ``/v1`` paths; `deployments`: Azure deployment names;
      `api_versions`: accepted Azure ``api-version`` values (missing or other: 404).
    * `transcripts`: texts answered by transcriptions, consumed in order, then
      `default_transcript`; `replies`: `ChatReply` scripts consumed in order, then
      `default_reply`. Both are public lists (`self.transcripts`, `self.replies`) a test may extend.
    * `tts_chunk_bytes`: speech stream chunk size (4800 = 100 ms of PCM16 24 kHz); `tts_pace`:
      wall time per chunk as a multiple of the chunk's audio duration (1.0 = real time, 0 = as
      fast as possible); `chat_chunk_delay`: seconds between chat SSE chunks.
    * Failure knobs (public attributes, changeable between requests): `latency` (seconds before
      answering, global or per `Kind`); `fail_status` (per `Kind`: an HTTP status answered to
      every request, or a list of statuses consumed one per request); `drop_stream_after` (per
      `Kind`: cut the stream after N chunks by closing the connection, without ``[DONE]``).
    * `azure_prompt_filter_chunk`: Azure streams start with a chunk whose ``choices`` is empty
      (``prompt_filter_results``), as the real service does; set False to leave it out.

    Requests that fail (auth, 404, 400, `fail_status`) consume no transcript or reply.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        azure_api_key: str = "azure-key",
        bearer_tokens: Iterable[str] = (),
        models: Iterable[str] | None = None,
        deployments: Iterable[str] | None = None,
        api_versions: Iterable[str] | None = None,
        transcripts: Iterable[str] = (),
        replies: Iterable[ChatReply] = (),
        default_transcript: str = "hello",
        default_reply: ChatReply | None = None,
        tts_chunk_bytes: int = 4800,
        tts_pace: float = 0.0,
        chat_chunk_delay: float = 0.0,
        latency: float | Mapping[Kind, float] = 0.0,
        fail_status: Mapping[Kind, int | Sequence[int]] | None = None,
        drop_stream_after: Mapping[Kind, int] | None = None,
        azure_prompt_filter_chunk: bool = True,
    ) -> None:
        if tts_chunk_bytes <= 0 or tts_chunk_bytes % 2:
            raise ValueError("tts_chunk_bytes must be a positive, even number of bytes (whole samples)")
        self.api_key = api_key
        self.azure_api_key = azure_api_key
        self.bearer_tokens: set[str] = set(bearer_tokens)
        self.models: set[str] = set(DEFAULT_MODELS if models is None else models)
        self.deployments: set[str] = set(DEFAULT_DEPLOYMENTS if deployments is None else deployments)
        self.api_versions: set[str] = set(DEFAULT_API_VERSIONS if api_versions is None else api_versions)
        self.transcripts: list[str] = list(transcripts)
        self.replies: list[ChatReply] = list(replies)
        self.default_transcript = default_transcript
        self.default_reply: ChatReply = default_reply if default_reply is not None else Text("Okay.")
        self.tts_chunk_bytes = tts_chunk_bytes
        self.tts_pace = tts_pace
        self.chat_chunk_delay = chat_chunk_delay
        self.latency: float | dict[Kind, float] = (
            latency if isinstance(latency, int | float) else dict(latency)
        )
        self.fail_status: dict[Kind, int | list[int]] = {
            k: v if isinstance(v, int) else list(v) for k, v in (fail_status or {}).items()
        }
        self.drop_stream_after: dict[Kind, int] = dict(drop_stream_after or {})
        for name, knob in (
            ("latency", latency),
            ("fail_status", self.fail_status),
            ("drop_stream_after", self.drop_stream_after),
        ):
            unknown = set(knob) - set(KINDS) if isinstance(knob, Mapping) else set()
            if unknown:
                raise ValueError(f"{name}: unknown endpoint kinds {sorted(unknown)}; use {list(KINDS)}")
        self.azure_prompt_filter_chunk = azure_prompt_filter_chunk
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._cond = asyncio.Condition()
        self._released = asyncio.Event()
        self.app = Starlette(routes=self._routes())

    # ------------------------------------------------------------------ public API

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serves the fake on 127.0.0.1; yields ``http://127.0.0.1:PORT``.

        OpenAI clients use ``base_url=URL + "/v1"``, Azure clients ``azure_endpoint=URL``. On exit,
        answers held by `latency` or pacing are released so the server shuts down promptly.
        """
        self._cond = asyncio.Condition()
        self._released = asyncio.Event()
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(DROP_FILTER)
        DropLogFilter.users += 1
        try:
            async with serve_app(self.app) as url:
                logger.info("fake openai http listening on %s", url)
                try:
                    yield url
                finally:
                    self._released.set()
        finally:
            DropLogFilter.users -= 1
            if not DropLogFilter.users:
                uvicorn_log.removeFilter(DROP_FILTER)

    @property
    def transcription_requests(self) -> list[RecordedRequest]:
        """Recorded ``audio/transcriptions`` requests (OpenAI and Azure), in arrival order."""
        return self.requests_of("transcriptions")

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded ``chat/completions`` requests (OpenAI and Azure), in arrival order."""
        return self.requests_of("chat")

    @property
    def speech_requests(self) -> list[RecordedRequest]:
        """Recorded ``audio/speech`` requests (OpenAI and Azure), in arrival order."""
        return self.requests_of("speech")

    def requests_of(self, kind: Kind) -> list[RecordedRequest]:
        """The recorded requests of one kind, in arrival order."""
        return [r for r in self.requests if r.kind == kind]

    async def wait_for(
        self,
        kind: Kind,
        n: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - the API the tests use
    ) -> RecordedRequest:
        """The `n`-th recorded request of `kind`, waiting for it if needed.

        A request is recorded as soon as its body is read (before latency and before the answer).
        Raises `RequestNotSeen` after `timeout` seconds.
        """
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: len(self.requests_of(kind)) >= n)
            hits = self.requests_of(kind)
        if len(hits) >= n:
            return hits[n - 1]
        seen = [f"{r.method} {r.path} -> {r.status}" for r in self.requests[-10:]]
        raise RequestNotSeen(
            f"{kind} request #{n} not seen within {timeout}s; {len(hits)} so far. Last: {seen}"
        )

    # ------------------------------------------------------------------ routing

    def _routes(self) -> list[Route]:
        paths: dict[Kind, str] = {
            "transcriptions": "/audio/transcriptions",
            "chat": "/chat/completions",
            "speech": "/audio/speech",
        }
        routes = []
        for kind, suffix in paths.items():
            routes.append(Route("/v1" + suffix, self._endpoint(kind, "openai"), methods=["POST"]))
            routes.append(
                Route(
                    "/openai/deployments/{deployment}" + suffix,
                    self._endpoint(kind, "azure"),
                    methods=["POST"],
                )
            )
        routes.append(Route("/{path:path}", self._unknown_path, methods=_ALL_METHODS))
        return routes

    def _endpoint(self, kind: Kind, provider: Provider) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._handle(request, kind, provider)

        return endpoint

    async def _unknown_path(self, request: Request) -> Response:
        path = request.url.path
        logger.warning("fake openai: no such path %s %s", request.method, path)
        reject = (
            azure_error(404, "404", "Resource not found")
            if path.startswith("/openai/")
            else openai_error(404, f"Invalid URL ({request.method} {path})")
        )
        return JSONResponse(reject.body, status_code=404)

    # ------------------------------------------------------------------ handling

    async def _handle(self, request: Request, kind: Kind, provider: Provider) -> Response:
        record = await read_request(request, kind, provider)
        async with self._cond:
            self.requests.append(record)
            self._cond.notify_all()

        await self._pause(self._latency(kind))
        request_id = f"req_fake{next(self._ids):06d}"
        headers = {"x-request-id": request_id}
        if provider == "azure":
            headers["apim-request-id"] = request_id
        try:
            self._check(record)
            response = self._answer(record, headers)
        except Reject as reject:
            record.status, record.error = reject.status, reject.message
            logger.info(
                "fake openai: %s %s -> %d %s", record.method, record.path, reject.status, reject.message
            )
            return JSONResponse(reject.body, status_code=reject.status, headers=headers)
        record.status = response.status_code
        logger.debug("fake openai: %s %s -> %d", record.method, record.path, response.status_code)
        return response

    def _latency(self, kind: Kind) -> float:
        if isinstance(self.latency, dict):
            return self.latency.get(kind, 0.0)
        return float(self.latency)

    async def _pause(self, seconds: float) -> None:
        """Waits `seconds`, or less if `serve()` is exiting (so shutdown is never held up)."""
        if seconds <= 0 or self._released.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._released.wait()

    # ------------------------------------------------------------------ checks

    def _check(self, record: RecordedRequest) -> None:
        """Raises `Reject` as the service would (`check_request`), then as the failure knobs ask."""
        check_request(self, record)
        status = self._next_failure(record.kind)
        if status is not None:
            raise injected_failure(record.provider, status, record.model or record.deployment or "")

    def _next_failure(self, kind: Kind) -> int | None:
        knob = self.fail_status.get(kind)
        if isinstance(knob, list):
            return knob.pop(0) if knob else None
        return knob

    # ------------------------------------------------------------------ answers

    def _answer(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        if record.kind == "transcriptions":
            return self._answer_transcription(record, headers)
        if record.kind == "chat":
            return self._answer_chat(record, headers)
        return self._answer_speech(record, headers)

    def _stream(
        self,
        record: RecordedRequest,
        chunks: AsyncGenerator[bytes, None],
        media_type: str,
        headers: Mapping[str, str],
    ) -> Response:
        return ChunkedResponse(
            chunks,
            media_type=media_type,
            headers=headers,
            record=record,
            drop_after=self.drop_stream_after.get(record.kind),
        )

    def _answer_transcription(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
        seconds = (record.wav_duration_ms or 0.0) / 1000
        usage = transcription_usage(record.model or record.deployment or "", seconds, text)
        if record.stream:
            events = transcription_events(text, usage)
            return self._stream(record, events, "text/event-stream; charset=utf-8", headers)
        response_format = record.form.get("response_format", "json")
        return transcription_response(response_format, text, seconds, usage, headers)

    def _answer_chat(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        reply = self.replies.pop(0) if self.replies else self.default_reply
        body = record.body or {}
        offered = {t["function"]["name"] for t in body.get("tools") or []}
        for call in reply.calls if isinstance(reply, ToolCalls) else ():
            if call.name not in offered:
                logger.warning(
                    "fake openai: scripted tool call %r was not among the offered tools", call.name
                )
        answer = ChatAnswer(reply, next(self._ids), record)
        if not record.stream:
            return JSONResponse(answer.completion(), headers=headers)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        chunks = answer.chunks(include_usage=include_usage, prompt_filter=self.azure_prompt_filter_chunk)

        async def events() -> AsyncGenerator[bytes, None]:
            for i, data in enumerate(chunks):
                if i and self.chat_chunk_delay > 0:
                    await self._pause(self.chat_chunk_delay)
                yield sse_event(data)
            yield sse_event("[DONE]")

        return self._stream(record, events(), "text/event-stream; charset=utf-8", headers)

    def _answer_speech(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        body = record.body or {}
        pcm = tts_audio(record.input or "")
        if body.get("response_format") == "wav":
            audio, media_type = wav_bytes(pcm), "audio/wav"
        else:
            audio, media_type = pcm, "audio/pcm"
        size = self.tts_chunk_bytes
        chunk_seconds = size / (TTS_BYTES_PER_MS * 1000)

        async def chunks() -> AsyncGenerator[bytes, None]:
            start = time.monotonic()
            for n, i in enumerate(range(0, len(audio), size)):
                if n and self.tts_pace > 0:  # on a schedule from the first chunk: no drift
                    await self._pause(start + n * chunk_seconds * self.tts_pace - time.monotonic())
                yield audio[i : i + size]

        return self._stream(record, chunks(), media_type, headers)
