"""The neutral vocabulary both paths speak: what a speech backend tells the call.

The realtime bridge translates provider events into these; the cascade produces the same ones.
Twilio-side code never sees a provider's event names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class SessionReady:
    """The backend accepted its configuration."""


@dataclass(slots=True)  # not frozen: made 50 times a second per call, and a frozen __init__ is slower
class AudioOut:
    """A chunk of agent audio: base64 μ-law 8 kHz, ready for a Twilio `media` message."""

    payload: str
    item_id: str
    response_id: str = ""
    content_index: int = 0


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The caller started speaking (barge-in trigger)."""

    item_id: str = ""
    audio_start_ms: int = 0


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The caller stopped speaking; a response will follow when the backend creates one itself."""

    item_id: str = ""
    audio_end_ms: int = 0


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str = "completed"  # completed | cancelled | failed | incomplete
    reason: str = ""
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str
    item_id: str = ""
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class Transcript:
    """Text of what was said: the caller's (final) or the agent's (delta or final)."""

    role: Literal["user", "assistant"]
    text: str
    item_id: str = ""
    final: bool = True


@dataclass(frozen=True, slots=True)
class ProviderFault:
    """An `error` event from the backend. It never ends the call by itself."""

    code: str
    message: str
    type: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Other:
    """An event the relay does not act on (logged once per type)."""

    type: str
    raw: dict[str, Any] = field(default_factory=dict)


BackendEvent = (
    SessionReady
    | AudioOut
    | Interrupted
    | SpeechEnded
    | ResponseStarted
    | ResponseDone
    | ToolCall
    | Transcript
    | ProviderFault
    | Other
)
