"""Both sides of a simulated call as one stereo WAV: the caller's frames where the stream's
timestamps put them, the agent's audio where it started playing, as much of it as played."""

from __future__ import annotations

import base64
from pathlib import Path

from relay.testing.audio import BYTES_PER_MS, ULAW_SILENCE, write_wav_ulaw
from relay.testing.twilio import FakeTwilioCall

__all__ = ["write_conversation_wav"]


def write_conversation_wav(path: str | Path, call: FakeTwilioCall) -> float:
    """Writes both sides of `call` on its own timeline as a stereo 16-bit 8 kHz WAV (caller left,
    agent right, as played); returns the duration in seconds."""
    caller: list[tuple[int, bytes]] = []
    agent: list[tuple[int, bytes]] = []
    started = call.started_at
    if started is not None:
        for _, message in call.sent:
            if isinstance(message, dict) and message.get("event") == "media":
                media = message["media"]
                caller.append((int(media["timestamp"]) * BYTES_PER_MS, base64.b64decode(media["payload"])))
        received = call.received_audio
        offset = 0
        for chunk in call.outbound_chunks:
            if chunk.started_at is not None and chunk.played_bytes > 0:
                position = round((chunk.started_at - started) * 1000 * BYTES_PER_MS)
                agent.append((max(0, position), received[offset : offset + chunk.played_bytes]))
            offset += chunk.size
    length = max((pos + len(data) for pos, data in caller + agent), default=0)
    tracks = [bytearray([ULAW_SILENCE]) * length for _ in range(2)]
    for track, parts in zip(tracks, (caller, agent), strict=True):
        for pos, data in parts:
            track[pos : pos + len(data)] = data
    write_wav_ulaw(path, bytes(tracks[0]), bytes(tracks[1]))
    return length / (BYTES_PER_MS * 1000)
