"""Micro-benchmark: one provider message through websockets' `send` vs `ProviderSocket.send`.

`relay.transport.provider.ProviderSocket.send` writes a message at once when the transport is open
and not paused, without websockets' per-message send context and drain coroutine; this measures
what that saves.

Run: ``python bench/ws_send.py`` (``--messages 100000 --rounds 3``). A websockets client and server
on loopback in one uvloop process; the client sends `input_audio_buffer.append`-sized text messages
(a 20 ms μ-law frame in base64), yielding to the loop every 50 messages so the server keeps up, and
the figure is the process CPU per message, both ends included (the receiving end costs the same for
both ways, so the difference is the sender's). Rounds alternate the two ways.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay.transport.provider import ProviderSocket  # noqa: E402

MESSAGE = '{"type":"input_audio_buffer.append","audio":"' + "/" * 216 + '"}'
YIELD_EVERY = 50


async def measure(messages: int, rounds: int) -> dict[str, list[float]]:
    received = 0
    target = 0
    arrived = asyncio.Event()

    async def sink(connection: ServerConnection) -> None:
        nonlocal received
        async for _ in connection:
            received += 1
            if received == target:
                arrived.set()

    figures: dict[str, list[float]] = {"send": [], "ProviderSocket": []}
    async with websockets.serve(sink, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            sock = ProviderSocket(client)
            for _ in range(rounds):
                for way in figures:
                    target, arrived = received + messages, asyncio.Event()
                    start = time.process_time()
                    for i in range(messages):
                        if way == "send":
                            await client.send(MESSAGE)
                        else:
                            await sock.send(MESSAGE)
                        if i % YIELD_EVERY == 0:
                            await asyncio.sleep(0)
                    await asyncio.wait_for(arrived.wait(), timeout=60)
                    figures[way].append((time.process_time() - start) / messages * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = uvloop.run(measure(args.messages, args.rounds))
    for way, values in figures.items():
        print(f"{way:10} µs CPU per message, both ends: " + " ".join(f"{v:.2f}" for v in values))
    best = {way: min(values) for way, values in figures.items()}
    saved = best["send"] - best["ProviderSocket"]
    print(f"ProviderSocket.send saves {saved:.2f} µs a message (best rounds)")


if __name__ == "__main__":
    main()
