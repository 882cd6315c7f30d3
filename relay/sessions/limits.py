"""Concurrent-call limits that hold across relay instances.

A call holds a slot from admission to hang-up. Slots expire: the holder refreshes its slot while
the call runs (a heartbeat every ttl/3, say), so the slots of an instance that crashed come back
after at most one ttl instead of being held forever. With Redis, whoever drops an expired slot (any
script here, and `sweep`, which every instance runs periodically) also marks that call's record
ended with outcome `lost`, in the same script: exactly once, even with no new calls.

`MemoryLimiter` limits one process; `RedisLimiter` shares one limit between every instance that
uses the same Redis key, through a sorted set `relay:active_calls` of call SID -> expiry (server
time, in milliseconds).

When Redis cannot be reached, `RedisLimiter` raises StoreError and the caller decides. The
recommendation is to **fail open**: admit the call (the manager does, after waiting at most
0.5 s, and logs the outage once). A Redis outage then costs
the fleet-wide limit for its duration, while failing closed would turn it into a full phone outage
(every caller refused) for a component that only guards capacity. Keep a local bound as the
backstop while Redis is away (the manager's count of its active sessions, or a MemoryLimiter), so
no single instance is overloaded. Fail closed only where exceeding the limit costs more than
refusing every call (e.g. a hard contractual cap on provider sessions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from relay.redis_client import REDIS_TIMEOUT_S, redis_client, redis_error
from relay.sessions.records import LIST_FIELDS
from relay.sessions.redis_store import APPLIED, KEY_PREFIX

if TYPE_CHECKING:
    from relay.config import Settings

# Every script reads the clock of the Redis server (TIME), never the caller's: instances whose
# clocks disagree still agree on when a slot expires. Scores are milliseconds since the epoch.
# Redis >= 5 (scripts replicate their effects, so TIME before a write is allowed).
#
# `purge` drops the expired slots and marks each one's record (the store's layout, relay.sessions.redis_store:
# ARGV[1] the record key prefix, ARGV[2] its TTL in seconds) ended/lost, when it exists and is not
# ended; it returns the SIDs it marked. The record keys are not declared in KEYS: Redis Cluster would
# need them in one hash slot, which the store's keys do not promise either.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_PURGE = (
    _NOW_MS
    + """
local function purge()
  local marked = {}
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  if #expired == 0 then return marked end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local ended_at = string.format('%d.%06d', t[1], t[2])
  for _, sid in ipairs(expired) do
    local record = ARGV[1] .. sid
    if redis.call('EXISTS', record) == 1 and redis.call('HGET', record, 'status') ~= 'ended' then
      redis.call('HSET', record, 'status', 'ended', 'outcome', 'lost', 'ended_at', ended_at)
      redis.call('EXPIRE', record, ARGV[2])
      for _, suffix in ipairs(__RECORD_SUFFIXES__) do redis.call('EXPIRE', record .. suffix, ARGV[2]) end
      table.insert(marked, sid)
    end
  end
  return marked
end
""".replace("__RECORD_SUFFIXES__", "{" + ", ".join(f"':{name}'" for name in (*LIST_FIELDS, APPLIED)) + "}")
)

# Each script below returns {its answer, the SIDs its purge marked lost...}. `hold` is the admission
# rule they share: `sid` keeps or takes a slot (its expiry set to now + ttl ms) when it holds one
# already or fewer than `limit` are held; 1 when it holds one afterwards.
_HOLDING = (
    _PURGE
    + """
local function hold(sid, ttl, limit)
  if redis.call('ZSCORE', KEYS[1], sid) or redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + ttl, sid)
    return 1
  end
  return 0
end
local marked = purge()
"""
)

# Acquire and refresh are one script: ARGV[3] sid, ARGV[4] ttl in ms, ARGV[5] the slots a SID that
# holds none may fill (max_calls to acquire, 0 to refresh, which only extends a held slot).
_HOLD = (
    _HOLDING
    + """
table.insert(marked, 1, hold(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])))
return marked
"""
)

# A slot moved from one key to another (an outbound call's reservation to its new call SID), in one
# step, so no other call can take it in between. ARGV[3] the old key, then as _HOLD: ARGV[4] the new
# SID, ARGV[5] ttl in ms, ARGV[6] max_calls (the slot is taken anew when the old key held none).
_REBIND = (
    _HOLDING
    + """
redis.call('ZREM', KEYS[1], ARGV[3])
table.insert(marked, 1, hold(ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])))
return marked
"""
)

# Answer: the slots still held.
_SWEEP = (
    _PURGE
    + """
local marked = purge()
table.insert(marked, 1, redis.call('ZCARD', KEYS[1]))
return marked
"""
)

# Slots whose expiry is still ahead (read-only: nothing is purged, nothing marked).
_COUNT = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)


class CallLimiter(Protocol):
    """At most `max_calls` calls hold a slot at once; a slot lapses `ttl` seconds after its last refresh.

    `on_lost`, when set, gets the SIDs of calls whose records an operation marked lost.
    """

    on_lost: Callable[[list[str]], None] | None

    async def acquire(self, call_sid: str, ttl: float) -> bool:
        """Takes a slot for `call_sid` for `ttl` seconds; False when all slots are taken.

        Acquiring again for a SID that holds a slot refreshes it and returns True.
        """

    async def refresh(self, call_sid: str, ttl: float) -> bool:
        """Extends the slot to `ttl` seconds from now; False when the SID no longer holds one."""

    async def rebind(self, old: str, new: str, ttl: float) -> bool:
        """Moves the slot held under `old` to `new` for `ttl` seconds, in one step (no other call
        can take it in between); when `old` held none (it lapsed), takes a free one. False when
        `new` holds no slot afterwards."""

    async def release(self, call_sid: str) -> None:
        """Frees the slot (nothing happens when the SID holds none)."""

    async def count(self) -> int:
        """Slots held now."""

    async def sweep(self) -> list[str]:
        """Drops expired slots; returns the calls whose records this marked lost (see the module
        docstring). MemoryLimiter marks none: a crashed process takes its memory store with it."""

    async def close(self) -> None: ...


def _check(max_calls: int) -> int:
    if max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, not {max_calls}")
    return max_calls


class MemoryLimiter:
    """One process's limit: SID -> expiry on `clock` (monotonic seconds; injectable for tests)."""

    def __init__(self, max_calls: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_calls = _check(max_calls)
        self.on_lost: Callable[[list[str]], None] | None = None  # never called: see sweep
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def _purge(self) -> float:
        now = self._clock()
        for sid in [sid for sid, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[sid]
        return now

    async def acquire(self, call_sid: str, ttl: float) -> bool:
        now = self._purge()
        if call_sid not in self._expiry and len(self._expiry) >= self.max_calls:
            return False
        self._expiry[call_sid] = now + _positive(ttl)
        return True

    async def refresh(self, call_sid: str, ttl: float) -> bool:
        now = self._purge()
        if call_sid not in self._expiry:
            return False
        self._expiry[call_sid] = now + _positive(ttl)
        return True

    async def rebind(self, old: str, new: str, ttl: float) -> bool:
        self._expiry.pop(old, None)
        return await self.acquire(new, ttl)

    async def release(self, call_sid: str) -> None:
        self._expiry.pop(call_sid, None)

    async def count(self) -> int:
        self._purge()
        return len(self._expiry)

    async def sweep(self) -> list[str]:
        self._purge()
        return []

    async def close(self) -> None:
        return None


class RedisLimiter:
    """A limit shared by every instance using the same Redis `key` (a sorted set SID -> expiry).

    Acquire is one Lua script (drop expired slots, check the SID and the count, add), so instances
    racing for the last slot cannot exceed `max_calls`. Every script that drops expired slots marks
    their records lost (records under `record_prefix`, refreshed to `record_ttl` seconds) and hands
    the SIDs to `on_lost`. Redis failures raise StoreError naming REDIS_URL; see the module
    docstring for failing open.
    """

    def __init__(
        self,
        url: str,
        max_calls: int,
        *,
        key: str = f"{KEY_PREFIX}active_calls",
        record_prefix: str = f"{KEY_PREFIX}call:",
        record_ttl: float = 7 * 86_400,
        timeout: float = REDIS_TIMEOUT_S,
    ) -> None:
        self.max_calls = _check(max_calls)
        self.key = key
        self.record_prefix = record_prefix
        self.record_ttl = max(1, math.ceil(record_ttl))
        self.on_lost: Callable[[list[str]], None] | None = None
        self._url = url
        self._client = redis_client(url, timeout=timeout)
        # Scripts run by EVALSHA and are loaded again by themselves after a Redis restart.
        self._hold = self._client.register_script(_HOLD)
        self._sweep = self._client.register_script(_SWEEP)
        self._rebind = self._client.register_script(_REBIND)
        self._count = self._client.register_script(_COUNT)

    async def acquire(self, call_sid: str, ttl: float) -> bool:
        held, _ = await self._purging(self._hold, "acquiring a call slot", call_sid, _ms(ttl), self.max_calls)
        return bool(held)

    async def refresh(self, call_sid: str, ttl: float) -> bool:
        held, _ = await self._purging(self._hold, "refreshing a call slot", call_sid, _ms(ttl), 0)
        return bool(held)

    async def rebind(self, old: str, new: str, ttl: float) -> bool:
        held, _ = await self._purging(self._rebind, "moving a call slot", old, new, _ms(ttl), self.max_calls)
        return bool(held)

    async def sweep(self) -> list[str]:
        """Drops expired slots and marks their records lost; returns the SIDs marked."""
        _, marked = await self._purging(self._sweep, "sweeping expired call slots")
        return marked

    async def release(self, call_sid: str) -> None:
        try:
            await self._client.zrem(self.key, call_sid)
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "releasing a call slot", exc) from exc

    async def count(self) -> int:
        try:
            held: Any = await self._count(keys=[self.key])
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "counting call slots", exc) from exc
        return int(held)

    async def close(self) -> None:
        await self._client.aclose()

    async def _purging(self, script: Any, action: str, *args: str | int) -> tuple[int, list[str]]:
        """Runs a script that purges expired slots: its answer, and the SIDs it marked lost (also
        handed to `on_lost`)."""
        try:
            answer, *marked = await script(keys=[self.key], args=[self.record_prefix, self.record_ttl, *args])
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, action, exc) from exc
        lost = [str(sid) for sid in marked]
        if lost and self.on_lost is not None:
            self.on_lost(lost)
        return int(answer), lost


def _positive(ttl: float) -> float:
    if not ttl > 0:
        raise ValueError(f"ttl must be positive seconds, not {ttl}")
    return ttl


def _ms(ttl: float) -> int:
    return max(1, round(_positive(ttl) * 1000))


def make_limiter(settings: Settings) -> CallLimiter:
    """RedisLimiter when REDIS_URL is set (MAX_CONCURRENT_CALLS fleet-wide), else MemoryLimiter."""
    if settings.redis_url is None:
        return MemoryLimiter(settings.max_concurrent_calls)
    return RedisLimiter(
        settings.redis_url.get_secret_value(),
        settings.max_concurrent_calls,
        record_ttl=settings.call_record_ttl_days * 86_400,
    )
