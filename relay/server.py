"""Serving the app with graceful shutdown.

uvicorn's own shutdown closes every WebSocket at once (1012), which would cut live calls. So the
first SIGTERM (or Ctrl-C) only starts a drain: the relay stops taking calls (`/ready` answers 503,
the webhook says it is restarting), lets active calls finish for up to DRAIN_TIMEOUT seconds, ends
the rest with a spoken goodbye, and only then lets uvicorn stop. A second signal stops at once.

SIGHUP reloads the agents file (`relay.app.reload_agents`: read in a worker thread, off the event
loop; new calls get the new agents when the file is valid); an app without agents logs that there
is nothing to reload. SIGHUP never stops the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from types import FrameType
from typing import Any

import uvicorn

from relay.app import UVICORN_OPTIONS, reload_agents, server_options
from relay.config import Settings
from relay.transport.http import uvicorn_options

log = logging.getLogger("relay.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, manager: Any, grace: float) -> None:
        super().__init__(config)
        self._manager = manager
        self._grace = grace
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[bool]] = set()

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no SIGHUP
            log.debug("SIGHUP is not handled here: agents reload only in the main thread")
        try:
            await super().serve(sockets=sockets)
        finally:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        app: Any = self.config.app
        if getattr(getattr(app, "state", None), "agents", None) is None:
            log.info("SIGHUP: nothing to reload (no agents file)")
            return
        log.info("SIGHUP: reloading the agents")
        task = asyncio.get_running_loop().create_task(reload_agents(app))
        self._reloads.add(task)
        task.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Task[bool]) -> None:
        self._reloads.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIGHUP: the agents reload failed: %r (the old agents stay)", task.exception())

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


def _config(
    app: Any, host: str, port: int, log_level: str, settings: Settings | None = None
) -> uvicorn.Config:
    """uvicorn's configuration: the relay's options (`server_options`), the HTTP edge's limits from
    `settings` when given, else from the app's own."""
    options = {**UVICORN_OPTIONS, **uvicorn_options(settings)} if settings else server_options(app)
    return uvicorn.Config(app, host=host, port=port, log_config=None, log_level=log_level, **options)


def serve(app: Any, *, host: str, port: int, log_level: str, grace: float) -> None:
    """Runs `app` until a signal, then drains (see the module docstring)."""
    DrainingServer(_config(app, host, port, log_level), app.state.manager, grace).run()


async def serve_async(app: Any, *, manager: Any, host: str, port: int, log_level: str, grace: float) -> None:
    """`serve` on the running event loop (where other servers may run too: `relay serve --fakes`);
    `manager` is the relay's CallManager, drained on the first signal, whose settings give the
    HTTP edge's limits (`app` may wrap the relay app)."""
    config = _config(app, host, port, log_level, settings=manager.settings)
    await DrainingServer(config, manager, grace).serve()
