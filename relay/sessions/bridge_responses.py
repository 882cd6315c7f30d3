"""The response state of the realtime core (`relay.sessions.bridge.BridgeCore`), sans-I/O.

Response discipline, so `conversation_already_has_active_response` cannot happen: a
`response.create` is sent only when no response is active and none is expected (we asked for one,
or server VAD is about to create one after the caller stopped speaking). Tool outputs are sent as
they finish; one `response.create` follows when every output of the response is sent and the
response is done. The turns that ask for a response without the caller's speech live here too: a
text to say word for word (`say_now`) and a key-press entry.

`ResponseTurns` is a layer of the one core object (on top of `TwilioSide`, whose barge-in and marks
it uses); `BridgeCore.__init__` sets every field declared here.
"""

from __future__ import annotations

import logging
from typing import Any

from relay.sessions import events as ev
from relay.sessions.bridge_twilio import TwilioSide
from relay.sessions.client_events import (
    RESPONSE_CANCEL,
    response_event,
    text_item_event,
    tool_output_event,
    update_without_auto_responses,
)
from relay.sessions.dtmf import DigitCollector, entry_text
from relay.sessions.effects import ResponseDone, RunTool, SaveTurn

log = logging.getLogger("relay.bridge")

EXPECT_RESPONSE_S = 3.0  # how long server VAD gets to create its response after speech stopped


class ResponseTurns(TwilioSide):
    """When a `response.create` goes out: responses started and done, tool calls and their outputs,
    a text said word for word, key presses."""

    _expect_since: float | None  # a response.create or server-VAD response is coming
    _want_response: bool
    _next_response: dict[str, Any] | None  # what the next response.create asks for
    _cancel_next: bool  # cancel the next response that starts (not the one asked for)
    _tool_responses: set[str]  # responses that called tools and are not finished
    _greeting_sent: bool
    _digits: DigitCollector
    _session_update: dict[str, Any]
    _auto_response: bool
    _last_words: bool

    # --- responses ------------------------------------------------------------------------------
    def _on_response_started(self, response_id: str) -> None:
        self._active = response_id
        self._expect_since = None
        if self._cancel_next:  # one that `say_now` did not want: cancelled as it starts
            self._cancel_next = False
            self._cut_responses.add(response_id)
            self._to_provider.append(RESPONSE_CANCEL)

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

    def tick(self, now: float) -> None:
        """Called periodically by the shell: retries a held-back response.create, feeds the hold tone."""
        self.dtmf_due(now)
        self._maybe_continue(now)
        self._to_twilio += self.hold.feed(now)

    # --- tools ----------------------------------------------------------------------------------
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

    # --- turns without the caller's speech ------------------------------------------------------
    def say_now(self, text: str, now: float, *, last: bool = False) -> None:
        """Interrupts whatever the agent is saying and has it say `text`, word for word, once no
        response is active. `last`: the call's last words (a voicemail message): from now on
        nothing the other side says or plays starts an answer or interrupts this one."""
        self._on_interrupted(now, cancel=True)
        if last:
            self._last_words = True
            self._auto_response = False
            quiet = update_without_auto_responses(self._session_update)
            if quiet is not None and self._provider_ready:
                self._to_provider.append(quiet)
        if not self._provider_ready:
            self._greeting_sent = True  # not opened yet: the text comes instead of the greeting
        elif self._active is None and self._expect_since is not None:
            self._cancel_next = True  # a response is on its way (the greeting, or server VAD's)
        self._pending_tools.clear()  # the call's course changed: outputs still coming are dropped
        self._next_response = {"instructions": f"Say exactly this, word for word, and nothing else: {text}"}
        self._want_response = True
        self._maybe_continue(now)

    def on_dtmf(self, digit: str, now: float) -> None:
        """A key press: it interrupts the agent like speech, and joins the entry being typed."""
        if self._last_words:  # nothing interrupts or answers the call's last words
            return
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
