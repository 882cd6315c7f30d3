"""300 hostile HTTP clients against `relay serve` (a real process), with a call in progress:
clients trickling their headers at 1 byte/s, or sending headers of megabytes. The relay's /health
stays fast, its memory stays bounded and the call keeps its audio.

The relay runs in its own process so that its memory (VmRSS from /proc) and its event loop are its
own; the clients, the fake caller and the fake Realtime server run here. HTTP_HEADER_TIMEOUT is
shortened to 2 s through the environment so the slow clients are cut (and reconnect) during the
few seconds the load lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import pytest

from relay.testing.realtime import FakeRealtimeServer, Say
from relay.testing.twilio import FakeTwilioCall
from tests.edge_clients import exchange, open_raw, proc_status_kb, status_of
from tests.test_cli import relay_serve

CLIENTS = 300
LOAD_S = 5.0
PROBE_EVERY_S = 0.02
HEADER_TIMEOUT_S = 2.0
GREETING_MS = 7000  # the agent talks through the whole load


@dataclass
class Load:
    refusals: dict[int | None, int] = field(default_factory=dict)
    connections: int = 0
    connect_errors: int = 0

    def refused(self, answer: bytes) -> None:
        status = status_of(answer)
        self.refusals[status] = self.refusals.get(status, 0) + 1


async def slow_client(url: str, stop: asyncio.Event, load: Load) -> None:
    """Sends a request head at one byte a second; reconnects when the relay cuts it."""
    request = b"GET /health HTTP/1.1\r\nHost: relay\r\nX-Slow: " + b"s" * 1000
    while not stop.is_set():
        try:
            reader, writer = await open_raw(url)
        except OSError:
            load.connect_errors += 1
            await asyncio.sleep(0.1)
            continue
        load.connections += 1
        answer = b""
        try:
            for i in range(len(request)):
                writer.write(request[i : i + 1])
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(4096), 1.0)
                    break  # answered or closed
                if stop.is_set():
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
        if not stop.is_set():
            load.refused(answer)


async def oversized_client(url: str, stop: asyncio.Event, load: Load) -> None:
    """Sends a head of up to 8 MB in 64 KB writes; reconnects a second after it is refused."""
    piece = b"b" * 65536
    while not stop.is_set():
        try:
            reader, writer = await open_raw(url)
        except OSError:
            load.connect_errors += 1
            await asyncio.sleep(0.1)
            continue
        load.connections += 1
        answer = b""
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\nX-Big: ")
            for _ in range(128):  # 8 MB
                writer.write(piece)
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(4096), 0.05)
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
        load.refused(answer)
        await asyncio.sleep(1.0)


async def probe_health(url: str, stop: asyncio.Event) -> list[float]:
    """GET /health on a new connection every PROBE_EVERY_S; the latencies in ms (inf: not 200)."""
    latencies = []
    request = b"GET /health HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
    while not stop.is_set():
        t0 = time.perf_counter()
        answer = await exchange(url, request, timeout=5)
        ok = status_of(answer) == 200
        latencies.append((time.perf_counter() - t0) * 1000 if ok else float("inf"))
        await asyncio.sleep(PROBE_EVERY_S)
    return latencies


async def drain_log(stream: asyncio.StreamReader | None, seen: list[str]) -> None:
    """Keeps reading the relay's log (a full pipe would block it)."""
    assert stream is not None
    while line := await stream.readline():
        seen.append(line.decode(errors="replace"))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["slow", "oversized"])
async def test_300_hostile_clients_leave_health_fast_memory_bounded_and_the_call_heard(
    kind: str, tmp_path
) -> None:
    client = slow_client if kind == "slow" else oversized_client
    async with (
        FakeRealtimeServer(
            responses=[Say("Please hold on, I am still talking.", audio_ms=GREETING_MS)]
        ) as rt,
        relay_serve(
            tmp_path,
            OPENAI_API_KEY="sk-test",
            OPENAI_BASE_URL=rt.openai_base_url,
            RELAY_MODE="realtime",
            HTTP_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S),
            LOG_LEVEL="INFO",
        ) as relay,
    ):
        pid = str(relay.proc.pid)
        draining = asyncio.create_task(drain_log(relay.proc.stderr, relay.seen))
        call = FakeTwilioCall(
            base_url=relay.url, auth_token="cli-token", public_url="https://relay.example.com"
        )
        async with call:
            assert await call.connect(await call.fetch_twiml())
            conn = await rt.wait_connection()
            await call.wait_for_media(timeout=5)
            baseline_probes = [await probe_once(relay.url) for _ in range(20)]
            rss_before = proc_status_kb("VmRSS", pid)

            stop, load = asyncio.Event(), Load()
            clients = [asyncio.create_task(client(relay.url, stop, load)) for _ in range(CLIENTS)]
            probes = asyncio.create_task(probe_health(relay.url, stop))
            rss_max = rss_before
            deadline = time.monotonic() + LOAD_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                rss_max = max(rss_max, proc_status_kb("VmRSS", pid))
            stop.set()
            latencies = await probes
            await asyncio.gather(*clients)

            await call.wait_playback_idle(timeout=GREETING_MS / 1000 + 5)
            heard = call.received_audio
            sent = b"".join(bytes(a) for a in conn.audio_sent.values())
            await call.stop()
        draining.cancel()

    growth_mb = (rss_max - rss_before) / 1024
    print(
        f"\n{kind}: {CLIENTS} clients, {load.connections} connections in {LOAD_S:.0f} s, refusals "
        f"{load.refusals}, connect errors {load.connect_errors}; /health p50 "
        f"{statistics.median(latencies):.1f} ms p99 {p99(latencies):.1f} ms max {max(latencies):.1f} ms "
        f"over {len(latencies)} probes (before the load: p50 {statistics.median(baseline_probes):.1f} ms); "
        f"relay RSS {rss_before / 1024:.1f} MB, +{growth_mb:.1f} MB at most"
    )
    assert p99(latencies) < 50, latencies
    assert growth_mb < 32
    expected = {408: 1} if kind == "slow" else {431: 1}
    assert set(load.refusals) == set(expected), load.refusals  # every hostile request refused, no other way
    assert heard == sent and len(heard) == GREETING_MS * 8  # the call heard every byte of its greeting


async def probe_once(url: str) -> float:
    t0 = time.perf_counter()
    answer = await exchange(
        url, b"GET /health HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n", timeout=5
    )
    assert status_of(answer) == 200
    return (time.perf_counter() - t0) * 1000
