"""The caller's microphone: one 20 ms frame every 20 ms, the queued utterances' speech when there
is some, silence otherwise, and when each utterance started, stopped being loud and ended."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from relay.simulate.script import Utterance
from relay.testing.audio import BYTES_PER_MS, silence_ulaw, ulaw_to_float
from relay.testing.twilio import FRAME_BYTES, FakeTwilioCall

__all__ = ["Speech", "Voice", "speech_frames"]

SPEECH_RMS = 0.01  # a 20 ms frame louder than this (fraction of full scale) counts as speech


@dataclass(eq=False)
class Speech:
    """One queued utterance as 20 ms frames, and when the voice started it, passed its last loud frame
    (the end of speech) and sent its last frame."""

    utterance: Utterance
    frames: list[bytes]
    last_loud: int
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    started_at: float | None = None
    speech_end_at: float | None = None
    ended_at: float | None = None


def speech_frames(audio: bytes) -> tuple[list[bytes], int]:
    """20 ms frames (the last one padded with silence) and the index of the last loud one."""
    frames = [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)] or [silence_ulaw(20)]
    if len(frames[-1]) < FRAME_BYTES:
        frames[-1] += silence_ulaw((FRAME_BYTES - len(frames[-1])) / BYTES_PER_MS)
    samples = ulaw_to_float(b"".join(frames)).reshape(len(frames), FRAME_BYTES)
    loud = np.flatnonzero(np.sqrt(np.mean(samples * samples, axis=1)) > SPEECH_RMS)
    return frames, int(loud[-1]) if loud.size else len(frames) - 1


class Voice:
    """The caller's microphone: one 20 ms frame every 20 ms, speech when there is some, else
    silence (a Twilio stream never pauses). One task owns the sending, so pacing stays exact."""

    def __init__(self, call: FakeTwilioCall) -> None:
        self.call = call
        self.current: Speech | None = None
        self._queue: deque[Speech] = deque()
        self._silence = silence_ulaw(20)

    async def run(self) -> None:
        try:
            while self.call.is_open:
                speech = self._queue[0] if self._queue else None
                frame = speech.frames[speech.sent] if speech is not None else self._silence
                if not await self.call.send_audio(frame):
                    break
                if speech is None:
                    continue
                now = time.monotonic()
                if speech.sent == 0:
                    speech.started_at = now
                    self.current = speech
                    speech.started.set()
                if speech.sent == speech.last_loud:
                    speech.speech_end_at = now + FRAME_BYTES / (BYTES_PER_MS * 1000)
                speech.sent += 1
                if speech.sent == len(speech.frames):
                    speech.ended_at = now
                    self._queue.popleft()
                    speech.done.set()
        finally:
            for speech in self._queue:
                speech.started.set()
                speech.done.set()
            self._queue.clear()

    def say(self, utterance: Utterance) -> Speech:
        """Queues the utterance; its `started` and `done` events are set as it is sent (both are
        set if the stream closes first)."""
        frames, last_loud = speech_frames(utterance.audio)
        speech = Speech(utterance, frames, last_loud)
        if not self.call.is_open:
            speech.started.set()
            speech.done.set()
        else:
            self._queue.append(speech)
        return speech
