"""Streaming text to speech for the cascaded path, and the conversion to Twilio's frames.

:func:`synthesize` streams ``client.audio.speech`` with ``response_format="pcm"``: raw 16-bit
little-endian mono samples at 24 kHz, no header (PROTOCOLS.md §4.3), yielded as they arrive so
playback starts on the first chunk. :class:`PcmToTwilio` turns those chunks (of any size, even
odd byte counts) into exact 160-byte / 20 ms μ-law frames for Twilio: 24 kHz → 8 kHz with
:class:`relay.codecs.StreamResampler` (anti-aliased, 2.1 ms delay, no hold-back), then μ-law, then
:class:`relay.codecs.Framer`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from relay.codecs import Framer, StreamResampler, pcm16_to_ulaw

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["MAX_INPUT_CHARS", "TTS_RATE", "PcmToTwilio", "synthesize"]

#: The speech endpoint's input limit.
MAX_INPUT_CHARS = 4096
#: Sample rate of ``response_format="pcm"``.
TTS_RATE = 24000
_CHUNK_BYTES = 4800  # 100 ms at 24 kHz
_TWILIO_RATE = 8000
_FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law


async def synthesize(client: AsyncOpenAI, model: str, voice: str, text: str) -> AsyncGenerator[bytes, None]:
    """Yields PCM16 24 kHz mono chunks (up to 4800 bytes) of ``text`` spoken by ``voice``.

    ``text`` is cut at :data:`MAX_INPUT_CHARS`; blank text yields nothing without a request.
    Chunk sizes follow the network and may be odd: :class:`PcmToTwilio` copes. openai errors
    propagate; closing the iterator early closes the HTTP response.
    """
    text = text[:MAX_INPUT_CHARS]
    if not text.strip():
        return
    async with client.audio.speech.with_streaming_response.create(
        model=model, voice=voice, input=text, response_format="pcm"
    ) as response:
        async for chunk in response.iter_bytes(_CHUNK_BYTES):
            if chunk:
                yield chunk


class PcmToTwilio:
    """PCM16 24 kHz chunks of any size in, exact 160-byte μ-law frames (8 kHz, 20 ms) out.

    After chunks totalling ``S`` samples, :meth:`push` has returned ``floor(floor(S / 3) / 160)``
    frames; :meth:`flush` adds the resampler's delayed tail and pads the last frame with μ-law
    silence.
    """

    __slots__ = ("_carry", "_framer", "_resampler")

    def __init__(self) -> None:
        self._resampler = StreamResampler(TTS_RATE, _TWILIO_RATE)
        self._framer = Framer(_FRAME_BYTES)
        self._carry = b""  # the first byte of a sample split between chunks

    def push(self, pcm: bytes) -> list[bytes]:
        """Adds a chunk of PCM16 (any length) and returns the whole frames now available."""
        if self._carry:
            pcm = self._carry + pcm
        if len(pcm) & 1:
            self._carry = pcm[-1:]
            pcm = pcm[:-1]
        else:
            self._carry = b""
        if not pcm:
            return []
        return self._framer.push(pcm16_to_ulaw(self._resampler.process(pcm)))

    def flush(self) -> list[bytes]:
        """End of the audio: returns the remaining frames (the last one padded); then ready for more.

        A dangling half sample is dropped.
        """
        frames = self._framer.push(pcm16_to_ulaw(self._resampler.flush()))
        last = self._framer.flush()
        if last is not None:
            frames.append(last)
        self._carry = b""
        return frames

    def reset(self) -> None:
        """Drops everything buffered (barge-in: the rest of this audio will not be played)."""
        self._resampler.reset()
        self._framer.reset()
        self._carry = b""
