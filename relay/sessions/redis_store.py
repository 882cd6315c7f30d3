"""Call records in Redis (REDIS_URL), shared by every relay instance and kept across restarts.

Redis layout (prefix `relay:` by default), every key of a call expiring together
CALL_RECORD_TTL_DAYS after the call's last write:

| key | type | holds |
|---|---|---|
| `relay:call:<sid>` | hash | the record's scalar fields; strings as they are, other values as JSON |
| `relay:call:<sid>:transcript` | list | one JSON object per turn, in order |
| `relay:call:<sid>:<kind>` | list | one JSON object per event, for each kind of `EVENT_KINDS` |
| `relay:call:<sid>:applied` | hash | writer id (one per relay process) -> the highest write seq applied |
| `relay:active_calls` | sorted set | call SID -> slot expiry (relay/sessions/limits.py) |

Each write is one Lua script: skip it when its (writer, seq) was already applied, create the record
when missing (`call_sid`, `started_at` = when the write was queued), apply the change, refresh the
TTL of every key of the call. When a call's concurrency slot expires (its instance crashed or lost
Redis for longer than CALL_SLOT_TTL), the limiter script that drops the slot also sets the record's
`status` to `ended`, `outcome` to `lost` and `ended_at`, if the record exists and is not ended: the
same script, so exactly once across every instance.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from redis.exceptions import RedisError
from redis.typing import EncodableT

from relay.redis_client import REDIS_TIMEOUT_S, redis_client, redis_error
from relay.sessions.records import EVENT_KINDS, LIST_FIELDS, RecordWrite, new_record

__all__ = ["APPLIED", "KEY_PREFIX", "RedisStore"]

KEY_PREFIX = "relay:"
"""The prefix of every Redis key the relay writes."""

APPLIED = "applied"
"""The suffix of the hash that makes writes idempotent: writer id -> highest seq applied."""


def _encode(value: Any) -> str:
    """A hash value: strings as they are unless they would read back as JSON; anything else as JSON."""
    if isinstance(value, str) and not _is_json(value):
        return value
    return _json(value)


def _decode(text: str) -> Any:
    """The inverse of `_encode`: a plain string never parses as JSON, an encoded value always does."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _json(value: Any) -> str:
    """JSON text; what JSON cannot hold becomes a list (sets) or its str(), so no write is lost to it."""
    return orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS).decode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


# KEYS: the record hash, the applied hash, then every other key of the call (all get the TTL).
# ARGV: writer, seq, ttl (s), call SID, started_at, then each command as its length and its words.
_APPLY = """
if ARGV[1] ~= '' then
  local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
  if last >= tonumber(ARGV[2]) then return 0 end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('HSETNX', KEYS[1], 'call_sid', ARGV[4])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[5])
local i = 6
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ARGV[3]) end
return 1
"""

Command = list[EncodableT]


class RedisStore:
    """Call records in Redis, shared by every relay instance and kept across restarts.

    Each write is one script (see the module docstring): it creates the record when missing,
    applies the change and refreshes the TTL of every key of the call, so a record expires as a
    whole `ttl_seconds` after its last write. Values come back as JSON restores them (tuples as lists,
    anything JSON cannot hold as its str(); datetimes as ISO strings). Every Redis failure
    raises StoreError naming REDIS_URL (password redacted), retryable unless Redis refused the
    command itself.
    """

    def __init__(
        self, url: str, *, ttl_seconds: float, prefix: str = KEY_PREFIX, timeout: float = REDIS_TIMEOUT_S
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        self.ttl_seconds = max(1, math.ceil(ttl_seconds))  # EXPIRE takes whole seconds
        self.prefix = prefix
        self._url = url
        self._client = redis_client(url, timeout=timeout)
        self._apply = self._client.register_script(_APPLY)  # loaded again by itself after a restart

    def key(self, call_sid: str, field: str | None = None) -> str:
        """`<prefix>call:<sid>` (the hash), or `<prefix>call:<sid>:<field>` for a list field."""
        base = f"{self.prefix}call:{call_sid}"
        return base if field is None else f"{base}:{field}"

    def keys(self, call_sid: str) -> list[str]:
        """Every key a call may have."""
        return [self.key(call_sid), *(self.key(call_sid, name) for name in (*LIST_FIELDS, APPLIED))]

    async def apply(self, write: RecordWrite) -> None:
        """Runs `write` as one script; ValueError for an add_event kind outside EVENT_KINDS."""
        action, commands = self._commands(write)
        sid = write.call_sid
        argv: list[EncodableT] = [write.writer, write.seq, self.ttl_seconds, sid, _encode(write.at)]
        for command in commands:
            argv += [len(command), *command]
        keys = [self.key(sid), self.key(sid, APPLIED), *(self.key(sid, name) for name in LIST_FIELDS)]
        try:
            await self._apply(keys=keys, args=argv)
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, action, exc) from exc

    def _commands(self, write: RecordWrite) -> tuple[str, list[Command]]:
        """What `write` does, as Redis commands, and its name for error messages."""
        sid = write.call_sid
        if write.op == "add_turn":
            role, text = write.args
            turn = _json({"role": role, "text": text, "ts": write.at, **write.kwargs})
            return "appending a transcript turn", [["RPUSH", self.key(sid, "transcript"), turn]]
        if write.op == "add_event":
            kind, entry = write.args
            if kind not in EVENT_KINDS:
                raise ValueError(f"unknown event kind {kind!r}: RedisStore keeps {', '.join(EVENT_KINDS)}")
            return f"appending to {kind}", [["RPUSH", self.key(sid, kind), _json(entry)]]
        commands: list[Command] = []
        scalars = [
            word
            for name, value in write.kwargs.items()
            if name not in LIST_FIELDS
            for word in (name, _encode(value))
        ]
        if scalars:
            commands.append(["HSET", self.key(sid), *scalars])
        for name, items in write.kwargs.items():
            if name in LIST_FIELDS:  # setting a list field replaces the whole list
                commands.append(["DEL", self.key(sid, name)])
                if items:
                    commands.append(["RPUSH", self.key(sid, name), *(_json(item) for item in items)])
        return "writing the call record", commands

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        await self.apply(RecordWrite(call_sid, "upsert", (), fields))

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        await self.apply(RecordWrite(call_sid, "add_turn", (role, text), meta))

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        """Appends `entry` to the `kind` list; ValueError for a kind outside EVENT_KINDS."""
        await self.apply(RecordWrite(call_sid, "add_event", (kind, entry)))

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        """The record in MemoryStore's shape, or None when there is none (or it expired)."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.key(call_sid))
                for name in LIST_FIELDS:
                    pipe.lrange(self.key(call_sid, name), 0, -1)
                fields, *lists = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "reading a call record", exc) from exc
        if not fields:
            return None
        record = new_record(call_sid)
        record.update((name, _decode(value)) for name, value in fields.items())
        for name, items in zip(LIST_FIELDS, lists, strict=True):
            if items or name in record:  # like MemoryStore: 'errors' only once there is one
                record[name] = [orjson.loads(item) for item in items]
        return record

    async def ping(self) -> bool:
        """True when Redis answers; StoreError with the reason when it does not."""
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, "pinging", exc) from exc

    async def close(self) -> None:
        await self._client.aclose()
