"""Concurrent-call limits that hold across relay instances.

A call holds a slot from admission to hang-up. Slots expire: the holder refreshes its slot while
the call runs (a heartbeat every ttl/3, say), so the slots of an instance that crashed come back
after at most one ttl instead of being held forever.

`MemoryLimiter` limits one process; `RedisLimiter` shares one limit between every instance that
uses the same Redis key, through a sorted set `relay:active_calls` of call SID -> expiry (server
time, in milliseconds).

When Redis cannot be reached, `RedisLimiter` raises StoreError and the caller decides. The
recommendation is to **fail open**: admit the call and log a warning. A Redis outage then costs
the fleet-wide limit for its duration, while failing closed would turn it into a full phone outage
(every caller refused) for a component that only guards capacity. Keep a local bound as the
backstop while Redis is away (the manager's count of its active sessions, or a MemoryLimiter), so
no single instance is overloaded. Fail closed only where exceeding the limit costs more than
refusing every call (e.g. a hard contractual cap on provider sessions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from relay.sessions.store import REDIS_TIMEOUT_S, redis_client, redis_error

if TYPE_CHECKING:
    from relay.config import Settings

# Every script reads the clock of the Redis server (TIME), never the caller's: instances whose
# clocks disagree still agree on when a slot expires. Scores are milliseconds since the epoch.
# Redis >= 5 (scripts replicate their effects, so TIME before a write is allowed).
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] the set; ARGV: sid, ttl in ms, max slots. 1 when the sid holds a slot afterwards.
_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""
)

# KEYS[1] the set; ARGV: sid, ttl in ms. 1 when the slot was still held (and is extended).
_REFRESH = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""
)

# KEYS[1] the set. Slots whose expiry is still ahead.
_COUNT = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)


class CallLimiter(Protocol):
    """At most `max_calls` calls hold a slot at once; a slot lapses `ttl` seconds after its last refresh."""

    async def acquire(self, call_sid: str, ttl: float) -> bool:
        """Takes a slot for `call_sid` for `ttl` seconds; False when all slots are taken.

        Acquiring again for a SID that holds a slot refreshes it and returns True.
        """

    async def refresh(self, call_sid: str, ttl: float) -> bool:
        """Extends the slot to `ttl` seconds from now; False when the SID no longer holds one."""

    async def release(self, call_sid: str) -> None:
        """Frees the slot (nothing happens when the SID holds none)."""

    async def count(self) -> int:
        """Slots held now."""

    async def close(self) -> None: ...


def _check(max_calls: int) -> int:
    if max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, not {max_calls}")
    return max_calls


class MemoryLimiter:
    """One process's limit: SID -> expiry on `clock` (monotonic seconds; injectable for tests)."""

    def __init__(self, max_calls: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_calls = _check(max_calls)
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

    async def release(self, call_sid: str) -> None:
        self._expiry.pop(call_sid, None)

    async def count(self) -> int:
        self._purge()
        return len(self._expiry)

    async def close(self) -> None:
        return None


class RedisLimiter:
    """A limit shared by every instance using the same Redis `key` (a sorted set SID -> expiry).

    Acquire is one Lua script (drop expired slots, check the SID and the count, add), so instances
    racing for the last slot cannot exceed `max_calls`. Redis failures raise StoreError naming
    REDIS_URL; see the module docstring for failing open.
    """

    def __init__(
        self,
        url: str,
        max_calls: int,
        *,
        key: str = "relay:active_calls",
        timeout: float = REDIS_TIMEOUT_S,
    ) -> None:
        self.max_calls = _check(max_calls)
        self.key = key
        self._url = url
        self._client = redis_client(url, timeout=timeout)
        # Scripts run by EVALSHA and are loaded again by themselves after a Redis restart.
        self._acquire = self._client.register_script(_ACQUIRE)
        self._refresh = self._client.register_script(_REFRESH)
        self._count = self._client.register_script(_COUNT)

    async def acquire(self, call_sid: str, ttl: float) -> bool:
        try:
            taken = await self._acquire(keys=[self.key], args=[call_sid, _ms(ttl), self.max_calls])
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "acquiring a call slot", exc) from exc
        return bool(taken)

    async def refresh(self, call_sid: str, ttl: float) -> bool:
        try:
            held = await self._refresh(keys=[self.key], args=[call_sid, _ms(ttl)])
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "refreshing a call slot", exc) from exc
        return bool(held)

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
    return RedisLimiter(settings.redis_url.get_secret_value(), settings.max_concurrent_calls)
