"""The listening half of one fake Realtime connection: `ConnectionEngine` reads each client event,
validates it against the connection's dialect, and acts on it (session updates, input audio and its
VAD, conversation items, response create and cancel), with the connection's failure knobs (freeze,
flood, session expiry). `ReplyEngine` (relay.testing.realtime_script) is the speaking half.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.testing.realtime_audio import PCM16, AudioFormat, SpeechDetector, TurnDetection
from relay.testing.realtime_connection import FakeConnection, InvalidEvent, TruncateRecord
from relay.testing.realtime_dialects import ClientEventError
from relay.testing.realtime_replies import Event
from relay.testing.realtime_script import ConversationEntry, ReplyEngine

if TYPE_CHECKING:
    from relay.testing.realtime import FakeRealtimeServer

__all__ = ["ConnectionEngine"]

logger = logging.getLogger("relay.testing.realtime")


class ConnectionEngine(ReplyEngine):
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
