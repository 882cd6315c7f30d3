"""Call records and transcripts: one interface, in memory by default (Redis when REDIS_URL).

A record holds the call's SIDs, parties, provider and mode, start and end, outcome, fallbacks,
the transcript turns of both sides (only what the caller heard) and the tool audit.

Redis layout (prefix `relay:` by default), every key of a call expiring together
CALL_RECORD_TTL_DAYS after the call's last write:

| key | type | holds |
|---|---|---|
| `relay:call:<sid>` | hash | the record's scalar fields; strings as they are, other values as JSON |
| `relay:call:<sid>:transcript` | list | one JSON object per turn, in order |
| `relay:call:<sid>:<kind>` | list | one JSON object per event, for each kind of `EVENT_KINDS` |
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from relay.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from relay.config import Settings

EVENT_KINDS = ("tools", "fallbacks", "errors")
"""The kinds `add_event` accepts: the tool audit, provider fallbacks, errors during the call."""

LIST_FIELDS = ("transcript", *EVENT_KINDS)
"""Record fields that are lists: one Redis list each, appended to without rewriting the record."""

REDIS_TIMEOUT_S = 1.0
"""Connect and per-operation socket timeout: a dead Redis fails a write in about a second."""


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

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        self._record(call_sid).update(fields)

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        self._record(call_sid)["transcript"].append({"role": role, "text": text, "ts": time.time(), **meta})

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


def redis_error(url: str, action: str, exc: BaseException) -> StoreError:
    """A StoreError naming REDIS_URL (redacted) and what failed; redis-py messages carry no password."""
    reason = str(exc).rstrip(". ") or type(exc).__name__
    return StoreError(
        f"Redis at REDIS_URL={redact_url(url)} failed while {action}: {reason}. "
        "Check that Redis is running and reachable from the relay."
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


class RedisStore:
    """Call records in Redis, shared by every relay instance and kept across restarts.

    Each write is one MULTI/EXEC: it creates the record when missing (`call_sid`, `started_at`),
    applies the change and refreshes the TTL of every key of the call, so a record expires as a
    whole `ttl_seconds` after its last write. Values come back as JSON restores them (tuples as lists,
    anything JSON cannot hold as its str(); datetimes as ISO strings). Every Redis failure
    raises StoreError naming REDIS_URL (password redacted); the CallRecorder counts it as a lost
    write and the call goes on.
    """

    def __init__(
        self, url: str, *, ttl_seconds: float, prefix: str = "relay:", timeout: float = REDIS_TIMEOUT_S
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        self.ttl_seconds = max(1, math.ceil(ttl_seconds))  # EXPIRE takes whole seconds
        self.prefix = prefix
        self._url = url
        self._client = redis_client(url, timeout=timeout)

    def key(self, call_sid: str, field: str | None = None) -> str:
        """`<prefix>call:<sid>` (the hash), or `<prefix>call:<sid>:<field>` for a list field."""
        base = f"{self.prefix}call:{call_sid}"
        return base if field is None else f"{base}:{field}"

    def keys(self, call_sid: str) -> list[str]:
        """Every key a call may have."""
        return [self.key(call_sid), *(self.key(call_sid, name) for name in LIST_FIELDS)]

    async def upsert(self, call_sid: str, **fields: Any) -> None:
        scalars: dict[FieldT, EncodableT] = {
            name: _encode(v) for name, v in fields.items() if name not in LIST_FIELDS
        }
        lists = {name: [_json(item) for item in v] for name, v in fields.items() if name in LIST_FIELDS}

        def change(pipe: Pipeline) -> None:
            if scalars:
                pipe.hset(self.key(call_sid), mapping=scalars)
            for name, items in lists.items():  # setting a list field replaces the whole list
                pipe.delete(self.key(call_sid, name))
                if items:
                    pipe.rpush(self.key(call_sid, name), *items)

        await self._write(call_sid, "writing the call record", change)

    async def add_turn(self, call_sid: str, role: str, text: str, **meta: Any) -> None:
        turn = _json({"role": role, "text": text, "ts": time.time(), **meta})
        await self._write(
            call_sid,
            "appending a transcript turn",
            lambda pipe: pipe.rpush(self.key(call_sid, "transcript"), turn),
        )

    async def add_event(self, call_sid: str, kind: str, entry: dict[str, Any]) -> None:
        """Appends `entry` to the `kind` list; ValueError for a kind outside EVENT_KINDS."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}: RedisStore keeps {', '.join(EVENT_KINDS)}")
        event = _json(entry)
        await self._write(
            call_sid, f"appending to {kind}", lambda pipe: pipe.rpush(self.key(call_sid, kind), event)
        )

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

    async def _write(self, call_sid: str, action: str, change: Callable[[Pipeline], object]) -> None:
        record = self.key(call_sid)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(record, "call_sid", call_sid)
                pipe.hsetnx(record, "started_at", _encode(time.time()))
                change(pipe)
                self._expire(pipe, self.keys(call_sid))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise redis_error(self._url, action, exc) from exc

    def _expire(self, pipe: Pipeline, keys: Iterable[str]) -> None:
        for key in keys:
            pipe.expire(key, self.ttl_seconds)  # a no-op for a list the call does not have yet


def make_store(settings: Settings) -> CallStore:
    """RedisStore when REDIS_URL is set (records kept CALL_RECORD_TTL_DAYS), else MemoryStore."""
    if settings.redis_url is None:
        return MemoryStore()
    return RedisStore(
        settings.redis_url.get_secret_value(), ttl_seconds=settings.call_record_ttl_days * 86_400
    )
