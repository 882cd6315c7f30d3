"""What the simulated caller says and how it behaves: the utterances of its script (espeak-ng
speech or WAV files, each optionally barging in) and the options of a call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay.testing.audio import BYTES_PER_MS, read_wav_ulaw, speech_ulaw

__all__ = ["DEFAULT_URL", "CallOptions", "Utterance", "build_utterances"]

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Utterance:
    """One thing the caller says: 8 kHz μ-law `audio`, a `label` for the timeline, and optionally
    `barge_in_ms`: speak that many ms after the agent starts talking instead of waiting for it to
    finish (None: wait until the agent's audio has played)."""

    label: str
    audio: bytes = field(repr=False)
    barge_in_ms: int | None = None

    @classmethod
    def say(cls, text: str, *, barge_in_ms: int | None = None) -> Utterance:
        """`text` spoken by espeak-ng (RuntimeError when espeak-ng is missing)."""
        return cls(f'"{text}"', speech_ulaw(text), barge_in_ms)

    @classmethod
    def wav(cls, path: str | Path, *, barge_in_ms: int | None = None) -> Utterance:
        """The audio of a WAV file (16-bit PCM or μ-law, any rate; ValueError otherwise)."""
        return cls(Path(path).name, read_wav_ulaw(path), barge_in_ms)

    @property
    def duration_ms(self) -> float:
        return len(self.audio) / BYTES_PER_MS


def build_utterances(script: Sequence[tuple[str, str]]) -> list[Utterance]:
    """Turns the command line's ordered `(kind, value)` items into utterances.

    Kinds: `say` (text), `wav` (a path), `barge-in` (ms; applies to the `say`/`wav` that follows
    it). Raises ValueError for a dangling or invalid `barge-in`, RuntimeError without espeak-ng.
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
        else:
            raise ValueError(f"unknown script item {kind!r}")
    if barge_in is not None:
        raise ValueError(
            "--barge-in MS applies to the --say/--wav that follows it; put it before the utterance "
            "that should interrupt the agent"
        )
    return utterances


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
    """RELAY_ADMIN_TOKEN: after the call, fetch the relay's record (transcript, tool calls) and print it."""
