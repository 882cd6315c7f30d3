"""Turn detection for the cascaded path: Twilio μ-law in, ``SpeechStarted`` / ``Utterance`` out.

Sans-I/O: :meth:`TurnDetector.feed` takes μ-law bytes and the time they arrived and returns
events; nothing here reads a socket, sleeps or spawns a task.

Per 20 ms frame (160 μ-law bytes): μ-law → PCM16 8 kHz (:func:`relay.codecs.ulaw_to_pcm16`) →
``webrtcvad.Vad(aggressiveness).is_speech(frame, 8000)``. Telephone audio is 8 kHz, and webrtcvad
computes its features at 8 kHz whatever the input rate (it decimates 16 kHz itself), so the VAD
runs on the caller's own samples: upsampling first would cost CPU and change neither its frame
decisions (nearly all equal) nor the turns found (``bench/vad.py`` compares both rates). A frame
is *voiced* when webrtcvad says speech **and** the frame is ``NOISE_GATE_DB`` (3 dB) above a noise
floor that follows the quietest recent frames (drops at once, rises 2.5 dB/s). The gate is needed
twice over: webrtcvad's noise model is bounded, so on its own it calls steady background noise
speech (in most frames, at the SNRs of a phone line) and turns never end; and its hangover (some
frames of "speech" after every burst) would delay each end of turn and let click + hangover pass
for speech. Hangover frames sit at the noise floor, so the gate removes them.

State machine:

* **idle → speaking** when voiced frames cover ≥ ``min_speech_ms`` within a window of
  ``min_speech_ms + 300`` ms (syllables in noise come as 60–160 ms bursts), so a click or a short
  cough never starts a turn. :class:`SpeechStarted` is returned then; its ``at_ms`` is the onset
  (the start of the first voiced run in the window), about ``min_speech_ms`` in the past.
* **speaking → idle** after ``silence_ms`` of consecutive unvoiced frames, or when the utterance
  reaches ``max_utterance_ms`` (a forced cut: if the caller keeps talking a new ``SpeechStarted``
  follows and the next utterance starts exactly where this one stopped).
* :class:`Utterance` carries the caller's 8 kHz audio as PCM16, sample for sample, from
  ``prefix_ms`` before the onset (never reaching back into the previous utterance's audio) to
  ``TAIL_MS`` after the end of the last voiced frame. Speech-to-text gets it as an 8 kHz WAV: an
  upsampled copy would add bytes, not information.

Why webrtcvad and not Silero VAD: ``silero-vad`` hard-requires ``torch`` (gigabytes) for a model
that onnxruntime alone could run; that route (a second native runtime plus our own model plumbing
and state) was not taken. webrtcvad is a small C extension with wheels, cheap enough to run on
every frame of every cascade call. How well turns are found (clean speech, white noise, babble,
clicks; with and without the gate) and what ``feed`` costs: ``bench/vad.py`` and the README's
Performance section. **Known limit:** background talkers are speech to webrtcvad in every mode, so
babble keeps a turn open until ``max_utterance_ms``.

Aggressiveness 2 is the default: with the gate, modes 0–3 find the same turns; mode 3 starts later
in white noise, the first sign of it clipping quiet onsets; modes 0–1 are the ones that fail
without the gate, so 2 keeps a margin should the gate be tuned down.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import webrtcvad

from relay.codecs import ulaw_to_pcm16

__all__ = ["FRAME_MS", "TAIL_MS", "SpeechStarted", "TurnDetector", "TurnEvent", "Utterance"]

#: Duration of one analysis frame (webrtcvad accepts 10, 20 or 30 ms).
FRAME_MS = 20
#: Audio kept after an utterance's ``end_ms``.
TAIL_MS = 100

_IN_RATE = 8000
_VAD_RATE = _IN_RATE  # webrtcvad works at 8 kHz internally; no resampling
_ULAW_FRAME = _IN_RATE * FRAME_MS // 1000  # 160 bytes
_PCM_FRAME = 2 * _VAD_RATE * FRAME_MS // 1000  # 320 bytes
#: The onset window is this much longer than ``min_speech_ms`` (tolerates gaps in speech).
_ONSET_SLACK_MS = 300
_FLOOR_RISE_DB = 2.5 * FRAME_MS / 1000  # per frame


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking; ``at_ms`` is the estimated onset (already in the past)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class Utterance:
    """One finished turn: its onset, its end and its audio.

    ``pcm16`` is mono 16-bit little-endian PCM at ``rate`` Hz, from ``prefix_ms`` before
    ``start_ms`` to ``TAIL_MS`` after ``end_ms`` (all on the clock given to ``feed``).
    """

    start_ms: int
    end_ms: int
    pcm16: bytes = field(repr=False)  # seconds of audio: keep it out of logs and test reports
    rate: int = _VAD_RATE

    @property
    def duration_ms(self) -> float:
        """Length of ``pcm16`` in milliseconds."""
        return len(self.pcm16) / 2 / self.rate * 1000.0


TurnEvent = SpeechStarted | Utterance


@dataclass(slots=True)
class _Frame:
    end_ms: float  # on the caller's clock
    pcm: bytes  # 20 ms of PCM16 at 8 kHz
    voiced: bool  # webrtcvad speech above the noise gate

    @property
    def start_ms(self) -> float:
        return self.end_ms - FRAME_MS


class TurnDetector:
    """Streaming voice activity → turn events, for 8 kHz μ-law from Twilio.

    >>> det = TurnDetector()
    >>> det.feed(b"\\xff" * 160, now_ms=20)
    []
    """

    #: A voiced frame must be this far above the noise floor (None: webrtcvad's verdict alone).
    NOISE_GATE_DB: ClassVar[float | None] = 3.0

    def __init__(
        self,
        *,
        silence_ms: int = 500,
        min_speech_ms: int = 200,
        aggressiveness: int = 2,
        prefix_ms: int = 300,
        max_utterance_ms: int = 30000,
    ) -> None:
        """Configure the detector (durations in ms, rounded up to whole 20 ms frames).

        Args:
            silence_ms: unvoiced time that ends a turn.
            min_speech_ms: voiced time (within a window 300 ms longer) that starts one.
            aggressiveness: webrtcvad mode, 0 (least) … 3 (most eager to call audio non-speech).
            prefix_ms: pre-roll kept before the onset in each utterance's audio.
            max_utterance_ms: an utterance is cut (and a new one begins) at this length.

        Raises:
            ValueError: for an aggressiveness outside 0–3 or non-positive durations.
        """
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
        for name, value in (
            ("silence_ms", silence_ms),
            ("min_speech_ms", min_speech_ms),
            ("max_utterance_ms", max_utterance_ms),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if prefix_ms < 0:
            raise ValueError(f"prefix_ms must be >= 0, got {prefix_ms}")
        self.silence_ms = silence_ms
        self.min_speech_ms = min_speech_ms
        self.aggressiveness = aggressiveness
        self.prefix_ms = prefix_ms
        self.max_utterance_ms = max_utterance_ms
        self._silence_frames = _frames(silence_ms)
        self._min_speech_frames = _frames(min_speech_ms)
        self._window_frames = _frames(min_speech_ms + _ONSET_SLACK_MS)
        self._prefix_frames = _frames(prefix_ms) if prefix_ms else 0
        self._max_frames = max(_frames(max_utterance_ms), self._window_frames + 1)
        self._tail_frames = _frames(TAIL_MS)
        self._vad = webrtcvad.Vad(aggressiveness)
        self._pending = bytearray()
        # Idle: the last frames (pre-roll and onset evidence).
        self._history: deque[_Frame] = deque(maxlen=self._prefix_frames + self._window_frames)
        # Speaking: every frame since the pre-roll start.
        self._speech: list[_Frame] | None = None
        self._onset = 0  # index of the onset frame in _speech
        self._last_voiced = 0  # index of the last voiced frame in _speech
        self._unvoiced_run = 0
        self._cut_ms = -math.inf  # end of the previous utterance's audio
        self._floor_db: float | None = None

    @property
    def speaking(self) -> bool:
        """True between a :class:`SpeechStarted` and its :class:`Utterance`."""
        return self._speech is not None

    def reset(self) -> None:
        """Forget everything: buffered bytes, VAD state and noise floor, a turn in progress."""
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._pending.clear()
        self._history.clear()
        self._speech = None
        self._unvoiced_run = 0
        self._cut_ms = -math.inf
        self._floor_db = None

    def is_speech(self, pcm: bytes) -> bool:
        """webrtcvad's verdict on one 20 ms frame of 8 kHz PCM16 (a subclass may substitute another)."""
        return bool(self._vad.is_speech(pcm, _VAD_RATE))

    def feed(self, ulaw_frame: bytes, now_ms: int) -> list[TurnEvent]:
        """Consume μ-law audio (any length; 160 bytes = 20 ms is the norm) and return the events.

        ``now_ms`` is the time of the chunk's last sample on the caller's clock (its arrival time,
        or Twilio's media ``timestamp`` plus the chunk's duration); earlier samples are placed
        8 per millisecond before it. Incomplete frames wait for the next call.
        """
        self._pending += ulaw_frame
        whole = len(self._pending) - len(self._pending) % _ULAW_FRAME
        if not whole:
            return []
        chunk = bytes(self._pending[:whole])
        del self._pending[:whole]
        pcm16 = ulaw_to_pcm16(chunk)
        last_end = now_ms - len(self._pending) / 8
        count = whole // _ULAW_FRAME
        events: list[TurnEvent] = []
        for i in range(count):
            pcm = pcm16[i * _PCM_FRAME : (i + 1) * _PCM_FRAME]
            self._step(self._classify(last_end - (count - 1 - i) * FRAME_MS, pcm), events)
        return events

    # --- classification -------------------------------------------------------------------------

    def _classify(self, end_ms: float, pcm: bytes) -> _Frame:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        db = 10.0 * math.log10(float(np.dot(x, x)) / x.size + 1.0)  # digital silence 0, full scale 90
        floor = self._floor_db
        floor = db if floor is None else min(floor + _FLOOR_RISE_DB, db)
        self._floor_db = floor
        voiced = self.is_speech(pcm)
        if voiced and self.NOISE_GATE_DB is not None:
            voiced = db >= floor + self.NOISE_GATE_DB
        return _Frame(end_ms, pcm, voiced)

    # --- state machine ---------------------------------------------------------------------------

    def _step(self, frame: _Frame, events: list[TurnEvent]) -> None:
        speech = self._speech
        if speech is None:
            self._idle_step(frame, events)
            return
        speech.append(frame)
        if frame.voiced:
            self._last_voiced = len(speech) - 1
            self._unvoiced_run = 0
        else:
            self._unvoiced_run += 1
            if self._unvoiced_run >= self._silence_frames:
                end = self._last_voiced
                events.append(self._finish(end, min(len(speech), end + 1 + self._tail_frames)))
                return
        if len(speech) - self._onset >= self._max_frames:
            events.append(self._finish(self._last_voiced, len(speech)))

    def _idle_step(self, frame: _Frame, events: list[TurnEvent]) -> None:
        history = self._history
        history.append(frame)
        if not frame.voiced:
            return  # the onset decision only changes on a voiced frame
        frames = list(history)
        window = frames[-self._window_frames :]
        voiced = [f for f in window if f.voiced]
        if len(voiced) < self._min_speech_frames:
            return
        onset = len(frames) - len(window) + window.index(voiced[0])
        # The voiced run may have begun just before the window (never reach into the last utterance).
        while onset > 0 and frames[onset - 1].voiced and frames[onset - 1].start_ms >= self._cut_ms - 1:
            onset -= 1
        first = max(0, onset - self._prefix_frames)
        while first < onset and frames[first].start_ms < self._cut_ms - 1:
            first += 1
        self._speech = frames[first:]
        self._onset = onset - first
        self._last_voiced = len(self._speech) - 1
        self._unvoiced_run = 0
        history.clear()
        events.append(SpeechStarted(round(self._speech[self._onset].start_ms)))

    def _finish(self, end: int, keep: int) -> Utterance:
        """Close the turn ending at frame ``end``; its first ``keep`` frames are the audio."""
        speech = self._speech
        assert speech is not None
        utterance = Utterance(
            start_ms=round(speech[self._onset].start_ms),
            end_ms=round(speech[end].end_ms),
            pcm16=b"".join(f.pcm for f in speech[:keep]),
        )
        self._cut_ms = speech[keep - 1].end_ms
        self._speech = None
        self._unvoiced_run = 0
        self._history.clear()
        self._history.extend(speech[keep:])  # silence after the tail seeds the idle history
        return utterance


def _frames(ms: int) -> int:
    """Whole 20 ms frames covering ``ms`` (at least one)."""
    return max(1, -(-ms // FRAME_MS))
