"""The caller's half of a fake Twilio Media Stream: what Twilio sends to the relay, in order.

`CallerSender` numbers each message (`sequenceNumber`), serializes every send on one lock (a mark
echo fired by a timer never interleaves with a media frame), records each frame sent (`sent`), and
streams caller audio as Twilio does: 160-byte (20 ms) `media` frames on an absolute real-time
schedule, timestamped in ms since `start`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from relay.testing.audio import silence_ulaw
from relay.testing.twilio_playback import SAMPLE_RATE

__all__ = ["DTMF_DIGITS", "FRAME_BYTES", "FRAME_SECONDS", "CallerSender"]

FRAME_BYTES = 160  # 20 ms, the size Twilio sends
FRAME_SECONDS = FRAME_BYTES / SAMPLE_RATE
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class CallerSender:
    """Sends Twilio's messages for one stream over `ws` (set once the stream is open) while
    `is_open()`; each send returns False, quietly, once the socket is closed."""

    def __init__(
        self, *, account_sid: str, call_sid: str, stream_sid: str, is_open: Callable[[], bool]
    ) -> None:
        self.account_sid = account_sid
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.ws: ClientConnection | None = None
        self.sent: list[tuple[float, dict[str, Any] | str | bytes]] = []
        self._is_open = is_open
        self._lock = asyncio.Lock()
        self._started_at = 0.0
        self._seq = 0
        self._chunk = 0
        self._next_ts_ms = 0
        self._pace_next = 0.0
        self._stop_sent = False

    async def start(self, custom_parameters: dict[str, str]) -> float:
        """Sends `connected` and `start`; returns when `start` was sent (`time.monotonic()`)."""
        await self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._started_at = self._pace_next = time.monotonic()
        await self._send_sequenced(
            lambda seq: {
                "event": "start",
                "sequenceNumber": seq,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(custom_parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )
        return self._started_at

    async def send_audio(self, ulaw: bytes, *, realtime: bool = True) -> int:
        """Streams `ulaw` as `media` frames (see `FakeTwilioCall.send_audio`); the frames sent."""
        if not ulaw:
            return 0
        frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
        if len(frames[-1]) < FRAME_BYTES:
            frames[-1] = frames[-1] + silence_ulaw((FRAME_BYTES - len(frames[-1])) / 8)
        started_at = self._started_at
        t0 = max(time.monotonic(), self._pace_next) if realtime else time.monotonic()
        sent = 0
        for i, frame in enumerate(frames):
            if realtime:
                slot = t0 + i * FRAME_SECONDS
                delay = slot - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                slot = time.monotonic()
            ts = max(self._next_ts_ms, round((slot - started_at) * 1000))
            self._next_ts_ms = ts + round(FRAME_SECONDS * 1000)
            payload = base64.b64encode(frame).decode("ascii")
            ok = await self._send_sequenced(
                functools.partial(self._media_message, payload=payload, timestamp=ts)
            )
            if not ok:
                break
            sent += 1
        if realtime:
            self._pace_next = t0 + len(frames) * FRAME_SECONDS
        return sent

    def _media_message(self, seq: str, payload: str, timestamp: int) -> dict[str, Any]:
        self._chunk += 1
        return {
            "event": "media",
            "sequenceNumber": seq,
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(timestamp),
                "payload": payload,
            },
            "streamSid": self.stream_sid,
        }

    async def send_dtmf(self, digit: str) -> bool:
        """Sends a `dtmf` message for one key (0-9, *, #, A-D)."""
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return await self._send_sequenced(
            lambda seq: {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": seq,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def send_stop(self) -> None:
        """Sends `stop` (once, however often called)."""
        if self._stop_sent:
            return
        self._stop_sent = True
        await self._send_sequenced(
            lambda seq: {
                "event": "stop",
                "sequenceNumber": seq,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )

    async def send_mark_echo(self, name: str) -> bool:
        """Echoes the mark `name`: its audio has played (or was cleared)."""
        return await self._send_sequenced(
            lambda seq: {
                "event": "mark",
                "sequenceNumber": seq,
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    async def send_raw(self, raw: str | bytes) -> bool:
        """Sends one frame as is; False when the socket is closed."""
        async with self._lock:
            if self.ws is None or not self._is_open():
                return False
            try:
                await self.ws.send(raw)
            except ConnectionClosed:
                return False
            self.sent.append((time.monotonic(), raw))
            return True

    async def _send_sequenced(self, make: Callable[[str], dict[str, Any]]) -> bool:
        async with self._lock:
            if not self._is_open():
                return False
            self._seq += 1
            return await self._send_json_locked(make(str(self._seq)))

    async def _send_json(self, message: dict[str, Any]) -> bool:
        async with self._lock:
            return await self._send_json_locked(message)

    async def _send_json_locked(self, message: dict[str, Any]) -> bool:
        if self.ws is None or not self._is_open():
            return False
        try:
            await self.ws.send(json.dumps(message, separators=(",", ":")))
        except ConnectionClosed:
            return False
        self.sent.append((time.monotonic(), message))
        return True
