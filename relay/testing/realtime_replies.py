"""The fake Realtime server's script: the replies a test queues (`Say`, `Call`, `Calls`, `Error`,
`Fail`, `Unknown`, `Drop`) and the record of each response the fake started (`ResponseRecord`).

`relay.testing.realtime_script.ReplyEngine` plays them; tests import them from
`relay.testing.realtime`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Event = dict[str, Any]

__all__ = ["Call", "Calls", "Drop", "Error", "Event", "Fail", "Reply", "ResponseRecord", "Say", "Unknown"]


@dataclass(frozen=True)
class Say:
    """A spoken assistant message: `audio_ms` of deterministic tone plus `text` as its transcript.

    `delta_ms` overrides the server's chunk size for this reply.
    """

    text: str = "Hello from the fake realtime server."
    audio_ms: int = 1000
    delta_ms: int | None = None


@dataclass(frozen=True)
class Call:
    """A function call output item. `arguments` may be a dict (sent as JSON) or a raw string."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None

    def arguments_json(self) -> str:
        """The arguments exactly as streamed in the `function_call_arguments` events."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True)
class Calls:
    """Several function calls in one response, optionally after a spoken preamble."""

    calls: Sequence[Call]
    preamble: Say | None = None


@dataclass(frozen=True)
class Error:
    """Answer `response.create` with a bare `error` event (no response is started)."""

    code: str
    message: str
    type: str = "invalid_request_error"


@dataclass(frozen=True)
class Fail:
    """A response that ends at once with `response.done` status `failed`."""

    code: str = "server_error"
    message: str = "The server had an error while processing your request."
    type: str = "server_error"


@dataclass(frozen=True)
class Unknown:
    """A spoken reply with events of a type no client can know woven in (after `response.created`
    and between audio chunks)."""

    type: str = "response.future_feature.delta"
    say: Say = field(default_factory=lambda: Say("Still here.", audio_ms=300))


@dataclass(frozen=True)
class Drop:
    """Start speaking `say`, then close the socket abruptly once `after_ms` of audio was sent."""

    after_ms: int = 200
    say: Say = field(default_factory=lambda: Say("This reply is cut off.", audio_ms=2000))


Reply = Say | Call | Calls | Error | Fail | Unknown | Drop


@dataclass
class ResponseRecord:
    """One response the fake started. `index` is the reply's position in the server's script."""

    id: str
    index: int
    reply: Reply
    trigger: Literal["client", "vad"]
    params: Mapping[str, Any]
    status: str = "in_progress"  # then completed | cancelled | failed | dropped | interrupted
    reason: str | None = None
    output_item_ids: list[str] = field(default_factory=list)
