"""relay.loop_lag: a loop that runs its timers late is measured and said in the log, once per window."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from relay.loop_lag import watch_event_loop


def hog_the_loop(seconds: float) -> None:
    """The stimulus: CPU-bound code that keeps the event loop from running (what the watcher is for)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Lags:
    """Collects what the watcher observes; `reached(x)` waits for a lag of at least x seconds."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._changed = asyncio.Event()

    def observe(self, lag: float) -> None:
        self.values.append(lag)
        self._changed.set()

    async def reached(self, at_least: float, timeout: float = 5.0) -> float:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not any(v >= at_least for v in self.values):
                self._changed.clear()
                await self._changed.wait()
        return max(self.values)

    async def samples(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.values) < n:
                self._changed.clear()
                await self._changed.wait()


async def test_a_blocked_loop_is_measured_and_warned_about_once_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.loop_lag")
    lags = Lags()
    watcher = asyncio.create_task(
        watch_event_loop(lags.observe, interval=0.01, warn_after=0.05, warn_every=60.0)
    )
    try:
        await lags.samples(1)
        hog_the_loop(0.08)
        worst = await lags.reached(0.05)
        assert 0.06 <= worst < 1.0
        warnings = [r for r in caplog.records if r.name == "relay.loop_lag"]
        assert len(warnings) == 1
        assert "event loop ran" in warnings[0].getMessage() and "ms late" in warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING
        assert getattr(warnings[0], "loop_lag_ms", 0) >= 60

        seen = len(lags.values)
        hog_the_loop(0.08)  # a second stall inside the warning window: measured, not logged again
        await lags.samples(seen + 1)
        assert max(lags.values[seen:]) >= 0.06
        assert len([r for r in caplog.records if r.name == "relay.loop_lag"]) == 1
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert watcher.cancelled()
    assert all(v >= 0.0 for v in lags.values)
