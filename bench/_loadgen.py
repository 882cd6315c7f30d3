"""Load-generation pieces for `bench/realtime_load.py`: light Twilio callers and provider bookkeeping.

`SimCall` is a deliberately thin Twilio Media Streams client (not `relay.testing.twilio.FakeTwilioCall`,
whose playback model costs too much CPU at a hundred calls): it opens the stream as Twilio does
(signed upgrade, `connected`, `start` with the TwiML's parameters), sends a 20 ms `media` frame of
μ-law silence on an absolute schedule, timestamps every frame it sends and every `media` it receives
(`time.monotonic()`, the clock of asyncio's default loop, which the fake Realtime server also uses),
and echoes `mark`s when the audio before them would have finished playing (each outbound `media`
is taken to be 20 ms, the fake's `delta_ms`), in the sender's 20 ms tick.

`ProviderTrack` harvests one `FakeConnection`'s records into compact timestamp arrays and empties
its lists (they would otherwise hold every event of every call: hundreds of MB and long GC pauses).
Frames are matched by order: TCP keeps each direction in order, and a lost frame shows in the
counts (after a loss the order matching is off by one frame, so latencies are only meaningful
when nothing was lost).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import xml.etree.ElementTree as ElementTree
from array import array
from collections import Counter, deque
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.testing.realtime import FakeConnection

FRAME_S = 0.020
FRAME_BYTES = 160
SILENCE_B64 = base64.b64encode(b"\xff" * FRAME_BYTES).decode()  # μ-law 0: far below the fake's VAD
SIGNATURE_HEADER = "X-Twilio-Signature"
APPEND = "input_audio_buffer.append"
DELTA = "response.output_audio.delta"
_MEDIA = '{"event":"media"'
_MARK = '{"event":"mark"'


def twilio_sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:032x}"


async def fetch_twiml(
    client: httpx.AsyncClient, base_url: str, public_url: str, auth_token: str, call_sid: str
) -> tuple[str, dict[str, str]]:
    """POSTs the signed incoming-call webhook; returns the `<Stream url>` and its `<Parameter>`s."""
    params = {
        "CallSid": call_sid,
        "AccountSid": twilio_sid("AC", 1),
        "From": "+15550000001",
        "To": "+15550000002",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    signature = RequestValidator(auth_token).compute_signature(public_url + "/incoming-call", params)
    response = await client.post(
        base_url + "/incoming-call", data=params, headers={SIGNATURE_HEADER: signature}
    )
    root = ElementTree.fromstring(response.text)
    stream = root.find("./Connect/Stream")
    if response.status_code != 200 or stream is None:
        raise RuntimeError(f"/incoming-call answered {response.status_code}: {response.text[:200]}")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("./Parameter")}
    return stream.get("url", ""), parameters


class SimCall:
    """One simulated Twilio call. `open()`, then `stream()` until `until`, then `finish()`."""

    def __init__(
        self,
        index: int,
        base_url: str,
        *,
        stream_url: str,
        auth_token: str | None = None,
        parameters: dict[str, str] | None = None,
    ) -> None:
        self.index = index
        self.call_sid = twilio_sid("CA", index + 1)
        self.stream_sid = twilio_sid("MZ", index + 1)
        self.base_url = base_url
        self.stream_url = stream_url  # the public wss:// URL Twilio signs
        self.auth_token = auth_token
        self.parameters = parameters or {}
        self.until = float("inf")  # set by the bench once every call is up
        self.send_times = array("d")
        self.lateness = array("d")  # seconds each frame left after its slot (bench health)
        self.media_times = array("d")
        self.start_sent_at: float | None = None
        self.stop_at: float | None = None
        self.marks_received = 0
        self.marks_echoed = 0
        self.other: Counter[str] = Counter()
        self.ended_early = False
        self.close_code: int | None = None
        self.error: str | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0
        self._marks: deque[tuple[float, str]] = deque()
        self._play_end = 0.0
        self._finishing = False

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def open(self) -> None:
        """Signed upgrade, `connected`, `start`; raises on failure."""
        headers = {}
        if self.auth_token:
            signature = RequestValidator(self.auth_token).compute_signature(self.stream_url, {})
            headers[SIGNATURE_HEADER] = signature
        base = urlsplit(self.base_url)
        local = f"ws://{base.netloc}{urlsplit(self.stream_url).path or '/media-stream'}"
        self._ws = await connect(
            local, additional_headers=headers, compression=None, open_timeout=10, close_timeout=2
        )
        self._reader = asyncio.create_task(self._read(self._ws))
        await self._ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        start = {
            "event": "start",
            "sequenceNumber": self._next_seq(),
            "start": {
                "accountSid": twilio_sid("AC", 1),
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": self.parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }
        self.start_sent_at = time.monotonic()
        await self._ws.send(orjson.dumps(start).decode())

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                now = time.monotonic()
                if not isinstance(message, str):
                    self.other["<binary>"] += 1
                elif message.startswith(_MEDIA):
                    self.media_times.append(now)
                    self._play_end = max(self._play_end, now) + FRAME_S
                elif message.startswith(_MARK):
                    self.marks_received += 1
                    name = orjson.loads(message)["mark"]["name"]
                    self._marks.append((self._play_end, name))
                else:
                    self.other[str(orjson.loads(message).get("event"))] += 1
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            if not self._finishing:
                self.ended_early = True

    async def stream(self, max_frames: int) -> None:
        """Sends silence every 20 ms on an absolute schedule until `self.until` (or `max_frames`)."""
        ws = self._ws
        assert ws is not None and self.start_sent_at is not None
        t0 = self.start_sent_at
        head = '{"event":"media","sequenceNumber":"'
        mid = '","media":{"track":"inbound","chunk":"'
        tail = '","payload":"' + SILENCE_B64 + '"},"streamSid":"' + self.stream_sid + '"}'
        try:
            for i in range(max_frames):
                slot = t0 + i * FRAME_S
                if slot >= self.until:
                    break
                delay = slot - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                while self._marks and self._marks[0][0] <= now:
                    _, name = self._marks.popleft()
                    echo = {"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid}
                    await ws.send(orjson.dumps(echo | {"mark": {"name": name}}).decode())
                    self.marks_echoed += 1
                text = f'{head}{self._next_seq()}{mid}{i + 1}","timestamp":"{i * 20}{tail}'
                sent_at = time.monotonic()
                await ws.send(text)
                self.send_times.append(sent_at)
                self.lateness.append(sent_at - slot)
        except ConnectionClosed:
            self.ended_early = True
        self.stop_at = time.monotonic()

    async def finish(self) -> None:
        """Sends `stop`, waits (bounded) for the relay to close, then closes."""
        self._finishing = True
        ws = self._ws
        if ws is None:
            return
        stop = {
            "event": "stop",
            "sequenceNumber": self._next_seq(),
            "streamSid": self.stream_sid,
            "stop": {"accountSid": twilio_sid("AC", 1), "callSid": self.call_sid},
        }
        with contextlib.suppress(ConnectionClosed):
            await ws.send(orjson.dumps(stop).decode())
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout=3.0)
        await ws.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class ProviderTrack:
    """The fake provider's side of one call, as compact timestamps."""

    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.append_times = array("d")
        self.delta_times = array("d")
        self.response_create_at: float | None = None
        self.first_delta_at: float | None = None
        self.received: Counter[str] = Counter()

    def harvest(self) -> None:
        """Moves new records out of the connection (synchronous: no event interleaves)."""
        conn = self.conn
        received, sent = conn.received, conn.sent
        n = len(received)
        for t, event in received[:n]:
            kind = event.get("type", "")
            if kind == APPEND:
                self.append_times.append(t)
            else:
                self.received[kind] += 1
                if kind == "response.create" and self.response_create_at is None:
                    self.response_create_at = t
        del received[:n]
        m = len(sent)
        for t, event in sent[:m]:
            if event.get("type") == DELTA:
                if self.first_delta_at is None:
                    self.first_delta_at = t
                self.delta_times.append(t)
        del sent[:m]
        del conn.audio_in[:]

    @property
    def faults(self) -> int:
        return len(self.conn.invalid_events) + len(self.conn.errors)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100, nearest rank) of `values`; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def match_latencies(sent: Any, arrived: Any, count: int, window: tuple[float, float]) -> list[float]:
    """`arrived[k] - sent[k]` for the first `count` frames sent inside `window`, in seconds."""
    lo, hi = window
    return [arrived[k] - sent[k] for k in range(count) if lo <= sent[k] <= hi]
