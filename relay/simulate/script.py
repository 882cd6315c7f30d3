"""What the simulated caller says and how it behaves: the items of its script (espeak-ng speech,
WAV files or key presses, each optionally barging in), the options of a call and, for
`relay call --outbound`, of the call the relay places."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay.testing.audio import BYTES_PER_MS, read_wav_ulaw, speech_ulaw
from relay.testing.twilio_sender import DTMF_DIGITS

__all__ = ["DEFAULT_URL", "KEY_GAP_MS", "CallOptions", "OutboundCall", "Utterance", "build_utterances"]

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_GAP_MS = 120  # between two key presses of --digits, like a person typing


@dataclass(frozen=True)
class Utterance:
    """One thing the caller says: 8 kHz μ-law `audio`, a `label` for the timeline, and optionally
    `barge_in_ms`: speak that many ms after the agent starts talking instead of waiting for it to
    finish (None: wait until the agent's audio has played)."""

    label: str
    audio: bytes = field(repr=False)
    barge_in_ms: int | None = None
    digits: str = ""
    """Keys to press (Twilio `dtmf` events, KEY_GAP_MS apart) instead of speaking (`audio` empty)."""

    @classmethod
    def say(cls, text: str, *, barge_in_ms: int | None = None) -> Utterance:
        """`text` spoken by espeak-ng (RuntimeError when espeak-ng is missing)."""
        return cls(f'"{text}"', speech_ulaw(text), barge_in_ms)

    @classmethod
    def wav(cls, path: str | Path, *, barge_in_ms: int | None = None) -> Utterance:
        """The audio of a WAV file (16-bit PCM or μ-law, any rate; ValueError otherwise)."""
        return cls(Path(path).name, read_wav_ulaw(path), barge_in_ms)

    @classmethod
    def keys(cls, digits: str, *, barge_in_ms: int | None = None) -> Utterance:
        """Key presses: `digits` of 0-9, *, #, A-D (ValueError otherwise)."""
        wrong = sorted(set(digits) - DTMF_DIGITS)
        if not digits or wrong:
            raise ValueError(f"--digits takes the keys 0-9, *, #, A-D, got {digits!r}")
        return cls(f"keys {digits}", b"", barge_in_ms, digits)

    @property
    def duration_ms(self) -> float:
        if self.digits:
            return (len(self.digits) - 1) * KEY_GAP_MS
        return len(self.audio) / BYTES_PER_MS


def build_utterances(script: Sequence[tuple[str, str]]) -> list[Utterance]:
    """Turns the command line's ordered `(kind, value)` items into utterances.

    Kinds: `say` (text), `wav` (a path), `digits` (keys), `barge-in` (ms; applies to the item that
    follows it). Raises ValueError for a dangling or invalid `barge-in` or a key that is not one,
    RuntimeError without espeak-ng.
    """
    utterances: list[Utterance] = []
    barge_in: int | None = None
    for kind, value in script:
        if kind == "barge-in":
            try:
                barge_in = int(value)
            except ValueError:
                raise ValueError(f"--barge-in takes milliseconds, got {value!r}") from None
            if barge_in < 0:
                raise ValueError(f"--barge-in must be >= 0 ms, got {barge_in}")
        elif kind == "say":
            utterances.append(Utterance.say(value, barge_in_ms=barge_in))
            barge_in = None
        elif kind == "wav":
            utterances.append(Utterance.wav(value, barge_in_ms=barge_in))
            barge_in = None
        elif kind == "digits":
            utterances.append(Utterance.keys(value, barge_in_ms=barge_in))
            barge_in = None
        else:
            raise ValueError(f"unknown script item {kind!r}")
    if barge_in is not None:
        raise ValueError(
            "--barge-in MS applies to the --say/--wav/--digits that follows it; put it before the "
            "item that should interrupt the agent"
        )
    return utterances


def machine_greeting(context: dict[str, str]) -> str:
    """What the simulated answering machine says before its beep."""
    who = context.get("name") or "this number"
    return f"Hi, you have reached {who}. Please leave a message after the tone."


@dataclass(frozen=True)
class OutboundCall:
    """`relay call --outbound`: the call the relay is asked to place (`POST /calls`), of which the
    simulator is the callee, and the Twilio values of its requests."""

    to: str
    context: dict[str, str] = field(default_factory=dict)
    machine_detection: bool = True
    """Sent in the `POST /calls` body; the AMD result is reported only when it is on."""
    voicemail: bool = False
    """The callee is an answering machine: a greeting, a beep, then it listens."""
    agent: str | None = None
    """The agent of AGENTS_FILE that makes the call (`POST /calls`'s `agent`); None: the relay's choice."""
    account_sid: str = "AC" + "0" * 32
    """The AccountSid of Twilio's requests, and of the fake REST API's reads."""
    from_: str = ""
    """The call's From (TWILIO_PHONE_NUMBER)."""
    twilio_api_url: str | None = None
    """Where the fake Twilio REST API answers reads (default: the relay's URL, as with
    `relay serve --fakes`): how the callee learns that the relay hung up through the API."""

    @property
    def greeting(self) -> str:
        return machine_greeting(self.context)


@dataclass
class CallOptions:
    """What `run_call` does. Times are seconds unless named `_ms`."""

    url: str = DEFAULT_URL
    """Where the relay listens (the webhook and the Media Stream go here)."""
    public_url: str | None = None
    """The URL Twilio believes it calls, over which signatures are computed (default: `url`)."""
    auth_token: str | None = None
    """TWILIO_AUTH_TOKEN to sign with; None sends unsigned requests."""
    utterances: Sequence[Utterance] = ()
    out: Path | None = None
    """Write the agent's audio as played (mono 8 kHz WAV)."""
    record: Path | None = None
    """Write both sides on the call's timeline (stereo WAV: caller left, agent right)."""
    timeout: float = 120.0
    """Bound on the whole call."""
    greeting_timeout: float = 8.0
    """How long to wait for the agent to speak first before the caller talks anyway."""
    answer_timeout: float = 20.0
    """How long to wait, after the caller's end of speech, for the first agent audio."""
    playback_timeout: float = 60.0
    """Bound on waiting for one answer of the agent to finish playing."""
    quiet_ms: int = 1000
    """The agent has finished when its audio has played and nothing new arrived for this long."""
    progress_every: float = 5.0
    """A progress line every this many seconds of waiting."""
    admin_token: str | None = None
    """RELAY_ADMIN_TOKEN: after the call, fetch the relay's record (transcript, tool calls) and print it;
    `POST /calls` with it for an outbound call."""
    outbound: OutboundCall | None = None
    """Be the callee of an outbound call the relay places, instead of an inbound caller."""
    to: str | None = None
    """An inbound call's `To`, the number called (with AGENTS_FILE, it picks the agent); None: a
    random one."""
