"""Load-generation pieces for `bench/realtime_load.py` and `bench/load.py`: light Twilio callers,
the ramp that places them, and provider bookkeeping.

`SimCall` is a deliberately thin Twilio Media Streams client (not `relay.testing.twilio.FakeTwilioCall`,
whose playback model costs too much CPU at a hundred calls): it opens the stream as Twilio does
(signed upgrade, `connected`, `start` with the TwiML's parameters), sends a 20 ms `media` frame on an
absolute schedule (μ-law silence, or what its `audio` callback returns: `bench/load.py` speaks),
timestamps every frame it sends and every `media` it receives (`time.monotonic()`, the clock of
asyncio's default loop, which the fakes also use) with the μ-law bytes it carried, and echoes
`mark`s when the audio before them would have finished playing (a `media` lasts its payload's bytes
at 8 kHz; a `clear` drops what is queued and releases the pending marks, as Twilio does), in the
sender's 20 ms tick.

`CallRamp` places calls one after the other, at least `START_GAP_S` apart, each streaming from a task
of its own once open; both benches ramp up through it.

`ProviderTrack` harvests one `FakeConnection`'s records into compact timestamp arrays and empties
its lists (they would otherwise hold every event of every call: hundreds of MB and long GC pauses).
Frames are matched by order: TCP keeps each direction in order, and a lost frame shows in the
counts (after a loss the order matching is off by one frame, so latencies are only meaningful
when nothing was lost).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import functools
import gc
import math
import sys
import time
import xml.etree.ElementTree as ElementTree
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import relay.testing.realtime_script as realtime_script
from relay.testing.realtime import FakeConnection, FakeRealtimeServer, Say

FRAME_S = 0.020
START_GAP_S = 0.010  # at least this between two call starts (the ramp is also sequential)
RAMP_BOUND_S = 0.2  # the ramp never takes this long per call: it bounds each call's frame count
FRAME_BYTES = 160
ULAW_BYTES_PER_S = 8000
SILENCE_B64 = base64.b64encode(b"\xff" * FRAME_BYTES).decode()  # μ-law 0: far below the fake's VAD
SIGNATURE_HEADER = "X-Twilio-Signature"
APPEND = "input_audio_buffer.append"
DELTA = "response.output_audio.delta"
_MEDIA = '{"event":"media"'
_CLEAR = '{"event":"clear"'
_PAYLOAD = '"payload":"'
REPLY_TEXT = "This is a long benchmark reply streamed in real time."
HARVEST_S = 0.5
HELPER_MAX_S = 4 * 3600  # a helper's background loops end by then at the latest
MAX_COMMANDS = 1_000_000  # a helper answers at most this many commands
PIPE_LIMIT = 2**28
HERE = Path(__file__).resolve()
_MARK = '{"event":"mark"'
T = TypeVar("T")


class AudioSource(Protocol):
    def __call__(self, index: int, slot: float, until: float) -> str:
        """The base64 μ-law payload of frame `index` (due at `slot`; the call streams until `until`)."""
        ...


def payload_bytes(message: str) -> int:
    """μ-law bytes in a `media` message: its base64 payload's decoded length, without decoding it."""
    start = message.find(_PAYLOAD)
    if start < 0:
        return 0
    start += len(_PAYLOAD)
    end = message.find('"', start)
    if end - start < 4:
        return 0
    return (end - start) // 4 * 3 - (message[end - 1] == "=") - (message[end - 2] == "=")


def twilio_sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:032x}"


async def fetch_twiml(
    client: httpx.AsyncClient,
    base_url: str,
    public_url: str,
    auth_token: str,
    call_sid: str,
    caller: str = "+15550000001",
) -> tuple[str, dict[str, str]]:
    """POSTs the signed incoming-call webhook; returns the `<Stream url>` and its `<Parameter>`s."""
    params = {
        "CallSid": call_sid,
        "AccountSid": twilio_sid("AC", 1),
        "From": caller,
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
        audio: AudioSource | None = None,
    ) -> None:
        self.index = index
        self.call_sid = twilio_sid("CA", index + 1)
        self.stream_sid = twilio_sid("MZ", index + 1)
        self.base_url = base_url
        self.stream_url = stream_url  # the public wss:// URL Twilio signs
        self.auth_token = auth_token
        self.parameters = parameters or {}
        self.audio = audio  # None: silence
        self.until = float("inf")  # set by the bench once every call is up
        self.send_times = array("d")
        self.lateness = array("d")  # seconds each frame left after its slot (bench health)
        self.media_times = array("d")
        self.media_bytes = array("i")  # μ-law bytes of each `media` received
        self.clears = 0
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
                    size = payload_bytes(message)
                    self.media_times.append(now)
                    self.media_bytes.append(size)
                    self._play_end = max(self._play_end, now) + size / ULAW_BYTES_PER_S
                elif message.startswith(_MARK):
                    self.marks_received += 1
                    name = orjson.loads(message)["mark"]["name"]
                    self._marks.append((self._play_end, name))
                elif message.startswith(_CLEAR):
                    self.clears += 1
                    self._play_end = now  # the queued audio is dropped; its marks come back at once
                    self._marks = deque((now, name) for _, name in self._marks)
                else:
                    self.other[str(orjson.loads(message).get("event"))] += 1
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            if not self._finishing:
                self.ended_early = True

    async def stream(self, max_frames: int) -> None:
        """Sends a frame every 20 ms on an absolute schedule until `self.until` (or `max_frames`)."""
        ws = self._ws
        assert ws is not None and self.start_sent_at is not None
        t0 = self.start_sent_at
        audio = self.audio
        head = '{"event":"media","sequenceNumber":"'
        mid = '","media":{"track":"inbound","chunk":"'
        stamp = '","timestamp":"'
        tail = '"},"streamSid":"' + self.stream_sid + '"}'
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
                payload = SILENCE_B64 if audio is None else audio(i, slot, self.until)
                text = f'{head}{self._next_seq()}{mid}{i + 1}{stamp}{i * 20}","payload":"{payload}{tail}'
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


async def end_calls(tasks: list[asyncio.Task[None]], calls: list[SimCall]) -> None:
    """Stops the callers' tasks, then finishes every call: each finish() is bounded, and this
    bounds them all."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ending = asyncio.gather(*(c.finish() for c in calls), return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ending, 15.0)


class Failures(Protocol):
    """Where a ramp counts the calls that failed to open: a run's result."""

    failed_calls: int
    errors: list[str]


class CallRamp(Generic[T]):
    """Calls placed one after the other, at least START_GAP_S apart; each streams from a task of its
    own once open. A call that fails to open is counted, not raised: a refused call is a result.
    Call `end()` in a `finally`: it hangs up every call placed so far, even when the ramp was cut."""

    def __init__(self) -> None:
        self.calls: list[SimCall] = []
        self.opened: list[T] = []  # what `open_call` returned, for each of `calls`
        self.tasks: list[asyncio.Task[None]] = []

    async def place(
        self,
        n: int,
        seconds: float,
        new_call: Callable[[int], SimCall],
        open_call: Callable[[SimCall], Awaitable[T]],
        failures: Failures | None,
    ) -> None:
        """Places calls `new_call(0)` to `new_call(n - 1)`, each opened by `open_call`. A call streams
        until its `until` (set it once all are up), at most for the ramp, `seconds` and a margin.
        Failures are added to `failures` (None: a warm-up, nothing to count)."""
        max_frames = int((n * RAMP_BOUND_S + seconds + 10) / FRAME_S)
        ramp_start = time.monotonic()
        for i in range(n):
            delay = ramp_start + i * START_GAP_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            call = new_call(i)
            try:
                opened = await open_call(call)
            except Exception as exc:  # a refused or failed call is a result, not a crash
                if failures is not None:
                    failures.failed_calls += 1
                    failures.errors.append(f"call {i}: {type(exc).__name__}: {exc}")
                continue
            self.calls.append(call)
            self.opened.append(opened)
            self.tasks.append(asyncio.create_task(call.stream(max_frames)))

    async def end(self) -> None:
        """Stops every call's stream and hangs it up (bounded)."""
        await end_calls(self.tasks, self.calls)


class ProviderTrack:
    """The fake provider's side of one call, as compact timestamps."""

    def __init__(self, conn: FakeConnection | None = None) -> None:
        self.conn = conn
        self.append_times = array("d")
        self.delta_times = array("d")
        self.response_create_at: float | None = None
        self.first_delta_at: float | None = None
        self.faults = 0  # error events the fake sent + client events it refused

    def harvest(self) -> None:
        """Moves new records out of the connection (synchronous: no event interleaves)."""
        conn = self.conn
        if conn is None:
            return
        received, sent = conn.received, conn.sent
        n = len(received)
        for t, event in received[:n]:
            kind = event.get("type", "")
            if kind == APPEND:
                self.append_times.append(t)
            elif kind == "response.create" and self.response_create_at is None:
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
        self.faults = len(conn.invalid_events) + len(conn.errors)

    def progress(self, stop: float | None) -> tuple[int, int]:
        """(appends received, deltas sent until `stop`)."""
        until = math.inf if stop is None else stop
        return len(self.append_times), bisect.bisect_right(self.delta_times, until)

    def to_json(self) -> dict[str, Any]:
        return {
            "append_times": self.append_times.tolist(),
            "delta_times": self.delta_times.tolist(),
            "response_create_at": self.response_create_at,
            "first_delta_at": self.first_delta_at,
            "faults": self.faults,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProviderTrack:
        track = cls()
        track.append_times = array("d", data["append_times"])
        track.delta_times = array("d", data["delta_times"])
        track.response_create_at = data["response_create_at"]
        track.first_delta_at = data["first_delta_at"]
        track.faults = data["faults"]
        return track


# --------------------------------------------------------------------------- the fake provider


def memoize_fake_audio(reply_ms: int) -> None:
    """The fake computes a reply's whole tone with numpy when it starts (about 20 ms for 25 s),
    which at a hundred call starts would stall its loop for seconds. The tone depends on the reply
    index only modulo 8, so the bytes of a memoized version are identical; all 8 are made now."""
    original = realtime_script.expected_audio

    @functools.lru_cache(maxsize=64)
    def cached(index8: int, audio_ms: int, output_index: int, start_ms: int, fmt: str) -> bytes:
        return original(index8, audio_ms, output_index=output_index, start_ms=start_ms, fmt=fmt)

    def expected_audio(
        response_index: int, audio_ms: int, *, output_index: int = 0, start_ms: int = 0, fmt: Any = "pcmu"
    ) -> bytes:
        name = fmt if isinstance(fmt, str) else fmt.name
        return cached(response_index % 8, audio_ms, output_index, start_ms, name)

    # Patched where `ReplyEngine` looks it up: realtime_script imports it from realtime_audio, so
    # patching realtime_audio.expected_audio would not reach the fake's replies.
    realtime_script.expected_audio = expected_audio
    for index in range(8):
        expected_audio(index, reply_ms)


class LocalFake:
    """`FakeRealtimeServer` in this process (one long reply, paced in real time, 20 ms deltas)."""

    pid: int | None = None  # no process of its own

    def __init__(self, reply_ms: int) -> None:
        memoize_fake_audio(reply_ms)
        reply = Say(REPLY_TEXT, audio_ms=reply_ms)
        self.server = FakeRealtimeServer(default_reply=reply, pace=1.0, delta_ms=20)
        self.tracks: list[ProviderTrack] = []
        self._harvester: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._harvester = asyncio.create_task(self._harvest_loop())

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def openai_base_url(self) -> str:
        return self.server.openai_base_url

    async def _harvest_loop(self) -> None:
        for _ in range(int(HELPER_MAX_S / HARVEST_S)):
            await asyncio.sleep(HARVEST_S)
            self.harvest()

    def harvest(self) -> None:
        conns = self.server.connections
        self.tracks += [ProviderTrack(c) for c in conns[len(self.tracks) :]]
        for track in self.tracks:
            track.harvest()

    async def count(self) -> int:
        return len(self.server.connections)

    async def wait_connection(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        await self.server.wait_connection(n=n, timeout=timeout)

    async def progress(self, stops: dict[int, float | None]) -> dict[int, tuple[int, int]]:
        self.harvest()
        return {i: self.tracks[i].progress(stop) for i, stop in stops.items()}

    async def collect(self, indices: list[int]) -> list[ProviderTrack]:
        self.harvest()
        return [self.tracks[i] for i in indices]

    async def close(self) -> None:
        if self._harvester is not None:
            self._harvester.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._harvester
        await self.server.stop()


class JsonLinesHelper:
    """A fake in a helper process of its own (`python SCRIPT ARGS...`), driven over JSON lines on
    its stdin/stdout: it prints `{"port": P}` once it listens, then answers each command
    (`{"cmd": ...}`) with `{"result": ...}` or `{"error": ...}`; it exits at the end of its input.
    Its timestamps are CLOCK_MONOTONIC too, so they compare with ours."""

    def __init__(self, script: Path, *args: str, stderr: Path | None = None) -> None:
        """`stderr`: a file for the helper's log (default: this process's stderr)."""
        self.argv = [str(script), *args]
        self.stderr_path = stderr
        self.port = 0
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    def _stderr_file(self) -> BinaryIO | None:
        return None if self.stderr_path is None else open(self.stderr_path, "ab")  # noqa: SIM115

    async def start(self) -> None:
        log = self._stderr_file()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=HERE.parent.parent,
                limit=PIPE_LIMIT,
            )
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor
        self.pid = self._proc.pid
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), timeout=30)
        if not line:
            raise RuntimeError(f"the helper process {self.argv} exited before listening")
        self.port = orjson.loads(line)["port"]

    async def ask(self, command: dict[str, Any]) -> Any:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        async with self._lock:
            proc.stdin.write(orjson.dumps(command) + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        if not line:
            raise RuntimeError("the helper process died")
        answer = orjson.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["result"]

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the helper exits at end of input
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def serve_json_lines(port: int, handle: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
    """The helper's side of `JsonLinesHelper`: announces `port`, then answers commands until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    out.write(orjson.dumps({"port": port}) + b"\n")
    out.flush()
    for _ in range(MAX_COMMANDS):
        if not (line := await reader.readline()):
            break
        try:
            answer: dict[str, Any] = {"result": await handle(orjson.loads(line))}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(orjson.dumps(answer) + b"\n")
        out.flush()


class HelperFake(JsonLinesHelper):
    """The fake Realtime server in a helper process (`python bench/_loadgen.py --reply-ms MS`)."""

    def __init__(self, reply_ms: int) -> None:
        super().__init__(HERE, "--reply-ms", str(reply_ms))
        self.reply_ms = reply_ms

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def count(self) -> int:
        return int(await self.ask({"cmd": "count"}))

    async def wait_connection(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        await self.ask({"cmd": "wait", "n": n, "timeout": timeout})

    async def progress(self, stops: dict[int, float | None]) -> dict[int, tuple[int, int]]:
        answer = await self.ask({"cmd": "progress", "stops": [[i, s] for i, s in stops.items()]})
        return {int(i): (int(a), int(d)) for i, a, d in answer}

    async def collect(self, indices: list[int]) -> list[ProviderTrack]:
        answer = await self.ask({"cmd": "collect", "indices": indices})
        return [ProviderTrack.from_json(data) for data in answer]


async def _helper_main(reply_ms: int) -> None:
    fake = LocalFake(reply_ms)
    await fake.start()
    freeze_heap()

    async def handle(command: dict[str, Any]) -> Any:
        if command["cmd"] == "count":
            return await fake.count()
        if command["cmd"] == "wait":
            await fake.wait_connection(command["n"], command["timeout"])
            return True
        if command["cmd"] == "progress":
            done = await fake.progress({int(i): s for i, s in command["stops"]})
            return [[i, a, d] for i, (a, d) in done.items()]
        if command["cmd"] == "collect":
            return [t.to_json() for t in await fake.collect(command["indices"])]
        raise ValueError(f"unknown command {command['cmd']!r}")

    try:
        await serve_json_lines(fake.server.port, handle)
    finally:
        await fake.close()


def freeze_heap() -> None:
    """Moves everything alive now (the openai SDK's types the fake imports: a million objects) out of
    the garbage collector's sight; without this a full collection stalls the loop for ~80 ms."""
    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100, nearest rank) of `values`; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def match_latencies(sent: Any, arrived: Any, count: int, window: tuple[float, float]) -> list[float]:
    """`arrived[k] - sent[k]` for the first `count` frames sent inside `window`, in seconds."""
    lo, hi = window
    return [arrived[k] - sent[k] for k in range(count) if lo <= sent[k] <= hi]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the fake Realtime server as a helper process")
    parser.add_argument("--reply-ms", type=int, required=True)
    reply = parser.parse_args().reply_ms
    try:  # the fake's own loop overhead is the box's, not the server's: keep it small
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_helper_main(reply))
