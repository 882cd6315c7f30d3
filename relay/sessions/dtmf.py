"""Key presses from the caller (Twilio `dtmf` events), collected into one entry for the model.

An entry ends at `#` (kept, so the model sees how it was ended) or after DTMF_TIMEOUT_MS without a
key. Sans-I/O: the session feeds each key with its clock and asks for the entry when its timer
fires; the same collector serves the realtime and the cascade paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DIGITS = 64  # a longer entry is ended at this many keys: nothing a phone menu asks for is longer


def entry_text(digits: str) -> str:
    """How an entry reaches the model, as the caller's turn."""
    return f"The caller pressed {digits}"


@dataclass(slots=True)
class DigitCollector:
    timeout_s: float
    digits: list[str] = field(default_factory=list)
    deadline: float | None = None  # when the entry ends unless another key comes

    def press(self, digit: str, now: float) -> str | None:
        """One key; returns the finished entry at `#` (or at MAX_DIGITS), else None."""
        self.digits.append(digit)
        if digit == "#" or len(self.digits) >= MAX_DIGITS:
            return self._take()
        self.deadline = now + self.timeout_s
        return None

    def due(self, now: float) -> str | None:
        """The entry, once its quiet time has passed; None before (or when there is none)."""
        if self.deadline is None or now < self.deadline:
            return None
        return self._take()

    def _take(self) -> str:
        entry, self.digits, self.deadline = "".join(self.digits), [], None
        return entry


__all__ = ["MAX_DIGITS", "DigitCollector", "entry_text"]
