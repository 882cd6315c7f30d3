"""The two dialects of the fake Realtime server, and client-event validation.

The GA and preview (beta) protocols differ in event names, session shape and content types
(PROTOCOLS.md §2.5). Everything that differs lives in `DialectSpec`, so the server itself speaks GA
names and asks its dialect for the wire name of each event.

Client events are validated against the openai SDK's own pydantic types (`openai.types.realtime`
for GA, `openai.types.beta.realtime` for preview). The SDK models accept unknown keys, so a second
pass reports any key the SDK does not know as `unknown_parameter`, like the real service does.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import pydantic
from openai.types.beta.realtime.realtime_client_event import RealtimeClientEvent as BetaClientEvent
from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime.realtime_client_event import RealtimeClientEvent as GaClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaServerEvent

from relay.testing.realtime_audio import PCM16, PCMA, PCMU, AudioFormat, TurnDetection

Dialect = Literal["ga", "preview"]

__all__ = [
    "ClientEventError",
    "Dialect",
    "DialectSpec",
    "dialect_spec",
    "parse_server_event",
]


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


@functools.cache
def _field_keys(model: type[pydantic.BaseModel]) -> tuple[tuple[str, str], ...]:
    """(attribute, wire name) of a model's fields: `model_fields` is rebuilt on every access, and
    every appended audio frame of every call is checked."""
    return tuple((name, info.alias or name) for name, info in model.model_fields.items())


def _unknown_param(value: Any, path: str) -> str | None:
    if isinstance(value, pydantic.BaseModel):
        extra = value.__pydantic_extra__ or {}
        if extra:
            key = next(iter(extra))
            return f"{path}.{key}" if path else key
        for name, key in _field_keys(type(value)):
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
