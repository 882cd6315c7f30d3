"""The realtime bridge's I/O shell: sockets, tasks and writers around `BridgeCore`.

One reader task per socket feeds the core; one writer task per socket drains a queue. When either
side ends, the other is cancelled and everything is closed: a Twilio `stop` or disconnect closes
the provider socket at once (close timeout 1 s).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN

from relay.config import Settings
from relay.errors import (
    ProviderClosedError,
    ProviderConnectError,
    ProviderMalformedError,
    ProviderUnresponsiveError,
)
from relay.sessions import events as ev
from relay.sessions.bridge import (
    BridgeCore,
    Effect,
    Notice,
    RunTool,
    SaveTurn,
    append_event,
    opening_events,
)
from relay.sessions.dialects import Dialect, parse_event, session_update
from relay.sessions.liveness import CallerRing, Throttle, heartbeat_event, ring_frames
from relay.sessions.preconnect import discard, usable
from relay.sessions.providers import ProviderAdapter
from relay.twilio_messages import Dtmf, Mark, Media, Start, Stop

log = logging.getLogger("relay.realtime")

Clock = Callable[[], float]


def realtime_session(settings: Settings, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The GA session configuration for a Twilio call: μ-law both ways, no transcoding."""
    if settings.turn_detection == "semantic_vad":
        turn: dict[str, Any] = {"type": "semantic_vad", "eagerness": settings.vad_eagerness}
    else:
        turn = {
            "type": "server_vad",
            "threshold": settings.vad_threshold,
            "prefix_padding_ms": settings.vad_prefix_padding_ms,
            "silence_duration_ms": settings.vad_silence_duration_ms,
        }
    turn.update(create_response=True, interrupt_response=True)
    audio_in: dict[str, Any] = {"format": {"type": "audio/pcmu"}, "turn_detection": turn}
    if settings.input_transcription_model:
        audio_in["transcription"] = {"model": settings.input_transcription_model}
    audio_in["noise_reduction"] = (
        None if settings.noise_reduction == "off" else {"type": settings.noise_reduction}
    )
    voice = settings.openai_voice
    return {
        "type": "realtime",
        "instructions": settings.instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": {"format": {"type": "audio/pcmu"}, "voice": voice}},
        "tools": tools,
        "tool_choice": "auto",
    }


def opening(
    settings: Settings, tools: list[dict[str, Any]], dialect: Dialect
) -> tuple[dict[str, Any], str | None]:
    """What every new call's session opens with: its `session.update` in `dialect`, and the
    greeting's instructions (None when GREETING_ENABLED is off)."""
    greeting = None
    if settings.greeting_enabled and settings.greeting:
        greeting = f"{settings.instructions}\n\n{settings.greeting}"
    return session_update(realtime_session(settings, tools), dialect), greeting


async def connect_primed(
    adapter: ProviderAdapter, settings: Settings, tools: list[dict[str, Any]]
) -> ClientConnection:
    """An early connection (relay.sessions.preconnect): connected, and with REALTIME_EARLY_GREETING
    already configured and asked for the greeting, so the greeting is on its way (or waiting in
    the socket) before the call's stream starts. A socket the provider closes meanwhile is returned
    closed: the session then connects anew and greets by itself."""
    conn = await connect_with_retry(adapter)
    if settings.realtime_early_greeting:
        try:
            for text in opening_events(*opening(settings, tools, adapter.dialect)):
                await conn.send(text)
        except ConnectionClosed:
            pass
    return conn


@dataclass
class CallStats:
    """Per-call figures the manager turns into metrics and the record."""

    connect_ms: float | None = None
    first_audio_ms: float | None = None
    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    truncates: int = 0
    reconnects: int = 0
    prebuffer_dropped: int = 0
    bad_events: int = 0  # provider events that did not parse or had wrong types (dropped)
    heartbeats: int = 0  # heartbeats sent to a quiet provider
    faults: list[str] = field(default_factory=list)
    response_latencies_ms: list[float] = field(default_factory=list)  # caller's end of speech → agent audio
    turn_timings: list[dict[str, float]] = field(default_factory=list)  # cascade hops, per turn


class RealtimeSession:
    """Bridges one Twilio stream to one realtime provider connection."""

    def __init__(
        self,
        *,
        settings: Settings,
        adapter: ProviderAdapter,
        start: Start,
        twilio: Any,  # relay.media_stream.TwilioChannel
        tools: list[dict[str, Any]],
        on_effect: Callable[[Effect], None],
        clock: Clock = time.monotonic,
        early: asyncio.Task[ClientConnection] | None = None,
    ) -> None:
        """`early`: the provider connection opened during /incoming-call (relay.sessions.preconnect)."""
        self.settings = settings
        self.adapter = adapter
        self.start = start
        self.twilio = twilio
        self.clock = clock
        self.on_effect = on_effect
        update, greeting = opening(settings, tools, adapter.dialect)
        self.core = BridgeCore(stream_sid=start.stream_sid, session_update=update, greeting=greeting)
        self.stats = CallStats()
        self._provider: ClientConnection | None = None
        self._provider_q: asyncio.Queue[str] = asyncio.Queue()
        self._live: ClientConnection | None = None  # the socket being opened or bridged, for direct writes
        self._rotate = asyncio.Event()
        self._speech_ended_at: float | None = None
        self.turns: list[tuple[str, str]] = []  # (role, text) the caller heard, for a new session
        self._t0 = clock()
        self._early = early
        self.ended_by = ""
        # Liveness (relay.sessions.liveness): the provider's last valid event, on the clock and in
        # caller frames; the caller's recent frames; malformed events in a row.
        s = settings
        frames = ring_frames(
            s.provider_first_event_timeout, s.provider_heartbeat_after, s.provider_heartbeat_timeout
        )
        self.ring = CallerRing(frames)
        self._heard_at = -math.inf  # this connection's last valid event
        self._alive_frames = 0  # stats.frames_in at the provider's last valid event (any connection)
        self._pinged_at = -math.inf
        self._bad_streak = 0
        self._bad_ref = -math.inf
        self._bad_log = Throttle()
        self._faults_reopened = 0

    # --- plumbing -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Moves the core's outboxes to the writers' queues and carries out its effects."""
        to_twilio, to_provider, effects = self.core.drain()
        for text in to_twilio:
            self.twilio.send(text)
        for text in to_provider:
            self._provider_q.put_nowait(text)
        self._effects(effects)

    async def flush_now(self) -> None:
        """`flush` for the two readers, the audio path: each message is written at once from the
        reading task when nothing is queued for that socket (no queue hop, no task switch), else
        queued behind the others so order holds. Runs twice per 20 ms frame and call, so it reads
        the outboxes in place rather than through `drain`, and writes inline rather than through
        a helper coroutine.

        No lock between the provider's two lanes: websockets writes a message to the transport
        within `send`, before it waits for the buffer to drain, so messages go out in the order
        `send` was called (`write_now` writes at once too). A message that meets a closed socket
        is queued: the provider reader notices the close and reopens, and the queue goes to the
        new socket."""
        core = self.core
        if core.to_twilio:
            out, core.to_twilio = core.to_twilio, []
            for text in out:
                await self.twilio.write(text)
        if core.to_provider:
            out, core.to_provider = core.to_provider, []
            for text in out:
                conn = self._live
                if conn is None or self._provider_q.qsize():
                    self._provider_q.put_nowait(text)
                    continue
                if write_now(conn, text):
                    continue
                try:
                    await conn.send(text)
                except ConnectionClosed:
                    self._provider_q.put_nowait(text)
        if core.effects or self.stats.first_audio_ms is None:
            effects, core.effects = core.effects, []
            self._effects(effects)

    def _effects(self, effects: Iterable[Effect]) -> None:
        if self.stats.first_audio_ms is None and self.core.audio_chunks_out:
            self.stats.first_audio_ms = (self.clock() - self._t0) * 1000
        for effect in effects:
            if isinstance(effect, SaveTurn):
                self.turns.append((effect.role, effect.text))
            elif isinstance(effect, Notice):
                if effect.kind == "barge_in":
                    self.stats.barge_ins += 1
                elif effect.kind == "truncate":
                    self.stats.truncates += 1
                elif effect.kind == "fault":
                    self.stats.faults.append(str(effect.detail.get("code")))
                elif effect.kind == "session_expired":
                    self._rotate.set()
            self.on_effect(effect)

    @property
    def playing(self) -> bool:
        """True while agent audio is queued at Twilio."""
        return self.core.playback.outstanding

    def hold(self) -> None:
        """A tool is taking a while: let the caller hear a hold tone."""
        self.core.start_hold(self.clock())
        self.flush()

    def tool_finished(self, call_id: str, output: str) -> None:
        self.core.on_tool_output(call_id, output, self.clock())
        self.flush()

    # --- tasks ----------------------------------------------------------------------------------
    async def _read_twilio(self) -> str:
        receive, core, stats = self.twilio.receive, self.core, self.stats
        keep_payload, keep_timestamp = self.ring.keep_payload, self.ring.keep_timestamp
        while (event := await receive()) is not None:
            if type(event) is Media:
                stats.frames_in += 1
                keep_payload(event.payload)  # until the provider shows it heard it (CallerRing)
                keep_timestamp(event.timestamp)
                core.on_media(event)
            elif isinstance(event, Mark):
                core.on_mark(event.name, self.clock())
            elif isinstance(event, Stop):
                return "twilio_stop"
            elif isinstance(event, Dtmf):
                log.info("caller pressed %s", event.digit)
                continue
            else:
                continue
            await self.flush_now()
        return "twilio_closed"

    async def _read_provider(self, conn: ClientConnection) -> str:
        dialect, core, stats, clock = self.adapter.dialect, self.core, self.stats, self.clock
        audio_out, recv = ev.AudioOut, conn.recv
        try:
            while True:
                # `recv`, not `async for`: no async generator step per message; and bytes, which
                # orjson reads as they are, not decoded into a str first.
                data = await recv(decode=False)
                try:
                    event = parse_event(data, dialect)
                except ValueError as exc:
                    self._malformed(exc, data)  # raises ProviderMalformedError on a flood
                    continue
                now = self._heard_at = clock()
                self._alive_frames = stats.frames_in
                if type(event) is audio_out:
                    stats.frames_out += 1
                    if self._speech_ended_at is not None:
                        stats.response_latencies_ms.append((now - self._speech_ended_at) * 1000)
                        self._speech_ended_at = None
                elif isinstance(event, ev.SpeechEnded):
                    self._speech_ended_at = now
                elif isinstance(event, ev.Interrupted):
                    self._speech_ended_at = None
                core.on_backend(event, now)
                await self.flush_now()
        except ConnectionClosed:
            pass
        code = conn.close_code
        raise ProviderClosedError(
            f"{self.adapter.display_name} closed the realtime connection (code {code}, "
            f"reason {conn.close_reason!r})",
            status=None,
        )

    def _malformed(self, exc: ValueError, data: bytes | str) -> None:
        """A provider event that does not parse: logged (rate-limited), counted, dropped. More than
        PROVIDER_MALFORMED_LIMIT in a row, with no valid event between them, is a fault."""
        self.stats.bad_events += 1
        if self._bad_ref != self._heard_at:  # a valid event came since the last malformed one
            self._bad_streak, self._bad_ref = 0, self._heard_at
        self._bad_streak += 1
        n = self._bad_log.hit(self.clock())
        if n == 1:
            log.warning("dropped a malformed provider event (%s): %.80r", exc, data)
        elif n > 1:
            log.warning(
                "dropped %d more malformed provider events in the last %.0f s (latest: %s)",
                n,
                self._bad_log.every,
                exc,
            )
        limit = self.settings.provider_malformed_limit
        if self._bad_streak > limit:
            raise ProviderMalformedError(
                f"{self.adapter.display_name} sent {self._bad_streak} malformed events in a row "
                f"(PROVIDER_MALFORMED_LIMIT={limit}); last: {exc}"
            )

    async def _watch(self, started: float) -> None:
        """The connection's liveness, from `started` (when this session began reading it): a first
        valid event within PROVIDER_FIRST_EVENT_TIMEOUT; then, after PROVIDER_HEARTBEAT_AFTER of
        quiet, a heartbeat that any valid event within PROVIDER_HEARTBEAT_TIMEOUT answers. Sleeps
        until the next deadline: one wake-up per quiet period, nothing per frame. Raises
        ProviderUnresponsiveError."""
        s, clock, name = self.settings, self.clock, self.adapter.display_name
        heartbeat = heartbeat_event(self.adapter.dialect)
        while True:
            now, heard = clock(), self._heard_at
            if heard < started:  # nothing valid from this connection yet
                due = started + s.provider_first_event_timeout
                if now >= due:
                    raise ProviderUnresponsiveError(
                        f"{name} sent no event within {s.provider_first_event_timeout:g} s of the "
                        "session start (PROVIDER_FIRST_EVENT_TIMEOUT)"
                    )
            elif self._pinged_at > heard:  # a heartbeat is out, unanswered so far
                due = self._pinged_at + s.provider_heartbeat_timeout
                if now >= due:
                    raise ProviderUnresponsiveError(
                        f"{name} stopped answering: nothing for {now - heard:.1f} s, and no answer to a "
                        f"heartbeat within {s.provider_heartbeat_timeout:g} s (PROVIDER_HEARTBEAT_TIMEOUT)"
                    )
            else:
                due = heard + s.provider_heartbeat_after
                if now >= due:
                    self._pinged_at = now
                    self.stats.heartbeats += 1
                    self.core.to_provider.append(heartbeat)
                    self.flush()
                    continue
            await asyncio.sleep(due - now)

    def unheard_audio(self) -> list[Media]:
        """The caller's frames since the provider's last valid event, at most `ring_frames` of them:
        what a provider that turned out dead may never have heard."""
        return self.ring.since(self.stats.frames_in, self._alive_frames)

    async def _write_provider(self, conn: ClientConnection) -> None:
        queue = self._provider_q
        while True:
            text = await queue.get()
            await conn.send(text)

    async def _tick(self, deadline: float) -> None:
        """Every half second: retry held-back responses; forget the caller frames the provider has
        shown it heard; past the session cap, ask for a rotation at the first quiet moment (no
        response active, nothing queued at Twilio)."""
        while True:
            await asyncio.sleep(0.5)
            now = self.clock()
            self.core.tick(now)
            self.flush()
            self.ring.trim(self.stats.frames_in, self._alive_frames)
            quiet = not self.core.response_active and not self.core.playback.outstanding
            if now >= deadline and quiet:
                self._rotate.set()

    async def _connect(self, *, first: bool) -> tuple[ClientConnection, bool]:
        """The early connection made during /incoming-call when there is one and it is still open,
        else a new one; and whether it was configured already (`connect_primed`)."""
        early, self._early = self._early, None
        if first and early is not None:
            conn = await early  # its failure is the connect's failure
            if usable(conn):
                return conn, self.settings.realtime_early_greeting
            log.info("the early provider connection closed while waiting for the stream; reconnecting")
        return await connect_with_retry(self.adapter), False

    def _early_open(self) -> bool:
        """True when the connection made during /incoming-call is there and still open."""
        early = self._early
        if early is None or not early.done() or early.cancelled() or early.exception() is not None:
            return False
        return usable(early.result())

    async def _open(self, *, first: bool) -> ClientConnection:
        conn, configured = await self._connect(first=first)
        if first:
            self.stats.connect_ms = (self.clock() - self._t0) * 1000
        carried: list[str] = []
        queued = []
        while not self._provider_q.empty():
            queued.append(self._provider_q.get_nowait())
        if first:
            carried += queued
        else:  # the conversation so far, what was queued for the old socket, then the caller's audio
            carried += history_events(self.turns, self.adapter.dialect)  # since its last sign of life
            carried += [text for text in queued if not text.startswith(AUDIO_APPEND)]
            carried += [append_event(media.payload) for media in self.unheard_audio()]
            self.core.drop_buffered_audio()  # those frames are in the ring's share too
        self.core.provider_opened(self.clock(), greet=first, carried=carried, configured=configured)
        if self.core.prebuffer_dropped:
            log.warning(
                "slow provider connect: %d frames (%d ms) of the caller's first audio were dropped",
                self.core.prebuffer_dropped,
                self.core.prebuffer_dropped * 20,
            )
            self.stats.prebuffer_dropped += self.core.prebuffer_dropped
            self.core.prebuffer_dropped = 0
        # Written at once rather than by the writer task, which only starts with the bridge a loop
        # turn or two later: under load every loop turn the greeting waits is milliseconds.
        self._live = conn
        await self.flush_now()
        return conn

    async def _bridge(self, conn: ClientConnection, twilio_reader: asyncio.Task[str]) -> str:
        """Runs one provider connection (`_open` made it `_live`); returns why it stopped: a Twilio
        outcome or 'rotate'."""
        self._rotate.clear()
        cap = self.settings.realtime_session_max_minutes * 60
        started = self.clock()
        self._heard_at = self._pinged_at = self._bad_ref = -math.inf
        self._bad_streak = 0
        reader = asyncio.create_task(self._read_provider(conn))
        rotate = asyncio.create_task(self._rotate.wait())
        watch = asyncio.create_task(self._watch(started))
        helpers = [
            asyncio.create_task(self._write_provider(conn)),
            asyncio.create_task(self._tick(started + cap)),
        ]
        try:
            done, _ = await asyncio.wait(
                {twilio_reader, reader, rotate, watch}, return_when=asyncio.FIRST_COMPLETED
            )
            if twilio_reader in done:
                return twilio_reader.result()
            if reader in done:
                reader.result()  # raises ProviderClosedError or ProviderMalformedError
            if watch in done:
                watch.result()  # raises ProviderUnresponsiveError
            return "rotate"
        finally:
            self._live = None
            for task in (reader, rotate, watch, *helpers):
                task.cancel()
            await asyncio.gather(reader, rotate, watch, *helpers, return_exceptions=True)

    async def run(self) -> str:
        """Runs the call until either side ends; returns why it ended.

        Before the provider's session cap (REALTIME_SESSION_MAX_MINUTES), on `session_expired`,
        or when the provider drops mid-call, a new connection is opened at once and given the
        conversation so far; the caller hears at most a short pause. A provider that cannot be
        reopened raises ProviderError for the manager.
        """
        twilio_reader = asyncio.create_task(self._read_twilio())
        connect: asyncio.Task[ClientConnection] | None = None
        conn: ClientConnection | None = None
        try:
            if self._early_open():
                # The connection made during /incoming-call is up: configure it and ask for the
                # greeting in this very step, and read it from the next (a connect task and a wait
                # would cost loop turns, milliseconds each under load, on the greeting's way).
                conn = self._provider = await self._open(first=True)
            else:
                connect = asyncio.create_task(self._open(first=True))
                done, _ = await asyncio.wait({connect, twilio_reader}, return_when=asyncio.FIRST_COMPLETED)
                if twilio_reader in done:
                    self.ended_by = twilio_reader.result()
                    return self.ended_by
                conn = self._provider = connect.result()  # raises ProviderConnectError
            while True:
                try:
                    outcome = await self._bridge(conn, twilio_reader)
                except ProviderClosedError as exc:
                    log.warning("%s; reopening with the conversation so far", exc)
                    outcome = "reconnect"
                except (ProviderUnresponsiveError, ProviderMalformedError) as exc:
                    # A connection that never answered is not retried (a silent service: the cascade
                    # serves the call); one that worked and then froze or spewed garbage is reopened
                    # once per call, and the next such fault falls back.
                    self.stats.faults.append(type(exc).__name__)
                    if self._heard_at == -math.inf or self._faults_reopened >= 1:
                        raise
                    self._faults_reopened += 1
                    log.warning("%s; reopening once with the conversation so far", exc)
                    outcome = "reconnect"
                if outcome not in ("rotate", "reconnect"):
                    self.ended_by = outcome
                    return outcome
                self.core.provider_lost()
                old = conn
                conn = self._provider = await self._open(first=False)  # raises ProviderConnectError
                self.stats.reconnects += 1
                log.info("realtime session replaced (%s); %d turns carried over", outcome, len(self.turns))
                await old.close()
        finally:
            twilio_reader.cancel()
            await asyncio.gather(twilio_reader, return_exceptions=True)
            if conn is None and connect is not None:  # cancelled, or closed if it opened as the call ended
                await discard(connect)
            if conn is not None:
                await conn.close()
            if self._early is not None:  # the call ended before its connect even started
                await discard(self._early)
                self._early = None
            if left_out := self._bad_log.flush():
                log.warning("dropped %d more malformed provider events", left_out)
            self.core.finish(self.clock())
            self.flush()


AUDIO_APPEND = '{"type":"input_audio_buffer.append"'  # how bridge.append_event starts


def write_now(conn: ClientConnection, text: str) -> bool:
    """Writes one text message at once, without `conn.send`'s context, when the connection is open
    and its transport neither closing nor paused; False (nothing written) otherwise, and the
    caller then uses `conn.send`, which waits for the buffer to drain or raises ConnectionClosed.

    This is what `send` does on that path (frame the message, write it to the transport), without
    an async context manager, a `drain` coroutine and their frames per message: 2.2-2.4 µs less per
    message in a warm loop (bench/ws_send.py), for 50 messages a second per call. It relies on
    websockets' `protocol`, `paused` and `send_data` (pinned below 16 in pyproject.toml)."""
    if conn.protocol.state is not OPEN or conn.paused or conn.transport.is_closing():
        return False
    conn.protocol.send_text(text.encode())
    conn.send_data()
    return True


async def connect_with_retry(adapter: ProviderAdapter) -> ClientConnection:
    """Connects; a 5xx answer is retried once at once (a 4xx or a timeout is final)."""
    try:
        return await adapter.connect_realtime()
    except ProviderConnectError as exc:
        if exc.status is None or exc.status < 500:
            raise
        log.warning("%s; retrying once", exc)
        return await adapter.connect_realtime()


def history_events(turns: list[tuple[str, str]], dialect: str, max_turns: int = 40) -> list[str]:
    """The conversation so far as `conversation.item.create` events, for a new realtime session."""
    text_type = {"user": "input_text", "assistant": "output_text" if dialect == "ga" else "text"}
    events = []
    for role, text in turns[-max_turns:]:
        item = {"type": "message", "role": role, "content": [{"type": text_type[role], "text": text}]}
        events.append(orjson.dumps({"type": "conversation.item.create", "item": item}).decode())
    return events


__all__ = [
    "CallStats",
    "RealtimeSession",
    "RunTool",
    "SaveTurn",
    "connect_primed",
    "connect_with_retry",
    "opening",
    "realtime_session",
    "write_now",
]
