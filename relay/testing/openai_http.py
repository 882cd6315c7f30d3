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

Every request is recorded (`FakeOpenAIHTTP.requests`) and waits are event driven::

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
import contextvars
import functools
import io
import itertools
import logging
import math
import re
import struct
import time
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from relay.testing.server import serve_app

__all__ = [
    "DEFAULT_API_VERSIONS",
    "DEFAULT_DEPLOYMENTS",
    "DEFAULT_MODELS",
    "TTS_BYTES_PER_MS",
    "TTS_MAX_MS",
    "TTS_MS_PER_CHAR",
    "TTS_SAMPLE_RATE",
    "ChatReply",
    "FakeOpenAIHTTP",
    "Kind",
    "Provider",
    "RecordedRequest",
    "RequestNotSeen",
    "Text",
    "ToolCallSpec",
    "ToolCalls",
    "WavInfo",
    "tts_audio",
]

logger = logging.getLogger(__name__)

Kind: TypeAlias = Literal["transcriptions", "chat", "speech"]
"""The endpoint a request went to; also the key of the per-endpoint knobs."""
Provider: TypeAlias = Literal["openai", "azure"]

KINDS: tuple[Kind, ...] = get_args(Kind)
DEFAULT_MODELS = frozenset({"whisper-1", "gpt-4o-mini-transcribe", "gpt-4o-mini", "gpt-4o-mini-tts"})
DEFAULT_DEPLOYMENTS = frozenset({"stt", "chat", "tts"})
DEFAULT_API_VERSIONS = frozenset({"2024-10-21", "2025-03-01-preview", "2025-04-01-preview"})

TTS_SAMPLE_RATE = 24_000
TTS_BYTES_PER_MS = TTS_SAMPLE_RATE * 2 // 1000  # PCM16 mono: 48 bytes per millisecond
TTS_MS_PER_CHAR = 60
TTS_MAX_MS = 20_000
"""`tts_audio` lasts `TTS_MS_PER_CHAR` per character of input, at most this long."""

_AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"}
    | {"marin", "cedar"}
)
_SPEECH_FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
_SPEECH_FORMATS_SERVED = ("pcm", "wav")  # the fake cannot encode compressed audio
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_SAFE = {"filtered": False, "severity": "safe"}
_CONTENT_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}


# --------------------------------------------------------------------------- scripted replies


@dataclass(frozen=True, slots=True)
class Text:
    """A chat reply of plain text, streamed as content deltas of `chunk_chars` characters."""

    text: str
    chunk_chars: int = 8
    finish_reason: Literal["stop", "length", "content_filter"] = "stop"


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """One function call in a `ToolCalls` reply.

    `arguments` is a dict (sent as compact JSON) or a string sent verbatim (invalid JSON is
    allowed, to test the caller's error path). `id` defaults to a deterministic ``call_fake…``.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments string as the API sends it."""
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """A chat reply that calls tools (``finish_reason: "tool_calls"``).

    Streamed like OpenAI: each call's first fragment carries ``index``, ``id``, ``type`` and
    ``function.name`` with empty ``arguments``; later fragments carry only ``index`` and
    ``function.arguments`` pieces of `chunk_chars` characters. Calls stream one after another.
    `text`, if any, is streamed as content before the calls.
    """

    calls: Sequence[ToolCallSpec]
    text: str = ""
    chunk_chars: int = 8


ChatReply: TypeAlias = Text | ToolCalls


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class WavInfo:
    """The header and samples of an uploaded WAV file (any format tag: PCM, μ-law, …)."""

    rate: int
    channels: int
    sampwidth: int
    format_tag: int  # 1 PCM, 6 A-law, 7 μ-law
    frames: bytes

    @property
    def duration_ms(self) -> float:
        """Milliseconds of audio in `frames`."""
        frame_bytes = self.channels * self.sampwidth
        if not frame_bytes or not self.rate:
            return 0.0
        return len(self.frames) // frame_bytes * 1000 / self.rate


class RequestNotSeen(TimeoutError):
    """`FakeOpenAIHTTP.wait_for` gave up before the request arrived."""


@dataclass(eq=False)
class RecordedRequest:
    """One request the fake received, recorded when its body has been read (before any latency).

    `body` is the parsed JSON body (chat, speech); multipart requests (transcriptions) have
    `form` (the last value of each field), `form_items` (every field, in order) and the
    uploaded file. `status` and `dropped` are filled in once the fake has answered.
    """

    kind: Kind
    provider: Provider
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float
    deployment: str | None = None
    body: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    form_items: list[tuple[str, str]] = field(default_factory=list)
    file_name: str | None = None
    file_content_type: str | None = None
    file_bytes: bytes | None = None
    wav: WavInfo | None = None
    status: int | None = None
    error: str | None = None
    """The error message answered, if any."""
    dropped: bool = False
    """The response stream was cut (`drop_stream_after`)."""
    chunks_sent: int = 0
    """Stream chunks sent (SSE events or audio chunks)."""
    parse_error: str | None = field(default=None, repr=False)

    @property
    def model(self) -> str | None:
        """The ``model`` field of the body or form (on Azure, the SDK sends the deployment)."""
        value = self.body.get("model") if self.body is not None else self.form.get("model")
        return value if isinstance(value, str) else None

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream (``"stream": true`` or form ``stream=true``)."""
        if self.body is not None:
            return self.body.get("stream") is True
        return self.form.get("stream", "").lower() == "true"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Chat messages as sent (empty for other kinds)."""
        value = self.body.get("messages") if self.body is not None else None
        return value if isinstance(value, list) else []

    @property
    def input(self) -> str | None:
        """The text of a speech request."""
        value = self.body.get("input") if self.body is not None else None
        return value if isinstance(value, str) else None

    @property
    def wav_duration_ms(self) -> float | None:
        """Duration of the uploaded WAV's samples (None: no file, or not a WAV)."""
        return self.wav.duration_ms if self.wav is not None else None

    @property
    def wav_rate(self) -> int | None:
        """Sample rate of the uploaded WAV."""
        return self.wav.rate if self.wav is not None else None

    @property
    def wav_channels(self) -> int | None:
        """Channel count of the uploaded WAV."""
        return self.wav.channels if self.wav is not None else None

    @property
    def wav_sampwidth(self) -> int | None:
        """Bytes per sample of the uploaded WAV (2 for PCM16, 1 for μ-law)."""
        return self.wav.sampwidth if self.wav is not None else None


# --------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=256)
def _char_tone(char: str) -> bytes:
    samples = TTS_SAMPLE_RATE * TTS_MS_PER_CHAR // 1000
    if char.isspace():
        return bytes(samples * 2)
    freq = 220.0 + (ord(char) % 40) * 20.0
    t = np.arange(samples, dtype=np.float64) / TTS_SAMPLE_RATE
    ramp = np.minimum(1.0, np.minimum(np.arange(samples), np.arange(samples)[::-1]) / 120.0)  # 5 ms
    tone = 0.3 * 32767.0 * np.sin(2.0 * np.pi * freq * t) * ramp
    return np.round(tone).astype("<i2").tobytes()


def tts_audio(text: str) -> bytes:
    """The audio the fake speaks for `text`: PCM16 24 kHz mono little-endian, deterministic.

    `TTS_MS_PER_CHAR` (60 ms) per character, capped at `TTS_MAX_MS`; each character is a tone
    whose pitch depends on the character (whitespace is silence), so different texts give
    different audio and equal texts equal audio.
    """
    chars = text[: -(-TTS_MAX_MS // TTS_MS_PER_CHAR)]
    return b"".join(_char_tone(c) for c in chars)[: TTS_MAX_MS * TTS_BYTES_PER_MS]


def _wav_bytes(pcm: bytes, rate: int = TTS_SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _parse_wav(data: bytes) -> WavInfo | None:
    """Reads a WAV with the `wave` module; other format tags (μ-law, extensible) by hand."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            return WavInfo(
                rate=w.getframerate(),
                channels=w.getnchannels(),
                sampwidth=w.getsampwidth(),
                format_tag=1,
                frames=w.readframes(w.getnframes()),
            )
    except (wave.Error, EOFError, struct.error):
        pass
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, int] | None = None
    frames: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        chunk = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt " and len(chunk) >= 16:
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
            if tag == 0xFFFE and len(chunk) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                tag = int.from_bytes(chunk[24:26], "little")
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            frames = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or frames is None or not fmt[1] or not fmt[2]:
        return None
    tag, channels, rate, bits = fmt
    return WavInfo(rate=rate, channels=channels, sampwidth=max(1, bits // 8), format_tag=tag, frames=frames)


# --------------------------------------------------------------------------- errors


class _Reject(Exception):
    """Answer the request with this status and a provider-shaped JSON error."""

    def __init__(self, status: int, body: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.message = message


def _openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: Any = None,
) -> _Reject:
    return _Reject(
        status, {"error": {"message": message, "type": type_, "param": param, "code": code}}, message
    )


def _azure_error(status: int, code: str, message: str) -> _Reject:
    return _Reject(status, {"error": {"code": code, "message": message}}, message)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> _Reject:
    return _openai_error(400, message, param=param, code=code)


def _failure(provider: Provider, status: int, model: str) -> _Reject:
    """The error a provider answers for an injected `fail_status`."""
    if provider == "azure":
        if status == 429:
            return _azure_error(
                429,
                "429",
                "Requests to the Azure OpenAI API have exceeded the rate limit of your current pricing tier. "
                "Please retry after 1 second.",
            )
        return _azure_error(status, str(status), f"The service returned HTTP {status} (fake failure).")
    if status == 429:
        return _openai_error(
            429,
            f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 20s.",
            type_="requests",
            code="rate_limit_exceeded",
        )
    if status >= 500:
        return _openai_error(
            status,
            "The server had an error while processing your request. Sorry about that!",
            type_="server_error",
        )
    return _openai_error(status, f"Fake failure (HTTP {status}).")


def _mask(key: str) -> str:
    return f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "*" * len(key)


# --------------------------------------------------------------------------- streaming

# Set in the task that answers a stream the fake cuts on purpose: uvicorn then logs "ASGI callable
# returned without completing response." from that same task, which `_DropLogFilter` hides.
_DROPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("fake_openai_http_dropping", default=False)
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class _DropLogFilter(logging.Filter):
    users = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DROPPING.get() and record.msg == _UVICORN_INCOMPLETE)


_DROP_FILTER = _DropLogFilter()


class _ChunkedResponse(StreamingResponse):
    """Streams chunks (chunked transfer encoding) and can cut the connection after N of them.

    Cutting returns from the ASGI app without the final empty chunk; uvicorn then closes the
    socket, so the client sees an incomplete chunked body (an error), not a clean end.
    """

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        media_type: str,
        headers: Mapping[str, str],
        record: RecordedRequest,
        drop_after: int | None,
    ) -> None:
        super().__init__(chunks, status_code=200, headers=dict(headers), media_type=media_type)
        self._chunks = chunks
        self._record = record
        self._drop_after = drop_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with contextlib.aclosing(self._chunks) as chunks:
            async for chunk in chunks:
                if self._drop_after is not None and self._record.chunks_sent >= self._drop_after:
                    self._record.dropped = True
                    _DROPPING.set(True)
                    logger.info(
                        "fake openai: dropping the %s stream after %d chunks",
                        self._record.kind,
                        self._drop_after,
                    )
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._record.chunks_sent += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _sse(data: Mapping[str, Any] | str) -> bytes:
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


class _ChatAnswer:
    """Builds one scripted reply as a ChatCompletion, or as the chunks of its stream."""

    def __init__(self, reply: ChatReply, n: int, record: RecordedRequest) -> None:
        self.reply = reply
        self.calls: Sequence[ToolCallSpec] = reply.calls if isinstance(reply, ToolCalls) else ()
        self.call_ids = [call.id or f"call_fake{n:06d}{i:02d}" for i, call in enumerate(self.calls)]
        self.azure = record.provider == "azure"
        self.finish = reply.finish_reason if isinstance(reply, Text) else "tool_calls"
        self.base: dict[str, Any] = {
            "id": f"chatcmpl-fake{n:06d}",
            "created": int(time.time()),
            "model": record.model or record.deployment or "",
            "system_fingerprint": "fp_fake",
        }
        if not self.azure:
            self.base["service_tier"] = "default"
        prompt = sum(_tokens(str(m.get("content") or "")) for m in record.messages if isinstance(m, dict)) + 3
        completion = _tokens(reply.text) + sum(_tokens(c.arguments_json()) + 3 for c in self.calls)
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def completion(self) -> dict[str, Any]:
        """The non-streaming ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": self.reply.text or None, "refusal": None}
        message["annotations"] = []
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json()},
                }
                for call_id, c in zip(self.call_ids, self.calls, strict=True)
            ]
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish,
        }
        result = {**self.base, "object": "chat.completion", "choices": [choice], "usage": self.usage}
        if self.azure:
            choice["content_filter_results"] = _CONTENT_FILTER_RESULTS
            result["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": _CONTENT_FILTER_RESULTS}
            ]
        return result

    def chunks(self, *, include_usage: bool, prompt_filter: bool) -> list[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects of the stream, in order (``[DONE]`` excluded)."""

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            if self.azure:
                choice["content_filter_results"] = _CONTENT_FILTER_RESULTS if delta.get("content") else {}
            data: dict[str, Any] = {**self.base, "object": "chat.completion.chunk", "choices": [choice]}
            if include_usage:
                data["usage"] = None
            return data

        chunks: list[dict[str, Any]] = []
        if self.azure and prompt_filter:  # Azure opens with an empty-choices chunk
            filters = [{"prompt_index": 0, "content_filter_results": _CONTENT_FILTER_RESULTS}]
            chunks.append(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": filters,
                }
            )
        size = self.reply.chunk_chars
        role_sent = False
        if self.reply.text or not self.calls:
            chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            chunks.extend(chunk({"content": piece}) for piece in _pieces(self.reply.text, size))
            role_sent = True
        for index, (call_id, call) in enumerate(zip(self.call_ids, self.calls, strict=True)):
            head = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [head]}
            if not role_sent:  # OpenAI's first tool-call chunk also opens the message
                delta = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [head]}
                role_sent = True
            chunks.append(chunk(delta))
            chunks.extend(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in _pieces(call.arguments_json(), size)
            )
        chunks.append(chunk({}, self.finish))
        if include_usage:
            chunks.append(
                {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": self.usage}
            )
        return chunks


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
        uvicorn_log.addFilter(_DROP_FILTER)
        _DropLogFilter.users += 1
        try:
            async with serve_app(self.app) as url:
                logger.info("fake openai http listening on %s", url)
                try:
                    yield url
                finally:
                    self._released.set()
        finally:
            _DropLogFilter.users -= 1
            if not _DropLogFilter.users:
                uvicorn_log.removeFilter(_DROP_FILTER)

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
            _azure_error(404, "404", "Resource not found")
            if path.startswith("/openai/")
            else _openai_error(404, f"Invalid URL ({request.method} {path})")
        )
        return JSONResponse(reject.body, status_code=404)

    # ------------------------------------------------------------------ handling

    async def _handle(self, request: Request, kind: Kind, provider: Provider) -> Response:
        record = RecordedRequest(
            kind=kind,
            provider=provider,
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            time=0.0,
            deployment=request.path_params.get("deployment"),
        )
        if kind == "transcriptions":
            await self._read_multipart(request, record)
        else:
            await self._read_json(request, record)
        record.time = time.monotonic()
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
        except _Reject as reject:
            record.status, record.error = reject.status, reject.message
            logger.info(
                "fake openai: %s %s -> %d %s", record.method, record.path, reject.status, reject.message
            )
            return JSONResponse(reject.body, status_code=reject.status, headers=headers)
        record.status = response.status_code
        logger.debug("fake openai: %s %s -> %d", record.method, record.path, response.status_code)
        return response

    async def _read_json(self, request: Request, record: RecordedRequest) -> None:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            record.body = body
        else:
            record.parse_error = (
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
                "not valid JSON.)"
            )

    async def _read_multipart(self, request: Request, record: RecordedRequest) -> None:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            record.parse_error = "Could not parse multipart form"
            await request.body()
            return
        try:
            async with request.form() as form:
                for name, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        if name == "file":
                            record.file_name = value.filename
                            record.file_content_type = value.content_type
                            record.file_bytes = await value.read()
                        continue
                    record.form_items.append((name, value))
                    record.form[name] = value
        except (HTTPException, MultiPartException) as exc:
            record.parse_error = f"Could not parse multipart form ({exc})"
            return
        if record.file_bytes is not None:
            record.wav = _parse_wav(record.file_bytes)

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
        """Raises `_Reject` in the order the services check: route, auth, model, body, knobs."""
        if record.provider == "azure":
            version = record.query.get("api-version")
            if version not in self.api_versions:
                raise _azure_error(404, "404", "Resource not found")
            self._check_azure_auth(record)
        else:
            self._check_openai_auth(record)
        if record.parse_error is not None:
            raise _invalid(record.parse_error)
        model = record.model
        if record.provider == "azure":
            if record.deployment not in self.deployments:
                raise _azure_error(
                    404,
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist. If you created the deployment "
                    "within the last 5 minutes, please wait a moment and try again.",
                )
        elif not model:
            raise _invalid("you must provide a model parameter", param="model")
        elif model not in self.models:
            raise _openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        model_name = model or record.deployment or ""
        if record.kind == "transcriptions":
            self._check_transcription(record, model_name)
        elif record.kind == "chat":
            self._check_chat(record)
        else:
            self._check_speech(record)
        status = self._next_failure(record.kind)
        if status is not None:
            raise _failure(record.provider, status, model_name)

    def _check_openai_auth(self, record: RecordedRequest) -> None:
        auth = record.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise _openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        key = auth[7:].strip()
        if key != self.api_key:
            raise _openai_error(
                401,
                f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _check_azure_auth(self, record: RecordedRequest) -> None:
        api_key = record.headers.get("api-key")
        auth = record.headers.get("authorization", "")
        if api_key is not None:
            if api_key == self.azure_api_key:
                return
        elif auth.lower().startswith("bearer "):
            if auth[7:].strip() in self.bearer_tokens:
                return
            raise _azure_error(
                401,
                "401",
                "Unauthorized. Access token is missing, invalid, audience is incorrect "
                "(https://cognitiveservices.azure.com), or have expired.",
            )
        raise _azure_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
            "valid key for an active subscription and use a correct regional API endpoint for your resource.",
        )

    def _check_transcription(self, record: RecordedRequest, model: str) -> None:
        if record.file_bytes is None:
            raise _invalid("Missing required parameter: 'file'.", param="file")
        name = record.file_name or ""
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if extension not in _AUDIO_EXTENSIONS:
            raise _invalid(
                f"Invalid file format. Supported formats: {list(_AUDIO_EXTENSIONS)}",
                param="file",
                code="invalid_value",
            )
        if extension == "wav" and record.wav is None:
            raise _invalid("Audio file might be corrupted or unsupported", param="file", code="invalid_value")
        response_format = record.form.get("response_format", "json")
        whisper = model.startswith("whisper")
        allowed = ("json", "text", "srt", "verbose_json", "vtt") if whisper else ("json", "text")
        if response_format not in allowed:
            raise _invalid(
                f"response_format '{response_format}' is not compatible with model '{model}'. "
                f"Use one of {list(allowed)}.",
                param="response_format",
                code="unsupported_value",
            )
        if record.stream and whisper:
            raise _invalid(
                "Streaming is not supported for whisper-1.", param="stream", code="unsupported_value"
            )

    def _check_chat(self, record: RecordedRequest) -> None:
        body = record.body or {}
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("Missing required parameter: 'messages'.", param="messages")
        pending: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made it
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                role = message.get("role") if isinstance(message, dict) else None
                raise _invalid(
                    f"Invalid value: '{role}'. Supported values are: {sorted(_ROLES)}.", f"messages[{i}].role"
                )
            role = message["role"]
            if pending and role != "tool":
                raise _invalid(
                    "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                    "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                    + ", ".join(pending),
                    f"messages.[{i}].role",
                )
            if role == "tool":
                call_id = message.get("tool_call_id")
                if call_id not in pending:
                    raise _invalid(
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                        "message with 'tool_calls'.",
                        f"messages.[{i}].role",
                    )
                del pending[call_id]
            elif role == "assistant":
                for call in message.get("tool_calls") or []:
                    if isinstance(call, dict) and isinstance(call.get("id"), str):
                        pending[call["id"]] = i
        if pending:
            raise _invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                "'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(pending),
                "messages",
            )
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise _invalid("Invalid type for 'tools': expected an array.", "tools")
            for i, tool in enumerate(tools):
                if not isinstance(tool, dict) or tool.get("type") != "function":
                    raise _invalid(f"Missing required parameter: 'tools[{i}].type'.", f"tools[{i}].type")
                function = tool.get("function")
                if not isinstance(function, dict):
                    raise _invalid(
                        f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}].function"
                    )
                if not isinstance(function.get("name"), str):
                    raise _invalid(
                        f"Missing required parameter: 'tools[{i}].function.name'.",
                        f"tools[{i}].function.name",
                    )

    def _check_speech(self, record: RecordedRequest) -> None:
        body = record.body or {}
        text = body.get("input")
        if not isinstance(text, str):
            raise _invalid("Missing required parameter: 'input'.", param="input")
        if not text:
            raise _invalid(
                "Invalid 'input': string too short. Expected a string with minimum length 1.", "input"
            )
        if len(text) > 4096:
            raise _invalid(
                f"Invalid 'input': string too long. Expected a string with maximum length 4096, but got a "
                f"string with length {len(text)} instead.",
                "input",
                "string_above_max_length",
            )
        voice = body.get("voice")
        if not (voice in _VOICES or (isinstance(voice, dict) and isinstance(voice.get("id"), str))):
            raise _invalid(f"Invalid value for 'voice': {voice!r}.", "voice", "invalid_value")
        response_format = body.get("response_format", "mp3")
        if response_format not in _SPEECH_FORMATS:
            raise _invalid(f"Invalid value: '{response_format}'.", "response_format", "invalid_value")
        if response_format not in _SPEECH_FORMATS_SERVED:
            raise _invalid(
                f"The fake serves response_format {list(_SPEECH_FORMATS_SERVED)} only, "
                f"not '{response_format}'.",
                "response_format",
            )
        if body.get("stream_format", "audio") != "audio":
            raise _invalid("The fake serves stream_format 'audio' only.", "stream_format")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise _invalid("Invalid 'speed': expected a number from 0.25 to 4.0.", "speed")

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
        return _ChunkedResponse(
            chunks,
            media_type=media_type,
            headers=headers,
            record=record,
            drop_after=self.drop_stream_after.get(record.kind),
        )

    def _answer_transcription(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        text = self.transcripts.pop(0) if self.transcripts else self.default_transcript
        model = record.model or record.deployment or ""
        seconds = (record.wav_duration_ms or 0.0) / 1000
        if model.startswith("whisper"):
            usage: dict[str, Any] = {"type": "duration", "seconds": math.ceil(seconds)}
        else:
            audio_tokens = max(1, round(seconds * 10))
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": _tokens(text),
                "total_tokens": audio_tokens + _tokens(text),
                "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            }
        if record.stream:
            words = re.findall(r"\S+\s*", text) or [""]

            async def events() -> AsyncGenerator[bytes, None]:
                for word in words:
                    yield _sse({"type": "transcript.text.delta", "delta": word})
                yield _sse({"type": "transcript.text.done", "text": text, "usage": usage})

            return self._stream(record, events(), "text/event-stream; charset=utf-8", headers)
        response_format = record.form.get("response_format", "json")
        if response_format == "text":
            return PlainTextResponse(text + "\n", headers=headers)
        if response_format in ("srt", "vtt"):
            end = f"00:00:{min(seconds, 59.999):06.3f}"
            if response_format == "srt":
                return PlainTextResponse(
                    f"1\n00:00:00,000 --> {end.replace('.', ',')}\n{text}\n\n", headers=headers
                )
            return PlainTextResponse(f"WEBVTT\n\n00:00:00.000 --> {end}\n{text}\n\n", headers=headers)
        if response_format == "verbose_json":
            segment = {"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text, "tokens": []}
            segment |= {
                "temperature": 0.0,
                "avg_logprob": -0.1,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            verbose = {"task": "transcribe", "language": "english", "duration": seconds, "text": text}
            verbose |= {"segments": [segment], "usage": usage}
            return JSONResponse(verbose, headers=headers)
        return JSONResponse({"text": text, "usage": usage}, headers=headers)

    def _answer_chat(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        reply = self.replies.pop(0) if self.replies else self.default_reply
        body = record.body or {}
        offered = {t["function"]["name"] for t in body.get("tools") or []}
        for call in reply.calls if isinstance(reply, ToolCalls) else ():
            if call.name not in offered:
                logger.warning(
                    "fake openai: scripted tool call %r was not among the offered tools", call.name
                )
        answer = _ChatAnswer(reply, next(self._ids), record)
        if not record.stream:
            return JSONResponse(answer.completion(), headers=headers)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        chunks = answer.chunks(include_usage=include_usage, prompt_filter=self.azure_prompt_filter_chunk)

        async def events() -> AsyncGenerator[bytes, None]:
            for i, data in enumerate(chunks):
                if i and self.chat_chunk_delay > 0:
                    await self._pause(self.chat_chunk_delay)
                yield _sse(data)
            yield _sse("[DONE]")

        return self._stream(record, events(), "text/event-stream; charset=utf-8", headers)

    def _answer_speech(self, record: RecordedRequest, headers: dict[str, str]) -> Response:
        body = record.body or {}
        pcm = tts_audio(record.input or "")
        if body.get("response_format") == "wav":
            audio, media_type = _wav_bytes(pcm), "audio/wav"
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
