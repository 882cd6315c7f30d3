"""The realtime session: the I/O shell around `BridgeCore` for one call.

Two reader tasks, one per socket, feed the core; after every input the shell takes the core's
output through its one exit (`BridgeCore.drain`) and sends it: text to Twilio through the call's
`TwilioSink`, text to the provider through its `ProviderSocket` (each keeps its own order), and
effects to the call (`on_effect`). When either side ends, the other is cancelled and everything is
closed: a Twilio `stop` or disconnect closes the provider socket at once (close timeout 1 s).

Before the provider's session cap (REALTIME_SESSION_MAX_MINUTES), on `session_expired`, or when
the provider drops or stops answering mid-call, a new connection is opened at once and given the
conversation so far; the caller hears at most a short pause.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Callable
from typing import NoReturn

from relay.config import Settings
from relay.errors import (
    ProviderClosedError,
    ProviderMalformedError,
    ProviderUnresponsiveError,
)
from relay.sessions import events as ev
from relay.sessions.bridge import BridgeCore
from relay.sessions.call import AgentSwitch, CallStats, EffectSink, Turn, TwilioSink
from relay.sessions.client_events import AUDIO_APPEND, append_event
from relay.sessions.dialects import parse_event
from relay.sessions.dtmf import EntryTimer
from relay.sessions.early import discard
from relay.sessions.effects import Effect, PrebufferDropped, SessionExpired
from relay.sessions.liveness import Liveness, heartbeat_event
from relay.sessions.providers import ProviderAdapter
from relay.sessions.realtime_setup import Opening, connect_with_retry, history_events
from relay.sessions.realtime_turns import RealtimeTurns
from relay.tracing import NO_SPAN, Span
from relay.transport.provider import ProviderSocket
from relay.twilio_messages import Dtmf, Mark, Media, Start, Stop

log = logging.getLogger("relay.realtime")

TICK_S = 0.5


class RealtimeSession:
    """Bridges one Twilio stream to a realtime provider connection (a `CallSession`)."""

    def __init__(
        self,
        *,
        settings: Settings,
        adapter: ProviderAdapter,
        start: Start,
        twilio: TwilioSink,
        opening: Opening,
        on_effect: EffectSink,
        history: list[Turn],
        clock: Callable[[], float] = time.monotonic,
        early: asyncio.Task[ProviderSocket] | None = None,
        trace: Span = NO_SPAN,
    ) -> None:
        """`history`: the call's turns so far (the call appends to it as `SaveTurn`s come), given
        to a replacement connection. `early`: the early connection opened during /incoming-call
        (relay.sessions.early). `trace`: the call's, for a `provider.connect` span per connection
        this session opens."""
        self.settings = settings
        self.adapter = adapter
        self.twilio = twilio
        self.clock = clock
        self.on_effect = on_effect
        self.history = history
        self.core = BridgeCore(
            stream_sid=start.stream_sid,
            session_update=opening.session_update,
            greeting=opening.greeting,
            dtmf_timeout_s=settings.dtmf_timeout_ms / 1000,
        )
        self.stats = CallStats(path="realtime")
        self.live = Liveness(settings, adapter.display_name, clock)
        self._socket: ProviderSocket | None = None  # the connection being bridged
        self._held: list[str] = []  # for the provider while no connection is bridged
        self._early = early
        self.trace = trace
        self._rotate = asyncio.Event()
        # server VAD reports the end of speech after this much silence (semantic VAD: no fixed window)
        silence_s = (
            settings.vad_silence_duration_ms / 1000 if settings.turn_detection == "server_vad" else 0.0
        )
        self.turns = RealtimeTurns(self.stats, self.core.playback, silence_s)
        self._t0 = clock()
        self._faults_reopened = 0
        self._key_timer = EntryTimer(clock, self._keys_due)
        self._handed_off = False  # a handoff to another connection: the new agent speaks when it opens

    # --- what the call sees (CallSession) -------------------------------------------------------
    @property
    def playing(self) -> bool:
        return self.core.playing

    async def hold(self) -> None:
        self.core.start_hold(self.clock())
        await self._flush()

    async def say(self, text: str, *, last: bool = False) -> None:
        self.core.say_now(text, self.clock(), last=last)
        await self._flush()

    async def play(self, ulaw: bytes, label: str) -> None:
        self.core.play_local(label, base64.b64encode(ulaw).decode(), self.clock())
        await self._flush()

    async def tool_finished(self, call_id: str, output: str) -> None:
        self.core.on_tool_output(call_id, output, self.clock())
        await self._flush()

    def unheard_audio(self) -> list[Media]:
        return self.live.unheard(self.stats.frames_in)

    async def hand_off(self, switch: AgentSwitch) -> bool:
        """Another agent takes the call. On the same connection, a `session.update` with its
        instructions and tools (the voice stays: it cannot change once the session has spoken) goes
        out now, before the tool's output, so the answer to it is the new agent's. Otherwise the
        connection is replaced at once, as a rotation is, by one of the new agent's provider,
        configured as it is and given the conversation so far; the new agent then speaks first."""
        if not switch.reconnect and self._socket is not None:
            self.core.change_session(switch.opening.session_update, now_too=True)
            await self._flush()
            return True
        # (a handoff while the connection is being replaced takes effect on the replacement)
        if switch.reconnect:
            self.settings, self.adapter = switch.settings, switch.adapter
            self.live.name = switch.adapter.display_name
            self._rotate.set()
        self.core.change_session(switch.opening.session_update, now_too=False)
        self._handed_off = True
        return False

    # --- the core's output ----------------------------------------------------------------------
    async def _flush(self) -> None:
        """Sends what the core's last inputs produced, in order, and hands the call its effects."""
        to_twilio, to_provider, effects = self.core.drain()
        if to_twilio:
            send = self.twilio.send
            for text in to_twilio:
                await send(text)
        if to_provider:
            socket = self._socket
            if socket is None:
                self._held += to_provider
            else:
                for text in to_provider:
                    await socket.send(text)
        if effects:
            self._effects(effects)

    def _effects(self, effects: list[Effect]) -> None:
        for effect in effects:
            if type(effect) is SessionExpired:
                self._rotate.set()
            elif type(effect) is PrebufferDropped:
                log.warning(
                    "slow provider connect: %d frames (%d ms) of the caller's first audio were dropped",
                    effect.frames,
                    effect.frames * 20,
                )
                self.stats.prebuffer_dropped += effect.frames
            else:
                self.on_effect(effect)

    # --- tasks ----------------------------------------------------------------------------------
    async def _read_twilio(self) -> str:
        receive, core, stats, flush, turns = (
            self.twilio.receive,
            self.core,
            self.stats,
            self._flush,
            self.turns,
        )
        keep_payload, keep_timestamp = self.live.ring.keep_payload, self.live.ring.keep_timestamp
        while (event := await receive()) is not None:
            if type(event) is Media:
                stats.frames_in += 1
                keep_payload(event.payload)  # until the provider shows it heard it (CallerRing)
                keep_timestamp(event.timestamp)
                core.on_media(event)
            elif isinstance(event, Mark):
                now = self.clock()
                core.on_mark(event.name, now)
                turns.mark(now)
            elif isinstance(event, Stop):
                return "twilio_stop"
            elif isinstance(event, Dtmf):
                core.on_dtmf(event.digit, self.clock())
                self._key_timer.arm(core.dtmf_deadline)
            else:
                continue
            await flush()
        return "twilio_closed"

    async def _keys_due(self, now: float) -> None:
        """The entry being typed had its quiet time (DTMF_TIMEOUT_MS): it goes to the model now."""
        self.core.dtmf_due(now)
        await self._flush()

    async def _read_provider(self, socket: ProviderSocket) -> NoReturn:
        dialect, core, stats, clock, live = self.adapter.dialect, self.core, self.stats, self.clock, self.live
        audio_out, receive, flush, turns = ev.AudioOut, socket.receive, self._flush, self.turns
        while (data := await receive()) is not None:
            try:
                event = parse_event(data, dialect)
            except ValueError as exc:
                stats.bad_events += 1
                live.malformed(exc, data)  # raises ProviderMalformedError on a flood
                continue
            now = live.heard_at = clock()
            live.alive_frames = stats.frames_in
            if type(event) is audio_out:
                stats.frames_out += 1
                if turns.waiting:
                    turns.first_audio(event.item_id, now)
                if stats.first_audio_ms is None:
                    stats.first_audio_ms = (now - self._t0) * 1000
            elif isinstance(event, ev.SpeechEnded):
                turns.speech_stopped(event.audio_end_ms, now)
            elif isinstance(event, ev.Interrupted):
                turns.interrupted()
            core.on_backend(event, now)
            await flush()
        raise ProviderClosedError(
            f"{self.adapter.display_name} closed the realtime connection (code {socket.close_code}, "
            f"reason {socket.close_reason!r})",
            status=None,
        )

    async def _ping(self) -> None:
        """A heartbeat for a quiet provider (relay.sessions.liveness)."""
        self.stats.heartbeats += 1
        self.core.heartbeat(heartbeat_event(self.adapter.dialect))
        await self._flush()

    async def _tick(self, deadline: float) -> None:
        """Every half second: retry held-back responses; forget the caller frames the provider has
        shown it heard; past the session cap, ask for a rotation at the first quiet moment."""
        while True:
            await asyncio.sleep(TICK_S)
            now = self.clock()
            self.core.tick(now)
            await self._flush()
            self.live.trim(self.stats.frames_in)
            if now >= deadline and self.core.quiet:
                self._rotate.set()

    # --- connections ----------------------------------------------------------------------------
    async def _connect(self, *, first: bool, why: str) -> tuple[ProviderSocket, bool]:
        """The early connection when there is one and it is still open, else a new one (`why`: the
        first, or a replacement after a rotation, a fault or a handoff); and whether it was sent
        the opening events already (REALTIME_EARLY_GREETING)."""
        early, self._early = self._early, None
        if first and early is not None:
            socket = await early  # its failure is the connect's failure (its span is the manager's)
            if socket.open:
                return socket, self.settings.realtime_early_greeting
            log.info("the early provider connection closed while waiting for the stream; reconnecting")
        with self.trace.span("provider.connect", why=why, provider=self.adapter.vendor):
            return await connect_with_retry(self.adapter), False

    def _early_ready(self) -> bool:
        """True when the early connection is there and still open."""
        early = self._early
        if early is None or not early.done() or early.cancelled() or early.exception() is not None:
            return False
        return early.result().open

    async def _open(self, *, first: bool, why: str = "first") -> ProviderSocket:
        socket, opened_early = await self._connect(first=first, why=why)
        if first:
            self.stats.connect_ms = (self.clock() - self._t0) * 1000
        held, self._held = self._held, []
        if first:
            carried = held
        else:  # the conversation so far, what was held for the provider, then the caller's audio
            carried = history_events(self.history, self.adapter.dialect)  # since its last sign of life
            carried += [text for text in held if not text.startswith(AUDIO_APPEND)]
            unheard = self.unheard_audio()
            carried += [append_event(media.payload) for media in unheard]
            self.core.drop_buffered_audio()  # those frames are in the ring's share too
            self.turns.frame0 = self.stats.frames_in - len(unheard)
        self.core.provider_opened(self.clock(), greet=first, carried=carried, early=opened_early)
        # Sent from this task at once, not by a task of its own that would start a loop turn or two
        # later: under load every loop turn the greeting waits is milliseconds.
        self._socket = socket
        await self._flush()
        if first:  # its audio is every caller frame but those the prebuffer had to drop
            self.turns.frame0 = self.stats.prebuffer_dropped
        return socket

    async def _bridge(self, socket: ProviderSocket, twilio_reader: asyncio.Task[str]) -> str:
        """Runs one provider connection (`_open` made it the bridged one); returns why it stopped:
        a Twilio outcome or 'rotate'."""
        self._rotate.clear()
        cap = self.settings.realtime_session_max_minutes * 60
        started = self.clock()
        self.live.new_connection()
        reader = asyncio.create_task(self._read_provider(socket))
        rotate = asyncio.create_task(self._rotate.wait())
        watch = asyncio.create_task(self.live.watch(started, self._ping))
        tick = asyncio.create_task(self._tick(started + cap))
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
            self._socket = None
            for task in (reader, rotate, watch, tick):
                task.cancel()
            await asyncio.gather(reader, rotate, watch, tick, return_exceptions=True)

    def _replace_after(self, exc: Exception) -> str:
        """Whether a provider fault is worth one more connection: 'reconnect', or raises."""
        if isinstance(exc, ProviderClosedError):
            log.warning("%s; reopening with the conversation so far", exc)
            return "reconnect"
        # A connection that never answered is not retried (a silent service: the cascade serves the
        # call); one that worked and then froze or spewed garbage is reopened once per call, and
        # the next such fault falls back.
        self.stats.faults.append(type(exc).__name__)
        if self.live.heard_at == -math.inf or self._faults_reopened >= 1:
            raise exc
        self._faults_reopened += 1
        log.warning("%s; reopening once with the conversation so far", exc)
        return "reconnect"

    async def run(self) -> str:
        """Runs the call until either side ends; returns why it ended. A provider that cannot be
        (re)opened raises ProviderError for the call to fall back on."""
        twilio_reader = asyncio.create_task(self._read_twilio())
        connect: asyncio.Task[ProviderSocket] | None = None
        socket: ProviderSocket | None = None
        try:
            if self._early_ready():
                # The early connection is up: configure it and ask for the greeting in this very
                # step, and read it from the next (a connect task and a wait would cost loop turns,
                # milliseconds each under load, on the greeting's way).
                socket = await self._open(first=True)
            else:
                connect = asyncio.create_task(self._open(first=True))
                done, _ = await asyncio.wait({connect, twilio_reader}, return_when=asyncio.FIRST_COMPLETED)
                if twilio_reader in done:
                    return twilio_reader.result()
                socket = connect.result()  # raises ProviderConnectError
            while True:
                try:
                    outcome = await self._bridge(socket, twilio_reader)
                except (ProviderClosedError, ProviderUnresponsiveError, ProviderMalformedError) as exc:
                    outcome = self._replace_after(exc)
                if outcome not in ("rotate", "reconnect"):
                    return outcome
                self.core.provider_lost()
                old = socket
                self._held[:0] = old.unsent()  # older than what was held since
                why = "handoff" if self._handed_off else outcome
                socket = await self._open(first=False, why=why)  # raises ProviderConnectError
                self.stats.reconnects += 1
                log.info("realtime session replaced (%s); %d turns carried over", why, len(self.history))
                if self._handed_off:  # the new agent's first words, with the conversation so far
                    self._handed_off = False
                    self.core.respond(self.clock())
                    await self._flush()
                await old.close()
        finally:
            twilio_reader.cancel()
            self._key_timer.cancel()
            await asyncio.gather(twilio_reader, return_exceptions=True)
            if socket is None and connect is not None:  # cancelled, or closed if it opened as the call ended
                await discard(connect)
            if socket is not None:
                await socket.close()
            if self._early is not None:  # the call ended before its connect even started
                await discard(self._early)
                self._early = None
            if left_out := self.live.bad_log.flush():
                log.warning("dropped %d more malformed provider events", left_out)
            self.core.finish(self.clock())
            await self._flush()


__all__ = ["RealtimeSession"]
