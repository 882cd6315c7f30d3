"""Call records and transcripts: one interface, in memory by default (Redis when REDIS_URL).

A record holds the call's SIDs, parties, provider and mode, start and end, outcome, fallbacks,
the transcript turns of both sides (only what the caller heard) and the tool audit.

The relay never awaits a store write on a call's path: its writes go through the process's outbox
(relay/sessions/outbox.py) as `RecordWrite`s, which retries them while the store is away and hands
them to `apply` in order. A write may therefore reach Redis twice (a timed-out attempt that Redis
ran after all, then the retry): `apply` runs each (writer, seq) at most once.

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
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT

from relay.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from relay.config import Settings

EVENT_KINDS = ("tools", "fallbacks", "errors")
"""The kinds `add_event` accepts: the tool audit, provider fallbacks, errors during the call."""

LIST_FIELDS = ("transcript", *EVENT_KINDS)
"""Record fields that are lists: one Redis list each, appended to without rewriting the record."""

REDIS_TIMEOUT_S = 1.0
"""Connect and per-operation socket timeout: a dead Redis fails a write in about a second."""

KEY_PREFIX = "relay:"
"""The prefix of every Redis key the relay writes."""

APPLIED = "applied"
"""The suffix of the hash that makes writes idempotent: writer id -> highest seq applied."""

WriteOp = Literal["upsert", "add_turn", "add_event"]


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One change to one call's record, as the outbox queues it: the store method `op` with `args`
    and `kwargs` after the call SID. `at` is when it was queued (the record's `started_at` when it
    creates the record, a turn's `ts`); `writer` (one per process) and `seq` (increasing) let a store
    apply a retried write at most once. An empty `writer` skips that check.
    """

    call_sid: str
    op: WriteOp
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    writer: str = ""
    seq: int = 0


def new_record(call_sid: str, **fields: Any) -> dict[str, Any]:
    """A fresh record with every field at its default, then `fields`."""
    record: dict[str, Any] = {
        "call_sid": call_sid,
        "stream_sid": "",
        "from": "",
        "to": "",
        "provider": "",
        "mode": "",
        "started_at": time.time(),
        "ended_at": None,
        "status": "in-progress",
        "outcome": "",
        "fallbacks": [],
        "transcript": [],
        "tools": [],
    }
    record.update(fields)
    return record


class CallStore(Protocol):
    async def apply(self, write: RecordWrite) -> None:
        """Runs `write` (the outbox's way in); a (writer, seq) already applied is skipped."""

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        """Creates the record when missing, then sets the given fields."""

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        """Appends one transcript turn ('user' or 'assistant')."""

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        """Appends to a list field of the record: 'tools' (audit), 'fallbacks' or 'errors'."""

    async def get(self, call_sid: str) -> dict[str, Any] | None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """The default store: a dict, bounded to the most recent `max_calls` records."""

    def __init__(self, max_calls: int = 10_000) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._max = max_calls

    def _record(self, call_sid: str) -> dict[str, Any]:
        rec = self._records.get(call_sid)
        if rec is None:
            if len(self._records) >= self._max:
                self._records.pop(next(iter(self._records)))
            rec = self._records[call_sid] = new_record(call_sid)
        return rec

    async def apply(self, write: RecordWrite) -> None:
        # Nothing to deduplicate: a write to a dict cannot half-fail.
        if write.op == "add_turn":
            role, text = write.args
            self._record(write.call_sid)["transcript"].append(
                {"role": role, "text": text, "ts": write.at, **write.kwargs}
            )
        else:
            await getattr(self, write.op)(write.call_sid, *write.args, **write.kwargs)

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        self._record(call_sid).update(fields)

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        await self.apply(RecordWrite(call_sid, "add_turn", (role, text), meta))

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        self._record(call_sid).setdefault(kind, []).append(entry)

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        rec = self._records.get(call_sid)
        return None if rec is None else {**rec, "transcript": list(rec["transcript"])}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# --- Redis --------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """`url` without its password (userinfo and `?password=`), safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        # A lone userinfo may be a password written without the ':' (redis://secret@host): hide it too.
        netloc = f"{user}:***@{hostport}" if has_password else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    if "://" not in url:  # not a URL redis-py accepts; nothing to redact but a query
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    shown = f"{parts.scheme}://{netloc}{parts.path}"  # urlunsplit would drop the // of unix:///path
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def redis_client(url: str, *, timeout: float = REDIS_TIMEOUT_S) -> aioredis.Redis:
    """A lazily connecting client that fails fast: short timeouts, one immediate retry.

    The single retry, on connection errors only, covers a pooled connection that went stale (Redis
    restarted): the command is resent once on a fresh connection. A timeout is not retried, so a
    hung Redis costs one `timeout`. Raises ConfigError when `url` is not a Redis URL.
    """
    try:
        return aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
    except ValueError as exc:
        raise ConfigError(
            f"REDIS_URL={redact_url(url)!r} is not a valid Redis URL ({exc}): use "
            "'redis://[:password@]host:6379/0', 'rediss://...' for TLS or 'unix:///path/to/redis.sock'."
        ) from None


_RETRYABLE_REPLIES = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError, MasterDownError)
"""Error replies of a Redis that is failing over or full: worth trying again later (as is BUSY, a
script running too long, which redis-py leaves a plain ResponseError)."""


def redis_error(url: str, action: str, exc: BaseException) -> StoreError:
    """A StoreError naming REDIS_URL (redacted) and what failed; redis-py messages carry no password.

    Retryable when Redis could not be reached or answered that it cannot serve now; not when it
    refused the command itself (a wrong type at a key: trying again gives the same answer).
    """
    reason = str(exc).rstrip(". ") or type(exc).__name__
    retryable = (
        not isinstance(exc, ResponseError)
        or isinstance(exc, _RETRYABLE_REPLIES)
        or str(exc).startswith("BUSY ")
    )
    return StoreError(
        f"Redis at REDIS_URL={redact_url(url)} failed while {action}: {reason}. "
        "Check that Redis is running and reachable from the relay.",
        retryable=retryable,
    )


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


def make_store(settings: Settings) -> CallStore:
    """RedisStore when REDIS_URL is set (records kept CALL_RECORD_TTL_DAYS), else MemoryStore."""
    if settings.redis_url is None:
        return MemoryStore()
    return RedisStore(
        settings.redis_url.get_secret_value(), ttl_seconds=settings.call_record_ttl_days * 86_400
    )
