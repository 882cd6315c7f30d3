"""Speech to text for the cascaded path: one finished utterance in, its transcript out.

The transcription endpoint wants a container, not raw samples (PROTOCOLS.md §4.3), so the
utterance's PCM16 is wrapped in a mono 16-bit WAV in memory. Errors from the openai SDK
(``openai.APIError`` and subclasses: status, connection, timeout) propagate: retrying, apologising
or giving up is the session's decision.
"""

from __future__ import annotations

import io
import wave
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["transcribe", "wav_bytes"]


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    """Wraps mono 16-bit little-endian PCM sampled at ``rate`` Hz in a WAV file (in memory).

    Raises:
        ValueError: for an odd byte count (not whole samples) or a non-positive rate.
    """
    if len(pcm16) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(pcm16)}")
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()


async def transcribe(client: AsyncOpenAI, model: str, pcm16: bytes, rate: int, language: str = "") -> str:
    """Transcribes one utterance with ``client.audio.transcriptions.create`` and returns the text.

    ``client`` is an ``openai.AsyncOpenAI`` / ``AsyncAzureOpenAI`` (``cascade_client()``); ``model``
    the model or Azure deployment name (``cascade_models()["stt"]``); ``language`` an ISO 639-1
    hint (TRANSCRIPTION_LANGUAGE, an agent's `language`), or empty to let the model detect it.
    The text is stripped; an empty string means nothing intelligible was said.
    """
    wav = wav_bytes(pcm16, rate)
    file = ("utterance.wav", wav, "audio/wav")
    if language:
        result = await client.audio.transcriptions.create(model=model, file=file, language=language)
    else:
        result = await client.audio.transcriptions.create(model=model, file=file)
    return result.text.strip()
