"""What a call's session is, seen from the call around it: the `CallSession` protocol both the
realtime and the cascade sessions implement, the `TwilioSink` they talk to the caller through,
and the figures they keep (`CallStats`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relay.sessions.effects import Effect, Role
from relay.twilio_messages import Media, TwilioEvent

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.sessions.providers import ProviderAdapter
    from relay.sessions.realtime_setup import Opening

Turn = tuple[Role, str]  # (role, text) the caller heard: the history a new session is given
EffectSink = Callable[[Effect], None]


class TwilioSink(Protocol):
    """The caller's side of a call, as a session uses it (`relay.media_stream.TwilioStream`):
    valid Twilio events in, ready-made JSON messages out, in the order `send` was called."""

    async def receive(self) -> TwilioEvent | None:
        """The next valid event; None once the stream has ended."""
        ...

    async def send(self, text: str) -> None:
        """Sends one message to Twilio; later calls never overtake it."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Lets queued messages go out, then ends the stream (the call's, not a session's, to call)."""
        ...


@dataclass
class CallStats:
    """Per-call figures the manager turns into metrics and the record."""

    connect_ms: float | None = None
    first_audio_ms: float | None = None
    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    truncates: int = 0
    reconnects: int = 0
    prebuffer_dropped: int = 0
    bad_events: int = 0  # provider events that did not parse or had wrong types (dropped)
    heartbeats: int = 0  # heartbeats sent to a quiet provider
    faults: list[str] = field(default_factory=list)
    response_latencies_ms: list[float] = field(default_factory=list)  # VAD's end of turn → agent audio
    # per turn, (the caller's end of speech, the first agent audio sent to Twilio) on the monotonic
    # clock: the end of speech is the VAD's, less its silence window and the audio the provider had
    # not heard yet (`turn_latencies_ms`; the turn's span)
    turn_times: list[tuple[float, float]] = field(default_factory=list)
    # per turn, the same end of speech → the moment Twilio started playing the answer (its first
    # mark echo, less the audio that mark covered)
    heard_latencies_ms: list[float] = field(default_factory=list)
    path: str = ""  # "realtime" or "cascade": the session that kept these figures
    turn_timings: list[dict[str, float]] = field(default_factory=list)  # cascade hops, per turn

    @property
    def turn_latencies_ms(self) -> list[float]:
        """Per turn, the caller's end of speech → the first agent audio sent to Twilio."""
        return [(end - start) * 1000 for start, end in self.turn_times]

    def record(self) -> dict[str, Any]:
        """The figures as the call's record keeps them: the turns' latencies, not their clock
        readings."""
        fields = {name: value for name, value in vars(self).items() if name != "turn_times"}
        return {**fields, "turn_latencies_ms": self.turn_latencies_ms}


@dataclass(frozen=True, slots=True)
class AgentSwitch:
    """A handoff as a session takes it: the new agent's settings (its texts filled for the call),
    the adapter that serves it on the session's path, its realtime opening and its chat tools.
    `reconnect`: the realtime session must move to a new connection (another provider, region or
    key); otherwise it is updated in place."""

    settings: Settings
    adapter: ProviderAdapter
    opening: Opening
    chat_tools: list[dict[str, Any]]
    reconnect: bool


class CallSession(Protocol):
    """One way of serving a call (realtime or cascade). It reads the caller through its
    `TwilioSink`, reports what happens as effects (`relay.sessions.effects`), and is told the
    outcome of the tools it asked for."""

    stats: CallStats

    @property
    def playing(self) -> bool:
        """True while agent audio is queued at Twilio or about to be."""
        ...

    async def run(self) -> str:
        """Serves the call until Twilio ends it; returns how ('twilio_stop', 'twilio_closed').
        Raises ProviderError when the provider fails and cannot be reopened."""
        ...

    async def hold(self) -> None:
        """A tool is taking a while: let the caller hear the hold tone."""
        ...

    async def say(self, text: str, *, last: bool = False) -> None:
        """Interrupts the agent and says `text` word for word. `last`: the call's last words (a
        voicemail message): nothing the other side says or plays interrupts them or gets an
        answer after them."""
        ...

    async def play(self, ulaw: bytes, label: str) -> None:
        """Plays audio of the relay's own (not the model's) to the caller, after what is queued;
        `label` names it among the call's playback items (e.g. `dtmf:1`)."""
        ...

    async def tool_finished(self, call_id: str, output: str) -> None:
        """The output of a tool the session asked for (`RunTool`)."""
        ...

    def unheard_audio(self) -> list[Media]:
        """The caller's latest frames its provider may never have heard (for a fallback)."""
        ...

    async def hand_off(self, switch: AgentSwitch) -> bool:
        """The call moves to another agent, the conversation kept: its instructions and tools
        (and provider, when `switch.reconnect`) apply from now on. True when the handoff tool's
        output still goes to the model; False when a new connection took over and the new agent
        speaks first without it."""
        ...


__all__ = ["AgentSwitch", "CallSession", "CallStats", "EffectSink", "TwilioSink", "Turn"]
