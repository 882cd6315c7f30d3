"""The cascaded path for one call: VAD → STT → streaming chat (with tools) → sentence TTS → Twilio.

It is a `CallSession` (relay.sessions.call), like the realtime session, so the call can start
here (RELAY_MODE=cascade) or move here mid-way, carrying the conversation. It takes its HTTP
client and model/deployment names from the provider adapter: with Azure, every byte stays in the
Azure resource.

`CascadeSession` is one object built in layers, one module each: `cascade.reply` (one reply, the
pipelined turn: STT, streaming chat with tool calls through `cascade.tool_calls`, sentence TTS),
`cascade.playout` (a reply's audio to Twilio, barge-in, the history kept to what was heard), and
this module (the session: what the call sees of it, and the Twilio side it listens to). Caller
speech during playback (barge-in) clears Twilio's queue, cancels the chat and TTS streams, and the
history keeps only what was heard.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Sequence
from typing import Any

from cascade.reply import ReplyPipeline, Verbatim
from cascade.tool_calls import ToolCalls
from cascade.vad import SpeechStarted, TurnDetector, Utterance
from relay.config import Settings
from relay.errors import ProviderError
from relay.sessions.call import AgentSwitch, CallStats, EffectSink, Turn, TwilioSink
from relay.sessions.dtmf import DigitCollector, EntryTimer
from relay.sessions.effects import PlaybackIdle
from relay.sessions.heard import SpokenItems
from relay.sessions.hold import HoldTone
from relay.sessions.playback import HeardLatency, PlaybackTracker
from relay.sessions.providers import ProviderAdapter
from relay.twilio_messages import Dtmf, Mark, Media, Start, Stop


class CascadeSession(ReplyPipeline):
    """Runs one call on STT → LLM → TTS until either side ends."""

    def __init__(
        self,
        *,
        settings: Settings,
        adapter: ProviderAdapter,
        start: Start,
        twilio: TwilioSink,
        tools: list[dict[str, Any]],
        on_effect: EffectSink,
        history: Sequence[Turn] = (),
        greet: bool = True,
        unheard: Sequence[Media] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`unheard`: the caller's frames (oldest first) that the realtime provider this call falls
        back from may never have heard; they go to the VAD first, so a question asked while it was
        frozen is answered here."""
        self.settings = settings
        self.start = start
        self.twilio = twilio
        self.client = adapter.cascade_client()
        self.models = adapter.cascade_models()
        self.tools = tools
        self.on_effect = on_effect
        self.clock = clock
        self.greet = greet
        self._unheard = unheard
        self.detector = TurnDetector(
            silence_ms=settings.cascade_silence_ms,
            min_speech_ms=settings.cascade_min_speech_ms,
            aggressiveness=settings.cascade_vad_aggressiveness,
        )
        self.playback = PlaybackTracker(prefix="c")
        self.messages = [{"role": "system", "content": settings.instructions}]
        self.messages += [{"role": role, "content": text} for role, text in history]
        self.stats = CallStats(path="cascade")
        self.timings = self.stats.turn_timings  # per turn: vad_end, stt_sent, … first_frame
        self._t0 = clock()
        self._reply = None
        self._reply_items = []  # this reply's sentences, as spoken items
        self._spoken = SpokenItems()
        self._tool_calls = ToolCalls(on_effect)
        self._reply_text = None  # a finished reply, saved once its audio has played
        self._turn = 0
        self.hold_tone = HoldTone(self.playback, start.stream_sid)
        self._digits = DigitCollector(settings.dtmf_timeout_ms / 1000)
        self._key_timer = EntryTimer(clock, self._keys_due)
        self._failure = None
        self._failed = asyncio.Event()
        self._last_words = False  # `say(last=True)`: the other side is not heard any more
        self.heard = HeardLatency(self.playback, self.stats.heard_latencies_ms)

    # --- what the call sees (CallSession) -------------------------------------------------------
    @property
    def playing(self) -> bool:
        """True while the agent is speaking or about to."""
        return self.playback.outstanding or (self._reply is not None and not self._reply.done())

    async def hold(self) -> None:
        """A tool is slow: play the soft hold tone (kept topped up) until the answer starts."""
        if self.playback.outstanding or self.hold_tone.active:
            return
        await self._send_all(self.hold_tone.start(f"hold:{self._turn}", self.clock()))

    async def play(self, ulaw: bytes, label: str) -> None:
        await self._send_marked(label, ulaw)

    async def say(self, text: str, *, last: bool = False) -> None:
        """Interrupts the agent and says `text` as it is. `last`: the call's last words (a
        voicemail message): what the other side says or types is not heard any more."""
        if self.playing:
            await self._barge_in()
        self._last_words = self._last_words or last
        self._start_reply(Verbatim(text))

    async def tool_finished(self, call_id: str, output: str) -> None:
        self._tool_calls.finished(call_id, output)

    def unheard_audio(self) -> list[Media]:
        return []  # the cascade hears every frame it is given

    async def run(self) -> str:
        """Runs until Twilio ends the call; raises ProviderError if the cascade itself fails."""
        reader = asyncio.create_task(self._read_twilio())
        failed = asyncio.create_task(self._failed.wait())
        if self.greet:
            self._start_reply(None)
        for media in self._unheard:  # before the reader takes the next live frame
            await self._hear(base64.b64decode(media.payload), media.timestamp + media.size // 8)
        self._unheard = ()
        try:
            done, _ = await asyncio.wait({reader, failed}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                return reader.result()
            raise ProviderError(f"the cascade failed: {self._failure!r}", retryable=False)
        finally:
            self._key_timer.cancel()
            for task in (reader, failed, self._reply):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                reader, failed, *([self._reply] if self._reply else []), return_exceptions=True
            )
            self._settle_reply(self.clock())

    # --- Twilio side ----------------------------------------------------------------------------
    async def _read_twilio(self) -> str:
        while (event := await self.twilio.receive()) is not None:
            if isinstance(event, Media):
                self.stats.frames_in += 1
                # the detector's clock is the time of a chunk's last sample: Twilio stamps its start
                await self._hear(base64.b64decode(event.payload), event.timestamp + event.size // 8)
            elif isinstance(event, Mark):
                now = self.clock()
                if not self.playback.on_mark(event.name, now):
                    continue
                self.heard.mark(now)
                await self._send_all(self.hold_tone.feed(now))  # a slow tool's hold tone stays topped up
                if not self.playback.outstanding:
                    self._settle_reply(now)
                    self.on_effect(PlaybackIdle())
            elif isinstance(event, Dtmf):
                await self._on_key(event.digit)
            elif isinstance(event, Stop):
                return "twilio_stop"
        return "twilio_closed"

    async def _on_key(self, digit: str) -> None:
        """A key press interrupts the agent like speech and joins the entry being typed."""
        if self._last_words:
            return
        if self.playing:
            await self._barge_in()
        entry = self._digits.press(digit, self.clock())
        self._key_timer.arm(self._digits.deadline)
        if entry is not None:
            self._start_reply(entry)

    async def _keys_due(self, now: float) -> None:
        """The entry being typed had its quiet time (DTMF_TIMEOUT_MS): the reply to it starts."""
        entry = self._digits.due(now)
        if entry is not None:
            self._start_reply(entry)

    async def _hear(self, ulaw: bytes, end_ms: int) -> None:
        if self._last_words:  # nothing interrupts or answers the call's last words
            return
        for turn_event in self.detector.feed(ulaw, end_ms):
            if isinstance(turn_event, SpeechStarted):
                if self.playing:
                    await self._barge_in()
            elif isinstance(turn_event, Utterance):
                if self.playing:
                    await self._barge_in()
                self._start_reply(turn_event)

    # --- handoff ----------------------------------------------------------------------------------
    async def hand_off(self, switch: AgentSwitch) -> bool:
        """Another agent takes the call: its instructions (the system message), tools, models and
        voice apply from the next request on. The handoff tool's output still goes to the chat
        model, so the answer to it is already the new agent's."""
        self.settings = switch.settings
        self.tools = switch.chat_tools
        self.client = switch.adapter.cascade_client()
        self.models = switch.adapter.cascade_models()
        self.messages[0] = {"role": "system", "content": switch.settings.instructions}
        return True
