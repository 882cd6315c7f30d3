"""DTMF tones (ITU-T Q.23): each key is the sum of one low and one high frequency, played for at
least 70 ms with at least 60 ms of silence after it (ITU-T Q.24's minimums; we use 100 and 80 ms
so that every receiver counts them). μ-law 8 kHz, ready for a Twilio media message."""

from __future__ import annotations

import numpy as np

from relay.codecs.ulaw import pcm16_to_ulaw

RATE = 8000
LOW = {"1": 697, "2": 697, "3": 697, "A": 697, "4": 770, "5": 770, "6": 770, "B": 770}
LOW |= {"7": 852, "8": 852, "9": 852, "C": 852, "*": 941, "0": 941, "#": 941, "D": 941}
HIGH = {"1": 1209, "4": 1209, "7": 1209, "*": 1209, "2": 1336, "5": 1336, "8": 1336, "0": 1336}
HIGH |= {"3": 1477, "6": 1477, "9": 1477, "#": 1477, "A": 1633, "B": 1633, "C": 1633, "D": 1633}
DIGITS = frozenset(LOW)
TONE_MS = 100
GAP_MS = 80
LEVEL = 0.35  # each frequency's amplitude, of full scale: about -12 dBFS together, no clipping


def dtmf_ulaw(digits: str, *, tone_ms: int = TONE_MS, gap_ms: int = GAP_MS) -> bytes:
    """`digits` (0-9, *, #, A-D) as tones and gaps, μ-law 8 kHz. Raises ValueError on another key."""
    unknown = sorted(set(digits) - DIGITS)
    if unknown:
        raise ValueError(f"not DTMF keys: {''.join(unknown)!r} (use 0-9, *, #, A-D)")
    t = np.arange(RATE * tone_ms // 1000) / RATE
    gap = np.zeros(RATE * gap_ms // 1000)
    parts: list[np.ndarray] = []
    for digit in digits:
        tone = np.sin(2 * np.pi * LOW[digit] * t) + np.sin(2 * np.pi * HIGH[digit] * t)
        parts += [tone * LEVEL * 32767, gap]
    pcm = np.concatenate(parts) if parts else np.zeros(0)
    return pcm16_to_ulaw(pcm.astype("<i2").tobytes())


__all__ = ["DIGITS", "GAP_MS", "TONE_MS", "dtmf_ulaw"]
