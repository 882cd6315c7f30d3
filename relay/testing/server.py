"""Runs an ASGI app under a real uvicorn server on 127.0.0.1 and a free port, for tests and demos."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from relay.app import server_options


def bind_free_port(host: str = "127.0.0.1") -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted connections of a socket whose
    # proto says TCP; without it, streamed answers on a reused connection stall ~40 ms (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextlib.asynccontextmanager
async def serve_app(
    app: Any, host: str = "127.0.0.1", *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Yields the base URL (`http://127.0.0.1:PORT`) once the app serves; shuts it down after.

    Startup is awaited (lifespan included) before the URL is yielded, so there is nothing to
    poll for. `sock`: a bound socket of the caller's to listen on (socket options set on it are
    inherited by the connections it accepts); by default a free port on `host`.
    """
    sock = sock or bind_free_port(host)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", log_config=None, **server_options(app))
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    if server.should_exit:
        sock.close()
        raise RuntimeError("the app failed to start (see the log)")
    loop_task = asyncio.create_task(server.main_loop())
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await loop_task
        await server.shutdown(sockets=[sock])
        sock.close()
