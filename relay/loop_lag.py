"""Event-loop lag: how late the loop runs a timer, the relay's own measure of being overloaded.

Every call's audio goes through one event loop in 20 ms frames, so a loop that runs a timer 20 ms
late delays every call's audio by as much. `watch_event_loop` sleeps `interval` seconds again and
again and reports how much later than asked it woke (`observe`, e.g. a Prometheus histogram), read
on `time.monotonic()` (uvloop's own clock is cached per loop turn at millisecond resolution). A
single lag above `warn_after` is logged as a WARNING, at most once per `warn_every` seconds with the
count since the last line, so that an overloaded or blocked process says so without flooding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("relay.loop_lag")

INTERVAL_S = 0.1
WARN_AFTER_S = 0.1  # five frames: the caller hears it
WARN_EVERY_S = 10.0


async def watch_event_loop(
    observe: Callable[[float], None],
    *,
    interval: float = INTERVAL_S,
    warn_after: float = WARN_AFTER_S,
    warn_every: float = WARN_EVERY_S,
) -> None:
    """Runs until cancelled; `observe` gets each lag in seconds (0 or more)."""
    stalls = 0
    last_warning = -float("inf")
    while True:
        asked = time.monotonic()
        await asyncio.sleep(interval)
        woke = time.monotonic()
        lag = max(0.0, woke - asked - interval)
        observe(lag)
        if lag < warn_after:
            continue
        stalls += 1
        if woke - last_warning >= warn_every:
            log.warning(
                "event loop ran %.0f ms late (%d such stalls since the last warning): every call's "
                "audio was delayed as much; the process is overloaded or something blocks the loop",
                lag * 1000,
                stalls,
                extra={"loop_lag_ms": round(lag * 1000, 1), "stalls": stalls},
            )
            stalls, last_warning = 0, woke


__all__ = ["watch_event_loop"]
