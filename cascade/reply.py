"""One cascade reply: the turn pipeline, STT → streaming chat (with tools) → sentence TTS → Twilio.

Pipelining: the chat stream is split into sentences as it arrives; each sentence goes to TTS while
the model keeps writing, and TTS audio is resampled and framed as it streams, so the caller hears
the first sentence before the answer is complete. A reply runs as its own task; a barge-in cancels
it (`cascade.playout`).

`ReplyPipeline` is a layer of `cascade.session.CascadeSession`, not an object of its own;
`CascadeSession.__init__` sets every field declared here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from cascade.llm import ToolCallsDone, assistant_tool_calls_message, stream_chat, tool_result_message
from cascade.playout import Playout
from cascade.sentences import SentenceChunker
from cascade.stt import transcribe
from cascade.tool_calls import ToolCalls
from cascade.tts import PcmToTwilio, synthesize
from cascade.vad import Utterance
from relay.config import Settings
from relay.sessions import events as ev
from relay.sessions.call import CallStats
from relay.sessions.dtmf import entry_text
from relay.sessions.effects import ResponseDone

log = logging.getLogger("relay.cascade")

MAX_TOOL_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class Verbatim:
    """A reply that is a given text, not the chat model's answer."""

    text: str


class ReplyPipeline(Playout):
    """Starts replies and runs each: what the caller said (or typed) in, the agent's speech out."""

    settings: Settings
    client: Any  # the openai SDK client, from the provider adapter
    models: dict[str, str]  # model or deployment names: stt, chat, tts
    tools: list[dict[str, Any]]  # the chat model's tool schemas
    stats: CallStats
    timings: list[dict[str, float]]  # per turn: vad_end, stt_sent, … first_frame
    _t0: float
    _turn: int
    _tool_calls: ToolCalls
    _failure: BaseException | None
    _failed: asyncio.Event

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
            stt, language = self.models["stt"], self.settings.transcription_language
            text = await transcribe(self.client, stt, utterance.pcm16, utterance.rate, language)
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
                timing.setdefault("first_token", self.clock())
                if isinstance(piece, ToolCallsDone):
                    calls = piece
                    continue
                for sentence in chunker.push(piece.text):
                    timing.setdefault("first_sentence", self.clock())
                    spoken.append(sentence)
                    sentences.put_nowait(sentence)
            timing["chat_done"] = self.clock()
            rest = chunker.flush()
            if rest:
                timing.setdefault("first_sentence", self.clock())
                spoken.append(rest)
                sentences.put_nowait(rest)
            self.on_effect(ResponseDone(response_id))
            if calls is None or not calls.calls:
                return spoken
            self.messages.append(assistant_tool_calls_message(calls.calls))
            outputs = await self._tool_calls.run(
                [ev.ToolCall(c.id, c.name, c.arguments, response_id=response_id) for c in calls.calls]
            )
            for call, output in zip(calls.calls, outputs, strict=True):
                self.messages.append(tool_result_message(call.id, output))
        log.warning("the model kept calling tools for %d rounds; stopping", MAX_TOOL_ROUNDS)
        return spoken

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
            timing["tts_done"] = self.clock()
        if item:
            await self._send_audio(item, converter.flush(), timing)

    async def _send_audio(self, item: str, frames: list[bytes], timing: dict[str, float]) -> None:
        if not frames:
            return
        now = await self._send_marked(item, b"".join(frames))
        self.stats.frames_out += len(frames)
        if "first_frame" not in timing and "stt_sent" in timing:
            self.stats.response_latencies_ms.append((now - timing["vad_end"]) * 1000)
            # from the caller's end of speech: the VAD ended the turn after its silence window
            speech_end = timing["vad_end"] - self.settings.cascade_silence_ms / 1000
            self.stats.turn_times.append((speech_end, now))
            self.heard.expect(item, speech_end)
        timing.setdefault("first_frame", now)
        if self.stats.first_audio_ms is None:
            self.stats.first_audio_ms = (now - self._t0) * 1000
