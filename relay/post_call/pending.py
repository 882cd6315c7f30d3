"""Post-call deliveries not yet made, kept in Redis (REDIS_URL) so they survive a restart.

| key | type | holds |
|---|---|---|
| `relay:post_call:pending` | hash | call SID -> the delivery as JSON (`call_sid`, `body` or null, `tries`) |
| `relay:post_call:leases` | sorted set | call SID -> unix time until which one instance works on it |

An instance that starts a delivery holds its lease and renews it while it works on it; on a clean
stop it hands its leases back (expiry 0), so the next instance to look (at startup, then every
third of the lease) claims them at once; a crashed instance's leases lapse by themselves. Claiming
is one Lua script: two instances never claim the same delivery at the same time. Delivery is thus
at least once (a lease can lapse while its instance is cut off from Redis): receivers should treat
`call_sid` as the delivery's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from relay.redis_client import redis_client, redis_error

__all__ = ["Pending", "RedisPending"]

PENDING_KEY = "relay:post_call:pending"
LEASES_KEY = "relay:post_call:leases"

# KEYS: pending hash, leases zset. ARGV: now, lease expiry to set, at most this many.
_CLAIM = """
local sids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, sid in ipairs(sids) do
  local entry = redis.call('HGET', KEYS[1], sid)
  if entry then
    redis.call('ZADD', KEYS[2], ARGV[2], sid)
    table.insert(out, entry)
  else
    redis.call('ZREM', KEYS[2], sid)
  end
end
return out
"""


@dataclass
class Pending:
    """One delivery: the call, its body once built from the record, the tries made so far, and
    where it goes when not to POST_CALL_WEBHOOK_URL (its agent's `post_call_webhook_url`)."""

    call_sid: str
    body: bytes | None = None
    tries: int = 0
    url: str | None = None

    def dumps(self) -> str:
        body = None if self.body is None else self.body.decode()
        fields = {"call_sid": self.call_sid, "body": body, "tries": self.tries, "url": self.url}
        return orjson.dumps(fields).decode()

    @classmethod
    def loads(cls, text: str) -> Pending:
        data: dict[str, Any] = orjson.loads(text)
        body = data.get("body")
        url = data.get("url")
        return cls(
            str(data["call_sid"]),
            None if body is None else str(body).encode(),
            int(data["tries"]),
            str(url) if url else None,
        )


class RedisPending:
    """The pending deliveries in Redis; every failure raises StoreError (the caller logs it)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = redis_client(url)
        self._claim = self._client.register_script(_CLAIM)

    async def save(self, item: Pending, lease_until: float | None = None) -> None:
        """Stores `item` (and takes its lease until `lease_until`, when given)."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(PENDING_KEY, item.call_sid, item.dumps())
                if lease_until is not None:
                    pipe.zadd(LEASES_KEY, {item.call_sid: lease_until})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "saving a post-call delivery", exc) from exc

    async def remove(self, call_sid: str) -> None:
        """The delivery is done (delivered, refused or given up)."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(PENDING_KEY, call_sid)
                pipe.zrem(LEASES_KEY, call_sid)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "removing a post-call delivery", exc) from exc

    async def claim(self, now: float, lease_until: float, limit: int) -> list[Pending]:
        """Deliveries whose lease lapsed (or was handed back), now leased to the caller."""
        try:
            entries = await self._claim(keys=[PENDING_KEY, LEASES_KEY], args=[now, lease_until, limit])
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "claiming post-call deliveries", exc) from exc
        return [Pending.loads(entry) for entry in entries]

    async def renew(self, call_sids: list[str], lease_until: float) -> None:
        """Extends the leases of the deliveries this instance works on (`0`: hands them back)."""
        if not call_sids:
            return
        try:
            await self._client.zadd(LEASES_KEY, dict.fromkeys(call_sids, lease_until), xx=True)
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "renewing post-call delivery leases", exc) from exc

    async def close(self) -> None:
        await self._client.aclose()
