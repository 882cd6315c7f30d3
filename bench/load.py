"""Load test of the relay (the Production-readiness issue): N concurrent simulated Twilio calls.

Run: ``python bench/load.py`` (``--calls 200 --seconds 60 --mode realtime|cascade|both``, the
defaults being 200, 60 and both; ``--quick``: 20 calls, 10 s; ``--calls 200,150,100`` runs several N,
each in a fresh relay). The relay runs as ``python -m relay serve`` in a process of its own, so that
its CPU time (/proc/<pid>/stat) and RSS (/proc/<pid>/status) are its own; the fake provider runs in
a helper process; this process runs the callers (``bench/_loadgen.py``: signed webhook, signed
upgrade, 20 ms frames on an absolute schedule, marks echoed after "playback"). All on loopback.

Realtime mode (RELAY_MODE=realtime): ``FakeRealtimeServer`` streams one long reply paced in real time
in 20 ms deltas while the callers send μ-law silence (no VAD triggers), as ``bench/realtime_load.py``
does. Frames lost caller→relay (frames the callers sent vs the relay's ``relay_frames_in_total``,
read from GET /metrics once every call has ended), caller→provider (vs the appends the fake
received) and provider→caller (deltas the fake sent vs ``media`` received); added latency per
frame, each direction.

Cascade mode (RELAY_MODE=cascade): ``FakeOpenAIHTTP`` (STT, chat, TTS; ``tts_pace=1.0``: the speech
streams in real time, 100 ms chunks) in a helper process; every caller says one espeak-ng utterance
(synthesized once, normalized to a -3 dBFS peak, checked to make exactly one turn in
``cascade.vad.TurnDetector``) every 4–6 s with silence between, so the relay runs VAD → STT → chat →
TTS turns all the time. Each turn gets an id of its own: the fake transcribes utterance n as "Where
is order n?" and answers "Order n ships today.", so its three requests, and the relay's call record
(GET /calls/<sid>, with RELAY_ADMIN_TOKEN), name the same turn. Figures:

* frames lost caller→relay: as in realtime mode (``relay_frames_in_total``);
* agent audio: per call, the μ-law bytes the caller received vs the PCM16 24 kHz bytes the fake's
  TTS sent for that call's replies / 6 (24 kHz → 8 kHz, 2 bytes → 1); each reply may add up to a
  frame of padding plus the resampler's tail, so only a shortfall counts as lost;
* added latency per turn: the caller's end of speech (the send time of the utterance's last frame)
  → the first agent audio at the caller, minus the fake's own time for that turn (STT request body
  in → answer out, chat body in → last chunk out, TTS body in → first audio chunk out; measured
  around the fake's ASGI app). It includes the relay's end-of-turn silence (CASCADE_SILENCE_MS=500:
  a setting, not overhead), so ``beyond VAD`` shows the rest; the turn's stages as the relay timed
  them (its call record's ``turn_timings``, same clock) show where the time went;
* audio late: within a reply, how late each ``media`` arrived vs the reply's first one plus the audio
  before it (what a caller would hear as a gap; the fake's pacing jitter is included).

Both modes: CPU % of one core and RSS per call of the relay (steady window with all N calls up;
RSS above the relay's RSS after two warm-up calls), errors (WARNING/ERROR lines in the relay's log,
failed or early-ended calls, outcomes other than the caller's stop, fake-side errors), and the
machine: CPU of the callers' process and of the fake's, all cores busy %, CPU of processes not ours.
A run is clean with 0 frames lost, no errors, and the relay below 90 % of a core (it is one process,
one event loop: at 100 % every call queues behind the others); realtime also needs p99 ≤ 20 ms per
frame, cascade every turn answered and no spurious barge-in.

The fake's HTTP server gets TCP_NODELAY (see `_bind_tcp_port`): without it its streamed answers
stall ~40 ms on reused connections, which would be billed to the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import contextvars
import itertools
import math
import os
import random
import re
import socket
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _loadgen import (  # noqa: E402
    FRAME_BYTES,
    FRAME_S,
    HELPER_MAX_S,
    SILENCE_B64,
    ULAW_BYTES_PER_S,
    CallRamp,
    HelperFake,
    JsonLinesHelper,
    SimCall,
    fetch_twiml,
    freeze_heap,
    percentile,
    serve_json_lines,
)
from realtime_load import (  # noqa: E402
    AUTH_TOKEN,
    LATENCY_GOAL_MS,
    PUBLIC_URL,
    QUIET_PCT,
    SATURATED_PCT,
    SETTLE_S,
    WARMUP_CALLS,
    RunResult,
    Target,
    cpu_seconds,
    machine_jiffies,
    others_cpu_seconds,
    place_calls,
    process_cpu,
    rss_kb,
    wait_quiet,
)

import relay.testing.server as relay_test_server  # noqa: E402
from cascade.vad import TurnDetector, Utterance  # noqa: E402
from relay.testing.audio import float_to_ulaw, speech_ulaw, ulaw_to_float  # noqa: E402
from relay.testing.openai_http import FakeOpenAIHTTP  # noqa: E402
from relay.testing.openai_replies import Text, tts_audio  # noqa: E402

HERE = Path(__file__).resolve()
ADMIN_TOKEN = "bench-admin-token"
IDLE_WAIT_S, IDLE_POLL_S = 30.0, 0.2  # after the callers hung up, until the relay has no active call
RECORD_FETCHES = 16  # concurrent GET /calls/<sid>

# cascade: what is said, when
UTTERANCE_TEXT = "Where is my order?"
UTTERANCE_PEAK = 0.7  # -3 dBFS
TRIM_DBFS = -50.0
GREETING_REPLY = "Hello, how can I help you today?"
TURN_REPLY = "Order {} ships today."
GREETING_ID = "greeting"
FIRST_TALK_S = (3.0, 5.0)  # after `start`: the greeting (about 2 s) has played
TALK_GAP_S = (4.0, 6.0)  # utterance start to the next one's
REPLY_BUDGET_S = 3.0  # an utterance starts only if the VAD window and its answer fit before the end
CASCADE_SILENCE_MS = 500
CASCADE_WARMUP_S = 3.0
REPLY_GAP_S = 0.3  # silence at the caller longer than this after the audio played: a new reply
DRAIN_S = 8.0  # longest wait for replies still playing after the callers stopped talking
TRIM_EVERY_S = 1.0
RELAY_SATURATED_PCT = 90.0  # % of one core: the relay is one process, one event loop
ORDER = re.compile(r"order (\d+)", re.IGNORECASE)
FAKE_SPANS = (("stt", "t2"), ("chat", "t2"), ("tts", "t1"))  # the fake's own: body in → answer out
STAGES = {  # a turn, from the relay's per-turn timings (call record `stats[].turn_timings`)
    "end→VAD": ("caller_end", "vad_end"),
    "STT": ("stt_sent", "stt_done"),
    "chat": ("chat_sent", "first_sentence"),
    "TTS": ("tts_sent", "tts_first_bytes"),
    "→caller": ("first_frame", "caller_media"),
}
LEGS = {  # per hop: the relay's request time and answer time, and the fake's answer-out field
    "stt": ("stt_sent", "stt_done", "t2"),
    "chat": ("chat_sent", "first_sentence", "t2"),
    "tts": ("tts_sent", "tts_first_bytes", "t1"),
}


# --------------------------------------------------------------------------- the relay's /metrics


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {series (name and labels, as written): value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[series] = float(value)
    return out


async def idle_metrics(client: httpx.AsyncClient, target: Target, errors: list[str]) -> dict[str, float]:
    """GET /metrics once the relay has no active call (the per-call counters are added at call end)."""
    metrics: dict[str, float] = {}
    for _ in range(int(IDLE_WAIT_S / IDLE_POLL_S)):
        metrics = parse_metrics((await client.get(target.base_url + "/metrics")).text)
        if metrics.get("relay_active_calls", 0) == 0:
            return metrics
        await asyncio.sleep(IDLE_POLL_S)
    errors.append(
        f"the relay still had {metrics.get('relay_active_calls')} active calls after {IDLE_WAIT_S} s"
    )
    return metrics


def unusual_outcomes(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Calls that ended other than by the caller's `stop`, by outcome, between two scrapes."""
    found: dict[str, int] = {}
    for series, value in after.items():
        if series.startswith("relay_calls_total{") and 'outcome="twilio_stop"' not in series:
            count = int(value - before.get(series, 0.0))
            if count:
                found[series.split("outcome=")[1].strip('"}')] = count
    return found


@dataclass
class Health:
    """The steady window (all N calls up): the relay's CPU and RSS, and how busy the machine was."""

    cpu_pct_total: float = math.nan
    rss_base_kb: int = 0
    rss_peak_kb: int = 0
    gen_cpu_pct: float = math.nan
    fake_cpu_pct: float = math.nan
    machine_busy_pct: float = math.nan
    other_cpu_pct: float = math.nan
    late_p99_ms: float = math.nan


class Window:
    """Measures `Health` between `open()` and `close()`, sampling RSS on the way."""

    def __init__(self, relay_pid: int, fake_pid: int | None) -> None:
        self.relay_pid, self.fake_pid = relay_pid, fake_pid

    def open(self) -> None:
        self.busy0, self.total0 = machine_jiffies()
        self.procs0 = process_cpu()
        self.cpu0, self.gen0, self.fake0 = cpu_seconds(self.relay_pid), time.process_time(), self._fake()
        self.t0 = time.monotonic()
        self.peak = rss_kb(self.relay_pid)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_kb(self.relay_pid))

    def close(self, health: Health) -> None:
        cpu1, gen1, fake1, t1 = (
            cpu_seconds(self.relay_pid),
            time.process_time(),
            self._fake(),
            time.monotonic(),
        )
        procs1 = process_cpu()
        busy1, total1 = machine_jiffies()
        span = t1 - self.t0
        health.cpu_pct_total = (cpu1 - self.cpu0) / span * 100
        health.gen_cpu_pct = (gen1 - self.gen0) / span * 100
        health.fake_cpu_pct = (fake1 - self.fake0) / span * 100
        health.rss_peak_kb = self.peak
        health.machine_busy_pct = (busy1 - self.busy0) / max(1, total1 - self.total0) * 100
        others = others_cpu_seconds(self.procs0, procs1, {self.relay_pid, os.getpid(), self.fake_pid})
        health.other_cpu_pct = others / span * 100

    def _fake(self) -> float:
        return 0.0 if self.fake_pid is None else cpu_seconds(self.fake_pid)


# --------------------------------------------------------------------------- realtime mode


@dataclass
class RealtimeRun(RunResult):
    relay_read: int = -1  # frames the relay read (Δ relay_frames_in_total)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def lost_c2r(self) -> int:
        return self.sent_c2p - self.relay_read if self.relay_read >= 0 else self.sent_c2p

    def problems(self) -> list[str]:
        """Why the run is not clean (empty: clean)."""
        worst = max(percentile(self.c2p_ms, 99), percentile(self.p2c_ms, 99))
        found = [] if worst <= LATENCY_GOAL_MS else [f"p99 {worst:.0f} ms > {LATENCY_GOAL_MS:g} ms"]
        if self.lost_c2r or self.lost_c2p or self.lost_p2c:
            found.append("frames lost")
        return found + _common_problems(self)


def _common_problems(r: RealtimeRun | CascadeRun) -> list[str]:
    found = []
    if r.failed_calls or r.ended_early:
        found.append(f"{r.failed_calls + r.ended_early} failed calls")
    if r.log_lines:
        found.append(f"{len(r.log_lines)} WARNING/ERROR log lines")
    if r.outcomes:
        found.append(f"outcomes {r.outcomes}")
    if r.cpu_pct_total >= RELAY_SATURATED_PCT:
        found.append(f"the relay's event loop saturated ({r.cpu_pct_total:.0f} % of a core)")
    return found


async def run_realtime(n: int, seconds: float, log_dir: Path, log_level: str = "WARNING") -> RealtimeRun:
    result = RealtimeRun("relay", n)
    busy = await wait_quiet()
    if busy > QUIET_PCT:
        result.errors.append(f"the machine was {busy:.0f} % busy before the run (other work)")
    fake = HelperFake(int((n * 0.2 + seconds + 10) * 1000))  # the reply outlasts the whole run
    await fake.start()
    freeze_heap()
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            env = {"RELAY_MODE": "realtime", "LOG_LEVEL": log_level}
            target = Target("relay", fake, log_dir, n, env=env, label="-realtime")
            result.log_path = str(target.log_path)
            try:
                await target.wait_ready(client)
                await place_calls(target, fake, client, WARMUP_CALLS, 1.0, None, first=1_000_000)
                before = await idle_metrics(client, target, result.errors)
                result.rss_base_kb = rss_kb(target.proc.pid)
                await place_calls(target, fake, client, n, seconds, result)
                after = await idle_metrics(client, target, result.errors)
                result.relay_read = round(after["relay_frames_in_total"] - before["relay_frames_in_total"])
                result.outcomes = unusual_outcomes(before, after)
            finally:
                await target.stop()
            result.log_lines = target.log_lines()
    finally:
        await fake.close()
    return result


# --------------------------------------------------------------------------- cascade: the fake


_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bench_request", default=None
)


def _tag(turn_id: str) -> None:
    entry = _REQUEST.get()
    if entry is not None:
        entry["id"] = turn_id


class TurnFake(FakeOpenAIHTTP):
    """`FakeOpenAIHTTP` whose turns carry an id: utterance n is transcribed "Where is order n?", the
    chat answers "Order n ships today." (the greeting: `GREETING_REPLY`), and the speech of that
    answer is tagged n, so the fake's three requests of one turn can be told apart from the others."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._turn_ids = itertools.count(1)

    def _answer_transcription(self, record: Any, headers: dict[str, str]) -> Any:
        n = next(self._turn_ids)
        self.transcripts.append(f"Where is order {n}?")  # popped at once by the answer
        _tag(str(n))
        return super()._answer_transcription(record, headers)

    def _answer_chat(self, record: Any, headers: dict[str, str]) -> Any:
        last = record.messages[-1] if record.messages else {}
        found = ORDER.search(str(last.get("content") or "")) if last.get("role") == "user" else None
        self.replies.append(Text(TURN_REPLY.format(found.group(1))) if found else Text(GREETING_REPLY))
        _tag(found.group(1) if found else GREETING_ID)
        return super()._answer_chat(record, headers)

    def _answer_speech(self, record: Any, headers: dict[str, str]) -> Any:
        found = ORDER.search(record.input or "")
        _tag(found.group(1) if found else GREETING_ID)
        return super()._answer_speech(record, headers)


class TimedApp:
    """ASGI wrapper: per HTTP request, when it came in (t0), when its body had fully arrived (tb),
    when the first (t1) and the last (t2) body bytes of the answer went out, how many bytes, the
    status, and the turn id the fake tagged it with. The fake's own time starts at tb: how fast the
    relay uploads (a WAV, under load) is the relay's."""

    KINDS = (("/audio/transcriptions", "stt"), ("/chat/completions", "chat"), ("/audio/speech", "tts"))

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[dict[str, Any]] = []
        self.inflight = 0

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = next((k for suffix, k in self.KINDS if scope["path"].endswith(suffix)), "other")
        entry: dict[str, Any] = {"k": kind, "id": "", "t0": time.monotonic(), "tb": None, "t1": None}
        entry |= {"t2": None, "b": 0, "s": 0}

        async def timed_receive() -> MutableMapping[str, Any]:
            message: MutableMapping[str, Any] = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                entry["tb"] = entry["tb"] or time.monotonic()
            return message

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry["s"] = message["status"]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and entry["t1"] is None:
                    entry["t1"] = time.monotonic()
                entry["b"] += len(body)
                if not message.get("more_body", False):
                    entry["t2"] = time.monotonic()
            await send(message)

        token = _REQUEST.set(entry)
        self.inflight += 1
        try:
            await self.app(scope, timed_receive, timed_send)
        finally:
            self.inflight -= 1
            _REQUEST.reset(token)
            self.log.append(entry)


def _bind_tcp_port(host: str = "127.0.0.1") -> socket.socket:
    """`relay.testing.server.bind_free_port` with the protocol named: asyncio turns Nagle off
    (TCP_NODELAY) only on connections accepted from a socket whose `proto` is IPPROTO_TCP, and
    `socket.socket(AF_INET, SOCK_STREAM)` has proto 0. Without this the fake's streamed answers on a
    reused keep-alive connection stall ~40 ms before their first chunk (Nagle waiting for the
    client's delayed ACK of the headers), which is the fake's artefact, not the relay's."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


async def _openai_helper_main() -> None:
    relay_test_server.bind_free_port = _bind_tcp_port  # serve_app() looks it up at call time
    fake = TurnFake(tts_pace=1.0)
    timed = TimedApp(fake.app)
    fake.app = timed  # type: ignore[assignment]  # served by serve() below
    async with fake.serve() as url:
        freeze_heap()

        async def trim() -> None:  # the fake keeps every request (with its WAV): drop them
            for _ in range(int(HELPER_MAX_S / TRIM_EVERY_S)):
                await asyncio.sleep(TRIM_EVERY_S)
                del fake.requests[:]

        async def handle(command: dict[str, Any]) -> Any:
            if command["cmd"] == "inflight":
                return timed.inflight
            if command["cmd"] == "take":
                log, timed.log = timed.log, []
                return log
            raise ValueError(f"unknown command {command['cmd']!r}")

        trimmer = asyncio.create_task(trim())
        try:
            await serve_json_lines(int(url.rsplit(":", 1)[1]), handle)
        finally:
            trimmer.cancel()


class OpenAIHelper(JsonLinesHelper):
    """`TurnFake` in a helper process (`python bench/load.py --openai-fake-helper`)."""

    def __init__(self, stderr: Path | None = None) -> None:
        super().__init__(HERE, "--openai-fake-helper", stderr=stderr)

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def inflight(self) -> int:
        return int(await self.ask({"cmd": "inflight"}))

    async def take(self) -> list[dict[str, Any]]:
        return list(await self.ask({"cmd": "take"}))


# --------------------------------------------------------------------------- cascade: the callers


def utterance_frames() -> list[str]:
    """The caller's utterance as base64 20 ms μ-law frames: espeak-ng, trimmed to its first and last
    sample above -50 dBFS, peak at -3 dBFS, padded with silence to whole frames. Checked to make
    exactly one turn in the relay's own turn detector."""
    x = ulaw_to_float(speech_ulaw(UTTERANCE_TEXT))
    loud = np.flatnonzero(np.abs(x) > 10 ** (TRIM_DBFS / 20))
    x = x[loud[0] : loud[-1] + 1]
    ulaw = float_to_ulaw(x * (UTTERANCE_PEAK / float(np.max(np.abs(x)))))
    ulaw += b"\xff" * (-len(ulaw) % FRAME_BYTES)
    frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    detector = TurnDetector(silence_ms=CASCADE_SILENCE_MS)
    silence = b"\xff" * FRAME_BYTES
    stream = [silence] * 50 + frames + [silence] * 100
    turns = [
        e for i, f in enumerate(stream) for e in detector.feed(f, (i + 1) * 20) if isinstance(e, Utterance)
    ]
    if len(turns) != 1:
        raise RuntimeError(f"the utterance makes {len(turns)} turns in cascade.vad.TurnDetector, not 1")
    return [base64.b64encode(f).decode() for f in frames]


class Talker:
    """One caller's voice (`SimCall.audio`): the utterance every `TALK_GAP_S`, silence between; an
    utterance starts only if its answer fits before the call's end. `starts`: the frame indices."""

    def __init__(self, index: int, frames: list[str]) -> None:
        self.rng = random.Random(index)
        self.frames = frames
        self.next_at = round(self.rng.uniform(*FIRST_TALK_S) / FRAME_S)
        self.starts: list[int] = []
        self._at = -1

    def __call__(self, index: int, slot: float, until: float) -> str:
        if self._at >= 0:
            k = index - self._at
            if k < len(self.frames):
                return self.frames[k]
            self._at = -1
        if index >= self.next_at:
            self.next_at = index + round(self.rng.uniform(*TALK_GAP_S) / FRAME_S)
            if slot + len(self.frames) * FRAME_S + REPLY_BUDGET_S <= until:
                self._at = index
                self.starts.append(index)
                return self.frames[0]
        return SILENCE_B64


@dataclass
class CascadeRun(Health):
    n: int = 0
    failed_calls: int = 0
    ended_early: int = 0
    sent: int = 0  # caller → relay frames
    relay_read: int = -1
    turns_spoken: int = 0
    turns_heard: int = 0  # user turns in the relay's records
    turns_answered: int = 0  # with agent audio at the caller before the next utterance
    unmatched_calls: int = 0  # records whose user turns do not pair with what was said
    turn_ms: list[float] = field(default_factory=list)  # added: minus the fake's own time
    fake_ms: list[float] = field(default_factory=list)
    greet_ms: list[float] = field(default_factory=list)  # start → first agent audio (raw)
    audio_expected: int = 0  # μ-law bytes: the fake's TTS bytes / 6, per reply
    audio_received: int = 0
    audio_short: int = 0  # Σ per call of what is missing
    replies: int = 0
    audio_late_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    legs: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    clears: int = 0
    barge_ins: int = 0
    fake_errors: int = 0
    fake_cancelled: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    log_path: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.relay_read if self.relay_read >= 0 else self.sent

    def problems(self) -> list[str]:
        """Why the run is not clean (empty: clean)."""
        found = ["frames lost"] if self.lost else []
        if self.audio_short:
            found.append("agent audio lost")
        if self.turns_answered < self.turns_spoken or self.unmatched_calls:
            found.append("turns unanswered or misheard")
        if self.barge_ins:
            found.append(f"{self.barge_ins} spurious barge-ins")
        if self.fake_errors:
            found.append("fake errors")
        return found + _common_problems(self)


async def run_cascade(
    n: int, seconds: float, log_dir: Path, frames: list[str], log_level: str = "WARNING"
) -> CascadeRun:
    result = CascadeRun(n=n)
    busy = await wait_quiet()
    if busy > QUIET_PCT:
        result.errors.append(f"the machine was {busy:.0f} % busy before the run (other work)")
    fake = OpenAIHelper(stderr=log_dir / f"fake-openai-N{n}.log")
    await fake.start()
    freeze_heap()
    env = {
        "RELAY_MODE": "cascade",
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "CASCADE_SILENCE_MS": str(CASCADE_SILENCE_MS),
        "LOG_LEVEL": log_level,
    }
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            target = Target("relay", fake, log_dir, n, env=env, label="-cascade")
            result.log_path = str(target.log_path)
            try:
                await target.wait_ready(client)
                await place_cascade_calls(target, fake, client, WARMUP_CALLS, CASCADE_WARMUP_S, frames, None)
                before = await idle_metrics(client, target, result.errors)
                await fake.take()  # forget the warm-up's requests
                result.rss_base_kb = rss_kb(target.proc.pid)
                calls, talkers = await place_cascade_calls(target, fake, client, n, seconds, frames, result)
                after = await idle_metrics(client, target, result.errors)
                result.relay_read = round(after["relay_frames_in_total"] - before["relay_frames_in_total"])
                result.barge_ins = round(after["relay_barge_ins_total"] - before["relay_barge_ins_total"])
                result.outcomes = unusual_outcomes(before, after)
                records = await fetch_records(client, target, calls)
                _account_cascade(result, calls, talkers, records, await fake.take(), len(frames))
            finally:
                await target.stop()
            result.log_lines = target.log_lines()
    finally:
        await fake.close()
    return result


async def place_cascade_calls(
    target: Target,
    fake: OpenAIHelper,
    client: httpx.AsyncClient,
    n: int,
    seconds: float,
    frames: list[str],
    result: CascadeRun | None,
) -> tuple[list[SimCall], list[Talker]]:
    """Ramps up `n` talking calls one after the other, runs `seconds` with all of them up, waits
    (bounded) for the last answers to play, hangs up. Warm-up when `result` is None."""
    first = 0 if result is not None else 1_000_000

    def new_call(i: int) -> SimCall:
        talker = Talker(first + i, frames)
        return SimCall(first + i, target.base_url, stream_url="", auth_token=AUTH_TOKEN, audio=talker)

    async def open_call(call: SimCall) -> Talker:
        call.stream_url, call.parameters = await fetch_twiml(
            client, target.base_url, PUBLIC_URL, AUTH_TOKEN, call.call_sid
        )
        await call.open()
        assert isinstance(call.audio, Talker)
        return call.audio

    ramp: CallRamp[Talker] = CallRamp()
    window = Window(target.proc.pid, fake.pid)
    try:
        await ramp.place(n, seconds, new_call, open_call, result)
        calls, tasks = ramp.calls, ramp.tasks
        all_up = time.monotonic()
        deadline = all_up + seconds
        for call in calls:
            call.until = deadline
        await asyncio.sleep(min(SETTLE_S, seconds / 4))
        window.open()
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.5, left))
            window.sample()
        if result is not None:
            window.close(result)
        await asyncio.wait(tasks, timeout=5.0)
        # the last answers: until the fake has nothing in flight and every caller's audio has played
        drain_end = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_end:
            now = time.monotonic()
            quiet = all(not c.media_times or c.media_times[-1] < now - REPLY_GAP_S for c in calls)
            if quiet and await fake.inflight() == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await ramp.end()
    if result is not None:
        late = [x for c in calls for x, s in zip(c.lateness, c.send_times, strict=True) if s >= window.t0]
        result.late_p99_ms = percentile(late, 99) * 1000
    return calls, ramp.opened


async def fetch_records(
    client: httpx.AsyncClient, target: Target, calls: list[SimCall]
) -> list[dict[str, Any]]:
    """The relay's record of each call (GET /calls/<sid>); {} when it has none."""
    gate = asyncio.Semaphore(RECORD_FETCHES)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def one(call: SimCall) -> dict[str, Any]:
        async with gate:
            response = await client.get(f"{target.base_url}/calls/{call.call_sid}", headers=headers)
        return dict(response.json()) if response.status_code == 200 else {}

    return list(await asyncio.gather(*(one(c) for c in calls)))


def _account_cascade(
    result: CascadeRun,
    calls: list[SimCall],
    talkers: list[Talker],
    records: list[dict[str, Any]],
    fake_log: list[dict[str, Any]],
    utterance_frames: int,
) -> None:
    by_turn: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for entry in fake_log:
        if entry["tb"] is None or entry["s"] == 0:  # the relay dropped it mid-request (barge-in)
            result.fake_cancelled += 1
        elif entry["s"] != 200:
            result.fake_errors += 1
        if entry["id"] and entry["id"] != GREETING_ID:
            by_turn[entry["id"]][entry["k"]] = entry
    greeting_pcm = len(tts_audio(GREETING_REPLY))
    for call, talker, record in zip(calls, talkers, records, strict=True):
        result.sent += len(call.send_times)
        result.ended_early += call.ended_early
        result.clears += call.clears
        if call.media_times and call.start_sent_at is not None:
            result.greet_ms.append((call.media_times[0] - call.start_sent_at) * 1000)
        # the turns: what was said, what the relay heard (its record), when the answer came
        spoken = [s for s in talker.starts if s + utterance_frames - 1 < len(call.send_times)]
        heard = [
            m.group(1)
            for turn in record.get("transcript", [])
            if turn.get("role") == "user" and (m := ORDER.search(str(turn.get("text", ""))))
        ]
        result.turns_spoken += len(spoken)
        result.turns_heard += len(heard)
        if len(heard) != len(spoken):
            result.unmatched_calls += 1
        stats = [st for st in record.get("stats") or [] if st.get("turn_timings")]
        timings = [t for t in (stats[-1]["turn_timings"] if stats else []) if "stt_sent" in t]
        for k, start in enumerate(spoken):
            end = call.send_times[start + utterance_frames - 1]
            upto = call.send_times[spoken[k + 1]] if k + 1 < len(spoken) else math.inf
            j = bisect.bisect_right(call.media_times, end)
            if j >= len(call.media_times) or call.media_times[j] >= upto:
                continue
            result.turns_answered += 1
            hops = by_turn.get(heard[k], {}) if len(heard) == len(spoken) else {}
            if not ({"stt", "chat", "tts"} <= hops.keys() and hops["tts"]["t1"] is not None):
                continue
            own = sum(hops[kind][done] - (hops[kind]["tb"] or hops[kind]["t0"]) for kind, done in FAKE_SPANS)
            result.fake_ms.append(own * 1000)
            result.turn_ms.append((call.media_times[j] - end - own) * 1000)
            if len(timings) == len(heard):  # where the time went, on the relay's clock (CLOCK_MONOTONIC)
                t = timings[k]
                for stage, (since, until) in STAGES.items():
                    since_t = end if since == "caller_end" else t.get(since)
                    until_t = call.media_times[j] if until == "caller_media" else t.get(until)
                    if since_t is not None and until_t is not None:
                        result.stages[stage].append((until_t - since_t) * 1000)
                for kind, (sent, got, done) in LEGS.items():  # relay → fake, fake → relay
                    hop = hops[kind]
                    if sent in t and got in t and hop["tb"] is not None and hop[done] is not None:
                        result.legs[f"{kind} up"].append((hop["tb"] - t[sent]) * 1000)
                        result.legs[f"{kind} down"].append((t[got] - hop[done]) * 1000)
        # agent audio: per reply, the fake's TTS bytes / 6 at least
        replies = [greeting_pcm] if call.media_times else []
        replies += [by_turn[t]["tts"]["b"] for t in heard if "tts" in by_turn.get(t, {})]
        expected = sum(pcm // 6 for pcm in replies)
        received = sum(call.media_bytes)
        result.replies += len(replies)
        result.audio_expected += expected
        result.audio_received += received
        result.audio_short += max(0, expected - received)
        result.audio_late_ms += _lateness(call)


def _lateness(call: SimCall) -> list[float]:
    """Per `media` after a reply's first: arrival − (the reply's first arrival + audio before it), ms."""
    late: list[float] = []
    first = play_end = -math.inf
    played = 0.0
    for t, size in zip(call.media_times, call.media_bytes, strict=True):
        if t > play_end + REPLY_GAP_S:  # a new reply
            first, played = t, 0.0
        else:
            late.append((t - (first + played)) * 1000)
        played += size / ULAW_BYTES_PER_S
        play_end = max(play_end, t) + size / ULAW_BYTES_PER_S
    return late


# --------------------------------------------------------------------------- printing


def _f(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _pair(values: list[float], digits: int = 1) -> str:
    return f"{_f(percentile(values, 50), digits)}/{_f(percentile(values, 99), digits)}"


def _per_call(h: Health | RunResult, n: int) -> tuple[float, float]:
    return h.cpu_pct_total / n, (h.rss_peak_kb - h.rss_base_kb) / n


def _health_cells(h: Health | RunResult) -> str:
    return (
        f"{_f(h.gen_cpu_pct, 0):>5} {_f(h.fake_cpu_pct, 0):>5} {_f(h.machine_busy_pct, 0):>5} "
        f"{_f(h.other_cpu_pct, 0):>6} {_f(h.late_p99_ms):>6}"
    )


HEALTH_HEAD = f"{'gen%':>5} {'fake%':>5} {'box%':>5} {'other%':>6} {'late99':>6}"
REALTIME_HEAD = (
    f"{'N':>4} {'lost c→relay':>14} {'lost c→p':>12} {'lost p→c':>12} {'c→p p50/p99':>12} "
    f"{'p→c p50/p99':>12} {'greet+ p50/p99':>14} {'CPU%/call':>9} {'CPU%':>6} {'RSS KB/call':>11} "
    f"{HEALTH_HEAD} {'log':>4} {'failed':>6}"
)
CASCADE_HEAD = (
    f"{'N':>4} {'lost c→relay':>14} {'turns said/heard/answered':>25} {'turn+ p50/p99':>14} "
    f"{'beyond VAD':>12} {'fake':>5} {'agent audio short/expected B':>28} {'late p99':>8} "
    f"{'greet p50/p99':>14} {'CPU%/call':>9} {'CPU%':>6} {'RSS KB/call':>11} {HEALTH_HEAD} "
    f"{'log':>4} {'failed':>6}"
)
LEGEND = (
    "latencies in ms; CPU% = % of one core (relay process, steady window); RSS KB/call above the\n"
    "relay's RSS after 2 warm-up calls; gen%/fake% = CPU of the callers' process / the fake's;\n"
    "box% = all cores busy (/proc/stat, tick-sampled: undercounts bursty light load; 100 = both\n"
    "saturated); other% = CPU of processes not in this bench (per-process accounting, kernel threads);\n"
    "late99 = p99 of how late the callers sent a frame vs its 20 ms slot (bench health);\n"
    "log = WARNING/ERROR lines in the relay's log; failed = calls that failed or ended early"
)
REALTIME_LEGEND = (
    "realtime: lost c→relay = frames sent vs the relay's relay_frames_in_total; c→p / p→c = vs the\n"
    "fake's appends / the deltas it sent; per-frame added latency incl. 2 loopback hops; greet+ =\n"
    "start → first media at the caller minus the fake's response.create → first delta"
)
CASCADE_LEGEND = (
    "cascade: turns = utterances said / user turns in the relay's records / answered with agent audio\n"
    "before the next utterance; turn+ = end of speech → first agent audio minus the fake's own time\n"
    f"(fake, p50), incl. the VAD's {CASCADE_SILENCE_MS} ms end-of-turn silence; beyond VAD = turn+ − "
    f"{CASCADE_SILENCE_MS} ms;\n"
    "agent audio short = μ-law bytes missing at the callers vs the fake's TTS PCM bytes / 6;\n"
    "late p99 = how late agent audio arrived within a reply vs its first chunk plus the audio before it;\n"
    "greet = start → first agent audio, raw; turn stages: end→VAD = end of speech → the relay's VAD\n"
    "decision (incl. the silence window), STT/chat/TTS = request → answer / first sentence / first\n"
    "audio bytes as the relay saw them, →caller = the relay queued the first frame → the caller got it"
)


def realtime_row(r: RealtimeRun) -> str:
    cpu, rss = _per_call(r, r.n)
    line = (
        f"{r.n:>4} {f'{r.lost_c2r}/{r.sent_c2p}':>14} {f'{r.lost_c2p}/{r.sent_c2p}':>12} "
        f"{f'{r.lost_p2c}/{r.sent_p2c}':>12} {_pair(r.c2p_ms):>12} {_pair(r.p2c_ms):>12} "
        f"{_pair(r.greeting_ms):>14} {_f(cpu, 3):>9} {_f(r.cpu_pct_total):>6} {_f(rss):>11} "
        f"{_health_cells(r)} {len(r.log_lines):>4} {r.failed_calls + r.ended_early:>6}"
    )
    notes = list(r.errors[:3])
    if r.outcomes:
        notes.append(f"outcomes other than twilio_stop: {r.outcomes}")
    if r.provider_faults:
        notes.append(f"provider-side errors/invalid events {r.provider_faults}")
    return line + "".join(f"\n     ! {e}" for e in notes)


def cascade_row(r: CascadeRun) -> str:
    cpu, rss = _per_call(r, r.n)
    beyond = [x - CASCADE_SILENCE_MS for x in r.turn_ms]
    line = (
        f"{r.n:>4} {f'{r.lost}/{r.sent}':>14} "
        f"{f'{r.turns_spoken}/{r.turns_heard}/{r.turns_answered}':>25} {_pair(r.turn_ms, 0):>14} "
        f"{_pair(beyond, 0):>12} {_f(percentile(r.fake_ms, 50)):>5} "
        f"{f'{r.audio_short}/{r.audio_expected}':>28} {_f(percentile(r.audio_late_ms, 99)):>8} "
        f"{_pair(r.greet_ms, 0):>14} {_f(cpu, 3):>9} {_f(r.cpu_pct_total):>6} {_f(rss):>11} "
        f"{_health_cells(r)} {len(r.log_lines):>4} {r.failed_calls + r.ended_early:>6}"
    )
    if r.stages:
        parts = [f"{stage} {_pair(r.stages[stage], 0)}" for stage in STAGES if stage in r.stages]
        line += "\n       turn stages p50/p99 ms (relay's clock): " + ", ".join(parts)
        line += f"; the fake's own {_pair(r.fake_ms, 0)}"
    if r.legs:
        parts = [f"{leg} {_pair(r.legs[leg], 0)}" for leg in r.legs]
        line += "\n       hops p50/p99 (up: relay sent → fake has it; down: fake answered → relay has it): "
        line += ", ".join(parts)
    notes = list(r.errors[:3])
    extra = r.audio_received - r.audio_expected
    if r.replies and extra > r.replies * (FRAME_BYTES + 40):
        notes.append(
            f"callers received {extra} μ-law bytes more than the fake's TTS / 6 ({r.replies} replies)"
        )
    if r.unmatched_calls:
        notes.append(f"{r.unmatched_calls} calls' records do not pair with what was said (latency skipped)")
    if r.barge_ins or r.clears:
        notes.append(f"barge-ins {r.barge_ins} (relay), clears {r.clears} (callers)")
    if r.fake_errors or r.fake_cancelled:
        notes.append(
            f"the fake answered {r.fake_errors} requests with an error; the relay dropped "
            f"{r.fake_cancelled} requests before their answer (see the fake's log in the log dir)"
        )
    if r.outcomes:
        notes.append(f"outcomes other than twilio_stop: {r.outcomes}")
    return line + "".join(f"\n     ! {e}" for e in notes)


def _busy_note(h: Health | RunResult) -> str:
    note = (
        f"machine {_f(h.machine_busy_pct, 0)} % busy (other processes {_f(h.other_cpu_pct, 0)} % of a core)"
    )
    if h.machine_busy_pct >= SATURATED_PCT:
        note += ": SATURATED, the figures are the box's limit, not the relay's"
    return note


def _clean_word(problems: list[str]) -> str:
    return "CLEAN" if not problems else f"NOT CLEAN ({'; '.join(problems)})"


def realtime_verdict(r: RealtimeRun) -> str:
    cpu, rss = _per_call(r, r.n)
    worst = max(percentile(r.c2p_ms, 99), percentile(r.p2c_ms, 99))
    return (
        f"realtime N={r.n}: {_clean_word(r.problems())} — frames lost c→relay {r.lost_c2r}, "
        f"c→p {r.lost_c2p}, p→c {r.lost_p2c} (goal 0); p99 added {_f(worst)} ms per frame "
        f"(goal ≤ {LATENCY_GOAL_MS:g}); CPU {_f(cpu, 3)} % of a core and RSS {_f(rss)} KB per call; "
        f"errors: {len(r.log_lines)} log lines, {r.failed_calls + r.ended_early} failed calls; "
        f"{_busy_note(r)}"
    )


def cascade_verdict(r: CascadeRun) -> str:
    cpu, rss = _per_call(r, r.n)
    return (
        f"cascade N={r.n}: {_clean_word(r.problems())} — frames lost c→relay {r.lost} (goal 0), "
        f"agent audio short {r.audio_short} B; {r.turns_answered}/{r.turns_spoken} turns answered; p99 added "
        f"{_f(percentile(r.turn_ms, 99), 0)} ms per turn ({CASCADE_SILENCE_MS} ms of it the VAD silence); "
        f"CPU {_f(cpu, 3)} % of a core and RSS {_f(rss)} KB per call; errors: {len(r.log_lines)} log lines, "
        f"{r.failed_calls + r.ended_early} failed calls; {_busy_note(r)}"
    )


def print_log_lines(label: str, runs: list[Any]) -> None:
    lines = [(r.n, line) for r in runs for line in r.log_lines]
    if lines:
        print(f"WARNING/ERROR lines in the relay's log ({label}, {len(lines)}; first 8):")
        for n, line in lines[:8]:
            print(f"  [N={n}] {line[:220]}")


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace, log_dir: Path) -> None:
    print(
        f"calls {args.calls}, {args.seconds:g} s with all calls up, mode {args.mode}; relay logs in {log_dir}"
    )
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(LEGEND)
    if args.mode in ("realtime", "both"):
        print("\n== realtime (RELAY_MODE=realtime; fake Realtime server streams a reply in real time)")
        print(REALTIME_LEGEND)
        print(REALTIME_HEAD)
        realtime = []
        for n in args.calls:
            run = await run_realtime(n, args.seconds, log_dir, args.relay_log_level)
            realtime.append(run)
            print(realtime_row(run), flush=True)
        for run in realtime:
            print(realtime_verdict(run))
        clean = [r.n for r in realtime if not r.problems()]
        print(f"highest clean N (realtime): {max(clean) if clean else 'none'}")
        print_log_lines("realtime", realtime)
    if args.mode in ("cascade", "both"):
        frames = utterance_frames()
        said = f"{UTTERANCE_TEXT!r}, {len(frames) * 20} ms"
        print(f"\n== cascade (RELAY_MODE=cascade; FakeOpenAIHTTP, tts_pace=1.0; callers say {said})")
        print(CASCADE_LEGEND)
        print(CASCADE_HEAD)
        cascade = []
        for n in args.calls:
            crun = await run_cascade(n, args.seconds, log_dir, frames, args.relay_log_level)
            cascade.append(crun)
            print(cascade_row(crun), flush=True)
        for crun in cascade:
            print(cascade_verdict(crun))
        clean = [r.n for r in cascade if not r.problems()]
        print(f"highest clean N (cascade): {max(clean) if clean else 'none'}")
        print_log_lines("cascade", cascade)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="200", help="concurrent calls; comma-separated for several runs")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds with all calls up")
    parser.add_argument("--mode", choices=("realtime", "cascade", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 calls, 10 s")
    parser.add_argument("--log-dir", default=None, help="where the relay's logs go (default: a temp dir)")
    parser.add_argument(
        "--relay-log-level", default="WARNING", help="the relay's LOG_LEVEL (INFO to diagnose; %(default)s)"
    )
    parser.add_argument("--openai-fake-helper", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = "20", 10.0
    args.calls = [int(x) for x in str(args.calls).split(",") if x.strip()]
    return args


def main() -> None:
    args = parse_args()
    if args.openai_fake_helper:
        asyncio.run(_openai_helper_main())
        return
    logs = Path(args.log_dir or tempfile.mkdtemp(prefix="load_"))
    logs.mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args, logs))


if __name__ == "__main__":
    main()
