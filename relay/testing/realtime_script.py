"""Building blocks of the fake Realtime server: `ReplyEngine`, the half of a connection that speaks
(events out, conversation, responses), playing the scripted replies of
`relay.testing.realtime_replies` (re-exported here).

Audio formats, the reply tone and the VAD live in `relay.testing.realtime_audio`; the GA and preview
dialects and client-event validation in `relay.testing.realtime_dialects`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.testing.realtime_audio import expected_audio, split_words
from relay.testing.realtime_dialects import dialect_spec
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

if TYPE_CHECKING:
    from relay.testing.realtime import FakeRealtimeServer
    from relay.testing.realtime_connection import FakeConnection

logger = logging.getLogger("relay.testing.realtime")

__all__ = [
    "Call",
    "Calls",
    "ConversationEntry",
    "Drop",
    "Error",
    "Fail",
    "Reply",
    "ReplyEngine",
    "ResponseRecord",
    "Say",
    "Unknown",
]


# ---------------------------------------------------------------------------------------------------
# Responses: the speaking half of a connection


class Dropped(Exception):
    """Raised inside a response once the fake dropped the socket on purpose."""


@dataclass
class ActiveResponse:
    """The response being streamed; `cancel` interrupts it between chunks."""

    record: ResponseRecord
    in_conversation: bool
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None
    _wake: asyncio.Future[None] | None = field(default=None, repr=False)

    def interrupt(self, reason: str) -> None:
        """Sets `cancel` (the first reason sticks) and ends a `pause` in progress."""
        self.cancel_reason = self.cancel_reason or reason
        self.cancel.set()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def pause(self, delay: float) -> None:
        """Waits `delay` seconds, or less when interrupted. A bare timer and future: this runs once
        per audio chunk of every call, and asyncio.timeout around `cancel.wait()` would add a cancel
        scope and an Event waiter to each."""
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        timer = loop.call_later(delay, _settle, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class ConversationEntry:
    """An item in the server-side conversation; assistant audio items know their byte rate."""

    item: Event
    bytes_per_ms: int = 0  # > 0 for assistant audio
    truncated_ms: float | None = None


class ReplyEngine:
    """The speaking half of a connection: sends events (GA names, mapped to the dialect), keeps the
    conversation registry and streams scripted replies as responses. `ConnectionEngine`
    (relay.testing.realtime_engine) adds the listening half (client events, VAD)."""

    def __init__(self, server: FakeRealtimeServer, conn: FakeConnection, ws: ServerConnection) -> None:
        self.s, self.conn, self.ws = server, conn, ws
        self.spec = dialect_spec(conn.dialect)
        self.active: ActiveResponse | None = None
        self.items: dict[str, ConversationEntry] = {}
        self.call_ids: set[str] = set()
        self.last_item_id: str | None = None
        self.responses_done = 0
        self.conversation_id = server.new_id("conv")
        self.frozen = False  # a hung service: reads (and its WebSocket layer answers pings), sends nothing

    # -- plumbing -------------------------------------------------------------------------------
    async def send(self, event: Event, *, raw: bool = False) -> None:
        """Sends one server event (GA type names are mapped to the dialect unless `raw`); nothing
        once `frozen`."""
        if self.frozen:
            return
        event = {"event_id": self.s.new_id("event"), **event}
        if not raw:
            event["type"] = self.spec.event(event["type"])
        data = orjson.dumps(event)
        await self.ws.send(data.decode())
        # Record what went on the wire, not the live dicts (the conversation registry mutates those).
        await self.conn._record(self.conn.sent, orjson.loads(data))

    async def send_error(
        self, code: str, message: str, *, param: str | None = None, event_id: Any = None, type_: str = ""
    ) -> None:
        error = {"type": type_ or "invalid_request_error", "code": code, "message": message, "param": param}
        error["event_id"] = event_id
        self.conn.errors.append(error)
        logger.info("fake realtime error %s: %s", code, message)
        await self.send({"type": "error", "error": error})

    async def unknown(self, kind: str, **fields: Any) -> None:
        await self.send({"type": kind, **fields}, raw=True)

    async def drop(self) -> None:
        self.conn.dropped = True
        logger.info("fake realtime server drops the connection (close_code=%s)", self.s.close_code)
        if self.s.close_code is None:
            self.ws.transport.abort()
        else:
            await self.ws.close(self.s.close_code, "fake realtime server drop")

    async def add_item(self, entry: ConversationEntry, previous: str | None) -> None:
        item_id = entry.item["id"]
        self.items[item_id] = entry
        self.last_item_id = item_id
        for kind in self.spec.item_added_events:
            await self.send({"type": kind, "item": entry.item, "previous_item_id": previous})

    async def item_done(self, item: Event) -> None:
        if item["id"] in self.items:
            self.items[item["id"]].item = item
        for kind in self.spec.item_done_events:
            await self.send({"type": kind, "item": item})

    async def cancel_active(self, reason: str) -> None:
        """Stops the streaming response; returns once its `response.done` was sent."""
        active = self.active
        if active is None or active.task is None:
            return
        active.interrupt(reason)
        await active.task

    async def start_response(self, trigger: Literal["client", "vad"], params: Mapping[str, Any]) -> None:
        if self.frozen:  # a hung service starts nothing (and consumes no reply of the script)
            return
        index, reply = self.s._next_reply()
        if isinstance(reply, Error):
            await self.send_error(reply.code, reply.message, type_=reply.type)
            return
        record = ResponseRecord(self.s.new_id("resp"), index, reply, trigger, params)
        self.conn.responses.append(record)
        active = ActiveResponse(record, in_conversation=params.get("conversation") != "none")
        self.active = active
        active.task = asyncio.create_task(self._run_response(active))

    def _response(
        self, active: ActiveResponse, status: str, output: list[Event], details: Event | None
    ) -> Event:
        session, final = self.conn.session, status != "in_progress"
        words = sum(
            len(split_words(str(c.get("transcript") or ""))) for o in output for c in o.get("content", [])
        )
        usage = {"total_tokens": 120 + words, "input_tokens": 120, "output_tokens": words}
        body: Event = {
            "object": "realtime.response",
            "id": active.record.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.conversation_id if active.in_conversation else None,
            "max_output_tokens": "inf",
            "usage": usage if final else None,
            "metadata": None,
        }
        fmt, voice = self.spec.output_format_config(session), self.spec.voice(session)
        if self.conn.dialect == "ga":
            return body | {
                "output_modalities": ["audio"],
                "audio": {"output": {"format": fmt, "voice": voice}},
            }
        return body | {"modalities": ["audio", "text"], "output_audio_format": fmt, "voice": voice}

    async def _run_response(self, active: ActiveResponse) -> None:
        record, reply = active.record, active.record.reply
        outputs: list[Event] = []
        try:
            await self.send(
                {"type": "response.created", "response": self._response(active, "in_progress", [], None)}
            )
            limits = [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
            ]
            await self.send({"type": "rate_limits.updated", "rate_limits": limits})
            unknown = reply.type if isinstance(reply, Unknown) else None
            if unknown is None and self.s.unknown_events:
                unknown = "response.future_feature.delta"
            if unknown:
                await self.unknown(unknown, response_id=record.id)
            details: Event | None = None
            if isinstance(reply, Fail):
                error = {"type": reply.type, "code": reply.code, "message": reply.message}
                details = {"type": "failed", "error": error}
            for output_index, part in enumerate(self._parts(reply)):
                if active.cancel.is_set():
                    break
                if isinstance(part, Say):
                    drop_after = reply.after_ms if isinstance(reply, Drop) else None
                    outputs.append(await self._say(active, part, output_index, drop_after, unknown))
                else:
                    outputs.append(await self._call(active, part, output_index))
            status = "failed" if details else "completed"
            if active.cancel_reason:
                status, details = "cancelled", {"type": "cancelled", "reason": active.cancel_reason}
            record.status, record.reason = status, active.cancel_reason
            self.active = None  # before response.done: the client may answer it at once
            await self.send(
                {"type": "response.done", "response": self._response(active, status, outputs, details)}
            )
            self.responses_done += 1
            if self.s.drop_after_responses is not None and self.responses_done >= self.s.drop_after_responses:
                await self.drop()
            self.after_response()
        except Dropped:
            record.status = "dropped"
        except ConnectionClosed:
            record.status = "interrupted"
        except asyncio.CancelledError:  # the connection is being torn down
            if record.status == "in_progress":
                record.status = "interrupted"
            raise
        finally:
            if self.active is active:
                self.active = None

    def after_response(self) -> None:
        """A response finished: the connection's failure knobs may set in now (see `ConnectionEngine`)."""

    @staticmethod
    def _parts(reply: Reply) -> list[Say | Call]:
        if isinstance(reply, Say | Call):
            return [reply]
        if isinstance(reply, Calls):
            return ([reply.preamble] if reply.preamble else []) + list(reply.calls)
        if isinstance(reply, Unknown | Drop):
            return [reply.say]
        return []

    async def _pace(self, active: ActiveResponse, started: float, sent_ms: float) -> None:
        if self.s.pace <= 0:
            await asyncio.sleep(0)
            return
        delay = started + sent_ms / 1000 * self.s.pace - asyncio.get_running_loop().time()
        if delay > 0 and not active.cancel.is_set():
            await active.pause(delay)

    async def _open_item(
        self, active: ActiveResponse, item: Event, output_index: int, bytes_per_ms: int = 0
    ) -> None:
        active.record.output_item_ids.append(item["id"])
        head = {"response_id": active.record.id, "output_index": output_index}
        await self.send({"type": "response.output_item.added", **head, "item": item})
        if active.in_conversation:
            await self.add_item(ConversationEntry(dict(item), bytes_per_ms), self.last_item_id)

    async def _close_item(self, active: ActiveResponse, item: Event, output_index: int) -> None:
        head = {"response_id": active.record.id, "output_index": output_index}
        await self.send({"type": "response.output_item.done", **head, "item": item})
        if active.in_conversation:
            await self.item_done(item)

    async def _say(
        self, active: ActiveResponse, say: Say, output_index: int, drop_after: int | None, unknown: str | None
    ) -> Event:
        fmt = self.spec.output_format(self.conn.session)
        item_id = self.s.new_id("item")
        item: Event = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant"}
        await self._open_item(
            active, item | {"status": "in_progress", "content": []}, output_index, fmt.bytes_per_ms
        )
        head = {
            "response_id": active.record.id,
            "item_id": item_id,
            "output_index": output_index,
            "content_index": 0,
        }
        await self.send(
            {"type": "response.content_part.added", **head, "part": {"type": "audio", "transcript": ""}}
        )
        audio = expected_audio(active.record.index, say.audio_ms, output_index=output_index, fmt=fmt)
        step = (say.delta_ms or self.s.delta_ms) * fmt.bytes_per_ms
        chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        words, said = split_words(say.text), []
        sent = self.conn.audio_sent.setdefault(item_id, bytearray())
        started = asyncio.get_running_loop().time()
        for k, chunk in enumerate(chunks):
            if active.cancel.is_set():
                break
            for word in words[len(words) * k // len(chunks) : len(words) * (k + 1) // len(chunks)]:
                await self.send({"type": "response.output_audio_transcript.delta", **head, "delta": word})
                said.append(word)
            await self.send(
                {"type": "response.output_audio.delta", **head, "delta": base64.b64encode(chunk).decode()}
            )
            sent.extend(chunk)
            if unknown and k % 3 == 1:
                await self.unknown(unknown, response_id=active.record.id, item_id=item_id)
            if drop_after is not None and len(sent) >= drop_after * fmt.bytes_per_ms:
                active.record.status = "dropped"  # before closing: the close may cancel this task
                await self.drop()
                raise Dropped
            await self._pace(active, started, len(sent) / fmt.bytes_per_ms)
        if not chunks and not active.cancel.is_set():
            for word in words:
                await self.send({"type": "response.output_audio_transcript.delta", **head, "delta": word})
                said.append(word)
        cancelled = active.cancel.is_set()
        transcript = "".join(said) if cancelled else say.text
        await self.send({"type": "response.output_audio.done", **head})
        await self.send({"type": "response.output_audio_transcript.done", **head, "transcript": transcript})
        part = {"type": "audio", "transcript": transcript}
        await self.send({"type": "response.content_part.done", **head, "part": part})
        content = [{"type": self.spec.content_type("output_audio"), "transcript": transcript}]
        final = item | {"status": "incomplete" if cancelled else "completed", "content": content}
        await self._close_item(active, final, output_index)
        return final

    async def _call(self, active: ActiveResponse, call: Call, output_index: int) -> Event:
        item_id, call_id, arguments = (
            self.s.new_id("item"),
            call.call_id or self.s.new_id("call"),
            call.arguments_json(),
        )
        item: Event = {"id": item_id, "object": "realtime.item", "type": "function_call"}
        item |= {"name": call.name, "call_id": call_id}
        self.call_ids.add(call_id)
        await self._open_item(active, item | {"status": "in_progress", "arguments": ""}, output_index)
        head = {
            "response_id": active.record.id,
            "item_id": item_id,
            "output_index": output_index,
            "call_id": call_id,
        }
        third = max(1, -(-len(arguments) // 3))
        for i in range(0, len(arguments), third):
            if active.cancel.is_set():
                break
            await self.send(
                {"type": "response.function_call_arguments.delta", **head, "delta": arguments[i : i + third]}
            )
            await asyncio.sleep(0)
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **head,
                "name": call.name,
                "arguments": arguments,
            }
        )
        status = "incomplete" if active.cancel.is_set() else "completed"
        final = item | {"status": status, "arguments": arguments}
        await self._close_item(active, final, output_index)
        return final
