"""The HTTP edge's cost: the relay's CPU per request and the client's latency, per HTTP protocol class.

Serves the relay in a child process with uvicorn's httptools protocol, uvicorn's h11 protocol, and
the relay's own (relay/transport/http.py: httptools with a head deadline and cap), then measures
sequential `GET /health` on one kept-alive connection, signed `POST /incoming-call` webhooks, and
signed Media Stream upgrades (opened, then closed). CPU is the child's event-loop thread's time
on CPU (/proc/PID/schedstat), divided by the operations. Prints a table; asserts nothing.

    .venv/bin/python bench/http_edge.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "bench-token"
PUBLIC = "https://relay.example.com"
N_HEALTH, N_WEBHOOK, N_UPGRADE = 3000, 1000, 300


def _settings() -> Any:
    from relay.config import load_settings

    return load_settings(
        _env_file=None,
        openai_api_key="sk-bench",
        twilio_auth_token=TOKEN,
        public_url=PUBLIC,
        realtime_preconnect=False,
        max_concurrent_calls=100_000,
        log_level="WARNING",
    )


def _serve(kind: str, port: int, ready: Any) -> None:
    import uvicorn

    from relay.app import create_app, server_options
    from relay.logs import configure_logging

    configure_logging("text", "WARNING")
    app = create_app(_settings())
    options = server_options(app)
    if kind != "relay":
        options["http"] = kind
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning", **options)
    server = uvicorn.Server(config)
    ready.set()
    server.run()


def _cpu_s(pid: int) -> float:
    """CPU time of the server's main thread (the event loop), in ns resolution (schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def _health(port: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n"
    latencies = []
    for _ in range(N_HEALTH):
        t0 = time.perf_counter()
        writer.write(request)
        await reader.readuntil(b'{"status":"ok"}')
        latencies.append(time.perf_counter() - t0)
    writer.close()
    return latencies


async def _webhooks(port: int) -> list[float]:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TOKEN)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies = []
    for i in range(N_WEBHOOK):
        form = {
            "CallSid": f"CA{i:032x}",
            "AccountSid": "AC" + "0" * 32,
            "From": "+15550001111",
            "To": "+1555",
        }
        body = urlencode(form).encode()
        sig = validator.compute_signature(f"{PUBLIC}/incoming-call", form)
        request = (
            b"POST /incoming-call HTTP/1.1\r\nHost: relay\r\n"
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {sig}\r\n\r\n".encode()
            + body
        )
        t0 = time.perf_counter()
        writer.write(request)
        await reader.readuntil(b"</Response>")
        latencies.append(time.perf_counter() - t0)
    writer.close()
    return latencies


async def _upgrades(port: int) -> list[float]:
    from twilio.request_validator import RequestValidator
    from websockets.asyncio.client import connect

    sig = RequestValidator(TOKEN).compute_signature("wss://relay.example.com/media-stream", {})
    latencies = []
    for _ in range(N_UPGRADE):
        t0 = time.perf_counter()
        ws = await connect(
            f"ws://127.0.0.1:{port}/media-stream", additional_headers={"X-Twilio-Signature": sig}
        )
        latencies.append(time.perf_counter() - t0)
        await ws.close()
    return latencies


def _measure(kind: str) -> dict[str, tuple[float, float]]:
    from relay.testing.server import bind_free_port

    sock = bind_free_port()
    port = sock.getsockname()[1]
    sock.close()
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_serve, args=(kind, port, ready), daemon=True)
    proc.start()
    ready.wait(20)
    assert proc.pid is not None
    results: dict[str, tuple[float, float]] = {}

    async def run() -> None:
        for _ in range(100):  # until it listens
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        for name, fn, n in (
            ("health", _health, N_HEALTH),
            ("webhook", _webhooks, N_WEBHOOK),
            ("upgrade", _upgrades, N_UPGRADE),
        ):
            cpu0 = _cpu_s(proc.pid)  # type: ignore[arg-type]
            latencies = await fn(port)
            cpu = _cpu_s(proc.pid) - cpu0  # type: ignore[arg-type]
            results[name] = (cpu / n * 1e6, statistics.median(latencies) * 1e6)

    asyncio.run(run())
    proc.terminate()
    proc.join(5)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kinds = ["httptools", "h11", "relay"]
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {k: {} for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:  # interleaved, so a noisy moment hits every kind
            for name, figures in _measure(kind).items():
                rows[kind].setdefault(name, []).append(figures)
    print(f"relay CPU µs per operation / client median µs ({args.rounds} rounds, median of rounds)")
    print(
        f"{'protocol':<12}"
        + "".join(f"{name:>26}" for name in ("GET /health", "POST /incoming-call", "WS upgrade"))
    )
    for kind in kinds:
        cells = []
        for name in ("health", "webhook", "upgrade"):
            cpu = statistics.median(f[0] for f in rows[kind][name])
            lat = statistics.median(f[1] for f in rows[kind][name])
            cells.append(f"{cpu:>12.0f} / {lat:>8.0f}")
        print(f"{kind:<12}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
