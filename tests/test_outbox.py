"""The record outbox and idempotent writes over a real redis-server: writes queued while Redis is
killed or hung reach it in order once it is back, exactly once; what does not fit is dropped and
counted; one WARNING and one INFO per outage."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from relay.metrics import Metrics
from relay.sessions.outbox import Outbox, StoreHealth
from relay.sessions.records import RecordWrite
from relay.sessions.redis_store import RedisStore
from relay.sessions.store import MemoryStore
from tests.redis_server import RedisServer, redis_server, wait_for_record  # noqa: F401

SID = "CA" + "5" * 32
OTHER = "CA" + "6" * 32
TTL = 3600


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:  # noqa: F811
    store = RedisStore(redis_server.url, ttl_seconds=TTL)
    yield store
    await store.close()


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def texts(record: dict | None) -> list[str]:
    return [turn["text"] for turn in (record or {}).get("transcript", [])]


def queue_call(outbox: Outbox, sid: str, turns: int) -> None:
    """A call's writes as the relay queues them: the webhook's, the stream's, its turns, its end."""
    outbox.put(sid, "upsert", **{"from": "+15550001111", "to": "+15550002222"})
    outbox.put(sid, "upsert", stream_sid="MZ1", provider="openai", mode="realtime", status="in-progress")
    for i in range(turns):
        outbox.put(sid, "add_turn", "assistant" if i % 2 == 0 else "user", f"turn {i}")
    outbox.put(sid, "add_event", "tools", {"name": "end_call", "outcome": "ok"})
    outbox.put(sid, "upsert", status="ended", outcome="hangup")


def complete(turns: int):
    def done(record: dict | None) -> bool:
        return record is not None and record["status"] == "ended" and len(record["transcript"]) >= turns

    return done


async def test_a_write_is_applied_once_however_often_it_is_sent(store: RedisStore) -> None:
    write = RecordWrite(SID, "add_turn", ("user", "hello"), writer="w1", seq=7)
    await store.apply(write)
    await store.apply(write)  # a retry of a write Redis ran after its answer timed out
    await store.apply(RecordWrite(SID, "add_turn", ("user", "older"), writer="w1", seq=3))
    await store.apply(RecordWrite(SID, "add_turn", ("user", "other process"), writer="w2", seq=1))
    assert texts(await store.get(SID)) == ["hello", "other process"]


async def test_a_write_sent_to_a_hung_redis_is_not_applied_twice(
    redis_server: RedisServer,  # noqa: F811
    store: RedisStore,
) -> None:
    await store.upsert(OTHER, note="warm")  # the script is loaded: a request Redis holds will run
    write = RecordWrite(SID, "add_turn", ("user", "said once"), writer="w1", seq=1)
    await redis_server.freeze()
    with pytest.raises(Exception, match="REDIS_URL"):
        await store.apply(write)  # times out; Redis still holds the request in its socket
    await redis_server.thaw()
    await store.apply(write)
    await store.apply(RecordWrite(SID, "add_turn", ("user", "next"), writer="w1", seq=2))
    assert texts(await store.get(SID)) == ["said once", "next"]


async def test_writes_queued_while_redis_is_dead_land_in_order_when_it_is_back(
    redis_server: RedisServer,  # noqa: F811
    store: RedisStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    outbox = Outbox(store, StoreHealth(metrics))
    await redis_server.kill()
    queue_call(outbox, SID, turns=6)
    queue_call(outbox, OTHER, turns=3)
    assert await outbox.wait_written(outbox.put(OTHER, "upsert", note="x"), timeout=5) is False
    assert outbox.pending == 18

    await redis_server.restart()
    restarted = time.monotonic()
    record = await wait_for_record(redis_server, OTHER, complete(3), timeout=5)
    caught_up = time.monotonic() - restarted
    first = await store.get(SID)
    await outbox.aclose(timeout=5)

    assert caught_up < 2.0  # the retry backoff is capped at 0.5 s
    assert first is not None and record is not None
    assert texts(first) == [f"turn {i}" for i in range(6)]
    assert (first["from"], first["stream_sid"], first["status"], first["outcome"]) == (
        "+15550001111",
        "MZ1",
        "ended",
        "hangup",
    )
    assert first["tools"] == [{"name": "end_call", "outcome": "ok"}]
    assert texts(record) == ["turn 0", "turn 1", "turn 2"]
    assert sample(metrics, "relay_store_dropped_total") == 0
    assert sample(metrics, "relay_store_errors_total") >= 1
    unreachable = [r for r in caplog.records if "call store unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "call store reachable again" in r.getMessage()]
    assert [r.levelno for r in unreachable] == [logging.WARNING]
    assert [r.levelno for r in back] == [logging.INFO]


async def test_writes_queued_while_redis_is_hung_land_exactly_once(
    redis_server: RedisServer,  # noqa: F811
    store: RedisStore,
) -> None:
    outbox = Outbox(store, StoreHealth(Metrics()))
    await store.upsert(OTHER, note="warm")  # the script is loaded: a request Redis holds will run
    await redis_server.freeze()
    queue_call(outbox, SID, turns=4)
    assert await outbox.wait_written(outbox.put(SID, "upsert", note="x"), timeout=5) is False
    await redis_server.thaw()
    record = await wait_for_record(redis_server, SID, lambda r: r is not None and r.get("note") == "x")
    await outbox.aclose(timeout=5)
    assert texts(record) == ["turn 0", "turn 1", "turn 2", "turn 3"]  # no turn twice
    assert record is not None and record["status"] == "ended"


async def test_past_its_bound_the_outbox_drops_the_oldest_writes_and_counts_them(
    redis_server: RedisServer,  # noqa: F811
    store: RedisStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    outbox = Outbox(store, StoreHealth(metrics), max_writes=4)
    await redis_server.kill()
    assert not await outbox.wait_written(outbox.put(SID, "add_turn", "user", "turn 0"), timeout=5)
    for i in range(1, 10):  # turn 0 is being retried: of the others, the newest three fit
        outbox.put(SID, "add_turn", "user", f"turn {i}")
    assert outbox.pending == 4
    await redis_server.restart()
    await outbox.aclose(timeout=5)
    record = await store.get(SID)
    assert texts(record) == ["turn 0", "turn 7", "turn 8", "turn 9"]
    assert sample(metrics, "relay_store_dropped_total") == 6
    # Not one line per drop: the first at once, the rest within the interval once writes caught up.
    drops = [r.getMessage() for r in caplog.records if "call record writes;" in r.getMessage()]
    assert [line.split(";")[0] for line in drops] == [
        "dropped 1 call record writes",
        "dropped 5 call record writes",
    ]


async def test_a_write_redis_refuses_is_dropped_and_does_not_block_the_others(
    redis_server: RedisServer,  # noqa: F811
    store: RedisStore,
) -> None:
    metrics = Metrics()
    outbox = Outbox(store, StoreHealth(metrics))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.set(store.key(SID, "transcript"), "not a list")  # WRONGTYPE for RPUSH
    finally:
        await client.aclose()
    outbox.put(SID, "add_turn", "user", "refused")
    seq = outbox.put(OTHER, "add_turn", "user", "stored")
    assert await outbox.wait_written(seq, timeout=5)
    await outbox.aclose(timeout=1)
    assert texts(await store.get(OTHER)) == ["stored"]
    assert sample(metrics, "relay_store_dropped_total") == 1


async def test_with_the_memory_store_writes_are_there_at_once() -> None:
    store = MemoryStore()
    outbox = Outbox(store, StoreHealth(Metrics()))
    queue_call(outbox, SID, turns=2)
    assert await outbox.wait_written(outbox.put(SID, "upsert", note="x"), timeout=1)
    record = await store.get(SID)
    assert record is not None and texts(record) == ["turn 0", "turn 1"] and record["status"] == "ended"
    await outbox.aclose(timeout=1)
