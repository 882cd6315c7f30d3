"""Redis clients that fail fast, and errors that name REDIS_URL without its password.

Shared by everything the relay keeps in Redis: call records (relay/sessions/redis_store.py),
concurrency slots (relay/sessions/limits.py) and the stream tokens' replay ledger
(webhooks/replay.py).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.errors import ConfigError, StoreError

__all__ = ["REDIS_TIMEOUT_S", "redact_url", "redis_client", "redis_error"]

REDIS_TIMEOUT_S = 1.0
"""Connect and per-operation socket timeout: a dead Redis fails a write in about a second."""


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
