"""The cascaded path for one call: VAD → STT → streaming chat (with tools) → sentence TTS → Twilio.

It is a `CallSession` (relay.sessions.call), like the realtime session, so the call can start
here (RELAY_MODE=cascade) or move here mid-way, carrying the conversation. It takes its HTTP
client and model/deployment names from the provider adapter: with Azure, every byte stays in the
Azure resource.

Pipelining: the chat stream is split into sentences as it arrives; each sentence goes to TTS while
the model keeps writing, and TTS audio is resampled and framed as it streams, so the caller hears
the first sentence before the answer is complete. Caller speech during playback (barge-in) clears
Twilio's queue, cancels the chat and TTS streams, and the history keeps only what was heard.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cascade.llm import ToolCallsDone, assistant_tool_calls_message, stream_chat, tool_result_message
from cascade.sentences import SentenceChunker
from cascade.stt import transcribe
from cascade.tts import PcmToTwilio, synthesize
from cascade.vad import SpeechStarted, TurnDetector, Utterance
from relay.config import Settings
from relay.errors import ProviderError
from relay.sessions import events as ev
from relay.sessions.call import AgentSwitch, CallStats, EffectSink, Turn, TwilioSink
from relay.sessions.dtmf import DigitCollector, EntryTimer, entry_text
from relay.sessions.effects import BargeIn, PlaybackIdle, ResponseDone, Role, RunTool, SaveTurn
from relay.sessions.heard import SpokenItems
from relay.sessions.hold import HoldTone
from relay.sessions.playback import PlaybackTracker
from relay.sessions.providers import ProviderAdapter
from relay.twilio_messages import Dtmf, Mark, Media, Start, Stop, clear_message, mark_message, media_message

log = logging.getLogger("relay.cascade")

MAX_TOOL_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class Verbatim:
    """A reply that is a given text, not the chat model's answer."""

    text: str


class CascadeSession:
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
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": settings.instructions}]
        self.messages += [{"role": role, "content": text} for role, text in history]
        self.stats = CallStats()
        self.timings = self.stats.turn_timings  # per turn: vad_end, stt_sent, … first_frame
        self._t0 = clock()
        self._reply: asyncio.Task[None] | None = None
        self._reply_items: list[str] = []  # this reply's sentences, as spoken items
        self._spoken = SpokenItems()
        self._tool_waits: dict[str, asyncio.Future[str]] = {}  # call_id -> its output, from the call
        self._reply_text: str | None = None  # a finished reply, saved once its audio has played
        self._turn = 0
        self.hold_tone = HoldTone(self.playback, start.stream_sid)
        self._digits = DigitCollector(settings.dtmf_timeout_ms / 1000)
        self._key_timer = EntryTimer(clock, self._keys_due)
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

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

    async def say(self, text: str) -> None:
        """Interrupts the agent and says `text` as it is (e.g. a voicemail message)."""
        if self.playing:
            await self._barge_in()
        self._start_reply(Verbatim(text))

    async def tool_finished(self, call_id: str, output: str) -> None:
        waiter = self._tool_waits.get(call_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(output)

    def unheard_audio(self) -> list[Media]:
        return []  # the cascade hears every frame it is given

    async def _send_all(self, texts: list[str]) -> None:
        for text in texts:
            await self.twilio.send(text)

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
        for turn_event in self.detector.feed(ulaw, end_ms):
            if isinstance(turn_event, SpeechStarted):
                if self.playing:
                    await self._barge_in()
            elif isinstance(turn_event, Utterance):
                if self.playing:
                    await self._barge_in()
                self._start_reply(turn_event)

    # --- one reply ------------------------------------------------------------------------------
    def _start_reply(self, utterance: Utterance | str | Verbatim | None) -> None:
        """A reply: to the greeting (None), to what the caller said, to the keys they pressed, or
        a text to say as it is."""
        self._settle_reply(self.clock())
        self._turn += 1
        self._reply_items = []
        timing: dict[str, float] = {"vad_end": self.clock()}
        self.timings.append(timing)
        self._reply = asyncio.create_task(
            self._respond(utterance, timing), name=f"cascade-reply-{self._turn}"
        )
        self._reply.add_done_callback(self._reply_finished)

    def _reply_finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        log.error("cascade reply failed: %r", self._failure)
        self._failed.set()

    async def _respond(self, utterance: Utterance | str | Verbatim | None, timing: dict[str, float]) -> None:
        extra: list[dict[str, Any]] = []
        if isinstance(utterance, Verbatim):
            pass
        elif utterance is None:
            extra = [{"role": "system", "content": self.settings.greeting}]
        elif isinstance(utterance, str):  # a key-press entry: no speech to transcribe
            self._save("user", entry_text(utterance), {"dtmf": utterance})
        else:
            timing["stt_sent"] = self.clock()
            text = await transcribe(self.client, self.models["stt"], utterance.pcm16, utterance.rate)
            timing["stt_done"] = self.clock()
            if not text:
                return
            self._save("user", text, {})
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(sentences, timing))
        try:
            if isinstance(utterance, Verbatim):
                spoken = self._recite(utterance.text, sentences)
            else:
                spoken = await self._think(extra, sentences, timing)
            sentences.put_nowait(None)
            await speaker
        except BaseException:
            speaker.cancel()
            raise
        self._reply_text = " ".join(spoken)
        if not self.playback.outstanding:
            self._settle_reply(self.clock())

    def _recite(self, text: str, sentences: asyncio.Queue[str | None]) -> list[str]:
        """A text said as it is (no chat model), sentence by sentence."""
        chunker = SentenceChunker()
        spoken = [*chunker.push(text), *([rest] if (rest := chunker.flush()) else [])]
        for sentence in spoken:
            sentences.put_nowait(sentence)
        self.on_effect(ResponseDone(f"c{self._turn}:say"))
        return spoken

    async def _think(
        self, extra: list[dict[str, Any]], sentences: asyncio.Queue[str | None], timing: dict[str, float]
    ) -> list[str]:
        """Streams the model's answer into sentences; runs its tool calls and asks again."""
        spoken: list[str] = []
        for round_no in range(MAX_TOOL_ROUNDS):
            response_id = f"c{self._turn}:{round_no}"
            chunker = SentenceChunker()
            calls: ToolCallsDone | None = None
            timing.setdefault("chat_sent", self.clock())
            async for piece in stream_chat(
                self.client, self.models["chat"], self.messages + extra, self.tools
            ):
                if isinstance(piece, ToolCallsDone):
                    calls = piece
                    continue
                for sentence in chunker.push(piece.text):
                    timing.setdefault("first_sentence", self.clock())
                    spoken.append(sentence)
                    sentences.put_nowait(sentence)
            rest = chunker.flush()
            if rest:
                timing.setdefault("first_sentence", self.clock())
                spoken.append(rest)
                sentences.put_nowait(rest)
            self.on_effect(ResponseDone(response_id))
            if calls is None or not calls.calls:
                return spoken
            self.messages.append(assistant_tool_calls_message(calls.calls))
            outputs = await self._run_tools(
                [ev.ToolCall(c.id, c.name, c.arguments, response_id=response_id) for c in calls.calls]
            )
            for call, output in zip(calls.calls, outputs, strict=True):
                self.messages.append(tool_result_message(call.id, output))
        log.warning("the model kept calling tools for %d rounds; stopping", MAX_TOOL_ROUNDS)
        return spoken

    async def _run_tools(self, calls: list[ev.ToolCall]) -> list[str]:
        """Asks the call to run `calls` (`RunTool`) and waits for their outputs (`tool_finished`)."""
        loop = asyncio.get_running_loop()
        waits = {call.call_id: loop.create_future() for call in calls}
        self._tool_waits.update(waits)
        try:
            for call in calls:
                self.on_effect(RunTool(call))
            return [await waits[call.call_id] for call in calls]
        finally:
            for call_id in waits:
                self._tool_waits.pop(call_id, None)

    async def _speak(self, sentences: asyncio.Queue[str | None], timing: dict[str, float]) -> None:
        """Synthesizes sentences in order, streaming their audio to Twilio as it arrives. One
        converter for the whole reply keeps the audio continuous across sentences (no padded gaps)."""
        converter = PcmToTwilio()
        item = ""
        while (text := await sentences.get()) is not None:
            item = f"t{self._turn}:{len(self._reply_items)}"
            spoken = self._spoken.add(item, text)
            self._reply_items.append(item)
            timing.setdefault("tts_sent", self.clock())
            async for pcm in synthesize(self.client, self.models["tts"], self.settings.openai_voice, text):
                timing.setdefault("tts_first_bytes", self.clock())
                await self._send_audio(item, converter.push(pcm), timing)
            spoken.audio_done = True
        if item:
            await self._send_audio(item, converter.flush(), timing)

    async def _send_audio(self, item: str, frames: list[bytes], timing: dict[str, float]) -> None:
        if not frames:
            return
        now = await self._send_marked(item, b"".join(frames))
        self.stats.frames_out += len(frames)
        if "first_frame" not in timing and "stt_sent" in timing:
            self.stats.response_latencies_ms.append((now - timing["vad_end"]) * 1000)
        timing.setdefault("first_frame", now)
        if self.stats.first_audio_ms is None:
            self.stats.first_audio_ms = (now - self._t0) * 1000

    async def _send_marked(self, item: str, ulaw: bytes) -> float:
        """Sends audio of `item` to Twilio followed by its mark (the hold tone stops first); returns
        the time it was counted as sent."""
        await self._send_all(self.hold_tone.stop(self.clock()))
        now = self.clock()
        mark = self.playback.on_audio_sent(item, len(ulaw), now)
        sid = self.start.stream_sid
        await self.twilio.send(media_message(sid, base64.b64encode(ulaw).decode()))
        await self.twilio.send(mark_message(sid, mark or ""))
        return now

    # --- barge-in and history -------------------------------------------------------------------
    async def _barge_in(self) -> None:
        """The caller speaks over the agent: stop everything, keep only what was heard."""
        now = self.clock()
        self.on_effect(BargeIn())
        heard = self._heard_text(now)
        self.hold_tone.drop()
        self.playback.interrupt(now)
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()  # before the clear is sent: no more of its audio after the clear
        self._reply_text = None
        if heard:
            self._save("assistant", heard, {"interrupted": True})
        await self.twilio.send(clear_message(self.start.stream_sid))

    def _heard_text(self, now: float) -> str:
        """What the caller heard of this reply: its sentences played out, then the heard words of
        the one playing (relay.sessions.heard)."""
        parts: list[str] = []
        for item_id in self._reply_items:
            item = self._spoken.get(item_id)
            sent = self.playback.sent_ms(item_id)
            if item is None or sent == 0:
                break
            heard = self.playback.heard_ms(item_id, now)
            if not item.audio_done or heard < sent:
                part = item.heard(heard, sent)
                if part:
                    parts.append(part)
                break
            parts.append(item.transcript)
        return " ".join(parts)

    def _settle_reply(self, now: float) -> None:
        """Saves a finished reply once its audio has played (or what was heard at the end)."""
        if self._reply_text is None:
            return
        text = self._reply_text if not self.playback.outstanding else self._heard_text(now)
        self._reply_text = None
        if text:
            self._save("assistant", text, {})

    def _save(self, role: Role, text: str, meta: dict[str, Any]) -> None:
        self.messages.append({"role": role, "content": text})
        self.on_effect(SaveTurn(role, text, meta))

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
