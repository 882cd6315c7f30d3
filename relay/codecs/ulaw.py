"""G.711 μ-law ⇄ 16-bit linear PCM (little-endian, mono).

Twilio Media Streams carry 8 kHz μ-law, one byte per sample; the rest of the relay works on
signed 16-bit little-endian PCM. Both directions are stateless, so any chunking is fine.
"""

from __future__ import annotations

import sys
import warnings

# ``audioop`` is stdlib up to 3.12 (deprecated, warns on import since 3.11); on 3.13+ the
# ``audioop-lts`` distribution provides the same module under the same name.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["pcm16_to_ulaw", "ulaw_to_pcm16"]

# audioop works in native byte order; the relay's PCM is little-endian on the wire.
_BIG_ENDIAN = sys.byteorder == "big"

# audioop's C loops, not numpy lookup tables: at 160 samples (a 20 ms frame) numpy's array creation
# costs more than the whole conversion in C (bench/codecs.py compares both), so there is no numpy
# path here.


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 μ-law bytes to 16-bit little-endian linear PCM.

    Each input byte yields one sample (two output bytes). Empty input gives empty output.
    """
    pcm = audioop.ulaw2lin(data, 2)
    if _BIG_ENDIAN:
        pcm = audioop.byteswap(pcm, 2)
    return pcm


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode 16-bit little-endian linear PCM to G.711 μ-law (one byte per sample).

    Raises:
        ValueError: if ``data`` has an odd number of bytes (not whole 16-bit samples).
    """
    if len(data) & 1:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    if _BIG_ENDIAN:
        data = audioop.byteswap(data, 2)
    return audioop.lin2ulaw(data, 2)
