"""Building blocks of the fake Realtime server: scripted replies, audio, VAD, the two dialects, and
`ReplyEngine`, the half of a connection that speaks (events out, conversation, responses).

The GA and preview (beta) protocols differ in event names, session shape and content types
(PROTOCOLS.md §2.5). Everything that differs lives in `DialectSpec`, so the server itself speaks GA
names and asks its dialect for the wire name of each event.

Client events are validated against the openai SDK's own pydantic types (`openai.types.realtime`
for GA, `openai.types.beta.realtime` for preview). The SDK models accept unknown keys, so a second
pass reports any key the SDK does not know as `unknown_parameter`, like the real service does.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import orjson
import pydantic
from openai.types.beta.realtime.realtime_client_event import RealtimeClientEvent as BetaClientEvent
from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime.realtime_client_event import RealtimeClientEvent as GaClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaServerEvent
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    from relay.testing.realtime import FakeConnection, FakeRealtimeServer

Dialect = Literal["ga", "preview"]
Event = dict[str, Any]
logger = logging.getLogger("relay.testing.realtime")

__all__ = [
    "PCM16",
    "PCMA",
    "PCMU",
    "AudioFormat",
    "Call",
    "Calls",
    "ClientEventError",
    "ConversationEntry",
    "Dialect",
    "DialectSpec",
    "Drop",
    "Error",
    "Fail",
    "Reply",
    "ReplyEngine",
    "ResponseRecord",
    "Say",
    "SpeechDetector",
    "TurnDetection",
    "Unknown",
    "VadEvent",
    "dialect_spec",
    "expected_audio",
    "parse_server_event",
    "split_words",
]


# ---------------------------------------------------------------------------------------------------
# Scripted replies


@dataclass(frozen=True)
class Say:
    """A spoken assistant message: `audio_ms` of deterministic tone plus `text` as its transcript.

    `delta_ms` overrides the server's chunk size for this reply.
    """

    text: str = "Hello from the fake realtime server."
    audio_ms: int = 1000
    delta_ms: int | None = None


@dataclass(frozen=True)
class Call:
    """A function call output item. `arguments` may be a dict (sent as JSON) or a raw string."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None

    def arguments_json(self) -> str:
        """The arguments exactly as streamed in the `function_call_arguments` events."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True)
class Calls:
    """Several function calls in one response, optionally after a spoken preamble."""

    calls: Sequence[Call]
    preamble: Say | None = None


@dataclass(frozen=True)
class Error:
    """Answer `response.create` with a bare `error` event (no response is started)."""

    code: str
    message: str
    type: str = "invalid_request_error"


@dataclass(frozen=True)
class Fail:
    """A response that ends at once with `response.done` status `failed`."""

    code: str = "server_error"
    message: str = "The server had an error while processing your request."
    type: str = "server_error"


@dataclass(frozen=True)
class Unknown:
    """A spoken reply with events of a type no client can know woven in (after `response.created`
    and between audio chunks)."""

    type: str = "response.future_feature.delta"
    say: Say = field(default_factory=lambda: Say("Still here.", audio_ms=300))


@dataclass(frozen=True)
class Drop:
    """Start speaking `say`, then close the socket abruptly once `after_ms` of audio was sent."""

    after_ms: int = 200
    say: Say = field(default_factory=lambda: Say("This reply is cut off.", audio_ms=2000))


Reply = Say | Call | Calls | Error | Fail | Unknown | Drop


# ---------------------------------------------------------------------------------------------------
# Audio: G.711 tables (audioop is deprecated and warns on import), formats, the deterministic tone


def _ulaw_table() -> npt.NDArray[np.int32]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where((u & 0x80) != 0, 0x84 - magnitude, magnitude - 0x84).astype(np.int32)


def _alaw_table() -> npt.NDArray[np.int32]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where((a & 0x80) != 0, t, -t).astype(np.int32)


class _G711:
    """Decoding by table; encoding to the nearest level (ties go to the higher code, so 0 → 0xFF)."""

    def __init__(self, table: npt.NDArray[np.int32]) -> None:
        self.table = table
        self.squares = table.astype(np.int64) ** 2  # per code: the VAD's energy without float arrays
        order = np.lexsort((-np.arange(256), table))
        self._levels = table[order]
        self._codes = order.astype(np.uint8)

    def encode(self, samples: npt.NDArray[np.float64]) -> bytes:
        x = np.clip(np.rint(samples), -32768, 32767)
        idx = np.clip(np.searchsorted(self._levels, x), 1, 255)
        lo, hi = self._levels[idx - 1], self._levels[idx]
        pick = np.where(x - lo <= hi - x, idx - 1, idx)
        return bytes(self._codes[pick].tobytes())


_ULAW = _G711(_ulaw_table())
_ALAW = _G711(_alaw_table())


@dataclass(frozen=True)
class AudioFormat:
    """One wire audio format: μ-law or A-law at 8 kHz, or PCM16 little-endian at 24 kHz."""

    name: Literal["pcmu", "pcma", "pcm16"]
    rate: int
    sample_width: int

    @property
    def bytes_per_ms(self) -> int:
        """8 for G.711 at 8 kHz, 48 for PCM16 at 24 kHz."""
        return self.rate * self.sample_width // 1000

    def mean_square(self, data: bytes) -> float:
        """The mean of the squared linear samples (int16 scale): the energy VAD's measure, per 20 ms
        frame of every call, so it stays in integers (a table of squares for G.711)."""
        if self.name == "pcm16":
            samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int64)
            return float(np.dot(samples, samples)) / max(1, len(samples))
        squares = (_ULAW if self.name == "pcmu" else _ALAW).squares
        return float(squares[np.frombuffer(data, dtype=np.uint8)].sum()) / max(1, len(data))

    def encode(self, samples: npt.NDArray[np.float64]) -> bytes:
        """Wire bytes for linear samples (int16 scale)."""
        if self.name == "pcm16":
            return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
        return (_ULAW if self.name == "pcmu" else _ALAW).encode(samples)


PCMU = AudioFormat("pcmu", 8000, 1)
PCMA = AudioFormat("pcma", 8000, 1)
PCM16 = AudioFormat("pcm16", 24000, 2)
_FORMATS = {"pcmu": PCMU, "pcma": PCMA, "pcm16": PCM16}


def expected_audio(
    response_index: int,
    audio_ms: int,
    *,
    output_index: int = 0,
    start_ms: int = 0,
    fmt: AudioFormat | str = PCMU,
) -> bytes:
    """The exact audio the fake sends for a `Say` (or its slice from `start_ms`).

    `response_index` is the 0-based position of the reply in the server's script (replies of every
    connection count, defaults included: see `ResponseRecord.index`). The tone is 440 Hz plus
    55 Hz per index, with a slow tremolo and vibrato, computed from absolute sample positions so
    that any chunking gives the same bytes.
    """
    f = _FORMATS[fmt] if isinstance(fmt, str) else fmt
    per_ms = f.rate // 1000
    n = np.arange(start_ms * per_ms, (start_ms + audio_ms) * per_ms, dtype=np.float64)
    t = n / f.rate
    base = 440.0 + 55.0 * ((response_index + output_index) % 8)
    amplitude = 7000.0 + 2500.0 * np.sin(2 * np.pi * 2.5 * t)
    return f.encode(amplitude * np.sin(2 * np.pi * base * t + 0.8 * np.sin(2 * np.pi * 4.0 * t)))


def split_words(text: str) -> list[str]:
    """Transcript deltas: words with their trailing spaces, so that they join back to `text`."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


# ---------------------------------------------------------------------------------------------------
# Server VAD


@dataclass(frozen=True)
class TurnDetection:
    """The parts of a session's turn_detection that the fake acts on."""

    type: str = "server_vad"
    silence_duration_ms: int = 500
    prefix_padding_ms: int = 300
    create_response: bool = True
    interrupt_response: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TurnDetection:
        """`semantic_vad` is treated as server VAD with the default silence (an approximation)."""

        def pick(key: str, default: Any) -> Any:
            value = cfg.get(key)
            return default if value is None else value

        return cls(
            type=str(cfg.get("type") or "server_vad"),
            silence_duration_ms=int(pick("silence_duration_ms", 500)),
            prefix_padding_ms=int(pick("prefix_padding_ms", 300)),
            create_response=bool(pick("create_response", True)),
            interrupt_response=bool(pick("interrupt_response", True)),
        )


@dataclass(frozen=True)
class VadEvent:
    """Speech start (at the first loud frame) or stop (after the silence window), in stream ms."""

    kind: Literal["start", "stop"]
    ms: int


class SpeechDetector:
    """RMS energy VAD over 20 ms frames: speech is `min_speech_ms` of frames above the threshold."""

    FRAME_MS = 20

    def __init__(self, rms_threshold: float = 500.0, min_speech_ms: int = 60) -> None:
        self.rms_threshold = rms_threshold
        self.min_speech_ms = min_speech_ms
        self.position_ms = 0
        self.speaking = False
        self._pending = b""
        self._fmt: AudioFormat | None = None
        self._run_start: int | None = None
        self._run_ms = 0
        self._silence_ms = 0

    def reset(self) -> None:
        """Forget any speech in progress (buffer cleared or committed by hand)."""
        self.speaking = False
        self._run_start = None
        self._run_ms = 0
        self._silence_ms = 0

    def feed(self, data: bytes, fmt: AudioFormat, turn: TurnDetection | None) -> list[VadEvent]:
        """Advances the stream position; returns the VAD events (none when `turn` is None)."""
        if fmt != self._fmt:
            self._fmt, self._pending = fmt, b""
        buf = self._pending + data
        frame = fmt.bytes_per_ms * self.FRAME_MS
        events: list[VadEvent] = []
        whole = len(buf) - len(buf) % frame
        for off in range(0, whole, frame):
            start = self.position_ms
            self.position_ms += self.FRAME_MS
            if turn is None:
                self.reset()
                continue
            loud = fmt.mean_square(buf[off : off + frame]) > self.rms_threshold**2
            if not self.speaking:
                if not loud:
                    self._run_start, self._run_ms = None, 0
                    continue
                if self._run_start is None:
                    self._run_start = start
                self._run_ms += self.FRAME_MS
                if self._run_ms >= self.min_speech_ms:
                    self.speaking, self._silence_ms = True, 0
                    events.append(VadEvent("start", self._run_start))
            elif loud:
                self._silence_ms = 0
            else:
                self._silence_ms += self.FRAME_MS
                if self._silence_ms >= turn.silence_duration_ms:
                    self.reset()
                    events.append(VadEvent("stop", self.position_ms))
        self._pending = buf[whole:]
        return events


# ---------------------------------------------------------------------------------------------------
# SDK-based validation


class ClientEventError(Exception):
    """A client event the real service would refuse; becomes an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _members(union_alias: Any) -> dict[str, type[pydantic.BaseModel]]:
    union = get_args(union_alias)[0]  # Annotated[Union[...], PropertyInfo(discriminator="type")]
    out: dict[str, type[pydantic.BaseModel]] = {}
    for model in get_args(union):
        (literal,) = get_args(model.model_fields["type"].annotation)
        out[literal] = model
    return out


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "function", "nullable"}


def _param(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and not part[0].isupper() and "[" not in part and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


def _unknown_param(value: Any, path: str) -> str | None:
    if isinstance(value, pydantic.BaseModel):
        extra = value.__pydantic_extra__ or {}
        if extra:
            key = next(iter(extra))
            return f"{path}.{key}" if path else key
        for name, info in type(value).model_fields.items():
            key = info.alias or name
            found = _unknown_param(getattr(value, name), f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unknown_param(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _from_validation_error(exc: pydantic.ValidationError) -> ClientEventError:
    errors = exc.errors()
    err = errors[0]
    param = _param(err["loc"])
    kind = err["type"]
    if kind == "missing":
        return ClientEventError(
            "missing_required_parameter", f"Missing required parameter: '{param}'.", param
        )
    if kind in ("literal_error", "enum"):
        # A union reports one error per member: gather what every member would have accepted.
        expected = [
            str(e.get("ctx", {}).get("expected", ""))
            for e in errors
            if e["type"] in ("literal_error", "enum") and _param(e["loc"]) == param
        ]
        supported = ", ".join(dict.fromkeys(x for x in expected if x))
        return ClientEventError(
            "invalid_value", f"Invalid value: {err['input']!r}. Supported values are: {supported}.", param
        )
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return ClientEventError("invalid_type", f"Invalid type for '{param}': {err['msg']}.", param)
    return ClientEventError("invalid_value", f"Invalid value for '{param}': {err['msg']}.", param)


# ---------------------------------------------------------------------------------------------------
# Dialects

_PREVIEW_EVENT_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
_PREVIEW_CONTENT_TYPES = {"output_audio": "audio", "output_text": "text"}
_GA_FORMATS = {"audio/pcmu": PCMU, "audio/pcma": PCMA, "audio/pcm": PCM16}
_PREVIEW_FORMATS = {"g711_ulaw": PCMU, "g711_alaw": PCMA, "pcm16": PCM16}
_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}


class DialectSpec:
    """Everything that differs between the GA and the preview (beta) protocol, in one place."""

    def __init__(self, name: Dialect) -> None:
        self.name = name
        ga = name == "ga"
        self.client_models = _members(GaClientEvent if ga else BetaClientEvent)
        self.server_models = _members(GaServerEvent if ga else BetaServerEvent)

    # -- names ----------------------------------------------------------------------------------
    def event(self, ga_type: str) -> str:
        """The wire name of a server event given by its GA name."""
        return ga_type if self.name == "ga" else _PREVIEW_EVENT_NAMES.get(ga_type, ga_type)

    def content_type(self, ga_type: str) -> str:
        """`output_audio` → `audio` in preview, and so on."""
        return ga_type if self.name == "ga" else _PREVIEW_CONTENT_TYPES.get(ga_type, ga_type)

    @property
    def item_added_events(self) -> tuple[str, ...]:
        """Sent when an item enters the conversation (UNVERIFIED: GA sends no `.created`)."""
        return ("conversation.item.added",) if self.name == "ga" else ("conversation.item.created",)

    @property
    def item_done_events(self) -> tuple[str, ...]:
        """Sent when an item is complete; the beta protocol has no `conversation.item.done`."""
        return ("conversation.item.done",) if self.name == "ga" else ()

    # -- sessions -------------------------------------------------------------------------------
    def default_session(self, model: str, session_id: str) -> dict[str, Any]:
        """The session in `session.created` (the real defaults: PCM16 24 kHz, server VAD on)."""
        common: dict[str, Any] = {"id": session_id, "object": "realtime.session", "model": model}
        if self.name == "ga":
            pcm = {"type": "audio/pcm", "rate": 24000}
            return common | {
                "type": "realtime",
                "expires_at": int(time.time()) + 3600,
                "output_modalities": ["audio"],
                "instructions": "",
                "audio": {
                    "input": {
                        "format": dict(pcm),
                        "transcription": None,
                        "noise_reduction": None,
                        "turn_detection": dict(_VAD_DEFAULTS, idle_timeout_ms=None),
                    },
                    "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
                },
                "tools": [],
                "tool_choice": "auto",
                "max_output_tokens": "inf",
                "tracing": None,
                "prompt": None,
                "include": None,
            }
        return common | {
            "modalities": ["audio", "text"],
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "input_audio_noise_reduction": None,
            "turn_detection": dict(_VAD_DEFAULTS),
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "speed": 1.0,
            "tracing": None,
        }

    def merge_session(self, current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
        """Top-level keys replace; GA `audio.input` / `audio.output` merge key by key (UNVERIFIED)."""
        merged = copy.deepcopy(dict(current))
        for key, value in update.items():
            if self.name == "ga" and key == "audio" and isinstance(value, Mapping):
                audio = merged.get("audio") if isinstance(merged.get("audio"), dict) else {}
                assert isinstance(audio, dict)
                for side, cfg in value.items():
                    if isinstance(cfg, Mapping) and isinstance(audio.get(side), dict):
                        audio[side].update(copy.deepcopy(dict(cfg)))
                    else:
                        audio[side] = copy.deepcopy(cfg)
                merged["audio"] = audio
            else:
                merged[key] = copy.deepcopy(value)
        return merged

    def _audio(self, session: Mapping[str, Any], side: str) -> Mapping[str, Any]:
        audio = session.get("audio") or {}
        return audio.get(side) or {}

    def input_format(self, session: Mapping[str, Any]) -> AudioFormat:
        """The caller-audio format the session declares."""
        if self.name == "ga":
            fmt = self._audio(session, "input").get("format") or {}
            return _GA_FORMATS.get(fmt.get("type") or "audio/pcm", PCM16)
        return _PREVIEW_FORMATS.get(session.get("input_audio_format") or "pcm16", PCM16)

    def output_format(self, session: Mapping[str, Any]) -> AudioFormat:
        """The assistant-audio format the session declares."""
        if self.name == "ga":
            fmt = self._audio(session, "output").get("format") or {}
            return _GA_FORMATS.get(fmt.get("type") or "audio/pcm", PCM16)
        return _PREVIEW_FORMATS.get(session.get("output_audio_format") or "pcm16", PCM16)

    def output_format_config(self, session: Mapping[str, Any]) -> Any:
        """The output format as the session spells it (for `response.created`)."""
        if self.name == "ga":
            return self._audio(session, "output").get("format")
        return session.get("output_audio_format")

    def turn_detection(self, session: Mapping[str, Any]) -> TurnDetection | None:
        """None when turn detection is off (`turn_detection: null`)."""
        cfg = (
            self._audio(session, "input").get("turn_detection")
            if self.name == "ga"
            else session.get("turn_detection")
        )
        return TurnDetection.from_config(cfg) if isinstance(cfg, Mapping) else None

    def transcription_enabled(self, session: Mapping[str, Any]) -> bool:
        """Input transcription events are only sent when the session asks for them."""
        if self.name == "ga":
            return self._audio(session, "input").get("transcription") is not None
        return session.get("input_audio_transcription") is not None

    def voice(self, session: Mapping[str, Any]) -> Any:
        """The configured voice."""
        return self._audio(session, "output").get("voice") if self.name == "ga" else session.get("voice")

    # -- validation -----------------------------------------------------------------------------
    def validate_client_event(self, event: Mapping[str, Any]) -> None:
        """Raises `ClientEventError` unless the SDK's own type for this event accepts it exactly."""
        kind = event.get("type")
        model = self.client_models.get(kind) if isinstance(kind, str) else None
        if model is None:
            supported = ", ".join(f"'{k}'" for k in sorted(self.client_models))
            raise ClientEventError(
                "invalid_value", f"Invalid value: {kind!r}. Supported values are: {supported}.", "type"
            )
        try:
            parsed = model.model_validate(dict(event))
        except pydantic.ValidationError as exc:
            raise _from_validation_error(exc) from None
        unknown = _unknown_param(parsed, "")
        if unknown:
            raise ClientEventError("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown)

    def check_session_update(
        self, update: Mapping[str, Any], current: Mapping[str, Any], audio_was_sent: bool
    ) -> None:
        """Checks the SDK types cannot express (all messages UNVERIFIED)."""
        if self.name == "ga" and update.get("type") != "realtime":
            raise ClientEventError(
                "invalid_value",
                "Passing a transcription session update event to a realtime session is not allowed.",
                "session.type",
            )
        modalities_key = "output_modalities" if self.name == "ga" else "modalities"
        modalities = update.get(modalities_key)
        if self.name == "ga" and modalities is not None and sorted(modalities) not in (["audio"], ["text"]):
            raise ClientEventError(
                "invalid_value",
                f"Invalid modalities: {modalities}. Supported combinations are: ['text'] and ['audio'].",
                f"session.{modalities_key}",
            )
        for i, tool in enumerate(update.get("tools") or []):
            if (
                isinstance(tool, Mapping)
                and tool.get("type", "function") == "function"
                and not tool.get("name")
            ):
                param = f"session.tools[{i}].name"
                raise ClientEventError(
                    "missing_required_parameter", f"Missing required parameter: '{param}'.", param
                )
        new_voice = self.voice(self.merge_session(current, update))
        if audio_was_sent and new_voice != self.voice(current):
            raise ClientEventError(
                "invalid_value",
                "Cannot update a conversation's voice if assistant audio is present.",
                "session.audio.output.voice" if self.name == "ga" else "session.voice",
            )


_SPECS = {"ga": DialectSpec("ga"), "preview": DialectSpec("preview")}


def dialect_spec(name: Dialect) -> DialectSpec:
    """The shared `DialectSpec` for `"ga"` or `"preview"`."""
    return _SPECS[name]


def parse_server_event(dialect: Dialect, event: Mapping[str, Any]) -> pydantic.BaseModel:
    """Validates a server event against the SDK's server event union of the dialect.

    Raises `KeyError` for an event type the SDK does not know, `pydantic.ValidationError` for a
    known type with a wrong shape. Tests use it to prove the fake only speaks the real protocol.
    """
    return _SPECS[dialect].server_models[str(event["type"])].model_validate(dict(event))


# ---------------------------------------------------------------------------------------------------
# Responses: the speaking half of a connection


@dataclass
class ResponseRecord:
    """One response the fake started. `index` is the reply's position in the server's script."""

    id: str
    index: int
    reply: Reply
    trigger: Literal["client", "vad"]
    params: Mapping[str, Any]
    status: str = "in_progress"  # then completed | cancelled | failed | dropped | interrupted
    reason: str | None = None
    output_item_ids: list[str] = field(default_factory=list)


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
        per audio chunk of every call (asyncio.timeout around `cancel.wait()` cost twice as much)."""
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
    conversation registry and streams scripted replies as responses. `realtime._Engine` adds the
    listening half (client events, VAD)."""

    def __init__(self, server: FakeRealtimeServer, conn: FakeConnection, ws: ServerConnection) -> None:
        self.s, self.conn, self.ws = server, conn, ws
        self.spec = dialect_spec(conn.dialect)
        self.active: ActiveResponse | None = None
        self.items: dict[str, ConversationEntry] = {}
        self.call_ids: set[str] = set()
        self.last_item_id: str | None = None
        self.responses_done = 0
        self.conversation_id = server.new_id("conv")

    # -- plumbing -------------------------------------------------------------------------------
    async def send(self, event: Event, *, raw: bool = False) -> None:
        """Sends one server event (GA type names are mapped to the dialect unless `raw`)."""
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
