"""Is the realtime provider still there? Sans-I/O pieces the shell (relay.sessions.realtime) uses.

A provider can fail without closing its socket: accept the WebSocket and never send an event, or
freeze mid-call while its WebSocket layer still answers pings, or send only events that do not
parse. The shell watches three things, off the audio path:

* **First event.** A new connection (or an early one, from the moment the session starts reading
  it) must send a valid event within PROVIDER_FIRST_EVENT_TIMEOUT (`session.created` comes first;
  with REALTIME_EARLY_GREETING it may already be waiting in the socket).
* **Heartbeat.** When no valid event came for PROVIDER_HEARTBEAT_AFTER seconds, the shell sends one
  `heartbeat_event`: a `session.update` that changes nothing, which the service answers with
  `session.updated`. Any valid event within PROVIDER_HEARTBEAT_TIMEOUT proves the session alive;
  none means it is frozen. During conversation events flow and no heartbeat is sent.
* **Malformed events.** Each is logged (rate-limited by `Throttle`), counted and dropped; more than
  PROVIDER_MALFORMED_LIMIT in a row with no valid event between them is a fault.

What the caller said since the provider's last valid event is kept (`CallerRing`) and handed to the
session that takes over: the reconnected one, or the cascade.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable

import orjson

from relay.config import Settings
from relay.errors import ProviderMalformedError, ProviderUnresponsiveError
from relay.sessions.dialects import Dialect
from relay.twilio_messages import Media, b64_len

log = logging.getLogger("relay.realtime")

FRAME_S = 0.02  # one Twilio media frame


def heartbeat_event(dialect: Dialect) -> str:
    """A `session.update` that changes nothing: the GA form must carry `session.type` (required),
    the preview form may be empty. The openai SDK's GA `SessionUpdateEvent` documents the behaviour
    relied on: the client "may send this event at any time", "only the fields that are present in
    the session.update are updated", and the server "will respond with a session.updated event"
    (PROTOCOLS.md §2.2-2.3). The fake Realtime server validates both forms against the SDK's types
    and answers them the same way."""
    session = {"type": "realtime"} if dialect == "ga" else {}
    return orjson.dumps({"type": "session.update", "session": session}).decode()


def ring_frames(first_event_timeout: float, heartbeat_after: float, heartbeat_timeout: float) -> int:
    """How many caller frames to keep: the longest a dead provider can go unnoticed (quiet, then an
    unanswered heartbeat, then a silent reconnect), plus 2 s for the question's start."""
    seconds = heartbeat_after + heartbeat_timeout + first_event_timeout + 2.0
    return int(seconds / FRAME_S)


class CallerRing:
    """The caller's most recent frames, as Twilio sent them: each frame's base64 payload and
    timestamp (never decoded here), in two deques of strings and ints. Not the parsed `Media`
    objects themselves: those the garbage collector tracks, and half a second of them per call,
    kept past their frame, is work for every collection of the process; strings and ints it
    never traverses. The audio path appends to both (`keep_payload`, `keep_timestamp`: bound deque
    methods); the shell records `frames_in` at each valid provider event. `since(frames_in,
    alive_at)` is what the provider may not have heard: the frames after its last sign of life, at
    most `maxlen`, rebuilt as `Media`; `trim` (every half second, off the audio path) drops the
    rest, so a healthy call keeps a fraction of a second."""

    def __init__(self, maxlen: int) -> None:
        self.payloads: deque[str] = deque(maxlen=maxlen)
        self.timestamps: deque[int] = deque(maxlen=maxlen)
        self.keep_payload = self.payloads.append
        self.keep_timestamp = self.timestamps.append

    def append(self, media: Media) -> None:
        """One frame (the audio path inlines the two appends)."""
        self.keep_payload(media.payload)
        self.keep_timestamp(media.timestamp)

    def __len__(self) -> int:
        return len(self.payloads)

    def trim(self, frames_in: int, alive_at: int) -> None:
        """Forgets the frames the provider has shown it heard (those before `alive_at`), so that a
        live call holds only what came since the last sign of life, not the whole bound."""
        payloads, timestamps, keep = self.payloads, self.timestamps, max(frames_in - alive_at, 0)
        while len(payloads) > keep:
            payloads.popleft()
            timestamps.popleft()

    def since(self, frames_in: int, alive_at: int) -> list[Media]:
        n = min(frames_in - alive_at, len(self.payloads))
        if n <= 0:
            return []
        first = len(self.payloads) - n
        return [
            Media(self.payloads[i], self.timestamps[i], size=b64_len(self.payloads[i]))
            for i in range(first, first + n)
        ]


class Throttle:
    """Rate-limits one kind of warning: the first `first` are logged one by one, then at most one
    summary per `every` seconds with how many were left out. `pending` is what no line reported yet."""

    def __init__(self, first: int = 5, every: float = 10.0) -> None:
        self.first = first
        self.every = every
        self.seen = 0
        self.pending = 0
        self._last = -float("inf")

    def hit(self, now: float) -> int:
        """One more occurrence at `now`: returns 1 to log it alone, N > 1 to log a summary of N,
        0 to stay quiet."""
        self.seen += 1
        if self.seen <= self.first:
            self._last = now
            return 1
        self.pending += 1
        if now - self._last < self.every:
            return 0
        n, self.pending, self._last = self.pending, 0, now
        return n

    def flush(self) -> int:
        """What was left out since the last line (for a closing summary); resets it."""
        n, self.pending = self.pending, 0
        return n


class Liveness:
    """One call's watch on its provider connection. The provider reader sets `heard_at` (the clock
    at the last valid event) and `alive_frames` (the caller frames counted then) on every valid
    event: two attribute writes, the only per-event cost. `watch` runs beside it and raises
    ProviderUnresponsiveError; `malformed` raises ProviderMalformedError on a flood."""

    def __init__(self, settings: Settings, name: str, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.name = name
        self.clock = clock
        s = settings
        frames = ring_frames(
            s.provider_first_event_timeout, s.provider_heartbeat_after, s.provider_heartbeat_timeout
        )
        self.ring = CallerRing(frames)
        self.heard_at = -math.inf  # this connection's last valid event
        self.alive_frames = 0  # caller frames counted at the provider's last valid event (any connection)
        self._pinged_at = -math.inf
        self._bad_streak = 0
        self._bad_ref = -math.inf
        self.bad_log = Throttle()

    def new_connection(self) -> None:
        """A new provider connection: its first event is awaited from now."""
        self.heard_at = self._pinged_at = self._bad_ref = -math.inf
        self._bad_streak = 0

    def malformed(self, exc: ValueError, data: bytes | str) -> None:
        """A provider event that does not parse: logged (rate-limited) and dropped. More than
        PROVIDER_MALFORMED_LIMIT in a row, with no valid event between them, is a fault."""
        if self._bad_ref != self.heard_at:  # a valid event came since the last malformed one
            self._bad_streak, self._bad_ref = 0, self.heard_at
        self._bad_streak += 1
        n = self.bad_log.hit(self.clock())
        if n == 1:
            log.warning("dropped a malformed provider event (%s): %.80r", exc, data)
        elif n > 1:
            log.warning(
                "dropped %d more malformed provider events in the last %.0f s (latest: %s)",
                n,
                self.bad_log.every,
                exc,
            )
        limit = self.settings.provider_malformed_limit
        if self._bad_streak > limit:
            raise ProviderMalformedError(
                f"{self.name} sent {self._bad_streak} malformed events in a row "
                f"(PROVIDER_MALFORMED_LIMIT={limit}); last: {exc}"
            )

    async def watch(self, started: float, ping: Callable[[], Awaitable[None]]) -> None:
        """The connection's liveness, from `started` (when the session began reading it): a first
        valid event within PROVIDER_FIRST_EVENT_TIMEOUT; then, after PROVIDER_HEARTBEAT_AFTER of
        quiet, a heartbeat (`ping`) that any valid event within PROVIDER_HEARTBEAT_TIMEOUT answers.
        Sleeps until the next deadline: one wake-up per quiet period, nothing per frame. Raises
        ProviderUnresponsiveError."""
        s, clock, name = self.settings, self.clock, self.name
        while True:
            now, heard = clock(), self.heard_at
            if heard < started:  # nothing valid from this connection yet
                due = started + s.provider_first_event_timeout
                if now >= due:
                    raise ProviderUnresponsiveError(
                        f"{name} sent no event within {s.provider_first_event_timeout:g} s of the "
                        "session start (PROVIDER_FIRST_EVENT_TIMEOUT)"
                    )
            elif self._pinged_at > heard:  # a heartbeat is out, unanswered so far
                due = self._pinged_at + s.provider_heartbeat_timeout
                if now >= due:
                    raise ProviderUnresponsiveError(
                        f"{name} stopped answering: nothing for {now - heard:.1f} s, and no answer to a "
                        f"heartbeat within {s.provider_heartbeat_timeout:g} s (PROVIDER_HEARTBEAT_TIMEOUT)"
                    )
            else:
                due = heard + s.provider_heartbeat_after
                if now >= due:
                    self._pinged_at = now
                    await ping()
                    continue
            await asyncio.sleep(due - now)

    def unheard(self, frames_in: int) -> list[Media]:
        """The caller's frames since the provider's last valid event, at most the ring's bound: what
        a provider that turned out dead may never have heard."""
        return self.ring.since(frames_in, self.alive_frames)

    def trim(self, frames_in: int) -> None:
        self.ring.trim(frames_in, self.alive_frames)


__all__ = ["FRAME_S", "CallerRing", "Liveness", "Throttle", "heartbeat_event", "ring_frames"]
