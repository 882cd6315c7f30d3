"""Load benchmark of the realtime path: N concurrent simulated calls, relay vs a bare pass-through floor.

Run: ``python bench/realtime_load.py`` (``--calls 25,50,100 --seconds 20``; ``--quick`` for a 10-call,
5 s smoke run). For every N the relay (``python -m relay serve``) and the floor
(``bench/floor_relay.py``) are measured back to back, each in its own fresh process so that its CPU
time (/proc/<pid>/stat) and RSS (/proc/<pid>/status) are its own. The fake Realtime server
(``relay.testing.realtime.FakeRealtimeServer``, streaming one long reply paced in real time in 20 ms
deltas: 50 frames/s per call) and the simulated callers (``bench/_loadgen.py``: 20 ms frames of
μ-law silence on an absolute schedule, marks echoed after "playback") run in this process, on the
default asyncio loop: its `loop.time()` is `time.monotonic()` with sub-ms resolution (uvloop's is
ms-granular), and both the callers and the fake stamp with it.

Per N and system it prints: frames lost (caller→provider: frames sent vs appends the fake received;
provider→caller: deltas the fake sent before the caller stopped vs `media` received), added latency
p50/p99 per direction (caller send → fake receive; fake send → caller receive; frames sent while all
N calls were up), CPU % of one core per call and RSS per call (steady window, above a warm-up
baseline), and greeting latency: `start` sent → first `media` at the caller, minus the fake's own
latency (`response.create` received → first delta sent). "bench CPU" is this process: the fake
validates every client event with pydantic and runs its VAD with numpy, costs that land here, not in
the relay; when it nears 100 % the latencies include the bench's own queueing (for both systems).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import relay.testing.realtime_script as realtime_script
from relay.testing.realtime import FakeRealtimeServer, Say

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _loadgen import FRAME_S, ProviderTrack, SimCall, fetch_twiml, match_latencies, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AUTH_TOKEN = "bench-auth-token"
PUBLIC_URL = "https://relay.example.com"
REPLY_TEXT = "This is a long benchmark reply streamed in real time."
START_GAP_S = 0.010  # at least this between two call starts (the ramp is also sequential)
SETTLE_S = 0.5  # after the last call started, before the steady window opens
DRAIN_S = 3.0  # longest wait for frames still in flight after the callers stopped
WARMUP_CALLS, WARMUP_S = 2, 1.0
READY_TRIES, READY_SLEEP_S = 150, 0.1
LATENCY_GOAL_MS = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def _memoize_fake_audio(reply_ms: int) -> None:
    """The fake computes a reply's whole tone with numpy when it starts (about 20 ms for 25 s),
    which at a hundred call starts would stall this loop for seconds. The tone depends on the reply
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

    realtime_script.expected_audio = expected_audio  # type: ignore[assignment]
    for index in range(8):
        expected_audio(index, reply_ms)


# --------------------------------------------------------------------------- process probes


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    system: str
    n: int
    failed_calls: int = 0
    ended_early: int = 0
    sent_c2p: int = 0
    lost_c2p: int = 0
    sent_p2c: int = 0
    lost_p2c: int = 0
    c2p_ms: list[float] = field(default_factory=list)
    p2c_ms: list[float] = field(default_factory=list)
    greeting_ms: list[float] = field(default_factory=list)  # added: total minus the fake's own
    provider_ms: list[float] = field(default_factory=list)
    cpu_pct_total: float = math.nan
    rss_base_kb: int = 0
    rss_peak_kb: int = 0
    bench_cpu_pct: float = math.nan
    late_p99_ms: float = math.nan
    provider_faults: int = 0
    log_lines: list[str] = field(default_factory=list)
    log_path: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def cpu_per_call(self) -> float:
        return self.cpu_pct_total / self.n

    @property
    def rss_per_call_kb(self) -> float:
        return (self.rss_peak_kb - self.rss_base_kb) / self.n

    def p(self, values: list[float], q: float) -> float:
        return percentile(values, q)

    @property
    def worst_p99(self) -> float:
        return max(self.p(self.c2p_ms, 99), self.p(self.p2c_ms, 99))

    @property
    def passed(self) -> bool:
        return (
            self.failed_calls == 0
            and self.ended_early == 0
            and self.lost_c2p == 0
            and self.lost_p2c == 0
            and self.worst_p99 <= LATENCY_GOAL_MS
        )


# --------------------------------------------------------------------------- one run


class Target:
    """The system under test in its own process: the relay or the floor."""

    def __init__(self, system: str, fake: FakeRealtimeServer, log_dir: Path, n: int) -> None:
        self.system = system
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{system}-N{n}.log"
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            OPENAI_API_KEY="sk-test",
            OPENAI_BASE_URL=fake.openai_base_url,
            USE_AZURE_OPENAI="false",
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            TWILIO_ACCOUNT_SID="",
            PUBLIC_URL=PUBLIC_URL,
            MAX_CONCURRENT_CALLS="100000",
            LOG_LEVEL="WARNING",
            GREETING_ENABLED="true",
        )
        if system == "relay":
            cmd = [PYTHON, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            provider = f"{fake.url}/v1/realtime?model=gpt-realtime"
            cmd = [PYTHON, str(ROOT / "bench" / "floor_relay.py"), "--port", str(self.port)]
            cmd += ["--provider", provider]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        for _ in range(READY_TRIES):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(self.base_url + "/health")).status_code == 200:
                    return
            await asyncio.sleep(READY_SLEEP_S)
        tail = self.log_path.read_text()[-2000:]
        raise RuntimeError(f"{self.system} did not become ready (exit {self.proc.poll()}):\n{tail}")

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def log_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if LOG_LINE.search(line)]


async def place_calls(
    target: Target,
    fake: FakeRealtimeServer,
    client: httpx.AsyncClient,
    n: int,
    seconds: float,
    result: RunResult | None,
) -> None:
    """Ramps up `n` calls one after the other, streams `seconds` with all of them up, drains, ends."""
    pid = target.proc.pid
    calls: list[SimCall] = []
    tracks: list[ProviderTrack] = []
    tasks: list[asyncio.Task[None]] = []
    max_frames = int((n * 0.2 + seconds + 10) / FRAME_S)  # a bound: the ramp never takes 200 ms per call
    ramp_start = time.monotonic()
    try:
        for i in range(n):
            delay = ramp_start + i * START_GAP_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            expected = len(fake.connections) + 1
            try:
                if target.system == "relay":
                    sid = f"CA{i + 1:032x}"
                    url, params = await fetch_twiml(client, target.base_url, PUBLIC_URL, AUTH_TOKEN, sid)
                    call = SimCall(
                        i, target.base_url, stream_url=url, auth_token=AUTH_TOKEN, parameters=params
                    )
                else:
                    call = SimCall(i, target.base_url, stream_url="wss://floor.example.com/media-stream")
                await call.open()
                # Calls start one at a time, so the n-th provider connection is this call's.
                conn = await fake.wait_connection(n=expected, timeout=10.0)
            except Exception as exc:  # a refused or failed call is a result, not a crash
                if result is not None:
                    result.failed_calls += 1
                    result.errors.append(f"call {i}: {type(exc).__name__}: {exc}")
                continue
            calls.append(call)
            tracks.append(ProviderTrack(conn))
            tasks.append(asyncio.create_task(call.stream(max_frames)))
        all_up = time.monotonic()
        deadline = all_up + seconds
        for call in calls:
            call.until = deadline
        window = (all_up + min(SETTLE_S, seconds / 4), deadline)

        # steady window: CPU at both ends, RSS sampled, records harvested as we go
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        cpu0, bench0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        peak = rss_kb(pid)
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.5, left))
            peak = max(peak, rss_kb(pid))
            for track in tracks:
                track.harvest()
        cpu1, bench1, t1 = cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.wait(tasks, timeout=5.0)

        # drain: wait (bounded) until what was sent before each caller stopped has arrived
        drain_end = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_end:
            for track in tracks:
                track.harvest()
            if all(_settled(c, t) for c, t in zip(calls, tracks, strict=True)):
                break
            await asyncio.sleep(0.1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*(c.finish() for c in calls), return_exceptions=True), 15.0)
        for track in tracks:
            track.harvest()
    if result is None:
        return
    result.cpu_pct_total = (cpu1 - cpu0) / (t1 - t0) * 100
    result.bench_cpu_pct = (bench1 - bench0) / (t1 - t0) * 100
    result.rss_peak_kb = peak
    late: list[float] = []
    for call, track in zip(calls, tracks, strict=True):
        _account(result, call, track, window)
        late.extend(x for x, s in zip(call.lateness, call.send_times, strict=True) if window[0] <= s)
    result.late_p99_ms = percentile(late, 99) * 1000


def _deltas_before_stop(call: SimCall, track: ProviderTrack) -> int:
    stop = call.stop_at if call.stop_at is not None else math.inf
    return sum(1 for t in track.delta_times if t <= stop)


def _settled(call: SimCall, track: ProviderTrack) -> bool:
    if call.stop_at is None:
        return False
    done_c2p = len(track.append_times) >= len(call.send_times)
    return done_c2p and len(call.media_times) >= _deltas_before_stop(call, track)


def _account(result: RunResult, call: SimCall, track: ProviderTrack, window: tuple[float, float]) -> None:
    sent, got = len(call.send_times), len(track.append_times)
    result.sent_c2p += sent
    result.lost_c2p += max(0, sent - got)
    count = min(sent, got)
    result.c2p_ms += [x * 1000 for x in match_latencies(call.send_times, track.append_times, count, window)]
    deltas = _deltas_before_stop(call, track)
    received = len(call.media_times)
    result.sent_p2c += deltas
    result.lost_p2c += max(0, deltas - received)
    count = min(deltas, received)
    result.p2c_ms += [x * 1000 for x in match_latencies(track.delta_times, call.media_times, count, window)]
    result.ended_early += call.ended_early
    result.provider_faults += track.faults
    if call.media_times and call.start_sent_at and track.response_create_at and track.first_delta_at:
        total = call.media_times[0] - call.start_sent_at
        own = track.first_delta_at - track.response_create_at
        result.greeting_ms.append((total - own) * 1000)
        result.provider_ms.append(own * 1000)


async def run_system(system: str, n: int, seconds: float, reply_ms: int, log_dir: Path) -> RunResult:
    result = RunResult(system, n)
    reply = Say(REPLY_TEXT, audio_ms=reply_ms)
    async with (
        FakeRealtimeServer(default_reply=reply, pace=1.0, delta_ms=20) as fake,
        httpx.AsyncClient(timeout=10.0) as client,
    ):
        target = Target(system, fake, log_dir, n)
        result.log_path = str(target.log_path)
        try:
            await target.wait_ready(client)
            await place_calls(target, fake, client, WARMUP_CALLS, WARMUP_S, None)
            await asyncio.sleep(0.3)
            result.rss_base_kb = rss_kb(target.proc.pid)
            await place_calls(target, fake, client, n, seconds, result)
        finally:
            await target.stop()
        result.log_lines = target.log_lines()
    return result


# --------------------------------------------------------------------------- printing


def _f(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


HEADER = (
    f"{'N':>4} {'system':<6} {'lost c→p':>12} {'lost p→c':>12} {'c→p p50/p99 ms':>15} "
    f"{'p→c p50/p99 ms':>15} {'CPU %/call':>10} {'CPU % tot':>9} {'RSS KB/call':>11} "
    f"{'greet +ms p50/p99':>18} {'prov ms':>7} {'bench CPU%':>10} {'late p99':>8} {'log W/E':>7}"
)


def row(r: RunResult) -> str:
    lost_c2p = f"{r.lost_c2p}/{r.sent_c2p}"
    lost_p2c = f"{r.lost_p2c}/{r.sent_p2c}"
    c2p = f"{_f(r.p(r.c2p_ms, 50), 2)}/{_f(r.p(r.c2p_ms, 99), 2)}"
    p2c = f"{_f(r.p(r.p2c_ms, 50), 2)}/{_f(r.p(r.p2c_ms, 99), 2)}"
    greet = f"{_f(r.p(r.greeting_ms, 50))}/{_f(r.p(r.greeting_ms, 99))}"
    line = (
        f"{r.n:>4} {r.system:<6} {lost_c2p:>12} {lost_p2c:>12} {c2p:>15} {p2c:>15} "
        f"{_f(r.cpu_per_call, 3):>10} {_f(r.cpu_pct_total):>9} {_f(r.rss_per_call_kb):>11} {greet:>18} "
        f"{_f(r.p(r.provider_ms, 50)):>7} {_f(r.bench_cpu_pct):>10} {_f(r.late_p99_ms):>8} "
        f"{len(r.log_lines):>7}"
    )
    extra = []
    if r.failed_calls or r.ended_early:
        extra.append(f"failed calls {r.failed_calls}, ended early {r.ended_early}")
    if r.provider_faults:
        extra.append(f"provider-side errors/invalid events {r.provider_faults}")
    extra += r.errors[:3]
    return line + "".join(f"\n       ! {e}" for e in extra)


def summary(results: list[RunResult]) -> None:
    relay = {r.n: r for r in results if r.system == "relay"}
    floor = {r.n: r for r in results if r.system == "floor"}

    def max_n(runs: dict[int, RunResult]) -> int:
        return max((n for n, r in runs.items() if r.passed), default=0)

    both = [n for n in sorted(relay) if n in floor and relay[n].passed and floor[n].passed]
    at = both[-1] if both else max(relay)
    rr, fr = relay[at], floor[at]
    relay_n, floor_n = max_n(relay), max_n(floor)
    ratio_n = relay_n / floor_n if floor_n else math.nan
    cpu_ratio = rr.cpu_per_call / fr.cpu_per_call if fr.cpu_per_call else math.nan
    print()
    print(f"relay vs floor (max N: 0 frames lost, p99 added ≤ {LATENCY_GOAL_MS:g} ms; the rest at N={at})")
    print(f"{'':34} {'relay':>10} {'floor':>10} {'ratio':>7}   goal")
    print(f"{'max N':34} {relay_n:>10} {floor_n:>10} {_f(ratio_n, 2):>7}   relay ≥ 0.8× floor and ≥ 100")
    print(
        f"{'CPU % of a core per call':34} {_f(rr.cpu_per_call, 3):>10} {_f(fr.cpu_per_call, 3):>10} "
        f"{_f(cpu_ratio, 2):>7}   ≤ 1.3× floor"
    )
    rss = f"{_f(rr.rss_per_call_kb):>10} {_f(fr.rss_per_call_kb):>10}"
    print(f"{'RSS per call (KB)':34} {rss} {'':>7}   ≤ 150 KB")
    greet = f"{_f(rr.p(rr.greeting_ms, 50))}/{_f(rr.p(rr.greeting_ms, 99))}"
    fgreet = f"{_f(fr.p(fr.greeting_ms, 50))}/{_f(fr.p(fr.greeting_ms, 99))}"
    print(f"{'first greeting frame, +ms p50/p99':34} {greet:>10} {fgreet:>10} {'':>7}   ≤ +10 ms")
    verdicts = [
        ("max N", relay_n >= 100 and relay_n >= 0.8 * floor_n),
        ("CPU", cpu_ratio <= 1.3),
        ("RSS", rr.rss_per_call_kb <= 150),
        ("greeting", rr.p(rr.greeting_ms, 99) <= 10),
    ]
    print("goals met: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in verdicts))


async def main_async(args: argparse.Namespace, log_dir: Path) -> None:
    reply_ms = int((max(args.calls) * 0.2 + args.seconds + 10) * 1000)
    _memoize_fake_audio(reply_ms)
    print(f"calls {args.calls}, {args.seconds:g} s each with all calls up; logs in {log_dir}")
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; latencies of frames sent in that window")
    print(HEADER)
    results: list[RunResult] = []
    for n in args.calls:
        for system in ("relay", "floor"):
            result = await run_system(system, n, args.seconds, reply_ms, log_dir)
            results.append(result)
            print(row(result), flush=True)
    summary(results)
    problems = [(r, line) for r in results for line in r.log_lines]
    if problems:
        print("\nWARNING/ERROR lines in the servers' logs (first 10):")
        for r, line in problems[:10]:
            print(f"  [{r.system} N={r.n}] {line[:200]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="25,50,100,125,150", help="comma-separated N (%(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds with all N calls up")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 calls, 5 s")
    parser.add_argument("--log-dir", default=None, help="where the servers' logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.seconds = "10", 5.0
    args.calls = [int(x) for x in str(args.calls).split(",") if x.strip()]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    logs = Path(arguments.log_dir or tempfile.mkdtemp(prefix="realtime_load_"))
    logs.mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(arguments, logs))
