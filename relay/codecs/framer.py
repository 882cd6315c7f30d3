"""Re-chunk a byte stream into fixed-size frames (e.g. 160-byte / 20 ms μ-law frames for Twilio)."""

from __future__ import annotations

__all__ = ["ULAW_SILENCE", "Framer"]

#: μ-law code for digital silence (decodes to 0), used to pad a final partial frame.
ULAW_SILENCE = 0xFF


class Framer:
    """Accumulate arbitrary chunks and hand out exact ``frame_bytes``-sized frames.

    >>> f = Framer(4)
    >>> f.push(b"abcdef")
    [b'abcd']
    >>> f.pending
    2
    >>> f.flush()
    b'ef\\xff\\xff'
    """

    __slots__ = ("_buf", "_frame_bytes")

    def __init__(self, frame_bytes: int = 160) -> None:
        """Create a framer producing frames of exactly ``frame_bytes`` bytes (must be > 0)."""
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self._frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def frame_bytes(self) -> int:
        """Size of every frame returned by :meth:`push`."""
        return self._frame_bytes

    @property
    def pending(self) -> int:
        """Number of bytes buffered that do not yet make up a whole frame."""
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Append ``data`` and return every complete frame now available, in order.

        The returned list is empty when fewer than ``frame_bytes`` bytes are buffered.
        """
        size = self._frame_bytes
        buf = self._buf
        if not buf:
            # Fast path: nothing pending, slice the input directly without copying it into the buffer.
            n = len(data)
            whole = n - n % size
            frames = [bytes(data[i : i + size]) for i in range(0, whole, size)]
            if whole < n:
                buf += data[whole:]
            return frames
        buf += data
        whole = len(buf) - len(buf) % size
        if not whole:
            return []
        frames = [bytes(buf[i : i + size]) for i in range(0, whole, size)]
        del buf[:whole]
        return frames

    def flush(self, pad: int | None = ULAW_SILENCE) -> bytes | None:
        """Return the buffered remainder and empty the buffer.

        Args:
            pad: byte value used to pad the remainder to a whole frame (default μ-law silence
                ``0xFF``), or ``None`` to return the remainder unpadded.

        Returns:
            The remainder (padded to exactly ``frame_bytes`` unless ``pad`` is ``None``), or ``None``
            if nothing was pending.
        """
        if pad is not None and not 0 <= pad <= 0xFF:
            raise ValueError(f"pad must be a byte value 0..255 or None, got {pad}")
        if not self._buf:
            return None
        rest = bytes(self._buf)
        self._buf.clear()
        if pad is not None:
            rest += bytes((pad,)) * (self._frame_bytes - len(rest))
        return rest

    def reset(self) -> None:
        """Drop any pending bytes (e.g. on barge-in / ``clear``)."""
        self._buf.clear()
