"""What the caller heard of the agent's words, shared by the realtime and the cascade paths.

Each agent item (a realtime audio item, or one sentence of the cascade) has a transcript and
audio. `relay.sessions.playback.PlaybackTracker` knows how many milliseconds of an item's audio
the caller heard; this module turns that into the words the caller heard, for the call record and
for the model's context after a barge-in.

The cut follows the audio: the heard fraction of the item's audio (heard ms over the item's whole
audio, once all of it was sent) picks the same fraction of the item's spoken length, measured
word by word in syllables (a long word takes longer to say than a short one, a comma is a pause),
not in characters. Where the provider gives word timings, they decide instead. While an item's
audio is still arriving, its whole length is not known yet: it is estimated from its transcript
at a typical speaking rate, and never taken as shorter than what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.sessions.effects import SaveTurn
from relay.sessions.playback import PlaybackTracker

MS_PER_SYLLABLE = 200.0  # a typical speaking rate (5 syllables a second), for an item still arriving
PAUSE_SYLLABLES = {",": 0.5, ";": 0.5, ":": 0.5, ".": 1.0, "!": 1.0, "?": 1.0}  # a pause after a word
_VOWEL_GROUPS = re.compile(r"[aeiouyàâäéèêëïîôöùûüáíóúæœ]+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class WordTiming:
    """A word and where it ends in its item's audio (from a provider that reports word timing)."""

    word: str
    end_ms: float


def word_weight(word: str) -> float:
    """How long `word` takes to say, in syllables, with the pause its punctuation asks for."""
    letters = word.strip(".,;:!?\"'()[]")
    syllables = len(_VOWEL_GROUPS.findall(letters))
    if syllables > 1 and letters.lower().endswith("e") and not letters.lower().endswith(("le", "ee")):
        syllables -= 1  # a silent final e: "done", "there"
    syllables = max(1, syllables) if letters else 0
    if letters.isdigit():  # "1984" is said as several words
        syllables = 2 * len(letters)
    return syllables + PAUSE_SYLLABLES.get(word[-1:], 0.0)


def spoken_ms(text: str) -> float:
    """An estimate of how long `text` takes to say."""
    return sum(word_weight(w) for w in text.split()) * MS_PER_SYLLABLE


def heard_words(
    text: str, heard_ms: float, audio_ms: float, timings: Sequence[WordTiming] | None = None
) -> str:
    """The words of `text` the caller heard in the first `heard_ms` of the item's `audio_ms`.

    A word counts as heard once most of it was (its midpoint passed)."""
    if heard_ms <= 0 or audio_ms <= 0:
        return ""
    if timings:
        return " ".join(t.word for t in timings if t.end_ms <= heard_ms)
    if heard_ms >= audio_ms:
        return text
    words = text.split()
    weights = [word_weight(w) for w in words]
    total = sum(weights)
    if total <= 0:
        return ""
    heard = heard_ms / audio_ms * total
    kept, position = 0, 0.0
    for weight in weights:
        if position + weight / 2 > heard:
            break
        position += weight
        kept += 1
    return " ".join(words[:kept])


@dataclass(slots=True)
class SpokenItem:
    """One agent item: its transcript as it arrives, and whether all of its audio was sent."""

    text: str = ""  # the transcript so far (deltas)
    final: str | None = None  # the whole transcript, once the provider gave it
    audio_done: bool = False  # every chunk of its audio was sent to Twilio
    closed: bool = False  # its turn was saved (played out, or cut)
    timings: list[WordTiming] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        return self.final if self.final is not None else self.text

    def heard(self, heard_ms: float, sent_ms: float) -> str:
        """The words the caller heard of this item, `heard_ms` into its audio, `sent_ms` sent so far."""
        text = self.transcript
        audio_ms = sent_ms if self.audio_done else max(sent_ms, spoken_ms(text))
        return heard_words(text, heard_ms, audio_ms, self.timings)


class SpokenItems:
    """The agent's items of a call, in the order they were first seen. An item stays known after
    its turn is saved (late audio of it is not a new item); `open_items` lists only unsaved ones."""

    def __init__(self) -> None:
        self._items: dict[str, SpokenItem] = {}
        self._open: list[str] = []

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> SpokenItem | None:
        return self._items.get(item_id)

    def add(self, item_id: str, text: str = "") -> SpokenItem:
        """The item `item_id`, created (with `text`) when new."""
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = SpokenItem(text)
            self._open.append(item_id)
        return item

    def open_items(self) -> list[tuple[str, SpokenItem]]:
        """Items whose turn is not saved yet, oldest first."""
        items = self._items
        self._open = [i for i in self._open if not items[i].closed]
        return [(i, items[i]) for i in self._open]

    # --- the turns to save ------------------------------------------------------------------------
    def cut(self, item_id: str, heard_ms: int, sent_ms: int) -> list[SaveTurn]:
        """The item was interrupted (or the call ended) `heard_ms` into its audio: its turn is the
        words heard (none: no turn)."""
        item = self._items.get(item_id)
        if item is None or item.closed:
            return []
        item.closed = True
        text = item.heard(heard_ms, sent_ms)
        meta = {"item_id": item_id, "interrupted": True, "heard_ms": heard_ms}
        return [SaveTurn("assistant", text, meta)] if text else []

    def played_out(self, playing: set[str]) -> list[SaveTurn]:
        """The turns of items whose transcript is final and whose audio has all played."""
        turns = []
        for item_id, item in self.open_items():
            if item.final is None or item_id in playing:
                continue
            item.closed = True
            if item.final:
                turns.append(SaveTurn("assistant", item.final, {"item_id": item_id}))
        return turns

    def finish(self, playback: PlaybackTracker, now: float) -> list[SaveTurn]:
        """The call is ending: the turns of items still open, cut at what was heard."""
        playing = playback.pending_items()
        turns = []
        for item_id, item in self.open_items():
            if item_id in playing or item.final is None:
                turns += self.cut(item_id, playback.heard_ms(item_id, now), playback.sent_ms(item_id))
            else:
                item.closed = True
                if item.final:
                    turns.append(SaveTurn("assistant", item.final, {"item_id": item_id}))
        return turns


__all__ = ["SpokenItem", "SpokenItems", "WordTiming", "heard_words", "spoken_ms", "word_weight"]
