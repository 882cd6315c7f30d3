"""The limits on what a tool call carries: the raw arguments' size, the output the model reads
(capped, with a note saying how much was cut) and the tool audit the call record keeps."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

__all__ = [
    "AUDIT_ARGUMENTS_BYTES",
    "AUDIT_VALUE_CHARS",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "MAX_ARGUMENTS_BYTES",
    "audit_arguments",
    "cap_output",
    "render_output",
    "truncate",
]

DEFAULT_MAX_OUTPUT_BYTES = 4096
MAX_ARGUMENTS_BYTES = 8192
"""Hard cap on a function call's raw arguments JSON; longer is refused before parsing."""
AUDIT_VALUE_CHARS = 200
"""Longest argument string kept in the call record's tool audit (the rest marked as truncated)."""
AUDIT_ARGUMENTS_BYTES = 1024
"""Longest tool audit `arguments` (JSON) kept in the call record."""
_TRUNCATION_NOTE = "…[truncated: {n} bytes omitted]"


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a marker saying how many were left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"…[truncated: {len(text) - limit} chars omitted]"


def audit_arguments(arguments: dict[str, Any] | str) -> dict[str, Any] | str:
    """Tool arguments as the call record keeps them: each string cut to AUDIT_VALUE_CHARS, and the
    whole to AUDIT_ARGUMENTS_BYTES of JSON (then a string), each cut marked as truncated."""
    if isinstance(arguments, str):
        return cap_output(arguments, AUDIT_ARGUMENTS_BYTES)[0]
    trimmed = {
        truncate(str(key), 64): truncate(value, AUDIT_VALUE_CHARS) if isinstance(value, str) else value
        for key, value in arguments.items()
    }
    text = orjson.dumps(trimmed, default=str).decode()
    if len(text.encode()) <= AUDIT_ARGUMENTS_BYTES:
        return trimmed
    return cap_output(text, AUDIT_ARGUMENTS_BYTES)[0]


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"a tool returned a {type(value).__name__}, which is not JSON serializable")


def render_output(value: Any) -> str:
    """A handler's return value as the string the model reads.

    str as is; a pydantic model, dict, list or other JSON value JSON-encoded; None as "done".
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "done"
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def cap_output(text: str, limit: int) -> tuple[str, int]:
    """`text` cut to at most `limit` UTF-8 bytes, note included; returns (text, bytes omitted)."""
    data = text.encode()
    if len(data) <= limit:
        return text, 0
    budget = max(limit - len(_TRUNCATION_NOTE.format(n=len(data)).encode()), 0)
    kept = data[:budget].decode("utf-8", errors="ignore")
    omitted = len(data) - len(kept.encode())
    return kept + _TRUNCATION_NOTE.format(n=omitted), omitted
