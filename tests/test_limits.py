"""Call limits: MemoryLimiter on an injected clock, RedisLimiter over a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from relay.config import Settings
from relay.errors import StoreError
from relay.sessions.limits import CallLimiter, MemoryLimiter, RedisLimiter, make_limiter
from relay.sessions.redis_store import RedisStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401

MAX = 3
TTL = 30.0


class FakeClock:
    """Monotonic seconds that only move when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def limiters(
    redis_server: RedisServer,  # noqa: F811
) -> AsyncIterator[Callable[..., CallLimiter]]:
    """Builds 'memory' or 'redis' limiters (redis ones share one key, like relay instances); closes them."""
    made: list[CallLimiter] = []

    def make(kind: str, max_calls: int = MAX) -> CallLimiter:
        limiter: CallLimiter = (
            MemoryLimiter(max_calls) if kind == "memory" else RedisLimiter(redis_server.url, max_calls)
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


# --- the contract, for both ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_max_is_respected_and_release_frees_a_slot(
    kind: str, limiters: Callable[..., CallLimiter]
) -> None:
    limiter = limiters(kind)
    assert [await limiter.acquire(f"CA{i}", TTL) for i in range(MAX + 1)] == [True] * MAX + [False]
    assert await limiter.count() == MAX

    await limiter.release("CA0")
    assert await limiter.count() == MAX - 1
    assert await limiter.acquire("CA-new", TTL)
    assert not await limiter.acquire("CA-another", TTL)

    await limiter.release("CA-never-held")  # a no-op
    assert await limiter.count() == MAX


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_acquiring_a_held_slot_again_refreshes_it(
    kind: str, limiters: Callable[..., CallLimiter]
) -> None:
    limiter = limiters(kind)
    for i in range(MAX):
        assert await limiter.acquire(f"CA{i}", TTL)
    assert await limiter.acquire("CA1", TTL)  # full, but CA1 already holds a slot
    assert await limiter.count() == MAX
    assert await limiter.refresh("CA2", TTL)
    assert not await limiter.refresh("CA-none", TTL)  # refresh never takes a new slot
    assert await limiter.count() == MAX


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_ttl_must_be_positive(kind: str, limiters: Callable[..., CallLimiter]) -> None:
    limiter = limiters(kind)
    with pytest.raises(ValueError, match="ttl must be positive"):
        await limiter.acquire("CA0", 0)


# --- MemoryLimiter on a fake clock ---------------------------------------------------------------


async def test_memory_slots_expire_on_the_clock() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(2, clock=clock)
    assert await limiter.acquire("CA-short", 5)
    assert await limiter.acquire("CA-long", 60)
    assert not await limiter.acquire("CA-waiting", 60)

    clock.advance(4.9)
    assert not await limiter.acquire("CA-waiting", 60)
    clock.advance(0.1)  # CA-short's expiry: its slot comes back
    assert await limiter.count() == 1
    assert await limiter.acquire("CA-waiting", 60)


async def test_memory_refresh_and_reacquire_push_the_expiry() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(1, clock=clock)
    assert await limiter.acquire("CA1", 10)
    clock.advance(8)
    assert await limiter.refresh("CA1", 10)  # now expires at +18
    clock.advance(8)
    assert await limiter.acquire("CA1", 10)  # held: refreshed to +26
    clock.advance(9)
    assert not await limiter.acquire("CA2", 10)
    clock.advance(1)
    assert not await limiter.refresh("CA1", 10)  # lapsed: refresh does not take it back
    assert await limiter.acquire("CA2", 10)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_rebind_moves_a_reserved_slot_to_the_call_sid_at_capacity(
    kind: str, limiters: Callable[..., CallLimiter]
) -> None:
    """An outbound call's slot, reserved before Twilio names the call, moves to its SID even when
    every other slot is taken; a reservation that lapsed takes a free slot, if there is one."""
    limiter = limiters(kind)
    assert await limiter.acquire("outbound-1", TTL)
    assert all([await limiter.acquire(f"CA{i}", TTL) for i in range(MAX - 1)])
    assert await limiter.rebind("outbound-1", "CA-new", TTL)
    assert await limiter.count() == MAX
    assert not await limiter.acquire("outbound-1", TTL)  # the reservation is gone, its slot moved
    assert await limiter.refresh("CA-new", TTL)
    assert not await limiter.rebind("outbound-lapsed", "CA-other", TTL)  # held none, none free
    await limiter.release("CA0")
    assert await limiter.rebind("outbound-lapsed", "CA-other", TTL)
    assert await limiter.rebind("CA-other", "CA-other", TTL)  # the same key: still held
    assert await limiter.count() == MAX


# --- RedisLimiter across instances -------------------------------------------------------------


async def test_two_instances_share_the_limit(limiters: Callable[..., CallLimiter]) -> None:
    first, second = limiters("redis"), limiters("redis")
    assert await first.acquire("CA1", TTL)
    assert await second.acquire("CA2", TTL)
    assert await first.acquire("CA3", TTL)
    assert not await second.acquire("CA4", TTL)
    assert await second.acquire("CA1", TTL)  # the slot is the call's, whichever instance asks
    await second.release("CA3")
    assert await first.count() == await second.count() == MAX - 1
    assert await second.acquire("CA4", TTL)


async def test_racing_bursts_never_exceed_the_limit(limiters: Callable[..., CallLimiter]) -> None:
    max_calls = 7
    first, second = limiters("redis", max_calls), limiters("redis", max_calls)
    instances = itertools.cycle([first, second])
    results = await asyncio.gather(*(next(instances).acquire(f"CA{i}", TTL) for i in range(50)))
    assert sum(results) == max_calls
    assert await first.count() == max_calls

    assert await second.count() == max_calls


async def test_one_call_racing_from_both_instances_takes_one_slot(
    limiters: Callable[..., CallLimiter],
) -> None:
    first, second = limiters("redis", 2), limiters("redis", 2)
    instances = itertools.cycle([first, second])
    assert all(await asyncio.gather(*(next(instances).acquire("CA-same", TTL) for _ in range(20))))
    assert await first.count() == 1
    assert await second.acquire("CA-other", TTL)
    assert not await first.acquire("CA-third", TTL)


async def test_expired_slot_comes_back(limiters: Callable[..., CallLimiter]) -> None:
    # As when an instance crashes holding a slot: nobody releases it, its expiry frees it.
    crashed, alive = limiters("redis", 1), limiters("redis", 1)
    assert await crashed.acquire("CA-orphan", 0.2)
    assert not await alive.acquire("CA-new", TTL)
    await asyncio.sleep(0.3)  # this test is about expiry itself
    assert await alive.count() == 0
    assert await alive.acquire("CA-new", TTL)


async def expired_slots(url: str, *sids: str) -> None:
    """Slots as a crashed instance leaves them: held, and never refreshed again (expired long ago)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await client.zadd("relay:active_calls", dict.fromkeys(sids, 1))
    finally:
        await client.aclose()


@pytest.mark.parametrize("operation", ["acquire", "refresh", "sweep"])
async def test_whoever_drops_an_expired_slot_marks_its_call_lost_once(
    operation: str,
    redis_server: RedisServer,  # noqa: F811
    limiters: Callable[..., CallLimiter],
) -> None:
    store = RedisStore(redis_server.url, ttl_seconds=3600)
    try:
        await store.upsert("CA-orphan", status="in-progress", stream_sid="MZ1")
        await store.upsert("CA-done", status="ended", outcome="hangup")  # ended, but its release failed
        await expired_slots(redis_server.url, "CA-orphan", "CA-done", "CA-unknown")
        first, second = limiters("redis"), limiters("redis")
        seen: list[str] = []
        first.on_lost = seen.extend
        if operation == "acquire":
            assert await first.acquire("CA-new", TTL)
        elif operation == "refresh":
            assert not await first.refresh("CA-orphan", TTL)
        else:
            assert await first.sweep() == ["CA-orphan"]
        assert seen == ["CA-orphan"]
        assert await second.sweep() == [] and await first.sweep() == []  # once, whoever sweeps next
        orphan, done = await store.get("CA-orphan"), await store.get("CA-done")
        assert orphan is not None and done is not None
        assert (orphan["status"], orphan["outcome"], orphan["stream_sid"]) == ("ended", "lost", "MZ1")
        assert isinstance(orphan["ended_at"], float) and abs(orphan["ended_at"] - time.time()) < 5
        assert (done["status"], done["outcome"]) == ("ended", "hangup")
        assert await store.get("CA-unknown") is None  # no record is invented
    finally:
        await store.close()


async def test_memory_slots_expire_without_marking_anything() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(2, clock=clock)
    assert await limiter.acquire("CA1", 10)
    clock.advance(11)
    assert await limiter.sweep() == []
    assert await limiter.count() == 0


async def test_expiry_is_on_the_redis_server_clock(
    redis_server: RedisServer,  # noqa: F811
    limiters: Callable[..., CallLimiter],
) -> None:
    limiter = limiters("redis")
    assert await limiter.acquire("CA1", 60)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        seconds, micros = await client.time()
        expiry_ms = await client.zscore("relay:active_calls", "CA1")
    finally:
        await client.aclose()
    assert expiry_ms is not None
    server_now_ms = seconds * 1000 + micros // 1000
    assert 59_000 < expiry_ms - server_now_ms <= 60_000


async def test_dead_redis_raises_store_error_then_recovers(
    redis_server: RedisServer,  # noqa: F811
    limiters: Callable[..., CallLimiter],
) -> None:
    limiter = limiters("redis")
    assert await limiter.acquire("CA1", TTL)
    await redis_server.kill()
    for operation in (
        lambda: limiter.acquire("CA2", TTL),
        lambda: limiter.refresh("CA1", TTL),
        lambda: limiter.release("CA1"),
        limiter.count,
    ):
        started = time.monotonic()
        with pytest.raises(StoreError, match="REDIS_URL=redis://127.0.0.1"):
            await operation()
        assert time.monotonic() - started < 1.5

    await redis_server.restart()  # empty, and without the scripts: they are loaded again
    assert await limiter.acquire("CA2", TTL)
    assert await limiter.count() == 1


async def test_make_limiter(settings_factory: Callable[..., Settings]) -> None:
    memory = make_limiter(settings_factory(max_concurrent_calls=5))
    assert isinstance(memory, MemoryLimiter)
    assert memory.max_calls == 5

    redis = make_limiter(settings_factory(redis_url="redis://127.0.0.1:6399/0", max_concurrent_calls=9))
    assert isinstance(redis, RedisLimiter)
    assert (redis.max_calls, redis.key) == (9, "relay:active_calls")
    await redis.close()
