"""Twilio Media Streams messages: typed, parsed leniently, serialized fast.

Sans-I/O: text in, typed values out; values in, text out. Numbers arrive as strings and are
converted here. An event name we do not know becomes `Unknown` instead of an exception, so a new
Twilio release cannot break calls. Malformed input raises `ProtocolError` with a precise message.

The media payload is kept as the base64 text Twilio sent: the realtime path forwards it to the
provider without decoding. It is still checked to be valid base64 (one pass in C; the decoded bytes
are dropped).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.errors import ProtocolError

MAX_MESSAGE_BYTES = 64 * 1024
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
BYTES_PER_MS = 8


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str = "Call"
    version: str = ""


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str = ""
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


# Not frozen: made 50 times a second per call, and a frozen __init__ sets each field through
# object.__setattr__.
@dataclass(slots=True)
class Media:
    payload: str  # base64 μ-law, as received
    timestamp: int  # ms since stream start
    chunk: int = 0
    track: str = "inbound"
    size: int = 0  # decoded byte count


@dataclass(slots=True)  # not frozen: on the audio path (see Media)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    call_sid: str = ""


@dataclass(frozen=True, slots=True)
class Unknown:
    event: str
    raw: dict[str, Any]


TwilioEvent = Connected | Start | Media | Mark | Dtmf | Stop | Unknown


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"field {name!r} is not a number: {str(value)[:40]!r}") from None


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{msg.get('event')!r} message lacks its {key!r} object")
    return value


def base64_size(payload: str) -> int:
    """Decoded length of a base64 string, validating it; raises ProtocolError when malformed."""
    try:
        return len(binascii.a2b_base64(payload, strict_mode=True))
    except (binascii.Error, ValueError):
        raise ProtocolError("media payload is not valid base64") from None


def b64_len(payload: str) -> int:
    """Decoded size of base64 we produced or already checked, without decoding it (see base64_size)."""
    n = len(payload)
    return n * 3 // 4 - (payload.endswith("=") + payload.endswith("=="))


def parse_message(text: str | bytes) -> TwilioEvent:
    """Parses one Media Streams text frame. Raises ProtocolError for malformed input."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(text)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("message is not a JSON object")
    event = msg.get("event")
    if event == "media":
        media = _obj(msg, "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise ProtocolError("media message has no payload string")
        return Media(  # positional: cheaper to bind than keywords, 50 times a second per call
            payload,
            _int(media.get("timestamp", 0), "timestamp"),
            _int(media.get("chunk", 0), "chunk"),
            str(media.get("track", "inbound")),
            base64_size(payload),
        )
    if event == "mark":
        name = _obj(msg, "mark").get("name")
        if not isinstance(name, str):
            raise ProtocolError("mark message has no name")
        return Mark(name=name)
    if event == "start":
        start = _obj(msg, "start")
        fmt = start.get("mediaFormat") or {}
        params = start.get("customParameters") or {}
        tracks = start.get("tracks") or ["inbound"]
        stream_sid = start.get("streamSid") or msg.get("streamSid")
        call_sid = start.get("callSid")
        if not isinstance(stream_sid, str) or not isinstance(call_sid, str):
            raise ProtocolError("start message lacks streamSid or callSid")
        if not isinstance(params, dict):
            raise ProtocolError("start.customParameters is not an object")
        if not isinstance(fmt, dict):
            raise ProtocolError("start.mediaFormat is not an object")
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise ProtocolError("start.tracks is not a list of track names")
        return Start(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=str(start.get("accountSid", "")),
            tracks=tuple(tracks),
            custom_parameters={str(k): str(v) for k, v in params.items()},
            encoding=str(fmt.get("encoding", "audio/x-mulaw")),
            sample_rate=_int(fmt.get("sampleRate", 8000), "sampleRate"),
            channels=_int(fmt.get("channels", 1), "channels"),
        )
    if event == "connected":
        return Connected(protocol=str(msg.get("protocol", "")), version=str(msg.get("version", "")))
    if event == "stop":
        stop = msg.get("stop") or {}
        return Stop(call_sid=str(stop.get("callSid", "")) if isinstance(stop, dict) else "")
    if event == "dtmf":
        return Dtmf(digit=str(_obj(msg, "dtmf").get("digit", "")))
    if not isinstance(event, str):
        raise ProtocolError("message has no 'event' field")
    return Unknown(event=event, raw=msg)


# --- outbound ---------------------------------------------------------------------------------
# Hand-built JSON: SIDs and marks are ours or Twilio's (no characters needing escapes are
# produced by either), payloads are base64. orjson is used where a value could need escaping.


def media_message(stream_sid: str, payload_b64: str) -> str:
    return '{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"' + payload_b64 + '"}}'


def mark_message(stream_sid: str, name: str) -> str:
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear_message(stream_sid: str) -> str:
    return '{"event":"clear","streamSid":"' + stream_sid + '"}'
