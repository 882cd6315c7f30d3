"""What tests script and inspect on the fake OpenAI HTTP service (`relay.testing.openai_http`).

* scripted chat replies: `Text` and `ToolCalls` (of `ToolCallSpec`), the `ChatReply` scripts;
* recording: `RecordedRequest` (one request as the fake received it, with the uploaded WAV's
  `WavInfo`) and `RequestNotSeen`, raised by `FakeOpenAIHTTP.wait_for`;
* audio: `tts_audio(text)`, the speech the fake answers (PCM16 24 kHz mono little-endian,
  deterministic), and the WAV helpers the fake uses.
"""

from __future__ import annotations

import functools
import io
import struct
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import orjson

__all__ = [
    "TTS_BYTES_PER_MS",
    "TTS_MAX_MS",
    "TTS_MS_PER_CHAR",
    "TTS_SAMPLE_RATE",
    "ChatReply",
    "Kind",
    "Provider",
    "RecordedRequest",
    "RequestNotSeen",
    "Text",
    "ToolCallSpec",
    "ToolCalls",
    "WavInfo",
    "parse_wav",
    "tts_audio",
    "wav_bytes",
]

Kind: TypeAlias = Literal["transcriptions", "chat", "speech"]
"""The endpoint a request went to; also the key of the per-endpoint knobs."""
Provider: TypeAlias = Literal["openai", "azure"]

TTS_SAMPLE_RATE = 24_000
TTS_BYTES_PER_MS = TTS_SAMPLE_RATE * 2 // 1000  # PCM16 mono: 48 bytes per millisecond
TTS_MS_PER_CHAR = 60
TTS_MAX_MS = 20_000
"""`tts_audio` lasts `TTS_MS_PER_CHAR` per character of input, at most this long."""


# --------------------------------------------------------------------------- scripted replies


@dataclass(frozen=True, slots=True)
class Text:
    """A chat reply of plain text, streamed as content deltas of `chunk_chars` characters."""

    text: str
    chunk_chars: int = 8
    finish_reason: Literal["stop", "length", "content_filter"] = "stop"


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    """One function call in a `ToolCalls` reply.

    `arguments` is a dict (sent as compact JSON) or a string sent verbatim (invalid JSON is
    allowed, to test the caller's error path). `id` defaults to a deterministic ``call_fake…``.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments string as the API sends it."""
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """A chat reply that calls tools (``finish_reason: "tool_calls"``).

    Streamed like OpenAI: each call's first fragment carries ``index``, ``id``, ``type`` and
    ``function.name`` with empty ``arguments``; later fragments carry only ``index`` and
    ``function.arguments`` pieces of `chunk_chars` characters. Calls stream one after another.
    `text`, if any, is streamed as content before the calls.
    """

    calls: Sequence[ToolCallSpec]
    text: str = ""
    chunk_chars: int = 8


ChatReply: TypeAlias = Text | ToolCalls


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class WavInfo:
    """The header and samples of an uploaded WAV file (any format tag: PCM, μ-law, …)."""

    rate: int
    channels: int
    sampwidth: int
    format_tag: int  # 1 PCM, 6 A-law, 7 μ-law
    frames: bytes

    @property
    def duration_ms(self) -> float:
        """Milliseconds of audio in `frames`."""
        frame_bytes = self.channels * self.sampwidth
        if not frame_bytes or not self.rate:
            return 0.0
        return len(self.frames) // frame_bytes * 1000 / self.rate


class RequestNotSeen(TimeoutError):
    """`FakeOpenAIHTTP.wait_for` gave up before the request arrived."""


@dataclass(eq=False)
class RecordedRequest:
    """One request the fake received, recorded when its body has been read (before any latency).

    `body` is the parsed JSON body (chat, speech); multipart requests (transcriptions) have
    `form` (the last value of each field), `form_items` (every field, in order) and the
    uploaded file. `status` and `dropped` are filled in once the fake has answered.
    """

    kind: Kind
    provider: Provider
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float
    deployment: str | None = None
    body: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    form_items: list[tuple[str, str]] = field(default_factory=list)
    file_name: str | None = None
    file_content_type: str | None = None
    file_bytes: bytes | None = None
    wav: WavInfo | None = None
    status: int | None = None
    error: str | None = None
    """The error message answered, if any."""
    dropped: bool = False
    """The response stream was cut (`drop_stream_after`)."""
    chunks_sent: int = 0
    """Stream chunks sent (SSE events or audio chunks)."""
    parse_error: str | None = field(default=None, repr=False)

    @property
    def model(self) -> str | None:
        """The ``model`` field of the body or form (on Azure, the SDK sends the deployment)."""
        value = self.body.get("model") if self.body is not None else self.form.get("model")
        return value if isinstance(value, str) else None

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream (``"stream": true`` or form ``stream=true``)."""
        if self.body is not None:
            return self.body.get("stream") is True
        return self.form.get("stream", "").lower() == "true"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Chat messages as sent (empty for other kinds)."""
        value = self.body.get("messages") if self.body is not None else None
        return value if isinstance(value, list) else []

    @property
    def input(self) -> str | None:
        """The text of a speech request."""
        value = self.body.get("input") if self.body is not None else None
        return value if isinstance(value, str) else None

    @property
    def wav_duration_ms(self) -> float | None:
        """Duration of the uploaded WAV's samples (None: no file, or not a WAV)."""
        return self.wav.duration_ms if self.wav is not None else None

    @property
    def wav_rate(self) -> int | None:
        """Sample rate of the uploaded WAV."""
        return self.wav.rate if self.wav is not None else None

    @property
    def wav_channels(self) -> int | None:
        """Channel count of the uploaded WAV."""
        return self.wav.channels if self.wav is not None else None

    @property
    def wav_sampwidth(self) -> int | None:
        """Bytes per sample of the uploaded WAV (2 for PCM16, 1 for μ-law)."""
        return self.wav.sampwidth if self.wav is not None else None


# --------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=256)
def _char_tone(char: str) -> bytes:
    samples = TTS_SAMPLE_RATE * TTS_MS_PER_CHAR // 1000
    if char.isspace():
        return bytes(samples * 2)
    freq = 220.0 + (ord(char) % 40) * 20.0
    t = np.arange(samples, dtype=np.float64) / TTS_SAMPLE_RATE
    ramp = np.minimum(1.0, np.minimum(np.arange(samples), np.arange(samples)[::-1]) / 120.0)  # 5 ms
    tone = 0.3 * 32767.0 * np.sin(2.0 * np.pi * freq * t) * ramp
    return np.round(tone).astype("<i2").tobytes()


def tts_audio(text: str) -> bytes:
    """The audio the fake speaks for `text`: PCM16 24 kHz mono little-endian, deterministic.

    `TTS_MS_PER_CHAR` (60 ms) per character, capped at `TTS_MAX_MS`; each character is a tone
    whose pitch depends on the character (whitespace is silence), so different texts give
    different audio and equal texts equal audio.
    """
    chars = text[: -(-TTS_MAX_MS // TTS_MS_PER_CHAR)]
    return b"".join(_char_tone(c) for c in chars)[: TTS_MAX_MS * TTS_BYTES_PER_MS]


def wav_bytes(pcm: bytes, rate: int = TTS_SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def parse_wav(data: bytes) -> WavInfo | None:
    """Reads a WAV with the `wave` module; other format tags (μ-law, extensible) by hand."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            return WavInfo(
                rate=w.getframerate(),
                channels=w.getnchannels(),
                sampwidth=w.getsampwidth(),
                format_tag=1,
                frames=w.readframes(w.getnframes()),
            )
    except (wave.Error, EOFError, struct.error):
        pass
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, int] | None = None
    frames: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        chunk = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt " and len(chunk) >= 16:
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunk[:16])
            if tag == 0xFFFE and len(chunk) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                tag = int.from_bytes(chunk[24:26], "little")
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            frames = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or frames is None or not fmt[1] or not fmt[2]:
        return None
    tag, channels, rate, bits = fmt
    return WavInfo(rate=rate, channels=channels, sampwidth=max(1, bits // 8), format_tag=tag, frames=frames)
