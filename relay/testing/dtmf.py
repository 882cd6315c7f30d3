"""A DTMF detector for tests: Goertzel filters at the eight Q.23 frequencies over 205-sample
windows (the classic size: bins fine enough to tell 697 from 770 Hz) sliding by 10 ms; a key is
reported once per run of at least 3 windows where one low and one high frequency stand out (the
strongest of each group, well above the rest of it) and carry most of the window's energy."""

from __future__ import annotations

import numpy as np

from relay.codecs.dtmf import HIGH, LOW, RATE
from relay.codecs.ulaw import ulaw_to_pcm16

WINDOW = 205  # samples: 25.6 ms
HOP = 80  # 10 ms
MIN_BLOCKS = 3  # windows in a row holding the same key
LOWS = sorted(set(LOW.values()))
HIGHS = sorted(set(HIGH.values()))
KEY = {(LOW[d], HIGH[d]): d for d in LOW}


def goertzel_power(block: np.ndarray, freq: float) -> float:
    coeff = 2 * np.cos(2 * np.pi * freq / RATE)
    s1 = s2 = 0.0
    for x in block:
        s1, s2 = x + coeff * s1 - s2, s1
    return float(s1 * s1 + s2 * s2 - coeff * s1 * s2)


def _block_key(block: np.ndarray) -> str | None:
    energy = float(np.dot(block, block))
    if energy < 1e3 * len(block):  # silence
        return None
    lows = [goertzel_power(block, f) for f in LOWS]
    highs = [goertzel_power(block, f) for f in HIGHS]
    low, high = int(np.argmax(lows)), int(np.argmax(highs))
    others = sorted(lows)[-2], sorted(highs)[-2]
    if lows[low] < 5 * others[0] or highs[high] < 5 * others[1]:
        return None  # not a clean pair
    full = energy * len(block) / 2  # what one pure tone holding all the energy would give
    if lows[low] + highs[high] < 0.6 * full or min(lows[low], highs[high]) < 0.15 * full:
        return None  # not two tones carrying most of the sound (speech, noise, a single tone)
    return KEY[(LOWS[low], HIGHS[high])]


def detect_digits(ulaw: bytes) -> str:
    """The keys in `ulaw` (8 kHz), in order: one per run of blocks holding the same key."""
    pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2").astype(float)
    found: list[str] = []
    run_key, run = None, 0
    for start in range(0, len(pcm) - WINDOW + 1, HOP):
        key = _block_key(pcm[start : start + WINDOW])
        if key == run_key:
            run += 1
        else:
            run_key, run = key, 1
        if key is not None and run == MIN_BLOCKS:
            found.append(key)
    return "".join(found)


__all__ = ["detect_digits", "goertzel_power"]
