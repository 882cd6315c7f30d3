"""The realtime bridge core: sans-I/O. Twilio events and neutral backend events in; text to send out.

Inputs are methods (`on_media`, `on_mark`, `on_backend`, `on_tool_output`, `provider_opened`);
outputs accumulate in three outboxes that leave through one exit, `drain()`, which the I/O shell
calls after every input: text for Twilio, text for the provider (ready-to-send JSON), and typed
effects for the call (`relay.sessions.effects`: tool runs, transcript turns, barge-ins...).
The audio path never decodes: Twilio's base64 μ-law goes to the provider as it came, and the
provider's base64 μ-law goes to Twilio as it came.

Response discipline, so `conversation_already_has_active_response` cannot happen: a
`response.create` is sent only when no response is active and none is expected (we asked for one,
or server VAD is about to create one after the caller stopped speaking). Tool outputs are sent as
they finish; one `response.create` follows when every output of the response is sent and the
response is done.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from relay.sessions import events as ev
from relay.sessions.client_events import (
    RESPONSE_CANCEL,
    append_event,
    delete_event,
    opening_events,
    response_event,
    text_item_event,
    tool_output_event,
    truncate_event,
    update_without_voice,
)
from relay.sessions.dialects import QUIET_EVENTS
from relay.sessions.dtmf import DigitCollector, entry_text
from relay.sessions.effects import (
    BargeIn,
    Effect,
    Fault,
    HoldStarted,
    PlaybackIdle,
    PrebufferDropped,
    ResponseDone,
    RunTool,
    SaveTurn,
    SessionExpired,
    Truncated,
)
from relay.sessions.heard import SpokenItems
from relay.sessions.hold import HoldTone
from relay.sessions.playback import PlaybackTracker
from relay.twilio_messages import Media, b64_len, clear_message, mark_message, media_message

log = logging.getLogger("relay.bridge")

PREBUFFER_FRAMES = 100  # about 2 s of 20 ms frames held until the provider is ready
EXPECT_RESPONSE_S = 3.0  # how long server VAD gets to create its response after speech stopped
MARK_EVERY_MS = 500  # a mark covers at least this much audio (and every item's end): fewer messages

Output = tuple[list[str], list[str], list[Effect]]  # to Twilio, to the provider, effects


class BridgeCore:
    """One call's realtime state machine."""

    def __init__(
        self,
        *,
        stream_sid: str,
        session_update: dict[str, Any],
        greeting: str | None = None,
        auto_response: bool = True,
        dtmf_timeout_s: float = 2.0,
    ) -> None:
        self.stream_sid = stream_sid
        self._session_update = session_update
        self._greeting = greeting
        self._auto_response = auto_response
        self._to_twilio: list[str] = []
        self._to_provider: list[str] = []
        self._effects: list[Effect] = []
        self.playback = PlaybackTracker()
        self._provider_ready = False
        self._prebuffer: deque[str] = deque(maxlen=PREBUFFER_FRAMES)
        self._prebuffer_dropped = 0
        self._active: str | None = None  # response id
        self._expect_since: float | None = None  # a response.create or server-VAD response is coming
        self._want_response = False
        self._next_response: dict[str, Any] | None = None  # what the next response.create asks for
        self._cancel_next = False  # cancel the next response that starts (not the one asked for)
        self._pending_tools: dict[str, str] = {}  # call_id -> response_id
        self._tool_responses: set[str] = set()  # responses that called tools and are not finished
        self._cut_responses: set[str] = set()
        self._cut_items: set[str] = set()
        self._spoken = SpokenItems()
        self._current_item = ""
        self._logged_other: set[str] = set()
        self._greeting_sent = False
        self.hold = HoldTone(self.playback, stream_sid)
        self._holds = 0
        self._digits = DigitCollector(dtmf_timeout_s)

    # --- the one exit -----------------------------------------------------------------------------
    def drain(self) -> Output:
        """Takes everything the last inputs queued: text for Twilio, text for the provider, effects."""
        out = (self._to_twilio, self._to_provider, self._effects)
        if out[0]:
            self._to_twilio = []
        if out[1]:
            self._to_provider = []
        if out[2]:
            self._effects = []
        return out

    @property
    def playing(self) -> bool:
        """True while agent audio is queued at Twilio."""
        return self.playback.outstanding

    @property
    def quiet(self) -> bool:
        """No response is being generated and nothing is queued at Twilio: a moment a new provider
        session can take over unnoticed."""
        return self._active is None and not self.playback.outstanding

    # --- provider lifecycle ---------------------------------------------------------------------
    def provider_opened(
        self, now: float, *, greet: bool = True, carried: Sequence[str] = (), early: bool = False
    ) -> None:
        """The provider socket is open: configure it, greet, and flush audio buffered meanwhile.

        `carried`: events for the new socket that come before the buffered audio (on a replacement,
        the conversation so far and the audio the old socket never sent, which is older).
        `early`: the socket is an early connection that was sent `opening_events` during
        /incoming-call; the greeting it asked for counts as requested now."""
        self._provider_ready = True
        greeting = self._greeting if greet and not self._greeting_sent else None
        if not early:
            self._to_provider += opening_events(self._session_update, greeting)
        if greeting:
            self._greeting_sent = True
            self._expect_since = now
        elif early and self._greeting and self._next_response is not None:
            self._cancel_next = True  # the early connection's greeting is coming: `say_now` comes first
            self._expect_since = now
        self._to_provider += carried
        while self._prebuffer:
            self._to_provider.append(append_event(self._prebuffer.popleft()))
        if self._prebuffer_dropped:
            self._effects.append(PrebufferDropped(self._prebuffer_dropped))
            self._prebuffer_dropped = 0
        self._maybe_continue(now)  # a response asked for while the provider was away

    def drop_buffered_audio(self) -> None:
        """The shell hands a replacement socket the caller audio since the old provider's last sign
        of life (a superset of what was buffered since it was lost): the buffer is not sent twice."""
        self._prebuffer.clear()
        self._prebuffer_dropped = 0

    def provider_lost(self) -> None:
        """The provider socket is gone: forget response state; audio buffers until reopened."""
        self._provider_ready = False
        self._active = None
        self._expect_since = None
        self._pending_tools.clear()
        self._tool_responses.clear()
        self._want_response = False

    # --- Twilio side ----------------------------------------------------------------------------
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

    # --- backend side ---------------------------------------------------------------------------
    def on_backend(self, event: ev.BackendEvent, now: float) -> None:
        if isinstance(event, ev.AudioOut):
            self._on_audio(event, now)
        elif isinstance(event, ev.Transcript):
            self._on_transcript(event)
        elif isinstance(event, ev.Interrupted):
            self._on_interrupted(now)
        elif isinstance(event, ev.SpeechEnded):
            if self._auto_response:
                self._expect_since = now
        elif isinstance(event, ev.ResponseStarted):
            self._active = event.response_id
            self._expect_since = None
            if self._cancel_next:  # one that `say_now` did not want: cancelled as it starts
                self._cancel_next = False
                self._cut_responses.add(event.response_id)
                self._to_provider.append(RESPONSE_CANCEL)
        elif isinstance(event, ev.ResponseDone):
            self._on_response_done(event, now)
        elif isinstance(event, ev.ToolCall):
            self._on_tool_call(event)
        elif isinstance(event, ev.ProviderFault):
            self._on_fault(event)
        elif (
            isinstance(event, ev.Other)
            and event.type not in QUIET_EVENTS
            and event.type not in self._logged_other
        ):
            self._logged_other.add(event.type)
            log.info("ignoring provider event %s (logged once)", event.type)

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
        self._effects.append(BargeIn())
        if active is not None:
            self._cut_responses.add(active)
            if cancel:
                self._to_provider.append(RESPONSE_CANCEL)
        cut = self.playback.interrupt(now, self._current_item or None)
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

    def _on_response_done(self, event: ev.ResponseDone, now: float) -> None:
        self._send_mark(now)  # the response's last audio is covered by a mark
        if event.response_id == self._active:
            self._active = None
        cut = event.response_id in self._cut_responses  # not heard to its end: cancelled, for the call
        status = "cancelled" if cut else event.status
        self._effects.append(ResponseDone(event.response_id, status, event.error))
        current = self._spoken.get(self._current_item)
        if current is not None:
            current.audio_done = True
        if event.response_id in self._tool_responses:
            self._tool_responses.discard(event.response_id)
            if event.response_id not in self._cut_responses:
                self._want_response = True
        self._maybe_continue(now)

    def _on_tool_call(self, call: ev.ToolCall) -> None:
        if call.response_id in self._cut_responses:
            log.info("skipping tool call %s of an interrupted response", call.name)
            return
        self._pending_tools[call.call_id] = call.response_id
        self._tool_responses.add(call.response_id)
        self._effects.append(RunTool(call))

    def on_tool_output(self, call_id: str, output: str, now: float) -> None:
        """A tool finished: send its output; continue the conversation when all are in."""
        if self._pending_tools.pop(call_id, None) is None and not self._provider_ready:
            return
        self._to_provider.append(tool_output_event(call_id, output))
        self._maybe_continue(now)

    def _maybe_continue(self, now: float) -> None:
        if not self._want_response or self._pending_tools or not self._provider_ready:
            return
        if self._active is not None:
            return
        if self._expect_since is not None and now - self._expect_since < EXPECT_RESPONSE_S:
            return
        self._want_response = False
        self._expect_since = now
        self._to_provider.append(response_event(self._next_response))
        self._next_response = None
        self._cancel_next = False  # this one is ours

    def say_now(self, text: str, now: float) -> None:
        """Interrupts whatever the agent is saying and has it say `text`, word for word (e.g. a
        voicemail message), once no response is active."""
        self._on_interrupted(now, cancel=True)
        if not self._provider_ready:
            self._greeting_sent = True  # not opened yet: the text comes instead of the greeting
        elif self._active is None and self._expect_since is not None:
            self._cancel_next = True  # a response is on its way (the greeting, or server VAD's)
        self._pending_tools.clear()  # the call's course changed: outputs still coming are dropped
        self._next_response = {"instructions": f"Say exactly this, word for word, and nothing else: {text}"}
        self._want_response = True
        self._maybe_continue(now)

    def tick(self, now: float) -> None:
        """Called periodically by the shell: retries a held-back response.create, feeds the hold tone."""
        self.dtmf_due(now)
        self._maybe_continue(now)
        self._to_twilio += self.hold.feed(now)

    def play_local(self, item_id: str, payload: str, now: float) -> None:
        """Audio of the relay's own (base64 μ-law, e.g. DTMF tones) after what is queued, marked so
        its playing counts; a barge-in clears it like the model's audio but truncates nothing."""
        self.stop_hold(now)
        self.playback.on_audio_sent(item_id, b64_len(payload), now, mark=False)
        self._to_twilio.append(media_message(self.stream_sid, payload))
        self._send_mark(now)

    # --- key presses ----------------------------------------------------------------------------
    def on_dtmf(self, digit: str, now: float) -> None:
        """A key press: it interrupts the agent like speech, and joins the entry being typed."""
        self._on_interrupted(now, cancel=True)
        entry = self._digits.press(digit, now)
        if entry is not None:
            self._submit_digits(entry, now)

    @property
    def dtmf_deadline(self) -> float | None:
        """When the entry being typed ends unless another key comes (the shell's timer calls
        `dtmf_due` then)."""
        return self._digits.deadline

    def dtmf_due(self, now: float) -> None:
        entry = self._digits.due(now)
        if entry is not None:
            self._submit_digits(entry, now)

    def _submit_digits(self, entry: str, now: float) -> None:
        """The entry as the caller's turn, then one response (once none is active)."""
        text = entry_text(entry)
        self._to_provider.append(text_item_event("user", text))
        self._effects.append(SaveTurn("user", text, {"dtmf": entry}))
        self._want_response = True
        self._expect_since = None  # no server-VAD response is coming for keys
        self._maybe_continue(now)

    def heartbeat(self, event: str) -> None:
        """Queues the shell's liveness probe for the provider (`relay.sessions.liveness`)."""
        self._to_provider.append(event)

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

    def _on_fault(self, fault: ev.ProviderFault) -> None:
        level = logging.ERROR if fault.code == "conversation_already_has_active_response" else logging.WARNING
        log.log(level, "provider error %s: %s", fault.code, fault.message)
        self._effects.append(Fault(fault.code, fault.message))
        if fault.code == "session_expired":
            self._effects.append(SessionExpired())

    # --- handoff --------------------------------------------------------------------------------
    def change_session(self, session_update: dict[str, Any], *, now_too: bool) -> None:
        """Another agent takes the call: connections opened from now on are configured with
        `session_update`; with `now_too`, the live session is updated at once (its voice kept)."""
        self._session_update = session_update
        if now_too and self._provider_ready:
            self._to_provider.append(update_without_voice(session_update))

    def respond(self, now: float) -> None:
        """Asks the model to speak now (once no response is active): a new agent's first words."""
        self._want_response = True
        self._maybe_continue(now)

    # --- end of call ----------------------------------------------------------------------------
    def finish(self, now: float) -> None:
        """The call is ending: save what the caller heard of agent turns still open."""
        self._effects += self._spoken.finish(self.playback, now)
