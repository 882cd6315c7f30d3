"""Real audio for tests and demos: synthetic speech, WAV files, tones and a similarity measure.

Everything here produces or consumes raw 8 kHz μ-law (`audio/x-mulaw`), the format Twilio Media
Streams carry. Speech comes from `espeak-ng` (a Debian package), resampled with numpy: a
Kaiser-windowed sinc interpolator that low-pass filters below the output Nyquist frequency, so the
result stays intelligible and correlates with the source.
"""

from __future__ import annotations

import functools
import logging
import shutil
import struct
import subprocess
import warnings
import wave
from dataclasses import dataclass
from os import PathLike

import numpy as np
import numpy.typing as npt

with warnings.catch_warnings():
    # Deprecated in 3.11/3.12 (removed in 3.13, where the audioop-lts backport provides it).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
BYTES_PER_MS = SAMPLE_RATE // 1000  # one μ-law byte per sample
ULAW_SILENCE = 0xFF  # μ-law encoding of 0

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_MULAW = 0x0007
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE

FloatArray = npt.NDArray[np.float64]
StrPath = str | PathLike[str]


# --------------------------------------------------------------------------- μ-law <-> numpy


def ulaw_to_float(ulaw: bytes) -> FloatArray:
    """Decodes μ-law bytes to float samples in [-1, 1)."""
    if not ulaw:
        return np.zeros(0, dtype=np.float64)
    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0


def float_to_ulaw(samples: npt.ArrayLike) -> bytes:
    """Encodes float samples in [-1, 1] (clipped) to μ-law bytes."""
    x = np.asarray(samples, dtype=np.float64)
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    return audioop.lin2ulaw(pcm.tobytes(), 2)


# --------------------------------------------------------------------------- resampling


def resample(samples: npt.ArrayLike, src_rate: int, dst_rate: int, *, zero_crossings: int = 16) -> FloatArray:
    """Band-limited resampling by Kaiser-windowed sinc interpolation, at any rate ratio.

    Each output sample is a weighted sum of the input samples around its fractional position;
    the sinc cutoff sits at 92 % of the lower Nyquist frequency, so downsampling (e.g. espeak's
    22050 Hz to 8000 Hz) low-pass filters first instead of aliasing. `zero_crossings` sets the
    kernel length (per side, in lobes of the cutoff frequency).
    """
    x = np.asarray(samples, dtype=np.float64)
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    if src_rate == dst_rate or x.size == 0:
        return x.copy()
    scale = min(1.0, dst_rate / src_rate)  # < 1 when downsampling: widen the kernel
    cutoff = 0.5 * scale * 0.92  # cycles per input sample
    half_width = zero_crossings / (2.0 * cutoff)  # input samples each side of the centre
    beta = 8.0
    n_out = int(np.floor(x.size * dst_rate / src_rate))
    reach = int(np.ceil(half_width))
    offsets = np.arange(-reach, reach + 1)
    padded = np.concatenate([np.zeros(reach + 1), x, np.zeros(reach + 1)])
    out = np.empty(n_out, dtype=np.float64)
    block = 2048
    for first in range(0, n_out, block):
        n = np.arange(first, min(first + block, n_out))
        pos = n * (src_rate / dst_rate)  # fractional input position of each output sample
        base = np.floor(pos).astype(np.int64)
        idx = base[:, None] + offsets[None, :]  # input sample indices
        dist = pos[:, None] - idx  # distance from each tap to the output position
        ratio = np.clip(dist / half_width, -1.0, 1.0)
        window = np.i0(beta * np.sqrt(1.0 - ratio * ratio)) / np.i0(beta)
        kernel = 2.0 * cutoff * np.sinc(2.0 * cutoff * dist) * window
        kernel[np.abs(dist) > half_width] = 0.0
        out[n] = np.sum(padded[idx + reach + 1] * kernel, axis=1)
    return out


# --------------------------------------------------------------------------- WAV parsing


@dataclass(frozen=True, slots=True)
class _WavData:
    format_tag: int
    channels: int
    rate: int
    bits: int
    data: bytes


def _parse_wav(blob: bytes, source: str) -> _WavData:
    """Parses a RIFF/WAVE blob; tolerates the streaming placeholders espeak-ng writes as sizes."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError(f"{source}: not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(blob):
        chunk_id = blob[pos : pos + 4]
        (size,) = struct.unpack_from("<I", blob, pos + 4)
        body_start = pos + 8
        if chunk_id == b"fmt ":
            if size < 16:
                raise ValueError(f"{source}: fmt chunk too short")
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", blob, body_start)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40:
                (tag,) = struct.unpack_from("<H", blob, body_start + 24)  # first 2 bytes of the GUID
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError(f"{source}: data chunk before fmt chunk")
            # Streaming writers (espeak-ng --stdout) put a placeholder size: clamp to what exists.
            data = blob[body_start : min(len(blob), body_start + size)]
            tag, channels, rate, bits = fmt
            return _WavData(tag, channels, rate, bits, data)
        pos = body_start + size + (size & 1)
    raise ValueError(f"{source}: no data chunk")


def _wav_to_ulaw(wav: _WavData, source: str) -> bytes:
    if wav.channels < 1:
        raise ValueError(f"{source}: invalid channel count {wav.channels}")
    if wav.format_tag == _WAVE_FORMAT_MULAW and wav.bits == 8:
        if wav.channels == 1 and wav.rate == SAMPLE_RATE:
            return wav.data
        usable = len(wav.data) - len(wav.data) % wav.channels
        samples = ulaw_to_float(wav.data[:usable])
    elif wav.format_tag == _WAVE_FORMAT_PCM and wav.bits == 16:
        frame = 2 * wav.channels
        usable = len(wav.data) - len(wav.data) % frame
        samples = np.frombuffer(wav.data[:usable], dtype="<i2").astype(np.float64) / 32768.0
    else:
        raise ValueError(
            f"{source}: unsupported WAV encoding (format tag {wav.format_tag:#06x}, {wav.bits} bits); "
            "expected 16-bit PCM or 8-bit μ-law"
        )
    if wav.channels > 1:
        samples = samples.reshape(-1, wav.channels).mean(axis=1)
    return float_to_ulaw(resample(samples, wav.rate, SAMPLE_RATE))


def read_wav_ulaw(path: StrPath) -> bytes:
    """Reads a WAV file and returns its audio as mono 8 kHz μ-law.

    Accepts 16-bit PCM (mono or multi-channel, mixed down; any sample rate, resampled) and 8-bit
    μ-law WAV (returned as is when mono 8 kHz). Raises `ValueError` for anything else.
    """
    with open(path, "rb") as f:
        blob = f.read()
    return _wav_to_ulaw(_parse_wav(blob, str(path)), str(path))


def write_wav_ulaw(path: StrPath, ulaw: bytes, *more_channels: bytes) -> None:
    """Writes μ-law audio as a 16-bit PCM, 8 kHz WAV file that any player opens: mono from one
    track, one channel per track from several (e.g. caller left, agent right), the shorter ones
    padded with silence."""
    tracks = [
        np.frombuffer(audioop.ulaw2lin(track, 2) if track else b"", dtype="<i2")
        for track in (ulaw, *more_channels)
    ]
    frames = np.zeros((max(t.size for t in tracks), len(tracks)), dtype="<i2")
    for channel, track in enumerate(tracks):
        frames[: track.size, channel] = track
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(tracks))
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(frames.tobytes())


# --------------------------------------------------------------------------- generated audio


def silence_ulaw(ms: float) -> bytes:
    """`ms` milliseconds of μ-law silence (0xFF bytes, 8 per ms)."""
    return bytes([ULAW_SILENCE]) * max(0, round(ms * BYTES_PER_MS))


def tone_ulaw(freq: float, ms: float, amplitude: float = 0.5) -> bytes:
    """A sine tone of `freq` Hz lasting `ms` ms, `amplitude` a fraction of full scale, as μ-law."""
    n = max(0, round(ms * BYTES_PER_MS))
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    return float_to_ulaw(amplitude * np.sin(2.0 * np.pi * freq * t))


def speech_ulaw(text: str, *, voice: str = "en-us", speed: int = 160) -> bytes:
    """Synthesizes `text` with espeak-ng and returns it as 8 kHz μ-law.

    `speed` is espeak-ng's words per minute. Results are cached in memory per
    (text, voice, speed). Raises `RuntimeError` when espeak-ng is missing or fails.
    """
    return _speech_ulaw_cached(text, voice, speed)


@functools.lru_cache(maxsize=256)
def _speech_ulaw_cached(text: str, voice: str, speed: int) -> bytes:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not installed; it is needed to synthesize test speech: "
            "`apt-get install espeak-ng` (Debian/Ubuntu)"
        )
    try:
        proc = subprocess.run(
            [exe, "--stdout", "-v", voice, "-s", str(speed), "--", text],
            capture_output=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError as exc:  # removed between which() and run()
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng`") from exc
    if proc.returncode != 0 or not proc.stdout:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}) for voice {voice!r}: {stderr}")
    wav = _parse_wav(proc.stdout, "espeak-ng output")
    ulaw = _wav_to_ulaw(wav, "espeak-ng output")
    log.debug("synthesized %d ms of speech for %r", len(ulaw) // BYTES_PER_MS, text[:40])
    return ulaw


# --------------------------------------------------------------------------- comparison


def correlation(a_ulaw: bytes, b_ulaw: bytes, *, max_lag_ms: float | None = None) -> float:
    """Peak normalized cross-correlation of two μ-law signals, in [0, 1].

    Both signals are decoded and their means removed; the result is the largest |cross-correlation|
    over all lags (or lags within ±`max_lag_ms`), divided by the geometric mean of the two total
    energies. Identical audio gives 1.0 at any relative delay (added silence does not lower it);
    unrelated audio gives a value near 0. Audio missing from one side lowers it in proportion to
    the missing energy. Returns 0.0 when either side is empty or silent.
    """
    a = ulaw_to_float(a_ulaw)
    b = ulaw_to_float(b_ulaw)
    if a.size == 0 or b.size == 0:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    energy = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    if energy <= 1e-12:
        return 0.0
    n = a.size + b.size - 1
    size = 1 << (n - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    # xcorr[k] = sum a[i + k] b[i]; negative lags wrap to the end of the array.
    lags = np.concatenate([xcorr[: a.size], xcorr[size - (b.size - 1) :]])
    lag_values = np.concatenate([np.arange(a.size), np.arange(-(b.size - 1), 0)])
    if max_lag_ms is not None:
        lags = lags[np.abs(lag_values) <= max_lag_ms * BYTES_PER_MS]
        if lags.size == 0:
            return 0.0
    return float(min(1.0, np.max(np.abs(lags)) / energy))
