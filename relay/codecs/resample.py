"""Low-latency streaming resampler for 16-bit mono PCM between the telephony and model rates.

Design
------
A stateful polyphase FIR: a linear-phase Kaiser-windowed sinc low-pass, designed once at
construction with numpy only, run at the higher of the two rates with the cutoff at the Nyquist
frequency of the 8 kHz side (4 kHz). Decimation computes only the kept outputs; interpolation
computes each output phase from its own sub-filter. Each call turns the input into one strided
(overlapping) view of "history + new samples", does a single ``einsum`` with the taps, then keeps
the last few input samples as state. Output is rounded and saturated to int16.

Why ``einsum`` and not ``np.dot``/``matmul``: those copy the overlapping view into a contiguous
block and call BLAS. BLAS results then depend slightly on the chunk size (one 3 s call vs 20 ms
chunks differed by 1 LSB in 17 of 72k samples at 8k→24k), and BLAS threading depends on the build
and problem size (a threaded call is far slower when the other cores are busy, as they are on a
loaded relay; README, Performance). ``einsum`` (without ``optimize``) never calls BLAS:
single-threaded, no copy (huge chunks need no temporary blocks), identical output whatever the
chunking, at about the same cost per frame.

Filter numbers (computed from the taps, see ``tests/test_codecs.py`` and ``bench/codecs.py``):

============  =======  ====  ========================  ==========================  =========
high rate     taps     β     passband 0-3.4 kHz        stopband ≥ 4.6 kHz          -6 dB at
============  =======  ====  ========================  ==========================  =========
24 kHz        107      8.0   within ±0.001 dB          ≥ 80 dB  (5 kHz: ~109 dB)   4.0 kHz
16 kHz        71       8.0   within ±0.001 dB          ≥ 80 dB  (5 kHz: ~102 dB)   4.0 kHz
============  =======  ====  ========================  ==========================  =========

Algorithmic (group) delay, reported by :attr:`StreamResampler.delay_ms`:

* 8k→24k: 53 samples @ 24 kHz = 2.208 ms; 8k→16k: 35 @ 16 kHz = 2.1875 ms
* 24k→8k: (53 − 2) @ 24 kHz = 2.125 ms; 16k→8k: (35 − 1) @ 16 kHz = 2.125 ms (17 output samples)

A 24k→8k→24k or 8k→24k→8k round trip therefore adds ~4.3 ms. Aliases of 4.0–4.6 kHz content
fold into 3.4–4.0 kHz (above the telephone band); everything above 4.6 kHz is ≥ 80 dB down,
which matches the ~-90 dBFS noise floor of int16.

Streaming contract: after a total of ``T`` input samples the resampler has emitted exactly
``floor(T * out_rate / in_rate)`` samples, so every chunk's output is available immediately
(3n out for n in at 8k→24k; ``floor(T/3) - emitted`` at 24k→8k). The only latency is the
filter's group delay above; :meth:`StreamResampler.flush` drains that tail at end of stream.

Cost: a frame's filter product is small, so numpy's per-call overhead (conversion, rounding,
saturation) is about as large; hence one ``einsum`` per chunk and no extra numpy calls. The figures
per 20 ms frame, against soxr and ``audioop.ratecv``: ``bench/codecs.py`` and the README's
Performance section.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["SUPPORTED_RATE_PAIRS", "StreamResampler"]

#: (in_rate, out_rate) pairs accepted by :class:`StreamResampler` (plus any identical pair).
SUPPORTED_RATE_PAIRS: tuple[tuple[int, int], ...] = (
    (8000, 16000),
    (8000, 24000),
    (24000, 8000),
    (16000, 8000),
)

# Filter design per high (filtering) rate: (taps, Kaiser beta). Both span ~4.4 ms of signal.
_DESIGNS: dict[int, tuple[int, float]] = {
    24000: (107, 8.0),
    16000: (71, 8.0),
}

_F32 = np.float32
_F32_SIZE = np.dtype(_F32).itemsize
_PCM_DTYPE = np.dtype("<i2")
_I16_MIN = _F32(-32768.0)
_I16_MAX = _F32(32767.0)

_FloatArray = npt.NDArray[np.float32]


def design_lowpass(num_taps: int, cutoff_hz: float, rate_hz: float, beta: float) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc low-pass (linear phase, odd length), normalised to unity DC gain."""
    if num_taps < 1 or num_taps % 2 == 0:
        raise ValueError(f"num_taps must be a positive odd number, got {num_taps}")
    fc = cutoff_hz / rate_hz  # cycles per sample
    n = np.arange(num_taps, dtype=np.float64) - (num_taps - 1) / 2
    h = 2.0 * fc * np.sinc(2.0 * fc * n) * np.kaiser(num_taps, beta)
    result: npt.NDArray[np.float64] = h / h.sum()
    return result


def _to_pcm16(y: _FloatArray) -> bytes:
    """Round, saturate to the int16 range and serialise (C order) as little-endian PCM16."""
    np.rint(y, out=y)
    # minimum/maximum ufuncs directly: np.clip adds a Python-level dispatch to every call.
    np.maximum(y, _I16_MIN, out=y)
    np.minimum(y, _I16_MAX, out=y)
    return y.astype(_PCM_DTYPE).tobytes()


class StreamResampler:
    """Stateful streaming resampler for 16-bit little-endian mono PCM.

    Supported conversions: 8000→16000, 8000→24000, 24000→8000, 16000→8000; an identical in/out
    rate is a pass-through. Feed chunks of any (even) byte length to :meth:`process`; each call
    returns all output the input so far determines (no hold-back beyond :attr:`delay_ms`).
    """

    __slots__ = (
        "_buf",
        "_delay_ms",
        "_down",
        "_fed",
        "_in_rate",
        "_kernel",
        "_ntaps",
        "_out_rate",
        "_proto",
        "_up",
        "_width",
    )

    def __init__(self, in_rate: int, out_rate: int) -> None:
        """Build the filter for ``in_rate`` → ``out_rate`` (Hz).

        Raises:
            ValueError: if the pair is not one of :data:`SUPPORTED_RATE_PAIRS` and not identical.
        """
        self._in_rate = int(in_rate)
        self._out_rate = int(out_rate)
        self._up = 1
        self._down = 1
        self._ntaps = 0
        self._width = 0
        self._delay_ms = 0.0
        self._kernel: _FloatArray = np.zeros(0, dtype=_F32)
        self._proto: npt.NDArray[np.float64] = np.ones(1)
        if in_rate == out_rate:
            if in_rate <= 0:
                raise ValueError(f"sample rate must be positive, got {in_rate}")
        elif (in_rate, out_rate) not in SUPPORTED_RATE_PAIRS:
            supported = ", ".join(f"{a}->{b}" for a, b in SUPPORTED_RATE_PAIRS)
            raise ValueError(
                f"unsupported resampling {in_rate}->{out_rate} Hz; supported: {supported} "
                "(or identical rates for pass-through)"
            )
        elif out_rate > in_rate:
            self._init_interpolator()
        else:
            self._init_decimator()
        self._buf: _FloatArray = np.zeros(0, dtype=_F32)
        self._fed = False
        self.reset()

    def _init_interpolator(self) -> None:
        up = self._out_rate // self._in_rate
        ntaps, beta = _DESIGNS[self._out_rate]
        self._proto = design_lowpass(ntaps, self._in_rate / 2, self._out_rate, beta)
        h = self._proto * up
        width = -(-ntaps // up)  # taps per polyphase branch
        hp = np.zeros(width * up)
        hp[:ntaps] = h
        # y[up*t + r] = sum_q h[up*q + r] * x[t - q]; with the window x[t-width+1 .. t] in row t,
        # column i multiplies x[t - (width-1-i)], i.e. q = width-1-i.
        # Stored transposed, (up, width), so the einsum reduction runs over contiguous memory.
        kernel = hp.reshape(width, up)[::-1, :].T
        self._up = up
        self._ntaps = ntaps
        self._width = width
        self._kernel = np.ascontiguousarray(kernel, dtype=_F32)
        self._delay_ms = (ntaps - 1) / 2 / self._out_rate * 1000.0

    def _init_decimator(self) -> None:
        down = self._in_rate // self._out_rate
        ntaps, beta = _DESIGNS[self._in_rate]
        h = self._proto = design_lowpass(ntaps, self._out_rate / 2, self._in_rate, beta)
        # y[m] = sum_k h[k] * x[down*m + down-1 - k]: output m uses the newest sample it may
        # (count contract: floor(T/down) outputs after T inputs), reversed taps for a forward window.
        self._down = down
        self._ntaps = ntaps
        self._width = ntaps
        self._kernel = np.ascontiguousarray(h[::-1], dtype=_F32)
        self._delay_ms = ((ntaps - 1) / 2 - (down - 1)) / self._in_rate * 1000.0

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""
        return self._in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._out_rate

    @property
    def delay_ms(self) -> float:
        """Algorithmic (group) delay of the output relative to the input, in milliseconds."""
        return self._delay_ms

    @property
    def num_taps(self) -> int:
        """Length of the prototype low-pass filter (0 for a pass-through)."""
        return self._ntaps

    @property
    def prototype_taps(self) -> npt.NDArray[np.float64]:
        """Copy of the linear-phase low-pass (unity DC gain) run at ``max(in_rate, out_rate)``.

        ``[1.0]`` for a pass-through. Useful to inspect the frequency response.
        """
        return self._proto.copy()

    def reset(self) -> None:
        """Forget all history (start of a new, unrelated stream)."""
        if self._up > 1:
            self._buf = np.zeros(self._width - 1, dtype=_F32)
        elif self._down > 1:
            self._buf = np.zeros(self._ntaps - self._down, dtype=_F32)
        self._fed = False

    def process(self, pcm16: bytes) -> bytes:
        """Resample a chunk of 16-bit little-endian mono PCM and return the output it determines.

        After ``T`` input samples in total, exactly ``floor(T * out_rate / in_rate)`` output samples
        have been returned.

        Raises:
            ValueError: if ``pcm16`` has an odd number of bytes.
        """
        nbytes = len(pcm16)
        if nbytes & 1:
            raise ValueError(f"PCM16 data must have an even number of bytes, got {nbytes}")
        if self._up == self._down or not nbytes:
            return bytes(pcm16)
        self._fed = True
        buf = np.concatenate((self._buf, np.frombuffer(pcm16, dtype=_PCM_DTYPE)), dtype=_F32)
        if self._up > 1:
            # Row t = window x[t-width+1 .. t]; against kernel row r it gives output up*t + r.
            rows = nbytes >> 1
            view = np.ndarray((rows, self._width), dtype=_F32, buffer=buf, strides=(_F32_SIZE, _F32_SIZE))
            # Computed as (up, rows) — the fastest einsum layout here — and serialised through its
            # transpose: tobytes() writes logical C order, i.e. the interleaved output sequence.
            y = np.einsum("kj,ij->ki", self._kernel, view)
            self._buf = buf[rows:]
            return _to_pcm16(y.T)
        down = self._down
        rows = (buf.size - self._ntaps) // down + 1  # outputs whose whole window is available
        if rows <= 0:
            self._buf = buf
            return b""
        view = np.ndarray((rows, self._ntaps), dtype=_F32, buffer=buf, strides=(down * _F32_SIZE, _F32_SIZE))
        y = np.einsum("ij,j->i", view, self._kernel)
        self._buf = buf[rows * down :]
        return _to_pcm16(y)

    def flush(self) -> bytes:
        """End of stream: return the delayed tail still inside the filter, then :meth:`reset`.

        Feeds zeros so that the last input sample (and any partial decimation block) fully
        reaches the output: ``ceil(delay)`` extra output samples plus one for a partial block.
        Returns ``b""`` for a pass-through or if nothing was processed since the last reset.
        """
        if self._up == self._down or not self._fed:
            self.reset()
            return b""
        tail_out = math.ceil(self._delay_ms * self._out_rate / 1000.0 - 1e-9)
        if self._up > 1:
            zeros = -(-tail_out // self._up)
        else:
            partial = self._buf.size - (self._ntaps - self._down)
            zeros = (self._down - partial) % self._down + tail_out * self._down
        out = self.process(bytes(2 * zeros))
        self.reset()
        return out

    def __repr__(self) -> str:
        return (
            f"StreamResampler({self._in_rate}, {self._out_rate}, taps={self._ntaps}, "
            f"delay_ms={self._delay_ms:.3f})"
        )
