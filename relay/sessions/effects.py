"""What a call's sessions ask of the call around them: typed effects, handled in one place
(`relay.sessions.call_run.CallRun.apply`).

The realtime core and the cascade emit the same effects; tools add hang-up and transfer through
`relay.tools.CallControl`, which turns them into effects too. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from relay.sessions import events as ev

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class RunTool:
    """The model called a tool; its output goes back through `CallSession.tool_finished`."""

    call: ev.ToolCall


@dataclass(frozen=True, slots=True)
class SaveTurn:
    """A turn of the conversation as the caller heard it (an agent turn cut at what was heard)."""

    role: Role
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller spoke over the agent: its audio was cleared at Twilio at `at` (the session's
    clock), after the caller had heard `heard_ms` of the answer being played (0: none of it)."""

    at: float = 0.0
    heard_ms: int = 0


@dataclass(frozen=True, slots=True)
class Truncated:
    """An agent item was cut at `audio_end_ms`, what the caller heard of it."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class Fault:
    """The provider reported an error event (the call goes on)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """The provider ended its session (its time cap): the realtime shell opens a new one."""


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """A response of the model finished generating (its audio may still be playing)."""

    response_id: str
    status: str = "completed"
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PlaybackIdle:
    """Twilio has played every agent audio sent so far."""


@dataclass(frozen=True, slots=True)
class HoldStarted:
    """A slow tool: the hold tone started."""


@dataclass(frozen=True, slots=True)
class PrebufferDropped:
    """The provider was slow to open: the oldest `frames` of the caller's first audio were dropped."""

    frames: int


@dataclass(frozen=True, slots=True)
class HangUp:
    """A tool asked to end the call once the model's next response (the goodbye) has played."""

    reason: str
    after_response: str  # the response whose tool call asked: the goodbye is a later one


@dataclass(frozen=True, slots=True)
class Transfer:
    """A tool asked to replace the call's TwiML (e.g. `<Dial>`) once the model's next response
    ("connecting you now") has played."""

    twiml: str
    after_response: str


@dataclass(frozen=True, slots=True)
class SendDigits:
    """A tool asked to play DTMF tones to the other side."""

    digits: str


Effect = (
    RunTool
    | SaveTurn
    | BargeIn
    | Truncated
    | Fault
    | SessionExpired
    | ResponseDone
    | PlaybackIdle
    | HoldStarted
    | PrebufferDropped
    | HangUp
    | Transfer
    | SendDigits
)
