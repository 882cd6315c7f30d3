"""Realtime protocol dialects, mapped in one place: GA (OpenAI, Azure v1) and preview (Azure api-version).

Inbound: preview event names are renamed to GA names, then every event becomes a neutral
`relay.sessions.events` value. Outbound: the bridge builds GA events; `session_update` renders
the session in the dialect's shape. See PROTOCOLS.md §2.1 and §2.5.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

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
    """One provider frame → one neutral event. Raises ValueError on malformed JSON only."""
    msg = orjson.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("provider event is not a JSON object")
    etype = msg.get("type")
    if not isinstance(etype, str):
        raise ValueError("provider event has no type")
    if dialect == "preview":
        etype = PREVIEW_TO_GA.get(etype, etype)
    return to_neutral(etype, msg)


def to_neutral(etype: str, msg: dict[str, Any]) -> ev.BackendEvent:
    """Maps one GA-named event to the neutral vocabulary."""
    if etype == "response.output_audio.delta":  # 50 a second per call: positional arguments
        return ev.AudioOut(
            msg.get("delta", ""),
            msg.get("item_id", ""),
            msg.get("response_id", ""),
            int(msg.get("content_index", 0) or 0),
        )
    if etype == "response.output_audio_transcript.delta":
        return ev.Transcript("assistant", msg.get("delta", ""), msg.get("item_id", ""), final=False)
    if etype == "response.output_audio_transcript.done":
        return ev.Transcript("assistant", msg.get("transcript", ""), msg.get("item_id", ""), final=True)
    if etype == "input_audio_buffer.speech_started":
        return ev.Interrupted(
            item_id=msg.get("item_id", ""), audio_start_ms=int(msg.get("audio_start_ms", 0))
        )
    if etype == "input_audio_buffer.speech_stopped":
        return ev.SpeechEnded(item_id=msg.get("item_id", ""), audio_end_ms=int(msg.get("audio_end_ms", 0)))
    if etype == "conversation.item.input_audio_transcription.completed":
        return ev.Transcript("user", msg.get("transcript", ""), msg.get("item_id", ""), final=True)
    if etype == "response.created":
        return ev.ResponseStarted(response_id=(msg.get("response") or {}).get("id", ""))
    if etype == "response.done":
        resp = msg.get("response") or {}
        details = resp.get("status_details") or {}
        return ev.ResponseDone(
            response_id=resp.get("id", ""),
            status=resp.get("status", "completed"),
            reason=details.get("reason", "") or "",
            error=details.get("error"),
        )
    if etype == "response.function_call_arguments.done":
        return ev.ToolCall(
            call_id=msg.get("call_id", ""),
            name=msg.get("name", ""),
            arguments=msg.get("arguments", "") or "",
            item_id=msg.get("item_id", ""),
            response_id=msg.get("response_id", ""),
        )
    if etype == "session.updated":
        return ev.SessionReady()
    if etype == "error":
        err = msg.get("error") or {}
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
