"""Replay protection for Media Streams: a stream token is consumed once, a call has one stream.

A captured stream (its upgrade's `X-Twilio-Signature` covers only the URL, so it replays as is)
or a replayed signed `/incoming-call` must not buy a second provider session for a call:

- `LiveStreams`: the call SIDs with a stream running on this instance. A second stream for one
  of them is refused (1008) before any of its audio goes anywhere.
- `StreamLedger`: which stream tokens were presented, and which call SIDs had a stream.
  `MemoryLedger` holds them for this instance; `RedisLedger` (REDIS_URL) for the whole fleet, with
  this instance's memory as its first check and its fallback. Redis is asked with a short bound
  (`REDIS_CHECK_TIMEOUT_S`): unreachable or hung, the instance's memory decides, the fallback is
  logged and counted, and Redis is left alone for `REDIS_RETRY_AFTER_S`, so an outage costs at
  most one bounded wait per that interval and never a call.

Tokens are kept by their SHA-256 digest, never as they are; a token is remembered for its
remaining lifetime (after that `verify_stream_token` refuses it anyway), a call SID for
`REMEMBER_CALLS_S`.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from redis.exceptions import RedisError

from relay.expiring import ExpiringKeys
from relay.redis_client import redact_url, redis_client

if TYPE_CHECKING:
    from relay.config import Settings

log = logging.getLogger("relay.replay")

T = TypeVar("T")

REMEMBER_CALLS_S = 24 * 3600.0
"""How long a call SID that had a stream is remembered: its webhook replayed within that gets no
new token. (Twilio's signatures carry no time; a day outlives any call.)"""

MAX_ENTRIES = 100_000
"""Bound of each in-memory table (tokens, call SIDs); past it the oldest entry goes first."""

REDIS_CHECK_TIMEOUT_S = 0.25
"""Longest wait for Redis per check (connect, or one round trip) before this instance decides alone."""

REDIS_RETRY_AFTER_S = 2.0
"""After Redis failed a check, checks stay local this long before Redis is asked again."""


class StreamRefusal(enum.Enum):
    """Why a stream with a valid token is refused; the value is its metrics label."""

    DUPLICATE_STREAM = "duplicate_stream"  # the call already has a stream on this instance
    REPLAYED_TOKEN = "replayed_token"  # the token was presented before (here, or with Redis anywhere)
    CALL_HAD_STREAM = "call_had_stream"  # a fresh token (a replayed webhook's) for a call that streamed


class StreamLedger(Protocol):
    """Stream tokens presented and call SIDs that had a stream."""

    async def consume(self, token: str, call_sid: str, expires_at: float) -> StreamRefusal | None:
        """None the first time `token` is presented for a call that had no stream yet: the token is
        used up (until `expires_at`, epoch seconds) and `call_sid` noted as having had its stream.
        Otherwise why not: REPLAYED_TOKEN, or CALL_HAD_STREAM (a token minted by a replayed
        webhook before the first stream started)."""

    async def had_stream(self, call_sid: str) -> bool:
        """True when a stream of `call_sid` started within `REMEMBER_CALLS_S`."""

    async def close(self) -> None: ...


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class MemoryLedger:
    """This instance's ledger: two bounded tables, pruned as they are used. `clock`: epoch seconds."""

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        remember_calls_s: float = REMEMBER_CALLS_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens: ExpiringKeys[bytes] = ExpiringKeys(max_entries)  # digests, until the token expires
        self._calls: ExpiringKeys[str] = ExpiringKeys(max_entries)  # call SIDs that had their stream
        self.remember_calls_s = remember_calls_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tokens)

    def consume_now(self, token: str, call_sid: str, expires_at: float) -> StreamRefusal | None:
        """`consume` without awaiting (the Redis ledger's first check and fallback)."""
        now = self._clock()
        digest = token_digest(token)
        if self._tokens.contains(digest, now):
            return StreamRefusal.REPLAYED_TOKEN
        self._tokens.add(digest, expires_at, now)
        had_stream = self.knows_call(call_sid)
        self.note_call(call_sid, now)
        return StreamRefusal.CALL_HAD_STREAM if had_stream else None

    def note_call(self, call_sid: str, now: float) -> None:
        self._calls.add(call_sid, now + self.remember_calls_s, now)

    def knows_call(self, call_sid: str) -> bool:
        return self._calls.contains(call_sid, self._clock())

    async def consume(self, token: str, call_sid: str, expires_at: float) -> StreamRefusal | None:
        return self.consume_now(token, call_sid, expires_at)

    async def had_stream(self, call_sid: str) -> bool:
        return self.knows_call(call_sid)

    async def close(self) -> None:
        return None


class RedisLedger:
    """The fleet's ledger in Redis, this instance's memory in front of it and behind it.

    Keys (prefix `relay:`), both set with NX: `stream-token:<sha256 hex>` with EX the token's
    remaining lifetime; `stream-call:<call SID>` with EX `REMEMBER_CALLS_S`. `on_fallback` is
    called each time the memory decides because Redis did not answer (the caller counts it).
    """

    def __init__(
        self,
        url: str,
        *,
        on_fallback: Callable[[], None] = lambda: None,
        prefix: str = "relay:",
        timeout: float = REDIS_CHECK_TIMEOUT_S,
        local: MemoryLedger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = local if local is not None else MemoryLedger(clock=clock)
        self.on_fallback = on_fallback
        self.prefix = prefix
        self.timeout = timeout
        self._url = url
        self._client = redis_client(url, timeout=timeout)
        self._clock = clock
        self._skip_until = 0.0  # monotonic: Redis failed; checks stay local until then

    def token_key(self, token: str) -> str:
        return f"{self.prefix}stream-token:{token_digest(token).hex()}"

    def call_key(self, call_sid: str) -> str:
        return f"{self.prefix}stream-call:{call_sid}"

    async def consume(self, token: str, call_sid: str, expires_at: float) -> StreamRefusal | None:
        refusal = self.local.consume_now(token, call_sid, expires_at)
        if refusal is not None:
            return refusal  # known here: no need to ask
        ttl = max(1, math.ceil(expires_at - self._clock()))
        remember = max(1, math.ceil(self.local.remember_calls_s))

        async def ask() -> StreamRefusal | None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self.token_key(token), 1, nx=True, ex=ttl)
                pipe.set(self.call_key(call_sid), 1, nx=True, ex=remember)
                fresh_token, fresh_call = await pipe.execute()
            if not fresh_token:
                return StreamRefusal.REPLAYED_TOKEN
            return None if fresh_call else StreamRefusal.CALL_HAD_STREAM

        answered, refusal = await self._ask(ask, None, "consuming a stream token")
        return refusal if answered else None  # Redis silent: this instance's memory decided

    async def had_stream(self, call_sid: str) -> bool:
        if self.local.knows_call(call_sid):
            return True

        async def ask() -> bool:
            return bool(await self._client.exists(self.call_key(call_sid)))

        _, had = await self._ask(ask, False, "looking up the call's stream")
        return had

    async def _ask(self, query: Callable[[], Awaitable[T]], default: T, action: str) -> tuple[bool, T]:
        """(True, Redis' answer) within the bound, else (False, `default`): the fallback is counted
        and Redis left alone for REDIS_RETRY_AFTER_S."""
        now = time.monotonic()
        if now < self._skip_until:
            self.on_fallback()
            return False, default
        try:
            async with asyncio.timeout(self.timeout * 2):  # the socket timeouts bound it first
                answer = await query()
        except (RedisError, OSError, TimeoutError) as exc:
            self._skip_until = time.monotonic() + REDIS_RETRY_AFTER_S
            self.on_fallback()
            log.warning(
                "Redis at REDIS_URL=%s did not answer while %s within %.0f ms (%s): stream tokens and "
                "replayed webhooks are checked on this instance only for the next %.0f s",
                redact_url(self._url),
                action,
                self.timeout * 1000,
                str(exc) or type(exc).__name__,
                REDIS_RETRY_AFTER_S,
            )
            return False, default
        return True, answer

    async def close(self) -> None:
        await self._client.aclose()


class LiveStreams:
    """The call SIDs with a stream running on this instance (claimed before the token is consumed,
    released when the stream ends). Synchronous: check and claim happen in one step."""

    def __init__(self) -> None:
        self._sids: set[str] = set()

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._sids

    def __len__(self) -> int:
        return len(self._sids)

    def claim(self, call_sid: str) -> bool:
        """False when `call_sid` already has a stream here."""
        if call_sid in self._sids:
            return False
        self._sids.add(call_sid)
        return True

    def release(self, call_sid: str) -> None:
        self._sids.discard(call_sid)


class StreamGate:
    """What a stream with a verified token must pass: one stream per call SID, one use per token."""

    def __init__(self, ledger: StreamLedger) -> None:
        self.ledger = ledger
        self.live = LiveStreams()

    async def admit(self, token: str, call_sid: str, expires_at: float) -> StreamRefusal | None:
        """None when the stream may run (call `release` when it ends), else why it may not."""
        if not self.live.claim(call_sid):
            return StreamRefusal.DUPLICATE_STREAM
        try:
            refusal = await self.ledger.consume(token, call_sid, expires_at)
        except BaseException:
            self.live.release(call_sid)
            raise
        if refusal is not None:
            self.live.release(call_sid)
        return refusal

    def release(self, call_sid: str) -> None:
        self.live.release(call_sid)

    async def had_stream(self, call_sid: str) -> bool:
        """True when the call's stream started (running or ended) here, or with Redis anywhere."""
        return call_sid in self.live or await self.ledger.had_stream(call_sid)

    async def close(self) -> None:
        await self.ledger.close()


def make_stream_gate(settings: Settings, *, on_fallback: Callable[[], None] = lambda: None) -> StreamGate:
    """A gate over a RedisLedger when REDIS_URL is set, else over a MemoryLedger."""
    if settings.redis_url is None:
        return StreamGate(MemoryLedger())
    return StreamGate(RedisLedger(settings.redis_url.get_secret_value(), on_fallback=on_fallback))


__all__ = [
    "REDIS_CHECK_TIMEOUT_S",
    "REMEMBER_CALLS_S",
    "LiveStreams",
    "MemoryLedger",
    "RedisLedger",
    "StreamGate",
    "StreamLedger",
    "StreamRefusal",
    "make_stream_gate",
]
