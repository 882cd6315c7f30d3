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

    def __contains__(self, key: object) -> bool:
        """True while `key` is held, expired or not (see `contains` for the deadline check)."""
        return key in self._until

    def discard(self, key: K) -> None:
        """Forgets `key` now."""
        self._until.pop(key, None)

    def prune(self, now: float) -> None:
        """Forgets the expired keys at the oldest end."""
        table = self._until
        while table:
            key, until = next(iter(table.items()))
            if until > now:
                return
            del table[key]


V = TypeVar("V")


class ExpiringValues(Generic[K, V]):
    """A value per key, each remembered until its own deadline (see `ExpiringKeys`): the same
    pruning and bound, and `get` never answers with an expired value."""

    def __init__(self, max_keys: int) -> None:
        self._keys: ExpiringKeys[K] = ExpiringKeys(max_keys)
        self._values: dict[K, V] = {}

    def __len__(self) -> int:
        return len(self._values)

    def put(self, key: K, value: V, until: float, now: float) -> None:
        """Remembers `value` for `key` until `until`."""
        self._keys.add(key, until, now)
        self._values[key] = value
        self._forget_pruned()

    def get(self, key: K, now: float) -> V | None:
        """The value of `key` while it is remembered, else None."""
        if not self._keys.contains(key, now):
            self._values.pop(key, None)
            self._forget_pruned()
            return None
        return self._values.get(key)

    def pop(self, key: K) -> V | None:
        """Forgets `key` now; its value, if it had one."""
        self._keys.discard(key)
        return self._values.pop(key, None)

    def _forget_pruned(self) -> None:
        if len(self._values) > len(self._keys):
            for key in [k for k in self._values if k not in self._keys]:
                del self._values[key]
