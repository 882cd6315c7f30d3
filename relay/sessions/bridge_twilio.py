"""The Twilio side of the realtime core (`relay.sessions.bridge.BridgeCore`), sans-I/O.

Caller audio to the provider (held in the prebuffer while no provider is ready), the agent's audio
to Twilio with its marks, mark echoes, the relay's own audio, barge-in (Twilio's queue cleared,
the item playing truncated at what was heard), the agent turns saved as heard, and the hold tone.

`TwilioSide` is a layer of the one core object, not an object of its own: the media path reads and
appends to the core's fields directly (no hop per frame). `BridgeCore.__init__` sets every field
declared here.
"""

from __future__ import annotations

import logging
from collections import deque

from relay.sessions import events as ev
from relay.sessions.client_events import RESPONSE_CANCEL, append_event, delete_event, truncate_event
from relay.sessions.effects import BargeIn, Effect, HoldStarted, PlaybackIdle, SaveTurn, Truncated
from relay.sessions.heard import SpokenItems
from relay.sessions.hold import HoldTone
from relay.sessions.playback import PlaybackTracker
from relay.twilio_messages import Media, b64_len, clear_message, mark_message, media_message

log = logging.getLogger("relay.bridge")

PREBUFFER_FRAMES = 100  # about 2 s of 20 ms frames held until the provider is ready
MARK_EVERY_MS = 500  # a mark covers at least this much audio (and every item's end): fewer messages


class TwilioSide:
    """Audio both ways, marks, barge-in cuts, heard turns and the hold tone of one call's core."""

    stream_sid: str
    playback: PlaybackTracker
    hold: HoldTone
    _to_twilio: list[str]
    _to_provider: list[str]
    _effects: list[Effect]
    _provider_ready: bool
    _prebuffer: deque[str]
    _prebuffer_dropped: int
    _active: str | None  # response id (relay.sessions.bridge_responses)
    _pending_tools: dict[str, str]
    _cut_responses: set[str]
    _cut_items: set[str]
    _spoken: SpokenItems
    _current_item: str
    _holds: int

    # --- caller audio and mark echoes -----------------------------------------------------------
    def on_media(self, media: Media) -> None:
        if self._provider_ready:
            self._to_provider.append(append_event(media.payload))
        else:
            if len(self._prebuffer) == PREBUFFER_FRAMES:
                self._prebuffer_dropped += 1
            self._prebuffer.append(media.payload)

    def on_mark(self, name: str, now: float) -> None:
        if not self.playback.on_mark(name, now):
            return
        self._to_twilio += self.hold.feed(now)  # a slow tool's hold tone stays topped up
        if not self.playback.outstanding:
            self._close_played_items()
            self._effects.append(PlaybackIdle())

    # --- the agent's audio ----------------------------------------------------------------------
    def _on_audio(self, event: ev.AudioOut, now: float) -> None:
        if event.response_id in self._cut_responses or event.item_id in self._cut_items:
            return  # audio of an interrupted response still in flight
        if self.hold.active:
            self.stop_hold(now)
        if event.item_id != self._current_item:
            self._spoken.add(event.item_id)
            self._send_mark(now)  # the previous item ends here
            self._current_item = event.item_id
        self.playback.on_audio_sent(event.item_id, b64_len(event.payload), now, mark=False)
        self._to_twilio.append(media_message(self.stream_sid, event.payload))
        if self.playback.unmarked_ms() >= MARK_EVERY_MS:
            self._send_mark(now)

    def _send_mark(self, now: float) -> None:
        name = self.playback.mark(now)
        if name is not None:
            self._to_twilio.append(mark_message(self.stream_sid, name))

    def play_local(self, item_id: str, payload: str, now: float) -> None:
        """Audio of the relay's own (base64 μ-law, e.g. DTMF tones) after what is queued, marked so
        its playing counts; a barge-in clears it like the model's audio but truncates nothing."""
        self.stop_hold(now)
        self.playback.on_audio_sent(item_id, b64_len(payload), now, mark=False)
        self._to_twilio.append(media_message(self.stream_sid, payload))
        self._send_mark(now)

    # --- what the caller heard ------------------------------------------------------------------
    def _on_transcript(self, event: ev.Transcript) -> None:
        if event.role == "user":
            if event.text:
                self._effects.append(SaveTurn("user", event.text, {"item_id": event.item_id}))
            return
        item = self._spoken.add(event.item_id)
        if event.final:
            item.final = event.text or item.text
            if not self.playback.outstanding or event.item_id not in self.playback.pending_items():
                self._close_played_items()
        else:
            item.text += event.text

    def _on_interrupted(self, now: float, *, cancel: bool = False) -> None:
        """The caller interrupts: clear Twilio's queue, cut the item playing at what was heard.
        `cancel`: the provider does not know (a key press, not speech its VAD heard): cancel its
        active response too."""
        self.stop_hold(now)
        active = self._active if self._active not in self._cut_responses else None  # still speaking
        if active is None and not self.playback.outstanding:
            return  # nothing to interrupt (or it was interrupted already)
        if active is not None:
            self._cut_responses.add(active)
            if cancel:
                self._to_provider.append(RESPONSE_CANCEL)
        cut = self.playback.interrupt(now, self._current_item or None)
        self._effects.append(BargeIn(now, cut.audio_end_ms if cut is not None else 0))
        self._to_twilio.append(clear_message(self.stream_sid))
        if cut is None:
            return
        if cut.item_id in self._spoken:  # the model's (not the relay's own audio, e.g. DTMF tones)
            self._cut_items.add(cut.item_id)
            if cut.audio_end_ms > 0:
                self._to_provider.append(truncate_event(cut.item_id, cut.audio_end_ms))
                self._effects.append(Truncated(cut.item_id, cut.audio_end_ms))
            else:
                self._delete_item(cut.item_id)
            self._save_cut(cut.item_id, cut.audio_end_ms, cut.sent_ms)
        for item_id in cut.unheard:
            if item_id in self._spoken:
                self._cut_items.add(item_id)
                self._delete_item(item_id)

    def _delete_item(self, item_id: str) -> None:
        """Nothing of it was heard: remove it from the model's context (no invalid truncate)."""
        self._to_provider.append(delete_event(item_id))
        item = self._spoken.get(item_id)
        if item is not None:
            item.closed = True

    def _save_cut(self, item_id: str, heard_ms: int, sent_ms: int) -> None:
        self._effects += self._spoken.cut(item_id, heard_ms, sent_ms)

    def _close_played_items(self) -> None:
        """Saves the assistant turns whose transcript is final and whose audio has fully played."""
        self._effects += self._spoken.played_out(self.playback.pending_items())

    # --- hold tone while a slow tool runs ---------------------------------------------------------
    def start_hold(self, now: float) -> None:
        """A tool is slow: play a soft hold tone until the model speaks again or the caller does."""
        if self.hold.active or not self._pending_tools or self.playback.outstanding:
            return
        self._holds += 1
        self._effects.append(HoldStarted())
        self._to_twilio += self.hold.start(f"hold:{self._holds}", now)

    def stop_hold(self, now: float) -> None:
        self._to_twilio += self.hold.stop(now)

    # --- end of call ----------------------------------------------------------------------------
    def finish(self, now: float) -> None:
        """The call is ending: save what the caller heard of agent turns still open."""
        self._effects += self._spoken.finish(self.playback, now)
