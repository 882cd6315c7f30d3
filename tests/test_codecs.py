"""Tests for relay.codecs: μ-law, streaming resampler, framer (pure, synchronous)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.codecs import (
    SUPPORTED_RATE_PAIRS,
    Framer,
    StreamResampler,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)

PAIRS = list(SUPPORTED_RATE_PAIRS)
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- helpers


def g711_ulaw_decode(code: int) -> int:
    """Reference G.711 μ-law expansion (ITU-T G.711 / Sun g711.c), written out independently."""
    u = ~code & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def to_pcm(x: FloatArray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def from_pcm(b: bytes) -> FloatArray:
    return np.frombuffer(b, dtype="<i2").astype(np.float64)


def run_chunks(rs: StreamResampler, pcm: bytes, sizes: list[int]) -> bytes:
    """Feed ``pcm`` in chunks of ``sizes`` samples (cycled), then flush."""
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(pcm):
        n = 2 * sizes[i % len(sizes)]
        out += rs.process(pcm[pos : pos + n])
        pos += n
        i += 1
    out += rs.flush()
    return bytes(out)


def resample_all(in_rate: int, out_rate: int, x: FloatArray) -> FloatArray:
    rs = StreamResampler(in_rate, out_rate)
    return from_pcm(rs.process(to_pcm(x)) + rs.flush())


def tone(freq: float, rate: int, seconds: float, amp: float, phase: float = 0.0) -> FloatArray:
    t = np.arange(round(rate * seconds)) / rate
    result: FloatArray = amp * np.sin(2 * np.pi * freq * t + phase)
    return result


def snr_db(ref: FloatArray, test: FloatArray) -> float:
    noise = float(np.sum((ref - test) ** 2))
    if noise == 0.0:
        return math.inf
    return 10 * math.log10(float(np.sum(ref**2)) / noise)


def rms(x: FloatArray) -> float:
    return float(np.sqrt(np.mean(x**2)))


# --------------------------------------------------------------------------- μ-law


def test_ulaw_decodes_all_256_codes_per_g711() -> None:
    pcm = from_pcm(ulaw_to_pcm16(bytes(range(256))))
    expected = [g711_ulaw_decode(c) for c in range(256)]
    assert pcm.astype(int).tolist() == expected
    assert g711_ulaw_decode(0xFF) == 0 and g711_ulaw_decode(0x00) == -32124
    assert g711_ulaw_decode(0x80) == 32124


def test_ulaw_round_trip_all_codes() -> None:
    codes = bytes(range(256))
    again = pcm16_to_ulaw(ulaw_to_pcm16(codes))
    # 0x7F is "negative zero": it decodes to 0, which encodes as the canonical 0xFF.
    expected = bytes(0xFF if c == 0x7F else c for c in codes)
    assert again == expected


def test_ulaw_encode_quantisation_error_is_bounded() -> None:
    x = np.arange(-32768, 32768, 7, dtype=np.int64)
    y = from_pcm(ulaw_to_pcm16(pcm16_to_ulaw(x.astype("<i2").tobytes())))
    err = np.abs(y - x)
    # μ-law segments: step is 8 << exponent (in 16-bit units), max half-step ~ 1/32 of magnitude + 8.
    assert np.all(err <= np.abs(x) / 16 + 16)
    assert np.all(np.sign(y[np.abs(x) > 16]) == np.sign(x[np.abs(x) > 16]))


def test_ulaw_empty_and_odd() -> None:
    assert ulaw_to_pcm16(b"") == b""
    assert pcm16_to_ulaw(b"") == b""
    assert len(ulaw_to_pcm16(b"\xff" * 160)) == 320
    with pytest.raises(ValueError):
        pcm16_to_ulaw(b"\x00\x01\x02")


# --------------------------------------------------------------------------- resampler


@settings(max_examples=60, deadline=None, database=None)
@given(
    pair=st.sampled_from(PAIRS),
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=12).filter(any),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_chunked_equals_one_shot(pair: tuple[int, int], sizes: list[int], seed: int) -> None:
    in_rate, out_rate = pair
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 6000.0, size=int(rng.integers(1, 3000)))
    pcm = to_pcm(x)
    one = StreamResampler(in_rate, out_rate)
    ref = from_pcm(one.process(pcm) + one.flush())
    got = from_pcm(run_chunks(StreamResampler(in_rate, out_rate), pcm, sizes))
    assert got.size == ref.size
    assert snr_db(ref, got) > 60.0


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_large_chunk_matches_20ms_chunks(in_rate: int, out_rate: int) -> None:
    # A few seconds in one call gives the same output as 20 ms chunks (bit-exact here: no BLAS).
    pcm = to_pcm(np.random.default_rng(5).normal(0.0, 5000.0, in_rate * 3 + 7))
    one = StreamResampler(in_rate, out_rate)
    big = one.process(pcm) + one.flush()
    small = run_chunks(StreamResampler(in_rate, out_rate), pcm, [in_rate // 50])
    assert len(big) == len(small)
    assert np.abs(from_pcm(big) - from_pcm(small)).max() <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@pytest.mark.parametrize("kind", ["20ms", "odd"])
def test_each_chunk_output_length_is_exact(in_rate: int, out_rate: int, kind: str) -> None:
    rs = StreamResampler(in_rate, out_rate)
    sizes = [in_rate // 50] * 10 if kind == "20ms" else [1, 7, 13, 2, 101, 479, 5, 3, 160, 319, 11, 1]
    rng = np.random.default_rng(1)
    total_in = total_out = 0
    for n in sizes * 3:
        out = rs.process(to_pcm(rng.normal(0, 3000, n)))
        total_in += n
        expected = total_in * out_rate // in_rate - total_out
        assert len(out) == 2 * expected, (n, total_in, total_out)
        total_out += expected
        if kind == "20ms":
            assert expected == out_rate // 50
        if out_rate > in_rate:
            assert expected == n * out_rate // in_rate


@pytest.mark.parametrize("mid", [16000, 24000])
def test_sine_survives_round_trip(mid: int) -> None:
    amp = 10000.0
    x = tone(1000.0, 8000, 1.0, amp)
    y = resample_all(mid, 8000, resample_all(8000, mid, x))
    seg = y[1000 : 1000 + 4000]  # steady state, 0.5 s -> 2 Hz bins, 1 kHz on bin 500
    spec = np.abs(np.fft.rfft(seg)) * 2 / seg.size
    freqs = np.fft.rfftfreq(seg.size, 1 / 8000)
    peak = int(np.argmax(spec))
    assert freqs[peak] == pytest.approx(1000.0)
    gain_db = 20 * math.log10(spec[peak] / amp)
    assert abs(gain_db) < 1.0
    # The rest of the spectrum holds only rounding noise.
    others = np.delete(spec, [peak - 1, peak, peak + 1])
    assert 20 * math.log10(float(others.max()) / amp) < -60


@pytest.mark.parametrize("in_rate", [24000, 16000])
def test_alias_suppression_5khz(in_rate: int) -> None:
    amp = 16000.0
    x = tone(5000.0, in_rate, 0.5, amp)
    y = resample_all(in_rate, 8000, x)[200:-200]
    suppression = 20 * math.log10((amp / math.sqrt(2)) / max(rms(y), 1e-9))
    assert suppression >= 40.0
    assert suppression >= 75.0  # the actual design: ≥ 80 dB stopband, int16 rounding noise ~ -90 dB


@pytest.mark.parametrize("out_rate", [24000, 16000])
def test_image_suppression_upsampling(out_rate: int) -> None:
    amp = 16000.0
    y = resample_all(8000, out_rate, tone(1000.0, 8000, 0.5, amp))[400:-400]
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / out_rate)
    images = spec[freqs >= 4600].max()
    assert 20 * math.log10(spec.max() / images) >= 60.0


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_filter_design_numbers(in_rate: int, out_rate: int) -> None:
    rs = StreamResampler(in_rate, out_rate)
    rate = max(in_rate, out_rate)
    h = rs.prototype_taps
    assert h.size == rs.num_taps == {24000: 107, 16000: 71}[rate]
    n = np.arange(h.size)

    def response_db(f: FloatArray) -> FloatArray:
        mag = np.abs(np.exp(-2j * np.pi * np.outer(f, n) / rate) @ h)
        return np.asarray(20 * np.log10(mag), dtype=np.float64)

    passband = response_db(np.linspace(0, 3400, 200))
    assert np.all(np.abs(passband) < 0.01)
    assert response_db(np.linspace(4600, rate / 2, 2000)).max() < -79.5
    assert response_db(np.array([4000.0]))[0] == pytest.approx(-6.02, abs=0.05)
    assert np.allclose(h, h[::-1])  # linear phase
    assert h.sum() == pytest.approx(1.0)


def measured_delay_ms(in_rate: int, out_rate: int) -> float:
    """Delay by cross-correlating the output with the ideal (continuous-time) band-limited input."""
    rng = np.random.default_rng(7)
    freqs = rng.uniform(150.0, 3300.0, 40)
    phases = rng.uniform(0, 2 * np.pi, 40)

    def signal(rate: int, n: int) -> FloatArray:
        t = np.arange(n)[:, None] / rate
        s: FloatArray = np.sin(2 * np.pi * freqs * t + phases).sum(axis=1)
        return s / np.abs(s).max() * 12000

    seconds = 0.5
    x = signal(in_rate, round(in_rate * seconds))
    y = resample_all(in_rate, out_rate, x)
    ref = signal(out_rate, y.size)
    max_lag = round(out_rate * 0.01)  # search 0..10 ms
    core = slice(max_lag, y.size - max_lag)
    # sum(a * b), not np.dot: a BLAS dot this long may go multi-threaded and stall on a busy box.
    xc = np.array([np.sum(y[core] * ref[core.start - lag : core.stop - lag]) for lag in range(max_lag)])
    k = int(np.argmax(xc))
    frac = 0.0
    if 0 < k < max_lag - 1:  # parabolic interpolation of the peak
        a, b, c = xc[k - 1], xc[k], xc[k + 1]
        frac = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + frac) / out_rate * 1000.0


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_delay_is_small_and_as_reported(in_rate: int, out_rate: int) -> None:
    rs = StreamResampler(in_rate, out_rate)
    assert 0 < rs.delay_ms <= 5.0
    measured = measured_delay_ms(in_rate, out_rate)
    assert abs(measured - rs.delay_ms) < 0.5, (measured, rs.delay_ms)


def test_saturates_instead_of_wrapping() -> None:
    # A full-scale square wave overshoots (Gibbs) after filtering; it must clip, not wrap.
    x = np.where(np.arange(8000) % 16 < 8, 32767.0, -32768.0)
    y = resample_all(8000, 24000, x)
    assert y.max() == 32767 and y.min() == -32768
    # Where the delayed input is at +full scale mid-half-period the output must stay positive.
    delay = round(StreamResampler(8000, 24000).delay_ms * 24)
    centres = np.arange(12 + delay, y.size - 48, 48)  # centre of each positive half-period
    assert np.all(y[centres] > 20000)


def test_flush_drains_and_resets() -> None:
    rs = StreamResampler(24000, 8000)
    pcm = to_pcm(tone(440.0, 24000, 0.1, 8000.0))[: 2 * 1001]  # 1001 samples: partial block
    first = rs.process(pcm)
    assert len(first) == 2 * (1001 // 3)
    tail = rs.flush()
    # One output for the partial block plus ceil(delay) samples of filter tail.
    assert len(tail) == 2 * (1 + math.ceil(rs.delay_ms * 8))
    assert rs.flush() == b""
    assert rs.process(pcm) == first  # state was reset


def test_identity_is_pass_through() -> None:
    rs = StreamResampler(8000, 8000)
    data = to_pcm(np.arange(-50.0, 50.0))
    assert rs.process(data) == data
    assert rs.flush() == b""
    assert rs.delay_ms == 0.0


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 48000), (44100, 8000), (24000, 16000), (16000, 24000)]
)
def test_invalid_rate_pair(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError, match=r"8000->24000.*24000->8000"):
        StreamResampler(in_rate, out_rate)


def test_odd_byte_count_rejected_and_empty_ok() -> None:
    rs = StreamResampler(8000, 24000)
    with pytest.raises(ValueError):
        rs.process(b"\x00\x00\x00")
    assert rs.process(b"") == b""


# --------------------------------------------------------------------------- framer


@settings(max_examples=80, deadline=None, database=None)
@given(
    frame_bytes=st.integers(min_value=1, max_value=400),
    chunks=st.lists(st.binary(min_size=0, max_size=700), max_size=20),
)
def test_framer_exact_frames_from_arbitrary_chunks(frame_bytes: int, chunks: list[bytes]) -> None:
    framer = Framer(frame_bytes)
    frames: list[bytes] = []
    for chunk in chunks:
        frames += framer.push(chunk)
    data = b"".join(chunks)
    assert all(len(f) == frame_bytes for f in frames)
    assert b"".join(frames) == data[: len(data) - len(data) % frame_bytes]
    assert framer.pending == len(data) % frame_bytes


def test_framer_flush_padding() -> None:
    framer = Framer()
    assert framer.push(b"\x01" * 100) == []
    assert framer.pending == 100
    assert framer.flush() == b"\x01" * 100 + b"\xff" * 60
    assert framer.pending == 0
    assert framer.flush() is None

    framer.push(b"\x02" * 170)
    assert framer.flush(pad=None) == b"\x02" * 10
    framer.push(b"\x03" * 5)
    assert framer.flush(pad=0x00) == b"\x03" * 5 + b"\x00" * 155


def test_framer_empty_flush_and_exact_multiple() -> None:
    framer = Framer(160)
    assert framer.flush() is None
    assert framer.flush(pad=None) is None
    frames = framer.push(bytes(320))
    assert len(frames) == 2
    assert framer.flush() is None


def test_framer_rejects_bad_args() -> None:
    with pytest.raises(ValueError):
        Framer(0)
    framer = Framer(4)
    framer.push(b"ab")
    with pytest.raises(ValueError):
        framer.flush(pad=256)
