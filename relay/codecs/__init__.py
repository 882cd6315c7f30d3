"""Audio codecs for the relay: pure, synchronous, no I/O.

* :func:`ulaw_to_pcm16` / :func:`pcm16_to_ulaw` — G.711 μ-law ⇄ 16-bit LE linear PCM.
* :class:`StreamResampler` — low-latency (≈2.2 ms) streaming polyphase resampler between
  8 kHz and 16/24 kHz, emitting each chunk's output immediately.
* :class:`Framer` — re-chunk a byte stream into exact fixed-size frames (20 ms = 160 μ-law bytes).
"""

from relay.codecs.framer import ULAW_SILENCE, Framer
from relay.codecs.resample import SUPPORTED_RATE_PAIRS, StreamResampler
from relay.codecs.ulaw import pcm16_to_ulaw, ulaw_to_pcm16

__all__ = [
    "SUPPORTED_RATE_PAIRS",
    "ULAW_SILENCE",
    "Framer",
    "StreamResampler",
    "pcm16_to_ulaw",
    "ulaw_to_pcm16",
]
