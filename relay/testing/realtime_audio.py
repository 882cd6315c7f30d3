"""Audio of the fake Realtime server: G.711 tables, the wire formats, the deterministic tone of
scripted replies (`expected_audio`), and the energy VAD that runs on the caller's audio.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

# The VAD's energy, per 20 ms frame of every call, comes from audioop's C loops: at this size numpy
# or a Python sum would cost the fake many times more. It is stdlib up to 3.12 (deprecated,
# warns on import); on 3.13+ the `audioop-lts` distribution provides it. Its G.711 decoding equals
# the tables below (tests/test_fake_realtime.py checks all 256 codes).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_BIG_ENDIAN = sys.byteorder == "big"  # audioop works in native byte order; PCM16 on the wire is little-endian

__all__ = [
    "PCM16",
    "PCMA",
    "PCMU",
    "AudioFormat",
    "SpeechDetector",
    "TurnDetection",
    "VadEvent",
    "expected_audio",
    "split_words",
]


# ---------------------------------------------------------------------------------------------------
# Audio: G.711 tables, formats, the deterministic tone


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

    def rms(self, data: bytes) -> int:
        """The root mean square of the linear samples (int16 scale), its integer part: the energy
        VAD's measure."""
        if self.name == "pcm16":
            data = data[: len(data) // 2 * 2]
            return audioop.rms(audioop.byteswap(data, 2) if _BIG_ENDIAN else data, 2)
        linear = audioop.ulaw2lin(data, 2) if self.name == "pcmu" else audioop.alaw2lin(data, 2)
        return audioop.rms(linear, 2)

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
            loud = fmt.rms(buf[off : off + frame]) > self.rms_threshold
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
