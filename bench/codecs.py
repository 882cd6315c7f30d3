"""Benchmark relay.codecs against soxr and audioop.ratecv (run: ``python bench/codecs.py``).

Prints two tables:

* μ-law encode/decode cost per 20 ms frame (audioop vs numpy lookup tables);
* per resampling pair and implementation: cost per 20 ms frame, algorithmic delay (measured by
  cross-correlating the streamed output with the ideal band-limited signal), hold-back (output
  deficit versus ``floor(total_in * ratio)`` after each 20 ms chunk), worst-case latency
  (delay + max hold-back), gain at 3.4 kHz, alias rejection (5 kHz tone, downsampling) or image
  rejection (1 kHz tone, images ≥ 4.6 kHz, upsampling), and chunked-vs-one-shot SNR.

soxr is optional (a dev dependency); without it only its rows are skipped.
"""

from __future__ import annotations

import functools
import gc
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from relay.codecs import SUPPORTED_RATE_PAIRS, StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

try:
    import soxr
except ImportError:  # pragma: no cover - optional comparison
    soxr = None

FloatArray = npt.NDArray[np.float64]

SOXR_QUALITIES = ("QQ", "LQ", "HQ", "VHQ")
RNG_SEED = 1234


# --------------------------------------------------------------------------- stream adapters


@dataclass
class Stream:
    """bytes-in/bytes-out streaming interface shared by every implementation under test."""

    name: str
    process: Callable[[bytes], bytes]
    flush: Callable[[], bytes]


def our_stream(in_rate: int, out_rate: int) -> Stream:
    rs = StreamResampler(in_rate, out_rate)
    return Stream("relay StreamResampler", rs.process, rs.flush)  # bound methods: nothing in between


def soxr_stream(in_rate: int, out_rate: int, quality: str) -> Stream:
    assert soxr is not None
    rs = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
    empty = np.zeros(0, dtype=np.int16)

    def process(pcm: bytes) -> bytes:
        out: np.ndarray = rs.resample_chunk(np.frombuffer(pcm, dtype=np.int16))
        return out.tobytes()

    def flush() -> bytes:
        out: np.ndarray = rs.resample_chunk(empty, last=True)
        return out.tobytes()

    return Stream(f"soxr ResampleStream {quality}", process, flush)


def ratecv_stream(in_rate: int, out_rate: int) -> Stream:
    state: tuple[int, tuple[tuple[int, int], ...]] | None = None

    def process(pcm: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(pcm, 2, 1, in_rate, out_rate, state)
        return out

    return Stream("audioop.ratecv", process, lambda: b"")


def factories() -> list[Callable[[int, int], Stream]]:
    makers: list[Callable[[int, int], Stream]] = [our_stream]
    if soxr is not None:
        for q in SOXR_QUALITIES:
            makers.append(functools.partial(soxr_stream, quality=q))
    makers.append(ratecv_stream)
    return makers


# --------------------------------------------------------------------------- signals / helpers


def to_pcm(x: FloatArray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def from_pcm(b: bytes) -> FloatArray:
    return np.frombuffer(b, dtype="<i2").astype(np.float64)


def tone(freq: float, rate: int, seconds: float, amp: float) -> FloatArray:
    t = np.arange(round(rate * seconds)) / rate
    result: FloatArray = amp * np.sin(2 * np.pi * freq * t)
    return result


class MultiSine:
    """Band-limited (150-3300 Hz) test signal that can be sampled exactly at any rate."""

    def __init__(self, seed: int = 7, count: int = 40) -> None:
        rng = np.random.default_rng(seed)
        self.freqs = rng.uniform(150.0, 3300.0, count)
        self.phases = rng.uniform(0, 2 * np.pi, count)
        probe = np.sin(2 * np.pi * self.freqs * (np.arange(8000)[:, None] / 8000) + self.phases).sum(axis=1)
        self.scale = 12000.0 / float(np.abs(probe).max())

    def sample(self, rate: int, n: int) -> FloatArray:
        t = np.arange(n)[:, None] / rate
        s: FloatArray = np.sin(2 * np.pi * self.freqs * t + self.phases).sum(axis=1) * self.scale
        return s


def stream_all(stream: Stream, pcm: bytes, chunk_samples: list[int]) -> bytes:
    out = bytearray()
    pos = i = 0
    while pos < len(pcm):
        n = 2 * chunk_samples[i % len(chunk_samples)]
        out += stream.process(pcm[pos : pos + n])
        pos += n
        i += 1
    out += stream.flush()
    return bytes(out)


def per_frame_us(fn: Callable[[bytes], object], frames: list[bytes], repeat: int = 7) -> float:
    """Best-of-``repeat`` mean wall time per call over ``frames`` (µs), GC disabled."""
    loops = max(1, 2000 // len(frames))
    best = math.inf
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                for f in frames:
                    fn(f)
            best = min(best, (time.perf_counter_ns() - t0) / (loops * len(frames)))
    finally:
        if gc_was_enabled:
            gc.enable()
    return best / 1000.0


def call_p99_us(fn: Callable[[bytes], object], frames: list[bytes], calls: int = 3000) -> float:
    """99th percentile of single-call wall time (µs) over ``calls`` calls, GC disabled."""
    times = np.empty(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            f = frames[i % len(frames)]
            t0 = time.perf_counter_ns()
            fn(f)
            times[i] = time.perf_counter_ns() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    return float(np.percentile(times, 99)) / 1000.0


# --------------------------------------------------------------------------- measurements


@dataclass
class Row:
    name: str
    us_per_frame: float
    us_p99: float
    delay_ms: float
    hold_mean_ms: float
    hold_max_ms: float
    gain_3k4_db: float
    rejection: str
    snr: str


def measure_delay_ms(make: Callable[[], Stream], in_rate: int, out_rate: int) -> float:
    sig = MultiSine()
    x = sig.sample(in_rate, in_rate // 2)
    y = from_pcm(stream_all(make(), to_pcm(x), [in_rate // 50]))
    ref = sig.sample(out_rate, y.size)
    lo, hi = -round(out_rate * 0.005), round(out_rate * 0.03)  # search -5 .. +30 ms
    core = slice(hi, y.size - hi)
    lags = range(lo, hi)
    xc = np.array([np.sum(y[core] * ref[core.start - lag : core.stop - lag]) for lag in lags])
    k = int(np.argmax(xc))
    frac = 0.0
    if 0 < k < len(xc) - 1:
        a, b, c = xc[k - 1], xc[k], xc[k + 1]
        frac = 0.5 * (a - c) / (a - 2 * b + c)
    return (lags[k] + frac) / out_rate * 1000.0


def measure_holdback_ms(make: Callable[[], Stream], in_rate: int, out_rate: int) -> tuple[float, float]:
    stream = make()
    frame = in_rate // 50
    x = MultiSine().sample(in_rate, frame * 100)
    pcm = to_pcm(x)
    total_in = total_out = 0
    deficits: list[float] = []
    for i in range(100):
        total_out += len(stream.process(pcm[2 * i * frame : 2 * (i + 1) * frame])) // 2
        total_in += frame
        deficits.append((total_in * out_rate // in_rate - total_out) / out_rate * 1000.0)
    return float(np.mean(deficits)), float(np.max(deficits))


def steady(y: FloatArray, rate: int) -> FloatArray:
    skip = rate // 20  # drop 50 ms at each end (filter transients)
    return y[skip : y.size - skip]


def measure_gain_db(make: Callable[[], Stream], in_rate: int, out_rate: int, freq: float) -> float:
    amp = 10000.0
    y = steady(from_pcm(stream_all(make(), to_pcm(tone(freq, in_rate, 0.5, amp)), [in_rate // 50])), out_rate)
    return 20 * math.log10(float(np.sqrt(np.mean(y**2))) / (amp / math.sqrt(2)))


def measure_rejection(make: Callable[[], Stream], in_rate: int, out_rate: int) -> str:
    amp = 30000.0
    if out_rate < in_rate:  # alias of a 5 kHz tone (lands on 3 kHz at 8 kHz output)
        x = tone(5000.0, in_rate, 0.5, amp)
        y = steady(from_pcm(stream_all(make(), to_pcm(x), [in_rate // 50])), out_rate)
        r = float(np.sqrt(np.mean(y**2)))
        if r == 0.0:
            return f">{20 * math.log10(2 * amp):.0f} (0 LSB)"
        return f"{20 * math.log10(amp / math.sqrt(2) / r):.1f}"
    # upsampling: images of a 1 kHz tone (7 kHz, 9 kHz, ...) relative to the tone
    y = steady(
        from_pcm(stream_all(make(), to_pcm(tone(1000.0, in_rate, 0.5, amp)), [in_rate // 50])), out_rate
    )
    spec = np.abs(np.fft.rfft(y * np.blackman(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / out_rate)
    return f"{20 * math.log10(spec.max() / spec[freqs >= 4600].max()):.1f}"


def measure_snr(make: Callable[[], Stream], in_rate: int) -> str:
    rng = np.random.default_rng(RNG_SEED)
    pcm = to_pcm(MultiSine(seed=3).sample(in_rate, in_rate))
    one = from_pcm(stream_all(make(), pcm, [len(pcm) // 2]))
    sizes = [int(n) for n in rng.integers(1, in_rate // 25, 200)]
    chunked = from_pcm(stream_all(make(), pcm, sizes))
    n = min(one.size, chunked.size)
    noise = float(np.sum((one[:n] - chunked[:n]) ** 2))
    length_note = "" if one.size == chunked.size else f" (len {one.size - chunked.size:+d})"
    if noise == 0.0:
        return "inf (bit-exact)" + length_note
    return f"{10 * math.log10(float(np.sum(one[:n] ** 2)) / noise):.1f}" + length_note


def measure_row(maker: Callable[[int, int], Stream], in_rate: int, out_rate: int) -> Row:
    def make() -> Stream:
        return maker(in_rate, out_rate)

    frame = in_rate // 50
    frames_pcm = to_pcm(MultiSine(seed=11).sample(in_rate, frame * 50))
    frames = [frames_pcm[2 * i * frame : 2 * (i + 1) * frame] for i in range(50)]
    stream = make()
    us = per_frame_us(stream.process, frames)
    p99 = call_p99_us(stream.process, frames)
    hold_mean, hold_max = measure_holdback_ms(make, in_rate, out_rate)
    return Row(
        name=stream.name,
        us_per_frame=us,
        us_p99=p99,
        delay_ms=measure_delay_ms(make, in_rate, out_rate),
        hold_mean_ms=hold_mean,
        hold_max_ms=hold_max,
        gain_3k4_db=measure_gain_db(make, in_rate, out_rate, 3400.0),
        rejection=measure_rejection(make, in_rate, out_rate),
        snr=measure_snr(make, in_rate),
    )


# --------------------------------------------------------------------------- report


def bench_ulaw() -> None:
    frame_ulaw = bytes(np.random.default_rng(RNG_SEED).integers(0, 256, 160, dtype=np.uint8))
    frame_pcm = ulaw_to_pcm16(frame_ulaw)
    frames_u = [frame_ulaw]
    frames_p = [frame_pcm]
    decode_table = np.frombuffer(ulaw_to_pcm16(bytes(range(256))), dtype="<i2").copy()
    encode_table = np.frombuffer(
        pcm16_to_ulaw(np.arange(-32768, 32768, dtype="<i2").tobytes()), dtype=np.uint8
    ).copy()

    def np_decode(b: bytes) -> bytes:
        return decode_table[np.frombuffer(b, dtype=np.uint8)].tobytes()

    def np_encode(b: bytes) -> bytes:
        return encode_table[np.frombuffer(b, dtype="<i2").astype(np.int32) + 32768].tobytes()

    assert np_decode(frame_ulaw) == ulaw_to_pcm16(frame_ulaw)
    assert np_encode(frame_pcm) == pcm16_to_ulaw(frame_pcm)
    print("μ-law, one 20 ms frame (160 samples)")
    print(f"  {'operation':<40} {'µs/frame':>9}")
    rows = [
        ("ulaw_to_pcm16 (audioop)", per_frame_us(ulaw_to_pcm16, frames_u)),
        ("pcm16_to_ulaw (audioop)", per_frame_us(pcm16_to_ulaw, frames_p)),
        ("decode via numpy 256-entry table", per_frame_us(np_decode, frames_u)),
        ("encode via numpy 65536-entry table", per_frame_us(np_encode, frames_p)),
    ]
    for name, us in rows:
        print(f"  {name:<40} {us:>9.2f}")
    print()


def response_db(taps: FloatArray, rate: int, freqs: FloatArray) -> FloatArray:
    """Magnitude response (dB) of an FIR at the given frequencies."""
    n = np.arange(taps.size)
    mag = np.abs(np.exp(-2j * np.pi * np.outer(freqs, n) / rate) @ taps)
    return np.asarray(20 * np.log10(np.maximum(mag, 1e-12)), dtype=np.float64)


def design_summary(rs: StreamResampler) -> str:
    rate = max(rs.in_rate, rs.out_rate)
    taps = rs.prototype_taps
    passband = response_db(taps, rate, np.linspace(0, 3400, 400))
    stop = -response_db(taps, rate, np.linspace(4600, rate / 2, 4000)).max()
    at5k = -response_db(taps, rate, np.array([5000.0]))[0]
    return (
        f"{rs.num_taps} taps @ {rate} Hz, delay_ms={rs.delay_ms:.3f}; from the taps: "
        f"passband 0-3.4 kHz {passband.min():+.4f}..{passband.max():+.4f} dB, "
        f"stopband >=4.6 kHz {stop:.1f} dB, 5 kHz {at5k:.1f} dB"
    )


def bench_resamplers() -> None:
    header = (
        f"  {'implementation':<26} {'µs/20ms':>8} {'p99 µs':>7} {'delay ms':>9} {'hold mean':>10} "
        f"{'hold max':>9} {'worst ms':>9} {'3.4k dB':>8} {'alias/img dB':>14} {'chunk SNR dB':>16}"
    )
    for in_rate, out_rate in SUPPORTED_RATE_PAIRS:
        ours = StreamResampler(in_rate, out_rate)
        print(f"{in_rate} -> {out_rate} Hz   (20 ms frame = {in_rate // 50} -> {out_rate // 50} samples)")
        print(f"  StreamResampler: {design_summary(ours)}")
        print(header)
        for maker in factories():
            row = measure_row(maker, in_rate, out_rate)
            print(
                f"  {row.name:<26} {row.us_per_frame:>8.2f} {row.us_p99:>7.1f} {row.delay_ms:>9.3f} "
                f"{row.hold_mean_ms:>10.3f} {row.hold_max_ms:>9.3f} {row.delay_ms + row.hold_max_ms:>9.3f} "
                f"{row.gain_3k4_db:>8.2f} {row.rejection:>14} {row.snr:>16}"
            )
        print()
    print(
        "µs/20ms: best-of-7 mean per call over 20 ms frames; p99 µs: 99th percentile of single calls;\n"
        "delay: cross-correlation of the streamed output against the ideal signal; hold: output owed\n"
        "(floor(total_in*ratio) - total_out) after each 20 ms chunk; worst = delay + max hold;\n"
        "alias/img: 5 kHz tone alias rejection (down) or 1 kHz tone image rejection above 4.6 kHz (up);\n"
        "chunk SNR: random chunk sizes vs a single call (same implementation)."
    )


def main() -> None:
    import numpy

    print(f"numpy {numpy.__version__}; soxr {getattr(soxr, '__version__', 'not installed')}")
    print()
    bench_ulaw()
    bench_resamplers()


if __name__ == "__main__":
    main()
