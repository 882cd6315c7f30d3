"""The events the relay sends to a realtime provider, as ready-to-send JSON text.

The same in the GA and preview dialects (`relay.sessions.dialects` maps the session update). The
audio append is built by hand: it is sent 50 times a second per call and carries Twilio's base64
payload as it came.
"""

from __future__ import annotations

from typing import Any

import orjson

AUDIO_APPEND = '{"type":"input_audio_buffer.append"'  # how every `append_event` starts
RESPONSE_CREATE = '{"type":"response.create"}'
RESPONSE_CANCEL = '{"type":"response.cancel"}'


def append_event(payload: str) -> str:
    return AUDIO_APPEND + ',"audio":"' + payload + '"}'


def opening_events(session_update: dict[str, Any], greeting: str | None) -> list[str]:
    """A new session's first events: its configuration, then the greeting's `response.create` when
    there is one. The same for every call of a process (settings, tools, dialect), so an early
    connection can be sent them before its call's stream exists."""
    events = [orjson.dumps(session_update).decode()]
    if greeting:
        events.append(response_event({"instructions": greeting}))
    return events


def update_without_voice(session_update: dict[str, Any]) -> str:
    """`session_update` (a `session.update` of either dialect) without its voice, for a session
    that has spoken already: a realtime session's voice cannot change once it has produced audio."""
    session = dict(session_update.get("session") or {})
    session.pop("voice", None)  # preview
    audio = session.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("output"), dict):  # GA
        output = {k: v for k, v in audio["output"].items() if k != "voice"}
        session["audio"] = {**audio, "output": output}
    return orjson.dumps({**session_update, "session": session}).decode()


def update_without_auto_responses(session_update: dict[str, Any]) -> str | None:
    """A `session.update` that keeps the session's turn detection (from `session_update`, in either
    dialect) but stops it from starting or interrupting responses by itself: once the agent's
    last words are on their way (a voicemail message), nothing the other side plays starts
    another answer. None when the session has no turn detection."""
    session = session_update.get("session") or {}
    if "audio" in session:  # GA
        turn = ((session.get("audio") or {}).get("input") or {}).get("turn_detection")
        quiet = {**turn, "create_response": False, "interrupt_response": False} if turn else None
        update: dict[str, Any] = {
            "type": session.get("type", "realtime"),
            "audio": {"input": {"turn_detection": quiet}},
        }
    else:  # preview
        turn = session.get("turn_detection")
        quiet = {**turn, "create_response": False, "interrupt_response": False} if turn else None
        update = {"turn_detection": quiet}
    if quiet is None:
        return None
    return orjson.dumps({"type": "session.update", "session": update}).decode()


def response_event(response: dict[str, Any] | None) -> str:
    """`response.create`, with the response's own settings (e.g. instructions) when given."""
    if not response:
        return RESPONSE_CREATE
    return orjson.dumps({"type": "response.create", "response": response}).decode()


def truncate_event(item_id: str, audio_end_ms: int) -> str:
    event = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
    return orjson.dumps({**event, "audio_end_ms": audio_end_ms}).decode()


def delete_event(item_id: str) -> str:
    return orjson.dumps({"type": "conversation.item.delete", "item_id": item_id}).decode()


def text_item_event(role: str, text: str, *, dialect: str = "ga") -> str:
    """A message of the conversation: the caller's (`input_text`) or the agent's (`output_text` in
    GA, `text` in preview)."""
    kind = "input_text" if role == "user" else ("output_text" if dialect == "ga" else "text")
    item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()


def tool_output_event(call_id: str, output: str) -> str:
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return orjson.dumps({"type": "conversation.item.create", "item": item}).decode()
