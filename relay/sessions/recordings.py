"""Call recordings (RECORD_CALLS): a dual-channel Twilio recording started when a call's stream
starts, off the call's path. Twilio reports it to `/recording-status` (under PUBLIC_URL) after the
call ends; the post-call webhook of a call recorded here waits for that report, at most
RECORDING_WAIT_S, so that it carries the recording's URL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from relay.config import Settings
from relay.errors import ToolError

log = logging.getLogger("relay.recordings")

STATUS_PATH = "/recording-status"


class Recordings:
    def __init__(self, settings: Settings, twilio_calls: Any) -> None:
        self.settings = settings
        self.twilio_calls = twilio_calls  # relay.tools.twilio_rest.TwilioCalls, or None
        self._waiting: dict[str, asyncio.Event] = {}  # recorded calls' status reports

    def can_record(self) -> bool:
        if self.twilio_calls is None or not self.settings.public_url:
            log.warning("RECORD_CALLS is on but not recording: it needs Twilio credentials and PUBLIC_URL")
            return False
        return True

    async def record(self, call_sid: str, on_started: Callable[[str], None]) -> None:
        """Starts the call's recording; `on_started` gets its SID. A failure is logged; the call goes on."""
        self._waiting[call_sid] = asyncio.Event()  # from now, the post-call webhook waits for it
        try:
            sid = await self.twilio_calls.start_recording(call_sid, self.settings.public_url + STATUS_PATH)
        except ToolError as exc:
            log.error("could not start the call's recording: %s", exc)
            self.settled(call_sid)  # nothing to wait for
            return
        log.info("recording the call (%s)", sid)
        on_started(sid)

    def settled(self, call_sid: str) -> None:
        """Twilio reported the call's recording (`/recording-status`): its URL is on the record."""
        report = self._waiting.get(call_sid)
        if report is not None:
            report.set()

    async def ready(self, call_sid: str) -> None:
        """The post-call webhook's wait: for a call recorded here, until Twilio reports the recording,
        at most RECORDING_WAIT_S; then the record is read as it is."""
        report = self._waiting.get(call_sid)
        if report is None:
            return
        try:
            async with asyncio.timeout(self.settings.recording_wait_s):
                await report.wait()
        except TimeoutError:
            log.warning("no recording report within RECORDING_WAIT_S; posting the call without it")
        finally:
            self._waiting.pop(call_sid, None)


__all__ = ["STATUS_PATH", "Recordings"]
