"""What a tool sees of the call (`ToolContext`, `CallControl`) and what a function call is on the
way in (`ToolCallRequest`) and out (`ToolResult`, with its bounded audit entry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from relay.tools.bounds import audit_arguments, truncate

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.tools.twilio_rest import TwilioCalls

__all__ = ["CallControl", "Outcome", "ToolCallRequest", "ToolContext", "ToolResult"]

Outcome = Literal["ok", "error", "timeout", "invalid_arguments", "unknown_tool"]


@runtime_checkable
class CallControl(Protocol):
    """What a tool may ask of the live call. The call implements it (each request becomes an
    effect the call carries out, on either path).

    Both methods return at once: the model speaks its goodbye (or "connecting you now") *after* it
    receives the tool's output, so the call acts once that audio has played.
    """

    async def hang_up_after_playback(self, reason: str) -> None:
        """End the call once the audio of the model's next response (the goodbye) has played."""
        ...

    async def transfer(self, twiml: str) -> None:
        """Replace the call's TwiML with `twiml` (e.g. `<Dial>`) once the audio of the model's next
        response has played.

        The Media Stream ends when Twilio runs the new TwiML.
        """
        ...

    async def send_digits(self, digits: str) -> None:
        """Play `digits` (0-9, *, #, A-D) as DTMF tones to the other side, after the audio queued
        before them (e.g. to choose in a phone menu). Returns once they are queued."""
        ...

    async def handoff(self, agent: str, reason: str) -> bool:
        """Move the call to the agent named `agent` (one of the current agent's `handoffs`), the
        conversation so far kept. True when the tool's output still goes to the model (the same
        realtime session, updated in place, or the cascade), False when a new session took over
        (another provider or region) and will speak first. ToolError when the agent may not
        take the call."""
        ...


@dataclass(slots=True)
class ToolContext:
    """Everything a handler gets besides its arguments: the call, settings and call control."""

    call_sid: str
    stream_sid: str
    settings: Settings
    control: CallControl
    twilio: TwilioCalls | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A function call from the model; `arguments` is the model's JSON string, unparsed."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The output for the model plus what the call record keeps about the call."""

    call_id: str
    name: str
    output: str
    ok: bool
    outcome: Outcome
    duration_ms: float
    output_bytes: int
    arguments: dict[str, Any] | str
    truncated_bytes: int = 0

    def audit(self) -> dict[str, Any]:
        """The call record's entry for this tool call: bounded (arguments truncated with a marker,
        the output by its size only), whatever the model sent."""
        return {
            "call_id": truncate(self.call_id, 64),
            "name": truncate(self.name, 64),
            "arguments": audit_arguments(self.arguments),
            "outcome": self.outcome,
            "duration_ms": round(self.duration_ms, 1),
            "output_bytes": self.output_bytes,
            "truncated_bytes": self.truncated_bytes,
        }
