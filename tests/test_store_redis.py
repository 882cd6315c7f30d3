"""RedisStore over a real redis-server: same records as MemoryStore, TTLs, restarts, outages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from relay.config import Settings
from relay.errors import ConfigError, StoreError
from relay.redis_client import redact_url
from relay.sessions.redis_store import RedisStore
from relay.sessions.store import CallStore, MemoryStore, make_store
from tests.redis_server import RedisServer, free_port, redis_server  # noqa: F401

SID = "CA" + "1" * 32
TTL = 3600


async def write_call(store: CallStore, sid: str = SID) -> None:
    """One call's writes, in the order the relay makes them, with values that stress the encoding."""
    await store.upsert(sid, **{"from": "+15551230000", "to": "+15557654321"})
    await store.upsert(sid, stream_sid="MZ1", provider="openai", mode="realtime", started_at=1_700_000_000.5)
    await store.add_turn(sid, "assistant", "Hello! How can I help?", item_id="item_1", heard_ms=1840)
    await store.add_turn(sid, "user", "Wie ist das Wetter in Oslo? 🌧")
    await store.add_turn(sid, "assistant", "It is", item_id="item_2", interrupted=True, heard_ms=0)
    await store.add_event(
        sid,
        "tools",
        {"name": "web_search", "arguments": {"query": "Oslo"}, "duration_ms": 412.5, "outcome": "ok"},
    )
    await store.add_event(sid, "fallbacks", {"from": "realtime", "to": "cascade", "reason": "429"})
    await store.add_event(
        sid, "tools", {"name": "end_call", "arguments": {}, "duration_ms": 1, "outcome": "ok"}
    )
    await store.add_event(sid, "errors", {"cause": "provider dropped", "status": None})
    await store.upsert(
        sid,
        twilio_status="completed",
        duration_s="42",  # strings that read as JSON must come back as strings
        note="null",
        flag="true",
        quoted='"x"',
        empty="",
        ended_at=1_700_000_042.25,
        status="ended",
        outcome="hangup",
        stats={"frames_in": 2100, "barge_ins": 1, "ratio": 0.5},
        retries=0,
        missing=None,
        ok=True,
    )


EXPECTED: dict[str, Any] = {
    "call_sid": SID,
    "stream_sid": "MZ1",
    "from": "+15551230000",
    "to": "+15557654321",
    "provider": "openai",
    "mode": "realtime",
    "started_at": 1_700_000_000.5,
    "ended_at": 1_700_000_042.25,
    "status": "ended",
    "outcome": "hangup",
    "twilio_status": "completed",
    "duration_s": "42",
    "note": "null",
    "flag": "true",
    "quoted": '"x"',
    "empty": "",
    "stats": {"frames_in": 2100, "barge_ins": 1, "ratio": 0.5},
    "retries": 0,
    "missing": None,
    "ok": True,
    "transcript": [
        {
            "role": "assistant",
            "text": "Hello! How can I help?",
            "ts": "<ts>",
            "item_id": "item_1",
            "heard_ms": 1840,
        },
        {"role": "user", "text": "Wie ist das Wetter in Oslo? 🌧", "ts": "<ts>"},
        {
            "role": "assistant",
            "text": "It is",
            "ts": "<ts>",
            "item_id": "item_2",
            "interrupted": True,
            "heard_ms": 0,
        },
    ],
    "tools": [
        {"name": "web_search", "arguments": {"query": "Oslo"}, "duration_ms": 412.5, "outcome": "ok"},
        {"name": "end_call", "arguments": {}, "duration_ms": 1, "outcome": "ok"},
    ],
    "fallbacks": [{"from": "realtime", "to": "cascade", "reason": "429"}],
    "errors": [{"cause": "provider dropped", "status": None}],
}


def without_timestamps(record: dict[str, Any] | None) -> dict[str, Any]:
    """The record with each turn's `ts` (a float, checked) replaced by a placeholder."""
    assert record is not None
    turns = record["transcript"]
    assert all(isinstance(turn["ts"], float) for turn in turns)
    return {**record, "transcript": [{**turn, "ts": "<ts>"} for turn in turns]}


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    """A plain client for looking at what the store wrote."""
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield redis
    await redis.aclose()


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[[str], CallStore]]:  # noqa: F811
    """Builds 'memory' or 'redis' stores; closes them afterwards."""
    made: list[CallStore] = []

    def make(kind: str) -> CallStore:
        store: CallStore = (
            MemoryStore() if kind == "memory" else RedisStore(redis_server.url, ttl_seconds=TTL)
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_record_round_trip(kind: str, stores: Callable[[str], CallStore]) -> None:
    store = stores(kind)
    assert await store.get(SID) is None
    await write_call(store)
    assert without_timestamps(await store.get(SID)) == EXPECTED
    assert await store.get("CA-other") is None


@pytest.mark.parametrize(
    "writes",
    [
        pytest.param(write_call, id="whole call"),
        pytest.param(lambda s: s.add_turn(SID, "user", "hi"), id="first write is a turn"),
        pytest.param(lambda s: s.add_event(SID, "tools", {"name": "x"}), id="first write is an event"),
        pytest.param(lambda s: s.upsert(SID), id="empty upsert"),
        pytest.param(lambda s: s.upsert(SID, fallbacks=[{"reason": "a"}], tools=[]), id="list fields set"),
    ],
)
async def test_same_record_as_memory_store(writes: Any, stores: Callable[[str], CallStore]) -> None:
    memory, redis = stores("memory"), stores("redis")
    await writes(memory)
    await writes(redis)
    from_memory, from_redis = (
        without_timestamps(await memory.get(SID)),
        without_timestamps(await redis.get(SID)),
    )
    # started_at defaults to the time of the first write: equal up to the time between the two writes
    assert isinstance(from_redis["started_at"], float)
    assert from_redis["started_at"] == pytest.approx(from_memory["started_at"], abs=1.0)
    assert {**from_redis, "started_at": 0} == {**from_memory, "started_at": 0}


async def test_key_layout_and_every_write_refreshes_every_ttl(
    redis_server: RedisServer,  # noqa: F811
    client: aioredis.Redis,
) -> None:
    store = RedisStore(redis_server.url, ttl_seconds=TTL)
    try:
        await write_call(store)
        prefix = f"relay:call:{SID}"
        keys = {prefix, *(f"{prefix}:{name}" for name in ("transcript", "tools", "fallbacks", "errors"))}
        assert set(await client.keys("relay:*")) == keys
        assert await client.type(prefix) == "hash"
        assert await client.hget(prefix, "status") == "ended"  # readable with redis-cli
        assert await client.hget(prefix, "duration_s") == '"42"'
        assert await client.llen(f"{prefix}:transcript") == 3
        for key in keys:
            assert TTL - 5 < await client.ttl(key) <= TTL, key

        for key in keys:
            await client.expire(key, 5)
        await store.add_turn(SID, "user", "one more")  # writes the transcript only...
        for key in keys:
            assert TTL - 5 < await client.ttl(key) <= TTL, key  # ...and refreshes all of them
    finally:
        await store.close()


async def test_records_survive_a_new_store_instance(redis_server: RedisServer) -> None:  # noqa: F811
    first = RedisStore(redis_server.url, ttl_seconds=TTL)
    await write_call(first)
    written = await first.get(SID)
    await first.close()

    second = RedisStore(redis_server.url, ttl_seconds=TTL)  # as after a relay restart
    try:
        assert await second.get(SID) == written
        await second.add_turn(SID, "user", "still here")
        record = await second.get(SID)
        assert record is not None
        assert [turn["text"] for turn in record["transcript"]][-2:] == ["It is", "still here"]
    finally:
        await second.close()


async def test_dead_redis_fails_fast_then_recovers(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore(redis_server.url, ttl_seconds=TTL)
    try:
        await write_call(store)
        await redis_server.kill()
        operations: list[Callable[[], Any]] = [
            lambda: store.upsert(SID, status="ended"),
            lambda: store.add_turn(SID, "user", "hello?"),
            lambda: store.add_event(SID, "tools", {"name": "x"}),
            lambda: store.get(SID),
            store.ping,
        ]
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(StoreError, match="REDIS_URL=redis://127.0.0.1") as caught:
                await operation()
            assert time.monotonic() - started < 1.5
            assert caught.value.retryable

        await redis_server.restart()  # an empty Redis: no persistence in the tests
        assert await store.ping()
        await store.add_turn(SID, "user", "back again")
        record = await store.get(SID)
        assert record is not None
        assert [turn["text"] for turn in record["transcript"]] == ["back again"]
    finally:
        await store.close()


async def test_hung_redis_times_out_fast(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore(redis_server.url, ttl_seconds=TTL)
    try:
        assert await store.ping()
        await redis_server.freeze()
        started = time.monotonic()
        with pytest.raises(StoreError, match="REDIS_URL"):
            await store.upsert(SID, status="ended")
        assert time.monotonic() - started < 1.5
        await redis_server.thaw()
        assert await store.ping()
    finally:
        await store.close()


async def test_values_json_cannot_hold_do_not_lose_the_write(stores: Callable[[str], CallStore]) -> None:
    store = stores("redis")
    await store.upsert(SID, price=Decimal("1.50"), tags={"vip"}, pair=(1, 2), by_id={7: "x"})
    record = await store.get(SID)
    assert record is not None
    assert (record["price"], record["tags"], record["pair"], record["by_id"]) == (
        "1.50",
        ["vip"],
        [1, 2],
        {"7": "x"},
    )


async def test_errors_never_show_the_password() -> None:
    store = RedisStore(f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0", ttl_seconds=TTL)
    try:
        with pytest.raises(StoreError) as caught:
            await store.upsert(SID, status="ended")
    finally:
        await store.close()
    assert "REDIS_URL=redis://:***@127.0.0.1:" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(caught.value.__cause__)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pw@host:6380", "rediss://user:***@host:6380"),
        ("redis://pw@host", "redis://***@host"),
        ("unix:///run/redis.sock?db=1&password=pw", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://host:6379/2", "redis://host:6379/2"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_unknown_event_kind_is_refused(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore(redis_server.url, ttl_seconds=TTL)
    try:
        with pytest.raises(ValueError, match="unknown event kind 'notes'"):
            await store.add_event(SID, "notes", {"x": 1})
    finally:
        await store.close()


async def test_make_store(settings_factory: Callable[..., Settings]) -> None:
    memory = make_store(settings_factory())
    assert isinstance(memory, MemoryStore)

    redis = make_store(settings_factory(redis_url="redis://:pw@127.0.0.1:6399/0", call_record_ttl_days=2))
    assert isinstance(redis, RedisStore)
    assert redis.ttl_seconds == 2 * 86_400
    await redis.close()

    with pytest.raises(ConfigError, match="REDIS_URL='http://:\\*\\*\\*@host:6379' is not a valid") as caught:
        make_store(settings_factory(redis_url="http://:pw@host:6379"))
    assert ":pw@" not in str(caught.value)
