"""Streaming chat with tools for the cascaded path.

:func:`stream_chat` turns a streamed chat completion (``POST /chat/completions``) into a short
sequence of typed events: :class:`TextDelta` for every piece of spoken content as it arrives
(feed them to :class:`cascade.sentences.SentenceChunker`), then at most one
:class:`ToolCallsDone` with the complete function calls once the stream has ended. Tool-call
arguments arrive as fragments spread over many chunks (PROTOCOLS.md §4.3); they are joined per
``index``, the call's id and name taken from its first fragment that has them.

The two helpers build the history entries the next request needs after a tool round:
:func:`assistant_tool_calls_message` (the model's calls) followed by one
:func:`tool_result_message` per call. Tool definitions come from ``ToolRegistry.chat_tools()``.

openai errors propagate (the session decides). Closing the iterator early (``aclose()``, or
cancelling the task that iterates it, e.g. on barge-in) closes the HTTP stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openai import AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = [
    "ChatEvent",
    "ChatToolCall",
    "TextDelta",
    "ToolCallsDone",
    "assistant_tool_calls_message",
    "stream_chat",
    "tool_result_message",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the assistant's text, in stream order."""

    text: str


@dataclass(frozen=True, slots=True)
class ChatToolCall:
    """One complete function call: ``arguments`` is the JSON text exactly as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallsDone:
    """The stream ended asking for these calls (in ``index`` order); run them, then ask again."""

    calls: list[ChatToolCall] = field(default_factory=list)


ChatEvent = TextDelta | ToolCallsDone


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


async def stream_chat(
    client: AsyncOpenAI,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> AsyncGenerator[ChatEvent, None]:
    """Streams one chat completion as :class:`TextDelta` events, then :class:`ToolCallsDone`.

    ``tools`` is omitted from the request when ``None`` or empty. :class:`ToolCallsDone` is yielded
    once, last, when call fragments were seen (normally with ``finish_reason == "tool_calls"``);
    a stream without fragments yields none, whatever its finish reason. A call whose first
    fragment lacked an id gets ``call_<index>`` so the history stays well-formed.
    """
    # `client.post` is the SDK's documented call for a request body built by hand; it is what
    # `chat.completions.create` does after `async_maybe_transform` walks every message of the
    # history through the param TypedDicts: a no-op for these plain JSON dicts, yet a cost that grows
    # with the conversation on every turn of every call (README, Performance: bench/load.py).
    # Azure's client still routes the body's "model" to /deployments/<name>/chat/completions.
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if tools:
        body["tools"] = tools
    stream = await client.post(
        "/chat/completions",
        cast_to=ChatCompletion,
        body=body,
        stream=True,
        stream_cls=AsyncStream[ChatCompletionChunk],
    )
    partial: dict[int, _PartialCall] = {}
    try:
        async for chunk in stream:
            for choice in chunk.choices:  # empty for usage / content-filter chunks
                if choice.index != 0:
                    continue
                delta = choice.delta
                if delta.content:
                    yield TextDelta(delta.content)
                for frag in delta.tool_calls or ():
                    call = partial.setdefault(frag.index, _PartialCall())
                    if frag.id and not call.id:
                        call.id = frag.id
                    if frag.function is not None:
                        if frag.function.name and not call.name:
                            call.name = frag.function.name
                        if frag.function.arguments:
                            call.arguments.append(frag.function.arguments)
    finally:
        await stream.close()
    if partial:
        yield ToolCallsDone(
            [
                ChatToolCall(call.id or f"call_{index}", call.name, "".join(call.arguments))
                for index, call in sorted(partial.items())
            ]
        )


def assistant_tool_calls_message(calls: Sequence[ChatToolCall], content: str | None = None) -> dict[str, Any]:
    """The assistant history entry that carries ``calls`` (``content``: text said before them, if any)."""
    return {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }


def tool_result_message(call_id: str, content: str) -> dict[str, Any]:
    """The ``tool`` history entry answering the call ``call_id`` with ``content`` (usually JSON text)."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}
