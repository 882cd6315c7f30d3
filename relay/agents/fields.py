"""The fields of an `[agents.NAME]` table: which setting each one sets, what kind of TOML value it
takes, and how a field the file does not know is answered (a did-you-mean, or "secrets never
live in the file").

The names are pinned by DESIGN.md; the cascade's models and deployments keep the names the
environment gives them, lower-cased.
"""

from __future__ import annotations

import difflib
import json
from typing import Literal

__all__ = [
    "AGENT_FIELDS",
    "BUILTIN_TOOLS",
    "FieldKind",
    "SETTING_OF",
    "shown",
    "unknown_field_problem",
]

FieldKind = Literal["text", "bool", "list", "text_or_list"]

# file field -> (the Settings field it sets, or None for the agent's own, and its kind)
AGENT_FIELDS: dict[str, tuple[str | None, FieldKind]] = {
    "numbers": (None, "list"),
    "description": (None, "text"),
    "instructions": ("instructions", "text"),
    "greeting": ("greeting", "text"),
    "voice": ("openai_voice", "text"),
    "language": ("transcription_language", "text"),
    "tools": (None, "list"),
    "handoffs": (None, "list"),
    "transfer_allowlist": ("transfer_allowlist", "text_or_list"),
    "provider": (None, "text"),
    "realtime_model": ("openai_realtime_model", "text"),
    "azure_endpoint": ("azure_openai_endpoint", "text"),
    "azure_deployment": ("azure_openai_deployment", "text"),
    "api_key_env": (None, "text"),
    "mode": ("relay_mode", "text"),
    "record": ("record_calls", "bool"),
    "voicemail_message": ("voicemail_message", "text"),
    "post_call_webhook_url": ("post_call_webhook_url", "text"),
    "allow_cross_provider_fallback": ("allow_cross_provider_fallback", "bool"),
    "openai_stt_model": ("openai_stt_model", "text"),
    "openai_chat_model": ("openai_chat_model", "text"),
    "openai_tts_model": ("openai_tts_model", "text"),
    "azure_openai_stt_deployment": ("azure_openai_stt_deployment", "text"),
    "azure_openai_chat_deployment": ("azure_openai_chat_deployment", "text"),
    "azure_openai_tts_deployment": ("azure_openai_tts_deployment", "text"),
    "azure_api_version": ("azure_api_version", "text"),
    "azure_cascade_api_version": ("azure_cascade_api_version", "text"),
}

SETTING_OF: dict[str, str] = {f: s for f, (s, _) in AGENT_FIELDS.items() if s is not None}
"""file field -> Settings field, for the fields that set one."""

# the environment's spelling of a setting an agent sets under another name
_FIELD_OF_SETTING = {s: f for f, s in SETTING_OF.items() if s != f}
_FIELD_OF_SETTING["use_azure_openai"] = "provider"
_FIELD_OF_SETTING["relay_tools"] = "tools"

BUILTIN_TOOLS = ("web_search", "end_call", "transfer_call", "send_digits")
"""The built-in tools an agent's `tools` may name (`handoff` comes with `handoffs`)."""

_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential")


def shown(value: object) -> str:
    """A TOML value as the file spells it: `"text"`, `true`, `["a", "b"]`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _looks_secret(field: str) -> bool:
    parts = field.lower().replace("-", "_").split("_")
    return field != "api_key_env" and any(p in _SECRET_WORDS or p == "apikey" for p in parts)


def unknown_field_problem(field: str, known_settings: set[str]) -> str:
    """What to say about a field of an agent that is not one of AGENT_FIELDS (after `agents.NAME.x`)."""
    lowered = field.lower()
    if _looks_secret(field):
        return (
            f"{field}: secrets never live in the agents file: put the key in an environment variable "
            '(or .env) and name that variable here, e.g. api_key_env = "SALES_OPENAI_API_KEY"'
        )
    if lowered in _FIELD_OF_SETTING:
        return f"{field} is not an agent field: use {_FIELD_OF_SETTING[lowered]}"
    if lowered in AGENT_FIELDS:
        return f"{field} is not an agent field: use {lowered} (field names are lower-case)"
    close = difflib.get_close_matches(lowered, list(AGENT_FIELDS), n=1, cutoff=0.75)
    if close:
        return f"{field} is not an agent field: did you mean {close[0]}?"
    if lowered in known_settings:
        return (
            f"{field} is not set per agent: set {lowered.upper()} in the environment "
            "(it applies to every agent)"
        )
    return f"{field} is not an agent field: the fields are {', '.join(AGENT_FIELDS)}"
