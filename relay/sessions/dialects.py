"""Realtime protocol dialects, mapped in one place: GA (OpenAI, Azure v1) and preview (Azure api-version).

Inbound: preview event names are renamed to GA names, then every event becomes a neutral
`relay.sessions.events` value. Outbound: the bridge builds GA events; `session_update` renders
the session in the dialect's shape. See PROTOCOLS.md §2.1 and §2.5.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from relay.errors import ProviderEventError
from relay.sessions import events as ev

Dialect = Literal["ga", "preview"]

PREVIEW_TO_GA: dict[str, str] = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
}

# Events the bridge reads nothing from; parsed cheaply into `Other` without a log line.
QUIET_EVENTS = frozenset(
    {
        "session.created",
        "rate_limits.updated",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.truncated",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
    }
)


def parse_event(data: str | bytes, dialect: Dialect) -> ev.BackendEvent:
    """One provider frame → one neutral event. Raises ProviderEventError (a ValueError) when the frame
    is not JSON, not an object, has no type, or a field the relay reads has the wrong type: a
    misbehaving provider's event is refused here, at the edge, never deep in the bridge core."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderEventError(f"not JSON ({exc})") from None
    if type(msg) is not dict:
        raise ProviderEventError(f"not a JSON object but {type(msg).__name__}")
    etype = msg.get("type")
    if type(etype) is not str:
        raise ProviderEventError("no string 'type'")
    if dialect == "preview":
        etype = PREVIEW_TO_GA.get(etype, etype)
    try:
        return to_neutral(etype, msg)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ProviderEventError(f"{etype[:60]}: {exc}") from None


def _str(msg: dict[str, Any], key: str, default: str = "") -> str:
    """A string field; absent or null is `default`, any other type is refused."""
    value = msg.get(key)
    if value is None:
        return default
    if type(value) is not str:
        raise ProviderEventError(f"'{key}' is {type(value).__name__}, not a string")
    return value


def _int(msg: dict[str, Any], key: str) -> int:
    """A non-negative integer field; absent or null is 0 (a bool or a float is refused)."""
    value = msg.get(key)
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ProviderEventError(f"'{key}' is {value!r}, not a non-negative integer")
    return value


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    """An object field; absent or null is empty, any other type is refused."""
    value = msg.get(key)
    if value is None:
        return {}
    if type(value) is not dict:
        raise ProviderEventError(f"'{key}' is {type(value).__name__}, not an object")
    return value


def _response_id(msg: dict[str, Any]) -> str:
    """`response.id`, which the core keys its response state on: required."""
    response_id = _str(_obj(msg, "response"), "id")
    if not response_id:
        raise ProviderEventError("'response.id' is missing")
    return response_id


def to_neutral(etype: str, msg: dict[str, Any]) -> ev.BackendEvent:
    """Maps one GA-named event to the neutral vocabulary; ProviderEventError on a wrong-typed field.

    Absent and null fields take their defaults (the service omits some); a field of another type
    is refused, so the bridge core only ever sees the types it was written for."""
    if etype == "response.output_audio.delta":  # 50 a second per call: inline checks, no helpers
        delta, item_id = msg.get("delta"), msg.get("item_id", "")
        if type(delta) is not str or type(item_id) is not str:
            raise ProviderEventError("an audio delta without a string 'delta' and 'item_id'")
        response_id = msg.get("response_id", "")
        index = msg.get("content_index", 0)
        if type(response_id) is not str or type(index) is not int:
            response_id, index = _str(msg, "response_id"), _int(msg, "content_index")
        return ev.AudioOut(delta, item_id, response_id, index)
    if etype == "response.output_audio_transcript.delta":
        return ev.Transcript("assistant", _str(msg, "delta"), _str(msg, "item_id"), final=False)
    if etype == "response.output_audio_transcript.done":
        return ev.Transcript("assistant", _str(msg, "transcript"), _str(msg, "item_id"), final=True)
    if etype == "input_audio_buffer.speech_started":
        return ev.Interrupted(item_id=_str(msg, "item_id"), audio_start_ms=_int(msg, "audio_start_ms"))
    if etype == "input_audio_buffer.speech_stopped":
        return ev.SpeechEnded(item_id=_str(msg, "item_id"), audio_end_ms=_int(msg, "audio_end_ms"))
    if etype == "conversation.item.input_audio_transcription.completed":
        return ev.Transcript("user", _str(msg, "transcript"), _str(msg, "item_id"), final=True)
    if etype == "response.created":
        return ev.ResponseStarted(response_id=_response_id(msg))
    if etype == "response.done":
        resp, response_id = _obj(msg, "response"), _response_id(msg)
        details = _obj(resp, "status_details")
        error = details.get("error")
        if error is not None and type(error) is not dict:
            raise ProviderEventError("'response.status_details.error' is not an object")
        return ev.ResponseDone(
            response_id=response_id,
            status=_str(resp, "status", "completed"),
            reason=_str(details, "reason"),
            error=error,
        )
    if etype == "response.function_call_arguments.done":
        call_id, name = _str(msg, "call_id"), _str(msg, "name")
        if not call_id or not name:
            raise ProviderEventError("a function call without 'call_id' or 'name'")
        return ev.ToolCall(
            call_id=call_id,
            name=name,
            arguments=_str(msg, "arguments"),
            item_id=_str(msg, "item_id"),
            response_id=_str(msg, "response_id"),
        )
    if etype == "session.updated":
        return ev.SessionReady()
    if etype == "error":
        err = _obj(msg, "error")
        return ev.ProviderFault(
            code=str(err.get("code") or err.get("type") or "error"),
            message=str(err.get("message", "")),
            type=str(err.get("type", "")),
            raw=msg,
        )
    return ev.Other(type=etype, raw=msg)


def session_update(session: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """Wraps a GA session config in `session.update`, rendered in the dialect's shape."""
    if dialect == "ga":
        return {"type": "session.update", "session": session}
    audio = session.get("audio", {})
    inp, out = audio.get("input", {}), audio.get("output", {})
    preview: dict[str, Any] = {
        "instructions": session.get("instructions", ""),
        "modalities": ["audio", "text"],
        "input_audio_format": "g711_ulaw",
        "output_audio_format": "g711_ulaw",
        "voice": out.get("voice"),
        "turn_detection": inp.get("turn_detection"),
        "tools": session.get("tools", []),
        "tool_choice": session.get("tool_choice", "auto"),
    }
    if inp.get("transcription"):
        preview["input_audio_transcription"] = inp["transcription"]
    if "noise_reduction" in inp:
        preview["input_audio_noise_reduction"] = inp["noise_reduction"]
    return {"type": "session.update", "session": {k: v for k, v in preview.items() if v is not None}}
