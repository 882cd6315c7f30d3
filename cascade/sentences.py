"""Cut a streamed chat answer into sentences for text-to-speech, as early as possible.

Sans-I/O: :class:`SentenceChunker` takes text deltas and returns finished sentences. The first
sentence goes to TTS the moment it is complete, while the model is still writing the rest, so the
caller hears the answer begin after one sentence of generation instead of the whole answer.

Rules:

* A sentence ends at ``.``, ``!``, ``?`` or ``…`` (runs such as ``?!`` or ``...`` included, closing
  quotes and brackets after them too) followed by whitespace and then a word that does not start
  in lower case (or by a newline). Waiting for the next word's first letter tells ``3.5``,
  ``example.com`` and ``"Yes!" she said`` from real ends; models stream words with their leading
  space (``" The"``), so this costs no extra token. End of stream: :meth:`flush`.
* Not an end: a period after a known abbreviation (``Dr.``, ``Mr.``, ``e.g.``, ``i.e.``, ``vs.``,
  …), after dotted initials (``U.S.``), after a single capital letter (``J. Smith``), or after a
  number that starts the chunk or a line (a list item such as ``1.``).
* Softer boundaries once a chunk has ``min_chars`` characters: ``;`` or ``:`` followed by
  whitespace, and a newline. A blank line (paragraph break) always ends a chunk.
* A chunk that reaches ``max_chars`` without a boundary is cut at the last comma, else the last
  space, before ``max_chars`` (else hard at ``max_chars``), so one request never grows unbounded.

Returned sentences are stripped of surrounding whitespace; empty ones are never returned.
"""

from __future__ import annotations

import re

__all__ = ["SentenceChunker"]

_TERMINATORS = ".!?…"
_CLOSERS = "\"'”’»)]}"
_OPENERS = "\"'“‘«([{"
_SOFT = ";:"
#: Lower-case words that take a period without ending a sentence.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "approx",
        "dept",
        "fig",
        "ca",
        "cf",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
    }
)
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")


class SentenceChunker:
    """Accumulates streamed text and hands out complete sentences.

    >>> c = SentenceChunker()
    >>> c.push("Sure. The total is 3.")
    ['Sure.']
    >>> c.push("5 dollars. Anything")
    ['The total is 3.5 dollars.']
    >>> c.push(" else?")
    []
    >>> c.flush()
    'Anything else?'
    """

    def __init__(self, min_chars: int = 20, max_chars: int = 240) -> None:
        """``min_chars``: length before ``;``, ``:`` or a newline may end a chunk; ``max_chars``: hard cap.

        Raises:
            ValueError: unless ``0 <= min_chars < max_chars``.
        """
        if not 0 <= min_chars < max_chars:
            raise ValueError(f"need 0 <= min_chars < max_chars, got {min_chars} and {max_chars}")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._scan = 0  # everything before this index is known not to hold a boundary

    def push(self, delta: str) -> list[str]:
        """Adds ``delta`` and returns every sentence completed by it (often none), in order."""
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._next_boundary()
            if cut is None and len(self._buf) > self.max_chars:
                cut = self._forced_cut()
            if cut is None:
                return out
            sentence = self._buf[:cut].strip()
            self._buf = self._buf[cut:]
            self._scan = 0
            if sentence:
                out.append(sentence)

    def flush(self) -> str | None:
        """End of the answer: returns what is left (stripped), or ``None`` if nothing is."""
        rest = self._buf.strip()
        self._buf = ""
        self._scan = 0
        return rest or None

    def reset(self) -> None:
        """Drops buffered text (e.g. when the caller interrupts)."""
        self._buf = ""
        self._scan = 0

    # --- internals -------------------------------------------------------------------------------

    def _next_boundary(self) -> int | None:
        """Index just past the first boundary in the buffer, or ``None`` (scan resumes later)."""
        buf = self._buf
        n = len(buf)
        i = self._scan
        while i < n:
            ch = buf[i]
            if ch in _TERMINATORS:
                j = i + 1
                while j < n and buf[j] in _TERMINATORS:
                    j += 1
                while j < n and buf[j] in _CLOSERS:
                    j += 1
                k = j
                while k < n and buf[k].isspace():
                    k += 1
                if k == n:
                    self._scan = i  # undecided until the next word starts
                    return None
                if k > j and ("\n" in buf[j:k] or not buf[k].islower()) and not self._is_abbreviation(i, j):
                    return j
                i = j
                continue
            if ch == "\n":
                if self._long_enough(i) or (i > 0 and buf[i - 1] == "\n"):
                    return i + 1
            elif ch in _SOFT and self._long_enough(i + 1):
                if i + 1 == n:
                    self._scan = i
                    return None
                if buf[i + 1].isspace():
                    return i + 1
            i += 1
        self._scan = n
        return None

    def _long_enough(self, end: int) -> bool:
        return len(self._buf[:end].strip()) >= self.min_chars

    def _is_abbreviation(self, i: int, j: int) -> bool:
        """Whether the terminator run ``buf[i:j]`` is a lone period that does not end a sentence."""
        if self._buf[i:j] != ".":
            return False
        start = i
        while start > 0 and not self._buf[start - 1].isspace():
            start -= 1
        word = self._buf[start:i].lstrip(_OPENERS)
        if not word:
            return False
        if word.lower() in _ABBREVIATIONS or _DOTTED.fullmatch(word):
            return True
        if len(word) == 1 and word.isupper():
            return True  # an initial: "J. Smith"
        # A list number ("1.") at the start of the chunk or of a line.
        return word.isdigit() and (not self._buf[:start].strip() or "\n" in self._buf[start - 1 : start])

    def _forced_cut(self) -> int:
        window = self._buf[: self.max_chars]
        for sep in (", ", " "):
            k = window.rfind(sep)
            if k > 0 and window[:k].strip():
                return k + len(sep)
        return self.max_chars
