"""The realtime bridge core: sans-I/O. Twilio events and neutral backend events in; text to send out.

Inputs are methods (`on_media`, `on_mark`, `on_backend`, `on_tool_output`, `provider_opened`);
outputs accumulate in three outboxes that leave through one exit, `drain()`, which the I/O shell
calls after every input: text for Twilio, text for the provider (ready-to-send JSON), and typed
effects for the call (`relay.sessions.effects`: tool runs, transcript turns, barge-ins...).
The audio path never decodes: Twilio's base64 μ-law goes to the provider as it came, and the
provider's base64 μ-law goes to Twilio as it came.

`BridgeCore` is one object built in layers, one module each, so the media path reads its fields
directly: `relay.sessions.bridge_twilio` (audio both ways, marks, barge-in, what was heard, the
hold tone), `relay.sessions.bridge_responses` (when a `response.create` goes out: responses,
tools, a text said word for word, key presses), and this module (its fields, the exit, the
provider's lifecycle and events).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from relay.sessions import events as ev
from relay.sessions.bridge_responses import EXPECT_RESPONSE_S, ResponseTurns
from relay.sessions.bridge_twilio import MARK_EVERY_MS, PREBUFFER_FRAMES
from relay.sessions.client_events import append_event, opening_events, update_without_voice
from relay.sessions.dialects import QUIET_EVENTS
from relay.sessions.dtmf import DigitCollector
from relay.sessions.effects import Effect, Fault, PrebufferDropped, SessionExpired
from relay.sessions.heard import SpokenItems
from relay.sessions.hold import HoldTone
from relay.sessions.playback import PlaybackTracker

__all__ = ["EXPECT_RESPONSE_S", "MARK_EVERY_MS", "PREBUFFER_FRAMES", "BridgeCore", "Output"]

log = logging.getLogger("relay.bridge")

Output = tuple[list[str], list[str], list[Effect]]  # to Twilio, to the provider, effects


class BridgeCore(ResponseTurns):
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
        self._last_words = False  # the call's last words are being said: the other side cannot interrupt
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

    def heartbeat(self, event: str) -> None:
        """Queues the shell's liveness probe for the provider (`relay.sessions.liveness`)."""
        self._to_provider.append(event)

    # --- the provider's events --------------------------------------------------------------------
    def on_backend(self, event: ev.BackendEvent, now: float) -> None:
        if isinstance(event, ev.AudioOut):
            self._on_audio(event, now)
        elif isinstance(event, ev.Transcript):
            self._on_transcript(event)
        elif isinstance(event, ev.Interrupted):
            if not self._last_words:
                self._on_interrupted(now)
        elif isinstance(event, ev.SpeechEnded):
            if self._auto_response:
                self._expect_since = now
        elif isinstance(event, ev.ResponseStarted):
            self._on_response_started(event.response_id)
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
