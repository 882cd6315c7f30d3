"""Serving the app with graceful shutdown.

uvicorn's own shutdown closes every WebSocket at once (1012), which would cut live calls. So the
first SIGTERM (or Ctrl-C) only starts a drain: the relay stops taking calls (`/ready` answers 503,
the webhook says it is restarting), lets active calls finish for up to DRAIN_TIMEOUT seconds, ends
the rest with a spoken goodbye, and only then lets uvicorn stop. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType
from typing import Any

import uvicorn

from relay.app import server_options

log = logging.getLogger("relay.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, manager: Any, grace: float) -> None:
        super().__init__(config)
        self._manager = manager
        self._grace = grace
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)  # the second signal: stop now
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._manager.drain(self._grace)
        finally:
            self.should_exit = True


def serve(app: Any, *, host: str, port: int, log_level: str, grace: float) -> None:
    """Runs `app` until a signal, then drains (see the module docstring)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level=log_level, **server_options(app)
    )
    DrainingServer(config, app.state.manager, grace).run()
