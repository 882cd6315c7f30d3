"""A real `redis-server` per test, for the Redis store and limiter tests.

Import the fixture into a test module (`from tests.redis_server import redis_server`). Each test
gets its own server on 127.0.0.1 and a free port, without persistence, in a temporary directory
(`relay.testing.redis_server`, which the fleet harness uses too). Tests skip when redis-server is
not installed (`make test` installs it).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from relay.sessions.redis_store import RedisStore
from relay.testing.redis_server import RedisServer, RedisStartError, free_port, start_redis

__all__ = ["RedisServer", "RedisStartError", "free_port", "redis_server", "wait_for_record"]


async def wait_for_record(
    server: RedisServer,
    call_sid: str,
    done: Callable[[dict[str, Any] | None], bool],
    timeout: float = 5.0,  # noqa: ASYNC109 - a test bound
) -> dict[str, Any] | None:
    """The call's record (read through RedisStore) once `done(record)` holds; TimeoutError otherwise.

    Woken by Redis keyspace notifications on the call's keys, so it waits for writes without polling.
    Enables the notifications on the server (again after a restart: a fresh server has them off).
    """
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    store = RedisStore(server.url, ttl_seconds=3600)
    pubsub = client.pubsub()
    try:
        await client.config_set("notify-keyspace-events", "KA")
        await pubsub.psubscribe(f"__keyspace@0__:relay:call:{call_sid}*")
        async with asyncio.timeout(timeout):
            while not done(record := await store.get(call_sid)):
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        return record
    finally:
        await pubsub.aclose()
        await client.aclose()
        await store.close()


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A running redis-server for this test only; stopped afterwards."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip(
            "redis-server is not installed: run `make test` (installs it) or `apt-get install redis-server`"
        )
    with tempfile.TemporaryDirectory(prefix="relay-redis-") as directory:
        server = await start_redis(executable, directory)
        try:
            yield server
        finally:
            await server.stop()
