"""A bounded set of keys, each remembered until its own deadline.

Used where the relay must remember what it has seen for a while and no longer: the call SIDs that
had an early provider connection (relay.sessions.early), the stream tokens consumed and the
calls that had their stream (webhooks.replay). Expired keys are forgotten from the oldest end as
the set is used; past `max_keys` the oldest key is forgotten first, so memory stays bounded
whatever a replaying client sends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ExpiringKeys(Generic[K]):
    """Keys with a deadline each, oldest first; `now` and the deadlines are on one clock of the
    caller's choosing. Pruning from the front assumes keys are added roughly in deadline order
    (a key with a later deadline ahead of an expired one only delays that one's pruning, never
    its expiry: `contains` checks the deadline itself)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._until: OrderedDict[K, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def add(self, key: K, until: float, now: float) -> None:
        """Remembers `key` until `until` (again, if it was there: it moves to the newest end)."""
        self.prune(now)
        self._until[key] = until
        self._until.move_to_end(key)
        if len(self._until) > self.max_keys:
            self._until.popitem(last=False)

    def contains(self, key: K, now: float) -> bool:
        """True while `key` is remembered (added and its deadline not passed)."""
        self.prune(now)
        until = self._until.get(key)
        return until is not None and until > now

    def prune(self, now: float) -> None:
        """Forgets the expired keys at the oldest end."""
        table = self._until
        while table:
            key, until = next(iter(table.items()))
            if until > now:
                return
            del table[key]
