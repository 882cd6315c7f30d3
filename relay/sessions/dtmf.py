"""Key presses from the caller (Twilio `dtmf` events), collected into one entry for the model.

An entry ends at `#` (kept, so the model sees how it was ended) or after DTMF_TIMEOUT_MS without a
key. The collector is sans-I/O: the session feeds each key with its clock; `EntryTimer` (the only
I/O here, a task per key press) tells the session when the quiet time has passed. Both serve the
realtime and the cascade paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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


class EntryTimer:
    """Ends the entry being typed at its deadline, not at a later periodic tick: after every key
    press the session `arm`s it with the collector's deadline and what to do then (`due`, given
    the time, never before the deadline). Key presses are rare: a task each."""

    def __init__(self, clock: Callable[[], float], due: Callable[[float], Awaitable[None]]) -> None:
        self.clock = clock
        self.due = due
        self._task: asyncio.Task[None] | None = None

    def arm(self, deadline: float | None) -> None:
        """Replaces the pending wait with one for `deadline` (None: no entry is being typed)."""
        self.cancel()
        if deadline is not None:
            self._task = asyncio.get_running_loop().create_task(self._wait(deadline))

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _wait(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.clock()))
        self._task = None
        await self.due(max(self.clock(), deadline))  # the loop's timer may fire a hair early


__all__ = ["MAX_DIGITS", "DigitCollector", "EntryTimer", "entry_text"]
