"""`{name}`-style placeholders in INSTRUCTIONS, GREETING and VOICEMAIL_MESSAGE, filled per call.

A placeholder is `{` + a name (a letter or `_`, then letters, digits or `_`, at most
MAX_KEY_CHARS) + `}`; `{{` and `}}` are a literal brace. Any other brace is text as it is, so
instructions that quote JSON keep working. The values of a call are its context (the `context` of
`POST /calls`) plus four the relay knows itself: `{caller}` (the call's `From`), `{called}` (its
`To`), `{direction}` (Twilio's: `inbound` or `outbound-api`) and `{now}` (the date and time the
call was answered, UTC, e.g. "Saturday 05 December 2026, 20:51 UTC").

`POST /calls` refuses a context that leaves a placeholder of the configured texts unfilled
(`unknown_placeholders`), so an outbound call never starts with a hole in its instructions. An
inbound call has no context: a context placeholder is filled with an empty string there.

Pure functions: no I/O, no settings read here beyond the texts handed in (`call_values` reads the
clock for `{now}` unless it is given).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.config import Settings

__all__ = [
    "BUILTIN_NAMES",
    "CallTexts",
    "ContextError",
    "MAX_CONTEXT_KEYS",
    "MAX_KEY_CHARS",
    "MAX_VALUE_CHARS",
    "call_values",
    "check_context",
    "configured_texts",
    "fill",
    "has_placeholders",
    "placeholder_names",
    "texts_for_call",
    "unknown_placeholders",
]

MAX_CONTEXT_KEYS = 32
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 1000
BUILTIN_NAMES = ("caller", "called", "direction", "now")
NOW_FORMAT = "%A %d %B %Y, %H:%M UTC"  # {now}: spoken-friendly, unambiguous for a model

_NAME = rf"[A-Za-z_][A-Za-z0-9_]{{0,{MAX_KEY_CHARS - 1}}}"
_TOKEN = re.compile(rf"\{{\{{|\}}\}}|\{{({_NAME})\}}")
_KEY = re.compile(_NAME)


class ContextError(ValueError):
    """A `context` the relay does not take: says which key and why, for the API's 400."""


@dataclass(frozen=True, slots=True)
class CallTexts:
    """One call's texts with its placeholders filled."""

    instructions: str
    greeting: str
    voicemail_message: str
    direction: str = "inbound"  # inbound | outbound-api

    @property
    def outbound(self) -> bool:
        return self.direction == "outbound-api"


def placeholder_names(text: str) -> list[str]:
    """The placeholder names of `text`, in order of first appearance, each once."""
    names: dict[str, None] = {}
    for match in _TOKEN.finditer(text):
        if match.group(1) is not None:
            names.setdefault(match.group(1))
    return list(names)


def has_placeholders(*texts: str) -> bool:
    """True when any of `texts` has a placeholder or an escaped brace (so it differs once filled)."""
    return any(_TOKEN.search(text) is not None for text in texts)


def fill(text: str, values: Mapping[str, str]) -> str:
    """`text` with each placeholder replaced by its value ('' for a name `values` lacks)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]  # `{{` -> `{`, `}}` -> `}`
        return values.get(name, "")

    return _TOKEN.sub(replace, text)


def unknown_placeholders(texts: Mapping[str, str], known: set[str]) -> list[tuple[str, str]]:
    """(setting, name) of every placeholder in `texts` (setting name -> text) outside `known`."""
    return [
        (setting, name)
        for setting, text in texts.items()
        for name in placeholder_names(text)
        if name not in known
    ]


def check_context(raw: Any) -> dict[str, str]:
    """The `context` of an outbound request as name -> text: an object of at most MAX_CONTEXT_KEYS
    placeholder names, each mapped to a string, number or boolean of at most MAX_VALUE_CHARS
    characters. `caller`, `called`, `direction` and `now` are the relay's own. ContextError otherwise."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ContextError("context must be a JSON object of name -> text")
    if len(raw) > MAX_CONTEXT_KEYS:
        raise ContextError(f"context has {len(raw)} keys: at most {MAX_CONTEXT_KEYS}")
    context: dict[str, str] = {}
    for key, value in raw.items():
        if not _KEY.fullmatch(key):
            shown = key[:MAX_KEY_CHARS] + ("…" if len(key) > MAX_KEY_CHARS else "")
            raise ContextError(
                f"context key {shown!r} is not a placeholder name: a letter or '_', then letters, "
                f"digits or '_', at most {MAX_KEY_CHARS} characters"
            )
        if key in BUILTIN_NAMES:
            raise ContextError(f"context key {key!r} is the relay's own placeholder: choose another name")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float):
            value = str(value)
        if not isinstance(value, str):
            raise ContextError(f"context[{key!r}] must be a string, a number or a boolean")
        if len(value) > MAX_VALUE_CHARS:
            raise ContextError(f"context[{key!r}] has {len(value)} characters: at most {MAX_VALUE_CHARS}")
        context[key] = value
    return context


def call_values(
    context: Mapping[str, str], *, caller: str, called: str, direction: str, now: float | None = None
) -> dict[str, str]:
    """A call's placeholder values: its context and the relay's own four (`now`: unix time, the
    clock's when None)."""
    stamp = time.strftime(NOW_FORMAT, time.gmtime(now))
    return {**context, "caller": caller, "called": called, "direction": direction, "now": stamp}


def configured_texts(settings: Settings) -> dict[str, str]:
    """The texts that may hold placeholders, by setting name: INSTRUCTIONS, GREETING (when the
    greeting is on) and VOICEMAIL_MESSAGE."""
    texts = {"INSTRUCTIONS": settings.instructions}
    if settings.greeting_enabled:
        texts["GREETING"] = settings.greeting
    texts["VOICEMAIL_MESSAGE"] = settings.voicemail_message
    return texts


def texts_for_call(settings: Settings, values: Mapping[str, str]) -> CallTexts:
    """INSTRUCTIONS, GREETING and VOICEMAIL_MESSAGE filled with a call's values."""
    return CallTexts(
        fill(settings.instructions, values),
        fill(settings.greeting, values),
        fill(settings.voicemail_message, values),
        values.get("direction") or "inbound",
    )
