"""A cascade reply on its way to the caller, and what the caller heard of it.

The reply's audio goes to Twilio with a mark (the hold tone stopped first), so its playing counts;
a barge-in stops the reply and clears Twilio's queue; the history (the chat messages and the
call's turns) keeps only what was heard (relay.sessions.heard).

`Playout` is a layer of `cascade.session.CascadeSession`, not an object of its own;
`CascadeSession.__init__` sets every field declared here.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from relay.sessions.call import EffectSink, TwilioSink
from relay.sessions.effects import BargeIn, Role, SaveTurn
from relay.sessions.heard import SpokenItems
from relay.sessions.hold import HoldTone
from relay.sessions.playback import HeardLatency, PlaybackTracker
from relay.twilio_messages import Start, clear_message, mark_message, media_message


class Playout:
    """Sends a reply's audio, cuts it on a barge-in, and saves what was heard of it."""

    start: Start
    twilio: TwilioSink
    on_effect: EffectSink
    clock: Callable[[], float]
    playback: PlaybackTracker
    hold_tone: HoldTone
    messages: list[dict[str, Any]]  # the chat history, system message first
    _reply: asyncio.Task[None] | None
    _reply_items: list[str]  # this reply's sentences, as spoken items
    _spoken: SpokenItems
    _reply_text: str | None  # a finished reply, saved once its audio has played
    heard: HeardLatency  # the turn's answer until Twilio plays it: its heard latency

    async def _send_all(self, texts: list[str]) -> None:
        for text in texts:
            await self.twilio.send(text)

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
        self.heard.drop()  # an answer cut before Twilio played any of it has no figure
        heard = self._heard_text(now)
        heard_ms = sum(self.playback.heard_ms(item_id, now) for item_id in self._reply_items)
        self.hold_tone.drop()
        self.playback.interrupt(now)
        self.on_effect(BargeIn(now, heard_ms))  # of the whole reply, its sentences played out too
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
