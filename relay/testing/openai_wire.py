"""How the fake OpenAI HTTP service (`relay.testing.openai_http`) answers on the wire.

* errors: each provider's JSON error shape (`Reject`), so the openai SDK raises its usual
  exceptions (`AuthenticationError`, `NotFoundError`, `RateLimitError`, …);
* streaming: chunked responses the fake can cut (`ChunkedResponse`), SSE framing, and a scripted
  reply as a ``chat.completion`` or the ``chat.completion.chunk`` objects of its stream
  (`ChatAnswer`), text as content deltas and tool calls as index-keyed fragments, like OpenAI;
* transcriptions: their `usage`, and the text in each ``response_format`` or as a stream.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import orjson
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from relay.testing.openai_replies import ChatReply, Provider, RecordedRequest, Text, ToolCalls, ToolCallSpec

logger = logging.getLogger("relay.testing.openai_http")  # the fake's log lines keep one logger name

_SAFE = {"filtered": False, "severity": "safe"}
_CONTENT_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}


# --------------------------------------------------------------------------- errors


class Reject(Exception):
    """Answer the request with this status and a provider-shaped JSON error."""

    def __init__(self, status: int, body: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.message = message


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: Any = None,
) -> Reject:
    return Reject(
        status, {"error": {"message": message, "type": type_, "param": param, "code": code}}, message
    )


def azure_error(status: int, code: str, message: str) -> Reject:
    return Reject(status, {"error": {"code": code, "message": message}}, message)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> Reject:
    return openai_error(400, message, param=param, code=code)


def injected_failure(provider: Provider, status: int, model: str) -> Reject:
    """The error a provider answers for an injected `fail_status`."""
    if provider == "azure":
        if status == 429:
            return azure_error(
                429,
                "429",
                "Requests to the Azure OpenAI API have exceeded the rate limit of your current pricing tier. "
                "Please retry after 1 second.",
            )
        return azure_error(status, str(status), f"The service returned HTTP {status} (fake failure).")
    if status == 429:
        return openai_error(
            429,
            f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 20s.",
            type_="requests",
            code="rate_limit_exceeded",
        )
    if status >= 500:
        return openai_error(
            status,
            "The server had an error while processing your request. Sorry about that!",
            type_="server_error",
        )
    return openai_error(status, f"Fake injected_failure (HTTP {status}).")


def masked_key(key: str) -> str:
    return f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}" if len(key) > 8 else "*" * len(key)


# --------------------------------------------------------------------------- streaming

# Set in the task that answers a stream the fake cuts on purpose: uvicorn then logs "ASGI callable
# returned without completing response." from that same task, which `DropLogFilter` hides.
_DROPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("fake_openai_http_dropping", default=False)
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class DropLogFilter(logging.Filter):
    users = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DROPPING.get() and record.msg == _UVICORN_INCOMPLETE)


DROP_FILTER = DropLogFilter()


class ChunkedResponse(StreamingResponse):
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


def sse_event(data: Mapping[str, Any] | str) -> bytes:
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def token_count(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


class ChatAnswer:
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
        prompt = (
            sum(token_count(str(m.get("content") or "")) for m in record.messages if isinstance(m, dict)) + 3
        )
        completion = token_count(reply.text) + sum(token_count(c.arguments_json()) + 3 for c in self.calls)
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


# --------------------------------------------------------------------------- transcriptions


def transcription_usage(model: str, seconds: float, text: str) -> dict[str, Any]:
    """A transcription's `usage`: by the audio's duration for whisper models, else by tokens."""
    if model.startswith("whisper"):
        return {"type": "duration", "seconds": math.ceil(seconds)}
    audio_tokens = max(1, round(seconds * 10))
    return {
        "type": "tokens",
        "input_tokens": audio_tokens,
        "output_tokens": token_count(text),
        "total_tokens": audio_tokens + token_count(text),
        "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
    }


async def transcription_events(text: str, usage: dict[str, Any]) -> AsyncGenerator[bytes, None]:
    """A streamed transcription (``stream=true``): a delta per word, then the whole text."""
    for word in re.findall(r"\S+\s*", text) or [""]:
        yield sse_event({"type": "transcript.text.delta", "delta": word})
    yield sse_event({"type": "transcript.text.done", "text": text, "usage": usage})


def transcription_response(
    response_format: str, text: str, seconds: float, usage: dict[str, Any], headers: Mapping[str, str]
) -> Response:
    """A transcription of `seconds` of audio in `response_format` (json, text, srt, vtt,
    verbose_json)."""
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
        segment |= {"temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0}
        verbose = {"task": "transcribe", "language": "english", "duration": seconds, "text": text}
        verbose |= {"segments": [segment], "usage": usage}
        return JSONResponse(verbose, headers=headers)
    return JSONResponse({"text": text, "usage": usage}, headers=headers)
